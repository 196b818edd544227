/* One syscall pattern COUNT times in a tight loop, for the per-hook BPF cost benchmark
 * (bench/bpfcost.py). Prints the nanoseconds the loop took.
 *
 *     hook_loop forkexec COUNT   fork, exec this binary (`hook_loop exit`, static), wait
 *     hook_loop connect COUNT PORT   UDP connect() to 127.0.0.1:PORT (no handshake, one syscall)
 *     hook_loop open COUNT PATH      openat() + close() of a regular file
 *     hook_loop getpid COUNT         getpid(): a syscall none of the programs hooks
 *     hook_loop sendrecv COUNT       send() 64 bytes on one end of a loopback TCP connection,
 *                                    recv() them on the other (the pair is set up before the clock)
 *     hook_loop uring COUNT          one io_uring NOP submitted and waited for: what following
 *                                    io_uring opens costs every other io_uring request
 *
 * Built static, so that an exec opens no shared libraries: the fork+exec+exit figure is then
 * the process lifecycle alone, not the dynamic loader's openat calls as well. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <fcntl.h>
#include <linux/io_uring.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
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

/* COUNT NOPs, each submitted and reaped alone, on a ring set up with raw syscalls. */
static int uring_nops(long count)
{
	struct io_uring_params p;
	memset(&p, 0, sizeof(p));
	int fd = syscall(__NR_io_uring_setup, 4, &p);
	if (fd < 0)
		return 2;
	char *sq = mmap(0, p.sq_off.array + p.sq_entries * sizeof(unsigned), PROT_READ | PROT_WRITE,
			MAP_SHARED | MAP_POPULATE, fd, IORING_OFF_SQ_RING);
	char *cq = mmap(0, p.cq_off.cqes + p.cq_entries * sizeof(struct io_uring_cqe), PROT_READ | PROT_WRITE,
			MAP_SHARED | MAP_POPULATE, fd, IORING_OFF_CQ_RING);
	struct io_uring_sqe *sqes = mmap(0, p.sq_entries * sizeof(struct io_uring_sqe), PROT_READ | PROT_WRITE,
					 MAP_SHARED | MAP_POPULATE, fd, IORING_OFF_SQES);
	if (sq == MAP_FAILED || cq == MAP_FAILED || sqes == MAP_FAILED)
		return 2;
	unsigned *sq_tail = (unsigned *)(sq + p.sq_off.tail), *sq_mask = (unsigned *)(sq + p.sq_off.ring_mask);
	unsigned *sq_array = (unsigned *)(sq + p.sq_off.array), *cq_head = (unsigned *)(cq + p.cq_off.head);
	for (long i = 0; i < count; i++) {
		unsigned index = *sq_tail & *sq_mask;
		memset(&sqes[index], 0, sizeof(sqes[index]));
		sqes[index].opcode = IORING_OP_NOP;
		sq_array[index] = index;
		__atomic_store_n(sq_tail, *sq_tail + 1, __ATOMIC_RELEASE);
		if (syscall(__NR_io_uring_enter, fd, 1, 1, IORING_ENTER_GETEVENTS, NULL, 0) < 0)
			return 2;
		__atomic_store_n(cq_head, *cq_head + 1, __ATOMIC_RELEASE);
	}
	close(fd);
	return 0;
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
	} else if (strcmp(mode, "uring") == 0) {
		return uring_nops(count);
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
		fprintf(stderr, "usage: hook_loop forkexec|connect|open|getpid|sendrecv|uring COUNT [PORT|PATH]\n");
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
