"""The OTLP sink against a real OTLP/gRPC logs receiver (the collector's service, served
in-process on 127.0.0.1:0): a real worker on a real journal, the exact log records that
arrive, retries and refusals by gRPC status, partial success, large batches, TLS and mTLS
with a test CA, secret headers, and option errors with their lines."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsPartialSuccess,
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)
from opentelemetry.proto.collector.logs.v1.logs_service_pb2_grpc import (
    LogsServiceServicer,
    add_LogsServiceServicer_to_server,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord

import sensor
from sensor.api.v1 import gpusentry_pb2 as pb
from sensor.journal import Journal
from sensor.outward import as_dict, json_line, record
from sensor.rules import source
from sensor.sinks import otlp
from sensor.sinks.base import Backoff, CursorFile, Invalid, Secret, Sink, SinkError, SinkSpec
from tests.certificates import make_certificates
from tests.waiting import wait_until

HOST = pb.Host(hostname="gpu-7", machine_id="0f" * 16)
TOKEN = "Bearer s3cr3t-t0ken"
TOKEN_ENV = "GPUSENTRY_TEST_OTLP_TOKEN"


def alert(n: int, **fields: Any) -> pb.Alert:
    given: dict[str, Any] = {"id": f"alert-{n:05d}", "rule_id": "gpu-miner", "severity": pb.SEVERITY_HIGH,
                             "title": f"miner {n} – ünïcode", "scope": "lineage", "scope_key": f"lineage:{n}",
                             "tags": ["miner", "T1496"], "incident_id": "incident-1"}
    message = pb.Alert(**(given | fields))
    message.time.FromNanoseconds(1_700_000_000_123_456_789 + n)
    message.steps.add(fact="exec", summary="xmrig started")
    return message


def incident() -> pb.Incident:
    message = pb.Incident(id="incident-1", severity=pb.SEVERITY_CRITICAL, summary="a miner behind an ssh tunnel",
                          rule_ids=["gpu-miner", "ssh-tunnel"], scope_keys=["lineage:1"], alerts_total=2)
    message.first_seen.FromNanoseconds(1_700_000_000_000_000_000)
    message.last_seen.FromNanoseconds(1_700_000_100_000_000_000)
    message.alerts.append(alert(1))
    return message


class Receiver(LogsServiceServicer):
    """An OTLP logs receiver: keeps each export it takes and the metadata of every call; answers
    with the failures queued in `failures` first, and with `partial` when it takes one."""

    def __init__(self) -> None:
        self.requests: list[ExportLogsServiceRequest] = []
        self.metadata: list[dict[str, str]] = []
        self.failures: list[tuple[grpc.StatusCode, str]] = []
        self.partial = ExportLogsPartialSuccess()
        self.hold: threading.Event | None = None  # set: the next exports wait for it
        self.attempts = 0
        self.lock = threading.Lock()

    def Export(self, request: ExportLogsServiceRequest, context: grpc.ServicerContext) -> ExportLogsServiceResponse:
        with self.lock:
            self.attempts += 1
            self.metadata.append(dict(context.invocation_metadata()))
            failure = self.failures.pop(0) if self.failures else None
            if failure is None:
                self.requests.append(request)
        if self.hold is not None:
            self.hold.wait(10)
        if failure is not None:
            context.abort(*failure)
        return ExportLogsServiceResponse(partial_success=self.partial)

    def log_records(self) -> list[LogRecord]:
        with self.lock:
            return [log for req in self.requests for logs in req.resource_logs for scope in logs.scope_logs
                    for log in scope.log_records]


@contextmanager
def serving(receiver: Receiver, credentials: Any = None) -> Iterator[str]:
    """The receiver on 127.0.0.1; its endpoint."""
    server = grpc.server(ThreadPoolExecutor(max_workers=2))
    add_LogsServiceServicer_to_server(receiver, server)  # type: ignore[no-untyped-call]
    address = "127.0.0.1:0"
    port = server.add_secure_port(address, credentials) if credentials else server.add_insecure_port(address)
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(None)


@pytest.fixture
def receiver() -> Receiver:
    return Receiver()


@pytest.fixture
def endpoint(receiver: Receiver) -> Iterator[str]:
    with serving(receiver) as where:
        yield where


def value_of(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [value_of(v) for v in value.array_value.values]
    return getattr(value, kind or "string_value")


def attrs(pairs: Iterable[KeyValue]) -> dict[str, Any]:
    pairs = list(pairs)
    keys = [kv.key for kv in pairs]
    assert len(keys) == len(set(keys)), "no key twice"
    return {kv.key: value_of(kv.value) for kv in pairs}


def alert_ids(logs: list[LogRecord]) -> list[str]:
    return [attrs(log.attributes)["gpusentry.alert.id"] for log in logs]


class Running:
    """An OTLP sink's real worker on a real journal."""

    def __init__(self, tmp_path: Path, options: otlp.Options, kinds: tuple[str, ...] = ("alert", "incident",
                 "sensor_gap"), from_start: bool = False) -> None:
        self.journal = Journal(tmp_path / "journal.db")
        # the records' fixed times (2023) are inside a horizon of a century
        spec = SinkSpec(type="otlp", name="collector", options=options, where="config.yaml:3", kinds=kinds,
                        horizon_s=100 * 365 * 86400)
        cursor = CursorFile(tmp_path / "collector.cursor")
        if from_start:
            cursor.save(0)
        self.delivery = otlp.Delivery(options, HOST)
        self.sink = Sink(spec, self.delivery, self.journal, cursor, HOST, backoff=Backoff(base_s=0.01, cap_s=0.05))
        self.sink.start()

    def stop(self) -> None:
        self.sink.stop()
        self.journal.close()


