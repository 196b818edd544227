"""The frame schema: every event that flows from the probe to the aggregator.

The probe turns each kernel record into one of these, and the aggregator consumes them,
live or from a capture file. On the wire an event is a msgpack array
`[kind, *fields-in-declaration-order]`; `encode` and `decode` are the only conversions.
Strings that a monitored process controls (argv, file names, comm) stay bytes: they need
not be UTF-8.
"""

from __future__ import annotations

import dataclasses
import operator
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, ClassVar

import msgpack


class Kind(IntEnum):
    # 1-31 match enum rec_type in sensor/bpf/events.h
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
    END = 35  # the probe's last frame: it stopped on purpose (a stream without it was cut)
    CONTAINER = 36  # what the probe learnt about a container (sensor/containers/resolve.py)
    SOCK_BYTES = 40  # per-socket byte counts from the kernel, read on a timer
    LAUNCH_WATCH = 41  # a launch watch on a process began, was refused, or ended (sensor/probe/launches.py)
    LAUNCH_COUNTS = 42  # a watched process's libcuda launch counts, read on a timer


# /proc gives start times in clock ticks (USER_HZ: 100 on every mainstream architecture), BPF
# in nanoseconds: a process from the /proc snapshot matches a BPF event to the tick.
NS_PER_TICK = 1_000_000_000 // os.sysconf("SC_CLK_TCK")

# The lowercase name of each kind, for counters keyed by name on the per-event path.
KIND_NAMES: dict[int, str] = {kind: kind.name.lower() for kind in Kind}


def text(raw: bytes) -> str:
    """Bytes a monitored process controls, as text: undecodable bytes escaped (\\xNN), never dropped."""
    return raw.decode("utf-8", "backslashreplace")


# exec flags: 0x1-0x3f come from the kernel record (EXEC_* in sensor/bpf/events.h)
ARGV_TRUNCATED = 0x1
ARG_CUT = 0x2
ARGV_UNREAD = 0x4
FILENAME_CUT = 0x8
ARGC_UNKNOWN = 0x10
CGROUPS_INHERITED = 0x20  # its cgroups are its parent's (only where the v2 cgroup id tells none)
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
    loginuid: int = 0xFFFFFFFF  # unset: no login recorded
    sessionid: int = 0xFFFFFFFF
    netns: int = 0
    # What the binary is, judged by the probe from the file itself at exec time
    # (sensor/probe/identity.py): the tool it is ("" for none), and how that was decided
    # (inode, content, size; "unread": no verdict; "": not judged, e.g. a failed exec).
    tool: str = ""
    identity: str = ""
    # The container the new image runs in, by key (a Container frame describes it): "" on the
    # host, CONTAINER_UNREAD when its cgroup could not be read (the process was gone).
    container: str = ""
    # ssh and autossh (by identity): what ssh's configuration files add to this command line,
    # evaluated by the probe at exec time through the process's root and home, as directives
    # ("RemoteForward 2222 localhost:22", "ProxyJump a,b") and notes ("# ..."; at most 32 lines:
    # sensor/classify/ssh_config.py); [] for other execs or when nothing was added.
    ssh_config: list[str] = field(default_factory=list)


# Exec.container when the probe could not read the process's cgroup: it stays in the container
# it was in (a process changes cgroup by being moved, which no exec does).
CONTAINER_UNREAD = "?"


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
    netns: int = 0  # network namespace inode
    # Where it goes, from the routing table of the process's namespace, decided by the probe
    # at event time (sensor/probe/routes.py): loopback, local, lan, egress, unreachable, none;
    # "" when no verdict travels (a frame made by hand). by_range: the table could not be read.
    route: str = ""
    route_by_range: bool = False


@dataclass(slots=True)
class TcpEstablished(Event):
    KIND = Kind.TCP_ESTABLISHED
    family: str
    saddr: str
    sport: int
    daddr: str
    dport: int
    netns: int = 0
    route: str = ""  # where daddr is, as for Connect
    route_by_range: bool = False
    # The socket, named by the probe (a keyed hash, never its kernel address): SockBytes rows name
    # it the same way. 0: not known (a frame from before this field).
    sock: int = 0


