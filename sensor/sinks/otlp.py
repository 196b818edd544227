"""The OTLP sink: each record as one OpenTelemetry LogRecord, exported to a collector with
OTLP/gRPC (`LogsService/Export`), one request per batch (several for a batch over 3 MiB).

    - type: otlp
      endpoint: otel-collector.example.com:4317   # HOST:PORT of an OTLP/gRPC receiver
      insecure: false       # true: plaintext (a collector on this host); false: TLS
      ca: /etc/gpusentry/otlp-ca.pem        # TLS: the receiver's CA (default: the system's)
      cert: /etc/gpusentry/otlp.pem         # TLS, with key: a client certificate (mTLS)
      key: /etc/gpusentry/otlp.key          # an unencrypted PEM key, readable by the agent only
      headers: {x-scope-orgid: gpu-fleet}   # gRPC metadata on every export, not secret
      secret_headers:                       # gRPC metadata read from a file or the environment
        authorization: {env: OTLP_AUTHORIZATION}   # the whole value, e.g. "Bearer TOKEN"
      timeout: 10           # seconds an export may take
      compression: none     # or gzip

Why grpcio and opentelemetry-proto, not the OpenTelemetry SDK and its OTLP exporter: the sink
needs the collector's messages and service, which opentelemetry-proto generates, and nothing
else. The exporter brings the SDK, the API, googleapis-common-protos and an exporter-common
package, each with its own protobuf range; gpusentry's generated API needs protobuf 7, and
opentelemetry-proto (>=1.30) takes protobuf <8, so the two ranges agree. It also gives this
module the gRPC status of every failure, which decides retry or skip (below), and the
partial-success answer, which the exporter only logs.

A batch is one ExportLogsServiceRequest: one ResourceLogs per host (service.name gpusentry,
service.version, host.name, host.id = the machine id), one ScopeLogs (scope gpusentry), and a
LogRecord per record:

    time_unix_nano           the record's own time: an alert's, an incident version's last_seen,
                             a sensor gap's end, an event's or a fact's
    observed_time_unix_nano  when the batch was exported
    severity_number, _text   SEVERITY below; the text is the OTLP short name of the number
    body                     an alert's title, an incident's summary, a sensor gap's cause, a
                             fact's summary, an event's kind and process
    event_name               gpusentry.alert, gpusentry.incident, gpusentry.sensor_gap, ...
    attributes               gpusentry.type (alert, incident, ...); the item's fields in their
                             outward JSON form (sensor/outward.py: names as in the proto, enums
                             by name, timestamps RFC 3339, 64-bit integers as strings), dotted:
                             gpusentry.alert.rule_id, gpusentry.event.process.exe, ...; an
                             alert's incident also as gpusentry.incident.id (one key finds an
                             incident and its alerts); and gpusentry.record, the whole record as
                             `run --json` prints it, so nothing is lost

Lists of messages (an alert's steps and processes, an incident's alerts) are only in
gpusentry.record: flattened, they would give each record hundreds of indexed keys. Empty
strings and lists are left out; zeros and false are kept (uid 0 is root).

Requests stay under MAX_REQUEST_BYTES, below the 4 MiB that gRPC servers (and the collector's
OTLP receiver) accept by default: a larger batch is sent as several requests, in order, and a
record over MAX_RECORD_BYTES has the end of its gpusentry.record cut, with a marker saying how
long it was (the record is in the journal, whole, under its id).

Failures, by gRPC status. Retried (the worker waits its backoff and sends the batch again, so
requests of it that got through are sent twice: at least once, the ids de-duplicate):
UNAVAILABLE, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, ABORTED, CANCELLED, OUT_OF_RANGE and
DATA_LOSS, which the OTLP specification calls retryable (RESOURCE_EXHAUSTED even without
RetryInfo: a throttled collector recovers, and the journal keeps the records meanwhile), and
also UNAUTHENTICATED, PERMISSION_DENIED and UNIMPLEMENTED: an expired token (the secret is read
at each export) or an endpoint that is not an OTLP logs receiver is the setup's fault, not the
records', and skipping them would discard every alert until someone noticed. Every other
status (INVALID_ARGUMENT, INTERNAL, UNKNOWN, ...) refuses the records for good: the batch is
counted failed and skipped. So is a partial success with rejected_log_records above 0, which
the specification says must not be retried: the error names how many of the batch were
rejected (the worker counts the whole batch failed; the rest did arrive).
"""

