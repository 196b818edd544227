"""Read the recorder's logs (tests/gpu_trace/recorder.c) and turn them into replay fixtures.

    python -m tests.gpu_trace.trace summary LOG [LOG ...]      counts, classes, statuses, sizes (JSON)
    python -m tests.gpu_trace.trace dump LOG [--limit N]       one line per record
    python -m tests.gpu_trace.trace convert LOG [LOG ...] --name N --arch hopper --driver 580.x \\
        --out tests/fixtures/gpu/N.yaml [--source TEXT] [--max-steps 20000]

The log format is documented at the top of recorder.c and in README.md next to this file.
A fixture written by `convert` passes `sensor.fakegpu.fixtures.load()`.
"""

from __future__ import annotations

import argparse
import errno as errno_mod
import json
import os
import re
import struct
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sensor.errors import GpusentryError
from sensor.fakegpu import abi

MAGIC = b"GSTRACE1"
VERSION = 1
FILE_HEAD = struct.Struct("<8sII")
RECORD = struct.Struct("<IHHQiiiIQII")  # record_len, kind, flags, t_ns, fd, ret, errno, cmd, arg, before, after
BLOCK = struct.Struct("<IIIIQ")  # block_kind, requested, len_before, len_after, ptr
assert RECORD.size == 48 and BLOCK.size == 24

OPEN, CLOSE, IOCTL, MMAP = 1, 2, 3, 4
KIND_NAMES = {OPEN: "open", CLOSE: "close", IOCTL: "ioctl", MMAP: "mmap"}
F_XFER_INNER, F_PARAMS, F_DISCOVERED, F_VIA_SYSCALL, F_PARTIAL, F_MAJOR195 = 0x1, 0x2, 0x4, 0x8, 0x10, 0x20
B_XFER_INNER, B_PARAMS, B_INNER_PARAMS = 1, 2, 3
DEVICE_KINDS = {1: "nvidiactl", 2: "nvidia<N>", 3: "nvidia-uvm", 4: "nvidia-uvm-tools", 5: "nvidia-modeset",
                6: "nvidia-caps", 7: "major 195"}
UVM_KINDS = {3, 4}

# Names for the summary beyond what the fake driver models (NVIDIA-ABI.md's tables).
EXTRA_ESCAPES = {0x28: "RM_ALLOC_OBJECT", 0x41: "RM_IDLE_CHANNELS", 0x4D: "RM_ACCESS_REGISTRY",
                 0x52: "RM_GET_EVENT_DATA", 0x54: "RM_ALLOC_CONTEXT_DMA2", 0x59: "RM_BIND_CONTEXT_DMA",
                 0x5E: "RM_UPDATE_DEVICE_MAPPING_INFO", 0xD8: "SET_NUMA_STATUS", 0xD9: "EXPORT_TO_DMABUF_FD"}
UVM_NAMES = {value: name for name, value in abi.UVM_COMMANDS.items()} | {
    23: "CREATE_RANGE_GROUP", 24: "DESTROY_RANGE_GROUP", 26: "UNREGISTER_GPU_VASPACE", 38: "UNREGISTER_GPU",
    51: "MIGRATE", 71: "POPULATE_PAGEABLE", 72: "VALIDATE_VA_RANGE"}
NR_ALLOC, NR_FREE, NR_CONTROL, NR_XFER = 0x2B, 0x29, 0x2A, 0xD3
STATUS_AT = {NR_FREE: 12, NR_CONTROL: 28}  # RM_ALLOC: abi.ALLOC_STATUS_AT by size
CLIENT_CLASSES = {0x0, 0x1, 0x41}
PERF_BOOST = 0x2080200A
DEFAULT_MAX_STEPS = 20_000


class TraceError(GpusentryError):
    """A log that cannot be read."""


@dataclass(frozen=True)
class Block:
    kind: int
    requested: int
    ptr: int
    before: bytes
    after: bytes


