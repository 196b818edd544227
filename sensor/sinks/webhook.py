"""The webhook sink: each record as one HTTP(S) POST of a JSON object in Falco's output shape, so
that falcosidekick (or anything that takes Falco's `http_output`) takes gpusentry's alerts,
incidents and sensor gaps as it takes Falco's own.

    sinks:
      - type: webhook
        url: https://falcosidekick.example:2801/   # http:// or https://; required
        headers: {X-Fleet: gpu-a}                  # sent as written: nothing secret here
        secret_headers:                            # where each value is kept; read when sent, never shown
          Authorization: {file: /etc/gpusentry/webhook-token}   # or {env: VARIABLE}
        timeout: 5                                 # seconds to connect, and for each read (default 5)
        ca: /etc/gpusentry/webhook-ca.pem          # the CA that signs the server (default: the system's)
        cert: /etc/gpusentry/client.pem            # mutual TLS: this client certificate,
        key: /etc/gpusentry/client.key             #   with its unencrypted private key
        insecure_skip_verify: false                # see below

`insecure_skip_verify: true` ACCEPTS ANY SERVER CERTIFICATE: whoever can reach the path to the
endpoint can read every alert and answer for the server. It is for a first test against a
self-signed endpoint only; give `ca` instead. The sink's target (in `status`) says so while on.

One request per record: falcosidekick's handler decodes one event per request. A record is sent
again only when its own 2xx was not received (a timeout after the server took it): the worker
retries a failed batch whole, and this delivery skips what the batch already delivered. The
answer: 2xx delivered; 5xx, 408, 429, timeouts and connection or TLS errors are retried (with
base.Sink's backoff; Retry-After is not read); any other 4xx refuses the record for good (counted
failed, skipped); a 3xx is retried, as the configuration is wrong rather than the record
(redirects are not followed).

The payload is Falco's `json_output` with `json_include_output_property` and
`json_include_tags_property` on, exactly these keys (falcosecurity/falco,
userspace/engine/formats.cpp, `falco_formats::format_event`; falcosidekick, types/types.go
`FalcoPayload`, whose Check() wants a priority, a rule, a time and output_fields):

    output         "<time>: <Priority> <title>: <details>", one printable line, as Falco's
    priority       Falco's names (types/priority.go): critical Critical, high Error,
                   medium Warning, low Notice, info Informational (unknown: Warning, so a
                   minimum-priority filter never hides it)
    rule           alert: its rule id; incident: "gpusentry incident" (one name to route
                   incidents by; its rules are in output_fields); sensor gap: "gpusentry
                   internal: sensor gap", Critical, as Falco reports its own blindness
                   ("Falco internal: syscall event drop", Critical, in Falco's dropped-events
                   docs); event or fact (only with `kinds`): "gpusentry event: exec",
                   "gpusentry fact: tunnel", Informational
    time           RFC 3339 in UTC with nanoseconds, as Falco writes it: 2024-05-01T10:20:05.408091526Z
                   (alert: its time; incident: last seen; gap: its end)
    output_fields  flat: dotted names to a string, number or boolean (empty values left out);
                   Falco's names where Falco has the field (falco.org/docs/reference/rules/
                   supported-fields): proc.pid, proc.ppid, proc.exepath, proc.name, proc.exe
                   (argv[0]), proc.args, proc.cmdline (name and args), proc.pname,
                   proc.apid[N] and proc.aname[N] (N=1 the parent), user.uid, user.loginuid
                   (-1: none), fd.sip/fd.sport (the server end of a connection),
                   fd.cip/fd.cport (the client end); gpusentry.* for the rest, and
                   proc.exec_id. Lists of identifiers are joined by ", "; other lists
                   are numbered (name[0], name[1], ...)
    source         "gpusentry"
    tags           the alert's tags; an incident's: the union of its alerts' (those it keeps)
    hostname       the record's host
"""

from __future__ import annotations

import hashlib
import http.client
import json
import math
import os
import re
import ssl
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import SplitResult, parse_qsl, urlsplit

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from sensor.api.v1 import gpusentry_pb2 as pb
from sensor.rules import source
from sensor.sinks import base

TYPE = "webhook"
KEYS = ("url", "headers", "secret_headers", "timeout", "ca", "cert", "key", "insecure_skip_verify")
TLS_KEYS = ("ca", "cert", "key", "insecure_skip_verify")
DEFAULT_TIMEOUT_S = 5.0
MAX_TIMEOUT_S = 300.0
# Set by this sink (or by http.client) for every request; a configured value would contradict it.
RESERVED_HEADERS = frozenset({"host", "content-type", "content-length", "transfer-encoding", "connection"})
HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # RFC 9110 token
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
USER_AGENT = "gpusentry"

