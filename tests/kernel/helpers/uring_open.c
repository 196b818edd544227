/* Opens a file through io_uring (raw syscalls, no liburing), then makes one RM_ALLOC ioctl on the
 * new fd, to test that the sensor sees GPU opens that make no open syscall.
 *
 *   uring_open openat PATH FLAGS   IORING_OP_OPENAT, completed where the kernel chooses
 *   uring_open async PATH FLAGS    IORING_OP_OPENAT with IOSQE_ASYNC: run by an io-wq worker
 *   uring_open openat2 PATH FLAGS  IORING_OP_OPENAT2
 *   uring_open sqpoll PATH FLAGS   IORING_OP_OPENAT on a ring with IORING_SETUP_SQPOLL: submitted
 *                                  and run by the ring's kernel thread
 *   uring_open direct PATH FLAGS   open PATH normally and move it to fd 0; IORING_OP_OPENAT into
 *                                  direct descriptor 0 (its result is 0, not an fd); then
 *                                  IORING_OP_FIXED_FD_INSTALL of that descriptor
 *   uring_open skip PATH FLAGS     IORING_OP_OPENAT with IOSQE_CQE_SKIP_SUCCESS (no completion
 *                                  on success), linked to a NOP that says when it is done; the
 *                                  fd is the lowest free one
 *
 * FLAGS: "path" (O_PATH: a device node with no driver behind it) or "rdwr".
 * Prints "pid fd errno threads": the fd the open gave, the ioctl's errno, and how many threads
 * the process has after the open (more than one: io_uring started an io-wq worker).
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/io_uring.h>
#include <linux/openat2.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifndef IORING_OP_FIXED_FD_INSTALL
#define IORING_OP_FIXED_FD_INSTALL 54 /* 6.8; these headers may be older */
#endif

#define NV_IOWR(nr, size) (0xC0000000u | ((size) << 16) | ('F' << 8) | (nr))
#define RM_ALLOC NV_IOWR(0x2B, 48)

struct ring {
	int fd;
	unsigned *sq_tail, *sq_mask, *sq_array;
	unsigned *cq_head, *cq_tail, *cq_mask;
	struct io_uring_sqe *sqes;
	struct io_uring_cqe *cqes;
};

static void die(const char *what)
{
	perror(what);
	exit(1);
}

static void setup(struct ring *r, unsigned flags)
{
	struct io_uring_params p;
	memset(&p, 0, sizeof(p));
	p.flags = flags;
	r->fd = syscall(__NR_io_uring_setup, 8, &p);
	if (r->fd < 0)
		die("io_uring_setup");
	size_t sq_len = p.sq_off.array + p.sq_entries * sizeof(unsigned);
	size_t cq_len = p.cq_off.cqes + p.cq_entries * sizeof(struct io_uring_cqe);
	char *sq = mmap(0, sq_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, r->fd, IORING_OFF_SQ_RING);
	char *cq = mmap(0, cq_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, r->fd, IORING_OFF_CQ_RING);
	r->sqes = mmap(0, p.sq_entries * sizeof(struct io_uring_sqe), PROT_READ | PROT_WRITE,
		       MAP_SHARED | MAP_POPULATE, r->fd, IORING_OFF_SQES);
	if (sq == MAP_FAILED || cq == MAP_FAILED || r->sqes == MAP_FAILED)
		die("mmap");
	r->sq_tail = (unsigned *)(sq + p.sq_off.tail);
	r->sq_mask = (unsigned *)(sq + p.sq_off.ring_mask);
	r->sq_array = (unsigned *)(sq + p.sq_off.array);
	r->cq_head = (unsigned *)(cq + p.cq_off.head);
	r->cq_tail = (unsigned *)(cq + p.cq_off.tail);
	r->cq_mask = (unsigned *)(cq + p.cq_off.ring_mask);
	r->cqes = (struct io_uring_cqe *)(cq + p.cq_off.cqes);
}

static struct io_uring_sqe *next_sqe(struct ring *r)
{
	unsigned tail = *r->sq_tail;
	unsigned index = tail & *r->sq_mask;
	struct io_uring_sqe *sqe = &r->sqes[index];
	memset(sqe, 0, sizeof(*sqe));
	r->sq_array[index] = index;
	__atomic_store_n(r->sq_tail, tail + 1, __ATOMIC_RELEASE);
	return sqe;
}

