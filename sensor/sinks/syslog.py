"""The syslog sink: each record as one RFC 5424 message, over UDP (RFC 5426), TCP (RFC 6587
octet counting), TLS (RFC 5425) or a local UNIX socket.

    - type: syslog
      address: tcp://logs.example.com:514   # udp://, tcp://, tls:// HOST[:PORT], or unix:///dev/log
      facility: local0                      # kern, user, ..., local0 .. local7
      app_name: gpusentry
      max_message: 65536                    # bytes of a whole message; udp:// and unix://: 8096
      enterprise_id: "32473"                # the SD-ID is gpusentry@ENTERPRISE_ID
      ca: /etc/gpusentry/syslog-ca.pem      # tls:// only: the receiver's CA (default: the system's)
      cert: /etc/gpusentry/syslog.pem       # tls:// only, with key: a client certificate (mTLS)
      key: /etc/gpusentry/syslog.key        # an unencrypted PEM key, readable by the agent only

A message:

    <PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID [SD-ID PARAMS] BOM JSON

PRI is facility * 8 + a severity from the record (SEVERITY below); TIMESTAMP the record's own
time (an alert's, an incident version's last_seen, a sensor gap's end) to the microsecond, in
UTC; HOSTNAME the record's host; PROCID the agent's pid; MSGID the record's type (alert,
incident, sensor_gap, event, fact). The structured data carries what a receiver filters on
(ids, rule, severity, scope) so that it need not parse the JSON; the MSG is the whole record as
`run --json` prints it, so one parser serves the file sink, the API clients and syslog. A
message longer than max_message has the end of its JSON cut, with a marker saying how long the
record was: the record is in the journal, whole, under the id in the structured data.

Why 8096 bytes for datagrams: it is rsyslog's default maxMessageSize ("8k" in its documentation,
8096 bytes in its code), beyond which it cuts a message without saying so; and a UDP datagram
above the path MTU is fragmented, and lost whole if any fragment is lost. rsyslog cuts TCP
messages at 8096 bytes too unless `global(maxMessageSize="64k")` is set; syslog-ng's default
(log-msg-size) is 64 KiB, the stream default here.

A local socket (unix://) must be one that parses RFC 5424: rsyslog's imuxsock, which serves
/dev/log, reads the legacy local format unless its input has useSpecialParser="off" and
parseHostname="on" (journald's /dev/log expects the legacy format too); otherwise send to the
local daemon over udp://127.0.0.1:514 or tcp://, whose inputs parse both. A stream socket gets
each message followed by a NUL, as glibc's syslog(3) writes it.

Delivery guarantees: UDP has none. Over TCP and TLS a message is sent or the batch is retried,
but syslog has no acknowledgement, so what the kernel accepted just before the receiver died
is lost (RELP exists for that); the sink reconnects before writing to a connection that the
receiver has closed, which is the common case (a receiver restart).
"""

from __future__ import annotations

import datetime
import errno
import os
import re
import select
import socket
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from sensor.api.v1 import gpusentry_pb2 as pb
from sensor.outward import json_line
from sensor.rules import source
from sensor.sinks.base import Invalid, SinkError, reject_unknown, tls_files

TYPE = "syslog"
KEYS = ("address", "facility", "app_name", "max_message", "enterprise_id", "ca", "cert", "key")
TRANSPORTS = {"udp": 514, "tcp": 514, "tls": 6514, "unix": 0}  # and their default ports (RFC 5426, 5425)
DATAGRAM = ("udp", "unix")
# RFC 5424 §6.2.1's facility numbers, by the names rsyslog and syslog-ng give them
FACILITIES = {name: code for code, name in enumerate(
    ("kern", "user", "mail", "daemon", "auth", "syslog", "lpr", "news", "uucp", "cron", "authpriv", "ftp", "ntp",
     "audit", "alert", "clock", "local0", "local1", "local2", "local3", "local4", "local5", "local6", "local7"))}
# RFC 5424 §6.2.1's severities: 2 critical, 3 error, 4 warning, 5 notice, 6 informational
SEVERITY = {pb.SEVERITY_CRITICAL: 2, pb.SEVERITY_HIGH: 3, pb.SEVERITY_MEDIUM: 4, pb.SEVERITY_LOW: 5,
            pb.SEVERITY_INFO: 6}