# -- what arrives -----------------------------------------------------------------------------------


def test_alerts_incidents_and_gaps_arrive_as_log_records(tmp_path: Path, receiver: Receiver, endpoint: str) -> None:
    journal = Journal(tmp_path / "journal.db")
    journal.append(alert(1))
    journal.append_incident(incident())
    journal.append_gap(1_700_000_200_000_000_000, 1_700_000_300_000_000_000, "the agent restarted")
    expected = journal.records()
    journal.close()
    before = time.time_ns()
    running = Running(tmp_path, otlp.Options(endpoint=endpoint, insecure=True), from_start=True)
    try:
        wait_until(lambda: running.sink.counters.sent == 3, what="three records sent")
    finally:
        running.stop()
    after = time.time_ns()

    [request] = receiver.requests
    [resource_logs] = request.resource_logs
    assert attrs(resource_logs.resource.attributes) == {
        "service.name": "gpusentry", "service.version": sensor.__version__, "host.name": "gpu-7", "host.id": "0f" * 16}
    [scope_logs] = resource_logs.scope_logs
    assert (scope_logs.scope.name, scope_logs.scope.version) == ("gpusentry", sensor.__version__)
    logs = list(scope_logs.log_records)
    assert len(logs) == 3
    assert all(before <= log.observed_time_unix_nano <= after for log in logs)
    for log, item in zip(logs, expected, strict=True):
        whole = attrs(log.attributes)["gpusentry.record"]
        assert whole == json_line(item, HOST)
        assert json.loads(whole) == as_dict(record(item, HOST))

    alert_log, incident_log, gap_log = logs
    [journaled_alert, journaled_incident, journaled_gap] = expected
    assert (alert_log.time_unix_nano, alert_log.severity_number, alert_log.severity_text, alert_log.body.string_value,
            alert_log.event_name) == (1_700_000_000_123_456_790, 17, "ERROR", "miner 1 – ünïcode", "gpusentry.alert")
    found = attrs(alert_log.attributes)
    del found["gpusentry.record"]
    assert found == {
        "gpusentry.type": "alert", "gpusentry.alert.cursor": str(journaled_alert.cursor),
        "gpusentry.alert.rule_id": "gpu-miner", "gpusentry.alert.severity": "SEVERITY_HIGH",
        "gpusentry.alert.title": "miner 1 – ünïcode", "gpusentry.alert.tags": ["miner", "T1496"],
        "gpusentry.alert.time": "2023-11-14T22:13:20.123456790Z", "gpusentry.alert.scope": "lineage",
        "gpusentry.alert.scope_key": "lineage:1", "gpusentry.alert.id": "alert-00001",
        "gpusentry.alert.incident_id": "incident-1", "gpusentry.incident.id": "incident-1",
        "gpusentry.alert.ts": "0",
    }  # no steps or processes (they are in gpusentry.record), no empty description

    assert (incident_log.time_unix_nano, incident_log.severity_number, incident_log.severity_text,
            incident_log.body.string_value, incident_log.event_name) == (
        1_700_000_100_000_000_000, 21, "FATAL", "a miner behind an ssh tunnel", "gpusentry.incident")
    found = attrs(incident_log.attributes)
    assert {key: found[key] for key in ("gpusentry.type", "gpusentry.incident.id", "gpusentry.incident.cursor",
                                        "gpusentry.incident.severity", "gpusentry.incident.rule_ids",
                                        "gpusentry.incident.alerts_total")} == {
        "gpusentry.type": "incident", "gpusentry.incident.id": "incident-1",
        "gpusentry.incident.cursor": str(journaled_incident.cursor), "gpusentry.incident.severity": "SEVERITY_CRITICAL",
        "gpusentry.incident.rule_ids": ["gpu-miner", "ssh-tunnel"], "gpusentry.incident.alerts_total": "2"}
    assert not [key for key in found if key.startswith("gpusentry.incident.alerts.")]

    assert (gap_log.time_unix_nano, gap_log.severity_number, gap_log.severity_text, gap_log.body.string_value,
            gap_log.event_name) == (1_700_000_300_000_000_000, 13, "WARN", "the agent restarted",
                                    "gpusentry.sensor_gap")
    found = attrs(gap_log.attributes)
    del found["gpusentry.record"]
    assert found == {"gpusentry.type": "sensor_gap", "gpusentry.sensor_gap.cursor": str(journaled_gap.cursor),
                     "gpusentry.sensor_gap.start": "2023-11-14T22:16:40Z",
                     "gpusentry.sensor_gap.end": "2023-11-14T22:18:20Z",
                     "gpusentry.sensor_gap.cause": "the agent restarted"}


