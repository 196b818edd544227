/* The CUDA driver's ioctls on NVIDIA devices (NVIDIA-ABI.md has the ABI and its sources).
 *
 * Which fd is a GPU device is decided from the file itself at ioctl time: the task's fd
 * table gives the struct file, whose inode's device number (NVIDIA major 195, or the
 * nvidia-uvm major) or dentry name says what it is. No open/dup/fork/close tracking is
 * needed, mount namespaces do not matter, and a renamed device node is still recognised.
 * The verdict is cached per (tgid, fd) with the file and inode pointers it was made for:
 * a closed file's struct is soon reused for another open (slab reuse), so the file pointer
 * alone would hand a new device fd the old file's verdict; a process could arrange that on
 * purpose (open a plain file, close it, open the device through a path not hooked here).
 * A file recognised by its name alone (no NVIDIA device number: a fake driver's FUSE file, a
 * plain file) says so in its records (by_name, GPU_BY_NAME), so that rules can tell it apart.
 *
 * Every GPU ioctl is counted in a per-CPU hash by (tgid, device kind, command). Only the
 * calls that matter become records, and each process has a record budget (a token bucket):
 * a process that floods ioctls spends its own budget and is still counted exactly.
 */
/* Follows common.bpf.c in the loaded text. */

#define NVIDIA_MAJOR 195
#ifndef UVM_MAJOR
#define UVM_MAJOR 0 /* from /proc/devices at load; 0 when the UVM module is not loaded */
#endif
#ifndef GPU_RECORD_BURST
#define GPU_RECORD_BURST 1024 /* records a process may send at once */
#endif
#ifndef GPU_RECORD_RATE
#define GPU_RECORD_RATE 256 /* records per second a process earns back */
#endif

#define IOC_TYPE(cmd) (((cmd) >> 8) & 0xff)
#define IOC_NR(cmd) ((cmd) & 0xff)
#define IOC_SIZE(cmd) (((cmd) >> 16) & 0x3fff)
#define NV_IOCTL_MAGIC 'F'

/* RM escapes and frontend ioctls (nv_escape.h, nv-ioctl-numbers.h) */
#define ESC_RM_ALLOC_MEMORY 0x27
#define ESC_RM_FREE 0x29
#define ESC_RM_CONTROL 0x2A
#define ESC_RM_ALLOC 0x2B
#define ESC_XFER_CMD 0xD3
/* UVM commands (uvm_ioctl.h): plain numbers */
#define UVM_INITIALIZE 0x30000001
#define UVM_DEINITIALIZE 0x30000002
#define UVM_REGISTER_CHANNEL 27
#define UVM_REGISTER_GPU 37
#define UVM_MM_INITIALIZE 75
#define UVM_PAGEABLE_MEM_ACCESS 39
#define UVM_MAP_EXTERNAL_ALLOCATION 33

#define NV01_EVENT 0x5
#define NV01_DEVICE_0 0x80
#define PERF_BOOST 0x2080200A
#define NV50_P2P 0x503B

/* Memory classes and where their allocation parameters say the size (nvos.h, class/cl*.h;
 * NVIDIA-ABI.md, Memory classes). */
#define NV01_MEMORY_SYSTEM 0x3E
#define NV01_MEMORY_LOCAL_PRIVILEGED 0x3F
#define NV01_MEMORY_LOCAL_USER 0x40
#define NV01_MEMORY_VIRTUAL 0x70
#define NV01_MEMORY_SYSTEM_OS_DESCRIPTOR 0x71
#define NV01_MEMORY_LOCAL_PHYSICAL 0xC2
#define NV_MEMORY_FABRIC 0xF8
#define NV50_MEMORY_VIRTUAL 0x50A0
#define NVOS32_ALLOC_FLAGS_VIRTUAL 0x00080000

struct gpu_file {
	u64 file;
	u64 inode;
	u32 minor;
	u8 kind;
	u8 by_name;
	u16 _pad;
};

struct fd_key {
	u32 tgid;
	s32 fd;
};

struct gpu_call {
	u64 arg; /* the argument struct (the inner one, after XFER) */
	s32 fd;
	u32 cmd;
	u32 nr;
	u32 size;
	u32 minor;
	u8 kind;
	u8 xfer;
	u8 by_name; /* the file verdict: a name that looks like a device, not its device number */
	u8 _pad;
};

struct handle_key {
	u32 tgid;
	u32 h_root;
	u32 handle;
	u32 _pad;
};

struct seen_key {
	u32 tgid;
	u32 minor;
	u8 kind;
	u8 _pad[3];
};

struct budget {
	u64 ts;     /* when tokens were last earned */
	u64 tokens; /* scaled by 1e9: one token is 1e9 */
};

