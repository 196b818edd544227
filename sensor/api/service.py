"""The gpusentry.v1.Sensor service's unary methods, in the aggregator's process: alert and
incident pages, processes and status. The API's stream process serves the public endpoint
and Subscribe (sensor/api/subscribe.py), and forwards these here, as bytes.

Requests are checked before anything else happens (sensor/api/filters.py): a bad field is
INVALID_ARGUMENT naming it, and bytes that are not a request at all are INVALID_ARGUMENT too,
not the UNKNOWN or INTERNAL of a deserializer that raised: the service's handlers are
registered here with deserializers that never raise.
Reads of the aggregator's state take the lock the aggregator holds while it changes it.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import grpc
from google.protobuf.message_factory import GetMessageClass

from sensor import events as ev
from sensor.aggregator.launches import LaunchStats
from sensor.aggregator.process_table import Process
from sensor.api import convert
from sensor.api.filters import (
    InvalidRequest,
    Malformed,
    alert_page,
    end_call,
    incident_page,
    process_lookup,
    refuse,
    status_request,
    tolerant,
)
from sensor.api.state import ApiState
from sensor.api.v1 import gpusentry_pb2 as pb
from sensor.api.v1 import gpusentry_pb2_grpc as pb_grpc
from sensor.outward import this_host
from sensor.rules.status import rule_statuses

SERVICE = pb.DESCRIPTOR.services_by_name["Sensor"]


class SensorService(pb_grpc.SensorServicer):
    def __init__(self, state: ApiState) -> None:
        self.state = state

    def _rule_ids(self) -> set[str]:
        detector = self.state.aggregator.detector
        return {r.id for r in detector.engine.ruleset.rules} if detector is not None else set()

    # -- ListAlerts -----------------------------------------------------------------------

    async def ListAlerts(self, request: pb.ListAlertsRequest | Malformed,
                         context: grpc.aio.ServicerContext) -> pb.ListAlertsResponse:
        journal = self.state.journal
        try:
            page = alert_page(request, self._rule_ids(), await asyncio.to_thread(journal.last_cursor))
        except InvalidRequest as exc:
            await refuse(context, exc)
        records = await asyncio.to_thread(journal.records, page.after_cursor, page.size, page.rule_ids,
                                          page.min_severity, page.since_ns, page.until_ns, incidents=False)
        # the page ends at its last record when it is full: gaps and alerts after it come next time
        next_cursor = records[-1].cursor if len(records) == page.size else 0
        return pb.ListAlertsResponse(alerts=[r for r in records if isinstance(r, pb.Alert)],
                                     sensor_gaps=[r for r in records if isinstance(r, pb.SensorGap)],
                                     next_cursor=next_cursor)

    # -- ListIncidents --------------------------------------------------------------------

    async def ListIncidents(self, request: pb.ListIncidentsRequest | Malformed,
                            context: grpc.aio.ServicerContext) -> pb.ListIncidentsResponse:
        journal = self.state.journal
        try:
            page = incident_page(request, await asyncio.to_thread(journal.last_cursor))
        except InvalidRequest as exc:
            await refuse(context, exc)
        incidents = await asyncio.to_thread(journal.incidents, page.after_cursor, page.size, page.min_severity,
                                            page.since_ns, page.until_ns, page.incident_id)
        # as for alerts: a full page ends at its last incident, and the next page starts after it
        next_cursor = incidents[-1].cursor if len(incidents) == page.size else 0
        return pb.ListIncidentsResponse(incidents=incidents, next_cursor=next_cursor)

    # -- GetProcess -----------------------------------------------------------------------

    async def GetProcess(self, request: pb.GetProcessRequest | Malformed,
                         context: grpc.aio.ServicerContext) -> pb.GetProcessResponse:
        try:
            key, value = process_lookup(request)
        except InvalidRequest as exc:
            await refuse(context, exc)
        state = self.state
        with state.lock:
            table = state.aggregator.table
            proc = table.find_exec_id(value) if isinstance(value, str) else table.by_pid(value)
            response = self._process_response(proc) if proc is not None else None
        if response is None:
            await end_call(context, grpc.StatusCode.NOT_FOUND, f"{key}: no process with {key} {value} is known")
        return response

    def _process_response(self, proc: Process) -> pb.GetProcessResponse:
        clock, table = self.state.clock, self.state.aggregator.table
        containers = self.state.aggregator.containers
        session = self.state.aggregator.gpu.sessions.get(proc.key)
        children = [child for key in proc.children if (child := table.get(key)) is not None]
        return pb.GetProcessResponse(
            process=convert.process(proc, clock, containers),
            ancestors=[convert.process(p, clock, containers) for p in table.ancestors(proc.key)],
            children=[convert.process(c, clock, containers) for c in children],
            gpu=convert.gpu_summary(session, clock, self.state.aggregator.launches.sessions.get(proc.key)))

    # -- GetStatus ------------------------------------------------------------------------

    async def GetStatus(self, request: pb.GetStatusRequest | Malformed,
                        context: grpc.aio.ServicerContext) -> pb.Status:
        try:
            status_request(request)
        except InvalidRequest as exc:
            await refuse(context, exc)
        state = self.state
        with state.lock:
            status = status_of(state)
        status.journal_alerts = await asyncio.to_thread(state.journal.count)
        status.sensor_gaps = await asyncio.to_thread(state.journal.gap_count)
        status.incidents = await asyncio.to_thread(state.journal.incident_count)
        status.last_cursor = await asyncio.to_thread(state.journal.last_cursor)
        return status


# -- registration ---------------------------------------------------------------------------


def add_sensor_service(service: SensorService, server: grpc.aio.Server) -> None:
    """What the generated add_SensorServicer_to_server does, with deserializers that never raise:
    a request that is not a valid message reaches the method as Malformed, which refuses it
    with INVALID_ARGUMENT, where the generated code lets gRPC answer with the parser's exception
    (UNKNOWN under grpc.aio, INTERNAL elsewhere). Built from the service's descriptor, so a
    method added to the proto is registered too."""
    handlers = {method.name: _handler(service, method) for method in SERVICE.methods if not method.server_streaming}
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE.full_name, handlers),))
    server.add_registered_method_handlers(SERVICE.full_name, handlers)


def _handler(service: object, method: Any) -> grpc.RpcMethodHandler:
    request_type, response_type = GetMessageClass(method.input_type), GetMessageClass(method.output_type)
    if method.server_streaming:  # Subscribe's responses are bytes already (sensor/api/subscribe.py)
        return grpc.unary_stream_rpc_method_handler(getattr(service, method.name),
                                                    request_deserializer=tolerant(request_type))
    return grpc.unary_unary_rpc_method_handler(getattr(service, method.name),
                                               request_deserializer=tolerant(request_type),
                                               response_serializer=response_type.SerializeToString)


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
    drops.append(pb.DropCounter(hop="kernel", what="GPU memory allocations not summed (map full)",
                                count=counters.gpu_mem_overflow))
    drops.append(pb.DropCounter(hop="kernel", what="TCP sends and receives not counted (map full)",
                                count=counters.sock_bytes_not_counted))
    drops.append(pb.DropCounter(hop="kernel", what="closed sockets' byte counts lost before read",
                                count=counters.sock_bytes_closed_lost))
    drops += [pb.DropCounter(hop="probe", what=f"queue full: {k}", count=v) for k, v in
              sorted(counters.probe_drops.items())]
    drops += [pb.DropCounter(hop="probe", what=ev.VERDICTS_MISSED.get(k, k), count=v) for k, v in
              sorted(counters.verdicts_missed.items())]
    drops.append(pb.DropCounter(hop="aggregator", what="processes evicted at the table's cap",
                                count=aggregator.table.stats.evicted))
    drops.append(pb.DropCounter(hop="aggregator", what="containers forgotten at the table's cap",
                                count=aggregator.containers.evicted))
    drops.append(pb.DropCounter(hop="aggregator", what="launch-watch requests the probe's pipe did not take",
                                count=aggregator.launches.stats.unsent))
    sessions = list(aggregator.gpu)
    drops.append(pb.DropCounter(hop="aggregator", what="GPU objects not kept (per-process cap)",
                                count=sum(s.objects_dropped for s in sessions)))
    drops.append(pb.DropCounter(hop="aggregator", what="incidents closed early at the cap on open incidents",
                                count=state.incidents.stats.evicted))
    drops.append(pb.DropCounter(hop="kernel", what="GPU records held back by a process's budget (still counted)",
                                count=sum(c.suppressed for s in sessions for c in s.counts.values())))
    detector = aggregator.detector
    rules = pb.RuleSetStatus(files=state.rule_files, load_errors=state.load_errors)
    if detector is not None:
        engine = detector.engine
        drops.append(pb.DropCounter(hop="rules", what="partial sequence matches dropped at the cap",
                                    count=engine.stats.partials_dropped))
        drops.append(pb.DropCounter(hop="rules", what="partial sequence matches discarded by a rules reload "
                                    "(changed or removed rules)", count=engine.stats.partials_discarded))
        drops.append(pb.DropCounter(hop="rules", what="tunnel taint entries dropped at the cap",
                                    count=detector.taint.stats.dropped))
        rules.rules.extend(rule_statuses(engine))
    if state.sinks is not None:
        drops.append(pb.DropCounter(hop="sinks", what="events and facts not handed to the sinks (queue full)",
                                    count=state.sinks.handoff_dropped))
    broker = state.broker
    drops.append(pb.DropCounter(hop="subscribers", what="items not handed to the API's stream process (it was behind; "
                                "every subscriber got a gap)", count=sum(broker.stats.dropped)))
    drops += [pb.DropCounter(hop="subscribers", what=f"subscriber {sid}: items missed", count=n)
              for sid, n in sorted(broker.stats.missed.items())]
    drops.append(pb.DropCounter(hop="subscribers", what="subscriptions refused at the limit",
                                count=broker.stats.refused))
    features: dict[str, Any] = dict(state.meta.features)
    return pb.Status(
        started=started, uptime_s=(time.time_ns() - state.started_ns) / 1e9, kernel=state.meta.kernel,
        kernel_features={k: str(v) for k, v in features.items()}, events_by_kind=dict(counters.events),
        drops=drops, rules=rules, subscribers=broker.stats.subscribers, host=this_host(),
        config_file=state.config_file, sinks=state.sinks.statuses() if state.sinks is not None else [],
        launch_watches=launch_watches(aggregator.launches.stats))


def launch_watches(stats: LaunchStats) -> dict[str, int]:
    return {"asked": stats.asked, "unsent": stats.unsent, "watching": stats.watching,
            **{f"refused: {k}": v for k, v in stats.refused.items()},
            **{f"ended: {k}": v for k, v in stats.ended.items()}}