@dataclass
class Record:
    offset: int  # of the record in the file
    kind: int
    flags: int
    t_ns: int
    fd: int
    ret: int
    errno: int
    cmd: int
    arg: int
    before: bytes
    after: bytes
    blocks: list[Block] = field(default_factory=list)
    device: str = "?"  # the path the fd was opened on (from the open record before it)
    device_kind: int = 0

    @property
    def kind_name(self) -> str:
        return KIND_NAMES.get(self.kind, str(self.kind))

    @property
    def path(self) -> str:
        """An open record's path."""
        return self.before.split(b"\0", 1)[0].decode(errors="replace")

    @property
    def device_name(self) -> str:
        return self.device.rsplit("/", 1)[-1]

    def block(self, kind: int) -> Block | None:
        return next((b for b in self.blocks if b.kind == kind), None)

    def call_name(self) -> str:
        """The ioctl's name: a UVM command, an escape, or the number."""
        if self.device_kind in UVM_KINDS:
            return UVM_NAMES.get(self.cmd, f"UVM_{self.cmd}")
        if abi.ioc_type(self.cmd) == abi.NV_IOCTL_MAGIC:
            nr = abi.ioc_nr(self.cmd)
            return abi.ESCAPE_BY_NR.get(nr) or EXTRA_ESCAPES.get(nr) or f"ESC_0x{nr:02X}"
        return f"IOCTL_0x{self.cmd:08X}"


@dataclass
class Trace:
    path: Path
    version: int
    header: dict[str, Any]
    records: list[Record]
    truncated_at: int | None = None  # read with allow_truncated: where the last, partial record began

    @property
    def pid(self) -> int:
        return int(self.header.get("pid", 0))

    def ioctls(self) -> list[Record]:
        return [r for r in self.records if r.kind == IOCTL]


