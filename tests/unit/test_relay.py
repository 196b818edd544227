"""Tunnels by behaviour (sensor/aggregator/relay.py) through the whole aggregator, on constructed
events: TCP connections with socket names, accepts, and the per-socket byte counts the probe reads
every second. Frames made by hand carry no routing verdict: 198.51.100.0/24 leaves the host,
127.0.0.0/8 is loopback."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from sensor import events as ev
from sensor.aggregator import relay
from sensor.aggregator.aggregator import Aggregator
from sensor.aggregator.facts import GpuCompute, TunnelFact
from sensor.rules.loader import load_rules
from tests.unit.test_builtin_rules import SEC, Host

OUTSIDE, SSHD = "198.51.100.1", ("127.0.0.1", 22)


@dataclass
class Wire:
    """A Host whose processes also open TCP connections and move bytes on them."""

    host: Host = field(default_factory=Host)
    totals: dict[int, list[int]] = field(default_factory=dict)  # sock -> [tgid, sent, received]
    next_sock: int = 1000
    next_port: int = 40000

    def dial(self, pid: int, address: str, port: int) -> tuple[int, int]:
        """An outbound connection: its socket name and source port."""
        self.next_sock += 1
        self.next_port += 1
        self.host.events.append(ev.TcpEstablished(self.host.tick(0.01), pid, pid, "inet", "127.0.0.1" if address
                                                  .startswith("127.") else "203.0.113.1", self.next_port, address,
                                                  port, sock=self.next_sock))
        self.totals[self.next_sock] = [pid, 0, 0]
        return self.next_sock, self.next_port

    def accept(self, pid: int, peer: str, peer_port: int, local: tuple[str, int]) -> int:
        self.next_sock += 1
        self.host.events.append(ev.Accept(self.host.tick(0.01), pid, pid, 5, 3, "inet", peer, peer_port,
                                          sock=self.next_sock, local_address=local[0], local_port=local[1]))
        self.totals[self.next_sock] = [pid, 0, 0]
        return self.next_sock

    def move(self, sock: int, sent: int = 0, received: int = 0) -> None:
        self.totals[sock][1] += sent
        self.totals[sock][2] += received

    def read(self, *socks: int, closed: Iterable[int] = ()) -> None:
        """The probe's timer: a SockBytes frame with these sockets' totals."""
        rows = [[s, self.totals[s][0], self.totals[s][1], self.totals[s][2], self.host.ts, int(s in closed)]
                for s in socks]
        self.host.events.append(ev.SockBytes(self.host.tick(1), 999, 999, rows))


def run(wire: Wire) -> tuple[Aggregator, list[TunnelFact], list[tuple[str, str]]]:
    aggregator = Aggregator(rules=load_rules([]))
    facts: list[TunnelFact] = []
    raised: list[tuple[str, str]] = []
    for event in wire.host.events:
        seen = aggregator.handle(event)
        facts += [f for f in seen.facts if isinstance(f, TunnelFact)]
        raised += [(a.rule_id, a.severity) for a in seen.alerts]
    return aggregator, facts, raised


def relay_session(wire: Wire, pid: int, outward: int, size: int = 6000) -> int:
    """`pid` dials the local sshd and relays `size` bytes each way between it and `outward`."""
    local, _ = wire.dial(pid, *SSHD)
    wire.move(outward, received=size + 500, sent=size + 400)  # framing adds, never takes away
    wire.move(local, sent=size, received=size)
    return local


def reverse_relay(pid: int = 100) -> tuple[Wire, int, int]:
    wire = Wire()
    wire.host.spawn(1, pid, "/usr/bin/python3", "/tmp/notes.py")  # any name
    outward, _ = wire.dial(pid, OUTSIDE, 22)
    wire.move(outward, sent=3000, received=3000)  # the tunnel's own handshake
    wire.read(outward)
    local = relay_session(wire, pid, outward)
    wire.read(outward, local)
    return wire, outward, local


def test_a_process_relaying_between_an_egress_connection_and_local_sshd_is_a_reverse_tunnel() -> None:
    wire, _, _ = reverse_relay()
    aggregator, facts, raised = run(wire)
    (fact,) = facts
    assert (fact.evidence, fact.reverse, fact.directions, fact.remote_host, fact.remote_port, fact.tool) == (
        "behaviour", True, ("reverse",), OUTSIDE, 22, "python3")
    assert fact.local_services == ("127.0.0.1:22",) and fact.relayed_bytes == 12000
    assert fact.forwards == (f"reverse {OUTSIDE}:22 <-> 127.0.0.1:22",)
    assert ("reverse-tunnel-opened", "high") in raised
    proc = aggregator.table.by_pid(100)
    assert proc is not None and proc.tunnel_scopes == {fact.scope}


def test_the_handshake_before_the_first_local_connection_is_not_counted_as_relayed() -> None:
    """The outward connection carried 3000 bytes each way before; had they counted, a local side
    moving only 1/4 of the outward bytes would still be judged."""
    wire = Wire()
    wire.host.spawn(1, 100, "/usr/bin/python3", "/tmp/notes.py")
    outward, _ = wire.dial(100, OUTSIDE, 22)
    wire.move(outward, sent=90_000, received=90_000)
    wire.read(outward)
    local, _ = wire.dial(100, *SSHD)
    wire.move(local, sent=2000, received=2000)
    wire.move(outward, sent=2100, received=2100)
    wire.read(outward, local)
    assert run(wire)[1] != []


def test_below_the_floor_or_out_of_ratio_nothing_is_said() -> None:
    for local_bytes, outward_bytes in ((relay.FLOOR_BYTES - 1, relay.FLOOR_BYTES - 1), (4000, 100),
                                       (4000, 4 * 4000 + relay.SLACK_BYTES + 1)):
        wire = Wire()
        wire.host.spawn(1, 100, "/usr/bin/python3", "/tmp/notes.py")
        outward, _ = wire.dial(100, OUTSIDE, 443)
        wire.read(outward)
        local, _ = wire.dial(100, *SSHD)
        wire.move(local, sent=local_bytes, received=local_bytes)
        wire.move(outward, sent=outward_bytes, received=outward_bytes)
        wire.read(outward, local)
        assert run(wire)[1] == [], (local_bytes, outward_bytes)


def test_a_relay_judged_over_several_reads_is_reported_once() -> None:
    wire, outward, local = reverse_relay()
    for _ in range(3):
        wire.move(local, sent=5000, received=5000)
        wire.move(outward, sent=5200, received=5200)
        wire.read(outward, local)
    assert len(run(wire)[1]) == 1


def test_bytes_relayed_by_a_forked_child_count_for_the_process_that_execd() -> None:
    """Identity follows fork: a relay that forks per request (or daemonises) is one relay."""
    wire = Wire()
    wire.host.spawn(1, 100, "/usr/bin/python3", "/tmp/notes.py")
    outward, _ = wire.dial(100, OUTSIDE, 22)
    wire.read(outward)
    wire.host.fork(100, 101)  # no exec
    local = relay_session(wire, 101, outward)
    wire.read(outward, local)
    aggregator, facts, _ = run(wire)
    (fact,) = facts
    assert fact.process.pid == 100
    child = aggregator.table.by_pid(101)
    assert child is not None and fact.scope in child.tunnel_scopes


def test_children_that_exec_are_not_their_parents_relay() -> None:
    """A CI runner long-polls its server; its test processes talk to localhost: no relay."""
    wire = Wire()
    wire.host.spawn(1, 100, "/usr/bin/runner", "run")
    poll, _ = wire.dial(100, OUTSIDE, 443)
    wire.read(poll)
    wire.host.spawn(100, 101, "/usr/bin/pytest", "-q")
    local, _ = wire.dial(101, *SSHD)
    wire.move(local, sent=8000, received=8000)
    wire.move(poll, sent=8300, received=8300)  # the runner streams the test's log: as many bytes
    wire.read(poll, local)
    assert run(wire)[1] == []


def test_local_connections_opened_before_the_outward_one_are_not_a_reverse_tunnel() -> None:
    wire = Wire()
    wire.host.spawn(1, 100, "/usr/bin/python3", "/tmp/notes.py")
    local, _ = wire.dial(100, *SSHD)
    outward, _ = wire.dial(100, OUTSIDE, 22)
    wire.move(local, sent=6000, received=6000)
    wire.move(outward, sent=6000, received=6000)
    wire.read(outward, local)
    assert run(wire)[1] == []


def test_accepting_local_clients_and_relaying_them_out_is_a_forward_tunnel_at_medium() -> None:
    wire = Wire()
    wire.host.spawn(1, 100, "/usr/local/bin/pf", "svc/db", "5432")
    client = wire.accept(100, "127.0.0.1", 51000, ("127.0.0.1", 5432))
    outward, _ = wire.dial(100, OUTSIDE, 443)
    wire.move(client, sent=9000, received=3000)
    wire.move(outward, sent=3300, received=9400)
    wire.read(client, outward)
    _, facts, raised = run(wire)
    (fact,) = facts
    assert (fact.evidence, fact.reverse, fact.directions, fact.local_services) == (
        "behaviour", False, ("local",), ("127.0.0.1:5432",))
    assert ("forward-tunnel-by-behaviour", "medium") in raised
    assert [r for r in raised if r[1] in ("high", "critical")] == []


def test_a_web_server_with_a_database_connection_is_no_tunnel() -> None:
    """Clients from outside (not this host) and an outbound database connection, with bytes that
    would match: accepted remote clients are not a forward tunnel's."""
    wire = Wire()
    wire.host.spawn(1, 100, "/usr/bin/python3", "web.py")
    database, _ = wire.dial(100, OUTSIDE, 5432)
    client = wire.accept(100, "198.51.100.7", 50000, ("203.0.113.1", 8080))
    wire.move(client, sent=9000, received=3000)
    wire.move(database, sent=3000, received=9000)
    wire.read(client, database)
    assert run(wire)[1] == []


