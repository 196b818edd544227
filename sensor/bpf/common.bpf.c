/* Maps and helpers shared by every gpusentry BPF program.
 *
 * The loader concatenates common.bpf.c, then each program file, into one source text:
 * BCC rewrites map calls (`map.lookup(...)`) and generates tracepoint argument structs
 * only in its main text, never in an included file.
 *
 * Kernel struct fields are read only through the OFF_* constants, which the loader
 * resolves from the running kernel's BTF (sensor/probe/btf.py). Nothing here dereferences
 * a struct as laid out by the headers BCC compiles with.
 */
#include "events.h"

#ifndef RINGBUF_PAGES
#define RINGBUF_PAGES 1024
#endif

/* BCC 0.26 has no BPF_LRU_HASH; the table type string is what it understands. */
#define LRU_HASH(name, key_type, leaf_type, entries) BPF_TABLE("lru_hash", key_type, leaf_type, name, entries)

/* Two ring buffers, so that a flood cannot hide what detection turns on (issue: flood
 * resistance). `decisive` carries process lifecycles (exec, fork, exit), GPU opens and the GPU
 * records the per-process GPU budget lets through, and, within a per-process budget, accepted
 * connections, established TCP connections and each process's first connect to each
 * destination; `events` carries the rest (a process's repeated connects, and what is over its
 * budget). A flood of connects from one process then fills `events`, whose drops are counted
 * as ever, while another process's exec, GPU compute and pool connection still have room. The
 * reader merges the two by time. */
#ifndef DECISIVE_PAGES
#define DECISIVE_PAGES RINGBUF_PAGES
#endif
BPF_RINGBUF_OUTPUT(events, RINGBUF_PAGES);

/* Records are submitted without waking the reader (BPF_RB_NO_WAKEUP): it drains both rings on
 * a short timer instead (FLUSH_S in sensor/probe/probe.py), so a thousand records a second cost
 * the agent a few dozen wake-ups, not a thousand. Only an exec wakes it (RB_WAKE), with
 * everything waiting before it, and only when the probe must read the new process's /proc (a
 * binary it has not judged, a container it has not placed: process.bpf.c, exec_settled): a
 * short-lived process is gone within milliseconds. */
#ifndef RB_FLAGS
#define RB_FLAGS BPF_RB_NO_WAKEUP
#endif
/* Forced: the default wakes only when the reader has read everything before this record, and a
 * fork record (submitted without a wake-up) is usually just before. */
#define RB_WAKE BPF_RB_FORCE_WAKEUP
BPF_RINGBUF_OUTPUT(decisive, DECISIVE_PAGES);

/* Network records one process may put on the decisive ring per window (2^30 ns, about 1 s):
 * beyond them its records go to `events`, so no process can fill the decisive ring alone. */
#define DECISIVE_PER_PROCESS 64
struct decisive_window {
	u64 window;
	u32 used;
	u32 _pad;
};
LRU_HASH(decisive_budget, u32, struct decisive_window, 16384);

/* Records that could not be sent, by record type: per-CPU, so counting needs no atomics. */
BPF_PERCPU_ARRAY(ringbuf_drops, u64, REC_TYPE_MAX);

/* The agent's own processes: their events are never reported. The value says whether the
 * processes it starts are the agent's too (the aggregator's: SELF_AND_DESCENDANTS), or not (the
 * probe's own process, which is also a test's process in the kernel tests). */
#define SELF_ONLY 1
#define SELF_AND_DESCENDANTS 2
BPF_HASH(self_tgids, u32, u8, 256);

static __always_inline void count_drop(u32 type)
{
	u64 *count = ringbuf_drops.lookup(&type);
	if (count)
		(*count)++;
}

/* Whether this process may put one more network record on the decisive ring now. */
static __always_inline int decisive_take(u32 tgid)
{
	u64 window = bpf_ktime_get_boot_ns() >> 30;
	struct decisive_window *seen = decisive_budget.lookup(&tgid);
	if (!seen || seen->window != window) {
		struct decisive_window fresh = {.window = window, .used = 1};
		decisive_budget.update(&tgid, &fresh);
		return 1;
	}
	if (seen->used >= DECISIVE_PER_PROCESS)
		return 0;
	seen->used++;
	return 1;
}

