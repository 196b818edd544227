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

/* Copy one argument, cut at ARG_LEN, to argv[] at *off: a u16 (length | ARGV_ENTRY_CUT), then
 * the bytes. Returns the bytes the string really took in user memory with its NUL (when it
 * was not cut), ARG_LEN + 2 when it was cut, or 0 when it could not be read or argv[] is full. */
static __always_inline long copy_arg(struct exec_rec *rec, u64 *off, u64 arg)
{
	u64 text = (*off + 2) & (ARGV_SPAN - 1);
	if (text < *off + 2)
		return 0; /* full: cannot happen when ARGV_SPAN >= MAX_ARGS * (ARG_LEN + 2) */
	/* Ask for one byte more than we keep, to know whether the argument was cut. */
	long n = bpf_probe_read_user_str(&rec->argv[text], ARG_LEN + 2, (void *)arg);
	if (n <= 0) {
		rec->hdr.flags |= EXEC_ARGV_UNREAD;
		return 0;
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
	*off = (text + len) & (ARGV_SPAN - 1);
	rec->argv_count++;
	return n;
}

/* Up to MAX_ARGS arguments from an array of user pointers (a failed exec's argv). Returns the
 * bytes used in argv[]. */
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
		if (!arg || !copy_arg(rec, &off, arg))
			break;
	}
	return off;
}

/* Up to MAX_ARGS arguments of a new image. The kernel laid the strings end to end from
 * mm->arg_start and pointed argv[i] at each in turn (create_elf_tables), so the next argument
 * starts where the last one's NUL ended: one read per argument, not two. Only after an
 * argument cut at ARG_LEN, whose end is unknown, is the next pointer read from the array. */
static __always_inline u32 read_arg_area(struct exec_rec *rec, u64 arg, u64 arg_end, u64 ptr_array, u32 limit)
{
	u64 off = 0;
	u32 i;

	for (i = 0; i < MAX_ARGS; i++) {
		if (i >= limit || arg >= arg_end)
			break;
		long n = copy_arg(rec, &off, arg);
		if (!n)
			break;
		if (n <= ARG_LEN + 1) {
			arg += n;
			continue;
		}
		if (bpf_probe_read_user(&arg, sizeof(arg), (void *)(ptr_array + (i + 1) * 8)) < 0) {
			rec->hdr.flags |= EXEC_ARGV_UNREAD;
			break;
		}
	}
	return off;
}

struct mm_args {
	u64 start_stack;
	u64 arg_start;
	u64 arg_end;
};

/* mm->start_stack, arg_start and arg_end: `mm` is the current task's (common.bpf.c: load_kptr). */
static __always_inline struct mm_args read_mm_args(const void *mm)
{
	struct mm_args area = {};
	area.start_stack = load_kptr(mm, OFF_MM_START_STACK);
	area.arg_start = load_kptr(mm, OFF_MM_ARG_START);
	area.arg_end = load_kptr(mm, OFF_MM_ARG_END);
	return area;
}

/* The current task's loginuid and sessionid (audit). */
static __always_inline void read_audit_ids(const void *task, struct exec_rec *rec)
{
	rec->loginuid = load_ku32(task, OFF_TASK_LOGINUID);
	rec->sessionid = load_ku32(task, OFF_TASK_SESSIONID);
}

/* The executable's identity as its inode says: device (the superblock's), inode number, size
 * and ctime, through the current task's mm (plain loads: common.bpf.c, load_kptr). */
static __always_inline void read_exe_identity(const void *mm, struct exec_rec *rec)
{
	const void *file = (const void *)load_kptr(mm, OFF_MM_EXE_FILE);
	const void *inode = (const void *)load_kptr(file, OFF_FILE_INODE);
	if (!inode)
		return;
	rec->exe_ino = load_kptr(inode, OFF_INODE_INO);
	rec->exe_size = load_kptr(inode, OFF_INODE_SIZE);
	/* Since 6.13 the top bit of i_ctime_nsec flags a queried ctime (multigrain timestamps);
	 * nanoseconds never reach bit 30. Before 6.11 it is a long's low half. */
	u32 ctime_nsec = load_ku32(inode, OFF_INODE_CTIME_NSEC) & ((1U << 30) - 1);
	rec->exe_ctime_ns = load_kptr(inode, OFF_INODE_CTIME_SEC) * 1000000000ULL + ctime_nsec;
	rec->exe_dev = load_ku32((const void *)load_kptr(inode, OFF_INODE_SB), OFF_SB_DEV);
}

