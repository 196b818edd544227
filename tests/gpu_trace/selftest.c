/* Exercises the recorder's edge cases without a GPU, on plain files named like NVIDIA nodes.
 *
 *   selftest DIR     (run with LD_PRELOAD=librecorder.so GPUSENTRY_TRACE=...)
 *
 * Makes DIR/nvidiactl and DIR/nvidia-uvm (regular files: every ioctl on them fails with
 * ENOTTY, which is what the wrapper must hand back unchanged), then: ioctls with a bad
 * pointer and with an argument that ends just before an unmapped page (the copies must
 * shorten, never fault), an ioctl through syscall(), an IOCTL_XFER_CMD wrapping an
 * RM_CONTROL with params, a UVM command, a dup'd descriptor, an mmap, an open that fails,
 * 4 threads of ioctls at once, an ioctl on an ordinary file (not recorded), a vfork child
 * that closes the device fd (must leave the parent's records alone), and closes.
 * Checks errno after each wrapped call; prints one JSON line with what it did.
 * Exit status 0 when every check held. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#define NV_IOWR(nr, size) (0xC0000000u | ((unsigned)(size) << 16) | ('F' << 8) | (nr))
#define THREADS 4
#define PER_THREAD 500

static int failures;
static int ctl_fd;

#define CHECK(cond, what)                                                                                      \
    do {                                                                                                       \
        if (!(cond)) {                                                                                         \
            fprintf(stderr, "selftest: %s failed (errno %d)\n", what, errno);                                \
            failures++;                                                                                        \
        }                                                                                                      \
    } while (0)

static void *worker(void *unused) {
    (void)unused;
    uint32_t buf[8] = {0};
    for (int i = 0; i < PER_THREAD; i++) {
        errno = 0;
        int r = ioctl(ctl_fd, NV_IOWR(0x2A, 32), buf);
        if (r != -1 || errno != ENOTTY) __atomic_fetch_add(&failures, 1, __ATOMIC_RELAXED);
    }
    return NULL;
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: selftest DIR\n");
        return 2;
    }
    char ctl[4096], uvm[4096], missing[4096], plain[4096];
    snprintf(ctl, sizeof ctl, "%s/nvidiactl", argv[1]);
    snprintf(uvm, sizeof uvm, "%s/nvidia-uvm", argv[1]);
    snprintf(missing, sizeof missing, "%s/nvidia7", argv[1]);
    snprintf(plain, sizeof plain, "%s/plain", argv[1]);
    umask(0);
    int ioctls = 0;

    /* open with O_CREAT: the mode vararg must reach the real open */
    ctl_fd = open(ctl, O_RDWR | O_CREAT, 0640);
    CHECK(ctl_fd >= 0, "open nvidiactl");
    struct stat st;
    CHECK(fstat(ctl_fd, &st) == 0 && (st.st_mode & 0777) == 0640, "O_CREAT mode passed through");
    CHECK(ftruncate(ctl_fd, 8192) == 0, "ftruncate");

    /* a vfork child (shares our memory, no fork handlers) closing the fd must not disturb the
     * parent's table or log: no second open record for ctl follows */
    pid_t child = vfork();
    if (child == 0) {
        close(ctl_fd);
        _exit(0);
    }
    int status = -1;
    CHECK(child > 0 && waitpid(child, &status, 0) == child && status == 0, "vfork child");

    /* errno as the real call leaves it */
    uint32_t alloc[12] = {1, 2, 3, 0xCBC0};
    errno = 0;
    CHECK(ioctl(ctl_fd, NV_IOWR(0x2B, 48), alloc) == -1 && errno == ENOTTY, "errno ENOTTY kept");
    ioctls++;

    /* a bad pointer: the recorder's copy must not fault */
    errno = 0;
    CHECK(ioctl(ctl_fd, NV_IOWR(0x2A, 32), (void *)8) == -1 && errno == ENOTTY, "bad pointer");
    ioctls++;

    /* 8 readable bytes, then an unmapped page */
    long page = sysconf(_SC_PAGESIZE);
    unsigned char *two = mmap(NULL, (size_t)page * 2, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    CHECK(two != MAP_FAILED, "mmap anonymous");
    CHECK(munmap(two + page, (size_t)page) == 0, "munmap");
    memset(two + page - 8, 0xAB, 8);
    CHECK(ioctl(ctl_fd, NV_IOWR(0x2A, 32), two + page - 8) == -1 && errno == ENOTTY, "edge of a page");
    ioctls++;

    /* through syscall() */
    errno = 0;
    CHECK(syscall(SYS_ioctl, ctl_fd, NV_IOWR(0x2B, 48), alloc) == -1 && errno == ENOTTY, "syscall(SYS_ioctl)");
    ioctls++;

    /* IOCTL_XFER_CMD {cmd, size, ptr} wrapping an RM_CONTROL (NVOS54) with 8 bytes of params */
    uint32_t params[2] = {0x10, 0xFFFFFFFF};
    struct __attribute__((packed)) {
        uint32_t client, object, cmd, flags;
        uint64_t params;
        uint32_t params_size, status;
    } control = {0xC1D00001, 0x5C000002, 0x2080200A, 0, (uint64_t)(uintptr_t)params, 8, 0};
    struct __attribute__((packed)) {
        uint32_t cmd, size;
        uint64_t ptr;
    } xfer = {0x2A, sizeof control, (uint64_t)(uintptr_t)&control};
    CHECK(ioctl(ctl_fd, NV_IOWR(0xD3, 16), &xfer) == -1 && errno == ENOTTY, "xfer");
    ioctls++;

    /* a UVM command (plain number) with a 16-byte argument */
    int uvm_fd = openat(AT_FDCWD, uvm, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    CHECK(uvm_fd >= 0, "openat nvidia-uvm");
    uint64_t init[2] = {0, 0};
    CHECK(ioctl(uvm_fd, 0x30000001, init) == -1 && errno == ENOTTY, "uvm ioctl");
    ioctls++;

    /* a dup: first seen in its ioctl */
    int dup_fd = dup(ctl_fd);
    CHECK(dup_fd >= 0, "dup");
    CHECK(ioctl(dup_fd, NV_IOWR(0x2B, 48), alloc) == -1 && errno == ENOTTY, "ioctl on a dup");
    ioctls++;

    /* an mmap of the device file */
    void *map = mmap(NULL, 4096, PROT_READ, MAP_SHARED, ctl_fd, 4096);
    CHECK(map != MAP_FAILED, "mmap nvidiactl");

    /* an open that fails: recorded with its errno, and errno kept */
    errno = 0;
    CHECK(open(missing, O_RDWR) == -1 && errno == ENOENT, "failed open keeps ENOENT");

    /* an ordinary file: not recorded */
    int plain_fd = open(plain, O_RDWR | O_CREAT, 0600);
    CHECK(plain_fd >= 0, "open plain");
    int avail = 0;
    CHECK(ioctl(plain_fd, FIONREAD, &avail) == 0, "FIONREAD on a plain file");

    /* threads */
    pthread_t threads[THREADS];
    for (int i = 0; i < THREADS; i++) pthread_create(&threads[i], NULL, worker, NULL);
    for (int i = 0; i < THREADS; i++) pthread_join(threads[i], NULL);
    ioctls += THREADS * PER_THREAD;

    CHECK(close(dup_fd) == 0, "close dup");
    CHECK(close(uvm_fd) == 0, "close uvm");
    CHECK(close(ctl_fd) == 0, "close ctl");
    errno = 0;
    CHECK(close(ctl_fd) == -1 && errno == EBADF, "second close keeps EBADF");
    close(plain_fd);
    printf("{\"pid\": %d, \"ioctls\": %d, \"failures\": %d}\n", (int)getpid(), ioctls, failures);
    return failures ? 1 : 0;
}
