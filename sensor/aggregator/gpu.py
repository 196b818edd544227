"""GPU sessions: what each process has done with the NVIDIA driver.

Built from the GPU records (opens, allocations that matter, frees, PERF_BOOST, UVM
registration) and the in-kernel counters. A `GpuCompute` fact is concluded when a
compute-class object is allocated successfully: after it, the process can run kernels
(which make no ioctl of their own, NVIDIA-ABI.md). A process that only queries the driver,
like nvidia-smi (client, controls, no channel), never gets one.

A session with compute has a profile (`GpuProfile`): the memory it holds, from the kernel's
per-process memory totals (sensor/bpf/gpu.bpf.c: sizes read from each memory class's
allocation parameters, frees subtracted by handle), its live compute objects and channels,
how long its compute has lived, and its allocation and ioctl rates. A miner holds a small,
steady footprint for a long time; training allocates tens of GiB and churns. Profiles are
emitted every PROFILE_EVERY_NS while compute lives, and at once on a notable change; at most
MAX_PROFILES_PER_TICK at a time (the rest wait for the next tick, still due).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from sensor import events as ev
from sensor.aggregator.facts import Fact, GpuCompute, GpuProfile
from sensor.aggregator.process_table import Process, ProcKey
from sensor.gpu_classes import PERF_BOOST_CUDA, Role, architecture_of, command_name, role_of

MAX_OBJECTS = 4096  # per process; records are already rate-limited in the kernel
MAX_FAILURES_KEPT = 32
PROFILE_EVERY_NS = 30 * 1_000_000_000
MAX_PROFILES_PER_TICK = 64
# A change of held device memory worth a profile at once: this much, and this fraction of before.
NOTABLE_HELD_BYTES = 1 << 30
NOTABLE_HELD_RATIO = 0.25
_FAMILY = {name: i for i, name in enumerate(ev.GPU_MEM_FAMILIES)}


@dataclass(slots=True)
class GpuObject:
    root: int
    handle: int
    parent: int
    klass: int
    role: Role
    architecture: str
    ts: int
    by_name: bool  # allocated on a file recognised by its name only, not by its device number
    device_id: int = -1  # device objects: which GPU
    freed_ts: int | None = None


@dataclass(slots=True)
class FailedAlloc:
    ts: int
    klass: int
    ret: int  # ioctl return (-errno)
    status: int  # RM status


@dataclass
class GpuSession:
    process: ProcKey
    devices: dict[tuple[int, int], int] = field(default_factory=dict)  # (GpuKind, minor) -> first seen
    # devices seen through a file recognised only by its name (a fake driver's, a plain file)
    devices_by_name: set[tuple[int, int]] = field(default_factory=set)
    objects: dict[tuple[int, int], GpuObject] = field(default_factory=dict)  # (root, handle)
    first_compute_ts: int | None = None
    last_activity_ts: int = 0
    failed: list[FailedAlloc] = field(default_factory=list)
    failed_count: int = 0
    freed: int = 0
    objects_dropped: int = 0
    boost: tuple[int, int] | None = None  # PERF_BOOST (flags, duration)
    uvm_gpus: set[bytes] = field(default_factory=set)
    uvm_channels: set[int] = field(default_factory=set)
    counts: dict[tuple[int, int], ev.GpuCount] = field(default_factory=dict)  # (kind, cmd) -> totals
    rates: dict[str, float] = field(default_factory=dict)  # ioctls per second, by device kind
    _rate_base: tuple[int, dict[int, int]] | None = None
    memory: ev.GpuMemory | None = None  # the kernel's memory totals, as last read
    peer_objects: int = 0  # NV50_P2P objects allocated
    last_profile: GpuProfile | None = None
    _profile_base: tuple[int, int, int] | None = None  # (ts, allocations, ioctls) at the last profile

    def live(self, role: Role) -> list[GpuObject]:
        return [o for o in self.objects.values() if o.role is role and o.freed_ts is None]

    def ever(self, role: Role) -> list[GpuObject]:
        return [o for o in self.objects.values() if o.role is role]

    @property
    def has_compute(self) -> bool:
        return self.first_compute_ts is not None

    @property
    def cuda_boost(self) -> bool:
        return self.boost is not None and bool(self.boost[0] & PERF_BOOST_CUDA)

    def held_bytes(self, family: str = "device") -> int:
        return self.memory.held(family) if self.memory is not None else 0

    def ioctl_totals(self) -> dict[str, int]:
        """Calls by command name, all devices."""
        totals: dict[str, int] = {}
        for (kind, cmd), count in self.counts.items():
            name = command_name(kind, cmd)
            totals[name] = totals.get(name, 0) + count.calls
        return totals


class GpuTracker:
    def __init__(self) -> None:
        self.sessions: dict[ProcKey, GpuSession] = {}

    def __iter__(self) -> Iterator[GpuSession]:
        return iter(list(self.sessions.values()))

    def session(self, proc: Process) -> GpuSession:
        found = self.sessions.get(proc.key)
        if found is None:
            found = self.sessions[proc.key] = GpuSession(proc.key)
        return found

    def forget(self, key: ProcKey) -> None:
        self.sessions.pop(key, None)

    def on_open(self, event: ev.GpuOpen, proc: Process) -> list[Fact]:
        session = self.session(proc)
        _saw_device(session, event.kind, event.minor, event.ts, event.by_name)
        session.last_activity_ts = event.ts
        return []

    def on_ioctl(self, event: ev.GpuIoctl, proc: Process) -> list[Fact]:
        session = self.session(proc)
        _saw_device(session, event.kind, event.minor, event.ts, bool(event.flags & ev.GPU_BY_NAME))
        session.last_activity_ts = max(session.last_activity_ts, event.ts)
        match event.reason:
            case ev.GpuReason.ALLOC:
                return self._allocated(session, event)
            case ev.GpuReason.ALLOC_FAILED:
                session.failed_count += 1
                if len(session.failed) < MAX_FAILURES_KEPT:
                    session.failed.append(FailedAlloc(event.ts, event.h_class, event.ret, event.status))
            case ev.GpuReason.FREE:
                self._freed(session, event)
            case ev.GpuReason.CONTROL:
                session.boost = (event.param0, event.param1)
            case ev.GpuReason.UVM:
                if event.nr == 37:  # REGISTER_GPU
                    session.uvm_gpus.add(event.uuid)
                elif event.nr == 27:  # REGISTER_CHANNEL
                    session.uvm_channels.add(event.param0)
        return []

    def _allocated(self, session: GpuSession, event: ev.GpuIoctl) -> list[Fact]:
        role = role_of(event.h_class)
        obj = GpuObject(root=event.h_root, handle=event.h_object, parent=event.h_parent, klass=event.h_class,
                        role=role, architecture=architecture_of(event.h_class), ts=event.ts,
                        by_name=bool(event.flags & ev.GPU_BY_NAME),
                        device_id=event.param0 if role is Role.DEVICE else -1)
        if len(session.objects) >= MAX_OBJECTS and (obj.root, obj.handle) not in session.objects:
            session.objects_dropped += 1
        else:
            session.objects[(obj.root, obj.handle)] = obj
        if role is Role.P2P:
            session.peer_objects += 1
        if role is not Role.COMPUTE:
            return []
        if session.first_compute_ts is None:
            session.first_compute_ts = event.ts
        channel = session.objects.get((obj.root, obj.parent))
        # by_name is the compute allocation's own file verdict, not its ancestors': handles of
        # objects made on a fake file could shadow the real chain and must not relabel a real
        # allocation (which only a real driver's device number can answer successfully).
        return [GpuCompute(ts=event.ts, process=session.process, handle=obj.handle, klass=obj.klass,
                           architecture=obj.architecture,
                           channel_class=channel.klass if channel and channel.role is Role.CHANNEL else 0,
                           device_id=self._device_of(session, obj), by_name=obj.by_name,
                           held_bytes=session.held_bytes())]

    def compute_again(self, key: ProcKey, ts: int) -> GpuCompute | None:
        """The process's GPU compute as a fact of now, if it holds a live compute object: for a
        process whose scope changed after its compute began (a tunnel found late)."""
        session = self.sessions.get(key)
        if session is None:
            return None
        live = session.live(Role.COMPUTE)
        if not live:
            return None
        obj = min(live, key=lambda o: o.ts)
        channel = session.objects.get((obj.root, obj.parent))
        return GpuCompute(ts=ts, process=key, handle=obj.handle, klass=obj.klass, architecture=obj.architecture,
                          channel_class=channel.klass if channel and channel.role is Role.CHANNEL else 0,
                          device_id=self._device_of(session, obj), by_name=obj.by_name,
                          held_bytes=session.held_bytes())

    @staticmethod
    def _device_of(session: GpuSession, obj: GpuObject) -> int:
        """Walk up the parents (compute -> channel -> channel group -> device)."""
        seen = set()
        current: GpuObject | None = obj
        while current is not None and (current.root, current.handle) not in seen:
            if current.role is Role.DEVICE:
                return current.device_id
            seen.add((current.root, current.handle))
            current = session.objects.get((current.root, current.parent))
        return -1

    @staticmethod
    def _freed(session: GpuSession, event: ev.GpuIoctl) -> None:
        obj = session.objects.get((event.h_root, event.h_object))
        if obj is not None and obj.freed_ts is None:
            obj.freed_ts = event.ts
            session.freed += 1

    def on_counters(self, event: ev.GpuCounters, proc_of: Callable[[int], Process | None]) -> None:
        by_session: dict[ProcKey, GpuSession] = {}
        for count in event.entries():
            proc = proc_of(count.tgid)
            if proc is None:
                continue
            session = self.session(proc)
            session.counts[(count.kind, count.cmd_id)] = count
            session.last_activity_ts = max(session.last_activity_ts, count.last_ts)
            by_session[session.process] = session
        for session in by_session.values():
            _update_rates(session, event.ts)
        for memory in event.memory_entries():
            proc = proc_of(memory.tgid)
            if proc is not None:
                self.session(proc).memory = memory

    def due_profiles(self, now: int) -> list[GpuProfile]:
        """Profiles of the sessions with compute that are due: PROFILE_EVERY_NS after their last
        one, or at once after a notable change; at most MAX_PROFILES_PER_TICK."""
        due = []
        for session in self.sessions.values():
            if not session.has_compute:
                continue
            current = profile(session, now)
            if _is_due(session.last_profile, current):
                session.last_profile = current
                session._profile_base = (now, allocation_count(session), _ioctls(session))
                due.append(current)
                if len(due) >= MAX_PROFILES_PER_TICK:
                    break
        return due


def profile(session: GpuSession, now: int) -> GpuProfile:
    """The session's profile now (rates since its previous profile, or since its first compute)."""
    memory = session.memory
    allocated = memory.allocated if memory is not None else [0] * len(_FAMILY)
    first = session.first_compute_ts if session.first_compute_ts is not None else now
    then, allocations_then, ioctls_then = session._profile_base or (first, 0, 0)
    seconds = (now - then) / 1e9
    allocations = allocation_count(session)
    ioctls = _ioctls(session)
    return GpuProfile(
        ts=now, process=session.process, held_bytes=session.held_bytes("device"),
        peak_bytes=memory.peak_device if memory is not None else 0,
        allocated_bytes=allocated[_FAMILY["device"]], system_bytes=session.held_bytes("system"),
        registered_bytes=session.held_bytes("registered"), virtual_bytes=session.held_bytes("virtual"),
        uvm_mapped_bytes=allocated[_FAMILY["uvm"]], allocations=allocations,
        frees=sum(memory.frees[:_FAMILY["uvm"]]) if memory is not None else 0,
        alloc_rate=round((allocations - allocations_then) * 60 / seconds) if seconds > 0 else 0,
        ioctl_rate=round((ioctls - ioctls_then) / seconds) if seconds > 0 else 0,
        compute_objects=len(session.live(Role.COMPUTE)), channels=len(session.live(Role.CHANNEL)),
        compute_age_s=max(now - first, 0) // 1_000_000_000,
        devices=sum(1 for kind, _ in session.devices if kind == ev.GpuKind.DEV),
        uvm_gpus=len(session.uvm_gpus),
        peer_objects=session.peer_objects + (memory.allocs[_FAMILY["fabric"]] if memory is not None else 0),
        untracked=memory.untracked if memory is not None else 0)