def test_events_and_facts_when_the_sink_takes_them(tmp_path: Path, receiver: Receiver, endpoint: str) -> None:
    event = pb.Event(kind=pb.EVENT_KIND_GPU_OPEN, process=pb.ProcessRef(exec_id="42:7:1", pid=42, exe="/usr/bin/xmrig"),
                     gpu_open=pb.GpuOpen())
    event.time.FromNanoseconds(1_700_000_000_000_000_042)
    fact = pb.Fact(kind=pb.FACT_KIND_MINER, summary="xmrig connects to a mining pool",
                   miner=pb.MinerFact(reason="pool-port", detail="3333", port=3333, address="203.0.113.9"))
    fact.time.FromNanoseconds(1_700_000_000_000_000_043)
    running = Running(tmp_path, otlp.Options(endpoint=endpoint, insecure=True), kinds=("event", "fact"))
    try:
        running.sink.offer(event)
        running.sink.offer(fact)
        wait_until(lambda: len(receiver.log_records()) == 2, what="the event and the fact")
    finally:
        running.stop()
    event_log, fact_log = receiver.log_records()
    assert (event_log.time_unix_nano, event_log.severity_number, event_log.body.string_value,
            event_log.event_name) == (1_700_000_000_000_000_042, 9, "gpu_open by /usr/bin/xmrig (pid 42)",
                                      "gpusentry.event")
    found = attrs(event_log.attributes)
    assert [found[f"gpusentry.event.{key}"] for key in ("kind", "process.pid", "process.exe")] == [
        "EVENT_KIND_GPU_OPEN", 42, "/usr/bin/xmrig"]
    assert (fact_log.time_unix_nano, fact_log.severity_text, fact_log.body.string_value, fact_log.event_name) == (
        1_700_000_000_000_000_043, "INFO", "xmrig connects to a mining pool", "gpusentry.fact")
    found = attrs(fact_log.attributes)
    assert (found["gpusentry.fact.miner.port"], found["gpusentry.fact.miner.address"]) == (3333, "203.0.113.9")
    assert json.loads(found["gpusentry.record"]) == as_dict(record(fact, HOST))


@pytest.mark.parametrize(("severity", "number", "text"), [
    (pb.SEVERITY_CRITICAL, 21, "FATAL"), (pb.SEVERITY_HIGH, 17, "ERROR"), (pb.SEVERITY_MEDIUM, 13, "WARN"),
    (pb.SEVERITY_LOW, 10, "INFO2"), (pb.SEVERITY_INFO, 9, "INFO"), (pb.SEVERITY_UNSPECIFIED, 9, "INFO"),
])
def test_severity_table(severity: int, number: int, text: str) -> None:
    log = otlp.log_record(record(alert(1, severity=severity), HOST), observed_ns=5)
    assert (log.severity_number, log.severity_text) == (number, text)