# What an answer may say in an error: enough to see why, never a whole page.
MAX_ANSWER = 64 * 1024  # read at most this much of a body; more and the connection is dropped
SNIPPET = 200
SECRET_PART = 8  # words of a secret at least this long are redacted on their own (a token without "Bearer")
RETRY_STATUSES = frozenset({408, 425, 429})  # 4xx that say "later", not "never"

SOURCE = "gpusentry"
PRIORITIES = ("Emergency", "Alert", "Critical", "Error", "Warning", "Notice", "Informational", "Debug")
SEVERITY_PRIORITY: dict[int, str] = {pb.SEVERITY_CRITICAL: "Critical", pb.SEVERITY_HIGH: "Error",
                                      pb.SEVERITY_MEDIUM: "Warning", pb.SEVERITY_LOW: "Notice",
                                      pb.SEVERITY_INFO: "Informational"}
UNKNOWN_PRIORITY = "Warning"
GAP_PRIORITY = "Critical"
OBSERVATION_PRIORITY = "Informational"
INCIDENT_RULE = "gpusentry incident"
GAP_RULE = "gpusentry internal: sensor gap"
NO_LOGINUID = 0xFFFFFFFF  # the kernel's "no login recorded"; Falco shows it as -1
MAX_ANCESTORS = 8
MAX_STEPS = 16
MAX_DETAILS = 1000
MAX_SHOWN_CMDLINE = 200
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

Scalar = str | int | float | bool
Fields = dict[str, Scalar]


# -- options --------------------------------------------------------------------------------------


@dataclass(frozen=True, repr=False)
class Options:
    url: str  # may carry a query the endpoint needs (a token): shown only as shown_url()
    headers: tuple[tuple[str, str], ...] = ()
    secret_headers: tuple[tuple[str, base.Secret], ...] = ()
    timeout_s: float = DEFAULT_TIMEOUT_S
    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None  # its path may be shown; its content never leaves the TLS context
    insecure_skip_verify: bool = False

    def __repr__(self) -> str:
        return (f"webhook.Options(url={shown_url(self.url)!r}, headers={dict(self.headers)!r}, "
                f"secret_headers={dict(self.secret_headers)!r}, timeout_s={self.timeout_s!r}, ca={self.ca!r}, "
                f"cert={self.cert!r}, key={self.key!r}, insecure_skip_verify={self.insecure_skip_verify!r})")


def options(raw: source.Located, file: Path) -> Options:
    """A webhook sink's entry; relative paths are relative to the configuration file's folder."""
    base.reject_unknown(raw, KEYS, "a webhook sink")
    folder = file.parent
    made = Options(url=_url(raw), headers=_headers(raw), secret_headers=_secret_headers(raw, folder),
                   timeout_s=_timeout(raw), ca=_file(raw, "ca", folder), cert=_file(raw, "cert", folder),
                   key=_file(raw, "key", folder), insecure_skip_verify=_flag(raw, "insecure_skip_verify"))
    _check_together(raw, made)
    _check_tls_files(raw, made)
    return made


def _url(raw: source.Located) -> str:
    # Messages never repeat the value: its query may hold a token.
    if "url" not in raw:
        raise base.Invalid(raw.line, "a webhook sink needs `url`: the http:// or https:// address to POST to")
    line, value = raw.line_of("url"), raw["url"]
    if not isinstance(value, str) or any(c.isspace() or not c.isprintable() for c in value):
        raise base.Invalid(line, "`url` is an http:// or https:// address (no spaces)")
    try:
        parts = urlsplit(value)
        port = parts.port  # parsed here, so that a bad port is a configuration error, not a send error
    except ValueError as exc:
        raise base.Invalid(line, "`url` is an http:// or https:// address with a port from 1 to 65535") from exc
    if port == 0:
        raise base.Invalid(line, "`url` is an http:// or https:// address with a port from 1 to 65535")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise base.Invalid(line, "`url` is an http:// or https:// address with a host")
    if "@" in parts.netloc:
        raise base.Invalid(line, "`url` carries no user or password: send credentials in `secret_headers` "
                                 "(e.g. Authorization: {file: PATH})")
    return value