def allocation_count(session: GpuSession) -> int:
    """Memory allocations of every family but UVM mappings (which map memory already counted)."""
    return sum(session.memory.allocs[:_FAMILY["uvm"]]) if session.memory is not None else 0


def _ioctls(session: GpuSession) -> int:
    return sum(count.calls for count in session.counts.values())


def _is_due(last: GpuProfile | None, current: GpuProfile) -> bool:
    if last is None or current.ts - last.ts >= PROFILE_EVERY_NS:
        return True
    if (current.compute_objects, current.channels, current.peer_objects) != (
            last.compute_objects, last.channels, last.peer_objects):
        return True
    change = abs(current.held_bytes - last.held_bytes)
    return change >= NOTABLE_HELD_BYTES and change >= NOTABLE_HELD_RATIO * max(last.held_bytes, 1)


def _saw_device(session: GpuSession, kind: int, minor: int, ts: int, by_name: bool) -> None:
    session.devices.setdefault((kind, minor), ts)
    if by_name:
        session.devices_by_name.add((kind, minor))


def _update_rates(session: GpuSession, now: int) -> None:
    """Ioctls per second by device kind, since the previous counters that changed."""
    totals: dict[int, int] = {}
    for (kind, _), count in session.counts.items():
        totals[kind] = totals.get(kind, 0) + count.calls
    if session._rate_base is not None:
        then, before = session._rate_base
        seconds = (now - then) / 1e9
        if seconds > 0:
            session.rates = {ev.GpuKind(kind).name.lower(): (calls - before.get(kind, 0)) / seconds
                             for kind, calls in totals.items()}
    session._rate_base = (now, totals)