/* Whether the process's cgroups are its parent's, on every hierarchy (the same css_set): then
 * its container is its parent's, and the probe need not read its /proc at once to place it. A
 * process that moved itself (a container runtime's init, joining the container's cgroups before
 * its exec) has a css_set of its own. */
static __always_inline int cgroups_inherited(const void *task)
{
	const void *parent = (const void *)load_kptr(task, OFF_TASK_REAL_PARENT);
	u64 own = load_kptr(task, OFF_TASK_CGROUPS);
	return own && own == load_kptr(parent, OFF_TASK_CGROUPS);
}

/* What the probe has settled (sensor/probe/settled.py): binaries it has judged, by inode with
 * size and ctime; v2 cgroups it has placed and network namespaces it has a route socket in. An
 * exec whose binary, cgroup and namespace are settled (or whose cgroups are its parent's, where
 * the v2 id does not tell cgroups apart) needs nothing read from /proc at once, so it waits for
 * the probe's next timed drain instead of waking it. */
struct exe_key {
	u64 ino;
	u32 dev;
	u32 _pad;
};
struct exe_stamp {
	u64 size;
	u64 ctime_ns;
};
struct scope_key {
	u64 id;
	u32 kind;
	u32 _pad;
};
#define SCOPE_CGROUP2 1
#define SCOPE_NETNS 2
LRU_HASH(known_exes, struct exe_key, struct exe_stamp, 8192);
LRU_HASH(known_scopes, struct scope_key, u8, 8192);

static __always_inline int scope_known(u64 id, u32 kind)
{
	struct scope_key key = {.id = id, .kind = kind};
	return known_scopes.lookup(&key) != 0;
}

static __always_inline int exec_settled(const struct exec_rec *rec)
{
	if ((rec->hdr.flags & EXEC_ARGV_UNREAD) || !rec->exe_ino)
		return 0;
	struct exe_key key = {.ino = rec->exe_ino, .dev = rec->exe_dev};
	struct exe_stamp *stamp = known_exes.lookup(&key);
	if (!stamp || stamp->size != rec->exe_size || stamp->ctime_ns != rec->exe_ctime_ns)
		return 0;
	if (rec->cgroup_id && rec->cgroup_id != CGROUP2_ROOT_ID) {
		if (!scope_known(rec->cgroup_id, SCOPE_CGROUP2))
			return 0;
	} else if (!(rec->hdr.flags & EXEC_CGROUPS_INHERITED)) {
		return 0;
	}
	return !rec->netns || scope_known(rec->netns, SCOPE_NETNS);
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
	const void *task = current_task();
	rec->ppid = load_ku32((const void *)load_kptr(task, OFF_TASK_REAL_PARENT), OFF_TASK_TGID);
	rec->start_ns = load_kptr(task, OFF_TASK_START_BOOTTIME);
	rec->result = 0;
	rec->exe_ino = 0;
	rec->exe_dev = 0;
	rec->exe_size = 0;
	rec->exe_ctime_ns = 0;
	rec->old_tid = rec->hdr.tid;
	rec->argc = 0;
	rec->argv_count = 0;
	rec->argv_size = 0;
	read_audit_ids(task, rec);
	rec->netns = current_netns();
	return rec;
}

