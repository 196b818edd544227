"""Launch watches: a chosen process's calls to libcuda's launch entry points, counted in the kernel.

Kernel launches make no ioctl, so the driver's ioctl stream cannot say how busy a process
keeps its GPU; libcuda's `cuLaunchKernel` and `cuLaunchKernelEx` can (launches a second,
distinct kernels). But each call then traps into the kernel (bench/launches.py measures it),
so a watch is never host-wide: the aggregator, which owns the state, asks for a process that
is already suspicious (sensor/aggregator/launches.py), and this part of the probe, which has
the privileges, decides whether and how:

- a request is only a (pid, start time) pair, REQUEST bytes on a pipe: the probe checks that
  such a process runs, that it maps a libcuda, and reads that library's entry points from the
  mapped file itself (/proc/PID/map_files, not a path the process names); nothing else in a
  request is read, trusted or run;
- at most `watched` processes at once (the size of the kernel's map too), each for at most
  `duration_s`, and a process is never watched twice;
- each second its counts are read: more hits a second than `hits_per_s` (each costs the
  process a trap), its exit, or its time up detach it at once.
Every outcome is a frame: LaunchWatch (watching, refused or ended, with the reason) and
LaunchCounts (totals since the watch began), and every refusal and end is counted.
"""

from __future__ import annotations

import os
import re
import struct
import threading
from collections import Counter, OrderedDict
from dataclasses import dataclass, field

from sensor import events as ev
from sensor.probe import procfs, uprobes
from sensor.probe.bpfsys import BpfMap
from sensor.probe.elfsym import ElfError, function_offsets
from sensor.probe.features import filesystem_type

WATCH_MAX = 16  # processes watched at once: the kernel map's size (launch.bpf.c)
FUNCS_MAX = 256  # distinct kernel functions recorded per process
REQUEST = ev.LAUNCH_REQUEST  # one request: pid, start time (ns since boot, the process table's)
PID_MAX = 4194304  # the kernel's PID_MAX_LIMIT
REMEMBERED = 4096  # processes watched before, kept so that none is watched twice
# Entry point -> the program that counts it (launch.bpf.c); the _ptsz twins (per-thread default
# stream) take the same arguments.
ENTRY_POINTS = {"cuLaunchKernel": "launch_kernel", "cuLaunchKernel_ptsz": "launch_kernel",
                "cuLaunchKernelEx": "launch_kernel_ex", "cuLaunchKernelEx_ptsz": "launch_kernel_ex"}
_LIBCUDA = re.compile(rb"libcuda\.so(\.[0-9]+)*")
# Filesystems whose reads the process (FUSE) or a server (NFS, CIFS) can stall: reading the library,
# or the kernel reading its first instruction to plant the breakpoint, could then hang the probe.
STALLING_FILESYSTEMS = {0x65735546: "FUSE", 0x6969: "NFS", 0xFF534D42: "CIFS", 0xFE534D42: "SMB2"}
_COUNT = struct.Struct("<QQII")  # struct launch_count
_FUNC_KEY = struct.Struct("<IIQ")  # struct launch_func_key
_U32 = struct.Struct("<I")


@dataclass(frozen=True)
class LaunchBudget:
    watched: int = WATCH_MAX  # processes watched at once (at most WATCH_MAX)
    duration_s: float = 600.0  # how long one process is watched
    # launches a second beyond which the watch ends: each hit costs the process a trap, 1.4 to 22 us
    # here (bench/launches.py), so at most 0.3% to 4.4% of a CPU; a higher rate is training-like
    hits_per_s: int = 2000


@dataclass
class _Watch:
    pid: int
    start_ns: int
    since_ns: int
    library: str
    perf_fds: list[int]
    last: tuple[int, int, int, int] = (0, 0, 0, 0)  # launches, launches_ex, distinct, unrecorded
    last_ts: int = 0


@dataclass
class LaunchStats:
    requests: int = 0
    invalid: int = 0  # request bytes that were not a whole request, or out of range
    refused: Counter[str] = field(default_factory=Counter)
    ended: Counter[str] = field(default_factory=Counter)


