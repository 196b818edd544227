/* A steady, paced mix of process and network activity: SPAWNS fork+exec+exit of /bin/true
 * (each three records: fork, exec, exit) and CONNECTS UDP connect() calls per second (each one
 * record), for SECONDS, in ticks of a millisecond slept to, not spun to, so that the helper
 * leaves the CPU to the agent being measured. Prints its pid, the spawns and connects made, and
 * the seconds taken.
 *
 *     steady_mix SECONDS SPAWNS_PER_S CONNECTS_PER_S PORT MARKER */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void sleep_until(double when)
{
	struct timespec ts = {.tv_sec = (time_t)when, .tv_nsec = (long)((when - (time_t)when) * 1e9)};
	clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL);
}

static void spawn(const char *marker)
{
	pid_t child = fork();
	if (child == 0) {
		execl("/bin/true", "/bin/true", marker, (char *)NULL);
		_exit(127);
	}
	if (child > 0)
		waitpid(child, NULL, 0);
}

int main(int argc, char **argv)
{
	if (argc != 6) {
		fprintf(stderr, "usage: steady_mix SECONDS SPAWNS_PER_S CONNECTS_PER_S PORT MARKER\n");
		return 2;
	}
	double seconds = atof(argv[1]), spawns = atof(argv[2]), connects = atof(argv[3]);
	struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[4]))};
	addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	int fd = socket(AF_INET, SOCK_DGRAM, 0); /* UDP connect: one record, no handshake */
	long spawned = 0, connected = 0;
	double start = now();
	for (long tick = 1; tick <= (long)(seconds * 1000); tick++) {
		double elapsed = tick / 1000.0;
		for (; spawned < (long)(elapsed * spawns); spawned++)
			spawn(argv[5]);
		for (; connected < (long)(elapsed * connects); connected++)
			connect(fd, (struct sockaddr *)&addr, sizeof(addr));
		sleep_until(start + elapsed);
	}
	printf("%d %ld %ld %.6f\n", getpid(), spawned, connected, now() - start);
	return 0;
}