def test_a_time_before_1970_is_unknown_not_an_error() -> None:
    gap = pb.SensorGap(cause="the clock was reset")
    gap.end.FromNanoseconds(-5_000_000_000)
    assert otlp.log_record(record(gap, HOST), observed_ns=5).time_unix_nano == 0


# -- retries and refusals -----------------------------------------------------------------------------


def test_unavailable_twice_then_delivered(tmp_path: Path, receiver: Receiver, endpoint: str) -> None:
    receiver.failures = [(grpc.StatusCode.UNAVAILABLE, "warming up")] * 2
    running = Running(tmp_path, otlp.Options(endpoint=endpoint, insecure=True))
    try:
        running.journal.append(alert(1))
        running.sink.wake()
        wait_until(lambda: running.sink.counters.sent == 1, what="the alert delivered")
    finally:
        running.stop()
    counters = running.sink.counters
    assert (counters.retried, counters.failed, counters.up, counters.last_error) == (2, 0, True, "")
    assert receiver.attempts == 3
    assert alert_ids(receiver.log_records()) == ["alert-00001"]


def test_invalid_argument_is_failed_and_skipped(tmp_path: Path, receiver: Receiver, endpoint: str) -> None:
    receiver.failures = [(grpc.StatusCode.INVALID_ARGUMENT, "attribute value too long")]
    running = Running(tmp_path, otlp.Options(endpoint=endpoint, insecure=True))
    try:
        running.journal.append(alert(1))
        running.sink.wake()
        wait_until(lambda: running.sink.counters.failed == 1, what="the alert refused")
        assert running.sink.counters.last_error == f"{endpoint} answered INVALID_ARGUMENT: attribute value too long"
        last = running.journal.append(alert(2))
        running.sink.wake()
        wait_until(lambda: running.sink.counters.sent == 1, what="the next alert delivered")
    finally:
        running.stop()
    assert (running.sink.counters.retried, running.sink.cursor) == (0, last)
    assert alert_ids(receiver.log_records()) == ["alert-00002"]


@pytest.mark.parametrize(("code", "permanent"), [
    (grpc.StatusCode.UNAVAILABLE, False), (grpc.StatusCode.DEADLINE_EXCEEDED, False),
    (grpc.StatusCode.RESOURCE_EXHAUSTED, False), (grpc.StatusCode.ABORTED, False),
    (grpc.StatusCode.UNAUTHENTICATED, False), (grpc.StatusCode.PERMISSION_DENIED, False),
    (grpc.StatusCode.UNIMPLEMENTED, False), (grpc.StatusCode.INVALID_ARGUMENT, True),
    (grpc.StatusCode.INTERNAL, True), (grpc.StatusCode.FAILED_PRECONDITION, True), (grpc.StatusCode.UNKNOWN, True),
])
def test_statuses_retried_or_refused(receiver: Receiver, endpoint: str, code: grpc.StatusCode,
                                     permanent: bool) -> None:
    receiver.failures = [(code, "no")]
    delivery = otlp.Delivery(otlp.Options(endpoint=endpoint, insecure=True), HOST)
    try:
        with pytest.raises(SinkError) as failed:
            delivery.send([record(alert(1), HOST)])
    finally:
        delivery.close()
    assert (str(failed.value), failed.value.permanent) == (f"{endpoint} answered {code.name}: no", permanent)


def test_a_slow_receiver_is_a_deadline_retried(receiver: Receiver, endpoint: str) -> None:
    receiver.hold = threading.Event()
    delivery = otlp.Delivery(otlp.Options(endpoint=endpoint, insecure=True, timeout_s=0.2), HOST)
    try:
        with pytest.raises(SinkError) as failed:
            delivery.send([record(alert(1), HOST)])
    finally:
        receiver.hold.set()
        delivery.close()
    assert str(failed.value) == f"{endpoint} answered DEADLINE_EXCEEDED: Deadline Exceeded"
    assert not failed.value.permanent


