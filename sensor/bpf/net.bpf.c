/* Outbound connections (connect), accepted connections (accept, accept4), the kernel's
 * own view of each outbound TCP connection once established (sock:inet_sock_set_state), and the
 * bytes each TCP socket sends and receives (sock:sock_send_length, sock:sock_recv_length: counted
 * here, read by the probe on a timer).
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
#define MSG_PEEK_ 2

#ifndef SOCK_BYTES_ENTRIES
#define SOCK_BYTES_ENTRIES 65536
#endif
/* Live TCP sockets' byte counts by socket address, and the final counts of closed ones until the
 * probe has read them (it deletes what it read). Plain hashes, not LRU: an LRU would evict a
 * count unseen, where a full hash refuses it and sock_bytes_overflow says how many. */
BPF_HASH(sock_bytes, u64, struct sock_bytes, SOCK_BYTES_ENTRIES);
BPF_HASH(sock_bytes_closed, struct sock_gen_key, struct sock_bytes, 16384);
/* [0]: sends and receives not counted (sock_bytes full); [1]: closed sockets' totals lost
 * (sock_bytes_closed full: the probe has not read for a while). */
BPF_PERCPU_ARRAY(sock_bytes_overflow, u64, 2);

static __always_inline void sock_overflow(u32 which)
{
	u64 *count = sock_bytes_overflow.lookup(&which);
	if (count)
		(*count)++;
}

/* A socket's counts, closed: kept under (address, generation) for the probe's next read. */
static __always_inline void sock_bytes_retire(u64 sk, struct sock_bytes *live)
{
	if (!live->sent && !live->received)
		return;
	struct sock_gen_key key = {.sk = sk, .sk_gen = live->sk_gen};
	struct sock_bytes final = *live;
	final.closed = 1;
	if (sock_bytes_closed.update(&key, &final) < 0)
		sock_overflow(1);
}

/* Established (either way): a new generation at this address, from zero. */
static __always_inline void sock_bytes_start(u64 sk, u64 gen)
{
	struct sock_bytes *old = sock_bytes.lookup(&sk);
	if (old)
		sock_bytes_retire(sk, old); /* a socket whose close was not seen */
	struct sock_bytes fresh = {.sk_gen = gen, .last_ts = gen};
	if (sock_bytes.update(&sk, &fresh) < 0)
		sock_overflow(0);
}

static __always_inline void sock_bytes_end(u64 sk)
{
	struct sock_bytes *live = sock_bytes.lookup(&sk);
	if (!live)
		return;
	sock_bytes_retire(sk, live);
	sock_bytes.delete(&sk);
}

#if HAVE_SOCK_LENGTH
/* Only TCP over IPv4/IPv6 is counted, in place: a lookup and an atomic add per call. A socket
 * established before the probe started gets an entry at its first send (generation 0). */
static __always_inline int sock_bytes_add(u64 sk, u16 family, u16 protocol, int ret, int sending)
{
	if (ret <= 0 || protocol != IPPROTO_TCP_ || (family != AF_INET_ && family != AF_INET6_))
		return 0;
	struct sock_bytes *count = sock_bytes.lookup(&sk);
	if (!count) {
		struct sock_bytes fresh = {};
		sock_bytes.insert(&sk, &fresh); /* fails harmlessly when another CPU made it first */
		count = sock_bytes.lookup(&sk);
		if (!count) {
			sock_overflow(0);
			return 0;
		}
	}
	if (sending)
		__sync_fetch_and_add(&count->sent, (u64)ret);
	else
		__sync_fetch_and_add(&count->received, (u64)ret);
	count->last_ts = bpf_ktime_get_boot_ns();
	count->tgid = bpf_get_current_pid_tgid() >> 32;
	return 0;
}

TRACEPOINT_PROBE(sock, sock_send_length)
{
	return sock_bytes_add((u64)args->sk, args->family, args->protocol, args->ret, 1);
}

TRACEPOINT_PROBE(sock, sock_recv_length)
{
	if (args->flags & MSG_PEEK_) /* a peek reads nothing off the socket */
		return 0;
	return sock_bytes_add((u64)args->sk, args->family, args->protocol, args->ret, 0);
}
#endif

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

/* fd -> struct file -> struct socket (file->private_data) -> struct sock, in the current task.
 * Called only on the fd accept() has just returned, which is a socket. */
static __always_inline u64 sock_of_fd(s32 fd)
{
	const void *file = fd_to_file(fd);
	const void *socket = (const void *)read_kptr(file, OFF_FILE_PRIVATE_DATA);
	return read_kptr(socket, OFF_SOCKET_SK);
}

/* The accepted socket's own addresses: the service (local) and the peer. */
static __always_inline void read_sock_ends(u64 sk, struct accept_rec *rec)
{
	const char *base = (const char *)sk;
	u16 family = 0;
	bpf_probe_read_kernel(&family, sizeof(family), base + OFF_SK_FAMILY);
	if (family != AF_INET_ && family != AF_INET6_)
		return;
	rec->sk_family = family;
	bpf_probe_read_kernel(&rec->local_port, sizeof(rec->local_port), base + OFF_SK_NUM); /* host order */
	u16 dport = 0;
	bpf_probe_read_kernel(&dport, sizeof(dport), base + OFF_SK_DPORT);
	rec->peer_port = (dport >> 8) | (dport << 8); /* network order */
	if (family == AF_INET6_) {
		bpf_probe_read_kernel(rec->local_addr, 16, base + OFF_SK_V6_RCV_SADDR);
		bpf_probe_read_kernel(rec->peer_addr, 16, base + OFF_SK_V6_DADDR);
	} else {
		bpf_probe_read_kernel(rec->local_addr, 4, base + OFF_SK_RCV_SADDR);
		bpf_probe_read_kernel(rec->peer_addr, 4, base + OFF_SK_DADDR);
	}
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
	rec->sk = sock_of_fd(ret);
	rec->sk_gen = 0;
	rec->sk_family = 0;
	rec->local_port = 0;
	rec->peer_port = 0;
	rec->_pad = 0;
	__builtin_memset(rec->local_addr, 0, 16);
	__builtin_memset(rec->peer_addr, 0, 16);
	if (rec->sk) {
		u64 sk = rec->sk;
		struct sock_bytes *count = sock_bytes.lookup(&sk);
		if (count)
			rec->sk_gen = count->sk_gen;
		read_sock_ends(sk, rec);
	}
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
	u64 gen = 0;
	if (args->newstate == TCP_ESTABLISHED_) {
		gen = bpf_ktime_get_boot_ns();
		sock_bytes_start(sk, gen);
	} else if (args->newstate == TCP_CLOSE_) {
		sock_bytes_end(sk);
	}
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
	rec->sk = sk;
	rec->sk_gen = gen;
	events.ringbuf_submit(rec, RB_FLAGS);
	return 0;
}
