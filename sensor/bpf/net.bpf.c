/* Outbound connections (connect), accepted connections (accept, accept4), and the kernel's
 * own view of each outbound TCP connection once established (sock:inet_sock_set_state).
 *
 * The sockaddr is read at syscall exit: the kernel has copied it by then, so its page is
 * resident. What a caller's other thread writes there afterwards is not what the kernel
 * used; for TCP the tcp_rec from inet_sock_set_state carries the kernel's own addresses.
 */
/* Follows common.bpf.c in the loaded text. */

#define AF_INET_ 2
#define AF_INET6_ 10
#define IPPROTO_TCP_ 6
#define TCP_ESTABLISHED_ 1
#define TCP_SYN_SENT_ 2
#define TCP_CLOSE_ 7

struct connect_args {
	u64 uaddr;
	s32 fd;
	u32 addrlen;
	u32 pending; /* set at entry, cleared at exit */
	u32 _pad;
};

struct accept_args {
	u64 uaddr;
	u64 uaddrlen;
	s32 listen_fd;
	u32 pending; /* set at entry, cleared at exit */
};

struct sock_owner {
	u32 tgid;
	u32 tid;
	u32 netns;
	u32 _pad;
};

/* Per thread, the arguments of its connect() or accept() under way. An entry outlives the call
 * and the thread's next call rewrites it in place: a lookup takes no lock, where an update and
 * a delete per call (an element allocation and two bucket locks each time) cost more than the
 * rest of both programs. The LRU evicts the entries of threads that are gone. */
LRU_HASH(connect_args_by_tid, u32, struct connect_args, 10240);
LRU_HASH(accept_args_by_tid, u32, struct accept_args, 10240);
/* Socket being connected -> the process that called connect(): the ESTABLISHED transition
 * runs in softirq context, where `current` is whoever happened to be running. */
LRU_HASH(tcp_owner, u64, struct sock_owner, 65536);

/* A destination a process has connected to: its network namespace and the sockaddr's first
 * bytes (family, port and an IPv4 address, or the start of an IPv6 address or a path). */
#define DEST_KEY_LEN 24
struct dest_key {
	u32 tgid;
	u32 netns;
	u8 sockaddr[DEST_KEY_LEN];
};
/* Destinations seen per process: a process's first connect to each goes on the decisive ring. */
LRU_HASH(connect_seen, struct dest_key, u8, 65536);

static __always_inline int first_connect_to(u32 tgid, u32 netns, const u8 *sockaddr)
{
	struct dest_key key = {.tgid = tgid, .netns = netns};
	__builtin_memcpy(key.sockaddr, sockaddr, DEST_KEY_LEN);
	if (connect_seen.lookup(&key))
		return 0;
	u8 one = 1;
	connect_seen.update(&key, &one);
	return 1;
}

TRACEPOINT_PROBE(syscalls, sys_enter_connect)
{
	u64 id = bpf_get_current_pid_tgid();
	if (is_self(id >> 32))
		return 0;
	u32 tid = id;
	struct connect_args *slot = connect_args_by_tid.lookup(&tid);
	if (slot) {
		slot->uaddr = (u64)args->uservaddr;
		slot->fd = args->fd;
		slot->addrlen = args->addrlen;
		slot->pending = 1;
		return 0;
	}
	struct connect_args saved = {.uaddr = (u64)args->uservaddr, .fd = args->fd, .addrlen = args->addrlen,
				     .pending = 1};
	connect_args_by_tid.update(&tid, &saved);
	return 0;
}

TRACEPOINT_PROBE(syscalls, sys_exit_connect)
{
	u32 tid = bpf_get_current_pid_tgid();
	struct connect_args *saved = connect_args_by_tid.lookup(&tid);
	if (!saved || !saved->pending)
		return 0;
	struct connect_args call = *saved;
	saved->pending = 0;
	u8 sockaddr[SOCKADDR_LEN];
	__builtin_memset(sockaddr, 0, SOCKADDR_LEN);
	u32 len = call.addrlen;
	if (len > SOCKADDR_LEN)
		len = SOCKADDR_LEN;
	int unreadable = bpf_probe_read_user(sockaddr, len & (SOCKADDR_LEN * 2 - 1), (void *)call.uaddr) < 0;
	u32 tgid = bpf_get_current_pid_tgid() >> 32;
	u32 netns = current_netns();
	int on_decisive = first_connect_to(tgid, netns, sockaddr) && decisive_take(tgid);
	struct connect_rec *rec = reserve_on(on_decisive, sizeof(struct connect_rec));
	if (!rec) {
		count_drop(REC_CONNECT);
		return 0;
	}
	fill_hdr(&rec->hdr, REC_CONNECT, sizeof(*rec));
	rec->result = args->ret;
	rec->fd = call.fd;
	rec->addrlen = call.addrlen;
	rec->netns = netns;
	__builtin_memcpy(rec->sockaddr, sockaddr, SOCKADDR_LEN);
	if (unreadable)
		rec->hdr.flags = 1; /* address unreadable */
	events.ringbuf_submit(rec, RB_FLAGS);
	return 0;
}