def test_no_receiver_is_unavailable_retried() -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    delivery = otlp.Delivery(otlp.Options(endpoint=f"127.0.0.1:{port}", insecure=True), HOST)
    with pytest.raises(SinkError) as failed:
        delivery.send([record(alert(1), HOST)])
    delivery.close()
    assert str(failed.value).startswith(f"127.0.0.1:{port} answered UNAVAILABLE: ")
    assert not failed.value.permanent


def test_a_partial_success_is_refused_naming_the_count(receiver: Receiver, endpoint: str) -> None:
    receiver.partial = ExportLogsPartialSuccess(rejected_log_records=1, error_message="timestamp too old")
    delivery = otlp.Delivery(otlp.Options(endpoint=endpoint, insecure=True), HOST)
    with pytest.raises(SinkError) as failed:
        delivery.send([record(alert(1), HOST), record(alert(2), HOST)])
    delivery.close()
    assert (str(failed.value), failed.value.permanent) == (
        f"{endpoint} rejected 1 of 2 log records: timestamp too old", True)
    assert len(receiver.log_records()) == 2


def test_a_large_batch_is_several_requests_and_a_huge_record_is_cut(receiver: Receiver, endpoint: str) -> None:
    big = [record(alert(n, description="x" * 700_000), HOST) for n in range(6)]
    delivery = otlp.Delivery(otlp.Options(endpoint=endpoint, insecure=True), HOST)
    delivery.send(big)  # the receiver takes 4 MiB a request, gRPC's default
    delivery.close()
    assert len(receiver.requests) >= 2
    assert all(req.ByteSize() <= otlp.MAX_REQUEST_BYTES + 1024 for req in receiver.requests)
    logs = receiver.log_records()
    assert alert_ids(logs) == [f"alert-{n:05d}" for n in range(6)]
    for log, sent in zip(logs, big, strict=True):
        assert log.ByteSize() <= otlp.MAX_RECORD_BYTES
        whole = attrs(log.attributes)["gpusentry.record"]
        line = json_line(sent.alert, HOST)
        assert whole.endswith(f"...[truncated: the record is {len(line.encode())} bytes]")
        assert line.startswith(whole.rsplit("...[truncated", 1)[0])
        assert attrs(log.attributes)["gpusentry.alert.description"] == "x" * 700_000