def _mapping(raw: source.Located, key: str) -> Mapping[Any, Any]:
    value = raw.get(key, {})
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise base.Invalid(raw.line_of(key), f"`{key}` is a mapping of header names to values")
    return value


def _line(mapping: Mapping[Any, Any], key: Any, fallback: int) -> int:
    return mapping.line_of(key) if isinstance(mapping, source.Located) else fallback


def _header_name(name: Any, where: str, line: int) -> str:
    if not isinstance(name, str) or not HEADER_NAME.fullmatch(name):
        raise base.Invalid(line, f"`{where}`: a header name is letters, digits and !#$%&'*+.^_`|~- ")
    if name.lower() in RESERVED_HEADERS:
        raise base.Invalid(line, f"`{where}`: {name} is set by the sink itself; it cannot be configured")
    return name


def _headers(raw: source.Located) -> tuple[tuple[str, str], ...]:
    given = _mapping(raw, "headers")
    out = []
    for name, value in given.items():
        line = _line(given, name, raw.line_of("headers"))
        _header_name(name, "headers", line)
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise base.Invalid(line, f"`headers.{name}` is text")
        text = str(value)
        if any((ord(c) < 32 and c != "\t") or ord(c) == 127 for c in text):
            raise base.Invalid(line, f"`headers.{name}` is text on one line")
        out.append((name, text))
    return tuple(out)


def _secret_headers(raw: source.Located, folder: Path) -> tuple[tuple[str, base.Secret], ...]:
    given = _mapping(raw, "secret_headers")
    return tuple((_header_name(name, "secret_headers", _line(given, name, raw.line_of("secret_headers"))),
                  _secret(name, where, _line(given, name, raw.line_of("secret_headers")), folder))
                 for name, where in given.items())


def _secret(name: str, where: Any, line: int, folder: Path) -> base.Secret:
    # Never repeats `where`: a value written here by mistake is the secret itself.
    if not isinstance(where, dict) or len(where) != 1 or next(iter(where)) not in ("file", "env"):
        raise base.Invalid(line, f"`secret_headers.{name}` is {{file: PATH}} or {{env: VARIABLE}}: where the "
                                 "value is kept, never the value itself")
    if "file" in where:
        if not isinstance(where["file"], str) or not where["file"]:
            raise base.Invalid(line, f"`secret_headers.{name}`: `file` is a path")
        path = folder / where["file"]
        if not path.is_file():
            raise base.Invalid(line, f"`secret_headers.{name}`: there is no file {path}")
        return base.Secret(file=path)
    variable = where["env"]
    if not isinstance(variable, str) or not ENV_NAME.fullmatch(variable):
        raise base.Invalid(line, f"`secret_headers.{name}`: `env` names an environment variable")
    if variable not in os.environ:  # the agent's environment is fixed for its life: unset now, unset when sending
        raise base.Invalid(line, f"`secret_headers.{name}`: the environment variable {variable} is not set")
    return base.Secret(env=variable)


def _timeout(raw: source.Located) -> float:
    value = raw.get("timeout", DEFAULT_TIMEOUT_S)
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= MAX_TIMEOUT_S:
        raise base.Invalid(raw.line_of("timeout"), f"`timeout` is seconds, above 0 and at most {MAX_TIMEOUT_S:g}")
    return float(value)


def _file(raw: source.Located, key: str, folder: Path) -> Path | None:
    if key not in raw:
        return None
    value = raw[key]
    if not isinstance(value, str) or not value:
        raise base.Invalid(raw.line_of(key), f"`{key}` is a path")
    path = folder / value  # an absolute value stays as it is
    if not path.is_file():
        raise base.Invalid(raw.line_of(key), f"`{key}`: there is no file {path}")
    return path


def _flag(raw: source.Located, key: str) -> bool:
    value = raw.get(key, False)
    if not isinstance(value, bool):
        raise base.Invalid(raw.line_of(key), f"`{key}` is true or false")
    return value


def _check_together(raw: source.Located, made: Options) -> None:
    if (made.cert is None) != (made.key is None):
        raise base.Invalid(raw.line_of("cert" if "cert" in raw else "key"),
                           "`cert` and `key` go together: the client certificate and its private key")
    if urlsplit(made.url).scheme == "http":
        for key in TLS_KEYS:
            if key in raw:
                raise base.Invalid(raw.line_of(key), f"`{key}` is for an https:// url; this one is http://")
    if made.insecure_skip_verify and made.ca is not None:
        raise base.Invalid(raw.line_of("insecure_skip_verify"),
                           "`insecure_skip_verify: true` accepts any certificate, so `ca` would do nothing: keep one")
    seen: set[str] = set()
    for name in [n for n, _ in made.headers] + [n for n, _ in made.secret_headers]:
        if name.lower() in seen:
            raise base.Invalid(raw.line_of("secret_headers"), f"the header {name} is given twice")
        seen.add(name.lower())