LRU_HASH(gpu_fd_cache, struct fd_key, struct gpu_file, 16384);
LRU_HASH(gpu_calls, u32, struct gpu_call, 10240);
LRU_HASH(gpu_objects, struct handle_key, u32, 65536); /* objects with a record -> class */
LRU_HASH(gpu_seen, struct seen_key, u8, 16384);
LRU_HASH(gpu_budget, u32, struct budget, 16384);
BPF_PERCPU_HASH(gpu_counts, struct gpu_count_key, struct gpu_count, 32768);
/* Calls that could not be counted because gpu_counts was full: never silently lost. */
BPF_PERCPU_ARRAY(gpu_count_overflow, u64, 1);
BPF_PERCPU_ARRAY(gpu_scratch, struct gpu_ioctl_rec, 1);

/* Memory: each live allocation by handle (its size and family, to subtract at its free), and
 * each process's totals. The totals are a plain hash, updated with atomic adds (held and peak
 * need one value, not a per-CPU sum); the probe removes a process's entry after its exit. */
struct gpu_mem_obj {
	u64 size;
	u8 family;
	u8 _pad[7];
};
LRU_HASH(gpu_mem_objects, struct handle_key, struct gpu_mem_obj, 65536);
BPF_HASH(gpu_mem, u32, struct gpu_mem, 4096); /* processes allocating GPU memory at once */
/* Allocations not summed because gpu_mem was full. */
BPF_PERCPU_ARRAY(gpu_mem_overflow, u64, 1);

static __always_inline int gpu_candidate(u32 cmd)
{
	/* RM and frontend ioctls are _IOC type 'F'; UVM's are small plain numbers. */
	return IOC_TYPE(cmd) == NV_IOCTL_MAGIC || cmd < 0x100 || cmd == UVM_INITIALIZE ||
	       cmd == UVM_DEINITIALIZE;
}

struct file_links {
	void *inode;
	void *dentry;
};

/* file->f_inode and f_path.dentry: one read of the span between them when it is short. */
static __always_inline struct file_links read_file_links(const void *file)
{
	struct file_links links = {};
	if (OFF_FILE_DENTRY > OFF_FILE_INODE && OFF_FILE_DENTRY - OFF_FILE_INODE <= 56 &&
	    (OFF_FILE_DENTRY - OFF_FILE_INODE) % 8 == 0) {
		u64 span[8] = {};
		bpf_probe_read_kernel(span, OFF_FILE_DENTRY - OFF_FILE_INODE + 8, (const char *)file + OFF_FILE_INODE);
		links.inode = (void *)span[0];
		links.dentry = (void *)span[((OFF_FILE_DENTRY - OFF_FILE_INODE) / 8) & 7];
		return links;
	}
	links.inode = (void *)read_kptr(file, OFF_FILE_INODE);
	links.dentry = (void *)read_kptr(file, OFF_FILE_DENTRY);
	return links;
}

/* "nvidiactl", "nvidia-uvm", "nvidia-uvm-tools", "nvidia-modeset" or "nvidia<N>". */
static __always_inline u8 kind_from_name(const char *name, u32 *minor)
{
	if (name[0] != 'n' || name[1] != 'v' || name[2] != 'i' || name[3] != 'd' || name[4] != 'i' ||
	    name[5] != 'a')
		return GPU_NONE;
	const char *rest = name + 6;
	if (rest[0] == 'c' && rest[1] == 't' && rest[2] == 'l' && rest[3] == 0)
		return GPU_CTL;
	if (rest[0] == '-' && rest[1] == 'u' && rest[2] == 'v' && rest[3] == 'm') {
		if (rest[4] == 0)
			return GPU_UVM;
		if (rest[4] == '-' && rest[5] == 't' && rest[6] == 'o' && rest[7] == 'o' && rest[8] == 'l' &&
		    rest[9] == 's' && rest[10] == 0)
			return GPU_UVM_TOOLS;
		return GPU_NONE;
	}
	if (rest[0] == '-' && rest[1] == 'm' && rest[2] == 'o' && rest[3] == 'd' && rest[4] == 'e')
		return GPU_MODESET;
	u32 n = 0;
	int digits = 0;
#pragma unroll
	for (int i = 0; i < 3; i++) {
		char c = rest[i];
		if (c == 0)
			break;
		if (c < '0' || c > '9')
			return GPU_NONE;
		n = n * 10 + (c - '0');
		digits++;
	}
	if (!digits || rest[digits] != 0)
		return GPU_NONE;
	*minor = n;
	return GPU_DEV;
}

