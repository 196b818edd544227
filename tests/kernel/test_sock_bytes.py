"""Per-socket byte counts and the accepted socket's own addresses, from the real kernel."""

from __future__ import annotations

from sensor import events as ev
from tests.kernel.conftest import LiveProbe, run_python

# One process, both ends of a loopback TCP connection: accept(fd, NULL, NULL) through libc (Python's
# accept always asks for the address), exact byte counts each way, then both ends closed.
PAIR = """
import ctypes, os, socket
libc = ctypes.CDLL(None, use_errno=True)
srv = socket.socket(); srv.bind(('127.0.0.1', 0)); srv.listen(1)
cli = socket.create_connection(srv.getsockname())
fd = libc.accept(srv.fileno(), None, None)
assert fd >= 0, ctypes.get_errno()
conn = socket.socket(fileno=fd)
cli.sendall(b'x' * 12345)
got = 0
while got < 12345:
    got += len(conn.recv(65536))
conn.sendall(b'y' * 6789)
got = 0
while got < 6789:
    got += len(cli.recv(65536))
print(os.getpid(), cli.getsockname()[1], srv.getsockname()[1], fd)
cli.close(); conn.close(); srv.close()
"""


def last_rows(live: LiveProbe) -> dict[int, list[int]]:
    """Each socket's latest row, over every SockBytes frame so far."""
    rows: dict[int, list[int]] = {}
    for frame in live.collector.events(ev.SockBytes):
        assert isinstance(frame, ev.SockBytes)
        for row in frame.rows:
            rows[row[0]] = row
    return rows


def test_exact_bytes_each_way_and_the_peer_of_a_null_address_accept(live: LiveProbe) -> None:
    helper = run_python(PAIR)
    assert helper.returncode == 0, helper.stderr
    pid, client_port, service_port, fd = (int(x) for x in helper.stdout.split())

    (acc,) = live.wait_for(lambda e: isinstance(e, ev.Accept) and e.tgid == pid)
    assert isinstance(acc, ev.Accept)
    # the caller asked for no address: the peer comes from the socket
    assert (acc.fd, acc.family, acc.address, acc.port, acc.peer_from_socket) == (
        fd, "inet", "127.0.0.1", client_port, True)
    assert (acc.local_address, acc.local_port) == ("127.0.0.1", service_port)
    (tcp,) = live.wait_for(lambda e: isinstance(e, ev.TcpEstablished) and e.tgid == pid)
    assert isinstance(tcp, ev.TcpEstablished)
    assert tcp.sport == client_port and tcp.sock not in (0, acc.sock) and acc.sock != 0

    def both_closed() -> dict[int, list[int]]:
        rows = last_rows(live)
        return rows if all(s in rows and rows[s][5] == 1 for s in (tcp.sock, acc.sock)) else {}

    from tests.waiting import wait_until

    rows = wait_until(both_closed, timeout=10, what="both sockets' final counts")
    # [sock, tgid, sent, received, last_ts, closed]
    assert rows[tcp.sock][1:4] == [pid, 12345, 6789]
    assert rows[acc.sock][1:4] == [pid, 6789, 12345]
    assert rows[tcp.sock][4] >= tcp.ts


def test_an_accept_with_an_address_keeps_it_and_adds_the_service(live: LiveProbe) -> None:
    code = PAIR.replace("libc.accept(srv.fileno(), None, None)", "srv.accept()[0].detach()")
    helper = run_python(code)
    assert helper.returncode == 0, helper.stderr
    pid, client_port, service_port, _ = (int(x) for x in helper.stdout.split())
    (acc,) = live.wait_for(lambda e: isinstance(e, ev.Accept) and e.tgid == pid)
    assert isinstance(acc, ev.Accept)
    assert (acc.address, acc.port, acc.peer_from_socket) == ("127.0.0.1", client_port, False)
    assert (acc.local_address, acc.local_port) == ("127.0.0.1", service_port)


def test_without_the_socket_byte_tracepoints_the_programs_load_and_count_nothing(root: None) -> None:
    """Compiled as for a kernel before 6.3: every other program loads and attaches, the sock
    tracepoints are not attached, and the byte-count map stays empty through real traffic."""
    from sensor.probe import program

    config = program.ProbeConfig(ringbuf_pages=16)
    flags = [f for f in program.cflags(config, program.kernel_constants()) if not f.startswith("-DHAVE_SOCK_LENGTH")]
    bpf = program.compile_text(program.source_text(), [*flags, "-DHAVE_SOCK_LENGTH=0"])
    try:
        attached = {name.decode() if isinstance(name, bytes) else name for name in bpf.tracepoint_fds}
        assert "sock:inet_sock_set_state" in attached
        assert not {"sock:sock_send_length", "sock:sock_recv_length"} & attached
        helper = run_python(PAIR)
        assert helper.returncode == 0, helper.stderr
        assert [v for v in bpf[b"sock_bytes"].values() if v.sent or v.received] == []
    finally:
        bpf.cleanup()