static __always_inline void exec_rec_send(struct exec_rec *rec, u32 argv_size, u64 wake)
{
	u32 size = offsetof(struct exec_rec, argv) + argv_size;
	if (size > sizeof(*rec))
		size = sizeof(*rec);
	rec->argv_size = argv_size;
	rec->hdr.size = size;
	if (decisive.ringbuf_output(rec, size, wake) < 0)
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

	const void *task = current_task();
	const void *mm = (const void *)load_kptr(task, OFF_TASK_MM);
	read_exe_identity(mm, rec);
	if ((!rec->cgroup_id || rec->cgroup_id == CGROUP2_ROOT_ID) && cgroups_inherited(task))
		rec->hdr.flags |= EXEC_CGROUPS_INHERITED;

	/* mm->start_stack points at argc, followed by the argv pointers (create_elf_tables). */
	struct mm_args area = read_mm_args(mm);
	u64 argc = 0;
	if (!area.start_stack || bpf_probe_read_user(&argc, sizeof(argc), (void *)area.start_stack) < 0) {
		rec->hdr.flags |= EXEC_ARGV_UNREAD;
		exec_rec_send(rec, 0, RB_WAKE);
		return 0;
	}
	rec->argc = argc;
	if (argc > MAX_ARGS)
		rec->hdr.flags |= EXEC_ARGV_TRUNCATED;
	u32 size = read_arg_area(rec, area.arg_start, area.arg_end, area.start_stack + 8, argc);
	exec_rec_send(rec, size, exec_settled(rec) ? RB_FLAGS : RB_WAKE);
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
	exec_rec_send(rec, size, RB_FLAGS); /* the old image runs on: nothing to read at once */
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

struct task_ids {
	u32 pid;
	u32 tgid;
	void *real_parent;
};

/* task->pid, tgid and real_parent: one read when they lie within a few words of each other,
 * as they do (pid, tgid, stack canary, real_parent). */
static __always_inline struct task_ids read_task_ids(const void *task)
{
	struct task_ids ids = {};
	if (OFF_TASK_TGID == OFF_TASK_PID + 4 && OFF_TASK_REAL_PARENT > OFF_TASK_PID &&
	    OFF_TASK_REAL_PARENT - OFF_TASK_PID <= 24 && (OFF_TASK_REAL_PARENT - OFF_TASK_PID) % 8 == 0) {
		union {
			u64 words[4];
			u32 halves[8];
		} span = {};
		bpf_probe_read_kernel(&span, OFF_TASK_REAL_PARENT - OFF_TASK_PID + 8, (const char *)task + OFF_TASK_PID);
		ids.pid = span.halves[0];
		ids.tgid = span.halves[1];
		ids.real_parent = (void *)span.words[((OFF_TASK_REAL_PARENT - OFF_TASK_PID) / 8) & 3];
		return ids;
	}
	ids.pid = read_ku32(task, OFF_TASK_PID);
	ids.tgid = task_tgid(task);
	ids.real_parent = (void *)read_kptr(task, OFF_TASK_REAL_PARENT);
	return ids;
}

/* A raw tracepoint, for the child's task_struct: threads are skipped (they share the
 * process), and the child's start time and real parent are read from the child itself. */
RAW_TRACEPOINT_PROBE(sched_process_fork)
{
	void *child = (void *)ctx->args[1];
	struct task_ids ids = read_task_ids(child);
	if (ids.pid != ids.tgid)
		return 0;
	u32 tgid = bpf_get_current_pid_tgid() >> 32;
	u8 *self = self_tgids.lookup(&tgid);
	if (self) {
		/* The agent's own: what the aggregator starts (the API's stream process, the sinks)
		 * is the agent's too. A full table leaves the child visible, not hidden. */
		if (*self == SELF_AND_DESCENDANTS)
			self_tgids.update(&ids.pid, self);
		return 0;
	}
	struct fork_rec *rec = decisive.ringbuf_reserve(sizeof(struct fork_rec));
	if (!rec) {
		count_drop(REC_FORK);
		return 0;
	}
	fill_hdr(&rec->hdr, REC_FORK, sizeof(*rec));
	rec->child_pid = ids.pid;
	/* The child's real parent is the forking task itself unless CLONE_PARENT: then no read. */
	if ((u64)ids.real_parent == bpf_get_current_task())
		rec->parent_tgid = tgid;
	else
		rec->parent_tgid = task_tgid(ids.real_parent);
	rec->child_start_ns = read_kptr(child, OFF_TASK_START_BOOTTIME);
	events.ringbuf_submit(rec, RB_FLAGS);
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
	u8 *self = self_tgids.lookup(&tgid);
	if (self) {
		if (*self == SELF_AND_DESCENDANTS)
			self_tgids.delete(&tgid); /* its room, for the next one */
		return 0;
	}
	struct exit_rec *rec = decisive.ringbuf_reserve(sizeof(struct exit_rec));
	if (!rec) {
		count_drop(REC_EXIT);
		return 0;
	}
	fill_hdr(&rec->hdr, REC_EXIT, sizeof(*rec));
	const void *task = current_task();
	rec->exit_code = load_ku32(task, OFF_TASK_EXIT_CODE);
	rec->_pad = 0;
	rec->start_ns = load_kptr(task, OFF_TASK_START_BOOTTIME);
	events.ringbuf_submit(rec, RB_FLAGS);
	return 0;
}