/* A record's room on the ring it belongs to (decisive or not); 0 when that ring is full.
 * `events.ringbuf_submit(rec, RB_FLAGS)` then submits it whichever ring it is on: the kernel finds
 * the ring from the record. */
static __always_inline void *reserve_on(int on_decisive, u32 size)
{
	if (on_decisive)
		return decisive.ringbuf_reserve(size);
	return events.ringbuf_reserve(size);
}

static __always_inline int is_self(u32 tgid)
{
	return self_tgids.lookup(&tgid) != 0;
}

static __always_inline void fill_hdr(struct rec_hdr *hdr, u16 type, u32 size)
{
	u64 pid_tgid = bpf_get_current_pid_tgid();
	hdr->type = type;
	hdr->flags = 0;
	hdr->size = size;
	hdr->ts = bpf_ktime_get_boot_ns();
	hdr->tgid = pid_tgid >> 32;
	hdr->tid = (u32)pid_tgid;
}

/* Read a kernel field at a BTF-resolved offset; 0 when the read fails. */
static __always_inline u64 read_kptr(const void *base, u32 offset)
{
	u64 value = 0;
	if (base)
		bpf_probe_read_kernel(&value, sizeof(value), (const char *)base + offset);
	return value;
}

static __always_inline u32 read_ku32(const void *base, u32 offset)
{
	u32 value = 0;
	if (base)
		bpf_probe_read_kernel(&value, sizeof(value), (const char *)base + offset);
	return value;
}

static __always_inline u32 task_tgid(const void *task)
{
	return read_ku32(task, OFF_TASK_TGID);
}

/* The current task's fields by plain loads through its BTF pointer (bpf_get_current_task_btf,
 * kernel 5.11): the verifier checks each OFF_* against the kernel's BTF, and a load costs a few
 * ns where a bpf_probe_read_kernel costs about 50 here (bench/bpfcost.py). A field that is a
 * pointer to a struct loads as that struct's BTF pointer, so chains stay plain loads; a NULL
 * one loads as 0. Older kernels read through bpf_probe_read_kernel, as for any other task. */
#ifndef CURRENT_TASK_BTF
#if LINUX_VERSION_CODE >= KERNEL_VERSION(5, 11, 0)
#define CURRENT_TASK_BTF 1
#else
#define CURRENT_TASK_BTF 0
#endif
#endif

#if CURRENT_TASK_BTF
static __always_inline const void *current_task(void)
{
	return bpf_get_current_task_btf();
}

/* `base`: current_task() or a struct pointer loaded from it. */
static __always_inline u64 load_kptr(const void *base, u32 offset)
{
	return base ? *(const u64 *)((const char *)base + offset) : 0;
}

static __always_inline u32 load_ku32(const void *base, u32 offset)
{
	return base ? *(const u32 *)((const char *)base + offset) : 0;
}
#else
static __always_inline const void *current_task(void)
{
	return (const void *)bpf_get_current_task();
}

static __always_inline u64 load_kptr(const void *base, u32 offset)
{
	return read_kptr(base, offset);
}

static __always_inline u32 load_ku32(const void *base, u32 offset)
{
	return read_ku32(base, offset);
}
#endif

static __always_inline u32 current_netns(void)
{
	const void *nsproxy = (const void *)load_kptr(current_task(), OFF_TASK_NSPROXY);
	return load_ku32((const void *)load_kptr(nsproxy, OFF_NSPROXY_NET_NS), OFF_NET_INUM);
}

/* fd -> struct file in the current task (GPU devices, accepted sockets). */
static __always_inline void *fd_to_file(s32 fd)
{
	if (fd < 0)
		return 0;
	/* Plain loads down to the fd array (common.bpf.c: current_task); its slot, indexed by a
	 * number the verifier cannot bound, and the file are read as any kernel memory. */
	const void *files = (const void *)load_kptr(current_task(), OFF_TASK_FILES);
	const void *fdt = (const void *)load_kptr(files, OFF_FILES_FDT);
	if (!fdt)
		return 0;
	u32 max_fds = load_ku32(fdt, OFF_FDT_MAX_FDS);
	const void *fd_array = (const void *)load_kptr(fdt, OFF_FDT_FD);
	if ((u32)fd >= max_fds)
		return 0;
	return (void *)read_kptr(fd_array, (u32)fd * 8);
}
