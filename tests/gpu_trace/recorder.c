/*
 * gpusentry ioctl recorder: an LD_PRELOAD library that logs what a process does with the
 * NVIDIA driver's device files (x86-64 Linux, glibc).
 *
 *   gcc -O2 -Wall -Wextra -Werror -shared -fPIC -o librecorder.so recorder.c -ldl -lpthread
 *   GPUSENTRY_TRACE=/tmp/trace.%p LD_PRELOAD=$PWD/librecorder.so python3 -c 'import torch; torch.zeros(1).cuda()'
 *
 * Environment
 *   GPUSENTRY_TRACE          log path; every "%p" becomes the pid. Unset or empty: the library
 *                            does nothing at all. A forked child writes its own file: "%p" gives
 *                            it its own name; a path without "%p" gets ".<pid>" appended in the
 *                            child. The file is created on the first NVIDIA call only.
 *   GPUSENTRY_TRACE_UVM_WINDOW bytes copied from a UVM ioctl's argument (default 64, max 16384)
 *   GPUSENTRY_TRACE_COPY     "pipe" forces the fallback copier (tests); default process_vm_readv
 *
 * What is wrapped: open, open64, openat, openat64, __open_2, __open64_2, __openat_2,
 * __openat64_2 (the _FORTIFY_SOURCE entry points), close, ioctl, mmap, mmap64, and syscall()
 * for SYS_open, SYS_openat, SYS_close, SYS_ioctl and SYS_mmap. Calls that bypass the PLT
 * (inline `syscall` instructions, glibc-internal calls such as fopen's open) are not seen;
 * a descriptor obtained that way (or by dup, fork, exec, SCM_RIGHTS) is still recognised on
 * its first ioctl/mmap from /proc/self/fd and fstat, and logged with a synthetic open record
 * (flag DISCOVERED).
 *
 * Descriptors 65536 and above have no table entry: each of their calls is preceded by its own
 * DISCOVERED open record.
 *
 * Which descriptors: a path whose basename is nvidiactl, nvidia<N>, nvidia-uvm,
 * nvidia-uvm-tools or nvidia-modeset, or a path under /nvidia-caps/, or a character device of
 * major 195 (st_rdev, via fstat). Every call on another descriptor is passed through untouched.
 *
 * LOG FORMAT (all integers little-endian; no padding anywhere; version 1)
 *
 *   file header:
 *     0   char[8]  magic "GSTRACE1"
 *     8   u32      version = 1
 *     12  u32      header_len
 *     16  u8[header_len]  UTF-8 JSON object: {"pid", "ppid", "argv0", "argv" (list, at most
 *                  32 entries), "started_ns" (CLOCK_REALTIME), "monotonic_ns" (CLOCK_MONOTONIC
 *                  at the same moment, to relate records' t_ns to wall time), "uname":
 *                  {"sysname", "release", "machine"}, "recorder": 1, "uvm_window"}
 *                  (bytes >= 0x7F in strings are written as \u00XX)
 *   then records until the end of the file, each:
 *     0   u32  record_len     the whole record, this field included
 *     4   u16  kind           1 open, 2 close, 3 ioctl, 4 mmap
 *     6   u16  flags          see F_* below
 *     8   u64  t_ns           CLOCK_MONOTONIC at the return of the call
 *     16  s32  fd
 *     20  s32  ret            the call's return (mmap: 0, or -1 for MAP_FAILED)
 *     24  s32  errno_value    errno after the call when ret == -1, else 0
 *     28  u32  cmd            ioctl: the request (low 32 bits); open: the device kind (D_*)
 *     32  u64  arg            ioctl: the argument pointer; open: the open flags; mmap: length
 *     40  u32  size_before
 *     44  u32  size_after
 *     48  u8[size_before]     before the call
 *     ..  u8[size_after]      after the call
 *     ..  blocks (only when flags has F_XFER_INNER and/or F_PARAMS), each:
 *           0  u32 block_kind  1 XFER inner struct, 2 RM params, 3 RM params of the XFER inner call
 *           4  u32 requested   the size the caller named (XFER: its `size`; RM: paramsSize)
 *           8  u32 len_before
 *           12 u32 len_after
 *           16 u64 ptr         the address copied from
 *           24 u8[len_before], u8[len_after]
 *         blocks come in kind order (1, 2, 3) and fill the record up to record_len.
 *
 *   open  (kind 1): fd = ret = the new fd (-1 on failure); before = the path as passed,
 *         NUL-terminated (DISCOVERED: readlink of /proc/self/fd/N); after = 16 bytes
 *         {u64 st_rdev, u32 st_mode, s32 dirfd (-100 = AT_FDCWD)} (rdev, mode 0 when it failed).
 *   close (kind 2): no data.
 *   ioctl (kind 3): before/after = the argument: _IOC_SIZE(cmd) bytes for an 'F' request,
 *         GPUSENTRY_TRACE_UVM_WINDOW bytes on a nvidia-uvm(-tools) fd (plain command numbers
 *         carry no size), otherwise _IOC_SIZE(cmd); at most 16384.
 *         IOCTL_XFER_CMD (nr 0xD3, size 16: {u32 cmd, u32 size, u64 ptr}): block 1 holds the
 *         inner struct at ptr, `size` bytes (at most 16384), before and after the call.
 *         RM_CONTROL (nr 0x2A, NVOS54: params@16, paramsSize@24) and RM_ALLOC (nr 0x2B,
 *         NVOS21: pAllocParms@16, paramsSize@24; NVOS64 (48): paramsSize@32): block 2 holds
 *         the params (at most 16384). The same for an XFER's inner call: block 3.
 *   mmap  (kind 4): arg = length; before = 32 bytes {u64 length, u64 offset, u64 addr hint,
 *         u32 prot, u32 flags}; after = 8 bytes {u64 address returned (MAP_FAILED = ~0)}.
 *
 *   flags: F_XFER_INNER 0x1, F_PARAMS 0x2 (block 2 or 3 present), F_DISCOVERED 0x4 (open
 *   record made up for a descriptor first seen in an ioctl/mmap/close), F_VIA_SYSCALL 0x8
 *   (the call came through syscall()), F_PARTIAL 0x10 (some copy was shorter than asked:
 *   memory past the end was unreadable), F_MAJOR195 0x20 (open: st_rdev major is 195).
 *
 *   Device kinds (open's cmd): 1 nvidiactl, 2 nvidia<N>, 3 nvidia-uvm, 4 nvidia-uvm-tools,
 *   5 nvidia-modeset, 6 under nvidia-caps/, 7 another node of major 195.
 *
 * Copies of the caller's memory never fault: they go through process_vm_readv on the own
 * pid, split at page boundaries (a pipe write as fallback), so a bad pointer only shortens
 * the copy. errno is saved and restored around all logging; the wrapped call is made exactly
 * as the caller made it. Thread-safe (one mutex around the fd table and the write); the
 * real call itself is made outside the lock.
 */

