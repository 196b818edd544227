/* The one definition of every record gpusentry's BPF programs send to user space.
 *
 * sensor/probe/records.py mirrors these structs with ctypes; tests/kernel/test_layout.py
 * checks the two agree field by field, as compiled for BPF. Every record starts with
 * struct rec_hdr, and `type` selects the layout. Variable-length records carry their real
 * length in hdr.size.
 */
#ifndef GPUSENTRY_EVENTS_H
#define GPUSENTRY_EVENTS_H

/* Limits are compile-time constants, set by the loader from typed configuration. */
#ifndef MAX_ARGS
#define MAX_ARGS 64
#endif
#ifndef ARG_LEN
#define ARG_LEN 256
#endif
#ifndef FILENAME_LEN
#define FILENAME_LEN 512
#endif

enum rec_type {
	REC_EXEC = 1,
	REC_FORK = 2,
	REC_EXIT = 3,
	REC_CONNECT = 4,
	REC_TCP_ESTABLISHED = 5,
	REC_ACCEPT = 6,
	REC_GPU_OPEN = 7,
	REC_GPU_IOCTL = 8,
	REC_TYPE_MAX = 16, /* size of the drop-counter array */
};

struct rec_hdr {
	u16 type;
	u16 flags;
	u32 size; /* bytes in the whole record, header included */
	u64 ts;   /* bpf_ktime_get_boot_ns() */
	u32 tgid;
	u32 tid;
};

/* exec_rec.hdr.flags */
#define EXEC_ARGV_TRUNCATED 0x1 /* more than MAX_ARGS arguments: argc keeps the real count */
#define EXEC_ARG_CUT 0x2        /* at least one argument was longer than ARG_LEN */
#define EXEC_ARGV_UNREAD 0x4    /* argv could not be read from the new image */
#define EXEC_FILENAME_CUT 0x8
#define EXEC_ARGC_UNKNOWN 0x10  /* failed exec: argc counted only up to MAX_ARGS */
#define EXEC_CGROUPS_INHERITED 0x20 /* its cgroups are its parent's (set where the v2 id tells none) */

/* Each argument in exec_rec.argv: a u16 (captured length, ARGV_ENTRY_CUT if the argument
 * was longer), then the captured bytes, no terminator. */
#define ARGV_ENTRY_CUT 0x8000
/* ARGV_SPAN is MAX_ARGS * (ARG_LEN + 2) rounded up to a power of two by the loader: the argv
 * loop masks its offset with ARGV_SPAN - 1, so every path through one iteration leaves the
 * verifier the same range and its states prune instead of doubling per argument. */
#ifndef ARGV_SPAN
#define ARGV_SPAN 32768
#endif
#define ARGV_BLOB (ARGV_SPAN + ARG_LEN + 4)

struct exec_rec {
	struct rec_hdr hdr;
	s32 result; /* 0, or -errno from the failed execve/execveat */
	u32 ppid;   /* real_parent's tgid */
	u32 uid;
	u32 gid;
	u64 cgroup_id;
	u64 start_ns; /* task start_boottime: with tgid, a process identity that survives PID reuse */
	u64 exe_ino;  /* the executable's inode and device (new image only) */
	u32 exe_dev;
	u32 old_tid; /* the tid that called exec (differs from tgid when a thread exec'd) */
	u32 argc;    /* real argument count */
	u32 argv_count; /* arguments captured in argv[] */
	u32 argv_size;  /* bytes used in argv[] */
	u32 loginuid;   /* the login user (audit): unchanged by su, sudo or setuid */
	u32 sessionid;  /* the login session (audit): only a new login changes it */
	u32 netns;      /* network namespace inode */
	u64 exe_size;     /* the executable's size and ctime (ns), as its inode says: with exe_ino */
	u64 exe_ctime_ns; /* and exe_dev, what the probe's verdict on the file is cached by */
	char comm[16];
	char filename[FILENAME_LEN];
	u8 argv[ARGV_BLOB];
};

struct fork_rec {
	struct rec_hdr hdr; /* tgid/tid: the task that forked */
	u32 child_pid;
	u32 parent_tgid; /* the child's real_parent (differs from hdr.tgid with CLONE_PARENT) */
	u64 child_start_ns;
};

struct exit_rec {
	struct rec_hdr hdr;
	s32 exit_code; /* wait status: code << 8 | signal */
	u32 _pad;
	u64 start_ns;
};

