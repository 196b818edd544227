"""Incidents: alerts joined by what they share, within a window. One attack, one incident.

The ROME run raises five alerts (a reverse tunnel, tunnel then compute, a miner pool, tunnel
then pool, compute then pool) that an operator would otherwise join by eye. Each alert has join
keys (`join_keys`): the exec images it names, the reverse tunnels whose scope its processes are
in, the command each process belongs to, and the scope its rule joined its steps by. An alert
whose keys hit an open incident joins it; one that hits several merges them into the oldest.
An incident closes when nothing joined it for a window; it is then dropped from memory (its
versions stay in the journal), and a later alert with the same keys starts a new one.

Times: the window compares `Alert.ts` (boot-clock nanoseconds, the kernel's own order); the
wall-clock `first_seen` and `last_seen` come with them.
"""

from __future__ import annotations

import bisect
import uuid
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import PurePosixPath

from sensor.api.v1 import gpusentry_pb2 as pb
from sensor.outward import this_host
from sensor.rules.model import DEFAULT_LINEAGE_BOUNDARY
from sensor.where import place

# Alerts kept in an incident, oldest first (alerts_total counts them all; each alert is also
# journaled and sent on its own): every version of an incident carries them, to the journal, the
# API and each sink, so they are few enough that a burst of alerts costs little to render.
MAX_ALERTS = 20
MAX_LISTED = 100  # processes, and facts of each kind, kept per incident
MAX_KEYS = 1000  # join keys per incident: beyond, its new processes join nothing more
SUMMARY_CONNECTIONS = 3  # named in the summary; the rest are counted

# The scopes a rule joins its steps by that also join alerts into an incident. A lineage, a
# tunnel and a login session are one process tree, one tunnel, one login: the rule judged its
# steps related through it, and other alerts its rules relate the same way belong with them.
# A cgroup is a whole container or service (or, where nothing sets cgroups up, the root one
# that every process shares), a user is everything that user runs, the host is everything:
# keys that would join every alert there into one incident.
JOINING_SCOPES = frozenset({"lineage", "tunnel", "session"})

TUNNEL_FLAGS = {"reverse": "-R", "local": "-L", "dynamic": "-D"}  # ssh's own spelling of a forward
SSH_LIKE = frozenset({"ssh", "autossh"})
MINER_POOL_REASONS = frozenset({"pool-port", "stratum-url", "pool-host"})


# -- join keys -----------------------------------------------------------------------------


def join_keys(alert: pb.Alert) -> list[str]:
    """What an alert joins incidents by, most specific last, without repeats."""
    keys = []
    if alert.scope in JOINING_SCOPES and alert.scope_key:
        keys.append(scope_key(alert.scope, alert.scope_key))
    for involved in alert.processes:
        process = involved.process
        if process.exec_id:
            keys.append(f"exec:{process.exec_id}")
        keys += process.tunnel_scopes
        lineage = command_root(involved)
        if lineage is not None:
            keys.append(f"lineage:{process_key(lineage.exec_id)}")
    return list(dict.fromkeys(keys))


def scope_key(scope: str, key: str) -> str:
    """A rule's scope key as the detector spells it ("lineage:4242@..."), whether or not the
    alert repeats its scope in the key."""
    return key if key == scope or key.startswith(f"{scope}:") else f"{scope}:{key}"


def process_key(exec_id: str) -> str:
    """"pid:start_ns:execs" -> "pid@start_ns": the process, as the detector's lineage keys name it."""
    pid, _, rest = exec_id.partition(":")
    return f"{pid}@{rest.rsplit(':', 1)[0]}"


def command_root(involved: pb.AlertProcess) -> pb.ProcessRef | None:
    """The oldest ancestor of the process (or the process itself) below its session's root.

    Walking up from the process, the chain stops below init and below the processes that start
    sessions (sshd, login, cron, tmux, container shims: the rules' lineage boundary). What is
    left ends at the session's root: the login shell, the container's entrypoint, the agent's
    harness. Every process of the session descends from it, so as a key it would join every
    alert of the session (on a host where one shell starts all the work, every alert). One
    below it is one command the session ran (a tool call, a pipeline) and all it started: a
    tunnel and the compute and miner it led to share it; the session's other work does not.
    When the chain is cut short (its ancestors unknown, or more than an alert shows) the oldest
    one known is treated as the root: a key is then narrower than it could be, never broader.
    None when the process is the session's root itself."""
    process = involved.process
    chain = [pb.ProcessRef(exec_id=process.exec_id, pid=process.pid, exe=process.exe), *involved.ancestors]
    below: list[pb.ProcessRef] = []
    for member in chain:
        if member.pid == 1 or PurePosixPath(member.exe).name in DEFAULT_LINEAGE_BOUNDARY:
            break
        below.append(member)
    return below[-2] if len(below) >= 2 and below[-2].exec_id else None