from __future__ import annotations

import json
import re
import ssl
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeAlias

import grpc
from google.protobuf.message import Message
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2 as otlp_service
from opentelemetry.proto.collector.logs.v1.logs_service_pb2_grpc import LogsServiceStub
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue, InstrumentationScope, KeyValue
from opentelemetry.proto.logs.v1 import logs_pb2 as otlp_logs
from opentelemetry.proto.resource.v1.resource_pb2 import Resource

import sensor
from sensor.api.v1 import gpusentry_pb2 as pb
from sensor.outward import as_dict
from sensor.rules import source
from sensor.sinks.base import Invalid, Secret, SinkError, reject_unknown, tls_files
from sensor.sinks.syslog import bounded, item_of, time_of

TYPE = "otlp"
KEYS = ("endpoint", "insecure", "ca", "cert", "key", "headers", "secret_headers", "timeout", "compression")
SERVICE_NAME = SCOPE_NAME = "gpusentry"
DEFAULT_TIMEOUT_S = 10.0
MAX_TIMEOUT_S = 300.0
COMPRESSION = {"none": grpc.Compression.NoCompression, "gzip": grpc.Compression.Gzip}
MAX_REQUEST_BYTES = 3 * 1024 * 1024
MAX_RECORD_BYTES = 1024 * 1024
# A collector that restarts is tried again within this, not after gRPC's default of 2 minutes.
MAX_RECONNECT_BACKOFF_MS = 10_000

Severity: TypeAlias = otlp_logs.SeverityNumber.ValueType
# critical is FATAL, not ERROR2: backends show (and filter on) the range, so each of critical,
# high and medium gets a range of its own; low and info share INFO, low the higher number.
SEVERITY: dict[int, Severity] = {
    pb.SEVERITY_CRITICAL: otlp_logs.SEVERITY_NUMBER_FATAL, pb.SEVERITY_HIGH: otlp_logs.SEVERITY_NUMBER_ERROR,
    pb.SEVERITY_MEDIUM: otlp_logs.SEVERITY_NUMBER_WARN, pb.SEVERITY_LOW: otlp_logs.SEVERITY_NUMBER_INFO2,
    pb.SEVERITY_INFO: otlp_logs.SEVERITY_NUMBER_INFO}
# Events, facts, and an alert without a severity: information, not findings.
INFORMATIONAL = otlp_logs.SEVERITY_NUMBER_INFO
# Blind time is worth a look, but every agent restart records one: WARN, as syslog's sink says.
SENSOR_GAP_SEVERITY = otlp_logs.SEVERITY_NUMBER_WARN

RETRYABLE = frozenset({
    grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.ABORTED, grpc.StatusCode.CANCELLED, grpc.StatusCode.OUT_OF_RANGE, grpc.StatusCode.DATA_LOSS,
    grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNIMPLEMENTED})

ENDPOINT = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?):(\d{1,5})")
# gRPC metadata (its PROTOCOL-HTTP2 spec): lowercase names; ASCII values without control characters
HEADER_NAME = re.compile(r"[0-9a-z_.-]+")
HEADER_VALUE = re.compile(r"[\x20-\x7e]*")
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
CERTIFICATE = b"-----BEGIN CERTIFICATE-----"
PRIVATE_KEY = b"PRIVATE KEY-----"  # PKCS#8, and the older RSA and EC forms


