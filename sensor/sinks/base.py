"""What every sink keeps to: its own worker and bounded queue, retries with backoff and jitter,
counters, and resuming from its own cursor in the journal.

Alerts, incidents and sensor gaps are in the journal before any sink sees them: a sink's
worker reads them from the journal after its cursor (kept in a small file beside the journal)
and moves the cursor only when the endpoint took them, so a sink that was down, or an agent
that restarted, resumes where it stopped (at least once; the records carry ids for
de-duplication), within the sink's horizon: what is older than that when it gets to it is
counted as dropped, not sent. Events and facts, which are not journaled, go through a bounded
queue; a full queue drops and counts. Nothing here ever blocks the aggregator: it only
appends to a queue and wakes the worker.

A sink type is a module with TYPE, `options(raw, file) -> Options` (raising Invalid with a
line for a bad value) and a Delivery class: `Delivery(options, host)`, `send(records)`
raising SinkError, `reopen()` (SIGHUP: logrotate) and `close()`, and a `target` string.
"""

from __future__ import annotations

import os
import queue
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from google.protobuf.message import Message

from sensor.api.v1 import gpusentry_pb2 as pb
from sensor.outward import record

# Keys every sink has; a type's options() must accept them and leave them to this module.
COMMON_KEYS = ("type", "name", "kinds", "horizon", "queue_size", "batch", "linger")
JOURNALED = ("alert", "incident", "sensor_gap")
KINDS = (*JOURNALED, "event", "fact")
DEFAULT_KINDS = JOURNALED
DEFAULT_HORIZON_S = 24 * 3600
DEFAULT_QUEUE = 10_000
DEFAULT_BATCH = 100
# After a wake-up a worker waits this long before reading, so that a burst of alerts goes in one
# batch, and an incident that changed with each of them is rendered and sent once (its latest
# version), not once per alert: rendering is CPU the aggregator's thread would otherwise wait on.
DEFAULT_LINGER_S = 0.5
IDLE, SENT, FAILED = "idle", "sent", "failed"  # what one pass of a sink's worker did


class Invalid(ValueError):
    """A bad sink setting: the line it is on, and what is accepted."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(message)
        self.line = line
        self.message = message


def reject_unknown(raw: Any, keys: Sequence[str], sink: str) -> None:
    """A key neither the sink type's (`keys`) nor common to every sink is a mistake: name it."""
    unknown = [key for key in raw if key not in keys and key not in COMMON_KEYS]
    if unknown:
        raise Invalid(raw.line_of(unknown[0]), f"unknown key {unknown[0]!r} for {sink}; its keys are "
                                               f"{', '.join(keys)} (and {', '.join(COMMON_KEYS)})")


def tls_files(raw: Any, file: Path, refused: str | None) -> dict[str, Path | None]:
    """`ca`, `cert` and `key` of a sink's entry: PEM files, relative to the configuration file's
    directory; `cert` and `key` go together. `refused`, when given, is why none may be given here
    (the transport is not TLS)."""
    files: dict[str, Path | None] = {}
    for key in ("ca", "cert", "key"):
        value = raw.get(key)
        if value is not None and refused is not None:
            raise Invalid(raw.line_of(key), f"`{key}` {refused}")
        if value is not None and (not isinstance(value, str) or not value.strip()):
            raise Invalid(raw.line_of(key), f"`{key}` is the path of a PEM file")
        files[key] = file.parent / value if value is not None else None
    if (files["cert"] is None) != (files["key"] is None):
        raise Invalid(raw.line_of("cert" if files["cert"] is not None else "key"),
                      "`cert` and `key` go together: the client certificate and its private key")
    return files


class SinkError(Exception):
    """A delivery that did not go through. `permanent`: the endpoint refused these records for
    good (e.g. HTTP 400), so trying again cannot help: they are counted failed and skipped."""

    def __init__(self, message: str, permanent: bool = False, refused: int | None = None) -> None:
        super().__init__(message)
        self.permanent = permanent
        self.refused = refused  # permanent: how many of the records were refused (None: all of them)


