"""How `gpusentry run` and `analyze` print events: one compact line each, or JSON lines."""

from __future__ import annotations

import errno
import json
import time
from typing import Any

from sensor import events as ev
from sensor.aggregator.aggregator import Observation
from sensor.aggregator.process_table import Process

MAX_SHOWN_ARG = 120


def text(raw: bytes) -> str:
    """Bytes a monitored process controls, made printable: escapes, never raw control bytes."""
    shown = raw.decode("utf-8", "backslashreplace")
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
    return None


def line(obs: Observation, boot_to_wall_ns: int) -> str | None:
    body = describe(obs)
    return None if body is None else f"{wall_clock(obs.event.ts, boot_to_wall_ns)} {body}"


def json_line(obs: Observation) -> str | None:
    if isinstance(obs.event, ev.Stats | ev.Proc):
        return None
    out: dict[str, Any] = ev.to_json_dict(obs.event)
    if obs.process is not None:
        out["process"] = {"exec_id": obs.process.exec_id, "exe": text(obs.process.exe),
                          "ppid": obs.process.ppid}
    return json.dumps(out, ensure_ascii=False)
