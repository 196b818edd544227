/* One syscall pattern COUNT times in a tight loop, for the per-hook BPF cost benchmark
 * (bench/bpfcost.py). Prints the nanoseconds the loop took.
 *
 *     hook_loop forkexec COUNT   fork, exec this binary (`hook_loop exit`, static), wait
 *     hook_loop connect COUNT PORT   UDP connect() to 127.0.0.1:PORT (no handshake, one syscall)
 *     hook_loop open COUNT PATH      openat() + close() of a regular file
 *     hook_loop getpid COUNT         getpid(): a syscall none of the programs hooks
 *     hook_loop sendrecv COUNT       send() 64 bytes on one end of a loopback TCP connection,
 *                                    recv() them on the other (the pair is set up before the clock)
 *
 * Built static, so that an exec opens no shared libraries: the fork+exec+exit figure is then
 * the process lifecycle alone, not the dynamic loader's openat calls as well. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static long long now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void fork_exec(const char *self)
{
	pid_t child = fork();
	if (child == 0) {
		/* A few arguments, as a real command line has. */
		execl(self, self, "exit", "--flag", "some-value", "/a/path/argument", (char *)NULL);
		_exit(127);
	}
	if (child > 0)
		waitpid(child, NULL, 0);
}

/* Both ends of a loopback TCP connection, in this process. */
static int tcp_pair(int *client, int *server)
{
	struct sockaddr_in addr = {.sin_family = AF_INET};
	socklen_t len = sizeof(addr);
	addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	int listener = socket(AF_INET, SOCK_STREAM, 0);
	if (listener < 0 || bind(listener, (struct sockaddr *)&addr, sizeof(addr)) || listen(listener, 1) ||
	    getsockname(listener, (struct sockaddr *)&addr, &len))
		return -1;
	*client = socket(AF_INET, SOCK_STREAM, 0);
	if (*client < 0 || connect(*client, (struct sockaddr *)&addr, sizeof(addr)))
		return -1;
	*server = accept(listener, NULL, NULL);
	close(listener);
	return *server < 0 ? -1 : 0;
}

static void send_recv(int client, int server, long count)
{
	char buf[64] = {0};
	for (long i = 0; i < count; i++) {
		send(client, buf, sizeof(buf), 0);
		for (ssize_t got = 0; got < (ssize_t)sizeof(buf);) {
			ssize_t n = recv(server, buf, sizeof(buf) - got, 0);
			if (n <= 0)
				return;
			got += n;
		}
	}
}

static int sendrecv_client = -1, sendrecv_server = -1;

static int loop(const char *mode, long count, const char *extra, const char *self)
{
	if (strcmp(mode, "forkexec") == 0) {
		for (long i = 0; i < count; i++)
			fork_exec(self);
	} else if (strcmp(mode, "connect") == 0 && extra) {
		struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons(atoi(extra))};
		addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
		int fd = socket(AF_INET, SOCK_DGRAM, 0);
		for (long i = 0; i < count; i++)
			connect(fd, (struct sockaddr *)&addr, sizeof(addr));
		close(fd);
	} else if (strcmp(mode, "open") == 0 && extra) {
		for (long i = 0; i < count; i++)
			close(openat(AT_FDCWD, extra, O_RDONLY));
	} else if (strcmp(mode, "getpid") == 0) {
		for (long i = 0; i < count; i++)
			syscall(SYS_getpid); /* the real syscall, whatever the C library caches */
	} else if (strcmp(mode, "sendrecv") == 0) {
		send_recv(sendrecv_client, sendrecv_server, count);
	} else {
		return 2;
	}
	return 0;
}

int main(int argc, char **argv)
{
	if (argc >= 2 && strcmp(argv[1], "exit") == 0)
		return 0;
	if (argc < 3) {
		fprintf(stderr, "usage: hook_loop forkexec|connect|open|getpid|sendrecv COUNT [PORT|PATH]\n");
		return 2;
	}
	char self[4096];
	ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
	if (n <= 0)
		return 2;
	self[n] = 0; /* the real path: exec'ing /proc/self/exe would add a procfs lookup */
	if (strcmp(argv[1], "sendrecv") == 0 && tcp_pair(&sendrecv_client, &sendrecv_server))
		return 2;
	long long start = now_ns();
	if (loop(argv[1], atol(argv[2]), argc > 3 ? argv[3] : NULL, self) != 0)
		return 2;
	printf("%lld\n", now_ns() - start);
	return 0;
}