class Delivery(Protocol):
    target: str  # where it sends, for status; never a secret

    def send(self, records: Sequence[pb.Record]) -> None: ...

    def reopen(self) -> None: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class Secret:
    """A secret named by where it is kept (a file, or an environment variable), read when it is
    used and never shown: its repr says only where it comes from."""

    file: Path | None = None
    env: str | None = None

    def read(self) -> str:
        if self.file is not None:
            return self.file.read_text().strip()
        value = os.environ.get(self.env or "")
        if value is None:
            raise SinkError(f"the environment variable {self.env} is not set")
        return value

    def __repr__(self) -> str:
        return f"<secret from {self.file}>" if self.file is not None else f"<secret from ${self.env}>"


@dataclass(frozen=True)
class SinkSpec:
    """One configured sink: its common settings, and its type's options."""

    type: str
    name: str
    options: Any
    where: str  # file:line of its entry, for messages
    kinds: tuple[str, ...] = DEFAULT_KINDS
    horizon_s: float = DEFAULT_HORIZON_S
    queue_size: int = DEFAULT_QUEUE
    batch: int = DEFAULT_BATCH
    linger_s: float = DEFAULT_LINGER_S


@dataclass
class Counters:
    sent: int = 0
    retried: int = 0
    dropped: int = 0
    failed: int = 0
    last_error: str = ""
    up: bool = True


@dataclass
class Backoff:
    """Exponential backoff with full jitter: after the n-th failure in a row, wait a random time
    up to min(cap, base * 2**n), so that many agents do not retry in step."""

    base_s: float = 0.5
    cap_s: float = 30.0
    failures: int = 0
    rng: random.Random = field(default_factory=random.Random)

    def next_wait(self) -> float:
        self.failures += 1
        return self.rng.uniform(0, min(self.cap_s, self.base_s * 2 ** (self.failures - 1)))

    def reset(self) -> None:
        self.failures = 0


class Journaled(Protocol):
    """What a sink reads from the journal (sensor.journal.Journal)."""

    def records(self, after: int = 0, limit: int = 100) -> list[Any]: ...

    def last_cursor(self) -> int: ...


