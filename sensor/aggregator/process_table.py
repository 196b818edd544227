"""The host's processes, keyed by an identity that survives PID reuse.

A process is identified by (pid, start time): the kernel's task->start_boottime in
nanoseconds, which BPF reads at fork, exec and exit. A recycled PID starts later, so it never
merges with the process that held the PID before. Processes from the /proc snapshot are
known only to the clock tick (/proc/PID/stat's starttime): they match a BPF event when the
PID and the tick agree.

Lineage follows the parent at creation, not the current parent: a daemon that double-forks
and is reparented to init still descends from whoever started it (THREAT-MODEL.md). A forked
child carries its parent's exec identity (binary, argv) until it execs itself.

Memory is bounded: exited processes are reaped after a grace period unless a live process
descends from them, and the table never holds more than `max_processes`; past that the
oldest exited entries go first, and every eviction is counted. Under churn (a build, a
shell loop: thousands of short-lived processes a second) the grace period alone would hold
every one of them for a minute; so at most `max_exited` exited processes wait out their
grace period, and past that the oldest without a live descendant is reaped once it has been
gone for `min_grace_ns` (the time a late event, or the GPU counters, may take). Nothing
that detection reads is lost: a process with a live descendant stays (its lineage), and a
fork copies what a child inherits (taint) when it happens. What goes early is only what the
API could still have shown of a process long gone, and what a late event would have found.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import NamedTuple, TypeVar, cast

from sensor.events import NS_PER_TICK

V = TypeVar("V")


class ProcKey(NamedTuple):
    pid: int
    start_ns: int

    def __str__(self) -> str:
        return f"{self.pid}@{self.start_ns}"


@dataclass(slots=True)
class Process:
    key: ProcKey
    ppid: int
    parent: ProcKey | None  # the parent at creation, if known
    uid: int = 0
    gid: int = 0
    cgroup_id: int = 0
    comm: bytes = b""
    exe: bytes = b""  # path of the image, as exec'd
    argv: list[bytes] = field(default_factory=list)
    argc: int = 0
    argv_flags: int = 0
    exe_dev: int = 0
    exe_ino: int = 0
    loginuid: int = 0xFFFFFFFF
    sessionid: int = 0xFFFFFFFF
    netns: int = 0
    container: str = ""  # the container's key (aggregator/containers.py); "" on the host
    # Tunnel scopes this process belongs to: set on a tunnel's process, inherited at fork, and
    # carried to the session a tunnel's connection starts (sensor/aggregator/taint.py).
    tunnel_scopes: frozenset[str] = frozenset()
    execs: int = 0  # execs seen; 0: identity inherited from the parent, or from /proc
    inherited: bool = False  # exe/argv are the parent's: forked, not exec'd
    exited_ts: int | None = None
    exit_code: int | None = None
    from_snapshot: bool = False
    children: dict[ProcKey, None] = field(default_factory=dict)  # insertion-ordered set

    @property
    def pid(self) -> int:
        return self.key.pid

    @property
    def start_ns(self) -> int:
        return self.key.start_ns

    @property
    def exec_id(self) -> str:
        """One exec image of one process: changes at each exec, never reused."""
        return f"{self.key.pid}:{self.key.start_ns}:{self.execs}"

    @property
    def alive(self) -> bool:
        return self.exited_ts is None


@dataclass
class TableStats:
    processes: int = 0
    reaped: int = 0
    reaped_early: int = 0  # of those, reaped past max_exited before their grace period ended
    evicted: int = 0  # removed under the size cap before their grace period ended
    pid_reuse: int = 0  # a PID came back with a new start time before its exit was seen


class SharedValues:
    """One copy of each value that exited processes hold alike. Every exec frame decodes its
    own bytes and ints, so a thousand runs of /bin/true hold a thousand copies of the same
    path, argv, cgroup and namespace ids; once a process has exited (it changes no more) its
    values are swapped for the one copy. Bounded: past `limit` values it starts afresh."""

    def __init__(self, limit: int = 4096) -> None:
        self.limit = limit
        self._values: dict[object, object] = {}
        self._argvs: dict[tuple[bytes, ...], list[bytes]] = {}

    def compact(self, proc: Process) -> None:
        if len(self._values) > self.limit or len(self._argvs) > self.limit:
            self._values.clear()
            self._argvs.clear()
        one = self.one
        proc.ppid, proc.uid, proc.gid = one(proc.ppid), one(proc.uid), one(proc.gid)
        proc.cgroup_id, proc.exe_dev, proc.exe_ino, proc.netns = \
            one(proc.cgroup_id), one(proc.exe_dev), one(proc.exe_ino), one(proc.netns)
        proc.loginuid, proc.sessionid = one(proc.loginuid), one(proc.sessionid)
        proc.comm, proc.exe, proc.container = one(proc.comm), one(proc.exe), one(proc.container)
        proc.argv = self._argvs.setdefault(tuple(proc.argv), proc.argv)

    def one(self, value: V) -> V:
        return cast(V, self._values.setdefault(value, value))


class ProcessTable:
    def __init__(self, max_processes: int = 65536, grace_ns: int = 60 * 1_000_000_000,
                 max_exited: int = 2048, min_grace_ns: int = 5 * 1_000_000_000) -> None:
        self.max_processes = max_processes
        self.grace_ns = grace_ns
        self.max_exited = max_exited
        self.min_grace_ns = min(min_grace_ns, grace_ns)
        self._by_key: dict[ProcKey, Process] = {}
        self._by_pid: dict[int, ProcKey] = {}  # the current holder of each PID
        self._exited: OrderedDict[ProcKey, int] = OrderedDict()  # key -> exit ts, oldest first
        self.stats = TableStats()
        self._shared = SharedValues()
        self.on_remove: list[Callable[[ProcKey], None]] = []  # state kept elsewhere per process

    def __len__(self) -> int:
        return len(self._by_key)

    def __iter__(self) -> Iterator[Process]:
        return iter(list(self._by_key.values()))

    def get(self, key: ProcKey) -> Process | None:
        return self._by_key.get(key)

    def by_pid(self, pid: int) -> Process | None:
        key = self._by_pid.get(pid)
        return self._by_key.get(key) if key is not None else None

    def lookup(self, pid: int, start_ns: int) -> Process | None:
        """The process with this PID and start time (to the tick, for snapshot processes)."""
        proc = self._by_key.get(ProcKey(pid, start_ns))
        if proc is not None:
            return proc
        current = self.by_pid(pid)
        if current is not None and current.from_snapshot and \
                current.start_ns // NS_PER_TICK == start_ns // NS_PER_TICK:
            return current
        return None

    def find_exec_id(self, exec_id: str) -> Process | None:
        try:
            pid, start_ns, _ = (int(part) for part in exec_id.split(":"))
        except ValueError:
            return None
        return self._by_key.get(ProcKey(pid, start_ns))

    # -- changes --------------------------------------------------------------------------

    def add(self, proc: Process) -> Process:
        """Insert a process, or return the one already known under the same identity."""
        existing = self._by_key.get(proc.key)
        if existing is not None:
            return existing
        old_key = self._by_pid.get(proc.pid)
        if old_key is not None and old_key != proc.key:
            old = self._by_key.get(old_key)
            if old is not None and old.alive:
                # Its exit was never seen (dropped, or before the probe started).
                self.stats.pid_reuse += 1
                self.mark_exited(old, proc.start_ns, None)
        self._by_key[proc.key] = proc
        self._by_pid[proc.pid] = proc.key
        if proc.parent is not None:
            parent = self._by_key.get(proc.parent)
            if parent is not None:
                parent.children[proc.key] = None
        self.stats.processes = len(self._by_key)
        self._enforce_cap()
        return proc

    def fork(self, parent_pid: int, child_pid: int, child_start_ns: int) -> Process:
        known = self.lookup(child_pid, child_start_ns)
        if known is not None:  # forked after the probe attached, before its /proc snapshot
            return known
        parent = self.by_pid(parent_pid)
        child = Process(key=ProcKey(child_pid, child_start_ns), ppid=parent_pid,
                        parent=parent.key if parent else None)
        if parent is not None:
            _inherit(child, parent)
        return self.add(child)

    def mark_exited(self, proc: Process, ts: int, exit_code: int | None) -> None:
        if proc.exited_ts is None:
            proc.exited_ts = ts
            proc.exit_code = exit_code
            self._exited[proc.key] = ts
            self._shared.compact(proc)
            if len(self._exited) > self.max_exited:
                self._reap_oldest(ts)

    def reap(self, now_ns: int) -> int:
        """Drop processes that exited more than the grace period ago and have no live descendant."""
        reaped = 0
        for key, exited_ts in list(self._exited.items()):
            if now_ns - exited_ts < self.grace_ns:
                break
            proc = self._by_key.get(key)
            if proc is not None and self._has_live_descendant(proc):
                # Needed for its descendants' lineage: look again after another grace period.
                self._exited.move_to_end(key)
                self._exited[key] = now_ns
                continue
            self._remove(key)
            reaped += 1
        self.stats.reaped += reaped
        return reaped

    def _reap_oldest(self, now_ns: int) -> None:
        """Exited processes over `max_exited` go before their grace period ends: the oldest gone
        for `min_grace_ns` without a live descendant. It looks at two, so that the cost per exit
        stays bounded and an excess drains; one kept for its descendants goes to the end of the
        line with its exit time, and reap() looks at it in its turn."""
        for key, exited_ts in list(itertools.islice(self._exited.items(), 2)):
            if len(self._exited) <= self.max_exited or now_ns - exited_ts < self.min_grace_ns:
                return
            proc = self._by_key.get(key)
            if proc is not None and self._has_live_descendant(proc):
                self._exited.move_to_end(key)
                continue
            self._remove(key)
            self.stats.reaped += 1
            self.stats.reaped_early += 1

    def _has_live_descendant(self, proc: Process) -> bool:
        stack, seen = [proc.key], {proc.key}
        while stack:
            parent = self._by_key.get(stack.pop())
            if parent is None:
                continue
            for child_key in parent.children:
                child = self._by_key.get(child_key)
                if child is None or child_key in seen:
                    continue
                if child.alive:
                    return True
                seen.add(child_key)
                stack.append(child_key)
        return False

    def _remove(self, key: ProcKey) -> None:
        proc = self._by_key.pop(key, None)
        self._exited.pop(key, None)
        if proc is None:
            return
        if self._by_pid.get(proc.pid) == key:
            del self._by_pid[proc.pid]
        if proc.parent is not None:
            parent = self._by_key.get(proc.parent)
            if parent is not None:
                parent.children.pop(key, None)
        self.stats.processes = len(self._by_key)
        for callback in self.on_remove:
            callback(key)

    def _enforce_cap(self) -> None:
        while len(self._by_key) > self.max_processes:
            # The oldest exited entry; if all are alive (a fork bomb), the oldest entry.
            victim = next(iter(self._exited)) if self._exited else next(iter(self._by_key))
            self._remove(victim)
            self.stats.evicted += 1

    # -- lineage --------------------------------------------------------------------------

    def ancestors(self, key: ProcKey) -> list[Process]:
        """Parent first, up to the oldest ancestor still known."""
        chain: list[Process] = []
        seen = {key}
        proc = self._by_key.get(key)
        while proc is not None and proc.parent is not None and proc.parent not in seen:
            seen.add(proc.parent)
            proc = self._by_key.get(proc.parent)
            if proc is not None:
                chain.append(proc)
        return chain

    def descendants(self, key: ProcKey) -> list[Process]:
        out: list[Process] = []
        stack = [key]
        seen = {key}
        while stack:
            proc = self._by_key.get(stack.pop())
            if proc is None:
                continue
            for child_key in proc.children:
                if child_key not in seen and child_key in self._by_key:
                    seen.add(child_key)
                    out.append(self._by_key[child_key])
                    stack.append(child_key)
        return out

    def siblings(self, key: ProcKey) -> list[Process]:
        proc = self._by_key.get(key)
        if proc is None or proc.parent is None:
            return []
        parent = self._by_key.get(proc.parent)
        if parent is None:
            return []
        return [self._by_key[k] for k in parent.children if k != key and k in self._by_key]


def _inherit(child: Process, parent: Process) -> None:
    """Until it execs, a forked child is what its parent was."""
    child.uid, child.gid, child.cgroup_id = parent.uid, parent.gid, parent.cgroup_id
    child.comm, child.exe, child.argv = parent.comm, parent.exe, parent.argv
    child.argc, child.argv_flags = parent.argc, parent.argv_flags
    child.exe_dev, child.exe_ino = parent.exe_dev, parent.exe_ino
    child.loginuid, child.sessionid, child.netns = parent.loginuid, parent.sessionid, parent.netns
    child.container = parent.container
    child.tunnel_scopes = parent.tunnel_scopes
    child.inherited = True