def compute_through_a_relay_found_late() -> Wire:
    """sshd (50) accepts the relay's (100) connection and forks a session (51, 52) that computes
    on the GPU, all before the relay's first byte count; then its counts show it relaying."""
    wire = Wire()
    host = wire.host
    host.spawn(1, 50, "/usr/sbin/sshd", "-D")
    host.spawn(1, 100, "/usr/bin/python3", "/tmp/notes.py")
    outward, _ = wire.dial(100, OUTSIDE, 22)
    wire.read(outward)
    local, sport = wire.dial(100, *SSHD)
    wire.accept(50, "127.0.0.1", sport, SSHD)
    host.spawn(50, 51, "/usr/lib/openssh/sshd-session")
    host.spawn(51, 52, "/bin/bash")
    host.gpu_compute(52)  # before the tunnel is known: no tunnel scope yet
    wire.move(local, sent=6000, received=6000)
    wire.move(outward, sent=6400, received=6500)
    wire.read(outward, local)
    return wire


def test_a_session_accepted_before_the_relay_was_found_gets_its_scope_with_its_descendants() -> None:
    """sshd accepted the relay's connection and forked the session before a byte was counted."""
    wire = compute_through_a_relay_found_late()
    host = wire.host
    host.spawn(52, 53, "/usr/bin/python3", "train.py")
    host.gpu_compute(53)
    aggregator, facts, raised = run(wire)
    (fact,) = facts
    for pid in (51, 52, 53):
        proc = aggregator.table.by_pid(pid)
        assert proc is not None and fact.scope in proc.tunnel_scopes, pid
    sshd = aggregator.table.by_pid(50)
    assert sshd is not None and not sshd.tunnel_scopes
    assert ("gpu-compute-in-tunnel-scope", "high") in raised
    assert ("reverse-tunnel-then-gpu-compute", "critical") in raised  # the compute after the tunnel fact
    assert aggregator.detector is not None and aggregator.detector.taint.stats.handed_over_late == 2


