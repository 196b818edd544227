"""Fan-out to subscribers, in the API's stream process (sensor/api/stream.py).

The aggregator hands over items (events and facts, and journaled records: alerts, sensor gaps
and incident versions), serialised once (sensor/api/handover.py); they land here in one
bounded ring, appended by the thread that reads the hand-over. Each subscriber reads the ring
at its own position: its queue is the part of the ring it has not read yet, bounded by the
ring's size. A subscriber that falls further behind than the ring holds has lost items: it
gets a Gap saying how many of each kind were published while it was behind, then its missed
records again from the journal, then the live stream from the oldest item still held. What the
aggregator could not hand over (its pipe was full) is a hole in the ring: every subscriber
reading past it gets a Gap for it, then the journal's records, the same way.

Journaled records reach the ring in cursor order (one thread journals and hands them over), so
a subscriber knows exactly which records came before it subscribed: those up to the last
cursor published then.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from sensor.api.filters import Filter
from sensor.api.v1 import gpusentry_pb2 as pb

Record = pb.Alert | pb.SensorGap | pb.Incident
# What an item is: its index in a Tally, and its code on the hand-over.
EVENT, ALERT, SENSOR_GAP, INCIDENT, FACT = range(5)


class Tally(NamedTuple):
    """Items of each kind published before some point (or lost in a hole)."""

    events: int = 0
    alerts: int = 0
    sensor_gaps: int = 0
    incidents: int = 0
    facts: int = 0

    def plus(self, other: Sequence[int]) -> Tally:
        return Tally(*(a + b for a, b in zip(self, other, strict=True)))

    def since(self, earlier: Tally) -> Tally:
        return Tally(*(now - then for now, then in zip(self, earlier, strict=True)))


NOTHING = Tally()
ONE = tuple(Tally(*(int(i == kind) for i in range(5))) for kind in range(5))  # one item of each kind


@dataclass(slots=True)
class Entry:
    """One item in the ring: its bytes, ready to go out, and what filters look at."""

    type: int  # EVENT, ALERT, SENSOR_GAP, INCIDENT, FACT
    # events and facts: the message as one element of Events/Facts (tag, length, bytes);
    # journaled records: a whole SubscribeResponse
    wire: bytes = b""
    record: Record | None = None  # journaled records, parsed (they are few)
    cursor: int = 0  # the journal cursor of its record; 0 for an event or a fact
    kind: int = 0  # the event's or the fact's kind
    exec_id: str = ""
    exe: str = ""
    lineage: frozenset[str] = frozenset()  # the process's key and its ancestors' ("pid:start_ns")
    cgroup_id: int = 0
    lost: Tally | None = None  # a hole: what the aggregator could not hand over here
    seq: int = 0  # set by the broker
    before: Tally = NOTHING  # what was published before this entry

    @property
    def weight(self) -> Sequence[int]:
        return self.lost if self.lost is not None else ONE[self.type]

    def matches(self, wanted: Filter) -> bool:
        if self.record is not None:
            return record_matches(self.record, wanted)
        if self.type == FACT:
            return wanted.facts and (not wanted.fact_kinds or self.kind in wanted.fact_kinds) and \
                self._process_matches(wanted)
        if not wanted.events or (wanted.kinds and self.kind not in wanted.kinds):
            return False
        return self._process_matches(wanted)

    def _process_matches(self, wanted: Filter) -> bool:
        if wanted.exec_id and self.exec_id != wanted.exec_id:
            return False
        if wanted.binary and self.exe != wanted.binary and self.exe.rsplit("/", 1)[-1] != wanted.binary:
            return False
        if wanted.ancestor and wanted.ancestor not in self.lineage:
            return False
        return not wanted.cgroup_ids or self.cgroup_id in wanted.cgroup_ids


def record_matches(record: Record, wanted: Filter) -> bool:
    """Whether a journaled record, live or replayed, is one the subscriber asked for."""
    if isinstance(record, pb.Alert):
        return alert_matches(record, wanted)
    if isinstance(record, pb.Incident):
        return incident_matches(record, wanted)
    return wanted.journaled  # a sensor gap: blind time concerns every rule, severity, process and incident


def alert_matches(alert: pb.Alert, wanted: Filter) -> bool:
    """An alert matches a process filter when any of its processes does."""
    if not wanted.alerts or (wanted.rule_ids and alert.rule_id not in wanted.rule_ids):
        return False
    return alert.severity >= wanted.min_severity and processes_match(alert.processes, wanted)


def incident_matches(incident: pb.Incident, wanted: Filter) -> bool:
    """An incident matches the alert filters when any of its rules does, its severity (the
    highest of its alerts) does, and any of its processes does."""
    if not wanted.incidents or (wanted.rule_ids and wanted.rule_ids.isdisjoint(incident.rule_ids)):
        return False
    return incident.severity >= wanted.min_severity and processes_match(incident.processes, wanted)


def processes_match(involved: Sequence[pb.AlertProcess], wanted: Filter) -> bool:
    processes = [p.process for p in involved]
    if wanted.exec_id and all(p.exec_id != wanted.exec_id for p in processes):
        return False
    if wanted.binary and all(p.exe != wanted.binary and p.exe.rsplit("/", 1)[-1] != wanted.binary
                             for p in processes):
        return False
    if wanted.ancestor and all(
            wanted.ancestor != p.process.exec_id.rsplit(":", 1)[0]
            and all(wanted.ancestor != a.exec_id.rsplit(":", 1)[0] for a in p.ancestors)
            for p in involved):
        return False
    return not wanted.cgroup_ids or any(p.cgroup_id in wanted.cgroup_ids for p in processes)


@dataclass
class Subscription:
    id: int
    filter: Filter
    position: int  # the next sequence number to read
    before: Tally  # what was published before `position`
    wakeup: asyncio.Event
    # Every journaled record up to this cursor was delivered, filtered out, or came before the
    # subscription; live records at or below it are skipped, and replays start after it.
    last_cursor: int = 0
    delivered: int = 0
    missed_events: int = 0
    missed_alerts: int = 0  # alerts and sensor gaps
    missed_incidents: int = 0
    missed_facts: int = 0
    gaps: int = 0

    @property
    def missed(self) -> int:
        return self.missed_events + self.missed_alerts + self.missed_incidents + self.missed_facts

    @property
    def shares(self) -> Filter:
        """What decides its stream, given the same items: subscribers with equal ones share bytes."""
        return dataclasses.replace(self.filter, since_cursor=None)


@dataclass
class Behind:
    """A subscriber's position fell out of the ring, or passed a hole."""

    missed_events: int
    missed_alerts: int
    missed_sensor_gaps: int
    missed_incidents: int = 0
    missed_facts: int = 0
    handover: bool = False  # the items were lost before the ring (the aggregator's pipe was full)