def _check_tls_files(raw: source.Located, made: Options) -> None:
    """Load the TLS files now, so that a wrong one is an error with its line before anything starts."""
    if urlsplit(made.url).scheme != "https":
        return
    try:
        context = _verifying_context(made)
    except (OSError, ssl.SSLError) as exc:
        raise base.Invalid(raw.line_of("ca"), f"`ca`: {made.ca} is not a PEM certificate file ({_reason(exc)})") \
            from exc
    try:
        _add_client_certificate(context, made)
    except (OSError, ssl.SSLError) as exc:
        raise base.Invalid(raw.line_of("cert"), f"`cert`/`key`: {made.cert} and {made.key} are not a PEM certificate "
                                                f"and its unencrypted private key ({_reason(exc)})") from exc


# -- TLS ------------------------------------------------------------------------------------------


def _verifying_context(made: Options) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(made.ca) if made.ca is not None else None)
    if made.insecure_skip_verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def _no_password() -> bytes:
    # Without a callback, OpenSSL would prompt on the agent's terminal for an encrypted key's password.
    return b""


def _add_client_certificate(context: ssl.SSLContext, made: Options) -> None:
    if made.cert is not None:
        context.load_cert_chain(made.cert, made.key, password=_no_password)


def tls_context(made: Options) -> ssl.SSLContext:
    context = _verifying_context(made)
    _add_client_certificate(context, made)
    return context


# -- the payload ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Shape:
    """What one kind of record says in Falco's terms, before it is laid out."""

    rule: str
    priority: str
    time: Timestamp
    title: str
    details: str
    fields: Fields
    tags: list[str]


def falco_event(record: pb.Record) -> dict[str, Any]:
    """One record as Falco's JSON output (see the module's docstring for each key)."""
    kind = record.WhichOneof("item") or ""
    build = SHAPES.get(kind)
    if build is None:
        raise base.SinkError(f"a webhook sink does not send {kind or 'empty'} records", permanent=True)
    shape = build(getattr(record, kind))
    when = falco_time(shape.time)
    return {"output": f"{when}: {shape.priority} {printable(shape.title)}: {_bounded(printable(shape.details))}",
            "priority": shape.priority, "rule": shape.rule, "time": when,
            "output_fields": {k: v for k, v in shape.fields.items() if v != ""}, "source": SOURCE,
            "tags": shape.tags, "hostname": record.host.hostname}


def falco_time(stamp: Timestamp) -> str:
    """As Falco writes `time`: RFC 3339, UTC, nine fractional digits, "Z"."""
    when = (EPOCH + timedelta(seconds=stamp.seconds)).replace(tzinfo=None)
    return f"{when.isoformat(timespec='seconds')}.{stamp.nanos:09d}Z"


def printable(text: str) -> str:
    """Text a monitored process may control (argv, paths), on one line: control characters escaped,
    so that no line of a receiver's log can be forged."""
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in " ".join(text.split()))


def _bounded(text: str, limit: int = MAX_DETAILS) -> str:
    return text if len(text) <= limit else text[:limit] + "…"


def _priority(severity: int) -> str:
    return SEVERITY_PRIORITY.get(severity, UNKNOWN_PRIORITY)


def _word(enum: Any, value: int, prefix: str) -> str:
    try:
        return str(enum.Name(value)).removeprefix(prefix).lower()
    except ValueError:
        return str(value)


def _alert(alert: pb.Alert) -> Shape:
    fields: Fields = {"gpusentry.alert.id": alert.id, "gpusentry.alert.cursor": alert.cursor,
                      "gpusentry.incident.id": alert.incident_id,
                      "gpusentry.severity": _word(pb.Severity, alert.severity, "SEVERITY_"),
                      "gpusentry.scope": alert.scope, "gpusentry.scope_key": alert.scope_key}
    if alert.processes:
        fields |= _process_fields(alert.processes[0])
    fields |= _step_fields(alert.steps)
    fields |= next((f for f in (_endpoint_fields(s.detail) for s in alert.steps) if f), {})
    what = " then ".join(s.summary for s in alert.steps if s.summary) or alert.description
    return Shape(rule=alert.rule_id or "gpusentry alert", priority=_priority(alert.severity), time=alert.time,
                 title=alert.title or alert.rule_id, details=f"{what} ({_said(fields)})", fields=fields,
                 tags=list(alert.tags))