INFORMATIONAL = 6  # events, facts, and an alert without a severity
# A sensor gap is blind time, worth a look, but every agent restart or upgrade records one:
# "warning", not "alert" (1, act now), which would page on every upgrade and rank a routine
# restart above a critical alert.
SENSOR_GAP_SEVERITY = 4
DEFAULT_FACILITY = "local0"
DEFAULT_APP_NAME = "gpusentry"
# 32473 is the Private Enterprise Number that RFC 5612 reserves for documentation examples;
# an organisation with its own PEN can put it in `enterprise_id`.
DEFAULT_ENTERPRISE_ID = "32473"
DEFAULT_MAX_MESSAGE = 64 * 1024
DEFAULT_MAX_DATAGRAM = 8096
# RFC 5424 §6.1: receivers SHOULD accept 2048 octets; a header and structured data at their
# limits (below) fit in it. 65507: the largest UDP payload over IPv4.
MIN_MESSAGE, MAX_DATAGRAM, MAX_STREAM = 2048, 65507, 1024 * 1024
MAX_PARAM = 128  # bytes of one structured-data value before escaping: a UUID, a rule id, a scope key fit
BOM = b"\xef\xbb\xbf"  # RFC 5424 §6.4: MSG is UTF-8, and says so
NILVALUE = "-"
ENTERPRISE_ID = re.compile(r"\d+(\.\d+)*")
APP_NAME = re.compile(r"[!-~]{1,48}")  # PRINTUSASCII
TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Options:
    address: str  # as written: the sink's target
    transport: str  # udp, tcp, tls, unix
    host: str = ""
    port: int = 0
    socket_path: str = ""  # unix://
    facility: int = FACILITIES[DEFAULT_FACILITY]
    app_name: str = DEFAULT_APP_NAME
    max_message: int = DEFAULT_MAX_MESSAGE
    enterprise_id: str = DEFAULT_ENTERPRISE_ID
    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None


# -- the configuration ----------------------------------------------------------------------------


def options(raw: source.Located, file: Path) -> Options:
    """The sink's entry in the configuration file `file`; Invalid names the line of a bad value."""
    reject_unknown(raw, KEYS, "a syslog sink")
    address, transport, host, port, socket_path = _address(raw)
    return Options(address=address, transport=transport, host=host, port=port, socket_path=socket_path,
                   facility=_facility(raw), app_name=_app_name(raw), max_message=_max_message(raw, transport),
                   enterprise_id=_enterprise_id(raw), **_tls_files(raw, file, transport))


def _address(raw: source.Located) -> tuple[str, str, str, int, str]:
    value = raw.get("address")
    line = raw.line_of("address")
    usage = "`address` is udp://HOST[:PORT], tcp://HOST[:PORT], tls://HOST[:PORT] or unix:///PATH (e.g. unix:///dev/log)"
    if not isinstance(value, str):
        raise Invalid(line, usage)
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError as exc:
        raise Invalid(line, f"{usage}: {exc}") from exc
    if parts.scheme not in TRANSPORTS or parts.query or parts.fragment or parts.username or parts.password:
        raise Invalid(line, usage)
    if parts.scheme == "unix":
        if parts.netloc or not parts.path.startswith("/"):
            raise Invalid(line, f"{usage}: a UNIX socket's path is absolute, after three slashes")
        return value, "unix", "", 0, parts.path
    if not parts.hostname or parts.path not in ("", "/"):
        raise Invalid(line, usage)
    return value, parts.scheme, parts.hostname, port or TRANSPORTS[parts.scheme], ""


def _facility(raw: source.Located) -> int:
    value = raw.get("facility", DEFAULT_FACILITY)
    if value not in FACILITIES:
        raise Invalid(raw.line_of("facility"), f"`facility` is one of {', '.join(FACILITIES)}")
    return FACILITIES[value]