@dataclass(slots=True)
class Accept(Event):
    KIND = Kind.ACCEPT
    fd: int  # the new connection's fd, or -errno
    listen_fd: int
    family: str
    address: str  # the peer
    port: int
    netns: int = 0
    sock: int = 0  # as TcpEstablished.sock
    # The listening service's own address and port, read from the accepted socket ("" and 0: not read).
    local_address: str = ""
    local_port: int = 0
    # The peer above came from the socket, not from accept()'s address argument (the caller passed NULL).
    peer_from_socket: bool = False


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
    loginuid: int = 0xFFFFFFFF
    sessionid: int = 0xFFFFFFFF
    netns: int = 0
    exe_dev: int = 0
    exe_ino: int = 0
    container: str = ""  # as for Exec


@dataclass(slots=True)
class Stats(Event):
    """Counters from every hop, so that a drop anywhere is visible."""

    KIND = Kind.STATS
    kernel_drops: dict[str, int] = field(default_factory=dict)  # ring-buffer reserve failures
    probe_drops: dict[str, int] = field(default_factory=dict)  # probe queue full
    records: dict[str, int] = field(default_factory=dict)  # records read from the ring buffer
    # verdicts the probe could not make from the host, by kind (VERDICTS_MISSED): blind spots
    verdicts_missed: dict[str, int] = field(default_factory=dict)


@dataclass(slots=True)
class Container(Event):
    """A container, as the probe resolved it from a process's cgroup path and the runtime's and
    kubelet's APIs (sensor/containers/model.py); sent before the first event that names it, and
    again when what is known changes."""

    KIND = Kind.CONTAINER
    key: str = ""  # runtime:id, or pod:UID for a pod-level cgroup
    runtime: str = ""
    id: str = ""
    name: str = ""
    image: str = ""
    pod_uid: str = ""
    pod_name: str = ""
    pod_namespace: str = ""
    container_name: str = ""
    gpus: list[str] = field(default_factory=list)


@dataclass(slots=True)
class End(Event):
    """The probe's last frame: it stopped on purpose. A stream that ends without it was cut
    (the probe died), and the aggregator records the blind time that follows."""

    KIND = Kind.END
    reason: str = ""  # why it stopped, e.g. "stopped by SIGTERM"


# What each kind of missed verdict means, for status and output.
VERDICTS_MISSED = {
    "route_by_range": "connections judged by address ranges (their namespace's routing table could not be read)",
    "binary_unread": "execs whose binary could not be read to identify it (process and file gone)",
    "container_unnamed": "containers whose name and image the runtime's API did not give (failed or over budget)",
    "container_unread": "execs whose cgroup could not be read (process gone): they keep the container they were in",
    "pod_gpus_unread": "Kubernetes containers whose GPUs the kubelet's pod-resources API did not give (it failed)",
    "ssh_config_unread": "execs of ssh whose configuration files could not be read (process gone): argv only",
    "launch_unwatched": "launch-watch requests not served: this kernel cannot attach uprobes (see doctor)",
    "launch_request_invalid": "launch-watch requests the probe could not read (not a pid and start time)",
}


class GpuKind(IntEnum):
    """What kind of NVIDIA device an fd is (enum gpu_kind in sensor/bpf/events.h)."""

    NONE = 0
    CTL = 1  # /dev/nvidiactl
    DEV = 2  # /dev/nvidiaN
    UVM = 3  # /dev/nvidia-uvm
    UVM_TOOLS = 4
    MODESET = 5
    OTHER = 6


class GpuReason(IntEnum):
    """Why a GPU ioctl had a record of its own (enum gpu_reason in sensor/bpf/events.h)."""

    ALLOC = 1
    ALLOC_FAILED = 2
    FREE = 3
    CONTROL = 4
    UVM = 5
    FIRST_USE = 6


GPU_XFER = 0x1  # gpu_ioctl flags: followed through IOCTL_XFER_CMD
GPU_STATUS_READ = 0x2
GPU_BY_NAME = 0x4  # the device was recognised by its name only, not its device number


@dataclass(slots=True)
class GpuOpen(Event):
    KIND = Kind.GPU_OPEN
    fd: int
    kind: int  # GpuKind
    minor: int
    by_name: bool  # recognised by name (a fake driver's file), not by device number