static __always_inline int accept_enter(u64 uaddr, u64 uaddrlen, s32 listen_fd)
{
	u64 id = bpf_get_current_pid_tgid();
	if (is_self(id >> 32))
		return 0;
	u32 tid = id;
	struct accept_args *slot = accept_args_by_tid.lookup(&tid);
	if (slot) {
		slot->uaddr = uaddr;
		slot->uaddrlen = uaddrlen;
		slot->listen_fd = listen_fd;
		slot->pending = 1;
		return 0;
	}
	struct accept_args saved = {.uaddr = uaddr, .uaddrlen = uaddrlen, .listen_fd = listen_fd, .pending = 1};
	accept_args_by_tid.update(&tid, &saved);
	return 0;
}

static __always_inline int accept_exit(long ret)
{
	u32 tid = bpf_get_current_pid_tgid();
	struct accept_args *saved = accept_args_by_tid.lookup(&tid);
	if (!saved || !saved->pending)
		return 0;
	struct accept_args call = *saved;
	saved->pending = 0;
	if (ret == -11) /* EAGAIN: a non-blocking accept found nothing; not an event */
		return 0;
	struct accept_rec *rec = reserve_on(decisive_take((u32)(bpf_get_current_pid_tgid() >> 32)), sizeof(struct accept_rec));
	if (!rec) {
		count_drop(REC_ACCEPT);
		return 0;
	}
	fill_hdr(&rec->hdr, REC_ACCEPT, sizeof(*rec));
	rec->fd = ret;
	rec->listen_fd = call.listen_fd;
	rec->netns = current_netns();
	__builtin_memset(rec->sockaddr, 0, SOCKADDR_LEN);
	u32 len = 0;
	if (ret >= 0 && call.uaddr && call.uaddrlen)
		bpf_probe_read_user(&len, sizeof(len), (void *)call.uaddrlen);
	if (len > SOCKADDR_LEN)
		len = SOCKADDR_LEN;
	rec->addrlen = len;
	if (len && bpf_probe_read_user(rec->sockaddr, len & (SOCKADDR_LEN * 2 - 1), (void *)call.uaddr) < 0)
		rec->hdr.flags = 1;
	events.ringbuf_submit(rec, RB_FLAGS);
	return 0;
}

TRACEPOINT_PROBE(syscalls, sys_enter_accept)
{
	return accept_enter((u64)args->upeer_sockaddr, (u64)args->upeer_addrlen, args->fd);
}

TRACEPOINT_PROBE(syscalls, sys_enter_accept4)
{
	return accept_enter((u64)args->upeer_sockaddr, (u64)args->upeer_addrlen, args->fd);
}

TRACEPOINT_PROBE(syscalls, sys_exit_accept)
{
	return accept_exit(args->ret);
}

TRACEPOINT_PROBE(syscalls, sys_exit_accept4)
{
	return accept_exit(args->ret);
}

TRACEPOINT_PROBE(sock, inet_sock_set_state)
{
	if (args->protocol != IPPROTO_TCP_)
		return 0;
	u64 sk = (u64)args->skaddr;
	if (args->newstate == TCP_SYN_SENT_) {
		/* Inside connect(): current is the connecting task. */
		u64 id = bpf_get_current_pid_tgid();
		if (is_self(id >> 32))
			return 0;
		struct sock_owner owner = {.tgid = id >> 32, .tid = (u32)id, .netns = current_netns()};
		tcp_owner.update(&sk, &owner);
		return 0;
	}
	if (args->oldstate != TCP_SYN_SENT_)
		return 0;
	struct sock_owner *found = tcp_owner.lookup(&sk);
	if (!found)
		return 0;
	struct sock_owner owner = *found;
	tcp_owner.delete(&sk);
	if (args->newstate != TCP_ESTABLISHED_)
		return 0;
	struct tcp_rec *rec = reserve_on(decisive_take(owner.tgid), sizeof(struct tcp_rec));
	if (!rec) {
		count_drop(REC_TCP_ESTABLISHED);
		return 0;
	}
	fill_hdr(&rec->hdr, REC_TCP_ESTABLISHED, sizeof(*rec));
	rec->hdr.tgid = owner.tgid;
	rec->hdr.tid = owner.tid;
	rec->family = args->family;
	rec->sport = args->sport;
	rec->dport = args->dport;
	rec->_pad = 0;
	rec->netns = owner.netns;
	rec->_pad2 = 0;
	if (args->family == AF_INET6_) {
		__builtin_memcpy(rec->saddr, args->saddr_v6, 16);
		__builtin_memcpy(rec->daddr, args->daddr_v6, 16);
	} else {
		__builtin_memset(rec->saddr, 0, 16);
		__builtin_memset(rec->daddr, 0, 16);
		__builtin_memcpy(rec->saddr, args->saddr, 4);
		__builtin_memcpy(rec->daddr, args->daddr, 4);
	}
	events.ringbuf_submit(rec, RB_FLAGS);
	return 0;
}
