/* Kernel launches, counted in libcuda's launch entry points by uprobes.
 *
 * A launch makes no ioctl (user-mode GPFIFO and doorbell: NVIDIA-ABI.md), so the only place
 * to count launches is the user-space driver's entry points: cuLaunchKernel(f, ...) and
 * cuLaunchKernelEx(config, f, ...) (CUDA driver API; their _ptsz twins take the same
 * arguments). Every hit traps into the kernel and costs the process microseconds
 * (bench/launches.py), so these programs are never attached host-wide: the probe attaches
 * them, one perf event per process and entry point, only to the processes the aggregator asked
 * for (sensor/probe/launches.py), and they count only while that process has an entry in
 * launch_counts, which the probe makes at attach and removes at detach.
 *
 * Not auto-attached (no BCC prefix): the loader child loads them and hands their descriptors
 * to the probe (sensor/probe/loader.py).
 */
#include <uapi/linux/ptrace.h> /* struct pt_regs: the architecture's register ABI, stable, not a kernel struct */

#ifndef LAUNCH_WATCH_MAX
#define LAUNCH_WATCH_MAX 16
#endif
#ifndef LAUNCH_FUNCS_MAX
#define LAUNCH_FUNCS_MAX 256
#endif

BPF_HASH(launch_counts, u32, struct launch_count, LAUNCH_WATCH_MAX);
BPF_HASH(launch_funcs, struct launch_func_key, u8, LAUNCH_WATCH_MAX * LAUNCH_FUNCS_MAX);

static __always_inline int count_launch(u64 func, int extended)
{
	u32 tgid = bpf_get_current_pid_tgid() >> 32;
	struct launch_count *count = launch_counts.lookup(&tgid);
	if (!count)
		return 0; /* not (or no longer) watched */
	if (extended)
		__sync_fetch_and_add(&count->launches_ex, 1);
	else
		__sync_fetch_and_add(&count->launches, 1);
	struct launch_func_key key = {.tgid = tgid, .func = func};
	if (launch_funcs.lookup(&key))
		return 0;
	if (count->distinct >= LAUNCH_FUNCS_MAX) {
		__sync_fetch_and_add(&count->unrecorded, 1);
		return 0;
	}
	/* The cap may be passed by a few under concurrent first launches on several CPUs; the map's
	 * own size bounds the total. */
	u8 seen = 1;
	long err = launch_funcs.insert(&key, &seen);
	if (err == 0)
		__sync_fetch_and_add(&count->distinct, 1);
	else if (err != -17) /* -EEXIST: another CPU recorded it first */
		__sync_fetch_and_add(&count->unrecorded, 1);
	return 0;
}

int launch_kernel(struct pt_regs *ctx)
{
	return count_launch(PT_REGS_PARM1(ctx), 0);
}

int launch_kernel_ex(struct pt_regs *ctx)
{
	return count_launch(PT_REGS_PARM2(ctx), 1);
}