class CountingRelay:
    """A TCP relay in front of the receiver that counts the bytes the sink sends through it."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.endpoint = f"127.0.0.1:{self.listener.getsockname()[1]}"
        self.sent = 0  # written by one thread: the one piping the sink's side
        self.sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):  # close() shuts the listener down
            while True:
                client, _ = self.listener.accept()
                host, port = self.upstream.rsplit(":", 1)
                server = socket.create_connection((host, int(port)))
                self.sockets += [client, server]
                threading.Thread(target=self._pipe, args=(client, server, True), daemon=True).start()
                threading.Thread(target=self._pipe, args=(server, client, False), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket, counted: bool) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                if counted:
                    self.sent += len(data)
                sink.sendall(data)

    def close(self) -> None:
        for sock in (self.listener, *self.sockets):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)  # wakes the threads blocked on it
            sock.close()


def test_gzip_compresses_on_the_wire(receiver: Receiver, endpoint: str) -> None:
    batch = [record(alert(n, description="x" * 100_000), HOST) for n in range(3)]
    on_the_wire = {}
    for compression in ("none", "gzip"):
        relay = CountingRelay(endpoint)
        delivery = otlp.Delivery(otlp.Options(endpoint=relay.endpoint, insecure=True, compression=compression), HOST)
        try:
            delivery.send(batch)  # returns once the receiver has taken it all: every byte was counted
        finally:
            delivery.close()
            relay.close()
        on_the_wire[compression] = relay.sent
    assert on_the_wire["none"] > 600_000
    assert on_the_wire["gzip"] < on_the_wire["none"] / 20
    assert alert_ids(receiver.log_records()) == [f"alert-{n:05d}" for n in range(3)] * 2


def test_closing_during_an_export_cancels_it_retryable(receiver: Receiver, endpoint: str) -> None:
    receiver.hold = threading.Event()
    delivery = otlp.Delivery(otlp.Options(endpoint=endpoint, insecure=True), HOST)

    def close_in_flight() -> None:  # the agent stopping, from another thread
        wait_until(lambda: receiver.attempts == 1, what="the export in flight")
        delivery.close()

    closer = threading.Thread(target=close_in_flight)
    closer.start()
    try:
        with pytest.raises(SinkError) as failed:
            delivery.send([record(alert(1), HOST)])
    finally:
        receiver.hold.set()
        closer.join()
    assert str(failed.value).startswith(f"{endpoint} answered CANCELLED: ")
    assert not failed.value.permanent
    delivery.send([record(alert(2), HOST)])  # a closed delivery connects again rather than fail for good
    delivery.close()


def test_reopen_connects_anew(receiver: Receiver, endpoint: str) -> None:
    delivery = otlp.Delivery(otlp.Options(endpoint=endpoint, insecure=True), HOST)
    delivery.send([record(alert(1), HOST)])
    delivery.reopen()
    delivery.send([record(alert(2), HOST)])
    delivery.close()
    assert alert_ids(receiver.log_records()) == ["alert-00001", "alert-00002"]


# -- headers and secrets --------------------------------------------------------------------------------


def test_a_secret_header_arrives_and_is_never_shown(tmp_path: Path, receiver: Receiver, endpoint: str,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    options = otlp.Options(endpoint=endpoint, insecure=True, headers=(("x-scope-orgid", "gpu-fleet"),),
                           secret_headers=(("authorization", Secret(env=TOKEN_ENV)),))
    # a receiver that repeats the token it refuses in its answer
    receiver.failures = [(grpc.StatusCode.UNAUTHENTICATED, f"token {TOKEN} expired")] * 1000
    running = Running(tmp_path, options)
    try:
        running.journal.append(alert(1))
        running.sink.wake()
        wait_until(lambda: running.sink.counters.retried >= 1, what="a refusal retried")
        status = str(running.sink.status())
        with receiver.lock:
            receiver.failures.clear()
        wait_until(lambda: running.sink.counters.sent == 1, what="the alert delivered")
        shown = [status, str(running.sink.status()), running.delivery.target, repr(options),
                 repr(vars(running.delivery))]
    finally:
        running.stop()
    assert "answered UNAUTHENTICATED: token <secret> expired" in status
    assert receiver.metadata[-1]["authorization"] == TOKEN
    assert receiver.metadata[-1]["x-scope-orgid"] == "gpu-fleet"
    assert not [text for text in shown if "s3cr3t" in text]


def test_an_unreadable_secret_is_retried_without_its_value(tmp_path: Path, endpoint: str) -> None:
    missing = tmp_path / "token"
    delivery = otlp.Delivery(otlp.Options(endpoint=endpoint, insecure=True,
                                          secret_headers=(("authorization", Secret(file=missing)),)), HOST)
    with pytest.raises(SinkError) as failed:
        delivery.send([record(alert(1), HOST)])
    assert str(failed.value) == (f"cannot read the secret header authorization from <secret from {missing}>: "
                                 "No such file or directory")
    assert not failed.value.permanent
    missing.write_text("Bearer\nsplit\n")
    with pytest.raises(SinkError, match="has characters gRPC metadata cannot carry") as failed:
        delivery.send([record(alert(1), HOST)])
    assert "split" not in str(failed.value)
    delivery.close()


# -- TLS ------------------------------------------------------------------------------------------------


@pytest.fixture
def certificates(tmp_path: Path) -> dict[str, Path]:
    return make_certificates(tmp_path)


def server_credentials(files: dict[str, Path], client_auth: bool = False) -> Any:
    return grpc.ssl_server_credentials([(files["server_key"].read_bytes(), files["server"].read_bytes())],
                                       root_certificates=files["ca"].read_bytes() if client_auth else None,
                                       require_client_auth=client_auth)


def test_tls_with_the_receivers_ca(receiver: Receiver, certificates: dict[str, Path]) -> None:
    with serving(receiver, server_credentials(certificates)) as endpoint:
        delivery = otlp.Delivery(otlp.Options(endpoint=endpoint, ca=certificates["ca"]), HOST)
        delivery.send([record(alert(1), HOST)])
        delivery.close()
        untrusting = otlp.Delivery(otlp.Options(endpoint=endpoint), HOST)  # the system's CAs did not sign it
        with pytest.raises(SinkError) as failed:
            untrusting.send([record(alert(2), HOST)])
        untrusting.close()
    assert alert_ids(receiver.log_records()) == ["alert-00001"]
    assert str(failed.value).startswith(f"{endpoint} answered UNAVAILABLE: ")
    assert not failed.value.permanent


def test_mtls_with_a_client_certificate(receiver: Receiver, certificates: dict[str, Path]) -> None:
    with serving(receiver, server_credentials(certificates, client_auth=True)) as endpoint:
        delivery = otlp.Delivery(otlp.Options(endpoint=endpoint, ca=certificates["ca"], cert=certificates["client"],
                                              key=certificates["client_key"]), HOST)
        delivery.send([record(alert(1), HOST)])
        delivery.close()
        anonymous = otlp.Delivery(otlp.Options(endpoint=endpoint, ca=certificates["ca"]), HOST)
        with pytest.raises(SinkError) as failed:
            anonymous.send([record(alert(2), HOST)])
        anonymous.close()
    assert alert_ids(receiver.log_records()) == ["alert-00001"]
    assert str(failed.value).startswith(f"{endpoint} answered UNAVAILABLE: ")


def test_tls_file_problems_are_named(tmp_path: Path, certificates: dict[str, Path]) -> None:
    encrypted = otlp.Delivery(otlp.Options(endpoint="127.0.0.1:4317", ca=certificates["ca"],
                                           cert=certificates["client"], key=certificates["client_encrypted_key"]), HOST)
    with pytest.raises(SinkError) as failed:
        encrypted.send([record(alert(1), HOST)])
    assert str(failed.value) == (f"the key {certificates['client_encrypted_key']} is encrypted: give the agent an "
                                 "unencrypted key, readable by it only")
    missing = otlp.Delivery(otlp.Options(endpoint="127.0.0.1:4317", ca=tmp_path / "nope.pem"), HOST)
    with pytest.raises(SinkError) as failed:
        missing.send([record(alert(1), HOST)])
    assert str(failed.value) == f"cannot read {tmp_path / 'nope.pem'}: No such file or directory"
    assert not failed.value.permanent
    (tmp_path / "garbage.pem").write_text("not a certificate")
    for options, what in [(otlp.Options(endpoint="127.0.0.1:4317", ca=tmp_path / "garbage.pem"), "certificate"),
                          (otlp.Options(endpoint="127.0.0.1:4317", ca=certificates["ca"], cert=certificates["client"],
                                        key=tmp_path / "garbage.pem"), "private key")]:
        with pytest.raises(SinkError) as failed:
            otlp.Delivery(options, HOST).send([record(alert(1), HOST)])
        assert str(failed.value) == f"{tmp_path / 'garbage.pem'} has no PEM {what} in it"


# -- options ----------------------------------------------------------------------------------------


def parse(text: str, tmp_path: Path) -> otlp.Options:
    return otlp.options(source.load(text), tmp_path / "config.yaml")


def test_options_defaults(tmp_path: Path) -> None:
    parsed = parse("type: otlp\nname: o\nkinds: [alert]\nhorizon: 1h\nqueue_size: 5\nbatch: 2\n"
                   "endpoint: collector:4317\n", tmp_path)
    assert parsed == otlp.Options(endpoint="collector:4317", insecure=False, ca=None, cert=None, key=None, headers=(),
                                  secret_headers=(), timeout_s=10.0, compression="none")


def test_options_values(tmp_path: Path) -> None:
    parsed = parse("type: otlp\nendpoint: '[::1]:4317'\nca: tls/ca.pem\ncert: tls/me.pem\nkey: tls/me.key\n"
                   "headers:\n  X-Scope-OrgID: gpu-fleet\n  x-tenant: 42\n"
                   "secret_headers:\n  Authorization: {env: OTLP_TOKEN}\n  x-api-key: {file: keys/otlp}\n"
                   "timeout: 2.5\ncompression: gzip\n", tmp_path)
    assert parsed == otlp.Options(
        endpoint="[::1]:4317", ca=tmp_path / "tls/ca.pem", cert=tmp_path / "tls/me.pem", key=tmp_path / "tls/me.key",
        headers=(("x-scope-orgid", "gpu-fleet"), ("x-tenant", "42")),
        secret_headers=(("authorization", Secret(env="OTLP_TOKEN")),
                        ("x-api-key", Secret(file=tmp_path / "keys/otlp"))),
        timeout_s=2.5, compression="gzip")
    assert parse("type: otlp\nendpoint: localhost:4317\ninsecure: true\n", tmp_path).insecure


@pytest.mark.parametrize(("text", "line", "message"), [
    ("type: otlp\nname: o\nendpoint: c:4317\nurl: x\n", 4,
     "unknown key 'url' for an otlp sink; its keys are endpoint, insecure, ca, cert, key, headers, secret_headers, "
     "timeout, compression (and type, name, kinds, horizon, queue_size, batch, linger)"),
    ("type: otlp\nname: o\n", 1, "`endpoint` is the receiver's HOST:PORT, e.g. otel-collector:4317"),
    ("type: otlp\n\nendpoint: collector\n", 3, "`endpoint` is the receiver's HOST:PORT, e.g. otel-collector:4317"),
    ("type: otlp\nendpoint: c:70000\n", 2, "`endpoint` is the receiver's HOST:PORT, e.g. otel-collector:4317"),
    ("type: otlp\nendpoint: http://c:4317\n", 2, "`endpoint` is the receiver's HOST:PORT, e.g. otel-collector:4317, "
                                                 "without a scheme (plaintext is `insecure: true`)"),
    ("type: otlp\nendpoint: c:4317\ninsecure: 'no'\n", 3, "`insecure` is true (plaintext) or false (TLS)"),
    ("type: otlp\nendpoint: c:4317\ninsecure: true\nca: ca.pem\n", 4,
     "`ca` is for TLS: leave it out with `insecure: true`"),
    ("type: otlp\nendpoint: c:4317\ncert: me.pem\n", 3,
     "`cert` and `key` go together: the client certificate and its private key"),
    ("type: otlp\nendpoint: c:4317\nkey: ''\n", 3, "`key` is the path of a PEM file"),
    ("type: otlp\nendpoint: c:4317\nheaders: [a]\n", 3, "`headers` is a mapping of header names to values"),
    ("type: otlp\nendpoint: c:4317\nheaders:\n  ok: 1\n  grpc-timeout: 1\n", 5,
     "'grpc-timeout' cannot be a gRPC header: letters, digits, '-', '_' and '.', not starting with grpc- (gRPC's "
     "own) or ending in -bin (binary)"),
    ("type: otlp\nendpoint: c:4317\nheaders:\n  x trace: 1\n", 4,
     "'x trace' cannot be a gRPC header: letters, digits, '-', '_' and '.', not starting with grpc- (gRPC's "
     "own) or ending in -bin (binary)"),
    ("type: otlp\nendpoint: c:4317\nheaders:\n  x-tenant: \"a\\nb\"\n", 4,
     "the header x-tenant's value is printable ASCII text"),
    ("type: otlp\nendpoint: c:4317\nheaders:\n  authorization: x\nsecret_headers:\n  Authorization: {env: T}\n", 6,
     "the header authorization is in both `headers` and `secret_headers`"),
    ("type: otlp\nendpoint: c:4317\nsecret_headers:\n  authorization: Bearer abc\n", 4,
     "the secret header authorization is where its value is kept: {file: PATH} or {env: VARIABLE}"),
    ("type: otlp\nendpoint: c:4317\nsecret_headers:\n  authorization: {file: a, env: B}\n", 4,
     "the secret header authorization is where its value is kept: {file: PATH} or {env: VARIABLE}"),
    ("type: otlp\nendpoint: c:4317\nsecret_headers:\n  authorization: {env: 'A B'}\n", 4,
     "the secret header authorization: `env` is an environment variable's name"),
    ("type: otlp\nendpoint: c:4317\ntimeout: 0\n", 3,
     "`timeout` is the seconds an export may take: above 0, at most 300"),
    ("type: otlp\nendpoint: c:4317\ntimeout: 10s\n", 3,
     "`timeout` is the seconds an export may take: above 0, at most 300"),
    ("type: otlp\nendpoint: c:4317\ncompression: zstd\n", 3, "`compression` is one of none, gzip"),
])
def test_option_errors_name_their_line(tmp_path: Path, text: str, line: int, message: str) -> None:
    with pytest.raises(Invalid) as invalid:
        parse(text, tmp_path)
    assert (invalid.value.line, invalid.value.message) == (line, message)


def test_the_common_keys_are_left_to_the_sink(tmp_path: Path) -> None:
    assert parse("type: otlp\nname: o\nkinds: [alert, event]\nhorizon: 2h\nqueue_size: 9\nbatch: 3\n"
                 "endpoint: c:4317\n", tmp_path) == otlp.Options(endpoint="c:4317")

