/* Makes NVIDIA-looking ioctls, to test how the sensor recognises GPU devices.
 *
 *   gpu_ioctls flood PATH COUNT   RM_ALLOC (a compute class) COUNT times on PATH, as fast as it can
 *   gpu_ioctls opath PATH         one RM_ALLOC on an O_PATH fd of PATH (no driver needed)
 *   gpu_ioctls reuse PATH COUNT   COUNT times: an ioctl on a plain file, close it, open PATH with
 *                                 open_tree (an O_PATH open no program hooks), an ioctl on it
 *   gpu_ioctls rmalloc PATH       one RM_ALLOC on PATH opened normally
 *   gpu_ioctls pts DIR            in the devpts instance mounted at DIR: open DIR/ptmx, unlock
 *                                 and open its terminal, then one FIGETBSZ (ioctl 2, a number as
 *                                 small as a UVM command) on the terminal, which succeeds
 *
 * Prints "pid count seconds" (flood, reuse), "pid fd errno" (opath, rmalloc) or
 * "pid fd errno blocksize minor" (pts). */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define NV_IOWR(nr, size) (0xC0000000u | ((size) << 16) | ('F' << 8) | (nr))
#define RM_ALLOC NV_IOWR(0x2B, 48)
#define RM_CONTROL NV_IOWR(0x2A, 32)

static uint32_t nvos64[12] = {0xc1d00001, 0x5c000007, 0x5c000008, 0xCBC0};

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static int flood(const char *path, long count)
{
	int fd = open(path, O_RDWR);
	if (fd < 0) {
		perror(path);
		return 1;
	}
	double start = now();
	for (long i = 0; i < count; i++)
		ioctl(fd, RM_ALLOC, nvos64);
	printf("%d %ld %.6f\n", getpid(), count, now() - start);
	return 0;
}

static int one(const char *path, int flags)
{
	int fd = open(path, flags);
	if (fd < 0) {
		perror(path);
		return 1;
	}
	int ret = ioctl(fd, RM_ALLOC, nvos64);
	printf("%d %d %d\n", getpid(), fd, ret < 0 ? errno : 0);
	return 0;
}

static int reuse(const char *path, long count)
{
	uint32_t nvos54[8] = {0};
	double start = now();
	for (long i = 0; i < count; i++) {
		int plain = open("/etc/hostname", O_RDONLY);
		ioctl(plain, RM_CONTROL, nvos54); /* cached as "not a GPU" */
		close(plain);
		int gpu = syscall(SYS_open_tree, AT_FDCWD, path, 0);
		if (gpu != plain) {
			fprintf(stderr, "open_tree gave fd %d, not %d\n", gpu, plain);
			return 1;
		}
		ioctl(gpu, RM_CONTROL, nvos54);
		close(gpu);
	}
	printf("%d %ld %.6f\n", getpid(), count, now() - start);
	return 0;
}

/* A terminal of a private devpts instance is a character device with a real driver behind it
 * (major 136, minor its index), openable without NVIDIA hardware; FIGETBSZ is answered by the
 * VFS for any inode with a superblock block size, so the ioctl succeeds. */
static int pts(const char *dir)
{
	char path[4096];
	snprintf(path, sizeof(path), "%s/ptmx", dir);
	int master = open(path, O_RDWR | O_NOCTTY);
	int unlock = 0;
	unsigned int index = 0;
	if (master < 0 || ioctl(master, TIOCSPTLCK, &unlock) < 0 || ioctl(master, TIOCGPTN, &index) < 0) {
		perror(path);
		return 1;
	}
	snprintf(path, sizeof(path), "%s/%u", dir, index);
	int fd = open(path, O_RDWR | O_NOCTTY);
	if (fd < 0) {
		perror(path);
		return 1;
	}
	int blocksize = 0;
	int ret = ioctl(fd, FIGETBSZ, &blocksize);
	printf("%d %d %d %d %u\n", getpid(), fd, ret < 0 ? errno : 0, blocksize, index);
	return 0;
}

int main(int argc, char **argv)
{
	if (argc >= 4 && !strcmp(argv[1], "flood"))
		return flood(argv[2], atol(argv[3]));
	if (argc >= 3 && !strcmp(argv[1], "opath"))
		return one(argv[2], O_PATH);
	if (argc >= 3 && !strcmp(argv[1], "rmalloc"))
		return one(argv[2], O_RDWR);
	if (argc >= 4 && !strcmp(argv[1], "reuse"))
		return reuse(argv[2], atol(argv[3]));
	if (argc >= 3 && !strcmp(argv[1], "pts"))
		return pts(argv[2]);
	fprintf(stderr, "usage: gpu_ioctls flood|opath|reuse|rmalloc|pts PATH [COUNT]\n");
	return 2;
}
