"""The syslog sink's messages byte for byte (RFC 5424 header, structured data and its escaping,
PRI values, truncation), its options, and its framing on real local sockets: UDP, TCP octet
counting with reconnection, TLS with a client certificate, and both kinds of UNIX socket."""

from __future__ import annotations

import contextlib
import json
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from sensor.api.v1 import gpusentry_pb2 as pb
from sensor.outward import json_line, record
from sensor.rules import source
from sensor.sinks import syslog
from sensor.sinks.base import Invalid, SinkError
from tests.certificates import make_certificates
from tests.waiting import wait_until

HOST = pb.Host(hostname="gpu-7", machine_id="0f" * 16)
FORM = syslog.Form(procid="4242")
BOM = b"\xef\xbb\xbf"
T0 = 1_714_564_800_123_456_789  # 2024-05-01T12:00:00.123456789Z


def alert(**fields: object) -> pb.Alert:
    message = pb.Alert(cursor=17, id="6f1c0e2a-1b7d-4d8e-9a55-0c2f3e4d5a6b", rule_id="ssh-reverse-tunnel",
                       severity=pb.SEVERITY_CRITICAL, title="Reverse SSH tunnel", scope="tunnel",
                       scope_key="tunnel:ssh-R:4242:10.0.0.5", incident_id="b2d4-inc")
    message.MergeFrom(pb.Alert(**fields))  # type: ignore[arg-type]
    message.time.FromNanoseconds(T0)
    return message


def incident() -> pb.Incident:
    message = pb.Incident(id="b2d4-inc", cursor=18, severity=pb.SEVERITY_HIGH, summary="a tunnel and a miner",
                          rule_ids=["ssh-reverse-tunnel", "gpu-miner"],
                          scope_keys=["tunnel:ssh-R:4242", "lineage:4242"], alerts_total=2)
    message.first_seen.FromNanoseconds(T0 - 60_000_000_000)
    message.last_seen.FromNanoseconds(T0)
    return message


def test_an_alert_byte_for_byte() -> None:
    item = alert()
    assert syslog.message(record(item, HOST), FORM) == (
        b'<130>1 2024-05-01T12:00:00.123456Z gpu-7 gpusentry 4242 alert [gpusentry@32473 type="alert" cursor="17" '
        b'id="6f1c0e2a-1b7d-4d8e-9a55-0c2f3e4d5a6b" rule_id="ssh-reverse-tunnel" severity="critical" '
        b'incident_id="b2d4-inc" scope_key="tunnel:ssh-R:4242:10.0.0.5"] ' + BOM + json_line(item, HOST).encode())


def test_an_incident_byte_for_byte() -> None:
    item = incident()
    form = syslog.Form(facility=syslog.FACILITIES["auth"], app_name="gs", procid="1", enterprise_id="99999.1")
    assert syslog.message(record(item, HOST), form) == (
        b'<35>1 2024-05-01T12:00:00.123456Z gpu-7 gs 1 incident [gpusentry@99999.1 type="incident" cursor="18" '
        b'id="b2d4-inc" severity="high" rule_ids="ssh-reverse-tunnel,gpu-miner" '
        b'scope_keys="tunnel:ssh-R:4242,lineage:4242" alerts_total="2"] ' + BOM + json_line(item, HOST).encode())


def test_a_sensor_gap_an_event_and_a_fact() -> None:
    gap = pb.SensorGap(cursor=3, cause="agent restarted")
    gap.start.FromSeconds(1_714_564_800)
    gap.end.FromSeconds(1_714_564_900)
    assert syslog.message(record(gap, HOST), FORM).startswith(
        b'<132>1 2024-05-01T12:01:40.000000Z gpu-7 gpusentry 4242 sensor_gap [gpusentry@32473 type="sensor_gap" '
        b'cursor="3" start="2024-05-01T12:00:00.000000Z"] ' + BOM + b"{")
    event = pb.Event(kind=pb.EVENT_KIND_GPU_OPEN, process=pb.ProcessRef(exec_id="4242:99:1"))
    event.time.FromNanoseconds(T0)
    assert syslog.message(record(event, HOST), FORM).startswith(
        b'<134>1 2024-05-01T12:00:00.123456Z gpu-7 gpusentry 4242 event [gpusentry@32473 type="event" '
        b'kind="gpu_open" exec_id="4242:99:1"] ' + BOM)
    fact = pb.Fact(kind=pb.FACT_KIND_MINER)  # no time, no process
    assert syslog.message(record(fact, HOST), FORM).startswith(
        b'<134>1 - gpu-7 gpusentry 4242 fact [gpusentry@32473 type="fact" kind="miner"] ' + BOM)


