"""Launch evidence: which processes are worth a launch watch, and what their counts say.

Counting a process's kernel launches costs it a trap per launch (sensor/probe/launches.py,
bench/launches.py), so the aggregator asks the probe for it only for a process that already
uses a GPU (it has a GPU session) and is already suspicious: in a tunnel's scope, or in the
scope of a sequence rule whose first step matched (an open sequence). A process is asked for
once; the probe says what became of it (LaunchWatch frames) and sends its counts each second
(LaunchCounts), from which come `gpu_launches` facts: launches a second and distinct kernels,
one per window (WINDOW_NS) in which it launched, and a last one when the watch ends (if it
launched at all while watched).

Requests go through `send` (pid, start time), the agent's pipe to the probe; offline (a capture
analysed) there is none, and nothing is asked.
"""

from __future__ import annotations

import os
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from sensor import events as ev
from sensor.aggregator.facts import Fact, GpuLaunches
from sensor.aggregator.process_table import Process, ProcKey

WINDOW_NS = 5 * 1_000_000_000
MAX_ASKED = 4096  # processes asked for, remembered so that none is asked twice

Send = Callable[[int, int], bool]  # (pid, start_ns) -> whether the request went (False: the pipe was full)


@dataclass
class LaunchSession:
    """What is known of one process's launches."""

    reason: str  # why it was asked for: "tunnel" or "sequence <rule id>"
    state: str = "requested"  # requested, watching, refused, ended
    why: str = ""  # why refused or ended
    detail: str = ""  # what the kernel answered, when it would not attach
    library: str = ""
    since_ns: int = 0
    launches: int = 0  # both entry points, since the watch began
    distinct: int = 0
    unrecorded: int = 0
    launches_per_s: int = 0  # over the last window
    window_ts: int = 0  # where the current window began
    window_launches: int = 0  # launches when it began


@dataclass
class LaunchStats:
    asked: int = 0
    unsent: int = 0  # requests the full pipe did not take (counted, not retried)
    refused: Counter[str] = field(default_factory=Counter)
    ended: Counter[str] = field(default_factory=Counter)
    watching: int = 0  # now


def pipe_sender(fd: int) -> Send:
    """Requests written to the probe's pipe; never waits: a full pipe refuses (counted)."""
    os.set_blocking(fd, False)

    def send(pid: int, start_ns: int) -> bool:
        try:
            return os.write(fd, ev.LAUNCH_REQUEST.pack(pid, start_ns)) == ev.LAUNCH_REQUEST.size
        except (BlockingIOError, BrokenPipeError):
            return False

    return send


class LaunchEvidence:
    def __init__(self, send: Send | None = None) -> None:
        self.send = send
        self.sessions: OrderedDict[ProcKey, LaunchSession] = OrderedDict()
        self.stats = LaunchStats()

    def consider(self, process: Process, reason: str | None) -> None:
        """Ask for a watch of this process (it uses a GPU), if it is suspicious (`reason`) and was
        never asked for."""
        if reason is None or self.send is None or not process.alive or process.key in self.sessions:
            return
        self.sessions[process.key] = LaunchSession(reason)
        while len(self.sessions) > MAX_ASKED:
            self.sessions.popitem(last=False)
        self.stats.asked += 1
        if not self.send(process.pid, process.start_ns):
            self.stats.unsent += 1
            self.sessions[process.key].state, self.sessions[process.key].why = "refused", "unsent"

    def on_watch(self, event: ev.LaunchWatch, process: Process) -> list[Fact]:
        session = self._session(process, event.start_ns)
        before = session.state
        session.state, session.why, session.detail = event.state, event.reason, event.detail
        session.library = event.library or session.library
        if event.state == "watching":
            session.since_ns = session.window_ts = event.ts
            self.stats.watching += 1
        elif event.state == "refused":
            self.stats.refused[event.reason] += 1
        elif event.state == "ended":
            self.stats.ended[event.reason] += 1
            self.stats.watching -= before == "watching"
            return self._window(session, event.ts, process.key, final=True)
        return []

    def on_counts(self, event: ev.LaunchCounts, process: Process) -> list[Fact]:
        session = self._session(process, event.start_ns)
        if not session.since_ns:
            session.since_ns = session.window_ts = event.since_ns  # its watching frame was not seen
        session.launches = event.launches + event.launches_ex
        session.distinct, session.unrecorded = event.distinct, event.unrecorded
        if event.ts - session.window_ts >= WINDOW_NS:
            return self._window(session, event.ts, process.key)
        return []

    def forget(self, key: ProcKey) -> None:
        self.sessions.pop(key, None)

    def _session(self, process: Process, start_ns: int) -> LaunchSession:
        session = self.sessions.get(process.key)
        if session is None:  # a watch this aggregator did not ask for (another run's, a capture's)
            session = self.sessions[process.key] = LaunchSession("")
        return session

    def _window(self, session: LaunchSession, ts: int, key: ProcKey, final: bool = False) -> list[Fact]:
        """The window that ends at `ts`: its fact, when the process launched in it; the last one
        (`final`) whenever it launched at all while watched, so that the end is told too."""
        launched = session.launches - session.window_launches
        elapsed = ts - session.window_ts
        session.window_ts, session.window_launches = ts, session.launches
        if elapsed <= 0 or launched < 0 or (launched == 0 and not (final and session.launches)):
            return []
        session.launches_per_s = launched * 1_000_000_000 // elapsed
        watch = session.why if final else "watching"
        return [GpuLaunches(ts, key, session.launches_per_s, session.distinct, max(1, round(elapsed / 1e9)),
                            launched, session.launches, watch)]