static __always_inline u8 kind_from_rdev(u32 rdev, u32 *minor)
{
	u32 major = rdev >> 20;
	u32 mn = rdev & 0xfffff;
	if (!rdev)
		return GPU_NONE;
	if (major == NVIDIA_MAJOR) {
		*minor = mn;
		if (mn == 255)
			return GPU_CTL;
		if (mn == 254)
			return GPU_MODESET;
		return mn < 248 ? GPU_DEV : GPU_OTHER;
	}
	if (UVM_MAJOR && major == UVM_MAJOR) {
		*minor = mn;
		return mn == 0 ? GPU_UVM : (mn == 1 ? GPU_UVM_TOOLS : GPU_OTHER);
	}
	return GPU_NONE;
}

/* Whether a dentry's name can be an NVIDIA device's: its first bytes are "nvidia". One small
 * read, where the whole name is a string copy: most files a host opens fail here. */
static __always_inline int named_like_nvidia(const char *name)
{
	char head[8] = {};
	if (!name || bpf_probe_read_kernel(head, 6, name) < 0)
		return 0;
	return head[0] == 'n' && head[1] == 'v' && head[2] == 'i' && head[3] == 'd' && head[4] == 'i' &&
	       head[5] == 'a';
}

static __always_inline void classify_file(void *file, struct file_links *links, struct gpu_file *out)
{
	void *inode = links->inode;
	out->file = (u64)file;
	out->inode = (u64)inode;
	out->kind = GPU_NONE;
	out->minor = 0;
	out->by_name = 0;
	out->_pad = 0;
	out->kind = kind_from_rdev(read_ku32(inode, OFF_INODE_RDEV), &out->minor);
	if (out->kind != GPU_NONE)
		return;
	const char *dname = (const char *)read_kptr(links->dentry, OFF_DENTRY_NAME);
	if (!named_like_nvidia(dname))
		return;
	char name[24] = {};
	bpf_probe_read_kernel_str(name, sizeof(name), dname);
	out->kind = kind_from_name(name, &out->minor);
	out->by_name = out->kind != GPU_NONE;
}

/* The verdict for (tgid, fd), cached with the file and inode it was made for. `fresh`: the
 * fd was just created, so whatever is cached for it is about an older file. */
static __always_inline int gpu_file_of(u32 tgid, s32 fd, struct gpu_file *out, int fresh)
{
	void *file = fd_to_file(fd);
	if (!file)
		return 0;
	struct file_links links = read_file_links(file);
	struct fd_key key = {.tgid = tgid, .fd = fd};
	struct gpu_file *cached = fresh ? 0 : gpu_fd_cache.lookup(&key);
	if (cached && cached->file == (u64)file && cached->inode == (u64)links.inode) {
		*out = *cached;
		return out->kind != GPU_NONE;
	}
	classify_file(file, &links, out);
	/* At open, only GPU verdicts are worth a cache entry: most opens on a host are not GPUs,
	 * an ioctl classifies its fd anyway, and the inode check makes a stale entry harmless. */
	if (!fresh || out->kind != GPU_NONE)
		gpu_fd_cache.update(&key, out);
	return out->kind != GPU_NONE;
}

/* A token bucket per process: GPU_RECORD_BURST at once, GPU_RECORD_RATE per second after. */
static __always_inline int take_budget(u32 tgid, u64 now)
{
	struct budget *b = gpu_budget.lookup(&tgid);
	if (!b) {
		struct budget fresh = {.ts = now, .tokens = (GPU_RECORD_BURST - 1) * 1000000000ULL};
		gpu_budget.update(&tgid, &fresh);
		return 1;
	}
	u64 tokens = b->tokens + (now - b->ts) * GPU_RECORD_RATE;
	if (tokens > GPU_RECORD_BURST * 1000000000ULL)
		tokens = GPU_RECORD_BURST * 1000000000ULL;
	b->ts = now;
	if (tokens < 1000000000ULL) {
		b->tokens = tokens;
		return 0;
	}
	b->tokens = tokens - 1000000000ULL;
	return 1;
}

static __always_inline void count_call(u32 tgid, struct gpu_call *call, int failed, int suppressed, u64 now)
{
	struct gpu_count_key key = {.tgid = tgid, .cmd_id = call->nr, .kind = call->kind};
	struct gpu_count *count = gpu_counts.lookup(&key);
	if (!count) {
		struct gpu_count fresh = {};
		if (gpu_counts.update(&key, &fresh) < 0) {
			u32 zero = 0;
			u64 *overflow = gpu_count_overflow.lookup(&zero);
			if (overflow)
				(*overflow)++;
			return;
		}
		count = gpu_counts.lookup(&key);
		if (!count)
			return;
	}
	count->calls++;
	count->errors += failed;
	count->suppressed += suppressed;
	count->last_ts = now;
}