@pytest.mark.parametrize(("facility", "item", "pri"), [
    ("local0", alert(severity=pb.SEVERITY_CRITICAL), 130),
    ("local0", alert(severity=pb.SEVERITY_HIGH), 131),
    ("local0", alert(severity=pb.SEVERITY_MEDIUM), 132),
    ("local0", alert(severity=pb.SEVERITY_LOW), 133),
    ("local0", alert(severity=pb.SEVERITY_INFO), 134),
    ("kern", alert(severity=pb.SEVERITY_CRITICAL), 2),
    ("user", alert(severity=pb.SEVERITY_MEDIUM), 12),
    ("authpriv", pb.SensorGap(), 84),
    ("local7", alert(severity=pb.SEVERITY_LOW), 189),
    ("local7", pb.Event(), 190),
    ("daemon", pb.Fact(), 30),
])
def test_pri_is_facility_times_8_plus_severity(facility: str, item: pb.Alert, pri: int) -> None:
    form = syslog.Form(facility=syslog.FACILITIES[facility])
    assert syslog.message(record(item, HOST), form).startswith(f"<{pri}>1 ".encode())


def test_an_alert_without_a_severity_is_informational() -> None:
    item = pb.Alert(id="a")
    item.ClearField("severity")
    assert syslog.message(record(item, HOST), FORM).startswith(b'<134>1 - gpu-7 gpusentry 4242 alert '
                                                                b'[gpusentry@32473 type="alert" id="a"] ')


def test_structured_data_escapes_quote_backslash_and_bracket() -> None:
    assert syslog.param_value('a"b\\c]d=e [f]') == 'a\\"b\\\\c\\]d=e [f\\]'
    message = syslog.message(record(alert(scope_key='k"]\\'), HOST), FORM)
    assert b' scope_key="k\\"\\]\\\\"] ' in message


def test_structured_data_values_are_one_line_and_bounded() -> None:
    assert syslog.param_value("a\nb\tc\x7f") == "a?b?c?"
    long = "é" * 300  # two bytes each: cut on a character, never inside one
    cut = syslog.param_value(long)
    assert cut == "é" * 61 + "..." and len(cut.encode()) <= syslog.MAX_PARAM


def test_header_fields_are_printable_ascii() -> None:
    host = pb.Host(hostname="gpu 7\u00e9")
    assert syslog.message(record(alert(), host), FORM).split(b" ")[2] == b"gpu_7_"
    assert syslog.message(record(alert(), pb.Host()), FORM).split(b" ")[2] == b"-"


def test_a_long_record_is_cut_with_a_marker() -> None:
    item = alert(description="données " * 20_000)
    full = json_line(item, HOST).encode()
    form = syslog.Form(procid="4242", max_message=8192)
    message = syslog.message(record(item, HOST), form)
    assert len(message) <= 8192
    prefix, body = message.split(BOM, 1)
    assert prefix == syslog.message(record(item, HOST), FORM).split(BOM, 1)[0]
    marker = f"...[truncated: the record is {len(full)} bytes]".encode()
    assert body.endswith(marker)
    kept = body[: -len(marker)]
    assert full.startswith(kept) and kept.decode()  # whole UTF-8 characters only
    assert len(message) > 8192 - 4  # cut no shorter than a partial character needs


def test_a_record_that_fits_is_whole() -> None:
    item = alert()
    message = syslog.message(record(item, HOST), syslog.Form(max_message=syslog.MIN_MESSAGE))
    assert json.loads(message.split(BOM, 1)[1]) == json.loads(json_line(item, HOST))


