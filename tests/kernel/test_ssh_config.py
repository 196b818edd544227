"""ssh's configuration files read by the real probe at exec time, as the ssh process sees them: a
-F file, and ~/.ssh/config of a home that only that process's passwd file names (a mount
namespace of its own binds another /etc/passwd). ssh stays up talking to a local listener that
never answers, so the test decides when it ends."""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from sensor import events as ev
from sensor.aggregator.facts import TunnelFact
from tests.kernel.conftest import LiveProbe, exec_of
from tests.waiting import wait_until


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A port on 127.0.0.1 that accepts and never says a word: ssh waits for its banner."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        yield server.getsockname()[1]


def ssh_exec(live: LiveProbe, child: subprocess.Popen[bytes]) -> ev.Exec:
    def is_ssh(e: ev.Event) -> bool:
        return exec_of(child.pid)(e) and isinstance(e, ev.Exec) and e.tool == "ssh"
    (event,) = live.wait_for(is_ssh, what="ssh's exec")
    assert isinstance(event, ev.Exec)
    return event


def tunnel_facts(live: LiveProbe, pid: int) -> list[TunnelFact]:
    return wait_until(lambda: [f for o in list(live.collector.observations) for f in o.facts
                               if isinstance(f, TunnelFact) and f.process.pid == pid], what="the tunnel fact")


def stop(child: subprocess.Popen[bytes]) -> None:
    child.kill()
    child.wait(timeout=10)


def test_a_forward_only_in_the_minus_f_file(live: LiveProbe, tmp_path: Path, silent_server: int) -> None:
    cfg = tmp_path / "tunnel.conf"
    cfg.write_text("Host gateway\n  HostName 127.0.0.1\n  RemoteForward 2222 localhost:22\n  User tunnel\n")
    child = subprocess.Popen(["ssh", "-F", str(cfg), "-N", "-o", "BatchMode=yes", "-o", "ConnectTimeout=30",
                              "-p", str(silent_server), "gateway"], stdin=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        event = ssh_exec(live, child)
        assert event.ssh_config == ["HostName 127.0.0.1", "User tunnel", "RemoteForward 2222 localhost:22"]
        [fact] = tunnel_facts(live, child.pid)
        assert (fact.reverse, fact.evidence, fact.remote_host, fact.remote_user, fact.remote_port, fact.forwards) == (
            True, "config", "127.0.0.1", "tunnel", silent_server, ("reverse 2222 -> localhost:22",))
    finally:
        stop(child)


def test_a_forward_only_in_the_users_config_as_its_own_passwd_names_it(
        live: LiveProbe, tmp_path: Path, silent_server: int) -> None:
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh/config").write_text("Host 127.0.0.1\n  RemoteForward 2223 localhost:22\n  Include more\n")
    (home / ".ssh/more").write_text("ProxyCommand none\nLocalForward 8080 localhost:80\n")
    passwd = tmp_path / "passwd"
    passwd.write_text(f"root:x:0:0:root:{home}:/bin/sh\n")
    # a mount namespace of its own, where root's home is `home`; this process's /etc/passwd differs
    script = f'mount --bind {passwd} /etc/passwd && exec ssh -N -o BatchMode=yes -o ConnectTimeout=30 ' \
             f'-p {silent_server} 127.0.0.1'
    # $HOME as a login sets it: `~` in Include is glob(3)'s, which takes $HOME
    child = subprocess.Popen(["unshare", "--mount", "sh", "-c", script], stdin=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, env={"PATH": "/usr/bin:/bin", "HOME": str(home)})
    try:
        event = ssh_exec(live, child)
        assert event.ssh_config == ["ProxyCommand none", "RemoteForward 2223 localhost:22",
                                    "LocalForward 8080 localhost:80"]
        [fact] = tunnel_facts(live, child.pid)
        assert (fact.evidence, fact.directions, fact.forwards) == (
            "config", ("local", "reverse"), ("reverse 2223 -> localhost:22", "local 8080 -> localhost:80"))
    finally:
        stop(child)


def test_a_forward_in_a_deleted_file_given_as_stdin(live: LiveProbe, tmp_path: Path, silent_server: int) -> None:
    """`ssh -F /dev/stdin < file`, the file deleted: no path names it any more, the process's fd 0
    does (ssh closes every other fd at once, so /dev/fd/3 cannot work)."""
    cfg = tmp_path / "gone.conf"
    cfg.write_text("RemoteForward 2224 localhost:22\n")
    with cfg.open("rb") as held:
        cfg.unlink()
        child = subprocess.Popen(["ssh", "-F", "/dev/stdin", "-N", "-o", "BatchMode=yes", "-o", "ConnectTimeout=30",
                                  "-p", str(silent_server), "127.0.0.1"], stdin=held, stderr=subprocess.DEVNULL)
    try:
        event = ssh_exec(live, child)
        assert event.ssh_config == ["RemoteForward 2224 localhost:22"]
        [fact] = tunnel_facts(live, child.pid)
        assert (fact.evidence, fact.forwards) == ("config", ("reverse 2224 -> localhost:22",))
    finally:
        stop(child)