def _app_name(raw: source.Located) -> str:
    value = raw.get("app_name", DEFAULT_APP_NAME)
    if not isinstance(value, str) or not APP_NAME.fullmatch(value) or value == NILVALUE:
        raise Invalid(raw.line_of("app_name"), "`app_name` is 1 to 48 printable ASCII characters, no spaces")
    return value


def _max_message(raw: source.Located, transport: str) -> int:
    datagram = transport in DATAGRAM
    value = raw.get("max_message", DEFAULT_MAX_DATAGRAM if datagram else DEFAULT_MAX_MESSAGE)
    high = MAX_DATAGRAM if datagram else MAX_STREAM
    if isinstance(value, bool) or not isinstance(value, int) or not MIN_MESSAGE <= value <= high:
        raise Invalid(raw.line_of("max_message"), f"`max_message` is a message's size in bytes: {MIN_MESSAGE} to "
                                                  f"{high} for {transport}://")
    return value


def _enterprise_id(raw: source.Located) -> str:
    value = str(raw.get("enterprise_id", DEFAULT_ENTERPRISE_ID))
    if not ENTERPRISE_ID.fullmatch(value) or len(sd_id(value)) > 32:  # RFC 5424 §6.3.2: an SD-ID is 32 at most
        raise Invalid(raw.line_of("enterprise_id"), "`enterprise_id` is an IANA Private Enterprise Number "
                                                    "(digits, e.g. 32473), of 22 characters at most")
    return value


def _tls_files(raw: source.Located, file: Path, transport: str) -> dict[str, Path | None]:
    return tls_files(raw, file, "is for tls:// addresses only" if transport != "tls" else None)


# -- the message ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Form:
    """What every message of a sink has in common."""

    facility: int = FACILITIES[DEFAULT_FACILITY]
    app_name: str = DEFAULT_APP_NAME
    procid: str = NILVALUE
    enterprise_id: str = DEFAULT_ENTERPRISE_ID
    max_message: int = DEFAULT_MAX_MESSAGE


def message(record: pb.Record, form: Form) -> bytes:
    """One RFC 5424 message, at most form.max_message bytes."""
    item = item_of(record)
    header = " ".join((f"<{form.facility * 8 + severity(record)}>1", timestamp(time_of(item)),
                       header_field(record.host.hostname, 255), header_field(form.app_name, 48),
                       header_field(form.procid, 128), header_field(record.type, 32),
                       structured_data(record, form.enterprise_id)))
    prefix = f"{header} ".encode() + BOM
    return prefix + bounded(json_line(item, record.host).encode(), form.max_message - len(prefix))


def item_of(record: pb.Record) -> Message:
    item: Message = getattr(record, record.WhichOneof("item") or "")
    return item


def severity(record: pb.Record) -> int:
    if record.HasField("alert"):
        return SEVERITY.get(record.alert.severity, INFORMATIONAL)
    if record.HasField("incident"):
        return SEVERITY.get(record.incident.severity, INFORMATIONAL)
    if record.HasField("sensor_gap"):
        return SENSOR_GAP_SEVERITY
    return INFORMATIONAL


def time_of(item: Message) -> Timestamp | None:
    """When the record happened: an incident version's last_seen, the end of a sensor gap (when
    it was recorded), the time of anything else."""
    if isinstance(item, pb.Incident):
        return item.last_seen
    if isinstance(item, pb.SensorGap):
        return item.end
    if isinstance(item, pb.Alert | pb.Event | pb.Fact):
        return item.time
    return None


def timestamp(stamp: Timestamp | None) -> str:
    """RFC 5424 §6.2.3: RFC 3339 in UTC, with at most six digits of fraction; unset: NILVALUE,
    and the receiver uses the time it received the message."""
    if stamp is None or (stamp.seconds == 0 and stamp.nanos == 0):
        return NILVALUE
    moment = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC) + datetime.timedelta(seconds=stamp.seconds)
    return f"{moment:%Y-%m-%dT%H:%M:%S}.{stamp.nanos // 1000:06d}Z"


def header_field(text: str, limit: int) -> str:
    """A header field is PRINTUSASCII (RFC 5424 §6): anything else becomes '_', nothing is '-'."""
    printable = "".join(c if "!" <= c <= "~" else "_" for c in text[:limit])
    return printable or NILVALUE


