"""The syslog sink against a real rsyslogd: what rsyslog parsed out of each message (PRI,
timestamp, hostname, app name, procid, msgid, structured data, the message) for an alert and
an incident over UDP, TCP and a UNIX datagram socket, driven by the sink's real worker.

rsyslogd runs in the foreground with its own configuration, work directory, sockets (on free
loopback ports, and a socket in tmp_path: never /dev/log) and output file, started and stopped
by each test. It comes from Debian's `rsyslog` package (scripts/install --with-tests).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from sensor.api.v1 import gpusentry_pb2 as pb
from sensor.journal import Journal
from sensor.outward import json_line, record
from sensor.rules import source
from sensor.sinks import syslog
from sensor.sinks.base import CursorFile, Sink, SinkSpec
from tests.waiting import wait_until

HOST = pb.Host(hostname="gpu-7", machine_id="0f" * 16)
# What rsyslog parsed, one line per message; the message (with its BOM) is last.
TEMPLATE = ("%pri% %timereported:::date-rfc3339% %hostname% %app-name% %procid% %msgid% %structured-data% "
            "%msg%\\n")
CONFIG = """
global(workDirectory="{work}")  # maxMessageSize: its default, 8k
module(load="imudp")
module(load="imtcp")
module(load="imuxsock" SysSock.Use="off")
input(type="imudp" address="127.0.0.1" port="{udp}")
input(type="imtcp" address="127.0.0.1" port="{tcp}")
input(type="imuxsock" socket="{unix}" useSpecialParser="off" parseHostname="on" ignoreTimestamp="off"
      ratelimit.interval="0")
template(name="fields" type="string" string="{template}")
if $app-name == "gpusentry" then action(type="omfile" file="{out}" template="fields")
"""


@dataclass
class Rsyslog:
    udp: int
    tcp: int
    unix: Path
    out: Path

    def lines(self) -> list[str]:
        return self.out.read_text().splitlines() if self.out.exists() else []


def free_port(kind: socket.SocketKind) -> int:
    with socket.socket(socket.AF_INET, kind) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def ready(daemon: Rsyslog) -> bool:
    """Every input takes messages: TCP accepts, the UNIX socket exists, and a probe datagram
    (sent again at each poll, as UDP gives no sign of a listener) was written out."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.sendto(b"<14>1 - - gpusentry - ready -", ("127.0.0.1", daemon.udp))
    try:
        socket.create_connection(("127.0.0.1", daemon.tcp), timeout=1).close()
    except OSError:
        return False
    return daemon.unix.exists() and any(" ready " in line for line in daemon.lines())


@pytest.fixture
def rsyslogd(root: None, tmp_path: Path) -> Iterator[Rsyslog]:
    binary = shutil.which("rsyslogd")
    assert binary is not None, "the syslog test needs rsyslogd: apt-get install -y rsyslog"
    daemon = Rsyslog(udp=free_port(socket.SOCK_DGRAM), tcp=free_port(socket.SOCK_STREAM),
                     unix=tmp_path / "log.sock", out=tmp_path / "received.log")
    config = tmp_path / "rsyslog.conf"
    config.write_text(CONFIG.format(work=tmp_path, udp=daemon.udp, tcp=daemon.tcp, unix=daemon.unix,
                                    out=daemon.out, template=TEMPLATE))
    stderr = tmp_path / "rsyslogd.stderr"
    with stderr.open("wb") as errors:
        process = subprocess.Popen([binary, "-n", "-f", str(config), "-i", str(tmp_path / "rsyslogd.pid")],
                                   stdout=errors, stderr=errors)
    try:
        wait_until(lambda: process.poll() is not None or ready(daemon), timeout=20, what="rsyslogd's inputs")
        assert process.poll() is None, f"rsyslogd exited: {stderr.read_text()}"
        yield daemon
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def alert() -> pb.Alert:
    message = pb.Alert(id="6f1c0e2a-1b7d-4d8e-9a55-0c2f3e4d5a6b", rule_id="ssh-reverse-tunnel",
                       severity=pb.SEVERITY_CRITICAL, title="Reverse SSH tunnel to 203.0.113.9 – “été”",
                       scope="tunnel", scope_key='tunnel:ssh-R:4242:"quoted"]\\', incident_id="b2d4-inc")
    message.time.FromNanoseconds(1_714_564_800_123_456_789)
    return message