#undef _FORTIFY_SOURCE
#undef _FILE_OFFSET_BITS
#undef _TIME_BITS
#define _GNU_SOURCE 1

#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/uio.h>
#include <sys/utsname.h>
#include <time.h>
#include <unistd.h>

#define TRACE_VERSION 1
#define MAX_COPY 16384u
#define MAX_FDS 65536
#define NV_MAJOR 195u

enum { K_OPEN = 1, K_CLOSE = 2, K_IOCTL = 3, K_MMAP = 4 };
enum { F_XFER_INNER = 0x1, F_PARAMS = 0x2, F_DISCOVERED = 0x4, F_VIA_SYSCALL = 0x8, F_PARTIAL = 0x10,
       F_MAJOR195 = 0x20 };
enum { D_NONE = 0, D_CTL = 1, D_GPU = 2, D_UVM = 3, D_UVM_TOOLS = 4, D_MODESET = 5, D_CAPS = 6, D_OTHER195 = 7 };
enum { B_XFER_INNER = 1, B_PARAMS = 2, B_INNER_PARAMS = 3 };

struct __attribute__((packed)) rec_hdr {
    uint32_t record_len;
    uint16_t kind;
    uint16_t flags;
    uint64_t t_ns;
    int32_t fd;
    int32_t ret;
    int32_t errno_value;
    uint32_t cmd;
    uint64_t arg;
    uint32_t size_before;
    uint32_t size_after;
};
_Static_assert(sizeof(struct rec_hdr) == 48, "record header is 48 bytes");

struct __attribute__((packed)) blk_hdr {
    uint32_t block_kind;
    uint32_t requested;
    uint32_t len_before;
    uint32_t len_after;
    uint64_t ptr;
};
_Static_assert(sizeof(struct blk_hdr) == 24, "block header is 24 bytes");

struct blk {
    struct blk_hdr h;
    unsigned char *before;
    unsigned char *after;
};

/* One table entry per fd number: what we know of the file behind it. */
struct fdent {
    uint8_t kind;        /* D_*; D_NONE = not an NVIDIA file */
    uint8_t known;       /* the entry describes (dev, ino) */
    uint32_t announced;  /* generation in which its open record was written to this process's log */
    dev_t dev;
    ino_t ino;
};

typedef int (*open_fn)(const char *, int, ...);
typedef int (*openat_fn)(int, const char *, int, ...);
typedef int (*open2_fn)(const char *, int);
typedef int (*openat2_fn)(int, const char *, int);
typedef int (*close_fn)(int);
typedef int (*ioctl_fn)(int, unsigned long, ...);
typedef void *(*mmap_fn)(void *, size_t, int, int, int, off_t);
typedef long (*syscall_fn)(long, ...);

static open_fn real_open, real_open64;
static openat_fn real_openat, real_openat64;
static open2_fn real_open_2, real_open64_2;
static openat2_fn real_openat_2, real_openat64_2;
static close_fn real_close;
static ioctl_fn real_ioctl;
static mmap_fn real_mmap, real_mmap64;
static syscall_fn real_syscall;

static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_mutex_t g_pipe_lock = PTHREAD_MUTEX_INITIALIZER;
static volatile int g_state;         /* 0 not yet initialised, 1 recording, -1 off */
static pid_t g_owner_pid;            /* the process whose state this is (see enabled()) */
static char g_template[PATH_MAX];
static int g_child_suffix;           /* a forked child of a template without %p */
static int g_log_fd = -1;
static pid_t g_log_pid;
static dev_t g_log_dev;
static ino_t g_log_ino;
static uint32_t g_gen = 1;           /* bumped in a forked child: every inherited fd is announced again */
static struct fdent g_fds[MAX_FDS];
static unsigned g_uvm_window = 64;
static int g_use_pipe;
static int g_pipe[2] = {-1, -1};
static dev_t g_pipe_dev[2];
static ino_t g_pipe_ino[2];
static long g_page = 4096;
static int g_warned;

/* ---- raw syscalls (for use before the real functions are resolved) -------------------- */

static long raw_syscall6(long n, long a1, long a2, long a3, long a4, long a5, long a6) {
    long ret;
    register long r10 __asm__("r10") = a4;
    register long r8 __asm__("r8") = a5;
    register long r9 __asm__("r9") = a6;
    __asm__ volatile("syscall"
                     : "=a"(ret)
                     : "a"(n), "D"(a1), "S"(a2), "d"(a3), "r"(r10), "r"(r8), "r"(r9)
                     : "rcx", "r11", "memory");
    return ret;
}