@dataclass(frozen=True)
class Options:
    endpoint: str
    insecure: bool = False
    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    headers: tuple[tuple[str, str], ...] = ()
    secret_headers: tuple[tuple[str, Secret], ...] = ()
    timeout_s: float = DEFAULT_TIMEOUT_S
    compression: str = "none"


# -- the configuration ----------------------------------------------------------------------------


def options(raw: source.Located, file: Path) -> Options:
    """The sink's entry in the configuration file `file`; Invalid names the line of a bad value."""
    reject_unknown(raw, KEYS, "an otlp sink")
    insecure = _insecure(raw)
    headers = _headers(raw)
    return Options(endpoint=_endpoint(raw), insecure=insecure, **_tls_files(raw, file, insecure), headers=headers,
                   secret_headers=_secret_headers(raw, file, {name for name, _ in headers}),
                   timeout_s=_timeout(raw), compression=_compression(raw))


def _endpoint(raw: source.Located) -> str:
    value = raw.get("endpoint")
    usage = "`endpoint` is the receiver's HOST:PORT, e.g. otel-collector:4317"
    if isinstance(value, str) and "://" in value:
        raise Invalid(raw.line_of("endpoint"), f"{usage}, without a scheme (plaintext is `insecure: true`)")
    found = ENDPOINT.fullmatch(value) if isinstance(value, str) else None
    if found is None or not 1 <= int(found.group(3)) <= 65535:
        raise Invalid(raw.line_of("endpoint"), usage)
    return str(value)


def _insecure(raw: source.Located) -> bool:
    value = raw.get("insecure", False)
    if not isinstance(value, bool):
        raise Invalid(raw.line_of("insecure"), "`insecure` is true (plaintext) or false (TLS)")
    return value


def _tls_files(raw: source.Located, file: Path, insecure: bool) -> dict[str, Path | None]:
    return tls_files(raw, file, "is for TLS: leave it out with `insecure: true`" if insecure else None)


def _header_names(raw: source.Located, key: str) -> Iterator[tuple[str, Any, int]]:
    """The entries of a header mapping: each name as gRPC sends it (lowercase), its value, its line."""
    value = raw.get(key, {})
    if not isinstance(value, dict):
        raise Invalid(raw.line_of(key), f"`{key}` is a mapping of header names to values")
    for name, entry in value.items():
        line = value.line_of(name) if isinstance(value, source.Located) else raw.line_of(key)
        lowered = str(name).lower()
        if not HEADER_NAME.fullmatch(lowered) or lowered.startswith("grpc-") or lowered.endswith("-bin"):
            raise Invalid(line, f"{name!r} cannot be a gRPC header: letters, digits, '-', '_' and '.', not "
                                "starting with grpc- (gRPC's own) or ending in -bin (binary)")
        yield lowered, entry, line


def _headers(raw: source.Located) -> tuple[tuple[str, str], ...]:
    headers = []
    for name, value, line in _header_names(raw, "headers"):
        text = str(value) if isinstance(value, int | float) and not isinstance(value, bool) else value
        if not isinstance(text, str) or not HEADER_VALUE.fullmatch(text):
            raise Invalid(line, f"the header {name}'s value is printable ASCII text")
        headers.append((name, text))
    return tuple(headers)


def _secret_headers(raw: source.Located, file: Path, plain: set[str]) -> tuple[tuple[str, Secret], ...]:
    usage = "is where its value is kept: {file: PATH} or {env: VARIABLE}"
    secrets = []
    for name, where, line in _header_names(raw, "secret_headers"):
        if name in plain:
            raise Invalid(line, f"the header {name} is in both `headers` and `secret_headers`")
        if not isinstance(where, dict) or len(where) != 1 or not {"file", "env"} & where.keys():
            raise Invalid(line, f"the secret header {name} {usage}")
        path, env = where.get("file"), where.get("env")
        if path is not None and (not isinstance(path, str) or not path.strip()):
            raise Invalid(line, f"the secret header {name} {usage}")
        if env is not None and (not isinstance(env, str) or not ENV_NAME.fullmatch(env)):
            raise Invalid(line, f"the secret header {name}: `env` is an environment variable's name")
        secrets.append((name, Secret(file=file.parent / path if path is not None else None, env=env)))
    return tuple(secrets)