/* Classes that matter (NVIDIA-ABI.md, Classes that matter): the RM objects a process must
 * allocate to run work on a GPU. User space names them; this only decides what to send. */
static __always_inline int notable_class(u32 c)
{
	u32 low = c & 0xff, high = c >> 8;
	if (c == 0x0 || c == 0x1 || c == 0x41 || c == 0x80 || c == 0x2080 || c == 0xA06C || c == 0x900E ||
	    c == NV50_P2P)
		return 1;
	if (c > 0xffff)
		return 0;
	if (low == 0x6F && high >= 0x50)
		return 1; /* GPFIFO channel */
	if (low == 0xC0 && high >= 0x90)
		return 1; /* compute */
	if (low == 0xB5 && high >= 0x90)
		return 1; /* copy engine */
	if (low == 0x61 && high >= 0xC3)
		return 1; /* usermode doorbell */
	return 0;
}

TRACEPOINT_PROBE(syscalls, sys_enter_ioctl)
{
	u32 cmd = args->cmd;
	if (!gpu_candidate(cmd))
		return 0;
	u64 id = bpf_get_current_pid_tgid();
	u32 tgid = id >> 32;
	if (is_self(tgid))
		return 0;
	struct gpu_file file;
	if (!gpu_file_of(tgid, args->fd, &file, 0))
		return 0;
	int rm = file.kind == GPU_CTL || file.kind == GPU_DEV || file.kind == GPU_MODESET || file.kind == GPU_OTHER;
	if (rm && IOC_TYPE(cmd) != NV_IOCTL_MAGIC)
		return 0;
	struct gpu_call call = {.arg = args->arg, .fd = args->fd, .cmd = cmd, .minor = file.minor, .kind = file.kind,
				.by_name = file.by_name};
	if (rm) {
		call.nr = IOC_NR(cmd);
		call.size = IOC_SIZE(cmd);
	} else {
		call.nr = cmd; /* UVM: the command is the number */
	}
	if (rm && call.nr == ESC_XFER_CMD && call.size == 16) {
		/* NV_ESC_IOCTL_XFER_CMD: {u32 cmd, u32 size, u64 ptr}: the real call, one level down. */
		struct { u32 cmd; u32 size; u64 ptr; } xfer = {};
		if (bpf_probe_read_user(&xfer, sizeof(xfer), (void *)args->arg) == 0) {
			call.nr = xfer.cmd & 0xff;
			call.size = xfer.size;
			call.arg = xfer.ptr;
			call.xfer = 1;
		}
	}
	u32 tid = id;
	gpu_calls.update(&tid, &call);
	return 0;
}

static __always_inline u32 read_u32(u64 base, u32 offset)
{
	u32 value = 0;
	bpf_probe_read_user(&value, sizeof(value), (void *)(base + offset));
	return value;
}

static __always_inline u64 read_u64(u64 base, u32 offset)
{
	u64 value = 0;
	bpf_probe_read_user(&value, sizeof(value), (void *)(base + offset));
	return value;
}

static __always_inline struct gpu_mem *mem_totals(u32 tgid)
{
	struct gpu_mem *mem = gpu_mem.lookup(&tgid);
	if (mem)
		return mem;
	struct gpu_mem fresh = {};
	if (gpu_mem.update(&tgid, &fresh) < 0) {
		u32 zero = 0;
		u64 *overflow = gpu_mem_overflow.lookup(&zero);
		if (overflow)
			(*overflow)++;
		return 0;
	}
	return gpu_mem.lookup(&tgid);
}

/* One allocation of `size` bytes; `handle_known`: its free can be matched (RM objects). */
static __always_inline void mem_allocated(u32 tgid, u32 h_root, u32 handle, u8 family, u64 size,
					  int handle_known, u64 now)
{
	if (family >= GPU_MEM_FAMILIES)
		return;
	struct gpu_mem *mem = mem_totals(tgid);
	if (!mem)
		return;
	u64 allocated = __sync_fetch_and_add(&mem->allocated[family], size) + size;
	__sync_fetch_and_add(&mem->allocs[family], 1);
	mem->last_ts = now;
	if (family == GPU_MEM_DEVICE) {
		u64 held = allocated - mem->freed[GPU_MEM_DEVICE];
		if (held > mem->peak_device && held <= allocated)
			mem->peak_device = held;
	}
	if (!handle_known)
		return;
	struct handle_key key = {.tgid = tgid, .h_root = h_root, .handle = handle};
	struct gpu_mem_obj obj = {.size = size, .family = family};
	if (gpu_mem_objects.update(&key, &obj) < 0)
		__sync_fetch_and_add(&mem->untracked, 1);
}

