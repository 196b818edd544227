"""Fan-out from the aggregator to subscribers, without ever slowing the aggregator.

The aggregator appends items (events and facts, and journaled records: alerts, sensor gaps and
incident versions, already converted) to one bounded ring and never waits. Each subscriber
reads the ring at its own position: its queue is the part of the ring it has not read yet,
bounded by the ring's size. A subscriber that falls further behind than the ring holds has lost
items: it gets a Gap saying how many of each kind were published while it was behind, then its
missed records again from the journal, then the live stream from the oldest item still held.
Publishing wakes the server's event loop at most once per batch.

Journaled records reach the ring in cursor order (one thread journals and publishes them), so
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


class Tally(NamedTuple):
    """Items of each counted kind published before some point; events are the rest."""

    alerts: int = 0
    sensor_gaps: int = 0
    incidents: int = 0
    facts: int = 0

    def after(self, item: Item) -> Tally:
        return Tally(self.alerts + (item.alert is not None), self.sensor_gaps + (item.sensor_gap is not None),
                     self.incidents + (item.incident is not None), self.facts + (item.fact is not None))

    def since(self, earlier: Tally) -> Tally:
        return Tally(*(now - then for now, then in zip(self, earlier, strict=True)))


NOTHING = Tally()


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
    # set by the broker
    seq: int = 0
    before: Tally = NOTHING  # what was published before this item

    @property
    def record(self) -> pb.Alert | pb.SensorGap | pb.Incident | None:
        """The journaled record it carries (an alert, a sensor gap, an incident version), if any."""
        return self.alert or self.sensor_gap or self.incident

    @property
    def cursor(self) -> int:
        """The journal cursor of its record; 0 for an event or a fact (not journaled)."""
        record = self.record
        return record.cursor if record is not None else 0

    def matches(self, wanted: Filter) -> bool:
        record = self.record
        if record is not None:
            return record_matches(record, wanted)
        if self.fact is not None:
            return wanted.facts and (not wanted.fact_kinds or self.fact.kind in wanted.fact_kinds) and \
                self._process_matches(wanted)
        if self.event is None or not wanted.events or (wanted.kinds and self.event.kind not in wanted.kinds):
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


def record_matches(record: pb.Alert | pb.SensorGap | pb.Incident, wanted: Filter) -> bool:
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


@dataclass
class Behind:
    """A subscriber's position fell out of the ring."""

    missed_events: int
    missed_alerts: int
    missed_sensor_gaps: int
    missed_incidents: int = 0
    missed_facts: int = 0


@dataclass
class BrokerStats:
    published_events: int = 0
    published_alerts: int = 0
    published_sensor_gaps: int = 0
    published_incidents: int = 0
    published_facts: int = 0
    subscribers: int = 0
    refused: int = 0  # subscriptions refused at the limit
    missed: dict[str, int] = field(default_factory=dict)  # by subscriber id: items lost to gaps


class TooManySubscribers(RuntimeError):
    pass


class Broker:
    def __init__(self, capacity: int = 65536, max_subscribers: int = 64) -> None:
        self.capacity = capacity
        self.max_subscribers = max_subscribers
        self._ring: deque[Item] = deque(maxlen=capacity)
        self._next_seq = 0
        self._published = NOTHING  # everything published so far
        self._last_cursor = 0  # of the last journaled record published
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

    @property
    def wants_events(self) -> bool:
        return any(s.filter.events for s in list(self._subscriptions.values()))

    @property
    def wants_facts(self) -> bool:
        return any(s.filter.facts for s in list(self._subscriptions.values()))

    @property
    def wants_lineage(self) -> bool:
        return any(s.filter.needs_lineage for s in list(self._subscriptions.values()))

    # -- the aggregator's side ------------------------------------------------------------

    def publish(self, items: list[Item]) -> None:
        """Append items (events, facts, alerts, sensor gaps, incidents) with their filter keys;
        never blocks on subscribers.

        Journaled records must come in cursor order: a subscriber that passed cursor N skips any
        record at or below it, so one that came late would be lost to it (ValueError instead)."""
        if not items:
            return
        with self._lock:
            self._last_cursor = self._in_order(items)
            for item in items:
                self._ring.append(dataclasses.replace(item, seq=self._next_seq, before=self._published))
                self._next_seq += 1
                self._published = self._published.after(item)
                self._count(item)
            wake = not self._wake_pending and self._loop is not None and bool(self._subscriptions)
            self._wake_pending = self._wake_pending or wake
        if wake and self._loop is not None:
            self._loop.call_soon_threadsafe(self._wake_all)

    def _in_order(self, items: list[Item]) -> int:
        """The last cursor among these items, once they are known to follow the ones published."""
        last = self._last_cursor
        for cursor in (item.cursor for item in items if item.cursor):
            if cursor <= last:
                raise ValueError(f"journal record {cursor} published after record {last}: journal and publish "
                                 "records from one thread, each right after it is journaled")
            last = cursor
        return last

    def _count(self, item: Item) -> None:
        stats = self.stats
        if item.alert is not None:
            stats.published_alerts += 1
        elif item.sensor_gap is not None:
            stats.published_sensor_gaps += 1
        elif item.incident is not None:
            stats.published_incidents += 1
        elif item.fact is not None:
            stats.published_facts += 1
        else:
            stats.published_events += 1

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

    def take(self, subscription: Subscription, limit: int = 512) -> tuple[Behind | None, list[Item]]:
        """The next items for a subscriber (unfiltered), and whether it fell behind first."""
        with self._lock:
            behind = None
            oldest = self._ring[0].seq if self._ring else self._next_seq
            if subscription.position < oldest:
                behind = self._fell_behind(subscription, oldest)
            start = subscription.position - oldest
            items = [self._ring[i] for i in range(start, min(start + limit, len(self._ring)))]
            if items:
                last = items[-1]
                subscription.position = last.seq + 1
                subscription.before = last.before.after(last)
            else:
                subscription.wakeup.clear()
        return behind, items

    def _fell_behind(self, subscription: Subscription, oldest: int) -> Behind:
        at_oldest = self._ring[0].before if self._ring else self._published
        lost = at_oldest.since(subscription.before)
        events = oldest - subscription.position - sum(lost)
        behind = Behind(events, lost.alerts, lost.sensor_gaps, lost.incidents, lost.facts)
        subscription.position, subscription.before = oldest, at_oldest
        subscription.gaps += 1
        subscription.missed_events += events
        subscription.missed_alerts += lost.alerts + lost.sensor_gaps
        subscription.missed_incidents += lost.incidents
        subscription.missed_facts += lost.facts
        self.stats.missed[str(subscription.id)] = subscription.missed
        return behind

    def subscriptions(self) -> list[Subscription]:
        with self._lock:
            return list(self._subscriptions.values())