def _incident(incident: pb.Incident) -> Shape:
    rules = ", ".join(incident.rule_ids)
    fields: Fields = {"gpusentry.incident.id": incident.id, "gpusentry.incident.cursor": incident.cursor,
                      "gpusentry.severity": _word(pb.Severity, incident.severity, "SEVERITY_"),
                      "gpusentry.incident.alerts": incident.alerts_total, "gpusentry.incident.rule_ids": rules,
                      "gpusentry.incident.scope_keys": ", ".join(incident.scope_keys),
                      "gpusentry.incident.first_seen": falco_time(incident.first_seen),
                      "gpusentry.incident.last_seen": falco_time(incident.last_seen),
                      "gpusentry.incident.tunnels": len(incident.tunnels),
                      "gpusentry.incident.gpu_compute": len(incident.gpu_compute),
                      "gpusentry.incident.connections": len(incident.connections)}
    if incident.processes:
        fields |= _process_fields(incident.processes[0])
    fields |= next((f for f in map(_endpoint_fields, incident.connections) if f), {})
    tags = list(dict.fromkeys(tag for alert in incident.alerts for tag in alert.tags))
    details = f"{incident.summary} (incident={incident.id} alerts={incident.alerts_total} rules={rules})"
    return Shape(rule=INCIDENT_RULE, priority=_priority(incident.severity), time=incident.last_seen,
                 title="Incident", details=details, fields=fields, tags=tags)


def _sensor_gap(gap: pb.SensorGap) -> Shape:
    start, end = falco_time(gap.start), falco_time(gap.end)
    seconds = max(0, gap.end.ToNanoseconds() - gap.start.ToNanoseconds()) / 1e9
    fields: Fields = {"gpusentry.gap.cursor": gap.cursor, "gpusentry.gap.start": start, "gpusentry.gap.end": end,
                      "gpusentry.gap.seconds": seconds, "gpusentry.gap.cause": gap.cause}
    details = f"{gap.cause} (nothing was watched from {start} to {end}: no alert there means nothing)"
    return Shape(rule=GAP_RULE, priority=GAP_PRIORITY, time=gap.end, title="Sensor gap", details=details,
                 fields=fields, tags=[])


def _event(event: pb.Event) -> Shape:
    kind = _word(pb.EventKind, event.kind, "EVENT_KIND_")
    fields: Fields = {"gpusentry.event.kind": kind, "gpusentry.event.ts": event.ts}
    fields |= _ref_fields(event.process) | _detail_fields(event, "gpusentry.event")
    return Shape(rule=f"gpusentry event: {kind}", priority=OBSERVATION_PRIORITY, time=event.time,
                 title=f"{kind} event", details=_said(fields), fields=fields, tags=[])


def _fact(fact: pb.Fact) -> Shape:
    kind = _word(pb.FactKind, fact.kind, "FACT_KIND_")
    fields: Fields = {"gpusentry.fact.kind": kind, "gpusentry.fact.ts": fact.ts,
                      "gpusentry.fact.summary": fact.summary}
    fields |= _ref_fields(fact.process) | _detail_fields(fact, "gpusentry.fact")
    return Shape(rule=f"gpusentry fact: {kind}", priority=OBSERVATION_PRIORITY, time=fact.time,
                 title=f"{kind} fact", details=f"{fact.summary} ({_said(fields)})", fields=fields, tags=[])


SHAPES: dict[str, Callable[[Any], Shape]] = {"alert": _alert, "incident": _incident, "sensor_gap": _sensor_gap,
                                             "event": _event, "fact": _fact}


def _said(fields: Fields) -> str:
    """The few fields a person reads first, as Falco rules' outputs put them: name=value."""
    shown = (("pid", "proc.pid"), ("exe", "proc.exepath"), ("cmdline", "proc.cmdline"),
             ("connection", "fd.sip"), ("scope", "gpusentry.scope_key"), ("incident", "gpusentry.incident.id"))
    words = [f"{word}={_bounded(str(fields[key]), MAX_SHOWN_CMDLINE)}" for word, key in shown
             if fields.get(key, "") != ""]
    if "fd.sport" in fields and "fd.sip" in fields:
        words = [f"{w}:{fields['fd.sport']}" if w.startswith("connection=") else w for w in words]
    return " ".join(words)


