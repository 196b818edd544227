"""From events to facts to alerts: the classifiers, tunnel taint, and the rule engine.

The aggregator hands each event and its process here. Classifiers turn it into facts (exec,
connect, egress, tunnel, miner, internal scan, GPU open; GPU compute comes from the GPU
tracker), tunnel taint follows reverse tunnels into the sessions they bring in, and the rule
engine turns facts into alerts. This is also the engine's view of processes: the scope keys
that relate facts, and the process details an alert carries.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from sensor import events as ev
from sensor.aggregator import facts as f
from sensor.aggregator.containers import ContainerTable
from sensor.aggregator.exec_reading import ExecReadings
from sensor.aggregator.process_table import Process, ProcessTable, ProcKey
from sensor.aggregator.relay import Relay, RelayDetector
from sensor.aggregator.taint import TunnelTaint
from sensor.classify.binaries import basename
from sensor.classify.egress import DESTINATION_TEXT, Destination, EgressPolicy
from sensor.classify.miner import MinerClassifier
from sensor.classify.scan import ScanDetector
from sensor.events import text
from sensor.gpu_classes import device_name
from sensor.rules.alert import Alert, AlertProcess
from sensor.rules.engine import RuleEngine
from sensor.rules.model import Rule, RuleSet

MAX_ANCESTORS_SHOWN = 8
LINEAGE_CACHE = 16384
UNSET = 0xFFFFFFFF
# The events facts_of reads (the aggregator passes it no other: they give no facts).
FACT_EVENTS: tuple[type[ev.Event], ...] = (ev.Exec, ev.Connect, ev.TcpEstablished, ev.Accept, ev.GpuOpen)
GPU_FACTS = frozenset({f.GpuOpenFact.KIND, f.GpuCompute.KIND, f.GpuLaunches.KIND})


@dataclass
class DetectorConfig:
    egress_allowlist: tuple[str, ...] = ()
    scan_threshold: int = 32
    scan_window_s: int = 10


class Detector:
    """A pure function of the frame stream: every verdict that needs the host (where a
    connection goes, what a binary is) arrives in the frames, made by the probe."""

    def __init__(self, table: ProcessTable, ruleset: RuleSet, config: DetectorConfig | None = None,
                 containers: ContainerTable | None = None) -> None:
        config = config or DetectorConfig()
        self.table = table
        self.containers = containers if containers is not None else ContainerTable()
        self.egress_flags = config.egress_allowlist  # --egress-allow: joined with the rules' allowed_egress list
        self.egress = EgressPolicy(list(ruleset.egress_allowlist(self.egress_flags)))
        self.miner = MinerClassifier(ruleset.lists)
        self.readings = ExecReadings(self.miner)
        self.scan = ScanDetector(config.scan_threshold, config.scan_window_s)
        self.taint = TunnelTaint()
        # processes a tunnel's scope reached after they began (a tunnel found by its behaviour once
        # its sessions had started): the aggregator takes them after each event
        self.late_tainted: list[Process] = []
        self.relay = RelayDetector(self.relay_group)
        table.on_remove.append(self.relay.forget)
        self.engine = RuleEngine(ruleset, self)
        self._lineage: OrderedDict[tuple[ProcKey, int], frozenset[str]] = OrderedDict()

    def reload(self, ruleset: RuleSet) -> None:
        """New rules (SIGHUP): open sequences of unchanged rules go on (RuleEngine.load); lineage
        roots are recomputed, as a rule's lineage boundary may have changed; the egress allowlist
        follows the rules' allowed_egress list."""
        self.egress = EgressPolicy(list(ruleset.egress_allowlist(self.egress_flags)))
        self.miner = MinerClassifier(ruleset.lists)
        self.readings = ExecReadings(self.miner)  # what it remembered was read with the old lists
        self.engine.load(ruleset)
        self._lineage.clear()

    # -- events to facts ------------------------------------------------------------------

    def facts_of(self, event: ev.Event, process: Process) -> list[f.Fact]:
        """Facts from the events in FACT_EVENTS; any other gives none."""
        match event:
            case ev.Exec() if event.result == 0:
                return self._exec_facts(event, process)
            case ev.Connect():
                return self._connect_facts(event, process)
            case ev.TcpEstablished():
                destination = DESTINATION_TEXT[self.egress.judge(event.daddr, event.route,
                                                                 event.route_by_range).destination]
                group = self.relay_group(process)
                relay = self.relay.on_tcp(process, event, destination)
                self.taint.on_tcp(process, event, destination, group if self.relay.is_candidate(group) else None)
                return self._relay_facts([relay] if relay else [], event.ts)
            case ev.Accept():
                relay = self.relay.on_accept(process, event)
                self.taint.on_accept(process, event)
                return self._relay_facts([relay] if relay else [], event.ts)
            case ev.GpuOpen():
                return [f.GpuOpenFact(event.ts, process.key, device_name(event.kind, event.minor), event.minor,
                                      event.by_name)]
        return []

    def on_fork(self, parent_pid: int, child: Process) -> None:
        self.taint.on_fork(parent_pid, child)

    def relay_group(self, process: Process) -> ProcKey:
        """The process a relay is judged as: the nearest that exec'd, with its forked children that
        did not (identity follows fork: a relay that forks per connection is one relay)."""
        root = process
        while root.inherited and root.parent is not None:
            parent = self.table.get(root.parent)
            if parent is None:
                break
            root = parent
        return root.key

    def on_sock_bytes(self, event: ev.SockBytes) -> list[tuple[f.Fact, Process]]:
        """Byte counts: a tunnel fact for each process found relaying now, with its scope handed to
        the sessions its connections brought in, even those that began before it was found."""
        out: list[tuple[f.Fact, Process]] = []
        for relay in self.relay.on_bytes(event):
            root = self.table.get(relay.group)
            if root is not None:
                out.append((self._relay_fact(relay, root, event.ts), root))
        return out

    def _relay_facts(self, relays: list[Relay], ts: int) -> list[f.Fact]:
        """Found on a connection's own record (its counts came first): the fact is the relay's
        process's, which is the record's or the process it forked from."""
        roots = [(relay, self.table.get(relay.group)) for relay in relays]
        return [self._relay_fact(relay, root, ts) for relay, root in roots if root is not None]

    def _relay_fact(self, relay: Relay, root: Process, ts: int) -> f.TunnelFact:
        label = f"tunnel:{root.exec_id}"
        if relay.reverse:
            scopes = frozenset({label})
            for member in (root, *self.table.descendants(root.key)):
                if member is root or self.relay_group(member) == root.key:
                    member.tunnel_scopes = member.tunnel_scopes | scopes
            # their GPU compute, if any, is judged again in this scope (Aggregator._rejudge_compute)
            self.late_tainted += self.taint.taint_late(root.key, scopes, self.table)
        direction = "reverse" if relay.reverse else "local"
        far = f"{relay.outward_address}:{relay.outward_port}"
        forwards = tuple(f"{direction} {far} <-> {service}" for service in relay.local_services)
        return f.TunnelFact(ts, root.key, _name(root), relay.reverse, (direction,), relay.outward_address, "",
                            relay.outward_port, forwards, label, evidence="behaviour",
                            local_services=relay.local_services, relayed_bytes=relay.to_local + relay.from_local)

    def _exec_facts(self, event: ev.Exec, process: Process) -> list[f.Fact]:
        known_tool = event.tool
        reading = self.readings.read(event.filename, event.argv, known_tool, event.ssh_config)
        out: list[f.Fact] = [f.ExecFact(event.ts, process.key, reading.exe, reading.name, reading.argv,
                                        reading.cmdline, event.uid, event.loginuid, known_tool)]
        if reading.tunnel is not None:
            tunnel = reading.tunnel.tunnel
            label = f"tunnel:{process.exec_id}"
            if tunnel.is_reverse:
                process.tunnel_scopes = process.tunnel_scopes | {label}
            out.append(f.TunnelFact(event.ts, process.key, tunnel.tool, tunnel.is_reverse, reading.tunnel.directions,
                                    tunnel.remote_host, tunnel.remote_user, tunnel.remote_port,
                                    reading.tunnel.forwards, label, tunnel.evidence, tunnel.via))
        out += [f.MinerFact(event.ts, process.key, s.reason, s.detail, s.address, s.port) for s in reading.miner]
        return out

    def _connect_facts(self, event: ev.Connect, process: Process) -> list[f.Fact]:
        verdict = self.egress.judge(event.address, event.route, event.route_by_range)
        destination = DESTINATION_TEXT[verdict.destination]
        out: list[f.Fact] = [f.ConnectFact(event.ts, process.key, event.family, event.address, event.port,
                                           event.result, destination, verdict.allowed)]
        if verdict.destination is Destination.EGRESS and not verdict.allowed:
            out.append(f.EgressFact(event.ts, process.key, event.address, event.port, event.result, False))
        out += [f.MinerFact(event.ts, process.key, s.reason, s.detail, s.address, s.port)
                for s in self.miner.on_connect(event.address, event.port, destination)]
        count = self.scan.on_connect(process.key, event.address, event.port, destination, event.ts)
        if count is not None:
            out.append(f.InternalScanFact(event.ts, process.key, count, self.scan.window_s))
        return out

    def evaluate(self, facts: list[f.Fact], process: Process) -> list[Alert]:
        alerts = []
        for fact in facts:
            alerts += self.engine.on_fact(fact, process)
        return alerts

    def expire(self, now_ns: int) -> None:
        self.engine.expire(now_ns)
        self.taint.expire(now_ns)

    def suspicion(self, process: Process) -> str | None:
        """Why this process is already suspicious (worth a launch watch), or None: it is in a
        tunnel's scope, or in the scope of a sequence whose first step matched. Using a GPU is not
        suspicious in itself: a sequence opened by GPU facts alone (gpu-compute-then-miner-egress
        after any CUDA process's compute) does not count."""
        if process.tunnel_scopes:
            return "tunnel"
        rule_id = self.engine.open_sequence(process, ignoring=GPU_FACTS)
        return f"sequence {rule_id}" if rule_id is not None else None

    # -- what the rule engine asks about processes ------------------------------------------

    def scope_keys(self, process: Process, scope: str, rule: Rule) -> frozenset[str]:
        if scope == "lineage":
            return self._lineage_root(process, rule.lineage_boundary)
        if scope == "cgroup":
            return frozenset({f"cgroup:{process.cgroup_id}"}) if process.cgroup_id else frozenset()
        if scope == "session":
            return frozenset({f"session:{process.sessionid}"}) if process.sessionid not in (UNSET, 0) else frozenset()
        if scope == "user":
            user = process.loginuid if process.loginuid != UNSET else process.uid
            return frozenset({f"user:{user}"})
        if scope == "tunnel":
            return process.tunnel_scopes
        if scope == "container":
            in_container = process.container and not process.container.startswith("pod:")
            return frozenset({f"container:{process.container}"}) if in_container else frozenset()
        if scope == "pod":
            pod_uid = self._container(process).pod_uid
            return frozenset({f"pod:{pod_uid}"}) if pod_uid else frozenset()
        return frozenset({"host"})

    def _container(self, process: Process) -> ev.Container:
        """The process's container as the probe described it; an empty one on the host."""
        return self.containers.get(process.container) or _NO_CONTAINER

    def _lineage_root(self, process: Process, boundary: frozenset[str]) -> frozenset[str]:
        """The process's ancestor just below the nearest boundary (init, sshd, a launcher...)."""
        key = (process.key, hash(boundary))
        cached = self._lineage.get(key)
        if cached is not None:
            return cached
        root = process
        for ancestor in self.table.ancestors(process.key):
            if ancestor.pid == 1 or _name(ancestor) in boundary:
                break
            root = ancestor
        if _name(root) in boundary or root.pid == 1:
            result: frozenset[str] = frozenset()  # a boundary process itself belongs to no lineage
        else:
            result = frozenset({f"lineage:{root.key}"})
        self._lineage[key] = result
        if len(self._lineage) > LINEAGE_CACHE:
            self._lineage.popitem(last=False)
        return result

    def process_values(self, process: Process) -> dict[str, Any]:
        argv = tuple(text(a) for a in process.argv)
        return {"process.exe": text(process.exe), "process.name": _name(process), "process.argv": argv,
                "process.cmdline": " ".join(argv), "process.comm": text(process.comm), "process.uid": process.uid,
                "process.loginuid": process.loginuid, "process.pid": process.pid,
                "process.cgroup_id": process.cgroup_id, "process.tunnel_scoped": bool(process.tunnel_scopes),
                **container_values(self._container(process))}

    def describe(self, process: Process) -> AlertProcess:
        ancestors = tuple({"exec_id": a.exec_id, "pid": a.pid, "exe": text(a.exe),
                           "argv": [text(x) for x in a.argv]}
                          for a in self.table.ancestors(process.key)[:MAX_ANCESTORS_SHOWN])
        return AlertProcess(exec_id=process.exec_id, pid=process.pid, ppid=process.ppid, exe=text(process.exe),
                            argv=tuple(text(a) for a in process.argv), uid=process.uid, loginuid=process.loginuid,
                            cgroup_id=process.cgroup_id, tunnel_scopes=tuple(sorted(process.tunnel_scopes)),
                            ancestors=ancestors, **container_detail(self._container(process)))


_NO_CONTAINER = ev.Container(0, 0, 0)


def container_values(c: ev.Container) -> dict[str, Any]:
    """The rule fields process.container.* and pod.*: "" (and no GPUs) on the host."""
    return {"process.container.id": c.id, "process.container.name": c.name, "process.container.image": c.image,
            "process.container.runtime": c.runtime, "pod.uid": c.pod_uid, "pod.name": c.pod_name,
            "pod.namespace": c.pod_namespace, "pod.gpus": tuple(c.gpus)}


def container_detail(c: ev.Container) -> dict[str, dict[str, Any]]:
    """What an alert's process says of its container and pod (empty on the host)."""
    container = {"runtime": c.runtime, "id": c.id, "name": c.name, "image": c.image} if c.id else {}
    pod = {"uid": c.pod_uid, "name": c.pod_name, "namespace": c.pod_namespace, "container": c.container_name,
           "gpus": list(c.gpus)} if c.pod_uid else {}
    return {"container": container, "pod": pod}


def _name(process: Process) -> str:
    return basename(process.exe) if process.exe else text(process.comm)

