"""How `gpusentry run` and `analyze` print events: one compact line each, or JSON lines."""

from __future__ import annotations

import dataclasses
import errno
import json
import time
from typing import Any

from sensor import events as ev
from sensor.aggregator.aggregator import Observation
from sensor.aggregator.facts import ConnectFact, ExecFact, Fact, GpuCompute, GpuOpenFact
from sensor.aggregator.process_table import Process
from sensor.gpu_classes import CONTROLS, class_name, command_name, device_name
from sensor.rules.alert import Alert

MAX_SHOWN_ARG = 120


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


def line(obs: Observation, boot_to_wall_ns: int) -> str | None:
    stamp = wall_clock(obs.event.ts, boot_to_wall_ns)
    lines = [describe(obs)] + [fact_line(f) for f in obs.facts]
    shown = [f"{stamp} {body}" for body in lines if body is not None]
    for alert in obs.alerts:
        shown += alert_lines(alert, boot_to_wall_ns)
    return "\n".join(shown) if shown else None


def alert_lines(alert: Alert, boot_to_wall_ns: int) -> list[str]:
    """The alert, then its chain: each step's fact and process, then who the processes are."""
    stamp = wall_clock(alert.ts, boot_to_wall_ns)
    scope = f" [scope {alert.scope}: {alert.scope_key}]" if alert.scope != "fact" else ""
    out = [f"{stamp} ALERT {alert.severity.upper()} {alert.rule_id}: {alert.title}{scope}"]
    by_id = {p.exec_id: p for p in alert.processes}
    for number, step in enumerate(alert.steps, start=1):
        proc = by_id[step.exec_id]
        out.append(f"    {number}. {wall_clock(step.ts, boot_to_wall_ns)} {step.fact:12} pid={proc.pid} "
                   f"{text(proc.exe.encode())}: {text(step.summary.encode())}")
    for proc in alert.processes:
        chain = " <- ".join(f"{a['pid']} {text(str(a['exe']).encode()) or '?'}" for a in proc.ancestors)
        args = argv_text([a.encode() for a in proc.argv], len(proc.argv))
        out.append(f"    pid {proc.pid} uid={proc.uid} cgroup={proc.cgroup_id}: {args}")
        if chain:
            out.append(f"        lineage: {chain}")
    return out


def alert_json(alert: Alert) -> str:
    return json.dumps({"kind": "alert", **alert.to_dict()}, ensure_ascii=False)


def json_line(obs: Observation) -> str | None:
    alerts = [alert_json(a) for a in obs.alerts]
    if isinstance(obs.event, ev.PROBE_MADE):
        return "\n".join(alerts) or None
    out: dict[str, Any] = ev.to_json_dict(obs.event)
    if obs.process is not None:
        out["process"] = {"exec_id": obs.process.exec_id, "exe": text(obs.process.exe),
                          "ppid": obs.process.ppid}
    if obs.facts:
        out["facts"] = [fact_json(f) for f in obs.facts]
    return "\n".join([json.dumps(out, ensure_ascii=False), *alerts])


def fact_json(fact: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"kind": fact.KIND}
    for f in dataclasses.fields(fact):
        value = getattr(fact, f.name)
        out[f.name] = str(value) if f.name == "process" else value
    return out