/* An RM_FREE that succeeded: if the handle was an allocation, its bytes are no longer held. */
static __always_inline void mem_freed(u32 tgid, u32 h_root, u32 handle, u64 now)
{
	struct handle_key key = {.tgid = tgid, .h_root = h_root, .handle = handle};
	struct gpu_mem_obj *obj = gpu_mem_objects.lookup(&key);
	if (!obj)
		return;
	u64 size = obj->size;
	u8 family = obj->family;
	gpu_mem_objects.delete(&key);
	if (family >= GPU_MEM_FAMILIES)
		return;
	struct gpu_mem *mem = gpu_mem.lookup(&tgid);
	if (!mem)
		return;
	__sync_fetch_and_add(&mem->freed[family], size);
	__sync_fetch_and_add(&mem->frees[family], 1);
	mem->last_ts = now;
}

/* The family and size of a memory class's allocation, from its parameters as the driver left
 * them at exit (sizes are [IN/OUT]: the driver writes back what it really allocated).
 * Returns GPU_MEM_FAMILIES for a class that is not memory. */
static __always_inline u8 mem_of_alloc(u32 klass, u64 params, u64 *size)
{
	switch (klass) {
	case NV01_MEMORY_SYSTEM:
	case NV01_MEMORY_LOCAL_PRIVILEGED:
	case NV01_MEMORY_LOCAL_USER: {
		/* NV_MEMORY_ALLOCATION_PARAMS: flags@8, size@64 */
		*size = read_u64(params, 64);
		if (read_u32(params, 8) & NVOS32_ALLOC_FLAGS_VIRTUAL)
			return GPU_MEM_VIRTUAL;
		return klass == NV01_MEMORY_SYSTEM ? GPU_MEM_SYSTEM : GPU_MEM_DEVICE;
	}
	case NV01_MEMORY_LOCAL_PHYSICAL:
		*size = read_u64(params, 0); /* NV_PHYSICAL_MEMORY_ALLOCATION_PARAMS: memSize@0 [OUT] */
		return GPU_MEM_DEVICE;
	case NV01_MEMORY_SYSTEM_OS_DESCRIPTOR:
		*size = read_u64(params, 24) + 1; /* NV_OS_DESC_MEMORY_ALLOCATION_PARAMS: limit@24 */
		return GPU_MEM_REGISTERED;
	case NV01_MEMORY_VIRTUAL:
	case NV50_MEMORY_VIRTUAL: {
		/* NV_MEMORY_VIRTUAL_ALLOCATION_PARAMS: offset@0, limit@8 [IN/OUT]: the range [offset, limit] */
		u64 range[2] = {};
		bpf_probe_read_user(range, sizeof(range), (void *)params);
		*size = range[1] >= range[0] ? range[1] - range[0] + 1 : 0;
		return GPU_MEM_VIRTUAL;
	}
	case NV_MEMORY_FABRIC:
		*size = read_u64(params, 8); /* NV00F8_ALLOCATION_PARAMETERS: allocSize@8 */
		return GPU_MEM_FABRIC;
	}
	return GPU_MEM_FAMILIES;
}

/* Fill the record for RM_ALLOC; returns the reason it matters, or 0. */
static __always_inline u8 decode_rm_alloc(u32 tgid, struct gpu_call *call, struct gpu_ioctl_rec *rec)
{
	/* NVOS21 (32 bytes) or NVOS64 (48; 40 before 535.43): the class is at 12 in all. */
	u32 status_at = call->size == 48 ? 40 : (call->size == 40 ? 32 : 28);
	u32 head[4] = {};
	bpf_probe_read_user(head, sizeof(head), (void *)call->arg);
	rec->h_root = head[0];
	rec->h_parent = head[1];
	rec->h_object = head[2];
	rec->h_class = head[3];
	if (call->size == 32 || call->size == 40 || call->size == 48) {
		rec->status = read_u32(call->arg, status_at);
		rec->hdr.flags |= GPU_STATUS_READ;
	}
	u64 params = 0;
	bpf_probe_read_user(&params, sizeof(params), (void *)(call->arg + 16));
	if (rec->h_class == NV01_EVENT && params) {
		/* NV0005_ALLOC_PARAMETERS: the event's own class is at pAllocParms + 8. */
		rec->h_class = read_u32(params, 8);
	}
	if (rec->h_class == NV01_DEVICE_0 && params) {
		/* NV0080_ALLOC_PARAMETERS: deviceId (which GPU) is the first field. */
		rec->param0 = read_u32(params, 0);
	}
	if (rec->ret != 0 || rec->status != 0)
		return GPU_R_ALLOC_FAILED;
	u64 size = 0;
	u8 family = params ? mem_of_alloc(rec->h_class, params, &size) : GPU_MEM_FAMILIES;
	if (family < GPU_MEM_FAMILIES) {
		mem_allocated(tgid, rec->h_root, rec->h_object, family, size, 1, rec->hdr.ts);
		return 0;
	}
	if (!notable_class(rec->h_class))
		return 0;
	struct handle_key key = {.tgid = tgid, .h_root = rec->h_root, .handle = rec->h_object};
	gpu_objects.update(&key, &rec->h_class);
	return GPU_R_ALLOC;
}