/* connect(2) and accept(2) copy the raw sockaddr; user space decodes the family. */
#define SOCKADDR_LEN 112

struct connect_rec {
	struct rec_hdr hdr;
	s32 result; /* 0, or -errno (-EINPROGRESS for a non-blocking connect under way) */
	s32 fd;
	u32 addrlen; /* as passed by the caller */
	u32 netns;
	u8 sockaddr[SOCKADDR_LEN];
};

/* An outbound TCP connection reached ESTABLISHED: the kernel's own addresses and ports,
 * including the source port a later accept() on this host will see as its peer port. */
struct tcp_rec {
	struct rec_hdr hdr; /* tgid/tid: the process whose connect() started it */
	u16 family;
	u16 sport;
	u16 dport;
	u16 _pad;
	u32 netns; /* of the connecting process, at connect() */
	u32 _pad2;
	u8 saddr[16];
	u8 daddr[16];
	/* The socket, for user space to name it (never sent on: the probe replaces the pair with a
	 * keyed hash, sensor/probe/records.py socket_id): its address, and when it was established
	 * (the same time keys its byte counts in sock_bytes, so a reused address is a new socket). */
	u64 sk;
	u64 sk_gen;
};

struct accept_rec {
	struct rec_hdr hdr;
	s32 fd; /* the new connection's fd, or -errno */
	s32 listen_fd;
	u32 addrlen; /* as returned by the kernel; 0 when the caller asked for no address */
	u32 netns;
	u8 sockaddr[SOCKADDR_LEN];
	/* Read from the accepted socket itself (fd -> file -> socket -> sock): the service's own
	 * address and port, and the peer's, which a caller passing a NULL address never gets. */
	u64 sk; /* as in tcp_rec: the probe hashes these two, never sends them */
	u64 sk_gen;
	u16 sk_family; /* 0: the socket could not be read */
	u16 local_port;
	u16 peer_port;
	u16 _pad;
	u8 local_addr[16];
	u8 peer_addr[16];
};

/* What kind of NVIDIA device an fd is (decided from the file: NVIDIA-ABI.md, Device nodes). */
enum gpu_kind {
	GPU_NONE = 0,
	GPU_CTL = 1,       /* /dev/nvidiactl */
	GPU_DEV = 2,       /* /dev/nvidiaN: minor is N */
	GPU_UVM = 3,       /* /dev/nvidia-uvm */
	GPU_UVM_TOOLS = 4, /* /dev/nvidia-uvm-tools */
	GPU_MODESET = 5,   /* /dev/nvidia-modeset */
	GPU_OTHER = 6,     /* another minor of an NVIDIA major */
};

struct gpu_open_rec {
	struct rec_hdr hdr;
	s32 fd;
	u8 kind;
	u8 by_name; /* recognised by its name, not its device number (a fake, or a plain file) */
	u16 _pad;
	u32 minor;
	u32 _pad2;
};

/* Why a GPU ioctl was worth a record of its own (all others are only counted). */
enum gpu_reason {
	GPU_R_ALLOC = 1,        /* RM_ALLOC of a class that matters (client, device, channel, compute, ...) */
	GPU_R_ALLOC_FAILED = 2, /* an RM_ALLOC that failed: ioctl error or RM status */
	GPU_R_FREE = 3,         /* RM_FREE of an object that had a record */
	GPU_R_CONTROL = 4,      /* RM_CONTROL PERF_BOOST */
	GPU_R_UVM = 5,          /* UVM INITIALIZE, REGISTER_GPU, REGISTER_CHANNEL */
	GPU_R_FIRST_USE = 6,    /* the first ioctl of this process on this device */
};

/* gpu_ioctl_rec.hdr.flags */
#define GPU_XFER 0x1 /* the call came wrapped in IOCTL_XFER_CMD and was followed one level */
#define GPU_STATUS_READ 0x2 /* `status` was read from the argument struct at exit */
#define GPU_BY_NAME 0x4 /* the device was recognised by its name only, not its device number */

