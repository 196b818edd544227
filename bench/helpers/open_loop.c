/* open() and close() PATH COUNT times; prints "pid count seconds". */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	if (argc != 3)
		return 2;
	long count = atol(argv[2]);
	struct timespec a, b;
	clock_gettime(CLOCK_MONOTONIC, &a);
	for (long i = 0; i < count; i++)
		close(open(argv[1], O_RDONLY));
	clock_gettime(CLOCK_MONOTONIC, &b);
	printf("%d %ld %.6f\n", getpid(), count, (b.tv_sec - a.tv_sec) + (b.tv_nsec - a.tv_nsec) / 1e9);
	return 0;
}