def _process_fields(entry: pb.AlertProcess) -> Fields:
    proc = entry.process
    name, args = PurePosixPath(proc.exe).name, " ".join(proc.argv[1:])
    fields: Fields = {"proc.pid": proc.pid, "proc.ppid": proc.ppid, "proc.exepath": proc.exe, "proc.name": name,
                      "proc.exe": proc.argv[0] if proc.argv else proc.exe, "proc.args": args,
                      "proc.cmdline": f"{name} {args}".strip(), "proc.exec_id": proc.exec_id,
                      "user.uid": proc.uid, "user.loginuid": -1 if proc.loginuid == NO_LOGINUID else proc.loginuid,
                      "gpusentry.proc.cgroup_id": proc.cgroup_id,
                      "gpusentry.proc.tunnel_scopes": ", ".join(proc.tunnel_scopes)}
    fields.update(_container_fields(proc))
    if entry.ancestors:
        fields["proc.pname"] = PurePosixPath(entry.ancestors[0].exe).name
    for n, ancestor in enumerate(entry.ancestors[:MAX_ANCESTORS], start=1):
        fields[f"proc.apid[{n}]"] = ancestor.pid
        fields[f"proc.aname[{n}]"] = PurePosixPath(ancestor.exe).name
    return fields


def _container_fields(proc: pb.Process) -> Fields:
    """Falco's container and k8s fields (a Falco consumer's filters work unchanged): "host" as
    the container id on the host, as Falco says it."""
    fields: Fields = {"container.id": proc.container.id[:12] if proc.HasField("container") else "host"}
    if proc.HasField("container"):
        fields.update({"container.full_id": proc.container.id, "container.name": proc.container.name,
                       "container.image": proc.container.image, "container.type": proc.container.runtime})
    if proc.HasField("pod"):
        fields.update({"k8s.pod.uid": proc.pod.uid, "k8s.pod.name": proc.pod.name, "k8s.ns.name": proc.pod.namespace,
                       "gpusentry.k8s.container.name": proc.pod.container,
                       "gpusentry.k8s.pod.gpus": ", ".join(proc.pod.gpus)})
    return fields


def _ref_fields(ref: pb.ProcessRef) -> Fields:
    return {"proc.pid": ref.pid, "proc.exepath": ref.exe, "proc.name": PurePosixPath(ref.exe).name,
            "proc.exec_id": ref.exec_id}


def _step_fields(steps: Sequence[pb.AlertStep]) -> Fields:
    fields: Fields = {"gpusentry.steps": len(steps)}
    for n, step in enumerate(steps[:MAX_STEPS], start=1):
        fields |= {f"gpusentry.step[{n}].fact": step.fact, f"gpusentry.step[{n}].time": falco_time(step.time),
                   f"gpusentry.step[{n}].summary": step.summary, f"gpusentry.step[{n}].exec_id": step.exec_id}
    return fields


def _endpoint_fields(holder: Message) -> Fields:
    """The ends of a connection an event or fact describes, by Falco's names: the server is the
    far end of a connect (fd.sip), the peer of an accept is the client (fd.cip)."""
    kind = holder.WhichOneof("detail")
    detail: Any = getattr(holder, kind) if kind else None
    if kind in ("connect", "egress", "miner") and detail.address:
        return {"fd.sip": detail.address, "fd.sport": detail.port}
    if kind == "accept" and detail.address:
        return {"fd.cip": detail.address, "fd.cport": detail.port}
    if kind == "tcp_established":
        return {"fd.cip": detail.source_address, "fd.cport": detail.source_port,
                "fd.sip": detail.destination_address, "fd.sport": detail.destination_port}
    return {}


def _detail_fields(holder: Message, prefix: str) -> Fields:
    kind = holder.WhichOneof("detail")
    if not kind:
        return {}
    return flat(getattr(holder, kind), f"{prefix}.{kind}") | _endpoint_fields(holder)


def flat(message: Message, prefix: str) -> Fields:
    """A message as flat fields: `prefix.field`, lists numbered, maps by key, deprecated fields left out."""
    out: Fields = {}
    for field in message.DESCRIPTOR.fields:
        if not field.GetOptions().deprecated:
            out |= _flat_field(field, getattr(message, field.name), f"{prefix}.{field.name}")
    return out


def _flat_field(field: FieldDescriptor, value: Any, key: str) -> Fields:
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
        return {f"{key}.{name}": _scalar(item) for name, item in value.items()}
    if field.is_repeated:
        out: Fields = {}
        for n, item in enumerate(value):
            out |= _flat_value(field, item, f"{key}[{n}]")
        return out
    return _flat_value(field, value, key)


