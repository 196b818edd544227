"""The probe: BPF ring buffer -> events -> bounded queue -> frame sink.

The programs are loaded by a short-lived child (sensor/probe/loader.py); this process holds
their file descriptors. Three threads: the ring-buffer reader (drains both rings in place
every FLUSH_S, or at once when an exec wakes it; decodes each record at once, since its room
goes back to the kernel after the read; makes the verdicts that need this host: what an
exec'd binary is, where a connection goes; encodes the frames), the writer (writes each
drain's frames to the sink), and the stats timer (kernel drop counters every second; launch watches: requests from the
aggregator served as they come, counts read every second, sensor/probe/launches.py). The queue between reader
and writer is bounded; when it is full the event is dropped and counted, never silently
lost, and the counts travel downstream in every Stats frame. A stop on purpose ends the
stream with an End frame: a stream cut without one means the probe died.
"""

from __future__ import annotations

import contextlib
import os
import resource
import select
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Protocol

from sensor import events as ev
from sensor.containers.model import Container
from sensor.containers.resolve import ContainerConfig, ContainerResolver
from sensor.probe import procfs, program, records, uprobes
from sensor.probe.identity import WAKING_TOOLS, BinaryIdentity
from sensor.probe.lanes import LAST, Lanes
from sensor.probe.launches import REQUEST, LaunchBudget, LaunchWatcher
from sensor.probe.loader import Loaded, load_in_child
from sensor.probe.ringbuf import RingReader
from sensor.probe.routes import Router
from sensor.probe.settled import Settled
from sensor.probe.ssh_files import SshConfigReader

STATS_INTERVAL_S = 1.0
# The kernel submits records without waking the reader (RB_FLAGS in sensor/bpf/common.bpf.c):
# the reader drains both rings this often, and at once when it finds them not empty, so a record
# waits at most this long and a steady thousand records a second cost ~50 wake-ups, not 1,000.
FLUSH_S = 0.05
POLL_BATCH = 4096  # records taken from each ring at a time, ordered by time together
FINAL_ROUNDS = 64  # at a stop, batches read at most (a flood does not stop with us)
_U32 = struct.Struct("<I")
_GPU_COUNT_KEY = struct.Struct("<IIB3x")  # struct gpu_count_key: tgid, cmd_id, kind
_GPU_COUNT = struct.Struct("<4Q")  # struct gpu_count: calls, errors, suppressed, last_ts
_FAMILIES = len(ev.GPU_MEM_FAMILIES)
# struct gpu_mem: allocated[], freed[], allocs[], frees[] (one u64 per family), peak_device,
# untracked, last_ts
_GPU_MEM = struct.Struct(f"<{4 * _FAMILIES + 3}Q")
_U64 = struct.Struct("<Q")
_SOCK_BYTES = struct.Struct("<QQQQII")  # struct sock_bytes: sent, received, sk_gen, last_ts, tgid, closed
_SOCK_GEN_KEY = struct.Struct("<QQ")  # struct sock_gen_key: sk, sk_gen
SOCK_ROWS_PER_FRAME = 4096  # a read with more changed sockets sends several frames
SELF_ONLY, SELF_AND_DESCENDANTS = b"\x01", b"\x02"  # self_tgids values, as in common.bpf.c


class FrameSink(Protocol):
    def write_payloads(self, payloads: Iterable[bytes]) -> None: ...