def test_compute_begun_before_the_relay_was_found_is_judged_again_in_its_scope() -> None:
    """The session's GPU compute came before the first byte count, and nothing computes after:
    once the relay is found, that compute is judged again (a gpu_compute fact of the moment) in
    the tunnel's scope, so both tunnel-then-compute rules fire, each once."""
    wire = compute_through_a_relay_found_late()
    host = wire.host
    aggregator = Aggregator(rules=load_rules([]))
    again: list[GpuCompute] = []
    raised: list[str] = []
    for event in host.events:
        seen = aggregator.handle(event)
        if isinstance(event, ev.SockBytes):
            again += [f for f in seen.facts if isinstance(f, GpuCompute)]
        raised += [a.rule_id for a in seen.alerts]
    (fact,) = again
    assert (fact.process.pid, fact.ts, fact.klass, fact.handle) == (52, host.events[-1].ts, 0xCBC0, 5)
    assert raised == ["reverse-tunnel-opened", "gpu-compute-in-tunnel-scope", "reverse-tunnel-then-gpu-compute"]


def test_a_session_accepted_after_the_relay_was_found_is_tainted_at_once() -> None:
    wire, _, _ = reverse_relay()
    wire.host.spawn(1, 50, "/usr/sbin/sshd", "-D")
    _, sport = wire.dial(100, *SSHD)
    wire.accept(50, "127.0.0.1", sport, SSHD)
    wire.host.spawn(50, 51, "/usr/lib/openssh/sshd-session")
    aggregator, facts, _ = run(wire)
    session = aggregator.table.by_pid(51)
    assert session is not None and session.tunnel_scopes == {facts[0].scope}