def read_trace(path: Path | str, allow_truncated: bool = False) -> Trace:
    """Parse a log; a truncated or corrupt one raises TraceError naming the byte offset.
    With `allow_truncated`, a log cut short inside its last record (a copy limited in size,
    a full disk) gives the records before the cut, and `Trace.truncated_at` says where."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise TraceError(f"cannot read trace {path}: {exc.strerror}") from exc

    def fail(offset: int, what: str) -> TraceError:
        return TraceError(f"{path}: corrupt trace at byte offset {offset}: {what}",
                          "record again; a log cut short by a killed process loses only its last record")

    if len(data) < FILE_HEAD.size:
        raise fail(0, f"truncated file header ({len(data)} of {FILE_HEAD.size} bytes)")
    magic, version, header_len = FILE_HEAD.unpack_from(data)
    if magic != MAGIC:
        raise fail(0, f"bad magic {magic!r}, not {MAGIC!r}")
    if version != VERSION:
        raise fail(8, f"version {version}, this reader knows {VERSION}")
    if FILE_HEAD.size + header_len > len(data):
        raise fail(12, f"truncated header: header_len {header_len} but {len(data) - FILE_HEAD.size} bytes left")
    try:
        header = json.loads(data[FILE_HEAD.size:FILE_HEAD.size + header_len].decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise fail(FILE_HEAD.size, f"header is not UTF-8 JSON ({exc})") from exc
    if not isinstance(header, dict):
        raise fail(FILE_HEAD.size, "header is not a JSON object")

    records: list[Record] = []
    devices: dict[int, tuple[str, int]] = {}
    offset = FILE_HEAD.size + header_len
    truncated_at = None
    while offset < len(data):
        if allow_truncated and _cut_short(data, offset):
            truncated_at = offset
            break
        records.append(_record(data, offset, fail))
        record = records[-1]
        if record.kind == OPEN:
            if record.fd >= 0:
                devices[record.fd] = (record.path, record.cmd)
            record.device, record.device_kind = record.path, record.cmd
        else:
            record.device, record.device_kind = devices.get(record.fd, ("?", 0))
            if record.kind == CLOSE and record.ret == 0:
                devices.pop(record.fd, None)
        offset += _u32(data, offset)
    return Trace(path, version, header, records, truncated_at)


def _cut_short(data: bytes, offset: int) -> bool:
    left = len(data) - offset
    return left < RECORD.size or _u32(data, offset) > left


def _u32(data: bytes, offset: int) -> int:
    return int(struct.unpack_from("<I", data, offset)[0])


def _record(data: bytes, offset: int, fail: Any) -> Record:
    left = len(data) - offset
    if left < RECORD.size:
        raise fail(offset, f"truncated record header ({left} of {RECORD.size} bytes)")
    length, kind, flags, t_ns, fd, ret, err, cmd, arg, n_before, n_after = RECORD.unpack_from(data, offset)
    if length < RECORD.size:
        raise fail(offset, f"record_len {length} is shorter than the {RECORD.size}-byte record header")
    if length > left:
        raise fail(offset, f"truncated record: record_len {length} but only {left} bytes left")
    if kind not in KIND_NAMES:
        raise fail(offset + 4, f"unknown record kind {kind}")
    end = offset + length
    at = offset + RECORD.size
    if at + n_before + n_after > end:
        raise fail(offset + 40, f"size_before {n_before} + size_after {n_after} overrun record_len {length}")
    before, after = data[at:at + n_before], data[at + n_before:at + n_before + n_after]
    at += n_before + n_after
    blocks = []
    while at < end:
        if not flags & (F_XFER_INNER | F_PARAMS):
            raise fail(at, f"{end - at} bytes after the record's data but no block flag")
        if end - at < BLOCK.size:
            raise fail(at, f"truncated block header ({end - at} of {BLOCK.size} bytes)")
        block_kind, requested, b_before, b_after, ptr = BLOCK.unpack_from(data, at)
        if at + BLOCK.size + b_before + b_after > end:
            raise fail(at, f"block of {b_before}+{b_after} bytes overruns the record (ends at {end})")
        start = at + BLOCK.size
        blocks.append(Block(block_kind, requested, ptr, data[start:start + b_before],
                            data[start + b_before:start + b_before + b_after]))
        at = start + b_before + b_after
    return Record(offset, kind, flags, t_ns, fd, ret, err, cmd, arg, before, after, blocks)


# -- RM calls ---------------------------------------------------------------------------------


@dataclass
class RmCall:
    """An RM call, direct or the inner call of an IOCTL_XFER_CMD."""

    nr: int
    before: bytes
    after: bytes
    params: Block | None
    via_xfer: bool

    @property
    def size(self) -> int:
        return len(self.before)

    def status(self) -> int | None:
        at = abi.ALLOC_STATUS_AT.get(self.size) if self.nr == NR_ALLOC else STATUS_AT.get(self.nr)
        if at is None or len(self.after) < at + 4:
            return None
        return int(struct.unpack_from("<I", self.after, at)[0])

    def u32(self, at: int, after: bool = False) -> int:
        data = self.after if after else self.before
        return int(struct.unpack_from("<I", data, at)[0]) if len(data) >= at + 4 else 0


def rm_call(record: Record) -> RmCall | None:
    if record.kind != IOCTL or record.device_kind in UVM_KINDS or abi.ioc_type(record.cmd) != abi.NV_IOCTL_MAGIC:
        return None
    nr = abi.ioc_nr(record.cmd)
    if nr == NR_XFER:
        inner = record.block(B_XFER_INNER)
        if inner is None or len(record.before) < abi.XFER.size:
            return None
        inner_nr = abi.XFER.unpack_from(record.before)[0] & 0xFF
        return RmCall(inner_nr, inner.before, inner.after, record.block(B_INNER_PARAMS), True)
    return RmCall(nr, record.before, record.after, record.block(B_PARAMS), False)


def _hex(value: int) -> str:
    return f"0x{value:X}"


# -- summary ----------------------------------------------------------------------------------


def _errno_name(value: int) -> str:
    return errno_mod.errorcode.get(value, str(value))


@dataclass
class _Summary:
    order_limit: int
    calls: dict[str, Counter[str]] = field(default_factory=dict)
    sizes: dict[str, set[int]] = field(default_factory=dict)
    errors: dict[str, Counter[str]] = field(default_factory=dict)
    statuses: dict[str, Counter[str]] = field(default_factory=dict)
    classes: Counter[str] = field(default_factory=Counter)
    classes_failed: Counter[str] = field(default_factory=Counter)
    controls: Counter[str] = field(default_factory=Counter)
    xfer_inner: Counter[str] = field(default_factory=Counter)
    boosts: list[dict[str, str]] = field(default_factory=list)
    mmaps: dict[str, Counter[int]] = field(default_factory=dict)
    check_version: dict[str, Any] = field(default_factory=dict)
    devices: list[dict[str, Any]] = field(default_factory=list)
    order: list[str] = field(default_factory=list)
    flags: Counter[str] = field(default_factory=Counter)

    def add(self, r: Record) -> None:
        if r.flags & F_PARTIAL:
            self.flags["partial_copies"] += 1
        if r.flags & F_VIA_SYSCALL:
            self.flags["via_syscall"] += 1
        if r.kind == OPEN:
            rdev = int(struct.unpack_from("<Q", r.after)[0]) if len(r.after) >= 8 else 0
            self.devices.append({"fd": r.fd, "path": r.path, "kind": DEVICE_KINDS.get(r.cmd, str(r.cmd)),
                                 "rdev": f"{os.major(rdev)}:{os.minor(rdev)}",
                                 "discovered": bool(r.flags & F_DISCOVERED),
                                 **({"errno": _errno_name(r.errno)} if r.ret < 0 else {})})
            self._order(f"open {r.path}" + (f" -> {_errno_name(r.errno)}" if r.ret < 0 else ""))
        elif r.kind == MMAP:
            self.mmaps.setdefault(r.device_name, Counter())[r.arg] += 1
            self._order(f"mmap {r.device_name} {r.arg:#x}")
        elif r.kind == CLOSE:
            self._order(f"close {r.device_name}")
        else:
            self._ioctl(r)

    def _order(self, line: str) -> None:
        if len(self.order) < self.order_limit:
            self.order.append(line)

    def _ioctl(self, r: Record) -> None:
        name = r.call_name()
        self.calls.setdefault(r.device_name, Counter())[name] += 1
        if r.device_kind not in UVM_KINDS:
            self.sizes.setdefault(name, set()).add(abi.ioc_size(r.cmd))
        if r.ret < 0:
            self.errors.setdefault(name, Counter())[_errno_name(r.errno)] += 1
        label = name
        call = rm_call(r)
        if call is not None:
            label = self._rm(r, call, label)
        self._order(f"{r.device_name} {label}" + (f" -> {_errno_name(r.errno)}" if r.ret < 0 else ""))

    def _rm(self, r: Record, call: RmCall, label: str) -> str:
        inner = abi.ESCAPE_BY_NR.get(call.nr) or EXTRA_ESCAPES.get(call.nr) or f"ESC_0x{call.nr:02X}"
        if call.via_xfer:
            self.xfer_inner[inner] += 1
            self.sizes.setdefault(f"{inner} (in XFER)", set()).add(call.size)
            label = f"XFER({inner})"
        status = call.status()
        if status is not None and r.ret == 0:
            self.statuses.setdefault(inner, Counter())[_hex(status)] += 1
        if call.nr == NR_ALLOC and call.size >= 16:
            klass = call.u32(12)
            if klass == 0x5 and call.params is not None and len(call.params.before) >= 12:
                klass = int(struct.unpack_from("<I", call.params.before, 8)[0])  # NV01_EVENT: its own class
            (self.classes if r.ret == 0 and status == 0 else self.classes_failed)[_hex(klass)] += 1
            label += f" {_hex(klass)}"
        elif call.nr == NR_CONTROL and call.size >= 12:
            cmd = call.u32(8)
            self.controls[_hex(cmd)] += 1
            label += f" {_hex(cmd)}"
            if cmd == PERF_BOOST and call.params is not None and len(call.params.before) >= 8:
                boost_flags, duration = abi.PERF_BOOST_PARAMS.unpack_from(call.params.before)
                self.boosts.append({"flags": _hex(boost_flags), "duration": _hex(duration)})
        elif call.nr == abi.ESCAPES["CHECK_VERSION_STR"][0] and len(call.before) >= 72:
            self.check_version = {
                "version_string": call.before[8:72].split(b"\0", 1)[0].decode(errors="replace"),
                "reply": call.u32(4, after=True)}
        return label


def summary(trace: Trace, order_limit: int = 300) -> dict[str, Any]:
    """What a later session compares with NVIDIA-ABI.md: counts by escape/command per device,
    sizes seen per escape, classes allocated, statuses, controls, UVM commands, the order of
    the first `order_limit` calls."""
    s = _Summary(order_limit)
    for record in trace.records:
        s.add(record)
    t = [r.t_ns for r in trace.records]
    per_second: Counter[int] = Counter((r.t_ns - t[0]) // 1_000_000_000 for r in trace.ioctls()) if t else Counter()
    return {
        "file": str(trace.path), "pid": trace.pid, "truncated_at": trace.truncated_at,
        "argv": trace.header.get("argv", [trace.header.get("argv0")]),
        "uname": trace.header.get("uname"),
        "records": dict(Counter(r.kind_name for r in trace.records)),
        "duration_s": round((max(t) - min(t)) / 1e9, 3) if t else 0.0,
        # ioctls in each second from the first record: a compute loop should show none after init
        "ioctls_per_second": [per_second[i] for i in range(max(per_second, default=-1) + 1)],
        "devices": s.devices,
        "calls": {device: dict(c.most_common()) for device, c in sorted(s.calls.items())},
        "sizes": {name: sorted(v) for name, v in sorted(s.sizes.items())},
        "errors": {name: dict(c) for name, c in sorted(s.errors.items())},
        "statuses": {name: dict(c.most_common()) for name, c in sorted(s.statuses.items())},
        "classes_allocated": dict(s.classes.most_common()), "classes_failed": dict(s.classes_failed.most_common()),
        "controls": dict(s.controls.most_common()), "xfer_inner": dict(s.xfer_inner), "perf_boost": s.boosts,
        "mmaps": {device: {_hex(length): n for length, n in c.most_common()} for device, c in s.mmaps.items()},
        "check_version": s.check_version, "partial_copies": s.flags["partial_copies"],
        "via_syscall": s.flags["via_syscall"],
        "order": s.order,
    }


# -- fixtures ---------------------------------------------------------------------------------

REPLAYABLE = {"nvidiactl": "ctl", "nvidia0": "gpu", "nvidia-uvm": "uvm"}
HEX_KEYS = {"class", "cmd", "handle", "parent", "object", "event_class", "channel", "flags", "duration"}
PLAIN = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")
YAML_WORDS = {"y", "n", "yes", "no", "on", "off", "true", "false", "null"}


class _Converter:
    """One trace's calls as fixture steps, with names for its fds and handles."""

    def __init__(self, trace: Trace, prefix: str, steps: list[dict[str, Any]], max_steps: int,
                 skipped: Counter[str]) -> None:
        self.trace, self.prefix, self.steps, self.max_steps, self.skipped = trace, prefix, steps, max_steps, skipped
        self.fds: dict[int, str] = {}
        self.fd_names: Counter[str] = Counter()
        self.names: dict[int, str] = {}
        self.current_client = 0
        clients = [c for c in (self._client_alloc(r) for r in trace.records) if c]
        self.client_names = ({clients[0]: "client"} if len(clients) == 1 else
                             {h: f"{prefix}client_{i + 1}" for i, h in enumerate(dict.fromkeys(clients))})
        self.truncated = 0

    @staticmethod
    def _client_alloc(record: Record) -> int:
        call = rm_call(record)
        if call is None or call.nr != NR_ALLOC or call.size < 16 or record.ret != 0 or call.status() != 0:
            return 0
        return call.u32(8, after=True) if call.u32(12) in CLIENT_CLASSES else 0

    def name(self, handle: int) -> str | int:
        if handle in self.client_names:
            return self.client_names[handle]
        return self.names.get(handle, handle)

    def add(self, step: dict[str, Any]) -> None:
        if len(self.steps) < self.max_steps:
            self.steps.append(step)
        else:
            self.truncated += 1

    def run(self) -> None:
        for record in self.trace.records:
            if record.kind == OPEN:
                self._open(record)
            elif record.kind == CLOSE:
                if record.fd in self.fds and record.ret == 0:
                    self.add({"close": {"fd": self.fds.pop(record.fd)}})
            elif record.kind == MMAP:
                self.skipped["mmap (no fixture operation)"] += 1
            elif record.fd not in self.fds:
                self.skipped[f"ioctl on {record.device_name} (the fake serves nvidiactl, nvidia0, nvidia-uvm)"] += 1
            elif record.device_kind in UVM_KINDS:
                self._uvm(record)
            else:
                self._rm(record)

    def _open(self, record: Record) -> None:
        if record.ret < 0:
            self.skipped[f"failed open of {record.path}"] += 1
            return
        dev = record.device_name
        if record.cmd == 2 and dev not in REPLAYABLE:
            self.skipped[f"{dev} opened as nvidia0"] += 1
            dev = "nvidia0"
        if dev not in REPLAYABLE:
            self.skipped[f"open of {record.path}"] += 1
            return
        base = self.prefix + REPLAYABLE[dev]
        self.fd_names[base] += 1
        name = base if self.fd_names[base] == 1 else f"{base}_{self.fd_names[base]}"
        if record.flags & F_DISCOVERED:
            self.skipped["descriptors first seen in a call (dup, fork, exec), replayed as opens"] += 1
        self.fds[record.fd] = name
        self.add({"open": {"dev": dev, "as": name}})

    def _uvm(self, record: Record) -> None:
        command = next((n for n, v in abi.UVM_COMMANDS.items() if v == record.cmd), None)
        if command is None:
            self.skipped[f"UVM command {UVM_NAMES.get(record.cmd, record.cmd)} (not in abi.UVM_COMMANDS)"] += 1
            return
        args: dict[str, Any] = {"fd": self.fds[record.fd], "cmd": command}
        if command == "REGISTER_CHANNEL" and len(record.before) >= 28:  # {uuid, rmCtrlFd, hClient, hChannel}
            args["channel"] = self.name(int(struct.unpack_from("<I", record.before, 24)[0]))
        self.add({"uvm": args})

    def _rm(self, record: Record) -> None:
        fd = self.fds[record.fd]
        nr = abi.ioc_nr(record.cmd) if abi.ioc_type(record.cmd) == abi.NV_IOCTL_MAGIC else -1
        if nr == NR_XFER:
            call = rm_call(record)
            if call is None or call.nr not in (NR_ALLOC, NR_FREE, NR_CONTROL):
                inner = abi.ESCAPE_BY_NR.get(call.nr, f"0x{call.nr:02X}") if call else "unknown"
                self.skipped[f"IOCTL_XFER_CMD wrapping {inner}"] += 1
                return
            step = self._rm_step(record, call)
            if step:
                op, inner_args = next(iter(step.items()))
                inner_args.pop("fd")
                self.add({"xfer": {"fd": fd, "step": {op: inner_args}}})
            return
        if nr in (NR_ALLOC, NR_FREE, NR_CONTROL):
            call = rm_call(record)
            assert call is not None
            step = self._rm_step(record, call)
            if step:
                self.add(step)
            return
        name = abi.ESCAPE_BY_NR.get(nr) if nr >= 0 else None
        if name is None:
            self.skipped[f"escape {EXTRA_ESCAPES.get(nr) or _hex(record.cmd)} (not modelled by the fake)"] += 1
            return
        size = abi.ioc_size(record.cmd)
        sizes = abi.ESCAPES[name][1]
        args: dict[str, Any] = {"fd": fd, "esc": name}
        if size and (sizes is None or size != sizes[0]):
            args["size"] = size
        self.add({"frontend": args})

    def _rm_step(self, record: Record, call: RmCall) -> dict[str, Any] | None:
        fd = self.fds[record.fd]
        if call.size < 16:
            self.skipped[f"{abi.ESCAPE_BY_NR.get(call.nr)} of {call.size} bytes"] += 1
            return None
        ok = record.ret == 0 and call.status() == 0
        if call.nr == NR_ALLOC:
            root, parent, new_before, klass = (call.u32(0), call.u32(4), call.u32(8), call.u32(12))
            new_after = call.u32(8, after=True)
            args: dict[str, Any] = {"fd": fd}
            if klass in CLIENT_CLASSES:
                args["class"] = klass
                if ok:
                    args["as"] = self.name(new_after)
                    self.current_client = new_after
                if new_before:
                    args["handle"] = new_before
            else:
                self._check_client(root)
                args |= {"parent": self.name(parent), "class": klass}
                if ok and new_after:
                    self.names.setdefault(new_after, f"{self.prefix}h_{new_after:08x}")
                    args["as"] = self.names[new_after]
                args["handle"] = new_before
                params = call.params.before if call.params is not None else b""
                if klass == 0x80 and len(params) >= 4:
                    args["device_id"] = int(struct.unpack_from("<I", params)[0])
                if klass == 0x5 and len(params) >= 12:
                    args["event_class"] = int(struct.unpack_from("<I", params, 8)[0])
            if call.size != 48:
                args["size"] = call.size
            return {"alloc": args}
        if call.nr == NR_FREE:
            root, parent, old = call.u32(0), call.u32(4), call.u32(8)
            self._check_client(root)
            return {"free": {"fd": fd, "object": self.name(old), "parent": self.name(parent)}}
        client, obj, cmd = call.u32(0), call.u32(4), call.u32(8)
        self._check_client(client)
        args = {"fd": fd, "object": self.name(obj), "cmd": cmd}
        if cmd == PERF_BOOST and call.params is not None and len(call.params.before) >= 8:
            boost_flags, duration = abi.PERF_BOOST_PARAMS.unpack_from(call.params.before)
            args["boost"] = {"flags": boost_flags, "duration": duration}
        return {"control": args}

    def _check_client(self, root: int) -> None:
        if root != self.current_client:
            self.skipped["RM calls on a client other than the latest one (replayed under the latest: "
                         "the fixture format has no client argument)"] += 1