# -- the book ------------------------------------------------------------------------------


@dataclass
class IncidentStats:
    opened: int = 0
    merged: int = 0  # merged into an older incident by an alert that joined both
    expired: int = 0  # closed: nothing joined them for the window
    evicted: int = 0  # closed early: more incidents were open than max_open


@dataclass
class _Incident:
    id: str
    seq: int  # creation order: breaks ties between incidents first seen at the same time
    first: pb.Alert  # the alerts that set first_seen and last_seen
    last: pb.Alert
    severity: pb.Severity = pb.SEVERITY_UNSPECIFIED
    rules: dict[str, tuple[int, int]] = field(default_factory=dict)  # rule id -> when it first fired
    keys: dict[str, None] = field(default_factory=dict)  # in the order they came
    alerts: list[pb.Alert] = field(default_factory=list)  # oldest first, at most MAX_ALERTS
    total: int = 0
    processes: dict[str, pb.AlertProcess] = field(default_factory=dict)  # by exec id, the latest seen
    facts: dict[str, dict[tuple[object, ...], pb.Fact]] = field(default_factory=dict)  # by list, by identity
    aliases: list[str] = field(default_factory=list)  # ids of the incidents merged into it
    absorbed: list[str] = field(default_factory=list)  # the same, not yet taken (take_absorbed)

    @property
    def last_ts(self) -> int:
        return self.last.ts


