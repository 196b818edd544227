"""The webhook sink (sensor/sinks/webhook.py) against real HTTP and HTTPS receivers on 127.0.0.1,
driven by the real worker (base.Sink) on a real journal.

Every payload is checked against Falco's JSON output as Falco and falcosidekick define it:
- the key set and the time format: falcosecurity/falco, userspace/engine/formats.cpp,
  `falco_formats::format_event` (time as strftime "%FT%T" plus ".%09luZ"; rule, priority,
  source, hostname, output, tags, and output_fields, a flat object of field name to value);
- the priority names: falcosecurity/falcosidekick, types/priority.go (Emergency, Alert,
  Critical, Error, Warning, Notice, Informational, Debug), and falco.org/docs/reference/rules/
  rule-fields (the same eight);
- what falcosidekick accepts: types/types.go, `FalcoPayload` and its Check() (a priority, a
  rule, a non-zero time and non-empty output_fields; one event per request, handlers.go);
- field names: falco.org/docs/reference/rules/supported-fields (proc.exepath, proc.cmdline is
  proc.name plus proc.args, proc.aname[N], fd.sip/fd.sport the server end);
- the line Falco prints: falco.org/docs/concepts/outputs/channels ("<time>: <Priority> <text>").
"""

from __future__ import annotations

import calendar
import http.server
import ipaddress
import json
import re
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from sensor.api.v1 import gpusentry_pb2 as pb
from sensor.journal import Journal
from sensor.outward import record
from sensor.rules import source
from sensor.sinks import sinkset, webhook
from sensor.sinks.base import Backoff, CursorFile, Sink, SinkError, SinkSpec
from tests.waiting import wait_until

HOST = pb.Host(hostname="gpu-node-7", machine_id="0123")
FALCO_KEYS = {"output", "priority", "rule", "time", "output_fields", "source", "tags", "hostname"}
FALCO_PRIORITIES = ("Emergency", "Alert", "Critical", "Error", "Warning", "Notice", "Informational", "Debug")
FALCO_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z")
WHEN_NS = 1_714_558_805_408_091_526  # 2024-05-01T10:20:05.408091526Z
YEARS = 20 * 365 * 86400  # a horizon that keeps the fixed times above


# -- what Falco's format is -----------------------------------------------------------------------


def falco_ns(text: str) -> int:
    """Falco's time back to nanoseconds since the epoch."""
    assert FALCO_TIME.fullmatch(text), text
    seconds = calendar.timegm(time.strptime(text[:19], "%Y-%m-%dT%H:%M:%S"))
    return seconds * 1_000_000_000 + int(text[20:29])


def assert_falco_shape(payload: dict[str, Any]) -> None:
    """Falco's JSON output, key by key, and what falcosidekick's Check() requires."""
    assert set(payload) == FALCO_KEYS
    assert payload["priority"] in FALCO_PRIORITIES
    assert isinstance(payload["rule"], str) and payload["rule"]
    falco_ns(payload["time"])
    assert isinstance(payload["output"], str) and payload["output"].isprintable()  # one line
    assert payload["output"].startswith(f"{payload['time']}: {payload['priority']} ")
    assert payload["source"] == "gpusentry"
    assert isinstance(payload["tags"], list) and all(isinstance(t, str) for t in payload["tags"])
    assert isinstance(payload["hostname"], str) and payload["hostname"]
    fields = payload["output_fields"]
    assert isinstance(fields, dict) and fields
    assert all(isinstance(k, str) and isinstance(v, str | int | float | bool) for k, v in fields.items())  # flat


# -- records --------------------------------------------------------------------------------------


def rich_alert(n: int = 1, argv: tuple[str, ...] = ("ssh", "-R", "2222:localhost:22", "tunnel@203.0.113.5"),
               ns: int = WHEN_NS) -> pb.Alert:
    """A sequence alert: a reverse tunnel, then egress, by an ssh under bash under systemd."""
    ssh = pb.ProcessRef(exec_id="4242:1700000000:0", pid=4242, exe="/usr/bin/ssh")
    tunnel = pb.Fact(kind=pb.FACT_KIND_TUNNEL, process=ssh, summary="reverse ssh tunnel to 203.0.113.5",
                     tunnel=pb.Tunnel(tool="ssh", reverse=True, remote_host="203.0.113.5", remote_port=22))
    egress = pb.Fact(kind=pb.FACT_KIND_EGRESS, process=ssh, summary="connect to 198.51.100.7:443",
                     egress=pb.Egress(address="198.51.100.7", port=443))
    alert = pb.Alert(
        id=f"alert-{n}", rule_id="reverse-tunnel-then-egress", severity=pb.SEVERITY_HIGH,
        title="Reverse tunnel then egress", description="A reverse tunnel, then a connection out.",
        tags=["attack.T1572", "attack.T1133"], scope="lineage", scope_key="lineage:4242:1700000000:0",
        incident_id="incident-1",
        steps=[pb.AlertStep(fact="tunnel", summary="ssh -R 2222:localhost:22 to 203.0.113.5", exec_id=ssh.exec_id,
                            detail=tunnel),
               pb.AlertStep(fact="egress", summary="connect to 198.51.100.7:443", exec_id=ssh.exec_id, detail=egress)],
        processes=[pb.AlertProcess(
            process=pb.Process(exec_id=ssh.exec_id, pid=4242, ppid=4200, exe="/usr/bin/ssh", argv=list(argv),
                               uid=1000, loginuid=0xFFFFFFFF, cgroup_id=77, tunnel_scopes=["ssh-R:4242"]),
            ancestors=[pb.ProcessRef(exec_id="4200:1600000000:0", pid=4200, exe="/bin/bash"),
                       pb.ProcessRef(exec_id="1:1:0", pid=1, exe="/usr/lib/systemd/systemd")])])
    alert.time.FromNanoseconds(ns)
    alert.steps[0].time.FromNanoseconds(ns - 2_000_000_000)
    alert.steps[1].time.FromNanoseconds(ns)
    return alert