/* Submits what is queued and waits for one completion; returns its result. */
static int submit_and_wait(struct ring *r, unsigned count)
{
	/* With SQPOLL the ring's thread submits on its own; the wake-up flag is harmless otherwise. */
	if (syscall(__NR_io_uring_enter, r->fd, count, 1, IORING_ENTER_GETEVENTS | IORING_ENTER_SQ_WAKEUP, NULL,
		    0) < 0)
		die("io_uring_enter");
	unsigned head = *r->cq_head;
	if (head == __atomic_load_n(r->cq_tail, __ATOMIC_ACQUIRE)) {
		fprintf(stderr, "no completion\n");
		exit(1);
	}
	int res = r->cqes[head & *r->cq_mask].res;
	__atomic_store_n(r->cq_head, head + 1, __ATOMIC_RELEASE);
	return res;
}

static void prep_openat(struct io_uring_sqe *sqe, const char *path, int flags)
{
	sqe->opcode = IORING_OP_OPENAT;
	sqe->fd = AT_FDCWD;
	sqe->addr = (uintptr_t)path;
	sqe->open_flags = flags;
}

static int threads(void)
{
	int count = 0;
	DIR *dir = opendir("/proc/self/task");
	if (!dir)
		return -1;
	while (readdir(dir))
		count++;
	closedir(dir);
	return count - 2; /* . and .. */
}

static int lowest_free_fd(void)
{
	int fd = dup(0);
	close(fd);
	return fd;
}

static int open_direct_then_install(struct ring *r, const char *path, int flags)
{
	int normal = open(path, flags);
	if (normal < 0 || dup2(normal, 0) < 0)
		die(path);
	close(normal);
	int sparse[1] = {-1};
	if (syscall(__NR_io_uring_register, r->fd, IORING_REGISTER_FILES, sparse, 1) < 0)
		die("IORING_REGISTER_FILES");
	struct io_uring_sqe *sqe = next_sqe(r);
	prep_openat(sqe, path, flags);
	sqe->file_index = 1; /* descriptor 0 */
	int res = submit_and_wait(r, 1);
	if (res != 0) {
		fprintf(stderr, "direct open: %s\n", strerror(-res));
		exit(1);
	}
	sqe = next_sqe(r);
	sqe->opcode = IORING_OP_FIXED_FD_INSTALL;
	sqe->fd = 0;
	sqe->flags = IOSQE_FIXED_FILE;
	return submit_and_wait(r, 1);
}

static int open_skipping_completion(struct ring *r, const char *path, int flags)
{
	int expect = lowest_free_fd();
	struct io_uring_sqe *sqe = next_sqe(r);
	prep_openat(sqe, path, flags);
	sqe->flags = IOSQE_CQE_SKIP_SUCCESS | IOSQE_IO_LINK;
	sqe = next_sqe(r);
	sqe->opcode = IORING_OP_NOP;
	int res = submit_and_wait(r, 2);
	if (res != 0) {
		fprintf(stderr, "nop after the open: %s\n", strerror(-res));
		exit(1);
	}
	return expect;
}

int main(int argc, char **argv)
{
	if (argc != 4) {
		fprintf(stderr, "usage: uring_open openat|async|openat2|direct|skip PATH path|rdwr\n");
		return 2;
	}
	const char *mode = argv[1], *path = argv[2];
	int flags = !strcmp(argv[3], "path") ? O_PATH : O_RDWR;
	struct ring r;
	setup(&r, !strcmp(mode, "sqpoll") ? IORING_SETUP_SQPOLL : 0);
	int fd;
	if (!strcmp(mode, "direct")) {
		fd = open_direct_then_install(&r, path, flags);
	} else if (!strcmp(mode, "skip")) {
		fd = open_skipping_completion(&r, path, flags);
	} else if (!strcmp(mode, "openat2")) {
		struct open_how how = {.flags = flags};
		struct io_uring_sqe *sqe = next_sqe(&r);
		sqe->opcode = IORING_OP_OPENAT2;
		sqe->fd = AT_FDCWD;
		sqe->addr = (uintptr_t)path;
		sqe->len = sizeof(how);
		sqe->addr2 = (uintptr_t)&how;
		fd = submit_and_wait(&r, 1);
	} else {
		struct io_uring_sqe *sqe = next_sqe(&r);
		prep_openat(sqe, path, flags);
		if (!strcmp(mode, "async"))
			sqe->flags = IOSQE_ASYNC;
		fd = submit_and_wait(&r, 1);
	}
	if (fd < 0) {
		fprintf(stderr, "%s %s: %s\n", mode, path, strerror(-fd));
		return 1;
	}
	uint32_t nvos64[12] = {0xc1d00001, 0x5c000007, 0x5c000008, 0xCBC0};
	int ret = ioctl(fd, RM_ALLOC, nvos64);
	printf("%d %d %d %d\n", getpid(), fd, ret < 0 ? errno : 0, threads());
	return 0;
}