def test_the_largest_header_and_structured_data_fit_the_smallest_message() -> None:
    worst = pb.Incident(id='"' * 400, cursor=2**64 - 1, severity=pb.SEVERITY_CRITICAL, rule_ids=["]" * 300],
                        scope_keys=["\\" * 300], alerts_total=2**64 - 1, summary="x" * 10_000)
    worst.last_seen.FromNanoseconds(T0)
    form = syslog.Form(facility=23, app_name="a" * 48, procid="9" * 128, enterprise_id="1" * 22,
                       max_message=syslog.MIN_MESSAGE)
    message = syslog.message(record(worst, pb.Host(hostname="h" * 300)), form)
    assert len(message) <= syslog.MIN_MESSAGE
    assert message.endswith(b" bytes]")


# -- options ----------------------------------------------------------------------------------------


def parse(text: str, tmp_path: Path) -> syslog.Options:
    return syslog.options(source.load(text), tmp_path / "config.yaml")


def test_options_defaults(tmp_path: Path) -> None:
    assert parse("type: syslog\nname: s\nkinds: [alert]\naddress: tcp://logs.example.com\n", tmp_path) == \
        syslog.Options(address="tcp://logs.example.com", transport="tcp", host="logs.example.com", port=514,
                       facility=16, app_name="gpusentry", max_message=65536, enterprise_id="32473")
    assert parse("address: udp://[::1]:5514\n", tmp_path) == syslog.Options(
        address="udp://[::1]:5514", transport="udp", host="::1", port=5514, max_message=8096)
    assert parse("address: unix:///dev/log\nfacility: auth\n", tmp_path) == syslog.Options(
        address="unix:///dev/log", transport="unix", socket_path="/dev/log", facility=4, max_message=8096)


def test_tls_options_resolve_relative_files(tmp_path: Path) -> None:
    parsed = parse("address: tls://logs:6515\nca: certs/ca.pem\ncert: /etc/c.pem\nkey: /etc/c.key\n"
                   "max_message: 1048576\n", tmp_path)
    assert (parsed.host, parsed.port, parsed.ca, parsed.cert, parsed.key, parsed.max_message) == (
        "logs", 6515, tmp_path / "certs/ca.pem", Path("/etc/c.pem"), Path("/etc/c.key"), 1048576)
    assert parse("address: tls://logs\n", tmp_path).port == 6514


USAGE = ("`address` is udp://HOST[:PORT], tcp://HOST[:PORT], tls://HOST[:PORT] or unix:///PATH "
         "(e.g. unix:///dev/log)")


@pytest.mark.parametrize(("text", "line", "message"), [
    ("type: syslog\naddress: udp://h\nformat: json\n", 3,
     "unknown key 'format' for a syslog sink; its keys are address, facility, app_name, max_message, "
     "enterprise_id, ca, cert, key (and type, name, kinds, horizon, queue_size, batch, linger)"),
    ("type: syslog\n", 1, USAGE),
    ("type: syslog\naddress: http://h:514\n", 2, USAGE),
    ("type: syslog\naddress: udp://h:99999\n", 2, f"{USAGE}: Port out of range 0-65535"),
    ("type: syslog\naddress: unix://dev/log\n", 2,
     f"{USAGE}: a UNIX socket's path is absolute, after three slashes"),
    ("type: syslog\naddress: tcp://h/x\n", 2, USAGE),
    ("address: udp://h\n\nfacility: local8\n", 3,
     "`facility` is one of kern, user, mail, daemon, auth, syslog, lpr, news, uucp, cron, authpriv, ftp, ntp, "
     "audit, alert, clock, local0, local1, local2, local3, local4, local5, local6, local7"),
    ("address: udp://h\napp_name: gpu sentry\n", 2, "`app_name` is 1 to 48 printable ASCII characters, no spaces"),
    ("address: udp://h\nmax_message: 65536\n", 2, "`max_message` is a message's size in bytes: 2048 to 65507 for udp://"),
    ("address: tcp://h\nmax_message: 1000\n", 2,
     "`max_message` is a message's size in bytes: 2048 to 1048576 for tcp://"),
    ("address: tcp://h\nenterprise_id: acme\n", 2,
     "`enterprise_id` is an IANA Private Enterprise Number (digits, e.g. 32473), of 22 characters at most"),
    ("address: tcp://h\nca: /etc/ca.pem\n", 2, "`ca` is for tls:// addresses only"),
    ("address: tls://h\ncert: /etc/c.pem\n", 2, "`cert` and `key` go together: the client certificate and its "
                                                "private key"),
    ("address: tls://h\nkey: 12\n", 2, "`key` is the path of a PEM file"),
])
def test_option_errors_name_their_line(tmp_path: Path, text: str, line: int, message: str) -> None:
    with pytest.raises(Invalid) as invalid:
        parse(text, tmp_path)
    assert (invalid.value.line, invalid.value.message) == (line, message)