@dataclass(slots=True)
class GpuIoctl(Event):
    """An ioctl on an NVIDIA device that mattered; every other one is only counted."""

    KIND = Kind.GPU_IOCTL
    reason: int  # GpuReason
    kind: int  # GpuKind
    fd: int
    minor: int
    cmd: int
    nr: int  # RM escape number, or the UVM command
    size: int
    ret: int  # 0 or -errno
    status: int  # RM / UVM status
    h_root: int
    h_parent: int
    h_object: int
    h_class: int
    ctrl_cmd: int
    param0: int
    param1: int
    uuid: bytes
    flags: int


@dataclass(slots=True)
class GpuCount:
    """Totals for one (process, device kind, command), from the in-kernel aggregation."""

    tgid: int
    kind: int
    cmd_id: int
    calls: int
    errors: int
    suppressed: int  # records the process's budget held back
    last_ts: int


# Memory families of the in-kernel memory totals (enum gpu_mem_family in sensor/bpf/events.h).
GPU_MEM_FAMILIES = ("device", "system", "registered", "virtual", "fabric", "uvm")


@dataclass(slots=True)
class GpuMemory:
    """One process's memory allocated through the driver, by family (GPU_MEM_FAMILIES order), as
    totals since it began; held is allocated - freed."""

    tgid: int
    allocated: list[int]  # bytes
    freed: list[int]  # bytes of those allocations freed since, matched by handle
    allocs: list[int]
    frees: list[int]
    peak_device: int  # most device memory held at once
    untracked: int  # allocations whose handle the kernel could not keep (their free is not subtracted)
    last_ts: int

    def held(self, family: str) -> int:
        index = GPU_MEM_FAMILIES.index(family)
        return max(self.allocated[index] - self.freed[index], 0)


@dataclass(slots=True)
class GpuCounters(Event):
    """The in-kernel GPU ioctl counters that changed since the last read, as totals."""

    KIND = Kind.GPU_COUNTERS
    counts: list[list[int]] = field(default_factory=list)  # GpuCount fields, in order
    overflow: int = 0  # calls not counted: the kernel map was full
    # GpuMemory rows that changed: tgid, allocated[], freed[], allocs[], frees[], peak_device,
    # untracked, last_ts (the lists in GPU_MEM_FAMILIES order)
    memory: list[list[Any]] = field(default_factory=list)
    memory_overflow: int = 0  # allocations not summed: the kernel's memory map was full

    def entries(self) -> list[GpuCount]:
        return [GpuCount(*row) for row in self.counts]

    def memory_entries(self) -> list[GpuMemory]:
        return [GpuMemory(*row) for row in self.memory]


@dataclass(slots=True)
class SockBytes(Event):
    """TCP sockets whose byte counts changed since the last read (sensor/bpf/net.bpf.c, sock_bytes).

    Each row: [sock, tgid, sent, received, last_ts, closed]: totals since the socket was
    established (or since the probe started, for one that was open before), the process that sent
    or received last, and whether the socket has closed (its last row)."""

    KIND = Kind.SOCK_BYTES
    rows: list[list[int]] = field(default_factory=list)
    not_counted: int = 0  # sends and receives the kernel could not count: its map was full (total)
    closed_lost: int = 0  # closed sockets whose final counts were lost: the probe read too late (total)


@dataclass(slots=True)
class LaunchWatch(Event):
    """What became of a request to count a process's kernel launches (sensor/probe/launches.py).
    Made by the probe; tgid is the process watched."""

    KIND = Kind.LAUNCH_WATCH
    start_ns: int = 0
    state: str = ""  # watching, refused, ended
    reason: str = ""  # why refused or ended (LAUNCH_WATCH_REASONS); "" while watching
    library: str = ""  # the libcuda file watched, as the process maps it (a path it controls)
    detail: str = ""  # what the kernel answered, when it would not attach


@dataclass(slots=True)
class LaunchCounts(Event):
    """A watched process's launch counts since its watch began (totals), from the kernel's map.
    Made by the probe; tgid is the process watched."""

    KIND = Kind.LAUNCH_COUNTS
    start_ns: int = 0
    launches: int = 0  # cuLaunchKernel calls
    launches_ex: int = 0  # cuLaunchKernelEx calls
    distinct: int = 0  # distinct kernel functions launched (up to the probe's cap)
    unrecorded: int = 0  # launches of functions past that cap
    since_ns: int = 0  # when the watch began (boot clock)