struct gpu_ioctl_rec {
	struct rec_hdr hdr;
	u8 kind;
	u8 reason;
	u16 _pad;
	s32 fd;
	u32 minor;
	u32 cmd;    /* the ioctl command as issued */
	u32 nr;     /* RM escape number, or the UVM command */
	u32 size;   /* argument size (of the inner call, after XFER) */
	s32 ret;    /* ioctl's return: 0 or -errno */
	u32 status; /* RM / UVM status from the argument struct */
	u32 h_root;
	u32 h_parent;
	u32 h_object; /* RM_ALLOC: the new handle; RM_FREE: the freed one; RM_CONTROL: the target */
	u32 h_class;  /* RM_ALLOC: the class (after the NV01_EVENT indirection) */
	u32 ctrl_cmd; /* RM_CONTROL: the command */
	u32 param0;   /* PERF_BOOST: flags; device alloc: deviceId; UVM REGISTER_CHANNEL: hChannel */
	u32 param1;   /* PERF_BOOST: duration */
	u32 _pad2;
	u8 uuid[16]; /* UVM REGISTER_GPU / REGISTER_CHANNEL: the GPU's UUID */
};

/* In-kernel aggregation of every GPU ioctl, read by the probe on a timer. */
struct gpu_count_key {
	u32 tgid;
	u32 cmd_id; /* RM escape number, or the UVM command */
	u8 kind;
	u8 _pad[3];
};

struct gpu_count {
	u64 calls;
	u64 errors;     /* ioctl error or non-zero status */
	u64 suppressed; /* records not sent: the process was over its record budget */
	u64 last_ts;
};

/* Memory a process allocated through the driver, by family (NVIDIA-ABI.md, Memory classes),
 * summed in the kernel per process and read by the probe on its timer: allocations are too
 * frequent in training for a record each. Frees are subtracted by handle. */
enum gpu_mem_family {
	GPU_MEM_DEVICE = 0,     /* video memory: NV01_MEMORY_LOCAL_USER / _PRIVILEGED / _PHYSICAL */
	GPU_MEM_SYSTEM = 1,     /* host memory the driver allocates for the GPU: NV01_MEMORY_SYSTEM */
	GPU_MEM_REGISTERED = 2, /* host memory the process registered: NV01_MEMORY_SYSTEM_OS_DESCRIPTOR */
	GPU_MEM_VIRTUAL = 3,    /* GPU virtual address space reserved, no memory behind it */
	GPU_MEM_FABRIC = 4,     /* NV_MEMORY_FABRIC: memory exported to peers over NVLink */
	GPU_MEM_UVM = 5,        /* UVM_MAP_EXTERNAL_ALLOCATION: RM memory mapped into the UVM space */
	GPU_MEM_FAMILIES = 6,
};

struct gpu_mem {
	u64 allocated[GPU_MEM_FAMILIES]; /* bytes, since the process began */
	u64 freed[GPU_MEM_FAMILIES];     /* bytes of those allocations freed since (matched by handle) */
	u64 allocs[GPU_MEM_FAMILIES];
	u64 frees[GPU_MEM_FAMILIES];
	u64 peak_device; /* most device memory held at once (best effort when threads allocate together) */
	u64 untracked;   /* allocations whose handle could not be kept: their free is not subtracted */
	u64 last_ts;
};

/* Bytes sent and received per TCP socket, aggregated in the kernel (sock:sock_send_length and
 * sock:sock_recv_length) and read by the probe on a timer: never a record per send. Keyed by the
 * socket's address while it lives; at close its totals move to sock_bytes_closed under (address,
 * sk_gen), so that a new socket at the same address starts from zero and nothing is lost before
 * the probe reads them. */
struct sock_bytes {
	u64 sent;
	u64 received;
	u64 sk_gen;  /* when it was established (boot ns); 0: before the probe, or not seen */
	u64 last_ts; /* the last send or receive */
	u32 tgid;    /* the process that sent or received last */
	u32 closed;  /* set in sock_bytes_closed entries */
};

struct sock_gen_key {
	u64 sk;
	u64 sk_gen;
};

/* Kernel launches of one watched process, counted by the libcuda uprobes (launch.bpf.c). */
struct launch_count {
	u64 launches;    /* cuLaunchKernel (and _ptsz) calls */
	u64 launches_ex; /* cuLaunchKernelEx (and _ptsz) calls */
	u32 distinct;    /* distinct kernel functions recorded (at most LAUNCH_FUNCS_MAX) */
	u32 unrecorded;  /* launches of a function not recorded: the process's cap was reached */
};

struct launch_func_key {
	u32 tgid;
	u32 _pad;
	u64 func; /* the CUfunction, a user-space handle; never leaves the kernel */
};

#endif /* GPUSENTRY_EVENTS_H */