class IncidentBook:
    """Open incidents, by the keys that join alerts to them."""

    def __init__(self, window_s: float = 1800.0, host: pb.Host | None = None, max_open: int = 10_000) -> None:
        self.window_ns = int(window_s * 1_000_000_000)
        self.host = host if host is not None else this_host()
        self.max_open = max_open
        self.stats = IncidentStats()
        self._open: OrderedDict[str, _Incident] = OrderedDict()  # least recently joined first
        self._by_key: dict[str, str] = {}
        self._alias: dict[str, str] = {}  # a merged incident's id -> the open incident it went into
        self._now = 0  # the latest alert time seen
        self._seq = 0
        self.highest_severity = pb.SEVERITY_UNSPECIFIED  # of every alert added (analyze --fail-on)

    @property
    def open_count(self) -> int:
        return len(self._open)

    @property
    def total(self) -> int:
        """Incidents opened so far (merged ones included)."""
        return self.stats.opened

    def add(self, alert: pb.Alert) -> str:
        """The incident the alert joins (or starts); sets alert.incident_id. The incident keeps
        the alert itself, not a copy: a cursor set on it later shows in the next render."""
        self.expire(alert.ts)
        self.highest_severity = max(self.highest_severity, alert.severity)
        keys = join_keys(alert)
        hits = self._hits(keys, alert.ts)
        incident = min(hits, key=lambda i: (_when(i.first), i.seq)) if hits else self._start(alert)
        for other in hits:
            if other is not incident:
                self._merge(other, into=incident)
        self._join(incident, alert, keys)
        return incident.id

    def add_all(self, alerts: Sequence[pb.Alert]) -> list[str]:
        """Add alerts (one observation's); the incidents they are in once all joined, each once,
        in the order first touched. An incident one of them started and a later one merged
        away is not among them: every alert's incident_id names its incident as it ends up."""
        for alert in alerts:
            self.add(alert)
        touched = [self._alias.get(a.incident_id, a.incident_id) for a in alerts]
        return list(dict.fromkeys(t for t in touched if t in self._open))

    def take_absorbed(self, incident_id: str) -> list[str]:
        """The incidents merged into this one since last asked: their journaled versions are
        no longer anyone's latest."""
        incident = self._get(incident_id)
        absorbed, incident.absorbed = incident.absorbed, []
        return absorbed

    def render(self, incident_id: str) -> pb.Incident:
        """The incident's current version (cursor 0: the caller journals it). The id of an
        incident merged into another gives the one it went into."""
        return render(self._get(incident_id), self.host)

    def _get(self, incident_id: str) -> _Incident:
        incident = self._open.get(self._alias.get(incident_id, incident_id))
        if incident is None:
            raise KeyError(f"no open incident {incident_id}")
        return incident

    # -- joining ---------------------------------------------------------------------------

    def _hits(self, keys: list[str], ts: int) -> list[_Incident]:
        """The open incidents these keys reach that were last seen within the window of ts."""
        hits: dict[str, _Incident] = {}
        for key in keys:
            incident = self._open.get(self._by_key.get(key, ""))
            if incident is not None and ts - incident.last_ts <= self.window_ns:
                hits[incident.id] = incident
        return list(hits.values())

    def _start(self, alert: pb.Alert) -> _Incident:
        while len(self._open) >= self.max_open:
            self._close(next(iter(self._open.values())))
            self.stats.evicted += 1
        self._seq += 1
        self.stats.opened += 1
        incident = _Incident(str(uuid.uuid4()), self._seq, first=alert, last=alert)
        self._open[incident.id] = incident
        return incident

    def _join(self, incident: _Incident, alert: pb.Alert, keys: list[str]) -> None:
        alert.incident_id = incident.id
        incident.first = min(incident.first, alert, key=_when)
        incident.last = max(incident.last, alert, key=_when)
        incident.severity = max(incident.severity, alert.severity)
        incident.rules.setdefault(alert.rule_id, _when(alert))
        incident.total += 1
        if len(incident.alerts) < MAX_ALERTS or _when(alert) < _when(incident.alerts[-1]):
            bisect.insort(incident.alerts, alert, key=_when)
            del incident.alerts[MAX_ALERTS:]
        for involved in alert.processes:
            _keep_process(incident.processes, involved)
        for step in alert.steps:
            if step.HasField("detail"):
                _keep_fact(incident.facts, step.detail)
        self._index(incident, keys)
        self._open.move_to_end(incident.id)

    def _index(self, incident: _Incident, keys: Iterable[str]) -> None:
        for key in keys:
            if key not in incident.keys and len(incident.keys) >= MAX_KEYS:
                continue
            incident.keys[key] = None
            self._by_key[key] = incident.id

    def _merge(self, other: _Incident, into: _Incident) -> None:
        del self._open[other.id]
        self.stats.merged += 1
        into.first = min(into.first, other.first, key=_when)
        into.last = max(into.last, other.last, key=_when)
        into.severity = max(into.severity, other.severity)
        rules = dict(into.rules)
        for rule, when in other.rules.items():
            rules[rule] = min(when, rules.get(rule, when))
        into.rules = dict(sorted(rules.items(), key=lambda item: item[1]))  # stable: ties keep the older's order
        into.alerts = sorted([*into.alerts, *other.alerts], key=_when)[:MAX_ALERTS]
        into.total += other.total
        for alert in other.alerts:
            alert.incident_id = into.id
        for involved in other.processes.values():
            _keep_process(into.processes, involved)
        for facts in other.facts.values():
            for fact in facts.values():
                _keep_fact(into.facts, fact)
        self._index(into, other.keys)
        for key in other.keys:  # those past into's MAX_KEYS
            if self._by_key.get(key) == other.id:
                del self._by_key[key]
        merged = [other.id, *other.aliases]
        into.aliases += merged
        into.absorbed += [other.id, *other.absorbed]
        for alias in merged:
            self._alias[alias] = into.id

    # -- closing ---------------------------------------------------------------------------

    def expire(self, ts: int) -> None:
        """Close the incidents last seen more than a window before `ts` (boot-clock ns), or
        before the latest alert if that is later. Each alert calls it; a caller with a clock
        (the aggregator's tick) may too, to let quiet incidents go without waiting for one.

        The order is that of the last join, which is the order of last_ts unless alerts come
        out of order; one that is out of place closes a little late, and _hits still checks
        the window."""
        self._now = max(self._now, ts)
        while self._open:
            oldest = next(iter(self._open.values()))
            if self._now - oldest.last_ts <= self.window_ns:
                break
            self._close(oldest)
            self.stats.expired += 1

    def _close(self, incident: _Incident) -> None:
        del self._open[incident.id]
        for key in incident.keys:
            if self._by_key.get(key) == incident.id:
                del self._by_key[key]
        for alias in incident.aliases:
            self._alias.pop(alias, None)


def _when(alert: pb.Alert) -> tuple[int, int]:
    """An alert's place in time: boot-clock ns first, wall clock for alerts that lack them."""
    return alert.ts, alert.time.ToNanoseconds()