def to_fixture(traces: list[Trace], name: str, arch: str, driver: str, source: str,
               max_steps: int = DEFAULT_MAX_STEPS) -> dict[str, Any]:
    """Traces as one fixture (`sensor.fakegpu.fixtures` format 1): each trace's calls in order,
    the second and later traces' names prefixed p2_, p3_, ...; mmaps, unknown escapes and UVM
    commands the fake does not model are left out and counted in `models`."""
    steps: list[dict[str, Any]] = []
    skipped: Counter[str] = Counter()
    lines = []
    truncated = 0
    for index, trace in enumerate(traces):
        converter = _Converter(trace, f"p{index + 1}_" if index else "", steps, max_steps, skipped)
        converter.run()
        truncated += converter.truncated
        uname = trace.header.get("uname") or {}
        argv = " ".join(str(a) for a in trace.header.get("argv", [trace.header.get("argv0", "?")]))
        lines.append(f"{'p' + str(index + 1) + ': ' if len(traces) > 1 else ''}{argv[:200]} (pid {trace.pid}, "
                     f"kernel {uname.get('release', '?')}): {len(trace.ioctls())} ioctls, "
                     f"{len(trace.records)} records")
    if truncated:
        lines.append(f"TRUNCATED: the first {max_steps} steps only; {truncated} more calls were not emitted")
    for what, count in sorted(skipped.items()):
        lines.append(f"not replayed as recorded: {count} x {what}")
    if not steps:
        raise TraceError("no replayable calls in the traces (no open of nvidiactl, nvidia0 or nvidia-uvm)",
                         "check that the recorder saw the process's opens (see `summary`)")
    return {"format": 1, "name": name, "driver": driver, "arch": arch,
            "models": "Recorded with tests/gpu_trace/recorder.c.\n" + "\n".join(lines),
            "source": source, "steps": steps}