def simple_alert(n: int) -> pb.Alert:
    out = pb.Alert(id=f"alert-{n}", rule_id="marker", severity=pb.SEVERITY_LOW, title="Marker")
    out.time.FromNanoseconds(time.time_ns())
    return out


def alert_ids(payloads: list[dict[str, Any]]) -> list[str]:
    return [p["output_fields"]["gpusentry.alert.id"] for p in payloads if "gpusentry.alert.id" in p["output_fields"]]


# -- a receiver -----------------------------------------------------------------------------------


@dataclass
class Answer:
    status: int = 200
    body: bytes | Callable[[http.server.BaseHTTPRequestHandler], bytes] = b""
    stall: threading.Event | None = None  # hold the answer until set


@dataclass
class Seen:
    path: str
    headers: dict[str, str]
    payload: dict[str, Any]
    client: tuple[str, int]
    peer_cn: str


@dataclass
class Receiver:
    """An HTTP(S) endpoint on 127.0.0.1 that keeps every request, answers from `script` in order
    (then 200), and keeps what it answered 2xx in `accepted`."""

    tls: ssl.SSLContext | None = None
    keep_alive: bool = True  # HTTP/1.1: the client may reuse its connection
    close_after_each: bool = False  # close it anyway, without saying so: an idle keep-alive timing out
    script: list[Answer] = field(default_factory=list)
    requests: list[Seen] = field(default_factory=list)
    accepted: list[dict[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    stalls: list[threading.Event] = field(default_factory=list)
    server: _Server = field(init=False)

    def start(self) -> Receiver:
        self.server = _Server(("127.0.0.1", 0), _handler(self))
        self.server.tls = self.tls
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def stop(self) -> None:
        for stall in self.stalls:
            stall.set()
        self.server.shutdown()
        self.server.server_close()

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.server.server_address[1]}/falco"

    def answer(self, seen: Seen) -> Answer:
        with self.lock:
            self.requests.append(seen)
            return self.script.pop(0) if self.script else Answer()

    def accept(self, payload: dict[str, Any]) -> None:
        with self.lock:
            self.accepted.append(payload)


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    tls: ssl.SSLContext | None = None

    def get_request(self) -> tuple[Any, Any]:
        sock, address = super().get_request()
        if self.tls is not None:  # the handshake happens in the request's thread, at its first read
            sock = self.tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return sock, address

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that hung up (a timeout, a refused certificate) is what these tests do


def _handler(receiver: Receiver) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1" if receiver.keep_alive else "HTTP/1.0"

        def do_POST(self) -> None:
            payload = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            peer = self.connection.getpeercert(binary_form=True) if isinstance(self.connection, ssl.SSLSocket) else None
            names = x509.load_der_x509_certificate(peer).subject.get_attributes_for_oid(NameOID.COMMON_NAME) if peer \
                else []
            cn = str(names[0].value) if names else ""
            answer = receiver.answer(Seen(self.path, dict(self.headers.items()), payload, self.client_address, cn))
            if answer.stall is not None:
                answer.stall.wait(10)
            if 200 <= answer.status < 300:
                receiver.accept(payload)
            body = answer.body(self) if callable(answer.body) else answer.body
            self.send_response(answer.status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            if receiver.close_after_each:
                self.close_connection = True

        def log_message(self, *_: Any) -> None:
            pass

    return Handler


@pytest.fixture
def receivers() -> Iterator[Callable[..., Receiver]]:
    made: list[Receiver] = []

    def make(**settings: Any) -> Receiver:
        made.append(Receiver(**settings).start())
        return made[-1]

    yield make
    for receiver in made:
        receiver.stop()


# -- TLS material ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pki:
    folder: Path
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    client_key_encrypted: Path

    def server(self, require_client: bool = False) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.server_cert, self.server_key)
        if require_client:
            context.verify_mode = ssl.CERT_REQUIRED
            context.load_verify_locations(self.ca)
        return context


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _leaf(cn: str, ca: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey,
          server: bool) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    builder = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(ca.subject).public_key(key.public_key())
               .serial_number(x509.random_serial_number()).not_valid_before(now - timedelta(minutes=5))
               .not_valid_after(now + timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
               .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH if server
                                                     else ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False))
    if server:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
    return builder.sign(ca_key, hashes.SHA256()), key


