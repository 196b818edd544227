"""The aggregator: consumes events (live or from a capture) and keeps the host's state.

It dispatches on the event kind through a table of handlers; each handler updates the
process table and returns the process the event concerns. Then the GPU tracker and the
detector (classifiers, tunnel taint, rules) conclude facts and alerts from it. Time is the
events' own (boot-clock ns), so a capture analysed later behaves as it did live.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from sensor import events as ev
from sensor.aggregator.containers import ContainerTable
from sensor.aggregator.detector import FACT_EVENTS, Detector, DetectorConfig
from sensor.aggregator.facts import Fact
from sensor.aggregator.gpu import GpuTracker
from sensor.aggregator.launches import LaunchEvidence, Send
from sensor.aggregator.process_table import Process, ProcessTable, ProcKey
from sensor.rules.alert import Alert
from sensor.rules.model import RuleSet

REAP_EVERY_NS = 1_000_000_000
PROFILE_TICK_NS = 1_000_000_000  # how often GPU sessions are checked for a due profile
# The events facts come of: the detector's and the GPU tracker's.
CONCLUDING: tuple[type[ev.Event], ...] = (*FACT_EVENTS, ev.GpuIoctl, ev.GpuOpen, ev.LaunchWatch, ev.LaunchCounts)


@dataclass(slots=True)
class Observation:
    """One event, the process it concerns, and what the aggregator concluded from it."""

    event: ev.Event
    process: Process | None
    facts: list[Fact] = field(default_factory=list)
    alerts: list[Alert] = field(default_factory=list)


@dataclass
class Counters:
    events: Counter[str] = field(default_factory=Counter)
    kernel_drops: dict[str, int] = field(default_factory=dict)
    probe_drops: dict[str, int] = field(default_factory=dict)
    records: dict[str, int] = field(default_factory=dict)
    verdicts_missed: dict[str, int] = field(default_factory=dict)  # the probe's blind spots (ev.VERDICTS_MISSED)
    unknown_process: int = 0  # events for a process neither forked nor in the snapshot
    gpu_count_overflow: int = 0  # GPU ioctls the kernel could not count: its map was full
    gpu_mem_overflow: int = 0  # GPU memory allocations the kernel could not sum: its map was full
    sock_bytes_not_counted: int = 0  # TCP sends and receives the kernel could not count: its map was full
    sock_bytes_closed_lost: int = 0  # closed sockets whose final byte counts were lost before the probe read them


class Aggregator:
    def __init__(self, table: ProcessTable | None = None, rules: RuleSet | None = None,
                 config: DetectorConfig | None = None, launch_requests: Send | None = None) -> None:
        """Without rules there is no detection: only state (the process table, GPU sessions).
        `launch_requests` asks the probe to watch a process's kernel launches (live only)."""
        self.table = table if table is not None else ProcessTable()
        self.containers = ContainerTable()
        self.detector = Detector(self.table, rules, config, self.containers) if rules is not None else None
        self.gpu = GpuTracker()
        self.table.on_remove.append(self.gpu.forget)
        self.launches = LaunchEvidence(launch_requests)
        self.table.on_remove.append(self.launches.forget)
        self.counters = Counters()
        self.now_ns = 0
        self._last_reap = 0
        self._last_profiles = 0
        self._handlers: dict[type[ev.Event], Callable[[ev.Event], Process | None]] = {
            ev.Proc: self._on_proc,  # type: ignore[dict-item]
            ev.Fork: self._on_fork,  # type: ignore[dict-item]
            ev.Exec: self._on_exec,  # type: ignore[dict-item]
            ev.Exit: self._on_exit,  # type: ignore[dict-item]
            ev.Stats: self._on_stats,  # type: ignore[dict-item]
            ev.GpuCounters: self._on_gpu_counters,  # type: ignore[dict-item]
            ev.Container: self._on_container,  # type: ignore[dict-item]
            ev.SockBytes: self._on_sock_bytes,  # type: ignore[dict-item]
            ev.LaunchWatch: self._on_launch_frame,  # type: ignore[dict-item]
            ev.LaunchCounts: self._on_launch_frame,  # type: ignore[dict-item]
        }
        self._waiting_for_parent: dict[int, list[Process]] = {}  # snapshot: ppid -> children
        self._concluding: dict[type[ev.Event], bool] = {}  # event type -> _concludes

    def handle(self, event: ev.Event) -> Observation:
        kind = type(event)
        self.counters.events[ev.KIND_NAMES[event.KIND]] += 1
        self.now_ns = max(self.now_ns, event.ts)
        process = self._handlers.get(kind, self._on_activity)(event)
        facts: list[Fact] = []
        alerts: list[Alert] = []
        if process is not None and self._concludes(kind):
            facts = self._conclude(event, process)
            if facts and self.detector is not None:
                alerts = self.detector.evaluate(facts, process)
        elif kind is ev.SockBytes and self.detector is not None:
            # byte counts of many processes' sockets: a fact for each process found relaying
            for fact, about in self.detector.on_sock_bytes(event):  # type: ignore[arg-type]
                facts.append(fact)
                alerts += self.detector.evaluate([fact], about)
                process = process or about
        if self.detector is not None and self.detector.late_tainted:
            rejudged = self._rejudge_compute(event.ts, facts, alerts)
            process = process or rejudged
        if self.now_ns - self._last_profiles >= PROFILE_TICK_NS:
            self._last_profiles = self.now_ns
            self._profiles(facts, alerts)
        if self.now_ns - self._last_reap >= REAP_EVERY_NS:
            self._last_reap = self.now_ns
            self.table.reap(self.now_ns)
            if self.detector is not None:
                self.detector.expire(self.now_ns)
                self._consider_launch_watches()
        return Observation(event, process, facts, alerts)

    def _rejudge_compute(self, ts: int, facts: list[Fact], alerts: list[Alert]) -> Process | None:
        """A tunnel found by its behaviour after the sessions it brought in had started: their GPU
        compute, already judged outside any tunnel, is judged again (a gpu_compute fact of now) in
        the scope they have now, so that the tunnel-then-compute rules see it. The first process
        that had compute, for the observation."""
        assert self.detector is not None
        late, self.detector.late_tainted = self.detector.late_tainted, []
        first = None
        for proc in late:
            fact = self.gpu.compute_again(proc.key, ts)
            if fact is not None:
                facts.append(fact)
                alerts += self.detector.evaluate([fact], proc)
                first = first or proc
        return first

    def _profiles(self, facts: list[Fact], alerts: list[Alert]) -> None:
        """The GPU profiles due now (on the events' clock: the probe's Stats frame comes every
        second, so a session that makes no ioctl still gets its profiles), each judged with
        its own process; they join the observation of whatever event is at hand."""
        for profile in self.gpu.due_profiles(self.now_ns):
            proc = self.table.lookup(profile.process.pid, profile.process.start_ns)
            if proc is None or proc.exited_ts is not None:
                continue
            facts.append(profile)
            if self.detector is not None:
                alerts += self.detector.evaluate([profile], proc)

    def _concludes(self, kind: type[ev.Event]) -> bool:
        """Whether facts can come of this kind of event (most events give none: a fork, an exit)."""
        concludes = self._concluding.get(kind)
        if concludes is None:
            concludes = self._concluding[kind] = issubclass(kind, CONCLUDING)
        return concludes

    def _conclude(self, event: ev.Event, process: Process) -> list[Fact]:
        facts: list[Fact] = []
        if isinstance(event, ev.GpuIoctl):
            facts += self.gpu.on_ioctl(event, process)
            self._consider_launch_watch(process)
        elif isinstance(event, ev.GpuOpen):
            facts += self.gpu.on_open(event, process)
            self._consider_launch_watch(process)
        elif isinstance(event, ev.LaunchWatch):
            return self.launches.on_watch(event, process)
        elif isinstance(event, ev.LaunchCounts):
            return self.launches.on_counts(event, process)
        if self.detector is not None:
            facts += self.detector.facts_of(event, process)
        return facts

    # -- handlers -------------------------------------------------------------------------

    def _on_proc(self, event: ev.Proc) -> Process:
        parent = self.table.by_pid(event.ppid)
        proc = self.table.add(Process(
            key=ProcKey(event.tgid, event.start_ns), ppid=event.ppid,
            parent=parent.key if parent else None,
            uid=event.uid, gid=event.gid, cgroup_id=event.cgroup_id, comm=event.comm,
            exe=event.exe, argv=event.argv, argc=len(event.argv), from_snapshot=True,
            loginuid=event.loginuid, sessionid=event.sessionid, netns=event.netns,
            exe_dev=event.exe_dev, exe_ino=event.exe_ino,
            container=event.container if event.container != ev.CONTAINER_UNREAD else "",
        ))
        if parent is None and event.ppid:
            self._waiting_for_parent.setdefault(event.ppid, []).append(proc)
        for child in self._waiting_for_parent.pop(event.tgid, []):
            child.parent = proc.key
            proc.children[child.key] = None
        return proc

    def _on_fork(self, event: ev.Fork) -> Process:
        # The child is a copy of the process that forked (hdr tgid); with CLONE_PARENT its
        # real parent differs, and lineage still follows the creator.
        child = self.table.fork(event.tgid, event.child_pid, event.child_start_ns)
        child.ppid = event.parent_tgid
        if self.detector is not None:
            self.detector.on_fork(event.tgid, child)
        return child

    def _on_exec(self, event: ev.Exec) -> Process | None:
        proc = self._process_of(event.tgid, event.start_ns, event.ppid)
        if event.result != 0:
            return proc  # a failed exec leaves the image as it was
        proc.uid, proc.gid, proc.cgroup_id = event.uid, event.gid, event.cgroup_id
        proc.comm, proc.exe, proc.argv = event.comm, event.filename, event.argv
        proc.argc, proc.argv_flags = event.argc, event.flags
        proc.exe_dev, proc.exe_ino = event.exe_dev, event.exe_ino
        proc.loginuid, proc.sessionid, proc.netns = event.loginuid, event.sessionid, event.netns
        if event.container != ev.CONTAINER_UNREAD:
            proc.container = event.container
        proc.execs += 1
        proc.inherited = False
        return proc

    def _on_exit(self, event: ev.Exit) -> Process | None:
        proc = self.table.lookup(event.tgid, event.start_ns)
        if proc is not None:
            self.table.mark_exited(proc, event.ts, event.exit_code)
        return proc

    def _on_stats(self, event: ev.Stats) -> None:
        self.counters.kernel_drops = event.kernel_drops
        self.counters.probe_drops = event.probe_drops
        self.counters.verdicts_missed = event.verdicts_missed
        self.counters.records = event.records

    def _on_gpu_counters(self, event: ev.GpuCounters) -> None:
        self.counters.gpu_count_overflow = event.overflow
        self.counters.gpu_mem_overflow = event.memory_overflow
        self.gpu.on_counters(event, self.table.by_pid)

    def _on_sock_bytes(self, event: ev.SockBytes) -> None:
        self.counters.sock_bytes_not_counted, self.counters.sock_bytes_closed_lost = (event.not_counted,
                                                                                      event.closed_lost)

    def _on_container(self, event: ev.Container) -> None:
        self.containers.on_frame(event)

    def _on_launch_frame(self, event: ev.LaunchWatch | ev.LaunchCounts) -> Process | None:
        return self.table.lookup(event.tgid, event.start_ns)

    # -- launch watches -------------------------------------------------------------------

    def _consider_launch_watch(self, process: Process) -> None:
        """A process that uses a GPU: worth a launch watch if it is suspicious (launches.py)."""
        if self.detector is not None and self.launches.send is not None and process.key not in self.launches.sessions:
            self.launches.consider(process, self.detector.suspicion(process))

    def _consider_launch_watches(self) -> None:
        """Every second: GPU processes that became suspicious after they took their GPU."""
        if self.launches.send is None:
            return
        for session in self.gpu:
            process = self.table.get(session.process)
            if process is not None:
                self._consider_launch_watch(process)

    def _on_activity(self, event: ev.Event) -> Process | None:
        proc = self.table.by_pid(event.tgid)
        if proc is None:
            self.counters.unknown_process += 1
        return proc

    def _process_of(self, tgid: int, start_ns: int, ppid: int) -> Process:
        """The process an exec happened in; created if its fork was never seen."""
        proc = self.table.lookup(tgid, start_ns)
        if proc is None:
            self.counters.unknown_process += 1
            parent = self.table.by_pid(ppid)
            proc = self.table.add(Process(key=ProcKey(tgid, start_ns), ppid=ppid,
                                          parent=parent.key if parent else None))
        return proc