# -- on the wire ------------------------------------------------------------------------------------


def delivery(address: str, tmp_path: Path, extra: str = "") -> syslog.Delivery:
    return syslog.Delivery(parse(f"address: {address}\n{extra}", tmp_path), HOST)


def test_udp_sends_one_datagram_per_message(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as receiver:
        receiver.bind(("127.0.0.1", 0))
        receiver.settimeout(5)
        sender = delivery(f"udp://127.0.0.1:{receiver.getsockname()[1]}", tmp_path)
        items = [alert(id="a1"), incident()]
        sender.send([record(item, HOST) for item in items])
        sender.close()
        assert [receiver.recv(65536) for _ in items] == [syslog.message(record(i, HOST), sender.form) for i in items]
    assert sender.form.procid.isdigit()


class StreamReceiver:
    """A TCP (or TLS) listener that keeps every connection's bytes."""

    def __init__(self, context: ssl.SSLContext | None = None) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.context = context
        self.connections: list[socket.socket] = []

    def accept(self) -> socket.socket:
        self.listener.settimeout(5)
        conn, _ = self.listener.accept()
        if self.context is not None:
            conn = self.context.wrap_socket(conn, server_side=True)
        conn.settimeout(5)
        self.connections.append(conn)
        return conn

    def close(self) -> None:
        for conn in self.connections:
            conn.close()
        self.listener.close()


def read_frames(conn: socket.socket, count: int) -> list[bytes]:
    """RFC 6587 octet-counted frames: MSG-LEN SP MSG."""
    data, frames = b"", list[bytes]()
    while len(frames) < count:
        chunk = conn.recv(65536)
        assert chunk, "the connection closed before every frame came"
        data += chunk
        while b" " in data:
            length, rest = data.split(b" ", 1)
            if len(rest) < int(length):
                break
            frames.append(rest[: int(length)])
            data = rest[int(length):]
    return frames


def test_tcp_octet_counting_and_reconnection(tmp_path: Path) -> None:
    receiver = StreamReceiver()
    sender = delivery(f"tcp://127.0.0.1:{receiver.port}", tmp_path)
    try:
        first = [record(alert(id="a1"), HOST), record(incident(), HOST)]
        sender.send(first)
        conn = receiver.accept()
        assert read_frames(conn, 2) == [syslog.message(r, sender.form) for r in first]
        conn.close()  # the receiver restarts: the next batch must not vanish into the closed connection
        link = sender._link
        wait_until(lambda: link is not None and link.closed_by_peer(), what="the sender to see the close")
        again = [record(alert(id="a2"), HOST)]
        sender.send(again)
        assert read_frames(receiver.accept(), 1) == [syslog.message(again[0], sender.form)]
    finally:
        sender.close()
        receiver.close()


def test_a_refused_connection_is_a_sink_error(tmp_path: Path) -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    sender = delivery(f"tcp://127.0.0.1:{port}", tmp_path)
    with pytest.raises(SinkError) as refused:
        sender.send([record(alert(), HOST)])
    assert str(refused.value) == f"cannot connect to tcp://127.0.0.1:{port}: Connection refused"


@pytest.fixture
def certificates(tmp_path: Path) -> Iterator[dict[str, Path]]:
    yield make_certificates(tmp_path)


def test_tls_with_a_client_certificate(tmp_path: Path, certificates: dict[str, Path]) -> None:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=certificates["ca"])
    context.load_cert_chain(certificates["server"], certificates["server_key"])
    context.verify_mode = ssl.CERT_REQUIRED
    receiver = StreamReceiver(context)
    sender = delivery(f"tls://127.0.0.1:{receiver.port}", tmp_path,
                      f"ca: {certificates['ca']}\ncert: {certificates['client']}\nkey: {certificates['client_key']}\n")
    accepted: list[socket.socket] = []
    server = threading.Thread(target=lambda: accepted.append(receiver.accept()))
    try:
        server.start()
        batch = [record(alert(id="a1"), HOST), record(incident(), HOST)]
        sender.send(batch)
        server.join(10)
        assert isinstance(accepted[0], ssl.SSLSocket)
        peer = accepted[0].getpeercert()
        assert peer is not None and peer["subject"] == ((("commonName", "client"),),)
        assert read_frames(accepted[0], 2) == [syslog.message(r, sender.form) for r in batch]
        sender.send([record(alert(id="a2"), HOST)])  # TLS 1.3 session tickets do not read as a closed connection
        assert read_frames(accepted[0], 1) == [syslog.message(record(alert(id="a2"), HOST), sender.form)]
        assert len(receiver.connections) == 1
    finally:
        sender.close()
        receiver.close()


