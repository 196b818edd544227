"""From the aggregator's view (observations, processes, alerts) to API messages.

Times: events carry boot-clock nanoseconds; the stream's header gives the offset to wall
time, which is what API clients see. Strings a monitored process controls are decoded with
undecodable bytes escaped (\\xNN), never dropped.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from sensor import events as ev
from sensor.aggregator import facts as f
from sensor.aggregator.aggregator import Observation
from sensor.aggregator.containers import ContainerTable
from sensor.aggregator.detector import container_detail
from sensor.aggregator.gpu import GpuSession, GpuTracker
from sensor.aggregator.launches import LaunchSession
from sensor.aggregator.process_table import Process, ProcessTable
from sensor.api.v1 import gpusentry_pb2 as pb
from sensor.classify.egress import by_range
from sensor.events import text
from sensor.gpu_classes import Role, architecture_of, command_name, device_name, role_of
from sensor.rules.alert import Alert

SEVERITY = {"info": pb.SEVERITY_INFO, "low": pb.SEVERITY_LOW, "medium": pb.SEVERITY_MEDIUM,
            "high": pb.SEVERITY_HIGH, "critical": pb.SEVERITY_CRITICAL}
GPU_REASONS = {r.value: r.name.lower() for r in ev.GpuReason}

# Each fact kind (Fact.KIND): its FactKind, and the Fact field (of oneof detail) it travels in.
FACT_DETAIL: dict[str, tuple[pb.FactKind, str]] = {
    "exec": (pb.FACT_KIND_EXEC, "exec"), "connect": (pb.FACT_KIND_CONNECT, "connect"),
    "egress": (pb.FACT_KIND_EGRESS, "egress"), "tunnel": (pb.FACT_KIND_TUNNEL, "tunnel"),
    "miner": (pb.FACT_KIND_MINER, "miner"), "internal_scan": (pb.FACT_KIND_INTERNAL_SCAN, "internal_scan"),
    "gpu_open": (pb.FACT_KIND_GPU_OPEN, "gpu_open"), "gpu_compute": (pb.FACT_KIND_GPU_COMPUTE, "gpu_compute"),
    "gpu_profile": (pb.FACT_KIND_GPU_PROFILE, "gpu_profile"),
    "gpu_launches": (pb.FACT_KIND_GPU_LAUNCHES, "gpu_launches"),
}
# Fact fields whose name in the proto differs (`class` is a Python keyword, hence `klass`).
FACT_FIELD_RENAMED = {"klass": "class_id"}
SIGNED_32 = frozenset({FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_SINT32, FieldDescriptor.TYPE_SFIXED32})
UNSIGNED_32 = frozenset({FieldDescriptor.TYPE_UINT32, FieldDescriptor.TYPE_FIXED32})


class Clock:
    """Boot-clock nanoseconds (the kernel's timestamps) to wall-clock Timestamps."""

    def __init__(self, boot_to_wall_ns: int) -> None:
        self.boot_to_wall_ns = boot_to_wall_ns

    def wall_ns(self, boot_ns: int) -> int:
        return boot_ns + self.boot_to_wall_ns

    def timestamp(self, boot_ns: int) -> Timestamp:
        stamp = Timestamp()
        stamp.FromNanoseconds(self.wall_ns(boot_ns))
        return stamp


def process_ref(proc: Process) -> pb.ProcessRef:
    return pb.ProcessRef(exec_id=proc.exec_id, pid=proc.pid, exe=text(proc.exe))


def process(proc: Process, clock: Clock, containers: ContainerTable | None = None) -> pb.Process:
    found = containers.get(proc.container) if containers is not None else None
    place = container_detail(found) if found is not None else {}
    return pb.Process(
        exec_id=proc.exec_id, pid=proc.pid, ppid=proc.ppid, exe=text(proc.exe), argv=[text(a) for a in proc.argv],
        argc=proc.argc, uid=proc.uid, loginuid=proc.loginuid, cgroup_id=proc.cgroup_id,
        start_time=clock.timestamp(proc.start_ns), alive=proc.alive, exit_code=proc.exit_code or 0,
        tunnel_scopes=sorted(proc.tunnel_scopes), inherited=proc.inherited,
        container=pb.Container(**place["container"]) if place.get("container") else None,
        pod=pb.Pod(**place["pod"]) if place.get("pod") else None,
    )


def events(obs: Observation, clock: Clock) -> Iterator[pb.Event]:
    """The API event for one observation: every kernel event about a process (exec, fork, exit,
    connect, accept, tcp_established, GPU open and object). What the aggregator concluded from
    it travels as facts (`facts`); snapshot, stats and counter frames are no event."""
    if obs.process is None:
        return
    detail = event_detail(obs)
    if detail is None:
        return
    kind, field, message = detail
    out = pb.Event(time=clock.timestamp(obs.event.ts), ts=obs.event.ts, kind=kind, process=process_ref(obs.process))
    getattr(out, field).CopyFrom(message)
    yield out


def event_detail(obs: Observation) -> tuple[pb.EventKind, str, Message] | None:
    """The event's kind, the Event field its detail travels in, and the detail."""
    match obs.event:
        case ev.Exec() as e:
            return pb.EVENT_KIND_EXEC, "exec", exec_detail(e)
        case ev.Fork() as e:
            return pb.EVENT_KIND_FORK, "fork", pb.Fork(child_pid=e.child_pid, parent_pid=e.parent_tgid)
        case ev.Exit() as e:
            return pb.EVENT_KIND_EXIT, "exit", pb.Exit(exit_code=e.exit_code >> 8 & 0xFF, signal=e.exit_code & 0x7F)
        case ev.Connect() as e:
            return pb.EVENT_KIND_CONNECT, "connect", connect_detail(e, obs.facts)
        case ev.Accept() as e:
            return pb.EVENT_KIND_ACCEPT, "accept", pb.Accept(fd=e.fd, family=e.family, address=e.address,
                                                             port=e.port)
        case ev.TcpEstablished() as e:
            return pb.EVENT_KIND_TCP_ESTABLISHED, "tcp_established", pb.TcpEstablished(
                family=e.family, source_address=e.saddr, source_port=e.sport, destination_address=e.daddr,
                destination_port=e.dport, destination=e.route or by_range(e.daddr).value)
        case ev.GpuOpen() as e:
            return pb.EVENT_KIND_GPU_OPEN, "gpu_open", pb.GpuOpen(device=device_name(e.kind, e.minor),
                                                                  minor=e.minor, by_name=e.by_name)
        case ev.GpuIoctl() as e:
            return pb.EVENT_KIND_GPU_OBJECT, "gpu_object", gpu_object(e)
    return None


def exec_detail(e: ev.Exec) -> pb.Exec:
    return pb.Exec(
        filename=text(e.filename), argv=[text(a) for a in e.argv], argc=e.argc, result=e.result, uid=e.uid,
        gid=e.gid, cgroup_id=e.cgroup_id, ppid=e.ppid, loginuid=e.loginuid, tool=e.tool, identity=e.identity,
        ssh_config=e.ssh_config,
        argv_truncated=bool(e.flags & ev.ARGV_TRUNCATED), arg_cut=bool(e.flags & ev.ARG_CUT),
        argv_unread=bool(e.flags & ev.ARGV_UNREAD), filename_cut=bool(e.flags & ev.FILENAME_CUT),
        argc_unknown=bool(e.flags & ev.ARGC_UNKNOWN), argv_from_procfs=bool(e.flags & ev.ARGV_FROM_PROCFS))


def connect_detail(e: ev.Connect, concluded: list[f.Fact]) -> pb.Connect:
    """The connect as the kernel saw it, with where it goes: the probe's routing verdict when the
    frame carries one, else the connect fact's (judged by address ranges)."""
    destination, by_range_only = e.route, e.route_by_range
    fact = next((x for x in concluded if isinstance(x, f.ConnectFact)), None)
    if not destination and fact is not None:
        destination, by_range_only = fact.destination, True
    # connect(2) takes any int as its fd: a negative one (refused with EBADF) keeps its bits
    return pb.Connect(family=e.family, address=e.address, port=e.port, result=e.result, fd=e.fd % 2**32,
                      destination=destination, route_by_range=by_range_only)


def gpu_object(e: ev.GpuIoctl) -> pb.GpuObject:
    role = role_of(e.h_class).value if e.reason in (ev.GpuReason.ALLOC, ev.GpuReason.ALLOC_FAILED,
                                                     ev.GpuReason.FREE) else ""
    return pb.GpuObject(device=device_name(e.kind, e.minor), command=command_name(e.kind, e.nr),
                        reason=GPU_REASONS.get(e.reason, str(e.reason)), role=role, class_id=e.h_class,
                        architecture=architecture_of(e.h_class) if role else "", handle=e.h_object,
                        parent=e.h_parent, ret=e.ret, status=e.status)


def gpu_activity(tracker: GpuTracker, table: ProcessTable, counters: ev.GpuCounters,
                 clock: Clock) -> Iterator[pb.Event]:
    """One activity event per process whose in-kernel counters changed."""
    seen = set()
    for entry in counters.entries():
        proc = table.by_pid(entry.tgid)
        if proc is None or proc.key in seen:
            continue
        seen.add(proc.key)
        session = tracker.sessions.get(proc.key)
        if session is None:
            continue
        yield pb.Event(time=clock.timestamp(counters.ts), kind=pb.EVENT_KIND_GPU_ACTIVITY,
                       process=process_ref(proc), gpu_activity=activity(session))


def activity(session: GpuSession) -> pb.GpuActivity:
    return pb.GpuActivity(calls_by_command=session.ioctl_totals(), rate_by_device=session.rates,
                          errors=sum(c.errors for c in session.counts.values()),
                          suppressed=sum(c.suppressed for c in session.counts.values()))


def gpu_summary(session: GpuSession | None, clock: Clock,
                launches: LaunchSession | None = None) -> pb.GpuSessionSummary | None:
    if session is None:
        return None
    first = clock.timestamp(session.first_compute_ts) if session.first_compute_ts else None
    summary = pb.GpuSessionSummary(
        devices=sorted({device_name(kind, minor) for kind, minor in session.devices}), compute=session.has_compute,
        first_compute=first, channels=[f"{o.klass:#x}" for o in session.ever(Role.CHANNEL)],
        cuda_boost=session.cuda_boost, failed_allocations=session.failed_count)
    if launches is not None:
        summary.launch_watch = launches.state
        summary.launch_watch_why = f"{launches.why}: {launches.detail}" if launches.detail else launches.why
        summary.launches, summary.launches_per_s = launches.launches, launches.launches_per_s
        summary.distinct_kernels = launches.distinct
    return summary


def facts(obs: Observation, clock: Clock) -> list[pb.Fact]:
    """What the aggregator concluded from one observation, each fact about its process."""
    return [fact(x, clock, obs.process) for x in obs.facts]


def fact(x: f.Fact, clock: Clock, proc: Process | None = None) -> pb.Fact:
    """One fact; `proc` names its process fully (exec id, binary), else the fact's PID alone does."""
    ref = process_ref(proc) if proc is not None and proc.key == x.process else pb.ProcessRef(pid=x.process.pid)
    return fact_message(x.KIND, x.ts, x.summary(), x.fields(), ref, clock)


def fact_message(kind: str, ts: int, summary: str, fields: dict[str, Any], ref: pb.ProcessRef,
                 clock: Clock) -> pb.Fact:
    """A fact from its kind and fields: the fields of a fact dataclass (Fact.fields()), or those
    an alert step kept of it, which are the same names."""
    fact_kind, detail_field = FACT_DETAIL[kind]
    out = pb.Fact(time=clock.timestamp(ts), ts=ts, kind=fact_kind, process=ref, summary=summary)
    detail = getattr(out, detail_field)
    detail.SetInParent()  # a detail whose fields are all defaults is still this kind's
    for name, value in fields.items():
        _set(detail, FACT_FIELD_RENAMED.get(name, name), value)
    return out


def _set(message: Message, name: str, value: Any) -> None:
    """Set one field. An out-of-range integer (a 32-bit value a monitored process chose, shown
    in a signed field) is kept by its two's complement rather than failing the whole message."""
    field = message.DESCRIPTOR.fields_by_name[name]
    if field.is_repeated:
        getattr(message, name).extend(value)
    elif field.type in SIGNED_32:
        setattr(message, name, (value + 2**31) % 2**32 - 2**31)
    elif field.type in UNSIGNED_32:
        setattr(message, name, value % 2**32)
    else:
        setattr(message, name, value)


def alert(a: Alert, clock: Clock, cursor: int = 0) -> pb.Alert:
    """An alert with a fresh id; the caller sets its cursor (when journaled) and incident id."""
    refs = {p.exec_id: pb.ProcessRef(exec_id=p.exec_id, pid=p.pid, exe=p.exe) for p in a.processes}
    steps = [pb.AlertStep(fact=s.fact, time=clock.timestamp(s.ts), summary=s.summary, exec_id=s.exec_id,
                          detail=fact_message(s.fact, s.ts, s.summary, s.fields,
                                              refs.get(s.exec_id, pb.ProcessRef(exec_id=s.exec_id)), clock))
             for s in a.steps]
    processes = [pb.AlertProcess(
        process=pb.Process(exec_id=p.exec_id, pid=p.pid, ppid=p.ppid, exe=p.exe, argv=list(p.argv),
                           argc=len(p.argv), uid=p.uid, loginuid=p.loginuid, cgroup_id=p.cgroup_id,
                           tunnel_scopes=list(p.tunnel_scopes),
                           container=pb.Container(**p.container) if p.container else None,
                           pod=pb.Pod(**p.pod) if p.pod else None),
        ancestors=[pb.ProcessRef(exec_id=str(x["exec_id"]), pid=int(x["pid"]), exe=str(x["exe"]))
                   for x in p.ancestors]) for p in a.processes]
    return pb.Alert(cursor=cursor, id=str(uuid.uuid4()), rule_id=a.rule_id, severity=SEVERITY[a.severity],
                    title=a.title, description=a.description, tags=list(a.tags), time=clock.timestamp(a.ts),
                    ts=a.ts, scope=a.scope, scope_key=a.scope_key, steps=steps, processes=processes)
