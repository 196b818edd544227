"""The API's stream process: it serves the public endpoint, beside the aggregator.

Subscribe is per-subscriber Python work (filters, batches, gaps, replays); here it has an
interpreter of its own, and costs the aggregator only the hand-over (sensor/api/handover.py).
The aggregator starts it, as its own user, and it serves:
  - Subscribe, from its broker (fed by the hand-over on its stdin) and the journal file;
  - the unary methods, forwarded as bytes to the aggregator's own gRPC server on a private
    UNIX socket (they read the aggregator's state);
  - health checking and reflection.
It reports on its stdout (READY or FAILED, then STATUS frames), and stops when its stdin ends:
the aggregator stopped, or died. When it dies, the aggregator stops the agent (no half-alive agent).

    python -m sensor.api.stream --journal PATH --upstream SOCKET [endpoint flags]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.message import Message
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from sensor.api import wire
from sensor.api.broker import ALERT, EVENT, FACT, INCIDENT, SENSOR_GAP, Broker, Entry, Tally
from sensor.api.endpoint import MAX_REQUEST, MAX_RESPONSE, Endpoint, bind, secure_socket
from sensor.api.filters import end_call, tolerant
from sensor.api.subscribe import StreamService
from sensor.api.v1 import gpusentry_pb2 as pb
from sensor.errors import GpusentryError
from sensor.journal import Journal

SERVICE = pb.DESCRIPTOR.services_by_name["Sensor"]
RECORDS: dict[int, tuple[type[Message], int]] = {
    ALERT: (pb.Alert, wire.ALERT_FIELD), SENSOR_GAP: (pb.SensorGap, wire.SENSOR_GAP_FIELD),
    INCIDENT: (pb.Incident, wire.INCIDENT_FIELD)}
STATUS_EVERY_S = 0.5
LAST_WORDS_S = 0.1  # even without grace: what the aggregator handed over last (its sensor gap) goes out


def entry(item: wire.WireItem) -> Entry:
    kind, payload, cursor, sub_kind, exec_id, exe, lineage, cgroup_id = item
    if kind in (EVENT, FACT):
        return Entry(kind, wire.field(wire.ELEMENT_FIELD, payload), None, 0, sub_kind, exec_id, exe,
                     frozenset(lineage), cgroup_id)
    message, number = RECORDS[kind]
    record = message.FromString(payload)
    assert isinstance(record, pb.Alert | pb.SensorGap | pb.Incident)
    return Entry(kind, wire.field(number, payload), record, cursor)


class Reporter:
    """STATUS frames to the aggregator: at once when the subscriptions change, and every half second."""

    def __init__(self, broker: Broker, out: int) -> None:
        self.broker = broker
        self.out = out
        self._lock = threading.Lock()

    def send(self, kind: int, body: Any) -> None:
        data = wire.frame(kind, body)
        with self._lock:
            while data:
                data = data[os.write(self.out, data):]

    def status(self) -> None:
        stats = self.broker.stats
        self.send(wire.STATUS, {"subscribers": stats.subscribers, "refused": stats.refused,
                                "missed": dict(stats.missed), "wants": list(self.broker.wants()),
                                "backlog": self.broker.backlog()})

    async def every(self, period: float) -> None:
        while True:
            await asyncio.sleep(period)
            self.status()


def read_handover(broker: Broker, service: StreamService, ended: Callable[[float], None]) -> None:
    """Frames from the aggregator into the broker, on a thread of its own, until the pipe ends
    (without STOP, the aggregator died: no grace)."""
    source = sys.stdin.buffer
    grace = 0.0
    while (got := wire.read_frame(source)) is not None:
        kind, body = got
        if kind == wire.ITEMS:
            lost, lost_cursor, items = body
            broker.publish([entry(item) for item in items], Tally(*lost), lost_cursor)
        elif kind == wire.RULES:
            service.rule_ids = frozenset(body)
        elif kind == wire.STOP:
            grace = float(body)
    ended(grace)


def forwarder(channel: grpc.aio.Channel, method: str) -> Callable[[bytes, grpc.aio.ServicerContext],
                                                                     Awaitable[bytes]]:
    call = channel.unary_unary(f"/{SERVICE.full_name}/{method}")  # no (de)serializers: bytes both ways

    async def forward(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        try:
            response: bytes = await call(request, timeout=context.time_remaining())
        except grpc.aio.AioRpcError as exc:
            await end_call(context, exc.code(), exc.details() or "")
        return response

    return forward


def handlers(service: StreamService, upstream: grpc.aio.Channel) -> dict[str, grpc.RpcMethodHandler]:
    """Subscribe here (its responses are bytes already); every other method forwarded."""
    out = {"Subscribe": grpc.unary_stream_rpc_method_handler(
        service.Subscribe, request_deserializer=tolerant(pb.SubscribeRequest))}
    for method in SERVICE.methods:
        if not method.server_streaming:
            out[method.name] = grpc.unary_unary_rpc_method_handler(forwarder(upstream, method.name))
    return out


async def serve(args: argparse.Namespace, broker: Broker, service: StreamService, reporter: Reporter) -> None:
    stop = asyncio.Event()
    grace = [0.0]
    loop = asyncio.get_running_loop()
    broker.attach(loop)

    def ended(given: float) -> None:
        grace[0] = given
        loop.call_soon_threadsafe(stop.set)

    threading.Thread(target=read_handover, args=(broker, service, ended), name="handover", daemon=True).start()
    upstream = grpc.aio.insecure_channel(f"unix:{args.upstream}", options=[
        ("grpc.max_receive_message_length", MAX_RESPONSE), ("grpc.max_send_message_length", MAX_REQUEST)])
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", MAX_REQUEST),
                                      ("grpc.max_send_message_length", MAX_RESPONSE)])
    methods = handlers(service, upstream)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE.full_name, methods),))
    server.add_registered_method_handlers(SERVICE.full_name, methods)
    checker = health.aio.HealthServicer() if hasattr(health, "aio") else health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(checker, server)
    reflection.enable_server_reflection(
        (SERVICE.full_name, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
        server)
    endpoint = endpoint_of(args)
    port = bind(server, endpoint)
    await server.start()
    secure_socket(endpoint)
    for name in ("", SERVICE.full_name):
        result = checker.set(name, health_pb2.HealthCheckResponse.SERVING)
        if asyncio.iscoroutine(result):
            await result
    service.on_change = reporter.status
    reporter.send(wire.READY, {"port": port})
    reporting = asyncio.create_task(reporter.every(STATUS_EVERY_S))
    await stop.wait()
    reporting.cancel()
    await server.stop(grace=max(grace[0], LAST_WORDS_S))
    await upstream.close()


def endpoint_of(args: argparse.Namespace) -> Endpoint:
    def path(value: str | None) -> Path | None:
        return Path(value) if value else None

    endpoint = Endpoint(socket=path(args.socket), socket_group=args.socket_group, listen=args.listen,
                        tls_cert=path(args.tls_cert), tls_key=path(args.tls_key),
                        tls_client_ca=path(args.tls_client_ca), insecure_plaintext=args.insecure_plaintext)
    endpoint.validate()
    return endpoint


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m sensor.api.stream")
    parser.add_argument("--journal", required=True)
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--capacity", type=int, default=65536)
    parser.add_argument("--max-subscribers", type=int, default=64)
    parser.add_argument("--socket", default="")
    for flag in ("--socket-group", "--listen", "--tls-cert", "--tls-key", "--tls-client-ca"):
        parser.add_argument(flag)
    parser.add_argument("--insecure-plaintext", action="store_true")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the aggregator decides when the API stops
    broker = Broker(args.capacity, args.max_subscribers)
    reporter = Reporter(broker, sys.stdout.fileno())
    try:
        init = wire.read_frame(sys.stdin.buffer)
        if init is None or init[0] != wire.INIT:
            return 0  # the aggregator stopped before handing anything over
        broker.journaled_before(int(init[1]["last_cursor"]))
        journal = Journal(Path(args.journal))
        try:
            asyncio.run(serve(args, broker, StreamService(broker, journal, init[1]["rules"]), reporter))
        finally:
            journal.close()
    except GpusentryError as exc:
        reporter.send(wire.FAILED, {"problem": exc.problem, "fix": exc.fix})
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
