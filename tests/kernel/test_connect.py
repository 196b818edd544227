"""connect, accept and TCP establishment from the real kernel."""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import Iterator

import pytest

from sensor import events as ev
from tests.kernel.conftest import LiveProbe, run_python

CONNECT = """
import os, socket, sys
family = socket.AF_INET6 if ':' in sys.argv[1] else socket.AF_INET
s = socket.socket(family, socket.SOCK_STREAM)
if sys.argv[3] == 'nonblocking':
    s.setblocking(False)
try:
    s.connect((sys.argv[1], int(sys.argv[2])))
except OSError as e:
    pass
if sys.argv[3] == 'nonblocking':
    import select; select.select([], [s], [], 5)
print(os.getpid(), s.fileno(), s.getsockname()[1])
"""


@pytest.fixture
def listener(request: pytest.FixtureRequest) -> Iterator[socket.socket]:
    family, host = request.param
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.bind((host, 0))
    sock.listen(8)
    yield sock
    sock.close()


def connect_from_helper(host: str, port: int, mode: str = "blocking") -> tuple[int, int, int]:
    helper = run_python(CONNECT, host, str(port), mode)
    assert helper.returncode == 0, helper.stderr
    pid, fd, sport = (int(x) for x in helper.stdout.split())
    return pid, fd, sport


@pytest.mark.parametrize("listener", [(socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")],
                         indirect=True, ids=["ipv4", "ipv6"])
def test_connect_to_loopback_listener(live: LiveProbe, listener: socket.socket) -> None:
    host, port = listener.getsockname()[:2]
    pid, fd, sport = connect_from_helper(host, port)
    (conn,) = live.wait_for(lambda e: isinstance(e, ev.Connect) and e.tgid == pid)
    assert isinstance(conn, ev.Connect)
    assert (conn.family, conn.address, conn.port, conn.fd, conn.result) == (
        "inet6" if ":" in host else "inet", host, port, fd, 0)
    assert conn.netns == os.stat("/proc/self/ns/net").st_ino
    (tcp,) = live.wait_for(lambda e: isinstance(e, ev.TcpEstablished) and e.tgid == pid)
    assert isinstance(tcp, ev.TcpEstablished)
    assert (tcp.saddr, tcp.sport, tcp.daddr, tcp.dport) == (host, sport, host, port)
    assert tcp.netns == conn.netns


def test_connect_to_closed_port_is_refused(live: LiveProbe) -> None:
    probe_sock = socket.socket()
    probe_sock.bind(("127.0.0.1", 0))
    closed_port = probe_sock.getsockname()[1]
    probe_sock.close()
    pid, _, _ = connect_from_helper("127.0.0.1", closed_port)
    (conn,) = live.wait_for(lambda e: isinstance(e, ev.Connect) and e.tgid == pid)
    assert isinstance(conn, ev.Connect)
    assert (conn.address, conn.port, conn.result) == ("127.0.0.1", closed_port, -errno.ECONNREFUSED)
    assert [e for e in live.collector.events(ev.TcpEstablished) if e.tgid == pid] == []


@pytest.mark.parametrize("listener", [(socket.AF_INET, "127.0.0.1")], indirect=True)
def test_nonblocking_connect_is_in_progress_then_established(live: LiveProbe, listener: socket.socket) -> None:
    host, port = listener.getsockname()[:2]
    pid, _, sport = connect_from_helper(host, port, "nonblocking")
    (conn,) = live.wait_for(lambda e: isinstance(e, ev.Connect) and e.tgid == pid)
    assert isinstance(conn, ev.Connect)
    assert (conn.address, conn.port, conn.result) == (host, port, -errno.EINPROGRESS)
    (tcp,) = live.wait_for(lambda e: isinstance(e, ev.TcpEstablished) and e.tgid == pid)
    assert isinstance(tcp, ev.TcpEstablished)
    assert tcp.sport == sport and tcp.dport == port


ACCEPT = """
import os, socket, sys
srv = socket.socket(); srv.bind(('127.0.0.1', 0)); srv.listen(1)
print(os.getpid(), srv.getsockname()[1], flush=True)
conn, peer = srv.accept()
print(conn.fileno(), peer[1], srv.fileno(), flush=True)
"""


def test_accept_reports_the_peer_port_that_tcp_established_reports(live: LiveProbe) -> None:
    import subprocess

    server = subprocess.Popen(["/usr/bin/python3", "-c", ACCEPT], stdout=subprocess.PIPE, text=True)
    assert server.stdout is not None
    server_pid, port = (int(x) for x in server.stdout.readline().split())
    client_pid, _, sport = connect_from_helper("127.0.0.1", port)
    fd, peer_port, listen_fd = (int(x) for x in server.stdout.readline().split())
    server.wait(timeout=10)
    (acc,) = live.wait_for(lambda e: isinstance(e, ev.Accept) and e.tgid == server_pid)
    assert isinstance(acc, ev.Accept)
    assert (acc.fd, acc.listen_fd, acc.address, acc.port) == (fd, listen_fd, "127.0.0.1", sport)
    assert peer_port == sport
    (tcp,) = live.wait_for(lambda e: isinstance(e, ev.TcpEstablished) and e.tgid == client_pid)
    assert isinstance(tcp, ev.TcpEstablished)
    assert tcp.sport == acc.port


def test_unix_socket_connect_path(live: LiveProbe, tmp_path: object) -> None:
    import pathlib

    path = str(pathlib.Path(str(tmp_path)) / "sock")
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(path)
    srv.listen(1)
    code = "import os,socket,sys\ns=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); print(os.getpid())"
    helper = run_python(code, path)
    pid = int(helper.stdout)
    (conn,) = live.wait_for(lambda e: isinstance(e, ev.Connect) and e.tgid == pid)
    assert isinstance(conn, ev.Connect)
    assert (conn.family, conn.address, conn.result) == ("unix", path, 0)
    srv.close()