def sd_id(enterprise_id: str) -> str:
    return f"gpusentry@{enterprise_id}"


def structured_data(record: pb.Record, enterprise_id: str) -> str:
    """One SD-ELEMENT with what a receiver filters on; empty values are left out."""
    params = [("type", record.type), *sd_params(item_of(record))]
    return f"[{sd_id(enterprise_id)}" + "".join(f' {name}="{param_value(value)}"' for name, value in params
                                                if value) + "]"


def sd_params(item: Message) -> list[tuple[str, str]]:
    if isinstance(item, pb.Alert):
        return [("cursor", _number(item.cursor)), ("id", item.id), ("rule_id", item.rule_id),
                ("severity", severity_name(item.severity)), ("incident_id", item.incident_id),
                ("scope_key", item.scope_key)]
    if isinstance(item, pb.Incident):
        return [("cursor", _number(item.cursor)), ("id", item.id), ("severity", severity_name(item.severity)),
                ("rule_ids", ",".join(item.rule_ids)), ("scope_keys", ",".join(item.scope_keys)),
                ("alerts_total", _number(item.alerts_total))]
    if isinstance(item, pb.SensorGap):
        return [("cursor", _number(item.cursor)), ("start", timestamp(item.start))]
    if isinstance(item, pb.Event):
        return [("kind", _kind(pb.EventKind.Name(item.kind))), ("exec_id", item.process.exec_id)]
    if isinstance(item, pb.Fact):
        return [("kind", _kind(pb.FactKind.Name(item.kind))), ("exec_id", item.process.exec_id)]
    return []


def severity_name(value: int) -> str:
    return "" if value == pb.SEVERITY_UNSPECIFIED else str(pb.Severity.Name(value)).removeprefix("SEVERITY_").lower()


def _kind(name: str) -> str:
    """EVENT_KIND_GPU_OPEN -> gpu_open; an unspecified kind is left out."""
    kind = name.split("_KIND_", 1)[1].lower()
    return "" if kind == "unspecified" else kind


def _number(value: int) -> str:
    return str(value) if value else ""


def param_value(text: str) -> str:
    """RFC 5424 §6.3.3: '"', '\\' and ']' are escaped with a backslash. A value is cut to
    MAX_PARAM bytes (a whole character at a time) so that the header and the structured data
    always fit in the smallest max_message; control characters, which would break a receiver
    that reads lines, become '?'."""
    cut = text.encode()[:MAX_PARAM].decode(errors="ignore")
    cut = cut if len(cut) == len(text) else f"{cut[:-3]}..."
    clean = "".join("?" if ord(c) < 0x20 or ord(c) == 0x7F else c for c in cut)
    return clean.replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")


def bounded(body: bytes, room: int) -> bytes:
    """The JSON, or as much of it as fits in `room` bytes (whole UTF-8 characters) followed by
    a marker with the record's full length."""
    if len(body) <= room:
        return body
    marker = f"...[truncated: the record is {len(body)} bytes]".encode()
    cut = body[: max(0, room - len(marker))]
    return cut.decode(errors="ignore").encode() + marker


# -- the transports -------------------------------------------------------------------------------


def octet_counted(msg: bytes) -> bytes:
    """RFC 6587 §3.4.1 (and RFC 5425 §4.3): MSG-LEN SP SYSLOG-MSG."""
    return b"%d %s" % (len(msg), msg)


def nul_terminated(msg: bytes) -> bytes:
    """What glibc's syslog(3) writes to a stream /dev/log, so any local daemon that takes it
    (syslog-ng's unix-stream) takes this."""
    return msg + b"\0"