def _keep_process(processes: dict[str, pb.AlertProcess], involved: pb.AlertProcess) -> None:
    """The latest description of each process (it may have gained a tunnel scope since)."""
    exec_id = involved.process.exec_id
    if exec_id in processes or len(processes) < MAX_LISTED:
        processes[exec_id] = involved


# -- facts ---------------------------------------------------------------------------------


def fact_list(fact: pb.Fact) -> str | None:
    """The incident's list a step's fact belongs in, if any: tunnels, gpu_compute, connections."""
    if fact.kind == pb.FACT_KIND_TUNNEL:
        return "tunnels"
    if fact.kind == pb.FACT_KIND_GPU_COMPUTE:
        return "gpu_compute"
    if fact.kind == pb.FACT_KIND_EGRESS:
        return "connections"
    if fact.kind == pb.FACT_KIND_CONNECT and fact.connect.destination == "egress":
        return "connections"
    if fact.kind == pb.FACT_KIND_MINER and fact.miner.reason in MINER_POOL_REASONS:
        return "connections"
    return None


def fact_identity(fact: pb.Fact) -> tuple[object, ...]:
    """What makes two facts the same for an incident: what they say, not when.

    Several alerts match the same fact (the tunnel is a step of three ROME rules), and a
    process that allocates compute twice on one GPU, or retries a connection, did one thing."""
    who = (fact.kind, fact.process.exec_id)
    if fact.kind == pb.FACT_KIND_GPU_COMPUTE:
        return (*who, fact.gpu_compute.device_id, fact.gpu_compute.class_id)
    if fact.kind == pb.FACT_KIND_CONNECT:
        return (*who, fact.connect.address, fact.connect.port)
    if fact.kind == pb.FACT_KIND_EGRESS:
        return (*who, fact.egress.address, fact.egress.port)
    if fact.kind == pb.FACT_KIND_MINER:
        return (*who, fact.miner.address, fact.miner.port, fact.miner.reason, fact.miner.detail)
    return (*who, fact.SerializeToString(deterministic=True))


def _keep_fact(facts: dict[str, dict[tuple[object, ...], pb.Fact]], fact: pb.Fact) -> None:
    name = fact_list(fact)
    if name is None:
        return
    kept = facts.setdefault(name, {})
    identity = fact_identity(fact)
    if identity not in kept and len(kept) < MAX_LISTED:
        kept[identity] = fact


# -- rendering -----------------------------------------------------------------------------


def render(incident: _Incident, host: pb.Host) -> pb.Incident:
    out = pb.Incident(
        id=incident.id, first_seen=incident.first.time, last_seen=incident.last.time, severity=incident.severity,
        rule_ids=list(incident.rules), scope_keys=list(incident.keys), alerts=incident.alerts,
        alerts_total=incident.total, processes=list(incident.processes.values()),
        tunnels=list(incident.facts.get("tunnels", {}).values()),
        gpu_compute=list(incident.facts.get("gpu_compute", {}).values()),
        connections=list(incident.facts.get("connections", {}).values()),
        first_ts=incident.first.ts, last_ts=incident.last.ts, host=host)
    out.summary = summary(out)
    return out


def summary(incident: pb.Incident) -> str:
    """One paragraph: what happened, in order, then how many alerts said so.

    e.g. "`ssh -R 2222:localhost:22 tunnel@203.0.113.5` from pid 4242 (lineage of bash 4200)
    followed by GPU compute on GPU 0 (Hopper) and a connection to 203.0.113.10:3333 (miner
    pool); 5 alerts from 5 rules, highest critical." """
    tunnel = _tunnel_clause(incident)
    compute = _compute_clause(incident.gpu_compute, lead=tunnel is None)
    connections = _connection_clause(incident.connections, lead=tunnel is None and compute is None)
    clauses = [c for c in (tunnel, compute, connections) if c is not None] or [_alert_clause(incident)]
    story = clauses[0] + (" followed by " + " and ".join(clauses[1:]) if len(clauses) > 1 else "")
    places = list(dict.fromkeys(where for p in incident.processes if (where := place(p.process))))
    if places:
        story += f", in {'; '.join(places[:3])}" + (f" and {len(places) - 3} more" if len(places) > 3 else "")
    total, rules = incident.alerts_total, len(incident.rule_ids)
    severity = str(pb.Severity.Name(incident.severity)).removeprefix("SEVERITY_").lower()
    return (f"{story[:1].upper()}{story[1:]}; {total} alert{_s(total)} from {rules} rule{_s(rules)}, "
            f"highest {severity}.")