# A request for a launch watch, from the aggregator to the probe on a pipe of their own: a process
# by pid and start time (ns since boot), nothing else (sensor/probe/launches.py checks it).
LAUNCH_REQUEST = struct.Struct("<QQ")

# Why a launch watch was refused or ended, for status and output.
LAUNCH_WATCH_REASONS = {
    "not running": "refused: no process with that PID and start time",
    "no libcuda": "refused: the process maps no libcuda",
    "no entry points": "refused: its libcuda exports no launch entry point we could read",
    "watched before": "refused: the process was watched already (a watch is never renewed)",
    "at capacity": "refused: as many processes as allowed are watched now",
    "attach failed": "refused: the kernel would not attach the uprobes",
    "library on a stalling filesystem": "refused: its libcuda is on FUSE or a network filesystem, whose reads could "
                                        "hang the probe",
    "exit": "ended: the process exited",
    "duration": "ended: the watch's time was up",
    "hit budget": "ended: more launches a second than the budget allows (each costs the process a trap)",
    "stopped": "ended: the probe stopped",
}


# Made by the probe in user space, not by a monitored process: their tgid is the probe's.
PROBE_MADE: tuple[type[Event], ...] = (Proc, Stats, GpuCounters, End, Container, SockBytes)

EVENT_TYPES: dict[int, type[Event]] = {
    cls.KIND: cls
    for cls in (Exec, Fork, Exit, Connect, TcpEstablished, Accept, Proc, Stats, GpuOpen, GpuIoctl, GpuCounters, End,
                Container, SockBytes, LaunchWatch, LaunchCounts)
}

_FIELDS: dict[type[Event], tuple[str, ...]] = {
    cls: tuple(f.name for f in dataclasses.fields(cls)) for cls in EVENT_TYPES.values()
}
# Every field of an event in one call (each event has at least ts, tgid and tid: a tuple).
_GETTERS: dict[type[Event], Callable[[Event], tuple[Any, ...]]] = {
    cls: operator.attrgetter(*names) for cls, names in _FIELDS.items()
}


# How many leading fields each frame must carry: fields are only ever appended, with defaults,
# so a frame written before a field existed decodes with its default (Exec.container, say).
_REQUIRED: dict[type[Event], int] = {
    cls: sum(1 for f in dataclasses.fields(cls)
             if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING)
    for cls in EVENT_TYPES.values()
}


class FrameError(ValueError):
    """A frame that does not decode to a known event."""


def to_list(event: Event) -> list[Any]:
    return [int(event.KIND), *_GETTERS[type(event)](event)]


def encode(event: Event) -> bytes:
    payload: bytes = msgpack.packb(to_list(event), use_bin_type=True)
    return payload


# Per kind: its class, and the fewest and most fields a frame of it carries (one lookup per frame).
_SHAPES: dict[int, tuple[type[Event], int, int]] = {
    kind: (cls, _REQUIRED[cls], len(_FIELDS[cls])) for kind, cls in EVENT_TYPES.items()
}


def from_list(item: Any) -> Event:
    if not isinstance(item, list) or not item or not isinstance(item[0], int):
        raise FrameError("a frame is not an array beginning with an event kind")
    shape = _SHAPES.get(item[0])
    if shape is None:
        raise FrameError(f"unknown event kind {item[0]}")
    cls, required, most = shape
    if not required <= len(item) - 1 <= most:
        raise FrameError(f"{cls.__name__} frame has {len(item) - 1} fields, expected {most}")
    return cls(*item[1:])


def decode(payload: bytes) -> Event:
    try:
        item = msgpack.unpackb(payload, raw=False, strict_map_key=False)
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
        raise FrameError(f"not msgpack: {exc}") from exc
    return from_list(item)


def to_json_dict(event: Event) -> dict[str, Any]:
    """A JSON-safe view: bytes shown as text with undecodable bytes escaped."""
    out: dict[str, Any] = {"kind": KIND_NAMES[event.KIND]}
    for name in _FIELDS[type(event)]:
        out[name] = _jsonable(getattr(event, name))
    return out


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return text(value)
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return value