def _timeout(raw: source.Located) -> float:
    value = raw.get("timeout", DEFAULT_TIMEOUT_S)
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= MAX_TIMEOUT_S:
        raise Invalid(raw.line_of("timeout"), f"`timeout` is the seconds an export may take: above 0, at most "
                                              f"{MAX_TIMEOUT_S:g}")
    return float(value)


def _compression(raw: source.Located) -> str:
    value = raw.get("compression", "none")
    if value not in COMPRESSION:
        raise Invalid(raw.line_of("compression"), f"`compression` is one of {', '.join(COMPRESSION)}")
    return str(value)


# -- the log records ------------------------------------------------------------------------------


def severity(record: pb.Record) -> Severity:
    if record.HasField("alert"):
        return SEVERITY.get(record.alert.severity, INFORMATIONAL)
    if record.HasField("incident"):
        return SEVERITY.get(record.incident.severity, INFORMATIONAL)
    if record.HasField("sensor_gap"):
        return SENSOR_GAP_SEVERITY
    return INFORMATIONAL


def body(item: Message) -> str:
    if isinstance(item, pb.Alert):
        return item.title
    if isinstance(item, pb.Incident | pb.Fact):
        return item.summary
    if isinstance(item, pb.SensorGap):
        return item.cause
    if isinstance(item, pb.Event):
        kind = str(pb.EventKind.Name(item.kind)).removeprefix("EVENT_KIND_").lower()
        return f"{kind} by {item.process.exe} (pid {item.process.pid})" if item.process.exe else kind
    return ""


def any_value(value: Any) -> AnyValue:
    """A JSON value of the outward form as OTLP's: numbers stay numbers, lists become arrays."""
    if isinstance(value, bool):
        return AnyValue(bool_value=value)
    if isinstance(value, int) and -(2**63) <= value < 2**63:
        return AnyValue(int_value=value)
    if isinstance(value, float):
        return AnyValue(double_value=value)
    if isinstance(value, list):
        return AnyValue(array_value=ArrayValue(values=[any_value(v) for v in value]))
    return AnyValue(string_value=str(value))


def flattened(prefix: str, value: Any) -> Iterator[tuple[str, Any]]:
    """The outward form's fields as dotted keys; lists of messages are left to gpusentry.record."""
    if isinstance(value, dict):
        for key, inner in value.items():
            yield from flattened(f"{prefix}.{key}", inner)
    elif isinstance(value, list):
        if value and not any(isinstance(v, dict | list) for v in value):
            yield prefix, value
    elif value != "":
        yield prefix, value


def attributes(record: pb.Record) -> list[KeyValue]:
    item = item_of(record)
    whole = as_dict(record)  # rendered once: the attributes and the JSON are the same dict (rendering is the cost)
    pairs = [("gpusentry.type", record.type), *flattened(f"gpusentry.{record.type}", whole.get(record.type, {}))]
    if isinstance(item, pb.Alert) and item.incident_id:
        pairs.append(("gpusentry.incident.id", item.incident_id))
    pairs.append(("gpusentry.record", json.dumps(whole, ensure_ascii=False, separators=(",", ":"))))
    return [KeyValue(key=key, value=any_value(value)) for key, value in pairs]


def log_record(record: pb.Record, observed_ns: int) -> otlp_logs.LogRecord:
    item = item_of(record)
    stamp = time_of(item)
    # OTLP's times are unsigned: a clock set before 1970 reads as 0, "unknown", rather than failing the batch
    when = max(0, stamp.ToNanoseconds()) if stamp is not None else 0
    number = severity(record)
    log = otlp_logs.LogRecord(
        time_unix_nano=when, observed_time_unix_nano=observed_ns,
        severity_number=number, severity_text=otlp_logs.SeverityNumber.Name(number).removeprefix("SEVERITY_NUMBER_"),
        body=AnyValue(string_value=body(item)), event_name=f"gpusentry.{record.type}", attributes=attributes(record))
    if log.ByteSize() > MAX_RECORD_BYTES:
        _cut_record(log)
    return log