class CursorFile:
    """Where a sink resumes: the cursor of the last journaled record it delivered, in a file
    beside the journal (written whole, then renamed into place: never half a number)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> int | None:
        try:
            text = self.path.read_text().strip()
        except FileNotFoundError:
            return None
        return int(text) if text.isdigit() else None

    def save(self, cursor: int) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_suffix(".partial")
        partial.write_text(f"{cursor}\n")
        partial.replace(self.path)


def wall_ns(item: Message) -> int:
    """When a journaled record happened, for the horizon."""
    if isinstance(item, pb.Alert):
        return int(item.time.ToNanoseconds())
    if isinstance(item, pb.Incident):
        return int(item.last_seen.ToNanoseconds())
    if isinstance(item, pb.SensorGap):
        return int(item.end.ToNanoseconds())
    return 0


def kind_of(item: Message) -> str:
    return {pb.Alert: "alert", pb.Incident: "incident", pb.SensorGap: "sensor_gap", pb.Event: "event",
            pb.Fact: "fact"}.get(type(item), "")


def latest_versions(records: list[Message]) -> list[Message]:
    """The records, with each incident only in its last version among them: the earlier ones
    are superseded (the journal itself keeps only the latest), so sending them is work for nothing."""
    last = {r.id: n for n, r in enumerate(records) if isinstance(r, pb.Incident)}
    return [r for n, r in enumerate(records) if not isinstance(r, pb.Incident) or last[r.id] == n]


class Sink:
    """One sink's worker: a thread that delivers journaled records after its cursor, then the
    events queued for it, with retries; the aggregator only calls offer() and wake()."""

    def __init__(self, spec: SinkSpec, delivery: Delivery, journal: Journaled, cursor_file: CursorFile,
                 host: pb.Host, clock: Callable[[], int] = time.time_ns, backoff: Backoff | None = None) -> None:
        self.spec = spec
        self.delivery = delivery
        self.journal = journal
        self.cursor_file = cursor_file
        self.host = host
        self.clock = clock
        self.backoff = backoff or Backoff()
        self.counters = Counters()
        self.events: queue.Queue[Message] = queue.Queue(maxsize=spec.queue_size)
        self.cursor = 0
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._reopen = threading.Event()
        self._thread: threading.Thread | None = None
        self._journaled = [k for k in spec.kinds if k in JOURNALED]

    # -- the aggregator's side: never blocks ------------------------------------------------

    def wants(self, kind: str) -> bool:
        return kind in self.spec.kinds

    def offer(self, item: Message) -> None:
        """An event or fact for this sink; a full queue drops it, counted."""
        try:
            self.events.put_nowait(item)
        except queue.Full:
            self.counters.dropped += 1
            return
        self._wake.set()

    def wake(self) -> None:
        """Something new was journaled."""
        self._wake.set()

    def reopen(self) -> None:
        """SIGHUP: the worker reopens its delivery (a file sink's file, after logrotate)."""
        self._reopen.set()
        self._wake.set()

    # -- the worker ---------------------------------------------------------------------------

    def start(self) -> None:
        saved = self.cursor_file.load()
        end = self.journal.last_cursor()
        # A new sink starts at the journal's end: it sends from now on, not the whole history.
        # A cursor past the end belongs to a journal that was replaced: from its end too.
        self.cursor = saved if saved is not None and saved <= end else end
        if self.cursor != saved:
            self.cursor_file.save(self.cursor)
        self._thread = threading.Thread(target=self._run, name=f"sink {self.spec.name}", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Deliver what is waiting, for up to `timeout` seconds, then close."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self.delivery.close()

    def _run(self) -> None:
        while True:
            if self._reopen.is_set():
                self._reopen.clear()
                self._attempt(self.delivery.reopen)
            outcomes = {self._deliver_journaled(), self._deliver_events()}
            if self._stop.is_set() and SENT not in outcomes:
                return  # stopping: nothing more goes through (what is journaled waits for the next run)
            if outcomes == {IDLE}:  # a failure already waited its backoff: only idleness waits here
                if self._wake.wait(1.0) and not self._stop.is_set():
                    self._stop.wait(self.spec.linger_s)  # let the burst that woke it gather
                self._wake.clear()

    def _deliver_journaled(self) -> str:
        if not self._journaled:
            return IDLE
        records = self.journal.records(after=self.cursor, limit=self.spec.batch)
        if not records:
            return IDLE
        last = records[-1].cursor
        horizon = self.clock() - int(self.spec.horizon_s * 1e9)
        fresh = latest_versions([r for r in records if kind_of(r) in self._journaled and wall_ns(r) >= horizon])
        self.counters.dropped += sum(1 for r in records if kind_of(r) in self._journaled and wall_ns(r) < horizon)
        if fresh and not self._send(fresh):
            return FAILED  # not delivered: the cursor stays, and the same records are tried again
        self.cursor = last
        self.cursor_file.save(last)
        return SENT

    def _deliver_events(self) -> str:
        batch: list[Message] = []
        while len(batch) < self.spec.batch:
            try:
                batch.append(self.events.get_nowait())
            except queue.Empty:
                break
        if not batch:
            return IDLE
        while not self._send(batch):  # events are not journaled: tried until the agent stops
            if self._stop.is_set():
                self.counters.dropped += len(batch)
                return FAILED
        return SENT

    def _send(self, items: list[Message]) -> bool:
        """Deliver once; on failure, count it and wait the backoff (cut short by stop)."""
        records = [record(item, self.host) for item in items]
        try:
            self.delivery.send(records)
        except SinkError as exc:
            self.counters.last_error, self.counters.up = str(exc), False
            if exc.permanent:  # refused for good: skipped, so the rest can go; the endpoint itself answered
                refused = len(records) if exc.refused is None else min(exc.refused, len(records))
                self.counters.failed += refused
                self.counters.sent += len(records) - refused
                self.counters.up = True
                return True
            self.counters.retried += 1
            self._stop.wait(self.backoff.next_wait())
            return False
        self.counters.sent += len(records)
        self.counters.last_error, self.counters.up = "", True
        self.backoff.reset()
        return True

    def _attempt(self, action: Callable[[], None]) -> None:
        try:
            action()
        except SinkError as exc:
            self.counters.last_error, self.counters.up = str(exc), False

    # -- status -------------------------------------------------------------------------------

    def status(self) -> pb.SinkStatus:
        c = self.counters
        behind = max(0, self.journal.last_cursor() - self.cursor) if self._journaled else 0
        return pb.SinkStatus(name=self.spec.name, type=self.spec.type, target=self.delivery.target, sent=c.sent,
                             retried=c.retried, dropped=c.dropped, failed=c.failed, queued=self.events.qsize(),
                             behind=behind, cursor=self.cursor, last_error=c.last_error, up=c.up)
