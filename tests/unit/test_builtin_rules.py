"""Each built-in rule fires on its positive case and stays silent on its near misses, through
the whole aggregator (classifiers, tunnel taint, engine) on constructed events; and a rules
reload between the steps of the ROME sequence does not lose it.

Frames made by hand carry no routing verdict, so the aggregator judges by address range:
198.51.100.0/24 and 203.0.113.0/24 leave the host, 10.0.0.0/8 is the local network."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from sensor import events as ev
from sensor.aggregator.aggregator import Aggregator
from sensor.aggregator.detector import Detector
from sensor.rules.loader import BUILTIN, load_rules
from sensor.rules.model import RuleSet

SEC = 1_000_000_000


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


def raised(aggregator: Aggregator, events: Iterable[ev.Event]) -> list[str]:
    return [alert.rule_id for event in events for alert in aggregator.handle(event).alerts]


def alerts(events: Iterable[ev.Event]) -> list[str]:
    return raised(Aggregator(rules=load_rules([])), events)


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


def test_training_compute_then_a_tunnel_from_another_tree_is_not_the_sequence() -> None:
    host = agent_tree()
    host.spawn(1, 200, "/usr/bin/python3", "train.py")  # a scheduler's job, outside the agent's tree
    host.gpu_compute(200)
    host.spawn(101, 102, *REVERSE)
    assert alerts(host.events) == ["reverse-tunnel-opened"]


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


@pytest.mark.parametrize("port", ["22", "443"])
def test_tunnel_to_a_standard_port_is_silent(port: str) -> None:
    host = agent_tree()
    host.spawn(101, 102, "/usr/bin/ssh", "-p", port, "-L", "8080:db:5432", "u@198.51.100.1")
    assert alerts(host.events) == []


@pytest.mark.parametrize("port", [8080, 5432, 22])
def test_connection_to_a_port_no_pool_serves_on_is_silent(port: int) -> None:
    host = agent_tree()
    host.spawn(101, 102, "/usr/bin/python3", "client.py", "--notes", "stratum+tcp")  # no URL: no host, no port
    host.connect(102, "203.0.113.9", port)
    assert alerts(host.events) == []


@pytest.mark.parametrize("argv", [
    ("/usr/bin/python3", "xmrig.py"),  # a script named like a miner, run by an ordinary binary
    ("/opt/tools/xmrig-monitor", "--status"),
    ("/usr/bin/rig", "--donate", "--nicehash-mode"),  # flags that only resemble a miner's
])
def test_binaries_that_are_not_miners_are_silent(argv: tuple[str, ...]) -> None:
    host = agent_tree()
    host.spawn(101, 102, *argv)
    assert alerts(host.events) == []


def test_forward_tunnel_then_gpu_compute_is_silent() -> None:
    host = agent_tree()
    host.spawn(101, 102, "/usr/bin/ssh", "-fNL", "8080:db:5432", "root@198.51.100.1")
    host.spawn(101, 103, "/usr/bin/python3", "hash.py")
    host.gpu_compute(103)
    assert alerts(host.events) == []


def test_gpu_compute_before_the_reverse_tunnel_is_the_other_sequence() -> None:
    """Compute first, the tunnel after it: not the tunnel-then-compute sequence, but its mirror."""
    host = agent_tree()
    host.spawn(101, 103, "/usr/bin/python3", "hash.py")
    host.gpu_compute(103)
    host.spawn(101, 102, *REVERSE)
    assert alerts(host.events) == ["reverse-tunnel-opened", "gpu-compute-then-reverse-tunnel"]


def test_pool_traffic_in_another_tree_than_the_reverse_tunnel() -> None:
    host = agent_tree()
    host.spawn(101, 102, *REVERSE)
    host.spawn(1, 200, "/usr/bin/python3", "worker.py")  # started by init, not by the agent
    host.connect(200, "203.0.113.9", 4444)
    assert alerts(host.events) == ["reverse-tunnel-opened", "miner-pool-connection"]


def test_pool_traffic_before_the_reverse_tunnel() -> None:
    host = agent_tree()
    host.spawn(101, 103, "/usr/bin/python3", "worker.py")
    host.connect(103, "203.0.113.9", 4444)
    host.spawn(101, 102, *REVERSE)
    assert alerts(host.events) == ["miner-pool-connection", "reverse-tunnel-opened"]


def test_pool_traffic_after_gpu_compute_in_another_tree() -> None:
    host = agent_tree()
    host.spawn(1, 200, "/usr/bin/python3", "train.py")  # a training job, started by init
    host.gpu_compute(200)
    host.spawn(101, 103, "/usr/bin/python3", "worker.py")
    host.connect(103, "198.51.100.77", 14444)
    assert alerts(host.events) == ["miner-pool-connection"]


def test_pool_traffic_before_gpu_compute() -> None:
    host = agent_tree()
    host.spawn(101, 103, "/usr/bin/python3", "worker.py")
    host.connect(103, "198.51.100.77", 14444)
    host.gpu_compute(103)
    assert alerts(host.events) == ["miner-pool-connection"]


def test_many_connections_to_one_internal_destination_are_not_a_scan() -> None:
    host = agent_tree()
    host.spawn(101, 102, "/usr/bin/python3", "client.py")
    for _ in range(40):
        host.connect(102, "10.0.0.5", 5432)  # a connection pool
    assert alerts(host.events) == []


def test_many_destinations_outside_the_host_are_not_an_internal_scan() -> None:
    host = agent_tree()
    host.spawn(101, 102, "/usr/bin/python3", "crawler.py")
    for i in range(40):
        host.connect(102, f"203.0.113.{i + 1}", 443)
    assert alerts(host.events) == []


# -- a rules reload (SIGHUP) between a sequence's steps ------------------------------------------


def tunnel_opened() -> tuple[Host, Aggregator, Detector]:
    """The first half of the ROME chain: the agent's tree opened a reverse tunnel and started
    the process that will acquire GPU compute."""
    host = agent_tree()
    host.spawn(101, 102, *REVERSE)
    host.spawn(101, 103, "/usr/bin/python3", "hash.py")
    aggregator = Aggregator(rules=load_rules([]))
    assert aggregator.detector is not None
    assert raised(aggregator, host.events) == ["reverse-tunnel-opened"]
    # the gpu-compute, the small-long-compute and the miner-egress sequences
    assert aggregator.detector.engine.stats.partials == 3
    host.events.clear()
    return host, aggregator, aggregator.detector


def test_a_reload_between_the_tunnel_and_the_compute_keeps_the_sequence() -> None:
    host, aggregator, detector = tunnel_opened()
    detector.reload(load_rules([]))
    stats = detector.engine.stats
    assert (stats.partials, stats.partials_discarded) == (3, 0)
    host.gpu_compute(103)
    assert raised(aggregator, host.events) == ["reverse-tunnel-then-gpu-compute"]


def test_a_reload_that_changes_the_sequence_discards_it(tmp_path: Path) -> None:
    host, aggregator, detector = tunnel_opened()
    step = "        - fact: gpu_compute\n"
    text = BUILTIN.read_text()
    assert text.count(step) == 3
    # still true of this GPU's compute, but a different step: the open match is not carried over
    changed = text.replace(step, step + "          where: {architecture: Hopper}\n", 1)
    (tmp_path / "rules.yaml").write_text(changed)
    detector.reload(load_rules([tmp_path / "rules.yaml"], builtin=False))
    stats = detector.engine.stats
    assert (stats.partials, stats.partials_discarded) == (2, 1)  # the miner-egress and small-long sequences go on
    host.gpu_compute(103)
    assert raised(aggregator, host.events) == []


def test_a_reload_that_removes_the_sequence_discards_it() -> None:
    host, aggregator, detector = tunnel_opened()
    builtin = load_rules([])
    kept = [rule for rule in builtin.rules if rule.id != "reverse-tunnel-then-gpu-compute"]
    detector.reload(RuleSet(kept, builtin.lists, builtin.files))
    stats = detector.engine.stats
    assert (stats.partials, stats.partials_discarded) == (2, 1)
    host.gpu_compute(103)
    assert raised(aggregator, host.events) == []
