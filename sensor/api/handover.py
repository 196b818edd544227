"""The aggregator's side of the API's fan-out: items handed to the stream process.

Serving subscribers is per-subscriber Python work; in the aggregator's process it shared one
interpreter lock with detection, and with 20 firehose subscribers the aggregator fell behind
the probe (bench/api.py). Here the aggregator only serialises each item once, in batches,
and writes them to a pipe it never waits on: what does not fit (the stream process is behind)
is dropped, counted by kind, and the next batch that gets through carries the counts, so every
subscriber gets a Gap for them (and the journaled ones again from the journal).

The stream process reports back (sensor/api/wire.py): which subscribers there are, what they
want (events and facts are converted only while someone wants them), and what they missed.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import IO, Any

from sensor.api import wire
from sensor.api.broker import ALERT, EVENT, FACT, INCIDENT, NOTHING, ONE, SENSOR_GAP, Tally
from sensor.api.v1 import gpusentry_pb2 as pb

BATCH = 256  # items per frame at most
BATCH_AGE_S = 0.002  # a batch older than this goes with the next item
FLUSH_EVERY_S = 0.005  # or from the flusher thread, when no next item comes
PENDING_BYTES = 8 << 20  # written but not yet taken by the pipe: beyond it, batches are dropped
PIPE_BYTES = 1 << 20  # asked of the kernel for the pipe (the unprivileged maximum by default)


@dataclass(frozen=True)
class Item:
    event: pb.Event | None = None
    alert: pb.Alert | None = None
    sensor_gap: pb.SensorGap | None = None
    incident: pb.Incident | None = None
    fact: pb.Fact | None = None
    # what filters look at (events and facts)
    exec_id: str = ""
    exe: str = ""
    lineage: frozenset[str] = frozenset()  # the process's key and its ancestors' ("pid:start_ns")
    cgroup_id: int = 0

    @property
    def record(self) -> pb.Alert | pb.SensorGap | pb.Incident | None:
        """The journaled record it carries (an alert, a sensor gap, an incident version), if any."""
        return self.alert or self.sensor_gap or self.incident

    @property
    def cursor(self) -> int:
        """The journal cursor of its record; 0 for an event or a fact (not journaled)."""
        record = self.record
        return record.cursor if record is not None else 0

    def on_wire(self) -> wire.WireItem:
        if self.event is not None:
            return (EVENT, self.event.SerializeToString(), 0, self.event.kind, self.exec_id, self.exe,
                    list(self.lineage), self.cgroup_id)
        if self.fact is not None:
            return (FACT, self.fact.SerializeToString(), 0, self.fact.kind, self.exec_id, self.exe,
                    list(self.lineage), self.cgroup_id)
        kind = ALERT if self.alert is not None else INCIDENT if self.incident is not None else SENSOR_GAP
        record = self.record
        assert record is not None, "an item carries an event, a fact or a journaled record"
        return (kind, record.SerializeToString(), record.cursor, 0, "", "", [], 0)


@dataclass
class HandoverStats:
    """Published: handed to the stream process. The rest comes from it (its STATUS frames)."""

    published_events: int = 0
    published_alerts: int = 0
    published_sensor_gaps: int = 0
    published_incidents: int = 0
    published_facts: int = 0
    dropped: Tally = NOTHING  # not handed over: the pipe was full (or the stream process gone)
    subscribers: int = 0
    refused: int = 0  # subscriptions refused at the limit
    missed: dict[str, int] = field(default_factory=dict)  # by subscriber id: items lost to gaps

    @property
    def published(self) -> int:
        return self.published_events + self.published_alerts + self.published_sensor_gaps + \
            self.published_incidents + self.published_facts


@dataclass(frozen=True)
class Position:
    position: int  # in the count of items published: what a subscriber has taken


class Handover:
    def __init__(self, capacity: int = 65536, max_subscribers: int = 64, pipe_bytes: int = PIPE_BYTES,
                 pending_bytes: int = PENDING_BYTES) -> None:
        self.capacity = capacity  # of the stream process's ring
        self.max_subscribers = max_subscribers
        self.pipe_bytes, self.pending_bytes = pipe_bytes, pending_bytes
        self.stats = HandoverStats()
        self._fd = -1  # the stream process's stdin, non-blocking; -1 before it starts
        self._lock = threading.Lock()
        self._batch: list[wire.WireItem] = []
        self._batch_kinds = NOTHING
        self._batch_cursor = 0
        self._batch_born = 0.0
        self._lost = NOTHING  # dropped since the last batch that went through
        self._lost_cursor = 0
        self._pending = bytearray()
        self._last_cursor = 0  # of the last journaled record published
        self._wants = (False, False, False)
        self._backlog: list[int] = []
        self._flusher: threading.Thread | None = None
        self._closed = threading.Event()
        self._outstanding = threading.Event()  # a batch, bytes or a hole wait: the flusher has work

    def journaled_before(self, cursor: int) -> None:
        """Records up to this cursor were journaled before the API existed: none will be published."""
        with self._lock:
            self._last_cursor = max(self._last_cursor, cursor)

    @property
    def wants_events(self) -> bool:
        return self._wants[0]

    @property
    def wants_facts(self) -> bool:
        return self._wants[1]

    @property
    def wants_lineage(self) -> bool:
        return self._wants[2]

    def subscriptions(self) -> list[Position]:
        published = self.stats.published
        return [Position(max(0, published - behind)) for behind in self._backlog]

    # -- the stream process's pipes -------------------------------------------------------

    def init_frame(self, rule_ids: Iterable[str]) -> bytes:
        """What the stream process must know before it serves."""
        with self._lock:
            return wire.frame(wire.INIT, {"rules": sorted(rule_ids), "last_cursor": self._last_cursor})

    def attach(self, stdin: IO[bytes]) -> None:
        """Hand over to the stream process, which now serves, on this pipe (INIT written)."""
        fd = stdin.fileno()
        with contextlib.suppress(OSError, AttributeError):  # a smaller pipe only drops sooner
            fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, self.pipe_bytes)
        os.set_blocking(fd, False)
        with self._lock:
            self._fd = fd
            # records journaled since INIT were published to nobody: subscribers start after them
            self._pending += wire.frame(wire.ITEMS, [list(NOTHING), self._last_cursor, []])
            self._write()
            self._mark_outstanding()
        self._closed.clear()
        self._flusher = threading.Thread(target=self._flush_old, name="api handover", daemon=True)
        self._flusher.start()

    def detach(self, grace: float) -> None:
        """The stream process stops: its subscribers get `grace` seconds. What is still pending
        and does not fit in the pipe now is not waited for."""
        self._closed.set()
        self._outstanding.set()  # the flusher wakes, and ends
        with self._lock:
            if self._batch:
                self._flush()
            self._pending += wire.frame(wire.STOP, grace)
            with contextlib.suppress(OSError):  # a full pipe: the stream process stops at its end, at once
                self._write()
            self._fd = -1

    def status(self, body: dict[str, Any]) -> None:
        """A STATUS frame from the stream process."""
        stats = self.stats
        stats.subscribers, stats.refused = int(body["subscribers"]), int(body["refused"])
        stats.missed = {str(k): int(v) for k, v in body["missed"].items()}
        self._backlog = [int(b) for b in body["backlog"]]
        self._wants = (bool(body["wants"][0]), bool(body["wants"][1]), bool(body["wants"][2]))

    def rules(self, rule_ids: Iterable[str]) -> None:
        """The rules changed (a reload): subscriptions are checked against these from now on."""
        with self._lock:
            if self._fd >= 0:
                self._pending += wire.frame(wire.RULES, sorted(rule_ids))
                self._write()
                self._mark_outstanding()

    # -- the aggregator's thread: never blocks --------------------------------------------

    def publish(self, items: list[Item]) -> None:
        """Hand items over (events, facts, alerts, sensor gaps, incidents) with their filter keys.

        Journaled records must come in cursor order: a subscriber that passed cursor N skips any
        record at or below it, so one that came late would be lost to it (ValueError instead)."""
        if not items:
            return
        with self._lock:
            self._last_cursor = self._in_order(items)
            if self._fd < 0:
                return  # no stream process: nobody subscribed
            if not self._batch:
                self._batch_born = time.monotonic()
            for item in items:
                on_wire = item.on_wire()
                self._batch.append(on_wire)
                self._batch_kinds = self._batch_kinds.plus(ONE[on_wire[0]])
                self._batch_cursor = max(self._batch_cursor, on_wire[2])
            # journaled records go at once: alerts are what someone waits for
            if self._batch_cursor or len(self._batch) >= BATCH or time.monotonic() - self._batch_born >= BATCH_AGE_S:
                self._flush()
            self._mark_outstanding()

    def _mark_outstanding(self) -> None:
        """Wake the flusher when something waits (under the lock); an idle agent wakes nobody."""
        if (self._batch or self._pending or self._lost != NOTHING) and not self._outstanding.is_set():
            self._outstanding.set()

    def _in_order(self, items: list[Item]) -> int:
        """The last cursor among these items, once they are known to follow the ones published."""
        last = self._last_cursor
        for cursor in (item.cursor for item in items if item.cursor):
            if cursor <= last:
                raise ValueError(f"journal record {cursor} published after record {last}: journal and publish "
                                 "records from one thread, each right after it is journaled")
            last = cursor
        return last

    def _flush(self) -> None:
        """The batch as one frame, after any hole: into the pipe, or dropped (counted) if it is full."""
        batch, kinds, cursor = self._batch, self._batch_kinds, self._batch_cursor
        self._batch, self._batch_kinds, self._batch_cursor = [], NOTHING, 0
        if self._write() and len(self._pending) <= self.pending_bytes:
            self._pending += wire.frame(wire.ITEMS, [list(self._lost), self._lost_cursor, batch])
            self._lost, self._lost_cursor = NOTHING, 0
            self._count(kinds)
            self._write()
        else:
            self._lost = self._lost.plus(kinds)
            self._lost_cursor = max(self._lost_cursor, cursor)
            self.stats.dropped = self.stats.dropped.plus(kinds)

    def _write(self) -> bool:
        """Write what is pending, as much as the pipe takes; False once the stream process is gone."""
        while self._pending and self._fd >= 0:
            try:
                written = os.write(self._fd, self._pending)
            except BlockingIOError:
                return True
            except OSError:  # the stream process is gone: the watchdog stops the agent
                self._fd = -1
                self._pending.clear()
                return False
            del self._pending[:written]
        return self._fd >= 0

    def _count(self, kinds: Tally) -> None:
        stats = self.stats
        stats.published_events += kinds.events
        stats.published_alerts += kinds.alerts
        stats.published_sensor_gaps += kinds.sensor_gaps
        stats.published_incidents += kinds.incidents
        stats.published_facts += kinds.facts

    def _flush_old(self) -> None:
        """The last items of a burst, and what the pipe could not take, go without waiting for more."""
        while not self._closed.is_set():
            self._outstanding.wait()  # nothing waits: no wake-ups at all
            if self._closed.wait(FLUSH_EVERY_S):
                return
            with self._lock:
                if self._fd < 0:
                    self._outstanding.clear()  # nobody to hand anything to: until attached again
                    continue
                if (self._batch and time.monotonic() - self._batch_born >= BATCH_AGE_S) or self._lost != NOTHING:
                    self._flush()  # a hole with no batch after it is told at once, in an empty frame
                elif self._pending:
                    self._write()
                if not (self._batch or self._pending or self._lost != NOTHING):
                    self._outstanding.clear()