def _scalar(key: str, value: Any) -> str:
    if isinstance(value, dict):
        return _flow(value)
    if isinstance(value, bool):
        raise TypeError(f"no booleans in steps ({key})")
    if isinstance(value, int):
        return _hex(value) if key in HEX_KEYS else str(value)
    text = str(value)
    if PLAIN.fullmatch(text) and text.lower() not in YAML_WORDS:
        return text
    return json.dumps(text)


def _flow(mapping: dict[str, Any]) -> str:
    return "{" + ", ".join(f"{k}: {_scalar(k, v)}" for k, v in mapping.items()) + "}"


def _block(key: str, text: str) -> str:
    return f"{key}: |-\n" + "".join(f"  {line}\n" if line else "\n" for line in text.splitlines())


def dump_fixture(fixture: dict[str, Any]) -> str:
    """The fixture as YAML in the style of tests/fixtures/gpu: one flow mapping per step, hex numbers."""
    out = [f"format: {fixture['format']}", f"name: {json.dumps(fixture['name'])}",
           f"driver: {json.dumps(str(fixture['driver']))}", f"arch: {json.dumps(fixture['arch'])}"]
    text = "\n".join(out) + "\n" + _block("models", fixture["models"]) + _block("source", fixture["source"])
    return text + "steps:\n" + "".join(f"  - {op}: {_flow(args)}\n" for step in fixture["steps"]
                                        for op, args in step.items())


