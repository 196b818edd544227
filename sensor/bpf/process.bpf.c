/* Process lifecycle: exec (successful and failed), fork, exit.
 *
 * argv is read from the new image at sched_process_exec, not at execve entry: at entry
 * the caller's argv pages are often not resident and BPF cannot fault them in (DESIGN.md).
 * At sched_process_exec the kernel has just written argc, the argv pointers and the strings
 * onto the new stack, so they are resident.
 */
/* Follows common.bpf.c in the loaded text. */

struct exec_args {
	u64 filename; /* user pointers saved at syscall entry, for a failed exec */
	u64 argv;
};

LRU_HASH(exec_args_by_tid, u32, struct exec_args, 10240);
/* One scratch record per CPU, built before it is copied into the ring buffer at its real
 * size. A plain array indexed by CPU: per-CPU map values are capped at 32 KiB. Tracing
 * programs do not nest on one CPU (bpf_prog_active), so a slot has one user at a time. */
#ifndef NR_CPUS_POSSIBLE
#define NR_CPUS_POSSIBLE 64
#endif
BPF_ARRAY(exec_scratch, struct exec_rec, NR_CPUS_POSSIBLE);

/* Copy up to MAX_ARGS arguments, each cut at ARG_LEN, from an array of user pointers.
 * Each entry: u16 (length | ARGV_ENTRY_CUT), then the bytes. Returns bytes used. */
static __always_inline u32 read_argv(struct exec_rec *rec, u64 ptr_array, u32 limit)
{
	u64 off = 0;
	u32 i;

	for (i = 0; i < MAX_ARGS; i++) {
		u64 arg = 0;
		if (i >= limit)
			break;
		if (bpf_probe_read_user(&arg, sizeof(arg), (void *)(ptr_array + i * 8)) < 0) {
			rec->hdr.flags |= EXEC_ARGV_UNREAD;
			break;
		}
		if (!arg)
			break;
		u64 text = (off + 2) & (ARGV_SPAN - 1);
		if (text < off + 2)
			break; /* full: cannot happen when ARGV_SPAN >= MAX_ARGS * (ARG_LEN + 2) */
		/* Ask for one byte more than we keep, to know whether the argument was cut. */
		long n = bpf_probe_read_user_str(&rec->argv[text], ARG_LEN + 2, (void *)arg);
		if (n <= 0) {
			rec->hdr.flags |= EXEC_ARGV_UNREAD;
			break;
		}
		u64 len = n - 1;
		u16 entry = len;
		if (len > ARG_LEN) {
			len = ARG_LEN;
			entry = ARG_LEN | ARGV_ENTRY_CUT;
			rec->hdr.flags |= EXEC_ARG_CUT;
		}
		rec->argv[text - 2] = entry & 0xff;
		rec->argv[text - 1] = entry >> 8;
		off = (text + len) & (ARGV_SPAN - 1);
		rec->argv_count++;
	}
	return off;
}

static __always_inline struct exec_rec *exec_rec_init(void)
{
	u32 cpu = bpf_get_smp_processor_id();
	struct exec_rec *rec = exec_scratch.lookup(&cpu);
	if (!rec)
		return 0;
	fill_hdr(&rec->hdr, REC_EXEC, 0);
	u64 uid_gid = bpf_get_current_uid_gid();
	rec->uid = (u32)uid_gid;
	rec->gid = uid_gid >> 32;
	rec->cgroup_id = bpf_get_current_cgroup_id();
	bpf_get_current_comm(rec->comm, sizeof(rec->comm));
	void *task = (void *)bpf_get_current_task();
	rec->ppid = task_parent_tgid(task);
	rec->start_ns = read_kptr(task, OFF_TASK_START_BOOTTIME);
	rec->result = 0;
	rec->exe_ino = 0;
	rec->exe_dev = 0;
	rec->old_tid = rec->hdr.tid;
	rec->argc = 0;
	rec->argv_count = 0;
	rec->argv_size = 0;
	rec->loginuid = read_ku32(task, OFF_TASK_LOGINUID);
	rec->sessionid = read_ku32(task, OFF_TASK_SESSIONID);
	rec->netns = task_netns(task);
	return rec;
}

static __always_inline void exec_rec_send(struct exec_rec *rec, u32 argv_size)
{
	u32 size = offsetof(struct exec_rec, argv) + argv_size;
	if (size > sizeof(*rec))
		size = sizeof(*rec);
	rec->argv_size = argv_size;
	rec->hdr.size = size;
	if (decisive.ringbuf_output(rec, size, 0) < 0)
		count_drop(REC_EXEC);
}

