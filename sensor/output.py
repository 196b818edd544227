"""How `gpusentry run` and `analyze` print what they see: a compact line each for people, or
one JSON Record a line (sensor/outward.py, the schema in docs/schema/) for machines."""

from __future__ import annotations

import errno
import time
from typing import TextIO

from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from sensor import events as ev
from sensor.aggregator.aggregator import Observation
from sensor.aggregator.facts import ConnectFact, ExecFact, Fact, GpuCompute, GpuOpenFact
from sensor.aggregator.process_table import Process
from sensor.api import convert
from sensor.api.v1 import gpusentry_pb2 as pb
from sensor.gpu_classes import CONTROLS, class_name, command_name, device_name
from sensor.outward import json_line
from sensor.where import place

MAX_SHOWN_ARG = 120
# What each observation prints: incidents and alerts (the default), incidents only, every
# event and fact as well, or nothing.
OUTPUT_MODES = ("alerts", "incidents", "events", "none")


def text(raw: bytes) -> str:
    """Bytes a monitored process controls, made printable: escapes, never raw control bytes."""
    shown = ev.text(raw)
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in shown)


def argv_text(argv: list[bytes], argc: int) -> str:
    parts = []
    for arg in argv:
        shown = text(arg)
        if len(shown) > MAX_SHOWN_ARG:
            shown = shown[:MAX_SHOWN_ARG] + f"…(+{len(shown) - MAX_SHOWN_ARG})"
        parts.append(shown if shown and " " not in shown else repr(shown))
    if argc > len(argv):
        parts.append(f"…(+{argc - len(argv)} args)")
    return " ".join(parts)


def result_text(result: int) -> str:
    if result >= 0:
        return "ok"
    name = errno.errorcode.get(-result, str(-result))
    return name


def wall_clock(ts_ns: int, boot_to_wall_ns: int) -> str:
    wall = (ts_ns + boot_to_wall_ns) / 1e9
    return time.strftime("%H:%M:%S", time.localtime(wall)) + f".{int(wall * 1000) % 1000:03d}"


def _who(event: ev.Event, proc: Process | None) -> str:
    comm = text(proc.comm) if proc is not None else "?"
    return f"pid={event.tgid} {comm}"


def describe(obs: Observation) -> str | None:
    """The line for one observation; None for events not worth a line (stats, snapshot)."""
    event, proc = obs.event, obs.process
    match event:
        case ev.Exec():
            flags = []
            if event.flags & ev.ARGV_TRUNCATED:
                flags.append(f"argv cut at {len(event.argv)} of {event.argc}")
            if event.flags & ev.ARG_CUT:
                flags.append("long args cut")
            if event.flags & ev.ARGV_FROM_PROCFS:
                flags.append("argv from /proc")
            note = f" [{'; '.join(flags)}]" if flags else ""
            return (f"exec    pid={event.tgid} ppid={event.ppid} uid={event.uid} {text(event.filename)} "
                    f"{argv_text(event.argv, event.argc)} -> {result_text(event.result)}{note}")
        case ev.Fork():
            return f"fork    pid={event.tgid} child={event.child_pid} {text(proc.comm) if proc else ''}"
        case ev.Exit():
            code, sig = event.exit_code >> 8 & 0xFF, event.exit_code & 0x7F
            status = f"signal {sig}" if sig else f"code {code}"
            return f"exit    {_who(event, proc)} {status}"
        case ev.Connect():
            dest = f"[{event.address}]:{event.port}" if event.family == "inet6" else (
                f"{event.address}:{event.port}" if event.family == "inet" else event.address)
            return f"connect {_who(event, proc)} fd={event.fd} {event.family} {dest} -> {result_text(event.result)}"
        case ev.TcpEstablished():
            return (f"tcp     {_who(event, proc)} {event.saddr}:{event.sport} -> "
                    f"{event.daddr}:{event.dport} established")
        case ev.Accept():
            return (f"accept  {_who(event, proc)} fd={event.fd} from {event.address}:{event.port}"
                    if event.fd >= 0 else f"accept  {_who(event, proc)} -> {result_text(event.fd)}")
        case ev.GpuOpen():
            how = " (by name)" if event.by_name else ""
            return f"gpu     {_who(event, proc)} open {device_name(event.kind, event.minor)} fd={event.fd}{how}"
        case ev.GpuIoctl():
            how = " (by name)" if event.flags & ev.GPU_BY_NAME else ""
            return f"gpu     {_who(event, proc)} {gpu_ioctl_text(event)}{how}"
    return None


def gpu_ioctl_text(event: ev.GpuIoctl) -> str:
    where = f"{device_name(event.kind, event.minor)} {command_name(event.kind, event.nr)}"
    status = f" status={event.status:#x}" if event.status else ""
    result = f" -> {result_text(event.ret)}{status}"
    match event.reason:
        case ev.GpuReason.ALLOC | ev.GpuReason.ALLOC_FAILED:
            return f"{where} {class_name(event.h_class)} handle={event.h_object:#x} parent={event.h_parent:#x}{result}"
        case ev.GpuReason.FREE:
            return f"{where} freed {class_name(event.h_class)} handle={event.h_object:#x}{result}"
        case ev.GpuReason.CONTROL:
            name = CONTROLS.get(event.ctrl_cmd, f"{event.ctrl_cmd:#x}")
            return f"{where} {name} flags={event.param0:#x} duration={event.param1:#x}{result}"
        case ev.GpuReason.FIRST_USE:
            return f"{where} first use{result}"
    return f"{where}{result}"