@dataclass
class BrokerStats:
    subscribers: int = 0
    refused: int = 0  # subscriptions refused at the limit
    missed: dict[str, int] = field(default_factory=dict)  # by subscriber id: items lost to gaps


class TooManySubscribers(RuntimeError):
    pass


class Broker:
    def __init__(self, capacity: int = 65536, max_subscribers: int = 64, slice_size: int = 512) -> None:
        self.capacity = capacity
        self.max_subscribers = max_subscribers
        self.slice_size = slice_size
        self._ring: deque[Entry] = deque(maxlen=capacity)
        self._next_seq = 0
        self._published = NOTHING  # everything published so far, holes included
        self._last_cursor = 0  # of the last journaled record published (or lost)
        self._lock = threading.Lock()
        self._subscriptions: dict[int, Subscription] = {}
        self._ids = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake_pending = False
        self.stats = BrokerStats()

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def journaled_before(self, cursor: int) -> None:
        """Records up to this cursor were journaled before this broker: none of them will be published."""
        with self._lock:
            self._last_cursor = max(self._last_cursor, cursor)

    def wants(self) -> tuple[bool, bool, bool]:
        """Whether any subscriber wants events, facts, lineage: the aggregator converts only those."""
        filters = [s.filter for s in list(self._subscriptions.values())]
        return (any(f.events for f in filters), any(f.facts for f in filters),
                any(f.needs_lineage for f in filters))

    # -- the hand-over's side -------------------------------------------------------------

    def publish(self, entries: list[Entry], lost: Tally = NOTHING, lost_cursor: int = 0) -> None:
        """Append entries after a hole of `lost` items (the last journaled one at `lost_cursor`),
        if any; never blocks on subscribers."""
        if lost != NOTHING:
            entries = [Entry(EVENT, lost=lost, cursor=lost_cursor), *entries]
        with self._lock:
            self._last_cursor = max(self._last_cursor, lost_cursor)  # records journaled before it started, too
            if not entries:
                return
            for entry in entries:
                entry.seq, entry.before = self._next_seq, self._published
                self._ring.append(entry)
                self._next_seq += 1
                self._published = self._published.plus(entry.weight)
                self._last_cursor = max(self._last_cursor, entry.cursor)
            wake = not self._wake_pending and self._loop is not None and bool(self._subscriptions)
            self._wake_pending = self._wake_pending or wake
        if wake and self._loop is not None:
            self._loop.call_soon_threadsafe(self._wake_all)

    def _wake_all(self) -> None:
        with self._lock:
            self._wake_pending = False
            subscriptions = list(self._subscriptions.values())
        for subscription in subscriptions:
            subscription.wakeup.set()

    # -- the server's side ----------------------------------------------------------------

    def subscribe(self, wanted: Filter) -> Subscription:
        with self._lock:
            if len(self._subscriptions) >= self.max_subscribers:
                self.stats.refused += 1
                raise TooManySubscribers(f"the sensor already has {self.max_subscribers} subscribers")
            self._ids += 1
            subscription = Subscription(self._ids, wanted, self._next_seq, self._published, asyncio.Event(),
                                        last_cursor=self._last_cursor)
            self._subscriptions[subscription.id] = subscription
            self.stats.subscribers = len(self._subscriptions)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        with self._lock:
            self._subscriptions.pop(subscription.id, None)
            self.stats.subscribers = len(self._subscriptions)

    def take(self, subscription: Subscription) -> tuple[Behind | None, list[Entry]]:
        """The next entries for a subscriber (unfiltered), and whether it fell behind first.

        Slices end on multiples of the slice size, so that subscribers reading at the same
        place get the same slice and can share what is made of it."""
        with self._lock:
            behind = None
            oldest = self._ring[0].seq if self._ring else self._next_seq
            if subscription.position < oldest:
                behind = self._fell_behind(subscription, oldest)
            start = subscription.position - oldest
            end = min((subscription.position // self.slice_size + 1) * self.slice_size - oldest, len(self._ring))
            entries = [self._ring[i] for i in range(start, end)]
            if entries:
                last = entries[-1]
                subscription.position = last.seq + 1
                subscription.before = last.before.plus(last.weight)
            else:
                subscription.wakeup.clear()
        return behind, entries

    def _fell_behind(self, subscription: Subscription, oldest: int) -> Behind:
        at_oldest = self._ring[0].before if self._ring else self._published
        lost = at_oldest.since(subscription.before)
        subscription.position, subscription.before = oldest, at_oldest
        return self._missed(subscription, lost, handover=False)

    def passed_hole(self, subscription: Subscription, hole: Entry) -> Behind:
        """A subscriber read past a hole: what it missed there."""
        with self._lock:
            return self._missed(subscription, hole.lost or NOTHING, handover=True)

    def _missed(self, subscription: Subscription, lost: Tally, handover: bool) -> Behind:
        subscription.gaps += 1
        subscription.missed_events += lost.events
        subscription.missed_alerts += lost.alerts + lost.sensor_gaps
        subscription.missed_incidents += lost.incidents
        subscription.missed_facts += lost.facts
        self.stats.missed[str(subscription.id)] = subscription.missed
        return Behind(lost.events, lost.alerts, lost.sensor_gaps, lost.incidents, lost.facts, handover)

    def subscriptions(self) -> list[Subscription]:
        with self._lock:
            return list(self._subscriptions.values())

    def backlog(self) -> list[int]:
        """How many entries each subscriber has not taken yet."""
        with self._lock:
            return [self._next_seq - s.position for s in self._subscriptions.values()]