def refused_handshake(receiver: StreamReceiver) -> None:
    with contextlib.suppress(OSError):  # the client hangs up on the server it does not trust
        receiver.accept()


def test_tls_refuses_a_server_its_ca_did_not_sign(tmp_path: Path, certificates: dict[str, Path]) -> None:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certificates["server"], certificates["server_key"])
    receiver = StreamReceiver(context)
    sender = delivery(f"tls://127.0.0.1:{receiver.port}", tmp_path, f"ca: {certificates['client']}\n")
    server = threading.Thread(target=refused_handshake, args=(receiver,))
    try:
        server.start()
        with pytest.raises(SinkError, match=r"^cannot connect to tls://127\.0\.0\.1:.*certificate verify failed"):
            sender.send([record(alert(), HOST)])
        server.join(10)
    finally:
        receiver.close()


def test_an_encrypted_key_is_refused_not_prompted_for(tmp_path: Path, certificates: dict[str, Path]) -> None:
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key(certificates["client_key"].read_bytes(), None)
    encrypted = tmp_path / "encrypted.key"
    encrypted.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                            serialization.BestAvailableEncryption(b"secret")))
    sender = delivery("tls://127.0.0.1:1", tmp_path, f"cert: {certificates['client']}\nkey: {encrypted}\n")
    with pytest.raises(SinkError) as refused:
        sender.send([record(alert(), HOST)])
    assert str(refused.value) == f"the key {encrypted} is encrypted: give the agent an unencrypted key, " \
                                 "readable by it only"


def test_unix_datagram_socket(tmp_path: Path) -> None:
    path = tmp_path / "log"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as receiver:
        receiver.bind(str(path))
        receiver.settimeout(5)
        sender = delivery(f"unix://{path}", tmp_path)
        sender.send([record(alert(), HOST)])
        sender.close()
        assert receiver.recv(65536) == syslog.message(record(alert(), HOST), sender.form)


def test_unix_stream_socket_gets_what_syslog3_sends(tmp_path: Path) -> None:
    path = tmp_path / "log"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(str(path))
        listener.listen()
        listener.settimeout(5)
        sender = delivery(f"unix://{path}", tmp_path)
        batch = [record(alert(id="a1"), HOST), record(alert(id="a2"), HOST)]
        sender.send(batch)
        conn, _ = listener.accept()
        with conn:
            conn.settimeout(5)
            expected = b"".join(syslog.message(r, sender.form) + b"\0" for r in batch)
            data = b""
            while len(data) < len(expected):
                data += conn.recv(65536)
        sender.close()
    assert data == expected
