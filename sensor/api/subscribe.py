"""The Subscribe method, served by the API's stream process (sensor/api/stream.py) from its
broker and the journal file.

Responses leave as bytes: events and facts were serialised once by the aggregator, and a
slice of the ring made into responses for one filter is shared by every subscriber with that
filter reading the same slice (the firehose case: one rendering for all of them).
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Collection, Iterator
from dataclasses import dataclass

import grpc

from sensor.api import wire
from sensor.api.broker import EVENT, FACT, Behind, Broker, Entry, Subscription, TooManySubscribers, record_matches
from sensor.api.filters import Filter, InvalidRequest, Malformed, end_call, refuse, subscription
from sensor.api.v1 import gpusentry_pb2 as pb
from sensor.journal import Journal, Record

REPLAY_PAGE = 500
EVENTS_PER_MESSAGE = 256
SHARED_SLICES = 4096  # renderings kept for subscribers that read the same slice a little later


@dataclass(frozen=True)
class Rendered:
    """A slice made into responses for one filter, skipping no journaled record."""

    responses: list[bytes]
    delivered: int
    first_cursor: int  # of the slice's first journaled record; 0 when it has none
    last_cursor: int
    hole: bool  # a hole in the slice: each subscriber passes it on its own (a Gap, then a replay)


class StreamService:
    def __init__(self, broker: Broker, journal: Journal, rule_ids: Collection[str]) -> None:
        self.broker = broker
        self.journal = journal
        self.rule_ids = frozenset(rule_ids)  # replaced when the aggregator reloads its rules
        self._rendered: OrderedDict[tuple[Filter, int, int], Rendered] = OrderedDict()
        self.on_change: Callable[[], None] = lambda: None  # the subscriptions changed: the aggregator is told

    async def Subscribe(self, request: pb.SubscribeRequest | Malformed,
                        context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        try:
            wanted = subscription(request, self.rule_ids)
        except InvalidRequest as exc:
            await refuse(context, exc)
        try:
            subscriber = self.broker.subscribe(wanted)
        except TooManySubscribers as exc:
            self.on_change()
            await end_call(context, grpc.StatusCode.RESOURCE_EXHAUSTED,
                       f"{exc}; try again later, or start the agent with a higher --max-subscribers")
        self.on_change()
        try:
            journal_end = await asyncio.to_thread(self.journal.last_cursor)
            first = _start(subscriber, wanted, max(journal_end, subscriber.last_cursor))
            yield pb.SubscribeResponse(subscribed=first).SerializeToString()
            if wanted.since_cursor is not None:
                async for response in self._replay(subscriber, wanted):
                    yield response
            async for response in self._live(subscriber, wanted):
                yield response
        finally:
            self.broker.unsubscribe(subscriber)
            self.on_change()

    async def _live(self, subscriber: Subscription, wanted: Filter) -> AsyncIterator[bytes]:
        while True:
            behind, entries = self.broker.take(subscriber)
            if behind is not None:
                async for response in self._gap(subscriber, wanted, behind):
                    yield response
            if not entries:
                await subscriber.wakeup.wait()
                continue
            rendered = self._shared(subscriber, entries)
            if rendered.hole or (rendered.first_cursor and rendered.first_cursor <= subscriber.last_cursor):
                async for response in self._one_by_one(subscriber, wanted, entries):
                    yield response
                continue
            subscriber.last_cursor = max(subscriber.last_cursor, rendered.last_cursor)
            subscriber.delivered += rendered.delivered
            for response in rendered.responses:
                yield response

    def _shared(self, subscriber: Subscription, entries: list[Entry]) -> Rendered:
        key = (subscriber.shares, entries[0].seq, entries[-1].seq)
        rendered = self._rendered.get(key)
        if rendered is None:
            rendered = _render(entries, subscriber.filter)
            self._rendered[key] = rendered
            if len(self._rendered) > SHARED_SLICES:
                self._rendered.popitem(last=False)
        return rendered

    async def _one_by_one(self, subscriber: Subscription, wanted: Filter,
                          entries: list[Entry]) -> AsyncIterator[bytes]:
        """A slice with a hole, or with records this subscriber has had already (it replayed them)."""
        run: list[Entry] = []
        for entry in entries:
            if entry.lost is None:
                run.append(entry)
                continue
            for response in _deliver(run, subscriber, wanted):
                yield response
            run = []
            async for response in self._gap(subscriber, wanted, self.broker.passed_hole(subscriber, entry)):
                yield response
        for response in _deliver(run, subscriber, wanted):
            yield response

    async def _gap(self, subscriber: Subscription, wanted: Filter, behind: Behind) -> AsyncIterator[bytes]:
        yield _gap(behind, subscriber).SerializeToString()
        async for response in self._replay(subscriber, wanted):
            yield response

    async def _replay(self, subscriber: Subscription, wanted: Filter) -> AsyncIterator[bytes]:
        """Journaled records after the subscriber's last one, up to the journal's end now."""
        if not wanted.journaled:
            return  # only alerts, incidents and sensor gaps are journaled
        journal = self.journal
        end = await asyncio.to_thread(journal.last_cursor)
        while subscriber.last_cursor < end:
            page = await asyncio.to_thread(journal.records, subscriber.last_cursor, REPLAY_PAGE, up_to=end)
            if not page:
                break
            for record in page:
                subscriber.last_cursor = record.cursor
                if record_matches(record, wanted):
                    subscriber.delivered += 1
                    yield _response(record).SerializeToString()


def _start(subscriber: Subscription, wanted: Filter, journal_end: int) -> pb.Subscribed:
    """Where the subscriber's stream begins, said in its first message: journal_last_cursor is
    the last record published when it joined (what it gets live comes after it), which a
    record journaled since (`journal_end`) may only pass for the past-the-end check."""
    since = wanted.since_cursor
    joined = subscriber.last_cursor
    if since is None:
        return pb.Subscribed(journal_last_cursor=joined)
    if since > journal_end:
        # A cursor from another journal (a damaged one moved aside, a new one started at 1):
        # taken literally it would hide every new record up to it, live ones included. The
        # subscriber goes on from now, after what came before it subscribed, and is told so.
        return pb.Subscribed(
            journal_last_cursor=joined, replay_after_cursor=joined,
            note=f"since_cursor: {since} is past the journal's end ({journal_end}): this journal is not the one "
                 "that cursor came from (was it replaced?); the stream continues from now")
    subscriber.last_cursor = since
    return pb.Subscribed(journal_last_cursor=joined, replay_after_cursor=since)


def _render(entries: list[Entry], wanted: Filter) -> Rendered:
    """A slice as responses for a filter, for any subscriber that has no record of it yet."""
    cursors = [e.cursor for e in entries if e.cursor and e.lost is None]
    probe = Subscription(0, wanted, 0, entries[0].before, asyncio.Event(), last_cursor=-1)
    hole = any(e.lost is not None for e in entries)
    responses = [] if hole else list(_deliver(entries, probe, wanted))
    return Rendered(responses, probe.delivered, cursors[0] if cursors else 0, cursors[-1] if cursors else 0, hole)


def _deliver(entries: list[Entry], subscriber: Subscription, wanted: Filter) -> Iterator[bytes]:
    """Live entries as responses: events and facts batched, journaled records each on their own, in order."""
    batch = _Batch()
    for entry in entries:
        if entry.cursor:
            if entry.cursor <= subscriber.last_cursor:
                continue  # replayed from the journal already, or from before the subscription
            subscriber.last_cursor = entry.cursor
        if not entry.matches(wanted):
            continue
        subscriber.delivered += 1
        if entry.record is None:
            yield from batch.add(entry)
            continue
        yield from batch.flush()  # what came before the record goes first: order is kept
        yield entry.wire
    yield from batch.flush()


class _Batch:
    """Consecutive events, or consecutive facts, as one message each: one message per item would
    cap a stream at a few thousand a second."""

    def __init__(self) -> None:
        self.type = EVENT
        self.elements: list[bytes] = []

    def add(self, entry: Entry) -> Iterator[bytes]:
        if entry.type != self.type:
            yield from self.flush()
            self.type = entry.type
        self.elements.append(entry.wire)
        if len(self.elements) == EVENTS_PER_MESSAGE:
            yield from self.flush()

    def flush(self) -> Iterator[bytes]:
        if self.elements:
            yield wire.batch(wire.FACTS_FIELD if self.type == FACT else wire.EVENTS_FIELD, self.elements)
        self.elements = []


def _response(record: Record) -> pb.SubscribeResponse:
    if isinstance(record, pb.Alert):
        return pb.SubscribeResponse(alert=record)
    if isinstance(record, pb.Incident):
        return pb.SubscribeResponse(incident=record)
    return pb.SubscribeResponse(sensor_gap=record)


def _gap(behind: Behind, subscriber: Subscription) -> pb.SubscribeResponse:
    why = "the sensor handed items over faster than the API could take them" if behind.handover else \
        "this subscriber fell behind the sensor"
    return pb.SubscribeResponse(gap=pb.Gap(
        missed_events=behind.missed_events, missed_alerts=behind.missed_alerts,
        missed_sensor_gaps=behind.missed_sensor_gaps, missed_incidents=behind.missed_incidents,
        missed_facts=behind.missed_facts, resume_cursor=subscriber.last_cursor,
        reason=f"{why}; missed alerts, incidents and sensor gaps follow from the journal"))