static __always_inline u8 decode_rm_free(u32 tgid, struct gpu_call *call, struct gpu_ioctl_rec *rec)
{
	/* NVOS00: hRoot@0, hObjectParent@4, hObjectOld@8, status@12 */
	u32 args4[4] = {};
	bpf_probe_read_user(args4, sizeof(args4), (void *)call->arg);
	rec->h_root = args4[0];
	rec->h_parent = args4[1];
	rec->h_object = args4[2];
	rec->status = args4[3];
	rec->hdr.flags |= GPU_STATUS_READ;
	if (rec->ret != 0 || rec->status != 0)
		return 0;
	mem_freed(tgid, rec->h_root, rec->h_object, rec->hdr.ts);
	struct handle_key key = {.tgid = tgid, .h_root = rec->h_root, .handle = rec->h_object};
	u32 *klass = gpu_objects.lookup(&key);
	if (!klass)
		return 0;
	rec->h_class = *klass;
	gpu_objects.delete(&key);
	return GPU_R_FREE;
}

/* RM_ALLOC_MEMORY (NVOS02 with its fd, 56 bytes): hRoot@0, hObjectParent@4, hObjectNew@8,
 * hClass@12, flags@16, pMemory@24, limit@32, status@40. Host memory described to the driver:
 * system memory or an OS descriptor (registered). Only summed, never a record. */
static __always_inline void decode_rm_alloc_memory(u32 tgid, struct gpu_call *call, struct gpu_ioctl_rec *rec)
{
	u32 head[4] = {};
	bpf_probe_read_user(head, sizeof(head), (void *)call->arg);
	rec->status = read_u32(call->arg, 40);
	if (rec->ret != 0 || rec->status != 0)
		return;
	u8 family = head[3] == NV01_MEMORY_SYSTEM_OS_DESCRIPTOR ? GPU_MEM_REGISTERED :
		    (head[3] == NV01_MEMORY_SYSTEM ? GPU_MEM_SYSTEM : GPU_MEM_FAMILIES);
	if (family < GPU_MEM_FAMILIES)
		mem_allocated(tgid, head[0], head[2], family, read_u64(call->arg, 32) + 1, 1, rec->hdr.ts);
}

static __always_inline u8 decode_rm_control(struct gpu_call *call, struct gpu_ioctl_rec *rec)
{
	/* NVOS54: hClient@0, hObject@4, cmd@8, flags@12, params@16, paramsSize@24, status@28 */
	u32 head[3] = {};
	bpf_probe_read_user(head, sizeof(head), (void *)call->arg);
	rec->h_root = head[0];
	rec->h_object = head[1];
	rec->ctrl_cmd = head[2];
	rec->status = read_u32(call->arg, 28);
	rec->hdr.flags |= GPU_STATUS_READ;
	if (rec->ctrl_cmd != PERF_BOOST)
		return 0;
	/* NV2080_CTRL_PERF_BOOST_PARAMS: flags (CUDA is bit 4), duration (0xffffffff: forever) */
	u64 params = 0;
	bpf_probe_read_user(&params, sizeof(params), (void *)(call->arg + 16));
	if (params) {
		rec->param0 = read_u32(params, 0);
		rec->param1 = read_u32(params, 4);
	}
	return GPU_R_CONTROL;
}

static __always_inline u8 decode_uvm(u32 tgid, struct gpu_call *call, struct gpu_ioctl_rec *rec)
{
	/* rmStatus offsets from uvm_ioctl.h: INITIALIZE {u64 flags; status}, REGISTER_GPU
	 * {uuid[16]; bool numa; s32 node; s32 fd; hClient; hSmcPartRef; status}, REGISTER_CHANNEL
	 * {uuid[16]; s32 fd; hClient; hChannel; u64 base; u64 length; status}. */
	switch (call->nr) {
	case UVM_INITIALIZE:
		rec->status = read_u32(call->arg, 8);
		break;
	case UVM_MM_INITIALIZE:
	case UVM_PAGEABLE_MEM_ACCESS:
		rec->status = read_u32(call->arg, 4);
		return 0;
	case UVM_REGISTER_GPU:
		bpf_probe_read_user(rec->uuid, 16, (void *)call->arg);
		rec->h_root = read_u32(call->arg, 28);
		rec->status = read_u32(call->arg, 36);
		break;
	case UVM_MAP_EXTERNAL_ALLOCATION:
		/* {base@0, length@8, ...}: RM memory (already summed at its RM_ALLOC) mapped into the
		 * UVM address space; its status sits past a per-GPU array whose length varies by
		 * release, so only the ioctl's own result is read. */
		if (rec->ret == 0)
			mem_allocated(tgid, 0, 0, GPU_MEM_UVM, read_u64(call->arg, 8), 0, rec->hdr.ts);
		return 0;
	case UVM_REGISTER_CHANNEL:
		bpf_probe_read_user(rec->uuid, 16, (void *)call->arg);
		rec->h_root = read_u32(call->arg, 20);
		rec->param0 = read_u32(call->arg, 24);
		rec->status = read_u32(call->arg, 48);
		break;
	default:
		return 0;
	}
	rec->hdr.flags |= GPU_STATUS_READ;
	return GPU_R_UVM;
}

