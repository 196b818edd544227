"""Miner signals, scans, binary identity and tunnel taint, on constructed inputs."""

from __future__ import annotations

from sensor import events as ev
from sensor.aggregator.process_table import Process, ProcKey
from sensor.aggregator.taint import TunnelTaint
from sensor.classify.miner import MinerClassifier
from sensor.classify.scan import ScanDetector
from sensor.rules.loader import load_rules

SEC = 1_000_000_000


def miner() -> MinerClassifier:
    return MinerClassifier(load_rules([]).lists)


def test_miner_signals_from_a_command_line() -> None:
    signals = miner().on_exec("xmrig", ["./xmrig", "-o", "stratum+tcp://pool.supportxmr.com:3333", "--donate-level=1"])
    assert [(s.reason, s.detail, s.address, s.port) for s in signals] == [
        ("miner-binary", "xmrig", "", 0),
        ("stratum-url", "stratum+tcp://pool.supportxmr.com:3333", "pool.supportxmr.com", 3333),
        ("pool-host", "supportxmr.com", "", 0),
        ("miner-flag", "--donate-level", "", 0),
    ]


def test_renamed_miner_is_still_caught_by_its_url() -> None:
    signals = miner().on_exec("kworker", ["kworker", "-o", "STRATUM2+SSL://203.0.113.5:14433"])
    assert [(s.reason, s.address, s.port) for s in signals] == [("stratum-url", "203.0.113.5", 14433)]


def test_ordinary_commands_have_no_miner_signal() -> None:
    assert miner().on_exec("python3", ["python3", "train.py", "--epochs", "3", "--lr", "0.1"]) == []
    assert miner().on_connect("203.0.113.5", 443, "egress") == []


def test_pool_port_connection() -> None:
    (signal,) = miner().on_connect("203.0.113.5", 3333, "egress")
    assert (signal.reason, signal.detail, signal.address, signal.port) == ("pool-port", "3333", "203.0.113.5", 3333)


def test_scan_threshold_window_and_once_per_window() -> None:
    scan = ScanDetector(threshold=5, window_s=10)
    key = ProcKey(1, 1)
    results = [scan.on_connect(key, f"10.0.0.{i}", 22, "lan", i * SEC) for i in range(1, 8)]
    assert results == [None, None, None, None, 5, None, None]
    assert scan.on_connect(key, "127.0.0.1", 22, "loopback", 8 * SEC) is None  # loopback is not a scan
    assert scan.on_connect(key, "203.0.113.1", 22, "egress", 8 * SEC) is None
    # slow probing: the window slides, so 5 destinations over 50 s are not a scan
    slow = ProcKey(2, 2)
    assert [scan.on_connect(slow, f"10.0.1.{i}", 22, "lan", i * 11 * SEC) for i in range(6)] == [None] * 6


def process(pid: int, scopes: frozenset[str] = frozenset(), start: int = 0) -> Process:
    return Process(key=ProcKey(pid, start or pid), ppid=1, parent=None, tunnel_scopes=scopes)


def tcp(pid: int, sport: int, ts: int, daddr: str = "127.0.0.1") -> ev.TcpEstablished:
    return ev.TcpEstablished(ts, pid, pid, "inet", "127.0.0.1", sport, daddr, 22, 7)


def accept(pid: int, port: int, ts: int, address: str = "127.0.0.1") -> ev.Accept:
    return ev.Accept(ts, pid, pid, 5, 3, "inet6" if ":" in address else "inet", address, port, 7)


def test_taint_follows_the_tunnel_into_the_session_it_brings_in() -> None:
    taint = TunnelTaint()
    tunnel = process(100, frozenset({"tunnel:100"}))
    sshd = process(200)
    taint.on_tcp(tunnel, tcp(100, 40000, SEC), "loopback")
    assert taint.on_accept(sshd, accept(200, 40000, SEC + 1)) == frozenset({"tunnel:100"})
    session = process(201, start=SEC + 5)
    taint.on_fork(200, session)
    assert session.tunnel_scopes == frozenset({"tunnel:100"})
    next_session = process(202, start=SEC + 9)  # only the next child serves that connection
    taint.on_fork(200, next_session)
    assert next_session.tunnel_scopes == frozenset()
    assert (taint.stats.connections, taint.stats.matched, taint.stats.handed_over) == (1, 1, 1)


def test_taint_matches_when_the_accept_arrives_first_and_through_a_dual_stack_listener() -> None:
    taint = TunnelTaint()
    sshd = process(200)
    assert taint.on_accept(sshd, accept(200, 40001, SEC, address="::ffff:127.0.0.1")) is None
    taint.on_tcp(process(100, frozenset({"tunnel:100"})), tcp(100, 40001, SEC + 1), "loopback")
    child = process(201, start=SEC + 2)
    taint.on_fork(200, child)
    assert child.tunnel_scopes == frozenset({"tunnel:100"})


def test_untainted_connections_and_other_peers_carry_nothing() -> None:
    taint = TunnelTaint()
    taint.on_tcp(process(100), tcp(100, 40002, SEC), "loopback")  # not a tunnel
    taint.on_tcp(process(101, frozenset({"tunnel:101"})), tcp(101, 40003, SEC, "203.0.113.4"), "egress")
    sshd = process(200)
    assert taint.on_accept(sshd, accept(200, 40002, SEC)) is None
    assert taint.on_accept(sshd, accept(200, 40003, SEC)) is None
    assert taint.stats.connections == 0


def test_pending_taint_expires() -> None:
    taint = TunnelTaint(ttl_ns=10 * SEC)
    taint.on_tcp(process(100, frozenset({"tunnel:100"})), tcp(100, 40004, SEC), "loopback")
    taint.expire(20 * SEC)
    assert taint.on_accept(process(200), accept(200, 40004, 21 * SEC)) is None
    assert taint.stats.expired == 1


def test_egress_policy_takes_the_probes_route_verdict() -> None:
    from sensor.classify.egress import Destination, EgressPolicy

    policy = EgressPolicy(allowlist=["203.0.113.0/24"])
    # the probe's verdict stands, whatever the address looks like: 198.51.100.7 on a direct link
    assert policy.judge("198.51.100.7", "lan", False) == policy.judge("198.51.100.7", "lan", False)
    verdict = policy.judge("198.51.100.7", "lan", False)
    assert (verdict.destination, verdict.allowed, verdict.by_range) == (Destination.LAN, False, False)
    assert policy.judge("10.1.2.3", "egress", True).by_range  # the probe could only guess, and said so
    assert policy.judge("203.0.113.5", "egress", False).allowed


def test_egress_without_a_verdict_is_judged_by_ranges_and_says_so() -> None:
    from sensor.classify.egress import Destination, EgressPolicy

    policy = EgressPolicy()
    assert [(v.destination, v.by_range) for v in (policy.judge(a, "", False) for a in (
        "10.1.2.3", "198.51.100.1", "::1", "/run/x.sock"))] == [
        (Destination.LAN, True), (Destination.EGRESS, True), (Destination.LOOPBACK, True), (Destination.NONE, True)]
    # a verdict this version does not know (a damaged or hand-made frame) is not trusted either
    assert (policy.judge("198.51.100.1", "sideways", False).destination,
            policy.judge("198.51.100.1", "sideways", False).by_range) == (Destination.EGRESS, True)