def _flat_value(field: FieldDescriptor, value: Any, key: str) -> Fields:
    if isinstance(value, Timestamp):
        return {key: falco_time(value)}
    if isinstance(value, Message):
        return flat(value, key)
    if field.enum_type is not None:
        known = field.enum_type.values_by_number.get(value)
        return {key: known.name if known is not None else value}
    return {key: _scalar(value)}


def _scalar(value: Any) -> Scalar:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN or infinity
    return value if isinstance(value, str | int | float | bool) else str(value)


def _body(record: pb.Record) -> bytes:
    try:
        return json.dumps(falco_event(record), ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()
    except (ValueError, OverflowError, TypeError) as exc:  # a timestamp out of range: this record, not the sink
        raise base.SinkError(f"a {record.type} record could not be laid out: {exc}", permanent=True) from exc


# -- delivery -------------------------------------------------------------------------------------


def shown_url(url: str) -> str:
    """The URL for status and messages: scheme, host, port and path; no user, and a query (which
    may hold a token) only as "?…"."""
    parts: SplitResult = urlsplit(url)
    host = parts.hostname or ""
    host = f"[{host}]" if ":" in host else host
    try:
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        port = ""
    return f"{parts.scheme}://{host}{port}{parts.path or '/'}{'?…' if parts.query else ''}"


class Refused(base.SinkError):
    """Records the endpoint refused for good (HTTP 4xx) while the rest of the batch was delivered:
    `refused` says how many, so that only those are counted failed (the rest, sent)."""

    def __init__(self, reasons: Sequence[str], of: int) -> None:
        count = min(len(reasons), of)
        message = reasons[0] if of == 1 else f"{count} of {of} records refused for good: {reasons[0]}"
        super().__init__(message, permanent=True, refused=count)


# A kept-alive connection the server closed while idle fails like this on its next request.
STALE = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError)


