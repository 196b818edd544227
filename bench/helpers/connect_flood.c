/* connect() to a closed loopback port COUNT times at RATE per second (0: as fast as it can).
 * Each call is one connect record for the probe. Prints the rate it achieved. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
	if (argc != 4) {
		fprintf(stderr, "usage: connect_flood COUNT RATE PORT\n");
		return 2;
	}
	long count = atol(argv[1]);
	double rate = atof(argv[2]);
	struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[3]))};
	addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	int fd = socket(AF_INET, SOCK_DGRAM, 0); /* UDP connect: no handshake, one syscall */
	double start = now();
	for (long i = 0; i < count; i++) {
		if (rate > 0) {
			double due = start + i / rate;
			while (now() < due)
				;
		}
		connect(fd, (struct sockaddr *)&addr, sizeof(addr));
	}
	double elapsed = now() - start;
	printf("%d %ld %.6f\n", getpid(), count, elapsed);
	return 0;
}