class Probe:
    def __init__(
        self,
        config: program.ProbeConfig,
        sink: FrameSink,
        *,
        exclude_pids: Iterable[int] = (),
        on_error: Callable[[BaseException], None] | None = None,
        containers: ContainerConfig | None = None,
        launch_requests: int | None = None,
        launch_budget: LaunchBudget | None = None,
    ) -> None:
        """`launch_requests`: the read end of the aggregator's pipe of launch-watch requests
        (sensor/probe/launches.py); None: no launch is ever watched."""
        self.config = config
        self._sink = sink
        # the agent's other processes (the aggregator) are its own with all they start; this
        # process alone is (in the kernel tests it is pytest, whose children are the workload)
        self._exclude_trees = set(exclude_pids)
        self._exclude = {os.getpid(), *exclude_pids}
        self._on_error = on_error
        self._queue = Lanes(config.queue_size)
        self._stop = threading.Event()  # the threads' signal; also set by a failing thread
        self._stopped = False
        self._threads: list[threading.Thread] = []
        self.bpf: Loaded | None = None
        self._rings: tuple[RingReader, RingReader] | None = None  # decisive, events
        self.records: Counter[str] = Counter()  # records read, by type
        self.probe_drops: Counter[str] = Counter()  # queue full, by type
        self.decode_errors = 0
        self.started_at = 0.0
        self._gpu_totals: dict[tuple[int, int, int], tuple[int, int, int, int]] = {}
        self._gpu_memory: dict[int, bytes] = {}  # tgid -> its memory totals as last sent
        self._exited: set[int] = set()  # processes whose GPU counters go after the next read
        self._sock_totals: dict[int, tuple[int, int]] = {}  # live socket (kernel address) -> last sent totals
        # decoded records of the poll under way: whether each came from the decisive ring, and
        # for an exec what the kernel read of its file
        self._polled: list[tuple[ev.Event, bool, records.ExecFacts | None]] = []
        # Host lookups, made here at event time so that the frames carry their verdicts
        # (the aggregator never reads this host): used by the ring-buffer thread only.
        self.identity = BinaryIdentity()
        self.router = Router()
        self.containers = ContainerResolver(containers)
        self.ssh_configs = SshConfigReader()
        self._launch_requests = launch_requests
        self._launch_budget = launch_budget or LaunchBudget()
        self.launches: LaunchWatcher | None = None
        self._unwatched = 0  # launch-watch requests not served: no uprobes here
        # the timer thread waits on the request pipe; a stop wakes it through this one
        self._wake_read, self._wake_write = os.pipe()
        os.set_blocking(self._wake_write, False)

    # -- start and stop -------------------------------------------------------------------

    def start(self) -> None:
        self.started_at = time.monotonic()
        self.bpf = load_in_child(self.config)  # BCC's compiler stays in the child: sensor/probe/loader.py
        maps = self.bpf.maps
        self._rings = (RingReader("decisive", maps["decisive"].fd, maps["decisive"].max_entries),
                       RingReader("events", maps["events"].fd, maps["events"].max_entries))
        self.exclude([os.getpid()])
        self.exclude(self._exclude_trees, descendants=True)
        known = Settled(maps["known_exes"], maps["known_scopes"])
        self.identity.settled = self.containers.settled = self.router.settled = known
        self.router.prepare(self.router.own, os.getpid())
        self._emit_snapshot()
        if self._launch_requests is not None:
            os.set_blocking(self._launch_requests, False)
            if uprobes.available() is None:
                self.launches = LaunchWatcher(self.bpf.programs, maps["launch_counts"], maps["launch_funcs"],
                                              self._launch_budget)
        for target, name in ((self._read_loop, "ringbuf"), (self._write_loop, "writer"),
                             (self._stats_loop, "stats")):
            thread = threading.Thread(target=target, name=f"probe-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def exclude(self, pids: Iterable[int], descendants: bool = False) -> None:
        """Filter these processes (the agent's own) out in the kernel; with `descendants`, the
        processes they start from now on too (sensor/bpf/common.bpf.c, self_tgids)."""
        assert self.bpf is not None
        table = self.bpf.maps["self_tgids"]
        for pid in pids:
            table.update(_U32.pack(pid), SELF_AND_DESCENDANTS if descendants else SELF_ONLY)

    def stop(self, reason: str = "stopped", after_last_frame: Callable[[], None] | None = None) -> None:
        """Stop on purpose (or after a thread failed): detach, drain what the kernel sent, the
        final counts, then End with `reason`; `after_last_frame` runs once that is written
        (the agent closes the stream there, so the aggregator ends while the kernel detaches)."""
        if self._stopped:
            return
        self._stopped = True
        self._halt()
        for thread in self._threads:
            if thread.name != "probe-writer":
                thread.join(timeout=5)
        if self.bpf is not None:
            self._emit_counters()  # the final counts
            now = time.clock_gettime_ns(time.CLOCK_BOOTTIME)
            for frame in self.launches.stop(now) if self.launches is not None else ():
                self._emit(frame, block=True)
            self._emit(ev.End(now, os.getpid(), os.getpid(), reason), block=True)
        self._queue.put((LAST, None), decisive=True, timeout=1.0)  # a dead writer takes nothing more
        for thread in self._threads:
            if thread.name == "probe-writer":
                thread.join(timeout=5)
        if after_last_frame is not None:
            after_last_frame()
        if self.bpf is not None:
            reader_gone = not any(t.name == "probe-ringbuf" and t.is_alive() for t in self._threads)
            if self._rings is not None and reader_gone:  # never unmap what a thread still reads
                for ring in self._rings:
                    ring.close()
            _detach(self.bpf)
            self.bpf = None
        self.router.close()
        if all(not thread.is_alive() for thread in self._threads):  # none still waits on them
            for fd in (self._wake_read, self._wake_write, self._launch_requests):
                if fd is not None:
                    os.close(fd)
            self._launch_requests = None

    def __enter__(self) -> Probe:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- the hot path ---------------------------------------------------------------------

    def _on_decisive(self, data: int, size: int) -> None:
        self._on_record(data, size, decisive=True)

    def _on_record(self, data: int, size: int, decisive: bool = False) -> None:
        """Decoded at once (the ring's memory is reused when the read returns), handled after it."""
        try:
            event = records.decode(data, size)
        except records.RecordError:
            self.decode_errors += 1
            return
        self._polled.append((event, decisive, records.exec_facts(data) if type(event) is ev.Exec else None))

    def _handle_polled(self) -> None:
        """What one batch brought from both rings, oldest first: a process's exec (decisive ring)
        before its connects (the other), as they happened."""
        if not self._polled:
            return  # an empty drain (the timer's): nobody to wake
        polled, self._polled = self._polled, []
        polled.sort(key=_event_ts)
        for event, decisive, facts in polled:
            self._handle(event, decisive, facts)
        self._queue.wake()  # the writer takes the batch at once: one wake-up for all of it

    def _handle(self, event: ev.Event, decisive: bool, facts: records.ExecFacts | None = None) -> None:
        kind = ev.KIND_NAMES[event.KIND]
        self.records[kind] += 1
        if isinstance(event, ev.Exec):
            _fill_argv_from_procfs(event, self.config)
            self._judge_exec(event, facts or records.ExecFacts(0, 0))
        elif isinstance(event, ev.Connect):
            if event.family in ("inet", "inet6"):
                event.route, event.route_by_range = self._route(event.address, event.netns, event.tgid)
            elif event.family == "unix":
                event.route = "none"
        elif isinstance(event, ev.TcpEstablished):
            event.route, event.route_by_range = self._route(event.daddr, event.netns, event.tgid)
        elif isinstance(event, ev.Exit):
            self._exited.add(event.tgid)
        self._emit(event, decisive=decisive)

    def _judge_exec(self, event: ev.Exec, facts: records.ExecFacts) -> None:
        """What the new image is, read now, while the process (or at least its file) is there;
        what the probe has settled before comes from the kernel's values alone (settled.py)."""
        if event.result != 0:
            return  # the old image runs on
        stamp = (facts.exe_size, facts.exe_ctime_ns) if facts.exe_ctime_ns else None
        verdict = self.identity.identify(event.tgid, event.exe_dev, event.exe_ino, event.filename, stamp)
        event.tool, event.identity = verdict.tool, verdict.how.value
        if verdict.tool in WAKING_TOOLS:
            event.ssh_config = self._ssh_config(event)
        self.router.prepare(event.netns, event.tgid)  # its namespace, while a process is in it
        inherited = bool(event.flags & ev.CGROUPS_INHERITED)
        event.container = self._container_of(event.tgid, event.cgroup_id, event.ts, inherited)

    def _ssh_config(self, event: ev.Exec) -> list[str]:
        """What ssh's configuration files add to this exec's command line, read now (ssh_files.py).
        A failure of the evaluation is counted and said in the frame, never raised: the files are
        the adversary's."""
        try:
            directives = self.ssh_configs.directives(event.tgid, event.uid, event.argv, event.tool)
        except Exception as exc:  # hostile input must never stop the reader thread
            self.ssh_configs.stats.failed += 1
            return [f"# configuration not evaluated: {type(exc).__name__}"]
        return directives if directives is not None else []

    def _container_of(self, pid: int, cgroup_id: int, ts: int, inherited: bool = False) -> str:
        """The process's container key; a container seen for the first time (or learnt more of)
        is described in a frame of its own ahead of the event that names it."""
        key, described = self.containers.of_process(pid, cgroup_id, inherited)
        for container in described:
            self._emit(_container_frame(container, ts), block=True)
        return key

    def _route(self, address: str, netns: int, pid: int) -> tuple[str, bool]:
        destination, by_range = self.router.route(address, netns, pid)
        return destination.value, by_range

    def _emit(self, event: ev.Event, block: bool = False, decisive: bool = True) -> None:
        """Queue a frame on its lane (the probe's own frames are decisive); a full lane drops it,
        counted, unless `block` (the probe's own frames wait up to a second)."""
        # The reader's frames wait for the end of its drain (one wake-up for the writer); the
        # probe's own (block) wake it at once.
        if not self._queue.put((event.ts, ev.encode(event)), decisive, timeout=1.0 if block else None, wake=block):
            self.probe_drops[ev.KIND_NAMES[event.KIND]] += 1

    # -- threads --------------------------------------------------------------------------

    def _read_loop(self) -> None:
        assert self._rings is not None
        poller = select.poll()
        for ring in self._rings:
            poller.register(ring.fd, select.POLLIN)
        try:
            while not self._stop.is_set():
                poller.poll(FLUSH_S * 1000)  # at once if records wait; the kernel wakes nobody
                self._drain()
            self._drain(final=True)  # what arrived before the stop
        except BaseException as exc:
            self._fail(exc)

    def _drain(self, final: bool = False) -> None:
        """Both rings, in batches until they are empty (or the probe stops; the `final` drain, after
        the stop, takes at most FINAL_ROUNDS batches): each batch takes the decisive ring first,
        so a flooded `events` ring never keeps it waiting."""
        assert self._rings is not None
        decisive, events = self._rings
        rounds = 0
        while True:
            read = decisive.read(self._on_decisive, POLL_BATCH) + events.read(self._on_record, POLL_BATCH)
            self._handle_polled()
            rounds += 1
            if not read or (final and rounds >= FINAL_ROUNDS) or (not final and self._stop.is_set()):
                return

    def _write_loop(self) -> None:
        try:
            while True:
                batch = self._queue.take(512)
                payloads = [p for p in batch if p is not None]
                if payloads:
                    self._sink.write_payloads(payloads)
                if None in batch:
                    return
        except BaseException as exc:
            self._fail(exc)

    def _stats_loop(self) -> None:
        try:
            tick = time.monotonic() + STATS_INTERVAL_S
            while not self._stop.is_set():
                wait = tick - time.monotonic()
                if wait > 0:
                    self._wait_for_requests(wait)
                    continue
                tick = max(tick + STATS_INTERVAL_S, time.monotonic())
                self._emit_counters()
        except BaseException as exc:  # without counters, drops would go unseen: stop loudly
            self._fail(exc)

    def _wait_for_requests(self, wait: float) -> None:
        """Until the next tick, serve the aggregator's launch-watch requests as they come."""
        fd = self._launch_requests
        if fd is None:
            self._stop.wait(wait)
            return
        ready = select.select([fd, self._wake_read], [], [], min(wait, STATS_INTERVAL_S))[0]
        if fd not in ready:
            return
        try:
            data = os.read(fd, 4096)
        except BlockingIOError:
            return
        if not data:  # the aggregator closed its end: no more requests
            self._launch_requests = None
            os.close(fd)
            return
        now = time.clock_gettime_ns(time.CLOCK_BOOTTIME)
        if self.launches is None:
            self._unwatched += len(data) // REQUEST.size  # no uprobes here (doctor says why)
            return
        for frame in self.launches.on_bytes(data, now):
            self._emit(frame, block=True)

    def _emit_counters(self) -> None:
        counters = self.gpu_counters()
        if counters.counts or counters.overflow or counters.memory or counters.memory_overflow:
            self._emit(counters, block=True)
        # a socket's counts may go ahead of its connect's record, still in a ring: the aggregator
        # keeps such rows until the record comes (sensor/aggregator/relay.py)
        for sockets in self.sock_bytes():
            self._emit(sockets, block=True)
        if self.launches is not None:
            for frame in self.launches.read(time.clock_gettime_ns(time.CLOCK_BOOTTIME)):
                self._emit(frame, block=True)
        self._emit(self.stats(), block=True)

    def _halt(self) -> None:
        """The threads' signal to stop; the timer, waiting on requests, wakes at once."""
        self._stop.set()
        with contextlib.suppress(OSError):
            os.write(self._wake_write, b"\0")

    def _fail(self, exc: BaseException) -> None:
        self._halt()
        if self._on_error is not None:
            self._on_error(exc)

    # -- counters -------------------------------------------------------------------------

    def kernel_drops(self) -> dict[str, int]:
        """Ring-buffer reserve failures by record type, summed over CPUs."""
        assert self.bpf is not None
        drops: dict[str, int] = {}
        table = self.bpf.maps["ringbuf_drops"]
        for kind in ev.Kind:
            if kind >= 32:
                continue
            drops[ev.KIND_NAMES[kind]] = sum(_U64.unpack(v)[0] for v in table.per_cpu(_U32.pack(kind)))
        return drops

    def gpu_counters(self) -> ev.GpuCounters:
        """The in-kernel GPU ioctl totals that changed since the last read.

        Entries of processes that exited are removed once their final totals are read, so
        the kernel map holds only live processes."""
        assert self.bpf is not None
        table = self.bpf.maps["gpu_counts"]
        exited, self._exited = self._exited, set()
        changed: list[list[int]] = []
        gone = []
        for key in list(table.keys()):
            tgid, cmd_id, kind = _GPU_COUNT_KEY.unpack(key)
            ident = (tgid, kind, cmd_id)
            per_cpu = [_GPU_COUNT.unpack(v) for v in table.per_cpu(key)]
            if not per_cpu:
                continue  # removed since the walk began
            total = (sum(v[0] for v in per_cpu), sum(v[1] for v in per_cpu),
                     sum(v[2] for v in per_cpu), max(v[3] for v in per_cpu))
            if self._gpu_totals.get(ident) != total:
                self._gpu_totals[ident] = total
                changed.append([tgid, kind, cmd_id, *total])
            if tgid in exited:
                gone.append((key, ident))
        for key, ident in gone:
            table.delete(key)
            self._gpu_totals.pop(ident, None)
        overflow = sum(_U64.unpack(v)[0] for v in self.bpf.maps["gpu_count_overflow"].per_cpu(_U32.pack(0)))
        memory = self._gpu_memory_changed(exited)
        memory_overflow = sum(_U64.unpack(v)[0] for v in self.bpf.maps["gpu_mem_overflow"].per_cpu(_U32.pack(0)))
        now = time.clock_gettime_ns(time.CLOCK_BOOTTIME)
        return ev.GpuCounters(now, os.getpid(), os.getpid(), changed, overflow, memory, memory_overflow)

    def _gpu_memory_changed(self, exited: set[int]) -> list[list[object]]:
        """The per-process memory totals (sensor/bpf/gpu.bpf.c, gpu_mem) that changed since the
        last read; an exited process's entry goes once its final totals are read, and so does
        one whose exit record was lost (sent already, unchanged, and its process gone)."""
        assert self.bpf is not None
        table = self.bpf.maps["gpu_mem"]
        changed: list[list[object]] = []
        for key in list(table.keys()):
            value = table.lookup(key)
            if value is None:
                continue  # removed since the walk began
            (tgid,) = _U32.unpack(key)
            sent = self._gpu_memory.get(tgid) == value
            if not sent:
                self._gpu_memory[tgid] = value
                changed.append(_memory_row(tgid, value))
            if tgid in exited or (sent and not os.path.exists(f"/proc/{tgid}")):
                table.delete(key)
                self._gpu_memory.pop(tgid, None)
        return changed

    def sock_bytes(self) -> list[ev.SockBytes]:
        """The TCP sockets whose byte counts changed since the last read, in frames of at most
        SOCK_ROWS_PER_FRAME rows; closed sockets' final counts are sent once and deleted from the
        kernel. Sockets are named by socket_id, never by their kernel address."""
        assert self.bpf is not None
        maps = self.bpf.maps
        if "sock_bytes" not in maps:
            return []
        now = time.clock_gettime_ns(time.CLOCK_BOOTTIME)  # before the read: what it holds is older
        rows: list[list[int]] = []
        live = maps["sock_bytes"]
        seen: set[int] = set()
        for key in list(live.keys()):
            raw = live.lookup(key)
            if raw is None:
                continue  # closed since the walk began: its totals are in sock_bytes_closed
            (sk,) = _U64.unpack(key)
            sent, received, gen, last_ts, tgid, _ = _SOCK_BYTES.unpack(raw)
            seen.add(sk)
            if (sent or received) and self._sock_totals.get(sk) != (sent, received):
                self._sock_totals[sk] = (sent, received)
                rows.append([records.socket_id(sk, gen), tgid, sent, received, last_ts, 0])
        closed = maps["sock_bytes_closed"]
        for key in list(closed.keys()):
            raw = closed.lookup(key)
            if raw is None:
                continue
            sk, gen = _SOCK_GEN_KEY.unpack(key)
            sent, received, _, last_ts, tgid, _ = _SOCK_BYTES.unpack(raw)
            rows.append([records.socket_id(sk, gen), tgid, sent, received, last_ts, 1])
            closed.delete(key)
        for sk in set(self._sock_totals) - seen:
            del self._sock_totals[sk]
        overflow = maps["sock_bytes_overflow"]
        not_counted, closed_lost = (sum(_U64.unpack(v)[0] for v in overflow.per_cpu(_U32.pack(i))) for i in (0, 1))
        if not rows and not not_counted and not closed_lost:
            return []
        chunks = [rows[i:i + SOCK_ROWS_PER_FRAME] for i in range(0, len(rows), SOCK_ROWS_PER_FRAME)] or [[]]
        return [ev.SockBytes(now, os.getpid(), os.getpid(), chunk, not_counted, closed_lost) for chunk in chunks]

    def stats(self) -> ev.Stats:
        now = time.clock_gettime_ns(time.CLOCK_BOOTTIME)
        kernel = self.kernel_drops() if self.bpf is not None else {}
        probe = dict(self.probe_drops)
        if self.decode_errors:
            probe["undecodable"] = self.decode_errors
        missed = {"route_by_range": self.router.stats.by_range, "binary_unread": self.identity.stats.unread,
                  "container_unnamed": self.containers.stats.unnamed,
                  "container_unread": self.containers.stats.cgroup_unread,
                  "pod_gpus_unread": self.containers.stats.gpus_unread,
                  "ssh_config_unread": self.ssh_configs.stats.unread}
        if self._unwatched:
            missed["launch_unwatched"] = self._unwatched
        if self.launches is not None and self.launches.stats.invalid:
            missed["launch_request_invalid"] = self.launches.stats.invalid
        return ev.Stats(now, os.getpid(), os.getpid(), kernel, probe, dict(self.records), missed)

    def _emit_snapshot(self) -> None:
        procs = list(procfs.snapshot())
        # what the aggregator started before the programs were attached is the agent's too
        started = _descendants({proc.tgid: proc.ppid for proc in procs}, self._exclude_trees)
        self.exclude(started, descendants=True)
        for proc in procs:
            if proc.tgid not in self._exclude and proc.tgid not in started:
                self.router.prepare(proc.netns, proc.tgid)
                proc.container = self._container_of(proc.tgid, proc.cgroup_id, proc.ts)
                self._emit(proc, block=True)


def _descendants(parent_of: dict[int, int], roots: set[int]) -> set[int]:
    """Every process below `roots` (not the roots themselves), from a pid -> ppid map."""
    children: dict[int, list[int]] = {}
    for pid, ppid in parent_of.items():
        children.setdefault(ppid, []).append(pid)
    found: set[int] = set()
    todo = list(roots)
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found and child not in roots:
                found.add(child)
                todo.append(child)
    return found


def _memory_row(tgid: int, value: bytes) -> list[object]:
    """A GpuCounters.memory row (ev.GpuMemory's fields) from a struct gpu_mem."""
    numbers = _GPU_MEM.unpack_from(value)
    lists = [list(numbers[i * _FAMILIES:(i + 1) * _FAMILIES]) for i in range(4)]
    return [tgid, *lists, *numbers[4 * _FAMILIES:]]


def _event_ts(polled: tuple[ev.Event, bool, records.ExecFacts | None]) -> int:
    return polled[0].ts


def _container_frame(container: Container, ts: int) -> ev.Container:
    return ev.Container(ts, os.getpid(), os.getpid(), container.key, container.runtime, container.id,
                        container.name, container.image, container.pod_uid, container.pod_name,
                        container.pod_namespace, container.container_name, list(container.gpus))


def _detach(loaded: Loaded) -> None:
    """Detach every program, without making the agent wait for the kernel to finish.

    Each tracepoint's detach waits for RCU grace periods: for our 18, over a second one after
    another, still about 0.6 s all at once, and a failing agent must be gone within a second.
    So the last references to the attachments go to a detached process that holds nothing
    else: it waits until we have dropped ours (each close here is then only a reference
    dropped), then exits, and the kernel releases them there, after we are gone."""
    fds, loaded.links = sorted(loaded.links), []
    loaded.close_maps()
    if fds:
        ours_dropped, go = os.pipe()
        middle = os.fork()
        if middle == 0:
            _release_in_background([*fds, ours_dropped])
        os.waitpid(middle, 0)
        for fd in (ours_dropped, *fds):
            os.close(fd)
        os.close(go)  # now the last references are its


def _release_in_background(keep: list[int]) -> None:
    """In a forked child (async-signal-safe calls only): a grandchild, reparented at once so
    nobody waits for it, keeps only the `keep` fds (the last is the pipe it waits on: its end
    says the parent's references are gone) and exits, which releases them."""
    try:
        if os.fork() == 0:
            low = 0
            for fd in sorted(keep):
                os.closerange(low, fd)  # the pipe to the aggregator above all: it must end now
                low = fd + 1
            os.closerange(low, resource.getrlimit(resource.RLIMIT_NOFILE)[0])
            os.read(keep[-1], 1)
    finally:
        os._exit(0)


def _fill_argv_from_procfs(event: ev.Exec, config: program.ProbeConfig) -> None:
    """A successful exec whose argv the kernel could not read: take /proc/PID/cmdline, held to
    the same limits as the kernel's copy.

    Marked ARGV_FROM_PROCFS, because the process may have rewritten it already. A failed
    exec keeps an unread argv: its /proc entry shows the old image."""
    if not event.flags & ev.ARGV_UNREAD or event.result != 0:
        return
    argv = procfs.read_cmdline(event.tgid)
    if argv is None:
        return
    event.argc = len(argv)
    if len(argv) > config.max_args:
        event.flags |= ev.ARGV_TRUNCATED
    if any(len(arg) > config.arg_len for arg in argv[: config.max_args]):
        event.flags |= ev.ARG_CUT
    event.argv = [arg[: config.arg_len] for arg in argv[: config.max_args]]
    event.flags |= ev.ARGV_FROM_PROCFS