static void *sym(const char *name) { return dlsym(RTLD_NEXT, name); }

static void resolve(void) {
    if (__atomic_load_n(&real_ioctl, __ATOMIC_ACQUIRE)) return;
    real_open = (open_fn)sym("open");
    real_open64 = (open_fn)sym("open64");
    real_openat = (openat_fn)sym("openat");
    real_openat64 = (openat_fn)sym("openat64");
    real_open_2 = (open2_fn)sym("__open_2");
    real_open64_2 = (open2_fn)sym("__open64_2");
    real_openat_2 = (openat2_fn)sym("__openat_2");
    real_openat64_2 = (openat2_fn)sym("__openat64_2");
    real_close = (close_fn)sym("close");
    real_mmap = (mmap_fn)sym("mmap");
    real_mmap64 = (mmap_fn)sym("mmap64");
    real_syscall = (syscall_fn)sym("syscall");
    __atomic_store_n(&real_ioctl, (ioctl_fn)sym("ioctl"), __ATOMIC_RELEASE);
}

/* ---- helpers -------------------------------------------------------------------------- */

static uint64_t now_ns(clockid_t clock) {
    struct timespec ts;
    clock_gettime(clock, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static int write_all(int fd, const void *data, size_t len) {
    const char *p = data;
    while (len > 0) {
        ssize_t n = write(fd, p, len);
        if (n < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

static void warn_once(const char *what) {
    if (g_warned) return;
    g_warned = 1;
    char msg[PATH_MAX + 160];
    int n = snprintf(msg, sizeof msg, "gpusentry recorder: %s (%s); recording stops in pid %d\n", what,
                     strerror(errno), (int)getpid());
    if (n > 0) write_all(2, msg, (size_t)n < sizeof msg ? (size_t)n : sizeof msg - 1);
}

static unsigned env_uint(const char *name, unsigned dflt, unsigned max) {
    const char *v = getenv(name);
    if (!v || !*v) return dflt;
    char *end;
    unsigned long x = strtoul(v, &end, 0);
    if (*end || x > max) return dflt;
    return (unsigned)x;
}

static void at_fork_prepare(void) { pthread_mutex_lock(&g_lock); }
static void at_fork_parent(void) { pthread_mutex_unlock(&g_lock); }
static void at_fork_child(void) {
    int saved = errno;
    pthread_mutex_init(&g_lock, NULL);
    pthread_mutex_init(&g_pipe_lock, NULL);
    if (g_log_fd >= 0) real_close(g_log_fd); /* the parent's log: the child writes its own */
    g_log_fd = -1;
    g_owner_pid = getpid();
    for (int i = 0; i < 2; i++) { /* a pipe shared with the parent would mix both copies */
        if (g_pipe[i] >= 0) real_close(g_pipe[i]);
        g_pipe[i] = -1;
    }
    g_gen++;
    if (!strstr(g_template, "%p")) g_child_suffix = 1;
    errno = saved;
}

static void init(void) {
    if (g_state) return;
    resolve();
    const char *path = getenv("GPUSENTRY_TRACE");
    if (!path || !*path || strlen(path) >= sizeof g_template - 32) {
        g_state = -1;
        return;
    }
    strcpy(g_template, path);
    g_uvm_window = env_uint("GPUSENTRY_TRACE_UVM_WINDOW", 64, MAX_COPY);
    const char *copy = getenv("GPUSENTRY_TRACE_COPY");
    g_use_pipe = copy && strcmp(copy, "pipe") == 0;
    long page = sysconf(_SC_PAGESIZE);
    if (page > 0) g_page = page;
    pthread_atfork(at_fork_prepare, at_fork_parent, at_fork_child);
    g_owner_pid = getpid();
    g_state = 1;
}

__attribute__((constructor)) static void recorder_init(void) {
    int saved = errno;
    init();
    errno = saved;
}

/*
 * Recording, and in the process that owns this state. A vfork() child, or a clone(CLONE_VM)
 * one such as posix_spawn's, shares our memory without fork handlers having run: whatever it
 * does (often closing descriptors before exec) passes through untouched, so that it never
 * rewrites the parent's fd table or log.
 */
static int enabled(void) {
    if (!g_state) init();
    return g_state > 0 && getpid() == g_owner_pid;
}

/* The fallback copier's pipe is still ours (a program may close or reuse any fd); g_pipe_lock held. */
static int pipe_ok(void) {
    struct stat st;
    for (int i = 0; i < 2; i++)
        if (g_pipe[i] < 0 || fstat(g_pipe[i], &st) != 0 || st.st_dev != g_pipe_dev[i] || st.st_ino != g_pipe_ino[i])
            return 0;
    return 1;
}

static int open_pipe(void) {
    struct stat st;
    if (pipe2(g_pipe, O_CLOEXEC | O_NONBLOCK) < 0) {
        g_pipe[0] = g_pipe[1] = -1;
        return -1;
    }
    for (int i = 0; i < 2; i++) {
        if (fstat(g_pipe[i], &st) != 0) return -1;
        g_pipe_dev[i] = st.st_dev;
        g_pipe_ino[i] = st.st_ino;
    }
    return 0;
}

/* Copy n bytes of this process's memory at src; returns how many could be read. */
static size_t safe_copy(unsigned char *dst, uint64_t src, size_t n) {
    if (!src || !n) return 0;
    size_t done = 0;
    if (!g_use_pipe) {
        while (done < n) {
            uint64_t at = src + done;
            size_t chunk = (size_t)(g_page - (long)(at % (uint64_t)g_page));
            if (chunk > n - done) chunk = n - done;
            struct iovec local = {dst + done, chunk};
            struct iovec remote = {(void *)(uintptr_t)at, chunk};
            ssize_t got = process_vm_readv(getpid(), &local, 1, &remote, 1, 0);
            if (got < 0 && (errno == ENOSYS || errno == EPERM) && done == 0) {
                g_use_pipe = 1; /* seccomp or an old kernel: fall back */
                break;
            }
            if (got <= 0) return done;
            done += (size_t)got;
            if ((size_t)got < chunk) return done;
        }
        if (!g_use_pipe) return done;
    }
    pthread_mutex_lock(&g_pipe_lock);
    if (!pipe_ok() && open_pipe() < 0) {
        pthread_mutex_unlock(&g_pipe_lock);
        return 0;
    }
    while (done < n) {
        uint64_t at = src + done;
        size_t chunk = (size_t)(g_page - (long)(at % (uint64_t)g_page));
        if (chunk > n - done) chunk = n - done;
        ssize_t w = write(g_pipe[1], (const void *)(uintptr_t)at, chunk); /* EFAULT, never a fault */
        if (w <= 0) break;
        ssize_t r = read(g_pipe[0], dst + done, (size_t)w);
        if (r != w) break;
        done += (size_t)w;
        if ((size_t)w < chunk) break;
    }
    pthread_mutex_unlock(&g_pipe_lock);
    return done;
}

static int kind_of_path(const char *path) {
    if (!path) return D_NONE;
    if (strstr(path, "/nvidia-caps/")) return D_CAPS;
    const char *base = strrchr(path, '/');
    base = base ? base + 1 : path;
    if (strcmp(base, "nvidiactl") == 0) return D_CTL;
    if (strcmp(base, "nvidia-uvm") == 0) return D_UVM;
    if (strcmp(base, "nvidia-uvm-tools") == 0) return D_UVM_TOOLS;
    if (strcmp(base, "nvidia-modeset") == 0) return D_MODESET;
    if (strncmp(base, "nvidia", 6) == 0 && base[6]) {
        const char *p = base + 6;
        while (*p >= '0' && *p <= '9') p++;
        if (!*p) return D_GPU;
    }
    return D_NONE;
}

static int kind_of_rdev(const struct stat *st) {
    if (!S_ISCHR(st->st_mode) || major(st->st_rdev) != NV_MAJOR) return D_NONE;
    unsigned mi = minor(st->st_rdev);
    return mi == 255 ? D_CTL : mi == 254 ? D_MODESET : mi < 254 ? D_GPU : D_OTHER195;
}

static int fd_path(int fd, char *buf, size_t len) {
    char link[64];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, buf, len - 1);
    if (n < 0) return -1;
    buf[n] = 0;
    return 0;
}

/* ---- the log -------------------------------------------------------------------------- */

static size_t json_str(char *out, size_t cap, size_t at, const char *s) {
    static const char hex[] = "0123456789abcdef";
    if (at < cap) out[at] = '"';
    at++;
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        char esc[7];
        size_t n = 0;
        if (*p == '"' || *p == '\\') {
            esc[n++] = '\\';
            esc[n++] = (char)*p;
        } else if (*p < 0x20 || *p >= 0x7F) {
            memcpy(esc, "\\u00", 4);
            n = 4;
            esc[n++] = hex[*p >> 4];
            esc[n++] = hex[*p & 15];
        } else {
            esc[n++] = (char)*p;
        }
        for (size_t i = 0; i < n; i++, at++)
            if (at < cap) out[at] = esc[i];
    }
    if (at < cap) out[at] = '"';
    return at + 1;
}

static size_t json_raw(char *out, size_t cap, size_t at, const char *s) {
    for (; *s; s++, at++)
        if (at < cap) out[at] = *s;
    return at;
}

/* Opens this process's log and writes its header; called with g_lock held. */
static int open_log(void) {
    pid_t pid = getpid();
    char path[PATH_MAX + 32], num[32];
    size_t at = 0;
    snprintf(num, sizeof num, "%d", (int)pid);
    for (const char *p = g_template; *p && at < PATH_MAX; p++) {
        if (p[0] == '%' && p[1] == 'p') {
            for (const char *q = num; *q && at < PATH_MAX; q++) path[at++] = *q;
            p++;
        } else {
            path[at++] = *p;
        }
    }
    path[at] = 0;
    if (g_child_suffix) {
        strncat(path, ".", sizeof path - strlen(path) - 1);
        strncat(path, num, sizeof path - strlen(path) - 1);
    }
    int fd = real_open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (fd < 0) {
        warn_once("cannot open the trace file named by GPUSENTRY_TRACE");
        g_state = -1;
        return -1;
    }
    struct stat st;
    if (fstat(fd, &st) == 0) {
        g_log_dev = st.st_dev;
        g_log_ino = st.st_ino;
    }
    g_log_fd = fd;
    g_log_pid = pid;

    /* the header: argv from /proc/self/cmdline */
    static char cmdline[8192];
    size_t clen = 0;
    int cfd = real_open("/proc/self/cmdline", O_RDONLY | O_CLOEXEC);
    if (cfd >= 0) {
        ssize_t n;
        while (clen < sizeof cmdline - 1 && (n = read(cfd, cmdline + clen, sizeof cmdline - 1 - clen)) > 0)
            clen += (size_t)n;
        real_close(cfd);
    }
    cmdline[clen] = 0;
    struct utsname u;
    memset(&u, 0, sizeof u);
    uname(&u);
    static char json[16384];
    size_t cap = sizeof json - 1, j = 0;
    char tmp[160];
    snprintf(tmp, sizeof tmp, "{\"pid\": %d, \"ppid\": %d, \"started_ns\": %llu, \"monotonic_ns\": %llu, ",
             (int)pid, (int)getppid(), (unsigned long long)now_ns(CLOCK_REALTIME),
             (unsigned long long)now_ns(CLOCK_MONOTONIC));
    j = json_raw(json, cap, j, tmp);
    j = json_raw(json, cap, j, "\"argv0\": ");
    j = json_str(json, cap, j, cmdline);
    j = json_raw(json, cap, j, ", \"argv\": [");
    size_t off = 0;
    for (int i = 0; off < clen && i < 32; i++) {
        if (i) j = json_raw(json, cap, j, ", ");
        j = json_str(json, cap, j, cmdline + off);
        off += strlen(cmdline + off) + 1;
    }
    j = json_raw(json, cap, j, "], \"uname\": {\"sysname\": ");
    j = json_str(json, cap, j, u.sysname);
    j = json_raw(json, cap, j, ", \"release\": ");
    j = json_str(json, cap, j, u.release);
    j = json_raw(json, cap, j, ", \"machine\": ");
    j = json_str(json, cap, j, u.machine);
    snprintf(tmp, sizeof tmp, "}, \"recorder\": %d, \"uvm_window\": %u}", TRACE_VERSION, g_uvm_window);
    j = json_raw(json, cap, j, tmp);
    if (j > cap) { /* too long for the buffer: drop argv, keep it valid JSON */
        j = 0;
        snprintf(tmp, sizeof tmp, "{\"pid\": %d, \"argv0\": \"?\", \"started_ns\": %llu, \"recorder\": %d}", (int)pid,
                 (unsigned long long)now_ns(CLOCK_REALTIME), TRACE_VERSION);
        j = json_raw(json, cap, j, tmp);
    }
    unsigned char head[16];
    uint32_t version = TRACE_VERSION, hlen = (uint32_t)j;
    memcpy(head, "GSTRACE1", 8);
    memcpy(head + 8, &version, 4);
    memcpy(head + 12, &hlen, 4);
    if (write_all(fd, head, sizeof head) < 0 || write_all(fd, json, j) < 0) {
        warn_once("cannot write the trace file");
        g_state = -1;
        return -1;
    }
    return 0;
}

/* The log fd for this process, (re)opened when needed; g_lock held. */
static int log_fd(void) {
    if (g_state < 0) return -1;
    if (g_log_fd >= 0 && g_log_pid == getpid()) {
        struct stat st;
        if (fstat(g_log_fd, &st) == 0 && st.st_dev == g_log_dev && st.st_ino == g_log_ino) return g_log_fd;
        /* the program closed or replaced our descriptor: open the file again (append) */
    }
    g_log_fd = -1;
    if (open_log() < 0) return -1;
    return g_log_fd;
}

/* Writes one record; g_lock held. */
static void emit(struct rec_hdr *h, const void *before, const void *after, struct blk *blocks, int nblocks) {
    size_t total = sizeof *h + h->size_before + h->size_after;
    for (int i = 0; i < nblocks; i++) total += sizeof blocks[i].h + blocks[i].h.len_before + blocks[i].h.len_after;
    h->record_len = (uint32_t)total;
    int fd = log_fd();
    if (fd < 0) return;
    unsigned char *buf = malloc(total);
    if (!buf) return;
    size_t at = 0;
    memcpy(buf, h, sizeof *h);
    at += sizeof *h;
    if (h->size_before) memcpy(buf + at, before, h->size_before);
    at += h->size_before;
    if (h->size_after) memcpy(buf + at, after, h->size_after);
    at += h->size_after;
    for (int i = 0; i < nblocks; i++) {
        memcpy(buf + at, &blocks[i].h, sizeof blocks[i].h);
        at += sizeof blocks[i].h;
        if (blocks[i].h.len_before) memcpy(buf + at, blocks[i].before, blocks[i].h.len_before);
        at += blocks[i].h.len_before;
        if (blocks[i].h.len_after) memcpy(buf + at, blocks[i].after, blocks[i].h.len_after);
        at += blocks[i].h.len_after;
    }
    if (write_all(fd, buf, total) < 0) warn_once("cannot write the trace file");
    free(buf);
}

static void emit_open(int fd, int ret, int err, int kind, uint64_t oflags, const char *path, int dirfd,
                      const struct stat *st, uint16_t flags) {
    unsigned char after[16];
    memset(after, 0, sizeof after);
    if (st) {
        uint64_t rdev = st->st_rdev;
        uint32_t mode = st->st_mode;
        memcpy(after, &rdev, 8);
        memcpy(after + 8, &mode, 4);
        if (S_ISCHR(st->st_mode) && major(st->st_rdev) == NV_MAJOR) flags |= F_MAJOR195;
    }
    int32_t d = dirfd;
    memcpy(after + 12, &d, 4);
    size_t plen = strnlen(path, PATH_MAX) + 1;
    char *copy = malloc(plen);
    if (!copy) return;
    memcpy(copy, path, plen - 1);
    copy[plen - 1] = 0;
    struct rec_hdr h = {0, K_OPEN, flags, now_ns(CLOCK_MONOTONIC), fd, ret, err, (uint32_t)kind, oflags,
                        (uint32_t)plen, sizeof after};
    emit(&h, copy, after, NULL, 0);
    free(copy);
}

/* ---- the fd table --------------------------------------------------------------------- */

/*
 * What `fd` is (D_*), from the table when fstat says it is still the same file, else from
 * its /proc/self/fd link and st_rdev. A NVIDIA fd not yet announced in this process's log
 * gets a synthetic open record first. g_lock held.
 */
static int classify(int fd, uint16_t via) {
    if (fd < 0) return D_NONE;
    struct stat st;
    if (fstat(fd, &st) != 0) return D_NONE;
    struct fdent *e = fd < MAX_FDS ? &g_fds[fd] : NULL;
    int kind;
    if (e && e->known && e->dev == st.st_dev && e->ino == st.st_ino) {
        kind = e->kind;
    } else {
        char path[PATH_MAX];
        kind = kind_of_rdev(&st);
        if (!kind && fd_path(fd, path, sizeof path) == 0) kind = kind_of_path(path);
        if (e) {
            e->kind = (uint8_t)kind;
            e->known = 1;
            e->announced = 0;
            e->dev = st.st_dev;
            e->ino = st.st_ino;
        }
    }
    if (kind && (!e || e->announced != g_gen)) {
        char path[PATH_MAX];
        if (fd_path(fd, path, sizeof path) != 0) strcpy(path, "?");
        emit_open(fd, fd, 0, kind, 0, path, AT_FDCWD, &st, (uint16_t)(F_DISCOVERED | via));
        if (e) e->announced = g_gen;
    }
    return kind;
}

static void after_open(int ret, int err, const char *path, int dirfd, int oflags, uint16_t via) {
    int saved = errno;
    if (!enabled()) {
        errno = saved;
        return;
    }
    int kind = kind_of_path(path);
    pthread_mutex_lock(&g_lock);
    if (ret >= 0) {
        struct stat st;
        if (fstat(ret, &st) == 0) {
            if (!kind) kind = kind_of_rdev(&st);
            if (ret < MAX_FDS) {
                struct fdent *e = &g_fds[ret];
                e->kind = (uint8_t)kind;
                e->known = 1;
                e->dev = st.st_dev;
                e->ino = st.st_ino;
                e->announced = kind ? g_gen : 0;
            }
            if (kind) emit_open(ret, ret, 0, kind, (uint64_t)(unsigned)oflags, path, dirfd, &st, via);
        }
    } else if (kind) {
        emit_open(-1, ret, err, kind, (uint64_t)(unsigned)oflags, path, dirfd, NULL, via);
    }
    pthread_mutex_unlock(&g_lock);
    errno = saved;
}

/* ---- ioctl ---------------------------------------------------------------------------- */

/* RM_CONTROL / RM_ALLOC: where the params pointer and size are in the struct */
static int rm_params(unsigned nr, const unsigned char *s, size_t len, uint64_t *ptr, uint32_t *size) {
    if (nr == 0x2A && len >= 32) {
        memcpy(ptr, s + 16, 8);
        memcpy(size, s + 24, 4);
        return 1;
    }
    if (nr == 0x2B && (len == 32 || len == 48)) {
        memcpy(ptr, s + 16, 8);
        memcpy(size, s + (len == 32 ? 24 : 32), 4);
        return 1;
    }
    return 0;
}

static int capture_block(struct blk *b, unsigned kind, uint64_t ptr, uint32_t requested, uint16_t *flags) {
    b->h.block_kind = kind;
    b->h.requested = requested;
    b->h.ptr = ptr;
    b->h.len_after = 0;
    uint32_t want = requested < MAX_COPY ? requested : MAX_COPY;
    b->before = malloc(want ? want : 1);
    b->after = malloc(want ? want : 1);
    if (!b->before || !b->after) {
        free(b->before);
        free(b->after);
        return 0;
    }
    b->h.len_before = (uint32_t)safe_copy(b->before, ptr, want);
    if (b->h.len_before < requested) *flags |= F_PARTIAL;
    return 1;
}

static void finish_block(struct blk *b, uint16_t *flags) {
    uint32_t want = b->h.requested < MAX_COPY ? b->h.requested : MAX_COPY;
    b->h.len_after = (uint32_t)safe_copy(b->after, b->h.ptr, want);
    if (b->h.len_after < b->h.requested) *flags |= F_PARTIAL;
}

static int do_ioctl(int fd, unsigned long request, void *arg, uint16_t via) {
    int saved = errno;
    int kind = D_NONE;
    if (enabled() && fd >= 0) {
        pthread_mutex_lock(&g_lock);
        kind = classify(fd, via);
        pthread_mutex_unlock(&g_lock);
    }
    errno = saved;
    if (!kind) return via ? (int)real_syscall(SYS_ioctl, fd, request, arg) : real_ioctl(fd, request, arg);

    uint32_t cmd = (uint32_t)request;
    unsigned type = _IOC_TYPE(cmd), nr = _IOC_NR(cmd);
    size_t want;
    if (kind == D_UVM || kind == D_UVM_TOOLS) want = g_uvm_window;
    else want = _IOC_SIZE(cmd);
    if (want > MAX_COPY) want = MAX_COPY;
    uint16_t flags = via;
    unsigned char *before = malloc(want ? want : 1), *after = malloc(want ? want : 1);
    size_t nbefore = 0, nafter = 0;
    struct blk blocks[3];
    int nblocks = 0;
    if (before && after) {
        nbefore = safe_copy(before, (uint64_t)(uintptr_t)arg, want);
        if (nbefore < want) flags |= F_PARTIAL;
        int is_rm = type == 'F' && kind != D_UVM && kind != D_UVM_TOOLS;
        uint64_t ptr;
        uint32_t size;
        if (is_rm && nr == 0xD3 && nbefore == 16) { /* IOCTL_XFER_CMD {cmd, size, ptr} */
            uint32_t inner_nr;
            memcpy(&inner_nr, before, 4);
            memcpy(&size, before + 4, 4);
            memcpy(&ptr, before + 8, 8);
            if (capture_block(&blocks[nblocks], B_XFER_INNER, ptr, size, &flags)) {
                flags |= F_XFER_INNER;
                struct blk *inner = &blocks[nblocks++];
                uint64_t p2;
                uint32_t s2;
                if (rm_params(inner_nr & 0xFF, inner->before, inner->h.len_before, &p2, &s2) &&
                    capture_block(&blocks[nblocks], B_INNER_PARAMS, p2, s2, &flags)) {
                    flags |= F_PARAMS;
                    nblocks++;
                }
            }
        } else if (is_rm && rm_params(nr, before, nbefore, &ptr, &size) &&
                   capture_block(&blocks[nblocks], B_PARAMS, ptr, size, &flags)) {
            flags |= F_PARAMS;
            nblocks++;
        }
    }
    /* blocks must be in kind order: XFER inner (1) before the inner call's params (3) */
    errno = saved;
    int ret = via ? (int)real_syscall(SYS_ioctl, fd, request, arg) : real_ioctl(fd, request, arg);
    int err = errno;
    if (before && after) {
        nafter = safe_copy(after, (uint64_t)(uintptr_t)arg, want);
        if (nafter < want) flags |= F_PARTIAL;
        for (int i = 0; i < nblocks; i++) finish_block(&blocks[i], &flags);
        struct rec_hdr h = {0, K_IOCTL, flags, now_ns(CLOCK_MONOTONIC), fd, ret, ret == -1 ? err : 0, cmd,
                            (uint64_t)(uintptr_t)arg, (uint32_t)nbefore, (uint32_t)nafter};
        pthread_mutex_lock(&g_lock);
        emit(&h, before, after, blocks, nblocks);
        pthread_mutex_unlock(&g_lock);
    }
    for (int i = 0; i < nblocks; i++) {
        free(blocks[i].before);
        free(blocks[i].after);
    }
    free(before);
    free(after);
    errno = err;
    return ret;
}

int ioctl(int fd, unsigned long request, ...) {
    va_list ap;
    va_start(ap, request);
    void *arg = va_arg(ap, void *);
    va_end(ap);
    resolve();
    return do_ioctl(fd, request, arg, 0);
}

/* ---- close ---------------------------------------------------------------------------- */

static int do_close(int fd, uint16_t via) {
    int saved = errno;
    int kind = D_NONE;
    if (enabled() && fd >= 0) {
        pthread_mutex_lock(&g_lock);
        struct stat st;
        /* only fds the table knows as NVIDIA: an fstat of every closed fd is not needed */
        if (fd < MAX_FDS && g_fds[fd].known && g_fds[fd].kind && fstat(fd, &st) == 0 && st.st_dev == g_fds[fd].dev &&
            st.st_ino == g_fds[fd].ino)
            kind = classify(fd, via);
        if (fd < MAX_FDS) g_fds[fd].known = 0;
        if (fd == g_log_fd) g_log_fd = -1; /* the program closes our log: reopen on the next record */
        pthread_mutex_unlock(&g_lock);
    }
    errno = saved;
    int ret = via ? (int)real_syscall(SYS_close, fd) : real_close(fd);
    int err = errno;
    if (kind) {
        struct rec_hdr h = {0, K_CLOSE, via, now_ns(CLOCK_MONOTONIC), fd, ret, ret == -1 ? err : 0, 0, 0, 0, 0};
        pthread_mutex_lock(&g_lock);
        emit(&h, NULL, NULL, NULL, 0);
        pthread_mutex_unlock(&g_lock);
    }
    errno = err;
    return ret;
}

int close(int fd) {
    resolve();
    return do_close(fd, 0);
}

/* ---- mmap ----------------------------------------------------------------------------- */

static void *do_mmap(mmap_fn fn, void *addr, size_t length, int prot, int flags, int fd, off_t offset, uint16_t via) {
    int saved = errno;
    int kind = D_NONE;
    if (fd >= 0 && !(flags & MAP_ANONYMOUS) && enabled()) {
        pthread_mutex_lock(&g_lock);
        kind = classify(fd, via);
        pthread_mutex_unlock(&g_lock);
    }
    errno = saved;
    void *ret;
    if (via) ret = (void *)real_syscall(SYS_mmap, addr, length, prot, flags, fd, offset);
    else ret = fn(addr, length, prot, flags, fd, offset);
    int err = errno;
    if (kind) {
        unsigned char before[32], after[8];
        uint64_t len = length, off = (uint64_t)offset, hint = (uint64_t)(uintptr_t)addr,
                 res = (uint64_t)(uintptr_t)ret;
        uint32_t p = (uint32_t)prot, f = (uint32_t)flags;
        memcpy(before, &len, 8);
        memcpy(before + 8, &off, 8);
        memcpy(before + 16, &hint, 8);
        memcpy(before + 24, &p, 4);
        memcpy(before + 28, &f, 4);
        memcpy(after, &res, 8);
        int failed = ret == MAP_FAILED;
        struct rec_hdr h = {0, K_MMAP, via, now_ns(CLOCK_MONOTONIC), fd, failed ? -1 : 0, failed ? err : 0, 0, len,
                            sizeof before, sizeof after};
        pthread_mutex_lock(&g_lock);
        emit(&h, before, after, NULL, 0);
        pthread_mutex_unlock(&g_lock);
    }
    errno = err;
    return ret;
}

void *mmap(void *addr, size_t length, int prot, int flags, int fd, off_t offset) {
    if (!__atomic_load_n(&real_ioctl, __ATOMIC_ACQUIRE)) {
        /* malloc inside dlsym may map memory before anything is resolved */
        if (fd < 0 || (flags & MAP_ANONYMOUS)) {
            long r = raw_syscall6(SYS_mmap, (long)addr, (long)length, prot, flags, fd, (long)offset);
            if (r < 0 && r > -4096) {
                errno = (int)-r;
                return MAP_FAILED;
            }
            return (void *)r;
        }
        resolve();
    }
    return do_mmap(real_mmap, addr, length, prot, flags, fd, offset, 0);
}

void *mmap64(void *addr, size_t length, int prot, int flags, int fd, off_t offset) {
    resolve();
    return do_mmap(real_mmap64 ? real_mmap64 : real_mmap, addr, length, prot, flags, fd, offset, 0);
}

/* ---- open ----------------------------------------------------------------------------- */

static int needs_mode(int oflag) { return (oflag & O_CREAT) || (oflag & O_TMPFILE) == O_TMPFILE; }

int open(const char *path, int oflag, ...) {
    mode_t mode = 0;
    if (needs_mode(oflag)) {
        va_list ap;
        va_start(ap, oflag);
        mode = va_arg(ap, mode_t);
        va_end(ap);
    }
    resolve();
    int ret = real_open(path, oflag, mode);
    after_open(ret, errno, path, AT_FDCWD, oflag, 0);
    return ret;
}

int open64(const char *path, int oflag, ...) {
    mode_t mode = 0;
    if (needs_mode(oflag)) {
        va_list ap;
        va_start(ap, oflag);
        mode = va_arg(ap, mode_t);
        va_end(ap);
    }
    resolve();
    int ret = (real_open64 ? real_open64 : real_open)(path, oflag, mode);
    after_open(ret, errno, path, AT_FDCWD, oflag, 0);
    return ret;
}

int openat(int dirfd, const char *path, int oflag, ...) {
    mode_t mode = 0;
    if (needs_mode(oflag)) {
        va_list ap;
        va_start(ap, oflag);
        mode = va_arg(ap, mode_t);
        va_end(ap);
    }
    resolve();
    int ret = real_openat(dirfd, path, oflag, mode);
    after_open(ret, errno, path, dirfd, oflag, 0);
    return ret;
}

int openat64(int dirfd, const char *path, int oflag, ...) {
    mode_t mode = 0;
    if (needs_mode(oflag)) {
        va_list ap;
        va_start(ap, oflag);
        mode = va_arg(ap, mode_t);
        va_end(ap);
    }
    resolve();
    int ret = (real_openat64 ? real_openat64 : real_openat)(dirfd, path, oflag, mode);
    after_open(ret, errno, path, dirfd, oflag, 0);
    return ret;
}

/* _FORTIFY_SOURCE's entry points (open with a non-constant flag and no mode) */
int __open_2(const char *path, int oflag);
int __open64_2(const char *path, int oflag);
int __openat_2(int dirfd, const char *path, int oflag);
int __openat64_2(int dirfd, const char *path, int oflag);

int __open_2(const char *path, int oflag) {
    resolve();
    int ret = real_open_2 ? real_open_2(path, oflag) : real_open(path, oflag);
    after_open(ret, errno, path, AT_FDCWD, oflag, 0);
    return ret;
}

int __open64_2(const char *path, int oflag) {
    resolve();
    int ret = real_open64_2 ? real_open64_2(path, oflag) : real_open(path, oflag);
    after_open(ret, errno, path, AT_FDCWD, oflag, 0);
    return ret;
}

int __openat_2(int dirfd, const char *path, int oflag) {
    resolve();
    int ret = real_openat_2 ? real_openat_2(dirfd, path, oflag) : real_openat(dirfd, path, oflag);
    after_open(ret, errno, path, dirfd, oflag, 0);
    return ret;
}

int __openat64_2(int dirfd, const char *path, int oflag) {
    resolve();
    int ret = real_openat64_2 ? real_openat64_2(dirfd, path, oflag) : real_openat(dirfd, path, oflag);
    after_open(ret, errno, path, dirfd, oflag, 0);
    return ret;
}

/* ---- syscall() ------------------------------------------------------------------------ */

long syscall(long number, ...) {
    va_list ap;
    va_start(ap, number);
    long a1 = va_arg(ap, long), a2 = va_arg(ap, long), a3 = va_arg(ap, long), a4 = va_arg(ap, long),
         a5 = va_arg(ap, long), a6 = va_arg(ap, long);
    va_end(ap);
    if (!__atomic_load_n(&real_ioctl, __ATOMIC_ACQUIRE) || !real_syscall) {
        long r = raw_syscall6(number, a1, a2, a3, a4, a5, a6);
        if (r < 0 && r > -4096) {
            errno = (int)-r;
            return -1;
        }
        return r;
    }
    switch (number) {
    case SYS_ioctl:
        return do_ioctl((int)a1, (unsigned long)a2, (void *)a3, F_VIA_SYSCALL);
    case SYS_close:
        return do_close((int)a1, F_VIA_SYSCALL);
    case SYS_mmap: {
        void *r = do_mmap(NULL, (void *)a1, (size_t)a2, (int)a3, (int)a4, (int)a5, (off_t)a6, F_VIA_SYSCALL);
        return r == MAP_FAILED ? -1 : (long)r;
    }
    case SYS_open: {
        long r = real_syscall(number, a1, a2, a3);
        after_open((int)r, errno, (const char *)a1, AT_FDCWD, (int)a2, F_VIA_SYSCALL);
        return r;
    }
    case SYS_openat: {
        long r = real_syscall(number, a1, a2, a3, a4);
        after_open((int)r, errno, (const char *)a2, (int)a1, (int)a3, F_VIA_SYSCALL);
        return r;
    }
    default:
        return real_syscall(number, a1, a2, a3, a4, a5, a6);
    }
}
