"""The frame schema: every event that flows from the probe to the aggregator.

The probe turns each kernel record into one of these, and the aggregator consumes them,
live or from a capture file. On the wire an event is a msgpack array
`[kind, *fields-in-declaration-order]`; `encode` and `decode` are the only conversions.
Strings that a monitored process controls (argv, file names, comm) stay bytes: they need
not be UTF-8.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, ClassVar

import msgpack


class Kind(IntEnum):
    # 1-31 match enum rec_type in bpf/events.h
    EXEC = 1
    FORK = 2
    EXIT = 3
    CONNECT = 4
    TCP_ESTABLISHED = 5
    ACCEPT = 6
    GPU_OPEN = 7
    GPU_IOCTL = 8
    # made in user space
    PROC = 32  # a process that existed when the probe started (from /proc)
    STATS = 33  # counters, every second
    GPU_COUNTERS = 34  # in-kernel ioctl aggregation, read on a timer


# exec flags: 0x1-0x1f come from the kernel record (EXEC_* in bpf/events.h)
ARGV_TRUNCATED = 0x1
ARG_CUT = 0x2
ARGV_UNREAD = 0x4
FILENAME_CUT = 0x8
ARGC_UNKNOWN = 0x10
ARGV_FROM_PROCFS = 0x100  # argv filled in from /proc/PID/cmdline after a failed read


@dataclass(slots=True)
class Event:
    KIND: ClassVar[Kind]
    ts: int  # nanoseconds since boot (CLOCK_BOOTTIME)
    tgid: int
    tid: int


@dataclass(slots=True)
class Exec(Event):
    KIND = Kind.EXEC
    result: int  # 0, or -errno of a failed exec
    ppid: int
    uid: int
    gid: int
    cgroup_id: int
    start_ns: int
    comm: bytes
    filename: bytes
    argv: list[bytes]
    argc: int  # the real count, which may exceed len(argv)
    flags: int
    exe_dev: int
    exe_ino: int
    old_tid: int


@dataclass(slots=True)
class Fork(Event):
    KIND = Kind.FORK
    child_pid: int
    parent_tgid: int
    child_start_ns: int


@dataclass(slots=True)
class Exit(Event):
    KIND = Kind.EXIT
    exit_code: int  # wait status
    start_ns: int


@dataclass(slots=True)
class Connect(Event):
    KIND = Kind.CONNECT
    fd: int
    result: int  # 0 or -errno; -EINPROGRESS (-115) for a non-blocking connect under way
    family: str  # "inet", "inet6", "unix", "unspec", or "af<N>"
    address: str  # IP address, or a UNIX socket path ("@name" for the abstract namespace)
    port: int


@dataclass(slots=True)
class TcpEstablished(Event):
    KIND = Kind.TCP_ESTABLISHED
    family: str
    saddr: str
    sport: int
    daddr: str
    dport: int


@dataclass(slots=True)
class Accept(Event):
    KIND = Kind.ACCEPT
    fd: int  # the new connection's fd, or -errno
    listen_fd: int
    family: str
    address: str  # the peer
    port: int


@dataclass(slots=True)
class Proc(Event):
    """A process that was already running when the probe started."""

    KIND = Kind.PROC
    ppid: int
    uid: int
    gid: int
    cgroup_id: int
    start_ns: int
    comm: bytes
    exe: bytes
    argv: list[bytes]


@dataclass(slots=True)
class Stats(Event):
    """Counters from every hop, so that a drop anywhere is visible."""

    KIND = Kind.STATS
    kernel_drops: dict[str, int] = field(default_factory=dict)  # ring-buffer reserve failures
    probe_drops: dict[str, int] = field(default_factory=dict)  # probe queue full
    records: dict[str, int] = field(default_factory=dict)  # records read from the ring buffer


EVENT_TYPES: dict[int, type[Event]] = {
    cls.KIND: cls for cls in (Exec, Fork, Exit, Connect, TcpEstablished, Accept, Proc, Stats)
}

_FIELDS: dict[type[Event], tuple[str, ...]] = {
    cls: tuple(f.name for f in dataclasses.fields(cls)) for cls in EVENT_TYPES.values()
}


def register(cls: type[Event]) -> type[Event]:
    """Add an event type defined elsewhere (the GPU events) to the schema."""
    EVENT_TYPES[cls.KIND] = cls
    _FIELDS[cls] = tuple(f.name for f in dataclasses.fields(cls))
    return cls


class FrameError(ValueError):
    """A frame that does not decode to a known event."""


def to_list(event: Event) -> list[Any]:
    return [int(event.KIND), *(getattr(event, name) for name in _FIELDS[type(event)])]


def encode(event: Event) -> bytes:
    payload: bytes = msgpack.packb(to_list(event), use_bin_type=True)
    return payload


def from_list(item: Any) -> Event:
    if not isinstance(item, list) or not item or not isinstance(item[0], int):
        raise FrameError("a frame is not an array beginning with an event kind")
    cls = EVENT_TYPES.get(item[0])
    if cls is None:
        raise FrameError(f"unknown event kind {item[0]}")
    names = _FIELDS[cls]
    if len(item) - 1 != len(names):
        raise FrameError(f"{cls.__name__} frame has {len(item) - 1} fields, expected {len(names)}")
    return cls(*item[1:])


def decode(payload: bytes) -> Event:
    try:
        item = msgpack.unpackb(payload, raw=False, strict_map_key=False)
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
        raise FrameError(f"not msgpack: {exc}") from exc
    return from_list(item)


def to_json_dict(event: Event) -> dict[str, Any]:
    """A JSON-safe view: bytes shown as text with undecodable bytes escaped."""
    out: dict[str, Any] = {"kind": event.KIND.name.lower()}
    for name in _FIELDS[type(event)]:
        out[name] = _jsonable(getattr(event, name))
    return out


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return value
