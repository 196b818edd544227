"""From the aggregator's view (observations, processes, alerts) to API messages.

Times: events carry boot-clock nanoseconds; the stream's header gives the offset to wall
time, which is what API clients see. Strings a monitored process controls are decoded with
undecodable bytes escaped (\\xNN), never dropped.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

from google.protobuf.timestamp_pb2 import Timestamp

from sensor import events as ev
from sensor.aggregator import facts as f
from sensor.aggregator.aggregator import Observation
from sensor.aggregator.gpu import GpuSession, GpuTracker
from sensor.aggregator.process_table import Process, ProcessTable
from sensor.api.v1 import gpusentry_pb2 as pb
from sensor.events import text
from sensor.gpu_classes import Role, architecture_of, command_name, device_name, role_of
from sensor.rules.alert import Alert

SEVERITY = {"info": pb.SEVERITY_INFO, "low": pb.SEVERITY_LOW, "medium": pb.SEVERITY_MEDIUM,
            "high": pb.SEVERITY_HIGH, "critical": pb.SEVERITY_CRITICAL}
GPU_REASONS = {r.value: r.name.lower() for r in ev.GpuReason}


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


def process(proc: Process, clock: Clock) -> pb.Process:
    return pb.Process(
        exec_id=proc.exec_id, pid=proc.pid, ppid=proc.ppid, exe=text(proc.exe), argv=[text(a) for a in proc.argv],
        argc=proc.argc, uid=proc.uid, loginuid=proc.loginuid, cgroup_id=proc.cgroup_id,
        start_time=clock.timestamp(proc.start_ns), alive=proc.alive, exit_code=proc.exit_code or 0,
        tunnel_scopes=sorted(proc.tunnel_scopes), inherited=proc.inherited,
    )


def events(obs: Observation, clock: Clock) -> Iterator[pb.Event]:
    """The API events for one observation: its event, and the facts worth their own."""
    if obs.process is None:
        return
    base = {"time": clock.timestamp(obs.event.ts), "process": process_ref(obs.process)}
    match obs.event:
        case ev.Exec() as e:
            yield pb.Event(kind=pb.EVENT_KIND_EXEC, exec=pb.Exec(
                filename=text(e.filename), argv=[text(a) for a in e.argv], argc=e.argc,
                argv_truncated=bool(e.flags & (ev.ARGV_TRUNCATED | ev.ARG_CUT)), result=e.result, uid=e.uid,
                gid=e.gid, cgroup_id=e.cgroup_id), **base)
        case ev.Exit() as e:
            yield pb.Event(kind=pb.EVENT_KIND_EXIT, exit=pb.Exit(exit_code=e.exit_code >> 8 & 0xFF,
                                                                  signal=e.exit_code & 0x7F), **base)
        case ev.GpuOpen() as e:
            yield pb.Event(kind=pb.EVENT_KIND_GPU_OPEN, gpu_open=pb.GpuOpen(
                device=device_name(e.kind, e.minor), minor=e.minor, by_name=e.by_name), **base)
        case ev.GpuIoctl() as e:
            yield pb.Event(kind=pb.EVENT_KIND_GPU_OBJECT, gpu_object=gpu_object(e), **base)
    for fact in obs.facts:
        match fact:
            case f.ConnectFact():
                yield pb.Event(kind=pb.EVENT_KIND_CONNECT, connect=pb.Connect(
                    family=fact.family, address=fact.address, port=fact.port, result=fact.result,
                    destination=fact.destination), **base)
            case f.TunnelFact():
                yield pb.Event(kind=pb.EVENT_KIND_TUNNEL, tunnel=pb.Tunnel(
                    tool=fact.tool, reverse=fact.reverse, directions=list(fact.directions),
                    remote_host=fact.remote_host, remote_user=fact.remote_user, remote_port=fact.remote_port,
                    forwards=list(fact.forwards)), **base)
            case f.EgressFact():
                yield pb.Event(kind=pb.EVENT_KIND_EGRESS, egress=pb.Egress(
                    address=fact.address, port=fact.port, result=fact.result), **base)


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


def gpu_summary(session: GpuSession | None, clock: Clock) -> pb.GpuSessionSummary | None:
    if session is None:
        return None
    first = clock.timestamp(session.first_compute_ts) if session.first_compute_ts else None
    return pb.GpuSessionSummary(
        devices=sorted({device_name(kind, minor) for kind, minor in session.devices}), compute=session.has_compute,
        first_compute=first, channels=[f"{o.klass:#x}" for o in session.ever(Role.CHANNEL)],
        cuda_boost=session.cuda_boost, failed_allocations=session.failed_count)


def alert(a: Alert, clock: Clock, cursor: int = 0) -> pb.Alert:
    steps = [pb.AlertStep(fact=s.fact, time=clock.timestamp(s.ts), summary=s.summary, exec_id=s.exec_id,
                          fields_json=json.dumps(s.fields, default=str, sort_keys=True)) for s in a.steps]
    processes = [pb.AlertProcess(
        process=pb.Process(exec_id=p.exec_id, pid=p.pid, ppid=p.ppid, exe=p.exe, argv=list(p.argv),
                           argc=len(p.argv), uid=p.uid, loginuid=p.loginuid, cgroup_id=p.cgroup_id,
                           tunnel_scopes=list(p.tunnel_scopes)),
        ancestors=[pb.ProcessRef(exec_id=str(x["exec_id"]), pid=int(x["pid"]), exe=str(x["exe"]))
                   for x in p.ancestors]) for p in a.processes]
    return pb.Alert(cursor=cursor, rule_id=a.rule_id, severity=SEVERITY[a.severity], title=a.title,
                    description=a.description, tags=list(a.tags), time=clock.timestamp(a.ts), scope=a.scope,
                    scope_key=a.scope_key, steps=steps, processes=processes)