def _cut_record(log: otlp_logs.LogRecord) -> None:
    """Make room by cutting the end of gpusentry.record, the only attribute that repeats the rest."""
    whole = next(a.value for a in log.attributes if a.key == "gpusentry.record")
    text = whole.string_value.encode()
    room = MAX_RECORD_BYTES - (log.ByteSize() - len(text))
    whole.string_value = bounded(text, room).decode(errors="ignore")


def resource(host: pb.Host) -> Resource:
    pairs = [("service.name", SERVICE_NAME), ("service.version", sensor.__version__), ("host.name", host.hostname),
             ("host.id", host.machine_id)]
    return Resource(attributes=[KeyValue(key=k, value=AnyValue(string_value=v)) for k, v in pairs if v])


def export_requests(records: Sequence[pb.Record], observed_ns: int) -> list[otlp_service.ExportLogsServiceRequest]:
    """The batch as export requests, in order, each under MAX_REQUEST_BYTES (one, usually)."""
    out: list[otlp_service.ExportLogsServiceRequest] = []
    chunk: list[tuple[pb.Record, otlp_logs.LogRecord]] = []
    size = 0
    for record in records:
        log = log_record(record, observed_ns)
        log_size = log.ByteSize()
        if chunk and size + log_size > MAX_REQUEST_BYTES:
            out.append(export_request(chunk))
            chunk, size = [], 0
        chunk.append((record, log))
        size += log_size
    if chunk:
        out.append(export_request(chunk))
    return out


def export_request(chunk: list[tuple[pb.Record, otlp_logs.LogRecord]]) -> otlp_service.ExportLogsServiceRequest:
    """One ResourceLogs per host, in the order the hosts first appear (a batch has one, in practice)."""
    by_host: dict[bytes, tuple[pb.Host, list[otlp_logs.LogRecord]]] = {}
    for record, log in chunk:
        by_host.setdefault(record.host.SerializeToString(deterministic=True), (record.host, []))[1].append(log)
    scope = InstrumentationScope(name=SCOPE_NAME, version=sensor.__version__)
    return otlp_service.ExportLogsServiceRequest(resource_logs=[
        otlp_logs.ResourceLogs(resource=resource(host), scope_logs=[otlp_logs.ScopeLogs(scope=scope, log_records=logs)])
        for host, logs in by_host.values()])


# -- the transport --------------------------------------------------------------------------------


def credentials(options: Options) -> Any:
    """TLS settings, read at each connection: a renewed certificate is used, and a bad file is
    reported as such even while the receiver is down."""
    roots = _pem(options.ca, CERTIFICATE) if options.ca is not None else _system_roots()
    key = _pem(options.key, PRIVATE_KEY) if options.key is not None else None
    if key is not None and b"ENCRYPTED" in key:
        # gRPC has no way to ask for a password: the handshake would fail with a vaguer error
        raise SinkError(f"the key {options.key} is encrypted: give the agent an unencrypted key, readable by it only")
    chain = _pem(options.cert, CERTIFICATE) if options.cert is not None else None
    return grpc.ssl_channel_credentials(root_certificates=roots, private_key=key, certificate_chain=chain)