TRACEPOINT_PROBE(sched, sched_process_exec)
{
	u32 tgid = bpf_get_current_pid_tgid() >> 32;
	if (is_self(tgid))
		return 0;
	struct exec_rec *rec = exec_rec_init();
	if (!rec)
		return 0;
	rec->old_tid = args->old_pid;

	unsigned short loc = args->data_loc_filename & 0xFFFF;
	long n = bpf_probe_read_kernel_str(rec->filename, sizeof(rec->filename), (char *)args + loc);
	if (n == sizeof(rec->filename))
		rec->hdr.flags |= EXEC_FILENAME_CUT;

	void *task = (void *)bpf_get_current_task();
	void *mm = (void *)read_kptr(task, OFF_TASK_MM);
	void *exe_inode = (void *)read_kptr((void *)read_kptr(mm, OFF_MM_EXE_FILE), OFF_FILE_INODE);
	rec->exe_ino = read_kptr(exe_inode, OFF_INODE_INO);
	rec->exe_dev = read_ku32((void *)read_kptr(exe_inode, OFF_INODE_SB), OFF_SB_DEV);

	/* mm->start_stack points at argc, followed by the argv pointers (create_elf_tables). */
	u64 stack = read_kptr(mm, OFF_MM_START_STACK);
	u64 argc = 0;
	if (!stack || bpf_probe_read_user(&argc, sizeof(argc), (void *)stack) < 0) {
		rec->hdr.flags |= EXEC_ARGV_UNREAD;
		exec_rec_send(rec, 0);
		return 0;
	}
	rec->argc = argc;
	if (argc > MAX_ARGS)
		rec->hdr.flags |= EXEC_ARGV_TRUNCATED;
	exec_rec_send(rec, read_argv(rec, stack + 8, argc));
	return 0;
}

static __always_inline int exec_enter(u64 filename, u64 argv)
{
	u32 tid = bpf_get_current_pid_tgid();
	struct exec_args saved = {.filename = filename, .argv = argv};
	exec_args_by_tid.update(&tid, &saved);
	return 0;
}

/* A failed exec returns to the old image: report it with its errno. The kernel has copied
 * the file name by then, so its page is resident; argv may not be (the file is opened
 * before argv is copied), and /proc/PID/cmdline would show the old image, so an unread
 * argv stays unread. */
static __always_inline int exec_exit(long ret)
{
	u64 pid_tgid = bpf_get_current_pid_tgid();
	u32 tid = pid_tgid;
	struct exec_args *saved = exec_args_by_tid.lookup(&tid);
	if (!saved)
		return 0;
	struct exec_args args = *saved;
	exec_args_by_tid.delete(&tid);
	if (ret >= 0 || is_self(pid_tgid >> 32))
		return 0;
	struct exec_rec *rec = exec_rec_init();
	if (!rec)
		return 0;
	rec->result = ret;
	long n = bpf_probe_read_user_str(rec->filename, sizeof(rec->filename), (void *)args.filename);
	if (n == sizeof(rec->filename))
		rec->hdr.flags |= EXEC_FILENAME_CUT;
	if (n < 0)
		rec->filename[0] = 0;
	u32 size = 0;
	if (args.argv)
		size = read_argv(rec, args.argv, MAX_ARGS + 1);
	rec->argc = rec->argv_count;
	if (rec->argv_count == MAX_ARGS)
		rec->hdr.flags |= EXEC_ARGC_UNKNOWN;
	exec_rec_send(rec, size);
	return 0;
}

TRACEPOINT_PROBE(syscalls, sys_enter_execve)
{
	return exec_enter((u64)args->filename, (u64)args->argv);
}

TRACEPOINT_PROBE(syscalls, sys_enter_execveat)
{
	return exec_enter((u64)args->filename, (u64)args->argv);
}

TRACEPOINT_PROBE(syscalls, sys_exit_execve)
{
	return exec_exit(args->ret);
}

TRACEPOINT_PROBE(syscalls, sys_exit_execveat)
{
	return exec_exit(args->ret);
}

/* A raw tracepoint, for the child's task_struct: threads are skipped (they share the
 * process), and the child's start time and real parent are read from the child itself. */
RAW_TRACEPOINT_PROBE(sched_process_fork)
{
	void *child = (void *)ctx->args[1];
	u32 child_pid = read_ku32(child, OFF_TASK_PID);
	u32 child_tgid = task_tgid(child);
	if (child_pid != child_tgid)
		return 0;
	u32 tgid = bpf_get_current_pid_tgid() >> 32;
	if (is_self(tgid))
		return 0;
	struct fork_rec *rec = decisive.ringbuf_reserve(sizeof(struct fork_rec));
	if (!rec) {
		count_drop(REC_FORK);
		return 0;
	}
	fill_hdr(&rec->hdr, REC_FORK, sizeof(*rec));
	rec->child_pid = child_pid;
	rec->parent_tgid = task_parent_tgid(child);
	rec->child_start_ns = read_kptr(child, OFF_TASK_START_BOOTTIME);
	events.ringbuf_submit(rec, 0);
	return 0;
}

TRACEPOINT_PROBE(sched, sched_process_exit)
{
#ifdef HAVE_EXIT_GROUP_DEAD
	/* The last thread of the process: the process as a whole is gone. */
	if (!args->group_dead)
		return 0;
#else
	u64 id = bpf_get_current_pid_tgid();
	if ((u32)id != id >> 32)
		return 0;
#endif
	u32 tgid = bpf_get_current_pid_tgid() >> 32;
	if (is_self(tgid))
		return 0;
	struct exit_rec *rec = decisive.ringbuf_reserve(sizeof(struct exit_rec));
	if (!rec) {
		count_drop(REC_EXIT);
		return 0;
	}
	fill_hdr(&rec->hdr, REC_EXIT, sizeof(*rec));
	void *task = (void *)bpf_get_current_task();
	rec->exit_code = read_ku32(task, OFF_TASK_EXIT_CODE);
	rec->_pad = 0;
	rec->start_ns = read_kptr(task, OFF_TASK_START_BOOTTIME);
	events.ringbuf_submit(rec, 0);
	return 0;
}
