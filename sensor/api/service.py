"""The gpusentry.v1.Sensor service: subscriptions, alert pages, processes and status.

Requests are checked before anything else happens: a bad field is INVALID_ARGUMENT naming it.
Reads of the aggregator's state take the lock the aggregator holds while it changes it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc

from sensor.aggregator.process_table import Process
from sensor.api import convert
from sensor.api.broker import Behind, Subscription, TooManySubscribers, alert_matches
from sensor.api.filters import Filter, InvalidRequest, parse
from sensor.api.state import ApiState
from sensor.api.v1 import gpusentry_pb2 as pb
from sensor.api.v1 import gpusentry_pb2_grpc as pb_grpc

REPLAY_PAGE = 500
MAX_PAGE = 1000
EVENTS_PER_MESSAGE = 256


class SensorService(pb_grpc.SensorServicer):
    def __init__(self, state: ApiState) -> None:
        self.state = state

    def _rule_ids(self) -> set[str]:
        detector = self.state.aggregator.detector
        return {r.id for r in detector.engine.ruleset.rules} if detector is not None else set()

    # -- Subscribe ------------------------------------------------------------------------

    async def Subscribe(self, request: pb.SubscribeRequest,
                        context: grpc.aio.ServicerContext) -> AsyncIterator[pb.SubscribeResponse]:
        try:
            wanted = parse(request, self._rule_ids())
        except InvalidRequest as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        try:
            subscription = self.state.broker.subscribe(wanted)
        except TooManySubscribers as exc:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                f"{exc}; try again later, or start the agent with a higher --max-subscribers")
        try:
            if wanted.since_cursor is not None:
                subscription.last_alert_cursor = wanted.since_cursor
                async for response in self._replay(subscription, wanted):
                    yield response
            async for response in self._live(subscription, wanted):
                yield response
        finally:
            self.state.broker.unsubscribe(subscription)

    async def _live(self, subscription: Subscription, wanted: Filter) -> AsyncIterator[pb.SubscribeResponse]:
        broker = self.state.broker
        while True:
            behind, items = broker.take(subscription)
            if behind is not None:
                yield _gap(behind, subscription)
                async for response in self._replay(subscription, wanted):
                    yield response
            batch: list[pb.Event] = []
            for item in items:
                if item.alert is not None:
                    if item.alert.cursor <= subscription.last_alert_cursor:
                        continue  # already replayed from the journal
                    if item.matches(wanted):
                        if batch:  # events before the alert go first: order is kept
                            yield pb.SubscribeResponse(events=pb.Events(events=batch))
                            batch = []
                        subscription.last_alert_cursor = item.alert.cursor
                        subscription.delivered += 1
                        yield pb.SubscribeResponse(alert=item.alert)
                elif item.matches(wanted):
                    subscription.delivered += 1
                    batch.append(item.event)  # type: ignore[arg-type]
                    if len(batch) == EVENTS_PER_MESSAGE:
                        yield pb.SubscribeResponse(events=pb.Events(events=batch))
                        batch = []
            if batch:
                yield pb.SubscribeResponse(events=pb.Events(events=batch))
            if not items:
                await subscription.wakeup.wait()

    async def _replay(self, subscription: Subscription, wanted: Filter) -> AsyncIterator[pb.SubscribeResponse]:
        """Journaled alerts after the subscriber's last one, up to the journal's end now."""
        journal = self.state.journal
        end = await asyncio.to_thread(journal.last_cursor)
        while subscription.last_alert_cursor < end:
            page = await asyncio.to_thread(journal.read, subscription.last_alert_cursor, REPLAY_PAGE, None, 0, 0, 0,
                                           end)
            if not page:
                break
            for alert in page:
                subscription.last_alert_cursor = alert.cursor
                if alert_matches(alert, wanted):
                    subscription.delivered += 1
                    yield pb.SubscribeResponse(alert=alert)

    # -- ListAlerts -----------------------------------------------------------------------

    async def ListAlerts(self, request: pb.ListAlertsRequest,
                         context: grpc.aio.ServicerContext) -> pb.ListAlertsResponse:
        size = request.page_size or 100
        if size > MAX_PAGE:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"page_size: at most {MAX_PAGE}, not {size}")
        known = self._rule_ids()
        for index, rule_id in enumerate(request.rule_ids):
            if rule_id not in known:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"rule_ids[{index}]: no rule {rule_id[:80]!r}")
        if request.min_severity not in pb.Severity.values():
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"min_severity: {request.min_severity} is not a severity")
        since = request.since.ToNanoseconds() if request.HasField("since") else 0
        until = request.until.ToNanoseconds() if request.HasField("until") else 0
        alerts = await asyncio.to_thread(self.state.journal.read, request.after_cursor, size, list(request.rule_ids),
                                         request.min_severity, since, until)
        next_cursor = alerts[-1].cursor if len(alerts) == size else 0
        return pb.ListAlertsResponse(alerts=alerts, next_cursor=next_cursor)

    # -- GetProcess -----------------------------------------------------------------------

    async def GetProcess(self, request: pb.GetProcessRequest,
                         context: grpc.aio.ServicerContext) -> pb.GetProcessResponse:
        key = request.WhichOneof("key")
        if key is None:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "key: give exec_id or pid")
        if key == "exec_id" and not _valid_exec_id(request.exec_id):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"exec_id: {request.exec_id[:80]!r} is not an exec id (pid:start_ns:execs)")
        state = self.state
        with state.lock:
            table = state.aggregator.table
            proc = table.find_exec_id(request.exec_id) if key == "exec_id" else table.by_pid(request.pid)
            if proc is not None:
                response = self._process_response(proc)
        if proc is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no process with {key} "
                                f"{request.exec_id if key == 'exec_id' else request.pid} is known")
        return response

    def _process_response(self, proc: Process) -> pb.GetProcessResponse:
        clock, table = self.state.clock, self.state.aggregator.table
        session = self.state.aggregator.gpu.sessions.get(proc.key)
        children = [child for key in proc.children if (child := table.get(key)) is not None]
        return pb.GetProcessResponse(
            process=convert.process(proc, clock),
            ancestors=[convert.process(p, clock) for p in table.ancestors(proc.key)],
            children=[convert.process(c, clock) for c in children],
            gpu=convert.gpu_summary(session, clock))

    # -- GetStatus ------------------------------------------------------------------------

    async def GetStatus(self, request: pb.GetStatusRequest,
                        context: grpc.aio.ServicerContext) -> pb.Status:
        state = self.state
        with state.lock:
            status = status_of(state)
        status.journal_alerts = await asyncio.to_thread(state.journal.count)
        status.last_cursor = await asyncio.to_thread(state.journal.last_cursor)
        return status


def _valid_exec_id(value: str) -> bool:
    parts = value.split(":")
    return len(parts) == 3 and all(p.isdigit() and len(p) <= 20 for p in parts)


def _gap(behind: Behind, subscription: Subscription) -> pb.SubscribeResponse:
    return pb.SubscribeResponse(gap=pb.Gap(
        missed_events=behind.missed_events, missed_alerts=behind.missed_alerts,
        resume_cursor=subscription.last_alert_cursor,
        reason="this subscriber fell behind the sensor; missed alerts follow from the journal"))


def status_of(state: ApiState) -> pb.Status:
    """Counters from every hop, read under the aggregator's lock."""
    aggregator = state.aggregator
    counters = aggregator.counters
    started = pb.Status().started
    started.FromNanoseconds(state.started_ns)
    drops = [pb.DropCounter(hop="kernel", what=f"ring buffer: {k}", count=v) for k, v in
             sorted(counters.kernel_drops.items())]
    drops.append(pb.DropCounter(hop="kernel", what="GPU ioctls not counted (map full)",
                                count=counters.gpu_count_overflow))
    drops += [pb.DropCounter(hop="probe", what=f"queue full: {k}", count=v) for k, v in
              sorted(counters.probe_drops.items())]
    drops.append(pb.DropCounter(hop="aggregator", what="processes evicted at the table's cap",
                                count=aggregator.table.stats.evicted))
    sessions = list(aggregator.gpu)
    drops.append(pb.DropCounter(hop="aggregator", what="GPU objects not kept (per-process cap)",
                                count=sum(s.objects_dropped for s in sessions)))
    drops.append(pb.DropCounter(hop="kernel", what="GPU records held back by a process's budget (still counted)",
                                count=sum(c.suppressed for s in sessions for c in s.counts.values())))
    detector = aggregator.detector
    rules = pb.RuleSetStatus(files=state.rule_files, load_errors=state.load_errors)
    if detector is not None:
        engine = detector.engine
        drops.append(pb.DropCounter(hop="rules", what="partial sequence matches dropped at the cap",
                                    count=engine.stats.partials_dropped))
        drops.append(pb.DropCounter(hop="rules", what="tunnel taint entries dropped at the cap",
                                    count=detector.taint.stats.dropped))
        rules.rules.extend(pb.RuleStatus(id=r.id, severity=convert.SEVERITY[r.severity.label],
                                         alerts=engine.stats.by_rule.get(r.id, 0)) for r in engine.ruleset.rules)
    broker = state.broker
    drops += [pb.DropCounter(hop="subscribers", what=f"subscriber {sid}: items missed", count=n)
              for sid, n in sorted(broker.stats.missed.items())]
    drops.append(pb.DropCounter(hop="subscribers", what="subscriptions refused at the limit",
                                count=broker.stats.refused))
    features: dict[str, Any] = dict(state.meta.features)
    return pb.Status(
        started=started, uptime_s=(time.time_ns() - state.started_ns) / 1e9, kernel=state.meta.kernel,
        kernel_features={k: str(v) for k, v in features.items()}, events_by_kind=dict(counters.events),
        drops=drops, rules=rules, subscribers=broker.stats.subscribers)