def _pem(path: Path, kind: bytes) -> bytes:
    """A PEM file's bytes; gRPC itself would only say "Failed to create security handshaker"."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SinkError(f"cannot read {path}: {exc.strerror or exc}") from exc
    if kind not in data:
        raise SinkError(f"{path} has no PEM {'private key' if kind == PRIVATE_KEY else 'certificate'} in it")
    return data


def _system_roots() -> bytes | None:
    """The system's CAs, as the syslog sink and curl trust them; gRPC's own bundle otherwise."""
    cafile = ssl.get_default_verify_paths().cafile
    return _pem(Path(cafile), CERTIFICATE) if cafile else None


def _secret_value(name: str, secret: Secret) -> str:
    try:
        value = secret.read()
    except OSError as exc:
        raise SinkError(f"cannot read the secret header {name} from {secret!r}: {exc.strerror or exc}") from exc
    if not HEADER_VALUE.fullmatch(value):
        raise SinkError(f"the secret header {name} from {secret!r} has characters gRPC metadata cannot carry "
                        "(printable ASCII only)")
    return value


def scrubbed(text: str, secrets: Sequence[str]) -> str:
    """A receiver's message, which might repeat a header it did not like, without the secrets."""
    for value in secrets:
        if value:
            text = text.replace(value, "<secret>")
    return " ".join(text.split())


class Delivery:
    """Exports each batch on one gRPC channel, made at the first export and kept (gRPC
    reconnects it by itself); one worker thread calls send()."""

    def __init__(self, options: Options, host: pb.Host) -> None:
        self.options = options
        self.target = options.endpoint
        self.clock: Callable[[], int] = time.time_ns
        self._lock = threading.Lock()  # close() comes from the thread stopping the agent
        self._channel: Any = None
        self._export: Any = None

    def send(self, records: Sequence[pb.Record]) -> None:
        secrets = [(name, _secret_value(name, secret)) for name, secret in self.options.secret_headers]
        metadata = (*self.options.headers, *secrets)
        export = self._connected()
        refusals = []
        for each in export_requests(records, self.clock()):
            refusal = self._export_one(export, each, metadata, [value for _, value in secrets])
            if refusal:
                refusals.append(refusal)
        if refusals:
            raise SinkError("; ".join(refusals), permanent=True)

    def _export_one(self, export: Any, each: otlp_service.ExportLogsServiceRequest,
                    metadata: tuple[tuple[str, str], ...], secrets: list[str]) -> str:
        """Raises SinkError for a failure worth retrying; the reason records were refused, or ''."""
        try:
            response = export(each, timeout=self.options.timeout_s, metadata=metadata,
                              compression=COMPRESSION[self.options.compression])
        except ValueError as exc:  # "Cannot invoke RPC on closed channel!": close() came from another thread
            raise SinkError(f"cannot export to {self.target}: {exc}") from exc
        except grpc.RpcError as exc:
            code = exc.code()
            message = scrubbed(f"{self.target} answered {code.name}: {exc.details() or 'no details'}", secrets)
            if code in RETRYABLE:
                raise SinkError(message) from None  # the RpcError's own text may repeat a secret header
            return message
        rejected = response.partial_success.rejected_log_records
        if rejected <= 0:
            return ""
        sent = sum(len(scope.log_records) for logs in each.resource_logs for scope in logs.scope_logs)
        reason = response.partial_success.error_message or "no reason given"
        return scrubbed(f"{self.target} rejected {rejected} of {sent} log records: {reason}", secrets)

    def _connected(self) -> Any:
        # The stub is made with its channel, under the lock: grpcio 1.85 crashes the process
        # (SIGSEGV) when a generated stub's method is made on a channel already closed.
        with self._lock:
            if self._export is None:
                self._channel = self._open_channel()
                # the generated stub has no type hints (grpcio-tools writes none for services)
                self._export = LogsServiceStub(self._channel).Export  # type: ignore[no-untyped-call]
            return self._export

    def _open_channel(self) -> Any:
        settings = [("grpc.max_reconnect_backoff_ms", MAX_RECONNECT_BACKOFF_MS)]
        if self.options.insecure:
            return grpc.insecure_channel(self.options.endpoint, options=settings)
        return grpc.secure_channel(self.options.endpoint, credentials(self.options), options=settings)

    def reopen(self) -> None:
        """SIGHUP: the next export connects anew, reading the TLS files again."""
        self.close()

    def close(self) -> None:
        with self._lock:
            channel, self._channel, self._export = self._channel, None, None
        if channel is not None:
            channel.close()