@dataclass
class Link:
    """A connected socket, and how messages are framed on it (None: one datagram each)."""

    sock: socket.socket
    frame: Callable[[bytes], bytes] | None

    def send(self, messages: list[bytes]) -> None:
        if self.frame is None:
            for msg in messages:
                self.sock.send(msg)
        else:
            self.sock.sendall(b"".join(self.frame(msg) for msg in messages))

    def closed_by_peer(self) -> bool:
        """A syslog receiver never writes: a stream that reads as ready was closed (or reset) by
        it, and what was written to it next would be lost without an error. TLS 1.3 session
        tickets also make it ready, and read as no data."""
        if self.frame is None or not select.select([self.sock], [], [], 0)[0]:
            return False
        timeout = self.sock.gettimeout()
        self.sock.setblocking(False)
        try:
            return self.sock.recv(4096) == b""
        except (ssl.SSLWantReadError, BlockingIOError):
            return False
        except OSError:
            return True
        finally:
            self.sock.settimeout(timeout)

    def close(self) -> None:
        self.sock.close()


def connect(options: Options) -> Link:
    if options.transport == "unix":
        return _connect_unix(options.socket_path)
    # read at each connection, before it: a renewed certificate is used, a bad key file is
    # reported as such even while the receiver is down
    context = _tls_context(options) if options.transport == "tls" else None
    kind = socket.SOCK_DGRAM if options.transport == "udp" else socket.SOCK_STREAM
    family, _, _, _, address = socket.getaddrinfo(options.host, options.port, type=kind)[0]
    sock = socket.socket(family, kind)
    try:
        sock.settimeout(TIMEOUT_S)
        sock.connect(address)
        if context is not None:
            sock = context.wrap_socket(sock, server_hostname=options.host)
    except BaseException:
        sock.close()
        raise
    return Link(sock, None if options.transport == "udp" else octet_counted)


def _connect_unix(path: str) -> Link:
    """A datagram socket, as /dev/log is on Linux; a stream one if the daemon listens on that."""
    for kind, frame in ((socket.SOCK_DGRAM, None), (socket.SOCK_STREAM, nul_terminated)):
        sock = socket.socket(socket.AF_UNIX, kind)
        sock.settimeout(TIMEOUT_S)
        try:
            sock.connect(path)
        except OSError as exc:
            sock.close()
            if exc.errno == errno.EPROTOTYPE and kind == socket.SOCK_DGRAM:
                continue
            raise
        return Link(sock, frame)
    raise AssertionError("unreachable: the stream attempt returns or raises")


def _tls_context(options: Options) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(options.ca) if options.ca is not None else None)
    if options.cert is not None and options.key is not None:
        context.load_cert_chain(options.cert, options.key, password=_encrypted_key(options.key))
    return context


def _encrypted_key(key: Path) -> Callable[[], bytes]:
    """Without a password callback OpenSSL would prompt on the terminal and hang the sink."""
    def refuse() -> bytes:
        raise SinkError(f"the key {key} is encrypted: give the agent an unencrypted key, readable by it only")
    return refuse


def reason(exc: BaseException) -> str:
    text = (exc.strerror if isinstance(exc, OSError) else None) or str(exc) or type(exc).__name__
    return " ".join(text.split())


class Delivery:
    """Sends each batch on one connection (one datagram per message on udp:// and unix://),
    connecting when there is none; one worker thread calls it."""

    def __init__(self, options: Options, host: pb.Host) -> None:
        self.options = options
        self.target = options.address
        self.form = Form(facility=options.facility, app_name=options.app_name, procid=str(os.getpid()),
                         enterprise_id=options.enterprise_id, max_message=options.max_message)
        self._link: Link | None = None

    def send(self, records: Sequence[pb.Record]) -> None:
        messages = [message(record, self.form) for record in records]
        link = self._connected()
        try:
            link.send(messages)
        except OSError as exc:
            self.close()  # the next batch connects anew
            raise SinkError(f"cannot send to {self.target}: {reason(exc)}",
                            permanent=exc.errno == errno.EMSGSIZE) from exc

    def _connected(self) -> Link:
        if self._link is not None and self._link.closed_by_peer():
            self.close()
        if self._link is None:
            try:
                self._link = connect(self.options)
            except (OSError, ValueError) as exc:
                raise SinkError(f"cannot connect to {self.target}: {reason(exc)}") from exc
        return self._link

    def reopen(self) -> None:
        """SIGHUP: the next batch connects anew (the receiver may have moved, or /dev/log been
        recreated by a restarted daemon)."""
        self.close()

    def close(self) -> None:
        if self._link is not None:
            link, self._link = self._link, None
            link.close()