def test_an_exited_relay_is_forgotten_with_its_sockets() -> None:
    wire, outward, local = reverse_relay()
    aggregator, _, _ = run(wire)
    detector = aggregator.detector
    assert detector is not None
    proc = aggregator.table.by_pid(100)
    assert proc is not None
    detector.relay.forget(proc.key)
    assert not detector.relay.is_candidate(proc.key)
    rows = ev.SockBytes(wire.host.ts + SEC, 999, 999, [[outward, 100, 1, 1, 0, 1], [local, 100, 1, 1, 0, 1]])
    aggregator.handle(rows)
    # kept a while for a record that may still come, then counted as never matched
    later = wire.host.ts + SEC + relay.EARLY_TTL_NS + 1
    aggregator.handle(ev.SockBytes(later, 999, 999, []))
    assert (detector.relay.stats.unknown_rows, detector.relay.stats.early_rows) == (2, 0)


def test_counts_that_come_before_their_connections_record_are_matched_when_it_comes() -> None:
    """The probe reads the counts on a timer; the connect's record comes through a ring and may
    be later: the relay is found on the record."""
    wire = Wire()
    wire.host.spawn(1, 100, "/usr/bin/python3", "/tmp/notes.py")
    outward, _ = wire.dial(100, OUTSIDE, 22)
    wire.read(outward)
    local, _ = wire.dial(100, *SSHD)
    record = wire.host.events.pop()  # the local connection's record, held back
    wire.move(local, sent=6000, received=6000)
    wire.move(outward, sent=6300, received=6300)
    wire.read(outward, local)
    wire.host.events.append(record)
    aggregator, facts, raised = run(wire)
    (fact,) = facts
    assert fact.local_services == ("127.0.0.1:22",) and ("reverse-tunnel-opened", "high") in raised
    assert aggregator.detector is not None and aggregator.detector.relay.stats.early_rows == 1


def test_a_tunnel_to_a_public_tunnel_service_is_critical_and_a_lookalike_is_not() -> None:
    host = Host()
    host.spawn(1, 100, "/usr/bin/ssh", "-R", "80:localhost:22", "a.pinggy.io")
    host.spawn(1, 101, "/usr/bin/ssh", "-R", "80:localhost:22", "pinggy.io.example.com")
    aggregator = Aggregator(rules=load_rules([]))
    raised = {(a.rule_id, a.processes[0].pid) for e in host.events for a in aggregator.handle(e).alerts}
    assert ("tunnel-to-public-tunnel-service", 100) in raised
    assert ("tunnel-to-public-tunnel-service", 101) not in raised and ("reverse-tunnel-opened", 101) in raised