def write_fixture(fixture: dict[str, Any], path: Path) -> None:
    path.write_text(dump_fixture(fixture))


# -- CLI --------------------------------------------------------------------------------------


def _dump_line(r: Record) -> str:
    head = f"{r.offset:>9} {r.t_ns / 1e9:14.6f} {r.kind_name:5} fd={r.fd:<3} {r.device_name:14}"
    if r.kind == OPEN:
        return f"{head} {r.path} kind={DEVICE_KINDS.get(r.cmd, r.cmd)} flags={r.flags:#x} ret={r.ret} errno={r.errno}"
    if r.kind == IOCTL:
        extra = f" blocks={[(b.kind, b.requested, len(b.before), len(b.after)) for b in r.blocks]}" if r.blocks else ""
        return (f"{head} {r.call_name():24} cmd={r.cmd:#010x} ret={r.ret} errno={r.errno} "
                f"before={r.before[:32].hex()} after={r.after[:32].hex()}{extra}")
    return f"{head} ret={r.ret} errno={r.errno} arg={r.arg:#x}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.gpu_trace.trace")
    sub = parser.add_subparsers(dest="command", required=True)
    p_summary = sub.add_parser("summary", help="counts, classes, statuses, sizes, order (JSON)")
    p_summary.add_argument("logs", nargs="+", type=Path)
    p_summary.add_argument("--order", type=int, default=300, help="calls kept in `order` (default 300)")
    p_dump = sub.add_parser("dump", help="one line per record")
    p_dump.add_argument("log", type=Path)
    p_dump.add_argument("--limit", type=int, default=0)
    p_convert = sub.add_parser("convert", help="logs to a replay fixture")
    p_convert.add_argument("logs", nargs="+", type=Path)
    p_convert.add_argument("--name", required=True)
    p_convert.add_argument("--arch", required=True, choices=["hopper", "ampere"])
    p_convert.add_argument("--driver", required=True)
    p_convert.add_argument("--source", default="")
    p_convert.add_argument("--max-steps", type=int, default=DEFAULT_MAX_STEPS)
    p_convert.add_argument("--out", type=Path, required=True)
    for p in (p_summary, p_dump, p_convert):
        p.add_argument("--allow-truncated", action="store_true",
                       help="read a log cut short inside its last record up to the cut")
    args = parser.parse_args(argv)
    try:
        if args.command == "summary":
            summaries = [summary(read_trace(log, args.allow_truncated), args.order) for log in args.logs]
            print(json.dumps(summaries[0] if len(summaries) == 1 else summaries, indent=1))
        elif args.command == "dump":
            trace = read_trace(args.log, args.allow_truncated)
            print(json.dumps(trace.header))
            for i, record in enumerate(trace.records):
                if args.limit and i >= args.limit:
                    break
                print(_dump_line(record))
        else:
            traces = [read_trace(log, args.allow_truncated) for log in args.logs]
            source = args.source or ("ioctls recorded with tests/gpu_trace/recorder.c: "
                                     + ", ".join(log.name for log in args.logs))
            fixture = to_fixture(traces, args.name, args.arch, args.driver, source, args.max_steps)
            write_fixture(fixture, args.out)
            from sensor.fakegpu.fixtures import load

            loaded = load(args.out)
            print(f"wrote {args.out}: {len(loaded.steps)} steps")
    except (GpusentryError, OSError) as exc:
        print(f"trace: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