static __always_inline struct gpu_ioctl_rec *gpu_rec_init(struct gpu_call *call, long ret)
{
	u32 zero = 0;
	struct gpu_ioctl_rec *rec = gpu_scratch.lookup(&zero);
	if (!rec)
		return 0;
	__builtin_memset(rec, 0, sizeof(*rec));
	fill_hdr(&rec->hdr, REC_GPU_IOCTL, sizeof(*rec));
	rec->kind = call->kind;
	rec->fd = call->fd;
	rec->minor = call->minor;
	rec->cmd = call->cmd;
	rec->nr = call->nr;
	rec->size = call->size;
	rec->ret = ret;
	if (call->xfer)
		rec->hdr.flags |= GPU_XFER;
	if (call->by_name)
		rec->hdr.flags |= GPU_BY_NAME;
	return rec;
}

static __always_inline int first_use(u32 tgid, struct gpu_call *call)
{
	struct seen_key key = {.tgid = tgid, .minor = call->minor, .kind = call->kind};
	if (gpu_seen.lookup(&key))
		return 0;
	u8 one = 1;
	gpu_seen.update(&key, &one);
	return 1;
}

TRACEPOINT_PROBE(syscalls, sys_exit_ioctl)
{
	u64 id = bpf_get_current_pid_tgid();
	u32 tid = id, tgid = id >> 32;
	struct gpu_call *found = gpu_calls.lookup(&tid);
	if (!found)
		return 0;
	struct gpu_call call = *found;
	gpu_calls.delete(&tid);
	struct gpu_ioctl_rec *rec = gpu_rec_init(&call, args->ret);
	if (!rec)
		return 0;
	u8 reason = 0;
	if (call.kind == GPU_UVM || call.kind == GPU_UVM_TOOLS)
		reason = decode_uvm(tgid, &call, rec);
	else if (call.nr == ESC_RM_ALLOC)
		reason = decode_rm_alloc(tgid, &call, rec);
	else if (call.nr == ESC_RM_FREE && call.size == 16)
		reason = decode_rm_free(tgid, &call, rec);
	else if (call.nr == ESC_RM_CONTROL && call.size == 32)
		reason = decode_rm_control(&call, rec);
	else if (call.nr == ESC_RM_ALLOC_MEMORY && call.size == 56)
		decode_rm_alloc_memory(tgid, &call, rec);
	if (first_use(tgid, &call) && !reason)
		reason = GPU_R_FIRST_USE;

	int failed = rec->ret != 0 || rec->status != 0;
	int suppressed = 0;
	if (reason) {
		if (take_budget(tgid, rec->hdr.ts)) {
			rec->reason = reason;
			if (decisive.ringbuf_output(rec, sizeof(*rec), RB_FLAGS) < 0)
				count_drop(REC_GPU_IOCTL);
		} else {
			suppressed = 1;
		}
	}
	count_call(tgid, &call, failed, suppressed, rec->hdr.ts);
	return 0;
}

/* A successful open of a GPU device: decided from the new fd's file, like an ioctl. */
static __always_inline int gpu_open_exit(long ret)
{
	if (ret < 0)
		return 0;
	u32 tgid = bpf_get_current_pid_tgid() >> 32;
	struct gpu_file file;
	if (!gpu_file_of(tgid, ret, &file, 1))
		return 0;
	/* Only now: the agent's own opens are as rarely GPUs as anyone's, and the check is a
	 * map lookup that every other open on the host would pay. */
	if (is_self(tgid))
		return 0;
	if (!take_budget(tgid, bpf_ktime_get_boot_ns()))
		return 0;
	struct gpu_open_rec *rec = decisive.ringbuf_reserve(sizeof(struct gpu_open_rec));
	if (!rec) {
		count_drop(REC_GPU_OPEN);
		return 0;
	}
	fill_hdr(&rec->hdr, REC_GPU_OPEN, sizeof(*rec));
	rec->fd = ret;
	rec->kind = file.kind;
	rec->by_name = file.by_name;
	rec->_pad = 0;
	rec->minor = file.minor;
	rec->_pad2 = 0;
	events.ringbuf_submit(rec, RB_FLAGS);
	return 0;
}