class LaunchWatcher:
    """The probe's launch watches; used by one thread at a time (the probe's timer)."""

    def __init__(self, programs: dict[str, int], counts: BpfMap, funcs: BpfMap,
                 budget: LaunchBudget | None = None) -> None:
        self.programs = programs
        self.counts = counts
        self.funcs = funcs
        self.budget = budget or LaunchBudget()
        self.stats = LaunchStats()
        self._watches: dict[int, _Watch] = {}
        self._seen: OrderedDict[tuple[int, int], None] = OrderedDict()
        self._partial = b""
        self.last_attach_error = ""  # the kernel's answer to the last attach that failed

    @property
    def watching(self) -> int:
        return len(self._watches)

    # -- requests ---------------------------------------------------------------------------

    def on_bytes(self, data: bytes, now: int) -> list[ev.LaunchWatch]:
        """Requests as read from the aggregator's pipe (a read may end inside one)."""
        data, self._partial = self._partial + data, b""
        whole = len(data) - len(data) % REQUEST.size
        self._partial = data[whole:]
        out = []
        for start in range(0, whole, REQUEST.size):
            pid, start_ns = REQUEST.unpack_from(data, start)
            if not 0 < pid <= PID_MAX or start_ns <= 0:
                self.stats.invalid += 1
                continue
            out.append(self.request(pid, start_ns, now))
        return out

    def request(self, pid: int, start_ns: int, now: int) -> ev.LaunchWatch:
        """Watch this process if it may be watched: the frame says what became of it."""
        self.stats.requests += 1
        reason, library = self._refusal(pid, start_ns)
        if library is not None:
            reason = self._attach(pid, start_ns, library, now)
        if reason is not None:
            self.stats.refused[reason] += 1
            detail = self.last_attach_error if reason == "attach failed" else ""
            return ev.LaunchWatch(now, pid, pid, start_ns, "refused", reason, detail=detail)
        return ev.LaunchWatch(now, pid, pid, start_ns, "watching", "", self._watches[pid].library)

    def _refusal(self, pid: int, start_ns: int) -> tuple[str | None, tuple[str, str] | None]:
        """Why this process may not be watched, or its libcuda (see _mapped_libcuda)."""
        if (pid, start_ns) in self._seen:
            return "watched before", None
        if len(self._watches) >= min(self.budget.watched, self.counts.max_entries):
            return "at capacity", None
        if not _running(pid, start_ns):
            return "not running", None
        library = _mapped_libcuda(pid)
        return ("no libcuda", None) if library is None else (None, library)

    def _attach(self, pid: int, start_ns: int, library: tuple[str, str], now: int) -> str | None:
        mapped, shown = library
        try:
            with open(mapped, "rb") as file:
                if filesystem_type(file.fileno()) in STALLING_FILESYSTEMS:
                    return "library on a stalling filesystem"
                offsets = function_offsets(file, ENTRY_POINTS)
        except (OSError, ElfError):
            return "no entry points"
        if not offsets:
            return "no entry points"
        self.counts.update(_U32.pack(pid), bytes(_COUNT.size))  # counting starts with the first hit
        fds: list[int] = []
        try:
            for name, offset in sorted(offsets.items()):
                fds.append(uprobes.attach(self.programs[ENTRY_POINTS[name]], mapped, offset, pid))
        except uprobes.UprobeError as exc:
            self._release(pid, fds)
            self.last_attach_error = f"{name}: {exc.strerror}"
            return "attach failed"
        if not _running(pid, start_ns):  # the PID changed hands while we attached
            self._release(pid, fds)
            return "not running"
        self._remember(pid, start_ns)
        self._watches[pid] = _Watch(pid, start_ns, now, shown, fds, last_ts=now)
        return None

    def _remember(self, pid: int, start_ns: int) -> None:
        self._seen[(pid, start_ns)] = None
        while len(self._seen) > REMEMBERED:
            self._seen.popitem(last=False)

    # -- the timer ----------------------------------------------------------------------------

    def read(self, now: int) -> list[ev.Event]:
        """Counts of every watch that changed, and the end of those that must end now."""
        out: list[ev.Event] = []
        for watch in list(self._watches.values()):
            counts = self._counts(watch.pid)
            ending = self._ending(watch, counts, now)
            if counts != watch.last or ending:
                out.append(ev.LaunchCounts(now, watch.pid, watch.pid, watch.start_ns, *counts, watch.since_ns))
            watch.last, watch.last_ts = counts, now
            if ending is not None:
                out.append(self._end(watch, ending, now))
        return out

    def _ending(self, watch: _Watch, counts: tuple[int, int, int, int], now: int) -> str | None:
        if not _running(watch.pid, watch.start_ns):
            return "exit"
        # over a second at least: a short burst just after the watch began is no rate
        elapsed = max(now - watch.last_ts, 1_000_000_000)
        hits = counts[0] + counts[1] - watch.last[0] - watch.last[1]
        if hits * 1_000_000_000 > self.budget.hits_per_s * elapsed:
            return "hit budget"
        if now - watch.since_ns >= self.budget.duration_s * 1_000_000_000:
            return "duration"
        return None

    def stop(self, now: int) -> list[ev.Event]:
        """End every watch (the probe stops): the last counts and the ends."""
        out: list[ev.Event] = []
        for watch in list(self._watches.values()):
            out.append(ev.LaunchCounts(now, watch.pid, watch.pid, watch.start_ns, *self._counts(watch.pid),
                                       watch.since_ns))
            out.append(self._end(watch, "stopped", now))
        return out

    def _end(self, watch: _Watch, reason: str, now: int) -> ev.LaunchWatch:
        del self._watches[watch.pid]
        self._release(watch.pid, watch.perf_fds)
        self.stats.ended[reason] += 1
        return ev.LaunchWatch(now, watch.pid, watch.pid, watch.start_ns, "ended", reason, watch.library)

    def _counts(self, pid: int) -> tuple[int, int, int, int]:
        raw = self.counts.lookup(_U32.pack(pid))
        if raw is None:
            return (0, 0, 0, 0)
        launches, launches_ex, distinct, unrecorded = _COUNT.unpack(raw[:_COUNT.size])
        return launches, launches_ex, distinct, unrecorded

    def _release(self, pid: int, perf_fds: list[int]) -> None:
        """Forget the process's counts (its hits count no more, at once), then detach: closing a
        uprobe's perf event removes it, but waits for the kernel's grace periods (about 0.2 s
        here, bench/launches.py), so the closes run on a thread of their own and the probe's
        timer never waits for them."""
        self.counts.delete(_U32.pack(pid))
        for key in list(self.funcs.keys()):
            if _FUNC_KEY.unpack(key)[0] == pid:
                self.funcs.delete(key)
        if perf_fds:
            threading.Thread(target=_close_all, args=(perf_fds,), name="probe-detach", daemon=True).start()


def _close_all(fds: list[int]) -> None:
    for fd in fds:
        os.close(fd)


def _running(pid: int, start_ns: int) -> bool:
    """Whether this PID is (still) the process that started at start_ns (to the tick, as /proc says)."""
    tick = procfs.start_tick(pid)
    return tick is not None and tick == start_ns // ev.NS_PER_TICK


def _mapped_libcuda(pid: int) -> tuple[str, str] | None:
    """The process's libcuda as a path this process can open (its first mapping,
    /proc/PID/map_files/START-END: the very file mapped, whatever its name, root or mount
    namespace), and as the process names it; None when it maps none."""
    try:
        with open(f"/proc/{pid}/maps", "rb") as maps:
            for line in maps:
                parts = line.rstrip(b"\n").split(maxsplit=5)
                if len(parts) == 6 and _LIBCUDA.fullmatch(os.path.basename(parts[5])):
                    return f"/proc/{pid}/map_files/{parts[0].decode()}", ev.text(parts[5])
    except OSError:
        return None
    return None