def incident(first: pb.Alert) -> pb.Incident:
    message = pb.Incident(id="b2d4-inc", severity=pb.SEVERITY_CRITICAL, summary="a reverse tunnel",
                          rule_ids=[first.rule_id], scope_keys=[first.scope_key], alerts_total=1, host=HOST)
    message.alerts.append(first)
    message.first_seen.CopyFrom(first.time)
    message.last_seen.FromNanoseconds(1_714_564_801_000_000_000)
    return message


def expected_line(item: pb.Alert | pb.Incident, pri: int, sd: str, procid: str) -> str:
    stamp = {pb.Alert: "2024-05-01T12:00:00.123456Z", pb.Incident: "2024-05-01T12:00:01.000000Z"}[type(item)]
    kind = "alert" if isinstance(item, pb.Alert) else "incident"
    return f"{pri} {stamp} gpu-7 gpusentry {procid} {kind} {sd} \ufeff{json_line(item, HOST)}"


def deliver_through_a_worker(tmp_path: Path, address: str, items: list[pb.Alert | pb.Incident]) -> syslog.Delivery:
    """The sink's real worker reads the items from a real journal and sends them."""
    options = syslog.options(source.load(f"type: syslog\naddress: {address}\nfacility: local3\n"),
                             tmp_path / "config.yaml")
    journal = Journal(tmp_path / f"journal-{options.transport}.db")
    delivery = syslog.Delivery(options, HOST)
    # the records are from 2024: a horizon of a century keeps the worker from dropping them as stale
    spec = SinkSpec(type="syslog", name="siem", options=options, where="config.yaml:1", horizon_s=100 * 365 * 86400)
    sink = Sink(spec, delivery, journal, CursorFile(tmp_path / f"siem-{options.transport}.cursor"), HOST)
    sink.start()
    try:
        for item in items:
            item.cursor = journal.append(item) if isinstance(item, pb.Alert) else journal.append_incident(item)
        sink.wake()
        wait_until(lambda: sink.counters.sent == len(items), what=f"the worker to send over {address}")
        assert sink.counters.retried == 0, sink.counters.last_error
    finally:
        sink.stop()
        journal.close()
    return delivery


@pytest.mark.parametrize("transport", ["udp", "tcp", "unix"])
def test_rsyslog_receives_alert_and_incident_fields(rsyslogd: Rsyslog, tmp_path: Path, transport: str) -> None:
    address = {"udp": f"udp://127.0.0.1:{rsyslogd.udp}", "tcp": f"tcp://127.0.0.1:{rsyslogd.tcp}",
               "unix": f"unix://{rsyslogd.unix}"}[transport]
    first = alert()
    items: list[pb.Alert | pb.Incident] = [first, incident(first)]
    delivery = deliver_through_a_worker(tmp_path, address, items)
    procid = delivery.form.procid
    alert_sd = (f'[gpusentry@32473 type="alert" cursor="{first.cursor}" id="6f1c0e2a-1b7d-4d8e-9a55-0c2f3e4d5a6b" '
                'rule_id="ssh-reverse-tunnel" severity="critical" incident_id="b2d4-inc" '
                'scope_key="tunnel:ssh-R:4242:\\"quoted\\"\\]\\\\"]')
    incident_sd = (f'[gpusentry@32473 type="incident" cursor="{items[1].cursor}" id="b2d4-inc" severity="critical" '
                   'rule_ids="ssh-reverse-tunnel" scope_keys="tunnel:ssh-R:4242:\\"quoted\\"\\]\\\\" '
                   'alerts_total="1"]')
    # local3 (19): 19 * 8 + 2 (critical)
    expected = [expected_line(items[0], 154, alert_sd, procid), expected_line(items[1], 154, incident_sd, procid)]
    wait_until(lambda: [line for line in rsyslogd.lines() if " ready " not in line] == expected, timeout=15,
               what=f"rsyslog to write both records received over {transport}")


def test_a_long_record_over_udp_arrives_cut_by_the_sink_not_by_rsyslog(rsyslogd: Rsyslog, tmp_path: Path) -> None:
    long = alert()
    long.description = "x" * 20_000
    delivery = deliver_through_a_worker(tmp_path, f"udp://127.0.0.1:{rsyslogd.udp}", [long])
    marker = f"...[truncated: the record is {len(json_line(long, HOST).encode())} bytes]"
    line = wait_until(lambda: [ln for ln in rsyslogd.lines() if " alert " in ln], what="the long alert")[0]
    assert line.endswith(marker)
    sent = syslog.message(record(long, HOST), delivery.form)
    assert len(sent) == syslog.DEFAULT_MAX_DATAGRAM  # as long as rsyslog's default takes, and whole
    assert line.split("\ufeff", 1)[1] == sent.split(b"\xef\xbb\xbf", 1)[1].decode()