class Delivery:
    """POSTs each record on one kept-alive connection (a new one after any failure)."""

    def __init__(self, options: Options, host: pb.Host) -> None:
        self.options = options
        self.host = host
        unverified = " (server certificate NOT verified: insecure_skip_verify)" if options.insecure_skip_verify else ""
        self.target = shown_url(options.url) + unverified
        parts = urlsplit(options.url)
        self._https = parts.scheme == "https"
        self._host = parts.hostname or ""
        self._port = parts.port
        self._path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        # the query may hold a token: an answer that echoes it (an error page) must not show it
        self._hidden = [parts.query] if parts.query else []
        self._hidden += [v for _, v in parse_qsl(parts.query) if len(v) >= SECRET_PART]
        self._connection: http.client.HTTPConnection | None = None
        self._used = False  # the connection has carried a whole exchange: a failure may mean it went stale
        self._tls: ssl.SSLContext | None = None
        self._done: set[bytes] = set()  # of the batch being retried: delivered or refused, not to be sent again
        self._refusals: list[str] = []

    def send(self, records: Sequence[pb.Record]) -> None:
        headers, secrets = self._headers()
        for record in records:
            identity = hashlib.sha256(record.SerializeToString(deterministic=True)).digest()
            if identity in self._done:
                continue
            try:
                self._post(_body(record), headers, secrets)
            except base.SinkError as exc:
                if not exc.permanent:
                    raise  # the worker retries the batch; what went already is in _done
                self._refusals.append(str(exc))
            self._done.add(identity)
        refusals, self._refusals, self._done = self._refusals, [], set()
        if refusals:
            raise Refused(refusals, len(records))

    def reopen(self) -> None:
        """SIGHUP: a new connection, and the TLS files read again (a rotated certificate)."""
        self._drop()
        self._tls = None

    def close(self) -> None:
        self._drop()

    # -- one request ----------------------------------------------------------------------------

    def _headers(self) -> tuple[dict[str, str], list[str]]:
        headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT}
        for name, value in self.options.headers:
            headers = {k: v for k, v in headers.items() if k.lower() != name.lower()} | {name: value}
        values = [_secret_value(name, secret) for name, secret in self.options.secret_headers]
        headers |= {name: value for (name, _), value in zip(self.options.secret_headers, values, strict=True)}
        return headers, values + self._hidden

    def _post(self, body: bytes, headers: dict[str, str], secrets: list[str]) -> None:
        status, answer = self._exchange(body, headers, secrets)
        if not 200 <= status < 300:
            raise self._refusal(status, answer, secrets)

    def _exchange(self, body: bytes, headers: dict[str, str], secrets: list[str]) -> tuple[int, bytes]:
        try:
            reused = self._connection is not None and self._used
            try:
                return self._request(body, headers)
            except STALE:
                if not reused:
                    raise
                self._drop()  # once more on a new connection, as urllib3 does for a dropped keep-alive
                return self._request(body, headers)
        except TimeoutError as exc:
            self._drop()
            raise base.SinkError(f"no answer from {self.target} within {self.options.timeout_s:g}s") from exc
        except (OSError, http.client.HTTPException, ValueError) as exc:  # ValueError: http.client's own checks
            self._drop()
            raise base.SinkError(redact(f"cannot POST to {self.target}: {_reason(exc)}{self._hint(exc)}",
                                        secrets)) from exc

    def _hint(self, exc: BaseException) -> str:
        # A server that wants a client certificate cuts the session, often with no alert the client reads.
        refused = isinstance(exc, ssl.SSLError) and not isinstance(exc, ssl.SSLCertVerificationError)
        return (" (a server that requires a client certificate ends the session so: set `cert` and `key`)"
                if refused and self.options.cert is None else "")

    def _request(self, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
        connection = self._connect()
        connection.request("POST", self._path, body=body, headers=headers)
        response = connection.getresponse()
        answer = response.read(MAX_ANSWER + 1)
        if response.will_close or len(answer) > MAX_ANSWER:
            self._drop()  # closed by the server, or a body too long to read to its end
        else:
            self._used = True
        return response.status, answer[:MAX_ANSWER]

    def _connect(self) -> http.client.HTTPConnection:
        if self._connection is None:
            timeout = self.options.timeout_s
            self._connection = (http.client.HTTPSConnection(self._host, self._port, timeout=timeout,
                                                            context=self._tls_context())
                                if self._https else http.client.HTTPConnection(self._host, self._port, timeout=timeout))
            self._used = False
        return self._connection

    def _tls_context(self) -> ssl.SSLContext:
        if self._tls is None:
            try:
                self._tls = tls_context(self.options)
            except (OSError, ssl.SSLError) as exc:
                files = ", ".join(str(p) for p in (self.options.ca, self.options.cert, self.options.key) if p)
                raise base.SinkError(f"the TLS files ({files or 'the system store'}) could not be loaded: "
                                     f"{_reason(exc)}") from exc
        return self._tls

    def _drop(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def _refusal(self, status: int, answer: bytes, secrets: list[str]) -> base.SinkError:
        snippet = _snippet(answer, secrets)
        said = f"HTTP {status} from {self.target}" + (f": {snippet}" if snippet else "")
        if status >= 500 or status in RETRY_STATUSES:
            return base.SinkError(said)
        if status >= 400:
            return base.SinkError(said, permanent=True)
        return base.SinkError(f"{said} (not a 2xx, and redirects are not followed: set `url` to the final address)")


def _secret_value(name: str, secret: base.Secret) -> str:
    # Checked here, not by http.client: its error would quote the value.
    try:
        value = secret.read()
    except OSError as exc:
        raise base.SinkError(f"the secret header {name}: {secret!r} could not be read ({exc.strerror})") from exc
    if not value or any(c in value for c in "\r\n\0"):
        raise base.SinkError(f"the secret header {name}: {secret!r} is empty or holds a line break")
    try:
        value.encode("latin-1")
    except UnicodeEncodeError as exc:
        raise base.SinkError(f"the secret header {name}: {secret!r} is not Latin-1 text") from exc
    return value


def redact(text: str, secrets: Sequence[str]) -> str:
    """`text` with each secret, and each long word of one (a token without its "Bearer"), replaced."""
    parts = {s for secret in secrets for s in (secret, *secret.split()) if s == secret or len(s) >= SECRET_PART}
    for part in sorted(parts, key=len, reverse=True):
        text = text.replace(part, "<secret>")
    return text


def _snippet(answer: bytes, secrets: Sequence[str]) -> str:
    text = printable(redact(answer.decode("utf-8", "replace"), secrets))  # redacted whole, then cut
    return _bounded(text, SNIPPET)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"the server's certificate was not accepted: {exc.verify_message}"
    if isinstance(exc, ssl.SSLEOFError):
        return "TLS: the server ended the session"
    if isinstance(exc, ssl.SSLError):
        return f"TLS: {exc.reason or type(exc).__name__}"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return printable(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)