/* Every syscall that opens a path into a new fd. open_tree and open(O_PATH) give O_PATH fds only
 * (no ioctl, no mmap) and are seen here only through openat; dup, fcntl, SCM_RIGHTS and
 * pidfd_getfd copy an open file, which the ioctl path classifies when it is used. */
TRACEPOINT_PROBE(syscalls, sys_exit_openat)
{
	return gpu_open_exit(args->ret);
}

TRACEPOINT_PROBE(syscalls, sys_exit_open)
{
	return gpu_open_exit(args->ret);
}

TRACEPOINT_PROBE(syscalls, sys_exit_openat2)
{
	return gpu_open_exit(args->ret);
}

TRACEPOINT_PROBE(syscalls, sys_exit_creat)
{
	return gpu_open_exit(args->ret);
}

TRACEPOINT_PROBE(syscalls, sys_exit_open_by_handle_at)
{
	return gpu_open_exit(args->ret);
}

#if HAVE_IO_URING_OPENS
/* io_uring opens a file without an open syscall: IORING_OP_OPENAT and OPENAT2, and
 * FIXED_FD_INSTALL, which puts a direct descriptor (a file io_uring holds outside the fd table)
 * into the fd table. Opcodes are uapi (include/uapi/linux/io_uring.h). The request is noted at
 * submission, where its opcode is known; its completion carries the result, the new fd, and runs
 * in the submitting task or in one of its io-wq workers, threads of the same process that share
 * its fd table: the new fd is classified from the current task's table, as at an open's exit.
 * Not seen: an open whose success posts no completion (IOSQE_CQE_SKIP_SUCCESS: no
 * io_uring_complete) and an open into a direct descriptor, which has no fd until it is
 * installed; the ioctl path still classifies such a file when an ioctl uses it. */
#define IORING_OP_OPENAT 18
#define IORING_OP_OPENAT2 28
#define IORING_OP_FIXED_FD_INSTALL 54
#define REQ_F_CQE_SKIP (1ULL << 6) /* the request's flags mirror IOSQE_CQE_SKIP_SUCCESS_BIT */

LRU_HASH(uring_opens, u64, u32, 4096); /* request -> submitting tgid, until its completion */
/* Requests in uring_opens: every completion on the host passes io_uring_complete, and while
 * none is pending it returns after one array read, with no hash lookup. A request evicted from
 * the LRU keeps it above 0: completions then cost a lookup each, and nothing is missed. */
BPF_ARRAY(uring_pending, s64, 1);

TRACEPOINT_PROBE(io_uring, io_uring_submit_req)
{
	u8 op = args->opcode;
	if (op != IORING_OP_OPENAT && op != IORING_OP_OPENAT2 && op != IORING_OP_FIXED_FD_INSTALL)
		return 0;
	if (args->flags & REQ_F_CQE_SKIP)
		return 0; /* its success has no completion to wait for */
	/* The request was prepared before this tracepoint: struct io_open (in the request's cmd
	 * area) holds the direct-descriptor slot the open goes to, 0 for a plain fd. */
	if (op != IORING_OP_FIXED_FD_INSTALL && read_ku32(args->req, OFF_IO_KIOCB_CMD + OFF_IO_OPEN_FILE_SLOT))
		return 0;
	u32 tgid = bpf_get_current_pid_tgid() >> 32;
	u64 req = (u64)args->req;
	u32 zero = 0;
	s64 *pending = uring_pending.lookup(&zero);
	if (!pending || uring_opens.update(&req, &tgid) < 0)
		return 0;
	__sync_fetch_and_add(pending, 1);
	return 0;
}

TRACEPOINT_PROBE(io_uring, io_uring_complete)
{
	u32 zero = 0;
	s64 *pending = uring_pending.lookup(&zero);
	if (!pending || *pending <= 0)
		return 0;
	u64 req = (u64)args->req;
	u32 *submitter = uring_opens.lookup(&req);
	if (!submitter)
		return 0;
	u32 tgid = *submitter;
	uring_opens.delete(&req);
	__sync_fetch_and_add(pending, -1);
	if (tgid != bpf_get_current_pid_tgid() >> 32)
		return 0; /* not in the submitter's process: its fd table is not the one with the fd */
	return gpu_open_exit(args->res);
}
#endif