def _write(path: Path, cert: x509.Certificate | None = None, key: ec.EllipticCurvePrivateKey | None = None,
           password: bytes | None = None) -> Path:
    if cert is not None:
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    elif key is not None:
        encryption = (serialization.BestAvailableEncryption(password) if password
                      else serialization.NoEncryption())
        path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption))
    return path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A test CA, a server certificate for 127.0.0.1 and a client certificate, all from it."""
    folder = tmp_path_factory.mktemp("pki")
    ca_key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    ca = (x509.CertificateBuilder().subject_name(_name("gpusentry test CA")).issuer_name(_name("gpusentry test CA"))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - timedelta(minutes=5)).not_valid_after(now + timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                       crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    server, server_key = _leaf("127.0.0.1", ca, ca_key, server=True)
    client, client_key = _leaf("gpu-node-7", ca, ca_key, server=False)
    return Pki(folder=folder, ca=_write(folder / "ca.pem", ca), server_cert=_write(folder / "server.pem", server),
               server_key=_write(folder / "server.key", key=server_key),
               client_cert=_write(folder / "client.pem", client),
               client_key=_write(folder / "client.key", key=client_key),
               client_key_encrypted=_write(folder / "client-encrypted.key", key=client_key, password=b"pw"))


# -- the sink, running ----------------------------------------------------------------------------


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[Journal]:
    journal = Journal(tmp_path / "journal.db")
    yield journal
    journal.close()


@pytest.fixture
def start_sink(journal: Journal, tmp_path: Path) -> Iterator[Callable[..., Sink]]:
    running: list[Sink] = []

    def start(options: webhook.Options, **spec: Any) -> Sink:
        spec.setdefault("horizon_s", YEARS)
        made = Sink(SinkSpec(type="webhook", name="hook", options=options, where="test", **spec),
                    webhook.Delivery(options, HOST), journal, CursorFile(tmp_path / "sinks" / "hook.cursor"), HOST,
                    backoff=Backoff(base_s=0.01, cap_s=0.05))
        made.start()
        running.append(made)
        return made

    yield start
    for made in running:
        made.stop(timeout=2)


def configured(text: str, folder: Path) -> webhook.Options:
    """Options from a sink entry written as in the configuration file (in `folder`)."""
    return webhook.options(source.load(f"type: webhook\n{text}"), folder / "config.yaml")


# -- the payload ----------------------------------------------------------------------------------


def test_an_alert_arrives_in_falcos_output_shape_field_by_field(receivers: Callable[..., Receiver], journal: Journal,
                                                                 start_sink: Callable[..., Sink],
                                                                 tmp_path: Path) -> None:
    receiver = receivers()
    sink = start_sink(configured(f"url: {receiver.url}?via=test\nheaders: {{X-Fleet: gpu-a, User-Agent: probe}}",
                                 tmp_path))
    alert = rich_alert()
    cursor = journal.append(alert)
    sink.wake()
    wait_until(lambda: receiver.accepted, what="the alert")
    payload, seen = receiver.accepted[0], receiver.requests[0]
    assert_falco_shape(payload)
    time_text = "2024-05-01T10:20:05.408091526Z"
    assert (payload["time"], falco_ns(payload["time"])) == (time_text, alert.time.ToNanoseconds())
    assert (payload["rule"], payload["priority"], payload["source"], payload["hostname"], payload["tags"]) == \
        ("reverse-tunnel-then-egress", "Error", "gpusentry", "gpu-node-7", ["attack.T1572", "attack.T1133"])
    assert payload["output"] == (
        f"{time_text}: Error Reverse tunnel then egress: ssh -R 2222:localhost:22 to 203.0.113.5 then connect to "
        "198.51.100.7:443 (pid=4242 exe=/usr/bin/ssh cmdline=ssh -R 2222:localhost:22 tunnel@203.0.113.5 "
        "connection=198.51.100.7:443 scope=lineage:4242:1700000000:0 incident=incident-1)")
    assert payload["output_fields"] == {
        "gpusentry.alert.id": "alert-1", "gpusentry.alert.cursor": cursor, "gpusentry.incident.id": "incident-1",
        "gpusentry.severity": "high", "gpusentry.scope": "lineage", "gpusentry.scope_key": "lineage:4242:1700000000:0",
        "proc.pid": 4242, "proc.ppid": 4200, "proc.exepath": "/usr/bin/ssh", "proc.name": "ssh", "proc.exe": "ssh",
        "proc.args": "-R 2222:localhost:22 tunnel@203.0.113.5",
        "proc.cmdline": "ssh -R 2222:localhost:22 tunnel@203.0.113.5", "proc.exec_id": "4242:1700000000:0",
        "user.uid": 1000, "user.loginuid": -1, "gpusentry.proc.cgroup_id": 77,
        "gpusentry.proc.tunnel_scopes": "ssh-R:4242", "container.id": "host", "proc.pname": "bash",
        "proc.apid[1]": 4200, "proc.aname[1]": "bash", "proc.apid[2]": 1, "proc.aname[2]": "systemd",
        "gpusentry.steps": 2,
        "gpusentry.step[1].fact": "tunnel", "gpusentry.step[1].time": "2024-05-01T10:20:03.408091526Z",
        "gpusentry.step[1].summary": "ssh -R 2222:localhost:22 to 203.0.113.5",
        "gpusentry.step[1].exec_id": "4242:1700000000:0",
        "gpusentry.step[2].fact": "egress", "gpusentry.step[2].time": time_text,
        "gpusentry.step[2].summary": "connect to 198.51.100.7:443", "gpusentry.step[2].exec_id": "4242:1700000000:0",
        "fd.sip": "198.51.100.7", "fd.sport": 443}
    assert seen.path == "/falco?via=test"
    assert (seen.headers["Content-Type"], seen.headers["X-Fleet"], seen.headers["User-Agent"]) == \
        ("application/json", "gpu-a", "probe")


def test_incidents_sensor_gaps_events_and_facts_keep_the_same_shape(receivers: Callable[..., Receiver],
                                                                    journal: Journal, start_sink: Callable[..., Sink],
                                                                    tmp_path: Path) -> None:
    receiver = receivers()
    sink = start_sink(configured(f"url: {receiver.url}", tmp_path),
                      kinds=("alert", "incident", "sensor_gap", "event", "fact"))
    miner = rich_alert(2)
    miner.tags[:] = ["attack.T1496", "attack.T1572"]
    incident = pb.Incident(id="incident-1", severity=pb.SEVERITY_CRITICAL, summary="A tunnel, then a miner pool.",
                           rule_ids=["reverse-tunnel-opened", "miner-pool-connection"],
                           scope_keys=["lineage:4242:1700000000:0"], alerts=[rich_alert(1), miner], alerts_total=2,
                           processes=list(miner.processes),
                           connections=[pb.Fact(kind=pb.FACT_KIND_MINER, miner=pb.MinerFact(
                               reason="pool-port", detail="3333", address="203.0.113.10", port=3333))])
    incident.first_seen.FromNanoseconds(WHEN_NS - 60_000_000_000)
    incident.last_seen.FromNanoseconds(WHEN_NS)
    journal.append_incident(incident)
    gap = journal.append_gap(WHEN_NS - 90_000_000_000, WHEN_NS, "the agent was not running")
    event = pb.Event(kind=pb.EVENT_KIND_CONNECT, ts=123, process=pb.ProcessRef(exec_id="7:7:0", pid=7, exe="/bin/nc"),
                     connect=pb.Connect(family="AF_INET", address="198.51.100.7", port=443, result=-115,
                                        destination="egress", fd=5))
    event.time.FromNanoseconds(WHEN_NS)
    fact = pb.Fact(kind=pb.FACT_KIND_TUNNEL, ts=124, summary="reverse ssh tunnel to 203.0.113.5",
                   process=pb.ProcessRef(exec_id="8:8:0", pid=8, exe="/usr/bin/ssh"),
                   tunnel=pb.Tunnel(tool="ssh", reverse=True, directions=["reverse"], remote_host="203.0.113.5",
                                    remote_port=22, forwards=["reverse 2222 -> localhost:22"]))
    fact.time.FromNanoseconds(WHEN_NS)
    sink.wake()
    sink.offer(event)
    sink.offer(fact)
    wait_until(lambda: len(receiver.accepted) == 4, what="an incident, a gap, an event and a fact")
    for payload in receiver.accepted:
        assert_falco_shape(payload)
    by_rule = {p["rule"]: p for p in receiver.accepted}
    assert set(by_rule) == {"gpusentry incident", "gpusentry internal: sensor gap", "gpusentry event: connect",
                            "gpusentry fact: tunnel"}

    told = by_rule["gpusentry incident"]
    assert (told["priority"], falco_ns(told["time"]), told["tags"]) == \
        ("Critical", WHEN_NS, ["attack.T1572", "attack.T1133", "attack.T1496"])  # the union, in order
    assert told["output"].endswith(": Critical Incident: A tunnel, then a miner pool. (incident=incident-1 alerts=2 "
                                   "rules=reverse-tunnel-opened, miner-pool-connection)")
    assert {k: told["output_fields"][k] for k in ("gpusentry.incident.id", "gpusentry.incident.rule_ids",
                                                  "gpusentry.incident.alerts", "proc.pid", "fd.sip", "fd.sport")} == \
        {"gpusentry.incident.id": "incident-1", "gpusentry.incident.rule_ids":
         "reverse-tunnel-opened, miner-pool-connection", "gpusentry.incident.alerts": 2, "proc.pid": 4242,
         "fd.sip": "203.0.113.10", "fd.sport": 3333}

    blind = by_rule["gpusentry internal: sensor gap"]
    assert (blind["priority"], falco_ns(blind["time"]), blind["tags"]) == ("Critical", WHEN_NS, [])
    assert blind["output_fields"] == {
        "gpusentry.gap.cursor": gap.cursor, "gpusentry.gap.start": "2024-05-01T10:18:35.408091526Z",
        "gpusentry.gap.end": "2024-05-01T10:20:05.408091526Z", "gpusentry.gap.seconds": 90.0,
        "gpusentry.gap.cause": "the agent was not running"}

    seen = by_rule["gpusentry event: connect"]
    assert seen["priority"] == "Informational"
    assert seen["output_fields"] == {
        "gpusentry.event.kind": "connect", "gpusentry.event.ts": 123, "proc.pid": 7, "proc.exepath": "/bin/nc",
        "proc.name": "nc", "proc.exec_id": "7:7:0", "gpusentry.event.connect.family": "AF_INET",
        "gpusentry.event.connect.address": "198.51.100.7", "gpusentry.event.connect.port": 443,
        "gpusentry.event.connect.result": -115, "gpusentry.event.connect.destination": "egress",
        "gpusentry.event.connect.route_by_range": False, "gpusentry.event.connect.allowed": False,
        "gpusentry.event.connect.fd": 5, "fd.sip": "198.51.100.7", "fd.sport": 443}

    concluded = by_rule["gpusentry fact: tunnel"]
    assert concluded["priority"] == "Informational"
    assert concluded["output"].endswith(": Informational tunnel fact: reverse ssh tunnel to 203.0.113.5 "
                                        "(pid=8 exe=/usr/bin/ssh)")
    assert {k: v for k, v in concluded["output_fields"].items() if k.startswith("gpusentry.fact.tunnel.")} == {
        "gpusentry.fact.tunnel.tool": "ssh", "gpusentry.fact.tunnel.reverse": True,
        "gpusentry.fact.tunnel.directions[0]": "reverse", "gpusentry.fact.tunnel.remote_host": "203.0.113.5",
        "gpusentry.fact.tunnel.remote_port": 22, "gpusentry.fact.tunnel.forwards[0]": "reverse 2222 -> localhost:22",
        "gpusentry.fact.tunnel.relayed_bytes": 0}


@pytest.mark.parametrize(("severity", "priority"), [
    (pb.SEVERITY_CRITICAL, "Critical"), (pb.SEVERITY_HIGH, "Error"), (pb.SEVERITY_MEDIUM, "Warning"),
    (pb.SEVERITY_LOW, "Notice"), (pb.SEVERITY_INFO, "Informational"),
    (pb.SEVERITY_UNSPECIFIED, "Warning"),  # never below a minimum-priority filter for want of a name
])
def test_severities_are_falcos_priority_names(severity: pb.Severity, priority: str) -> None:
    alert = rich_alert()
    alert.severity = severity
    payload = webhook.falco_event(record(alert, HOST))
    assert_falco_shape(payload)
    assert payload["priority"] == priority


def test_text_a_process_controls_cannot_break_the_output_line() -> None:
    argv = ("ssh", "-R", "1:x:1\n10:20:05.000000000: Critical forged", "\x1b[31mred")
    payload = webhook.falco_event(record(rich_alert(argv=argv), HOST))
    assert_falco_shape(payload)
    assert "\n" not in payload["output"] and "\x1b" not in payload["output"] and "\\x1b[31mred" in payload["output"]
    assert payload["output_fields"]["proc.args"] == " ".join(argv[1:])  # the fields keep the exact bytes, JSON-escaped


# -- delivery: retries, timeouts, refusals ------------------------------------------------------


def test_500_twice_then_200_is_retried_and_each_alert_is_delivered_once(receivers: Callable[..., Receiver],
                                                                        journal: Journal,
                                                                        start_sink: Callable[..., Sink],
                                                                        tmp_path: Path) -> None:
    receiver = receivers(script=[Answer(500, b"busy"), Answer(500, b"busy")])
    sink = start_sink(configured(f"url: {receiver.url}", tmp_path))
    journal.append(simple_alert(1))
    journal.append(simple_alert(2))
    sink.wake()
    wait_until(lambda: sink.status().sent == 2, what="both alerts")
    status = sink.status()
    assert (status.sent, status.retried, status.failed, status.dropped, status.up, status.last_error) == \
        (2, 2, 0, 0, True, "")
    assert alert_ids(receiver.accepted) == ["alert-1", "alert-2"]  # once each: no 2xx was lost
    assert alert_ids([s.payload for s in receiver.requests]) == ["alert-1", "alert-1", "alert-1", "alert-2"]


def test_a_stalled_endpoint_times_out_is_retried_and_only_the_lost_2xx_repeats(receivers: Callable[..., Receiver],
                                                                               journal: Journal,
                                                                               start_sink: Callable[..., Sink],
                                                                               tmp_path: Path) -> None:
    release = threading.Event()
    receiver = receivers(script=[Answer(200, stall=release)])
    receiver.stalls.append(release)
    sink = start_sink(configured(f"url: {receiver.url}\ntimeout: 0.3", tmp_path))
    journal.append(simple_alert(1))
    sink.wake()
    wait_until(lambda: sink.status().sent == 1, what="the alert, on the second try")
    status = sink.status()
    assert (status.retried, status.failed, status.up) == (1, 0, True)
    release.set()  # the stalled server now takes the first request: its 2xx is the one the sink never saw
    wait_until(lambda: len(receiver.accepted) == 2, what="the stalled request's late answer")
    assert alert_ids(receiver.accepted) == ["alert-1", "alert-1"]  # exactly one duplicate, the lost 2xx
    journal.append(simple_alert(2))
    sink.wake()
    wait_until(lambda: alert_ids(receiver.accepted)[-1:] == ["alert-2"], what="the next alert")
    assert sink.status().sent == 2


def test_the_timeout_is_named_in_the_error(receivers: Callable[..., Receiver], tmp_path: Path) -> None:
    release = threading.Event()
    receiver = receivers(script=[Answer(200, stall=release)])
    receiver.stalls.append(release)
    delivery = webhook.Delivery(configured(f"url: {receiver.url}\ntimeout: 0.2", tmp_path), HOST)
    with pytest.raises(SinkError) as caught:
        delivery.send([record(simple_alert(1), HOST)])
    assert not caught.value.permanent
    assert str(caught.value) == f"no answer from {receiver.url} within 0.2s"
    delivery.close()


def test_a_400_is_counted_failed_and_skipped_and_the_next_record_still_goes(receivers: Callable[..., Receiver],
                                                                            journal: Journal,
                                                                            start_sink: Callable[..., Sink],
                                                                            tmp_path: Path) -> None:
    receiver = receivers(script=[Answer(400, b"Please send a valid request body")])
    journal.append(simple_alert(1))
    last = journal.append(simple_alert(2))
    CursorFile(tmp_path / "sinks" / "hook.cursor").save(0)  # both in the sink's first batch
    sink = start_sink(configured(f"url: {receiver.url}", tmp_path))
    wait_until(lambda: sink.status().cursor == last, what="the cursor past both")
    status = sink.status()
    assert (status.sent, status.failed, status.retried, status.dropped) == (1, 1, 0, 0)
    assert status.last_error == (f"1 of 2 records refused for good: HTTP 400 from {receiver.url}: "
                                 "Please send a valid request body")
    assert alert_ids(receiver.accepted) == ["alert-2"]
    assert alert_ids([s.payload for s in receiver.requests]) == ["alert-1", "alert-2"]  # the refused one not retried


def test_a_400_in_a_batch_of_one_is_failed_and_the_next_batch_goes(receivers: Callable[..., Receiver],
                                                                   journal: Journal, start_sink: Callable[..., Sink],
                                                                   tmp_path: Path) -> None:
    receiver = receivers(script=[Answer(400, b"Please send a valid request body")])
    sink = start_sink(configured(f"url: {receiver.url}", tmp_path), batch=1)
    journal.append(simple_alert(1))
    last = journal.append(simple_alert(2))
    sink.wake()
    wait_until(lambda: sink.status().cursor == last and sink.status().sent == 1, what="the next alert")
    status = sink.status()
    assert (status.sent, status.failed, status.retried, status.up, status.last_error) == (1, 1, 0, True, "")
    assert alert_ids(receiver.accepted) == ["alert-2"]


def test_a_refusal_inside_a_batch_refuses_that_record_only(receivers: Callable[..., Receiver], tmp_path: Path) -> None:
    receiver = receivers(script=[Answer(400, b"Please send a valid request body")])
    delivery = webhook.Delivery(configured(f"url: {receiver.url}", tmp_path), HOST)
    with pytest.raises(webhook.Refused) as caught:
        delivery.send([record(simple_alert(1), HOST), record(simple_alert(2), HOST)])
    assert (caught.value.permanent, caught.value.refused) == (True, 1)
    assert str(caught.value) == (f"1 of 2 records refused for good: HTTP 400 from {receiver.url}: "
                                 "Please send a valid request body")
    assert alert_ids(receiver.accepted) == ["alert-2"]
    delivery.send([record(simple_alert(3), HOST)])  # nothing of that batch lingers
    assert alert_ids(receiver.accepted) == ["alert-2", "alert-3"]
    delivery.close()


def test_a_batch_retried_after_a_failure_resends_only_what_did_not_go(receivers: Callable[..., Receiver],
                                                                       tmp_path: Path) -> None:
    receiver = receivers(script=[Answer(200), Answer(503, b"overloaded")])
    delivery = webhook.Delivery(configured(f"url: {receiver.url}", tmp_path), HOST)
    batch = [record(simple_alert(1), HOST), record(simple_alert(2), HOST)]
    with pytest.raises(SinkError) as caught:
        delivery.send(batch)
    assert (caught.value.permanent, str(caught.value)) == (False, f"HTTP 503 from {receiver.url}: overloaded")
    delivery.send(batch)  # as the worker retries it: whole
    assert alert_ids([s.payload for s in receiver.requests]) == ["alert-1", "alert-2", "alert-2"]
    assert alert_ids(receiver.accepted) == ["alert-1", "alert-2"]
    delivery.close()


@pytest.mark.parametrize(("status", "permanent"), [(429, False), (408, False), (502, False), (301, False),
                                                   (401, True), (404, True), (413, True)])
def test_which_answers_are_tried_again(status: int, permanent: bool, receivers: Callable[..., Receiver],
                                       tmp_path: Path) -> None:
    receiver = receivers(script=[Answer(status)])
    delivery = webhook.Delivery(configured(f"url: {receiver.url}", tmp_path), HOST)
    with pytest.raises(SinkError) as caught:
        delivery.send([record(simple_alert(1), HOST)])
    assert caught.value.permanent is permanent
    assert str(caught.value).startswith(f"HTTP {status} from {receiver.url}")
    delivery.close()


def test_one_kept_alive_connection_carries_every_record(receivers: Callable[..., Receiver], tmp_path: Path) -> None:
    receiver = receivers()
    delivery = webhook.Delivery(configured(f"url: {receiver.url}", tmp_path), HOST)
    for n in range(3):
        delivery.send([record(simple_alert(n), HOST)])
    assert len({s.client for s in receiver.requests}) == 1
    delivery.close()


def test_reopen_starts_a_new_connection(pki: Pki, receivers: Callable[..., Receiver], tmp_path: Path) -> None:
    receiver = receivers(tls=pki.server())
    delivery = webhook.Delivery(configured(f"url: {receiver.url}\nca: {pki.ca}", tmp_path), HOST)
    delivery.send([record(simple_alert(1), HOST)])
    delivery.reopen()  # SIGHUP: a rotated CA or client certificate is read again on the next connection
    delivery.send([record(simple_alert(2), HOST)])
    assert len({s.client for s in receiver.requests}) == 2
    delivery.close()


def test_a_kept_alive_connection_the_server_closed_is_replaced_without_a_retry(receivers: Callable[..., Receiver],
                                                                                journal: Journal,
                                                                                start_sink: Callable[..., Sink],
                                                                                tmp_path: Path) -> None:
    receiver = receivers(close_after_each=True)
    sink = start_sink(configured(f"url: {receiver.url}", tmp_path), batch=1)
    for n in range(3):
        journal.append(simple_alert(n))
    sink.wake()
    wait_until(lambda: sink.status().sent == 3, what="three alerts")
    assert (sink.status().retried, alert_ids(receiver.accepted)) == (0, ["alert-0", "alert-1", "alert-2"])
    assert len({s.client for s in receiver.requests}) == 3  # a new connection for each, as the server wanted


def test_an_unreachable_endpoint_is_retried_until_it_answers(journal: Journal, start_sink: Callable[..., Sink],
                                                             receivers: Callable[..., Receiver],
                                                             tmp_path: Path) -> None:
    receiver = receivers()
    port = receiver.server.server_address[1]
    receiver.stop()  # nothing listens there now
    sink = start_sink(configured(f"url: http://127.0.0.1:{port}/falco", tmp_path))
    journal.append(simple_alert(1))
    sink.wake()
    wait_until(lambda: sink.status().retried >= 2, what="failed attempts")
    status = sink.status()
    assert (status.sent, status.up, status.behind) == (0, False, 1)
    assert status.last_error == f"cannot POST to http://127.0.0.1:{port}/falco: Connection refused"


# -- TLS ------------------------------------------------------------------------------------------


def test_https_with_the_configured_ca_and_a_client_certificate(pki: Pki, receivers: Callable[..., Receiver],
                                                               journal: Journal, start_sink: Callable[..., Sink],
                                                               tmp_path: Path) -> None:
    receiver = receivers(tls=pki.server(require_client=True))
    sink = start_sink(configured(f"url: {receiver.url}\nca: {pki.ca}\ncert: {pki.client_cert}\n"
                                 f"key: {pki.client_key}", tmp_path))
    journal.append(rich_alert())
    sink.wake()
    wait_until(lambda: receiver.accepted, what="the alert over mutual TLS")
    assert_falco_shape(receiver.accepted[0])
    assert receiver.requests[0].peer_cn == "gpu-node-7"
    assert sink.status().target == receiver.url


def test_mutual_tls_without_a_client_certificate_is_refused_and_says_why(pki: Pki, receivers: Callable[..., Receiver],
                                                                         journal: Journal,
                                                                         start_sink: Callable[..., Sink],
                                                                         tmp_path: Path) -> None:
    receiver = receivers(tls=pki.server(require_client=True))
    sink = start_sink(configured(f"url: {receiver.url}\nca: {pki.ca}", tmp_path))
    journal.append(simple_alert(1))
    sink.wake()
    wait_until(lambda: sink.status().retried >= 1, what="a refused handshake")
    status = sink.status()
    assert (status.sent, status.up, receiver.accepted) == (0, False, [])
    # the alert saying why, or only the end of the session: which one the client reads is a race
    assert status.last_error in (
        f"cannot POST to {receiver.url}: TLS: {why} (a server that requires a client certificate ends the session "
        "so: set `cert` and `key`)" for why in ("the server ended the session", "TLSV13_ALERT_CERTIFICATE_REQUIRED"))


def test_an_unknown_server_certificate_is_refused_unless_verification_is_off(pki: Pki,
                                                                             receivers: Callable[..., Receiver],
                                                                             tmp_path: Path) -> None:
    receiver = receivers(tls=pki.server())
    checked = webhook.Delivery(configured(f"url: {receiver.url}", tmp_path), HOST)  # the system store
    with pytest.raises(SinkError) as caught:
        checked.send([record(simple_alert(1), HOST)])
    assert not caught.value.permanent
    assert str(caught.value) == (f"cannot POST to {receiver.url}: the server's certificate was not accepted: "
                                 "unable to get local issuer certificate")
    unchecked = webhook.Delivery(configured(f"url: {receiver.url}\ninsecure_skip_verify: true", tmp_path), HOST)
    unchecked.send([record(simple_alert(2), HOST)])
    assert alert_ids(receiver.accepted) == ["alert-2"]
    assert unchecked.target == f"{receiver.url} (server certificate NOT verified: insecure_skip_verify)"
    checked.close()
    unchecked.close()


# -- secrets --------------------------------------------------------------------------------------


def _echo_headers(handler: http.server.BaseHTTPRequestHandler) -> bytes:
    return f"denied: {handler.headers['Authorization']} / {handler.headers['X-Api-Key']} / {handler.path}".encode()


def test_secrets_arrive_as_headers_and_are_never_shown(receivers: Callable[..., Receiver],
                                                      monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "token").write_text("Bearer s3cr3t-token-from-a-file\n")
    monkeypatch.setenv("GS_TEST_WEBHOOK_KEY", "key-from-the-environment")
    receiver = receivers(script=[Answer(200), Answer(401, _echo_headers)])
    options = configured(f"url: {receiver.url}?token=query-secret-123\nsecret_headers:\n"
                         "  Authorization: {file: token}\n  X-Api-Key: {env: GS_TEST_WEBHOOK_KEY}", tmp_path)
    delivery = webhook.Delivery(options, HOST)
    delivery.send([record(simple_alert(1), HOST)])
    headers = receiver.requests[0].headers
    assert (headers["Authorization"], headers["X-Api-Key"]) == ("Bearer s3cr3t-token-from-a-file",
                                                                "key-from-the-environment")
    with pytest.raises(SinkError) as caught:
        delivery.send([record(simple_alert(2), HOST)])
    secrets = ("s3cr3t-token-from-a-file", "key-from-the-environment", "query-secret-123")
    for shown in (str(caught.value), delivery.target, repr(options)):
        assert not any(secret in shown for secret in secrets), shown
    assert str(caught.value) == f"HTTP 401 from {receiver.url}?…: denied: <secret> / <secret> / /falco?<secret>"
    assert repr(options) == (f"webhook.Options(url='{receiver.url}?…', headers={{}}, secret_headers="
                             f"{{'Authorization': <secret from {tmp_path / 'token'}>, 'X-Api-Key': "
                             "<secret from $GS_TEST_WEBHOOK_KEY>}, timeout_s=5.0, ca=None, cert=None, key=None, "
                             "insecure_skip_verify=False)")
    (tmp_path / "token").write_text("Bearer rotated-token-value\n")  # read when used: a rotated token is sent
    delivery.send([record(simple_alert(3), HOST)])
    assert receiver.requests[-1].headers["Authorization"] == "Bearer rotated-token-value"
    delivery.close()


def test_an_unreadable_secret_is_a_retryable_error_that_names_where_it_is_kept(receivers: Callable[..., Receiver],
                                                                               tmp_path: Path) -> None:
    receiver = receivers()
    (tmp_path / "token").write_text("Bearer x")
    delivery = webhook.Delivery(configured(f"url: {receiver.url}\nsecret_headers: {{Authorization: {{file: token}}}}",
                                           tmp_path), HOST)
    (tmp_path / "token").unlink()
    with pytest.raises(SinkError) as caught:
        delivery.send([record(simple_alert(1), HOST)])
    assert not caught.value.permanent
    assert str(caught.value) == (f"the secret header Authorization: <secret from {tmp_path / 'token'}> could not be "
                                 "read (No such file or directory)")
    assert receiver.requests == []


# -- options --------------------------------------------------------------------------------------


def test_options_have_defaults_and_paths_relative_to_the_configuration(pki: Pki, tmp_path: Path) -> None:
    plain = configured("url: http://127.0.0.1:2801/", tmp_path)
    assert (plain.headers, plain.secret_headers, plain.timeout_s, plain.ca, plain.cert, plain.key,
            plain.insecure_skip_verify) == ((), (), 5.0, None, None, None, False)
    (tmp_path / "tls").mkdir()
    for name in ("ca.pem", "client.pem", "client.key"):
        (tmp_path / "tls" / name).write_bytes((pki.folder / name).read_bytes())
    tls = configured("url: https://sidekick.example/\nca: tls/ca.pem\ncert: tls/client.pem\nkey: tls/client.key\n"
                     "timeout: 2.5", tmp_path)
    assert (tls.ca, tls.cert, tls.key, tls.timeout_s) == (tmp_path / "tls" / "ca.pem", tmp_path / "tls" / "client.pem",
                                                          tmp_path / "tls" / "client.key", 2.5)
    assert webhook.Delivery(tls, HOST).target == "https://sidekick.example/"


@pytest.mark.parametrize(("entry", "problem"), [
    ("", "2: a webhook sink needs `url`: the http:// or https:// address to POST to"),
    ("url: ftp://sidekick/", "3: `url` is an http:// or https:// address with a host"),
    ("url: https://user:hunter2@sidekick/", "3: `url` carries no user or password: send credentials in "
                                            "`secret_headers` (e.g. Authorization: {file: PATH})"),
    ("url: https://sidekick:99999/", "3: `url` is an http:// or https:// address with a port from 1 to 65535"),
    ("url: https://sidekick/\n    urll: x", "4: unknown key 'urll' for a webhook sink; its keys are url, headers, "
                                            "secret_headers, timeout, ca, cert, key, insecure_skip_verify (and type, "
                                            "name, kinds, horizon, queue_size, batch, linger)"),
    ("url: https://sidekick/\n    headers: [a]", "4: `headers` is a mapping of header names to values"),
    ("url: https://sidekick/\n    headers:\n      X-Ok: 1\n      Bad Name: x",
     "6: `headers`: a header name is letters, digits and !#$%&'*+.^_`|~- "),
    ("url: https://sidekick/\n    headers: {Content-Length: '5'}",
     "4: `headers`: Content-Length is set by the sink itself; it cannot be configured"),
    ("url: https://sidekick/\n    headers: {X-A: [1]}", "4: `headers.X-A` is text"),
    ("url: https://sidekick/\n    secret_headers:\n      Authorization: Bearer hunter2",
     "5: `secret_headers.Authorization` is {file: PATH} or {env: VARIABLE}: where the value is kept, never the value "
     "itself"),
    ("url: https://sidekick/\n    secret_headers: {Authorization: {env: GS_TEST_UNSET_VARIABLE}}",
     "4: `secret_headers.Authorization`: the environment variable GS_TEST_UNSET_VARIABLE is not set"),
    ("url: https://sidekick/\n    secret_headers: {Authorization: {file: missing}}",
     "4: `secret_headers.Authorization`: there is no file DIR/missing"),
    ("url: https://sidekick/\n    headers: {X-Key: a}\n    secret_headers: {x-key: {file: present}}",
     "5: the header x-key is given twice"),
    ("url: https://sidekick/\n    timeout: 0", "4: `timeout` is seconds, above 0 and at most 300"),
    ("url: https://sidekick/\n    timeout: 5s", "4: `timeout` is seconds, above 0 and at most 300"),
    ("url: https://sidekick/\n    ca: missing.pem", "4: `ca`: there is no file DIR/missing.pem"),
    ("url: https://sidekick/\n    cert: present", "4: `cert` and `key` go together: the client certificate and its "
                                                  "private key"),
    ("url: http://sidekick/\n    ca: present", "4: `ca` is for an https:// url; this one is http://"),
    ("url: https://sidekick/\n    insecure_skip_verify: 'yes'", "4: `insecure_skip_verify` is true or false"),
    ("url: https://sidekick/\n    insecure_skip_verify: true\n    ca: present",
     "4: `insecure_skip_verify: true` accepts any certificate, so `ca` would do nothing: keep one"),
])
def test_option_errors_say_where_and_what(entry: str, problem: str, tmp_path: Path) -> None:
    (tmp_path / "present").write_text("x")
    document = source.load(f"sinks:\n  - type: webhook\n    {entry}\n")
    specs, problems = sinkset.parse(document["sinks"], tmp_path / "config.yaml", document.line_of("sinks"))
    expected = f"{tmp_path / 'config.yaml'}:{problem.replace('DIR', str(tmp_path))}"
    assert (specs, problems) == ([], [expected.replace(": ", ": sinks: ", 1)])
    assert "hunter2" not in problems[0]


def test_tls_files_that_do_not_load_are_option_errors(pki: Pki, tmp_path: Path) -> None:
    (tmp_path / "garbage.pem").write_text("not a certificate")

    def problem(entry: str) -> str:
        document = source.load(f"sinks:\n  - type: webhook\n    url: https://sidekick/\n    {entry}\n")
        return sinkset.parse(document["sinks"], tmp_path / "config.yaml", document.line_of("sinks"))[1][0]

    assert problem("ca: garbage.pem").startswith(
        f"{tmp_path / 'config.yaml'}:4: sinks: `ca`: {tmp_path / 'garbage.pem'} is not a PEM certificate file (")
    assert problem(f"cert: {pki.client_cert}\n    key: {pki.client_key_encrypted}").startswith(
        f"{tmp_path / 'config.yaml'}:4: sinks: `cert`/`key`: {pki.client_cert} and {pki.client_key_encrypted} are not "
        "a PEM certificate and its unencrypted private key (")