def _tunnel_clause(incident: pb.Incident) -> str | None:
    if not incident.tunnels:
        return None
    first = incident.tunnels[0]
    clause = f"{tunnel_command(first.tunnel)} from pid {first.process.pid}"
    involved = next((p for p in incident.processes if p.process.exec_id == first.process.exec_id), None)
    root = command_root(involved) if involved is not None else None
    if root is not None and root.exec_id != first.process.exec_id:
        clause += f" (lineage of {PurePosixPath(root.exe).name} {root.pid})"
    more = len(incident.tunnels) - 1
    return clause + (f" and {more} more tunnel{_s(more)}" if more else "")


def tunnel_command(tunnel: pb.Tunnel) -> str:
    """An ssh tunnel as the command that says it plainly (`ssh -R 9000:localhost:22 root@host`,
    whatever flags it was given as, or ssh's configuration files: then it says so), another tool's
    in words."""
    if tunnel.tool not in SSH_LIKE:
        return f"{tunnel.tool} tunnel ({'/'.join(tunnel.directions)}) to {tunnel.remote_host or '?'}"
    words = [tunnel.tool]
    for forward in tunnel.forwards:  # "reverse 9000 -> localhost:22"
        direction, _, spec = forward.partition(" ")
        listen, _, target = spec.partition(" -> ")
        words += [TUNNEL_FLAGS.get(direction, direction), f"{listen}:{target}" if target else listen]
    if tunnel.remote_port not in (0, 22):
        words += ["-p", str(tunnel.remote_port)]
    if list(tunnel.via) == ["ProxyCommand"]:
        words += ["-o", "ProxyCommand=..."]
    elif tunnel.via:
        words += ["-J", ",".join(tunnel.via)]
    words.append(f"{tunnel.remote_user}@{tunnel.remote_host}" if tunnel.remote_user else tunnel.remote_host or "?")
    said = f"`{' '.join(words)}`"
    return said + " (forwards from ssh's config files)" if tunnel.evidence == "config" else said


def _compute_clause(facts: Sequence[pb.Fact], lead: bool) -> str | None:
    if not facts:
        return None
    devices = list(dict.fromkeys(str(f.gpu_compute.device_id) for f in facts if f.gpu_compute.device_id >= 0))
    architectures = list(dict.fromkeys(f.gpu_compute.architecture for f in facts if f.gpu_compute.architecture))
    clause = "GPU compute"
    if devices:
        clause += f" on GPU{_s(len(devices))} {', '.join(devices)}"
    if architectures:
        clause += f" ({', '.join(architectures)})"
    return clause + (f" by pid {facts[0].process.pid}" if lead else "")


def _connection_clause(facts: Sequence[pb.Fact], lead: bool) -> str | None:
    destinations: dict[str, str] = {}  # "address:port" -> what it is; a miner pool says more than egress
    for fact in facts:
        where, what = _destination(fact)
        if destinations.get(where) != "miner pool":
            destinations[where] = what
    if not destinations:
        return None
    named = [f"{where} ({what})" for where, what in destinations.items()]
    more = len(named) - SUMMARY_CONNECTIONS
    shown = named[:SUMMARY_CONNECTIONS] + ([f"{more} more"] if more > 0 else [])
    listed = shown[0] if len(shown) == 1 else f"{', '.join(shown[:-1])} and {shown[-1]}"
    clause = f"a connection to {listed}" if len(named) == 1 else f"connections to {listed}"
    return clause + (f" by pid {facts[0].process.pid}" if lead else "")


def _destination(fact: pb.Fact) -> tuple[str, str]:
    if fact.kind == pb.FACT_KIND_MINER:
        miner = fact.miner
        return (f"{miner.address}:{miner.port}" if miner.address else miner.detail), "miner pool"
    detail = fact.egress if fact.kind == pb.FACT_KIND_EGRESS else fact.connect
    return f"{detail.address}:{detail.port}", "egress"


def _alert_clause(incident: pb.Incident) -> str:
    """For incidents with no tunnel, compute or connection: what the first alert said, and of whom."""
    if not incident.alerts:
        return "an incident"
    first = incident.alerts[0]
    title: str = first.title
    pids = [str(p.process.pid) for p in first.processes]
    return title + (f" (pid{_s(len(pids))} {', '.join(pids)})" if pids else "")


def _s(count: int) -> str:
    return "" if count == 1 else "s"