def fact_line(fact: Fact) -> str | None:
    """Facts worth a line of their own; exec and connect facts repeat their event's line."""
    if isinstance(fact, GpuCompute):
        how = " (by name)" if fact.by_name else ""
        return (f"fact    gpu_compute pid={fact.process.pid} {class_name(fact.klass)} "
                f"on GPU {fact.device_id} (channel {fact.channel_class:#x}){how}")
    if isinstance(fact, ExecFact | ConnectFact | GpuOpenFact):
        return None
    return f"fact    {fact.KIND} pid={fact.process.pid} {text(fact.summary().encode())}"


def event_lines(obs: Observation, boot_to_wall_ns: int) -> list[str]:
    """The event's line and a line for each fact worth one, each with its time."""
    stamp = wall_clock(obs.event.ts, boot_to_wall_ns)
    bodies = [describe(obs)] + [fact_line(f) for f in obs.facts]
    return [f"{stamp} {body}" for body in bodies if body is not None]


def alert_lines(alert: pb.Alert) -> list[str]:
    """The alert, then its chain: each step's fact and process, then who the processes are."""
    scope = f" [scope {alert.scope}: {alert.scope_key}]" if alert.scope != "fact" else ""
    out = [f"{stamp(alert.time)} ALERT {severity_name(alert.severity)} {alert.rule_id}: {alert.title}{scope}"]
    by_id = {p.process.exec_id: p.process for p in alert.processes}
    for number, step in enumerate(alert.steps, start=1):
        proc = by_id.get(step.exec_id) or step.detail.process
        out.append(f"    {number}. {stamp(step.time)} {step.fact:12} pid={proc.pid} "
                   f"{text(proc.exe.encode())}: {text(step.summary.encode())}")
    for entry in alert.processes:
        proc = entry.process
        chain = " <- ".join(f"{a.pid} {text(a.exe.encode()) or '?'}" for a in entry.ancestors)
        args = argv_text([a.encode() for a in proc.argv], len(proc.argv))
        where = f" [{place(proc)}]" if place(proc) else ""
        out.append(f"    pid {proc.pid} uid={proc.uid} cgroup={proc.cgroup_id}: {args}{where}")
        if chain:
            out.append(f"        lineage: {chain}")
    return out


def incident_lines(incident: pb.Incident) -> list[str]:
    """The incident (this version of it): how bad, how many alerts, which rules, what joined them."""
    count = f"{incident.alerts_total} alert{'s' if incident.alerts_total != 1 else ''}"
    out = [f"{stamp(incident.last_seen)} INCIDENT {severity_name(incident.severity)} {incident.id[:8]} {count}: "
           f"{text(incident.summary.encode())}"]
    out.append(f"    rules: {', '.join(incident.rule_ids)}")
    if incident.scope_keys:
        out.append(f"    joined by: {', '.join(text(k.encode()) for k in incident.scope_keys)}")
    return out


def stamp(when: Timestamp) -> str:
    """A wall-clock time as the lines show it: local HH:MM:SS.mmm."""
    return wall_clock(when.ToNanoseconds(), 0)


def severity_name(severity: pb.Severity) -> str:
    name: str = pb.Severity.Name(severity)
    return name.removeprefix("SEVERITY_")


class Printer:
    """What `run` and `analyze` print for each observation, by output mode: incidents and
    alerts (`alerts`), incidents only, every event and fact with the alerts and incidents
    (`events`), or nothing. Text lines for people, or one JSON Record a line (sensor.outward)."""

    def __init__(self, out: TextIO, mode: str, as_json: bool, boot_to_wall_ns: int,
                 host: pb.Host | None = None) -> None:
        if mode not in OUTPUT_MODES:
            raise ValueError(f"output mode {mode!r} is not one of {', '.join(OUTPUT_MODES)}")
        self.out, self.mode, self.as_json, self.host = out, mode, as_json, host
        self.boot_to_wall_ns = boot_to_wall_ns
        self.clock = convert.Clock(boot_to_wall_ns)

    def print(self, obs: Observation, alerts: list[pb.Alert], incidents: list[pb.Incident]) -> None:
        """`alerts`: this observation's alerts, converted (cursor, id and incident id set);
        `incidents`: the incident versions they made."""
        if self.mode == "none":
            return
        lines = self._json(obs, alerts, incidents) if self.as_json else self._text(obs, alerts, incidents)
        if lines:
            self.out.write("\n".join(lines) + "\n")
            self.out.flush()

    def _json(self, obs: Observation, alerts: list[pb.Alert], incidents: list[pb.Incident]) -> list[str]:
        items: list[Message] = []
        if self.mode == "events":
            items += [*convert.events(obs, self.clock), *convert.facts(obs, self.clock)]
        if self.mode in ("events", "alerts"):
            items += alerts
        items += incidents
        return [json_line(item, self.host) for item in items]

    def _text(self, obs: Observation, alerts: list[pb.Alert], incidents: list[pb.Incident]) -> list[str]:
        lines = event_lines(obs, self.boot_to_wall_ns) if self.mode == "events" else []
        if self.mode in ("events", "alerts"):
            lines += [line for alert in alerts for line in alert_lines(alert)]
        lines += [line for incident in incidents for line in incident_lines(incident)]
        return lines
