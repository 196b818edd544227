"""The gRPC API over real gRPC, with an in-process server fed constructed events: filters,
invalid and malformed requests, resume from the journal, sensor gaps, incidents and facts, slow
subscribers, TLS and mTLS, limits, health and reflection, processes, alert and incident pages
and status.

Every alert is followed in the journal by a version of its incident, in the same cursor
sequence: an alert at cursor N has its incident at N + 1."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from sensor import events as ev
from sensor.aggregator.aggregator import Aggregator
from sensor.aggregator.detector import DetectorConfig
from sensor.api import convert
from sensor.api.client import sensor_stub
from sensor.api.handover import Handover
from sensor.api.publish import Publisher
from sensor.api.server import ApiServer, Endpoint
from sensor.api.state import ApiState
from sensor.api.v1 import gpusentry_pb2 as pb
from sensor.capture import StreamMeta
from sensor.errors import UsageError
from sensor.journal import Journal
from sensor.outward import this_host
from sensor.rules.loader import load_rules

SEC = 1_000_000_000
ROOT = Path(__file__).resolve().parents[2]
SITE_RULES = """rules:
  - id: marker
    title: Marker exec
    description: an exec of /bin/marker
    severity: low
    match: {fact: exec, where: {name: marker}}
  - id: loud-marker
    title: Loud marker exec
    description: an exec of /bin/loud
    severity: critical
    match: {fact: exec, where: {name: loud}}
"""
SEQUENCE_RULE = """  - id: marker-then-4444
    title: Marker, then port 4444
    description: a marker exec whose lineage connects to port 4444
    severity: high
    sequence:
      scope: lineage
      window: 30m
      steps: [{fact: exec, where: {name: marker}}, {fact: connect, where: {port: 4444}}]
"""
WALL = 1_700_000_000 * SEC  # the harness's boot-to-wall offset


@dataclass
class Harness:
    state: ApiState
    server: ApiServer
    publisher: Publisher
    socket: Path
    ts: int = SEC
    started: dict[int, int] | None = None

    def feed(self, *events: ev.Event) -> None:
        """Events through the aggregator and the publisher, as the agent does it."""
        for event in events:
            with self.state.lock:
                obs = self.state.aggregator.handle(event)
            alerts = [convert.alert(a, self.state.clock) for a in obs.alerts]
            self.publisher.publish(obs, alerts, self.state.incidents)

    def tick(self) -> int:
        self.ts += SEC // 10
        return self.ts

    def spawn(self, parent: int, pid: int, exe: str, *args: str, cgroup: int = 7) -> None:
        self.started = self.started or {}
        self.started[pid] = self.tick()
        argv = [exe.encode(), *(a.encode() for a in args)]
        self.feed(ev.Fork(self.ts, parent, parent, pid, parent, self.started[pid]),
                  ev.Exec(self.tick(), pid, pid, 0, parent, 0, 0, cgroup, self.started[pid], exe[-15:].encode(),
                          exe.encode(), argv, len(argv), 0, 0, 0, pid))

    def connect(self, pid: int, port: int) -> None:
        self.feed(ev.Connect(self.tick(), pid, pid, 3, 0, "inet", "203.0.113.5", port, route="egress"))

    def blind(self, cause: str) -> pb.SensorGap:
        """A sensor gap, journaled and published as the agent does it."""
        start = WALL + self.tick()
        gap = self.state.journal.append_gap(start, WALL + self.tick(), cause)
        self.publisher.publish_gap(gap)
        return gap

    def channel(self) -> grpc.Channel:
        return grpc.insecure_channel(f"unix:{self.socket}")


def make_harness(tmp_path: Path, endpoint: Endpoint | None = None, capacity: int = 65536,
                 max_subscribers: int = 64) -> Harness:
    rules_file = tmp_path / "site.yaml"
    rules_file.write_text(SITE_RULES + SEQUENCE_RULE)
    aggregator = Aggregator(rules=load_rules([rules_file]), config=DetectorConfig())
    socket = tmp_path / "sensor.sock"
    state = ApiState(aggregator, Journal(tmp_path / "journal.db"), Handover(capacity, max_subscribers),
                     StreamMeta(boot_to_wall_ns=1_700_000_000 * SEC))
    server = ApiServer(state, endpoint or Endpoint(socket=socket), max_subscribers)
    server.start()
    return Harness(state, server, Publisher(state), socket)


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Harness]:
    harness = make_harness(tmp_path)
    harness.spawn(1, 10, "/usr/bin/bash")
    yield harness
    harness.server.stop()
    harness.state.journal.close()


@dataclass
class Flat:
    """One item of a stream: an event or a fact (unbatched), an alert, an incident, a gap, a
    sensor gap or the subscription's first message; the others empty."""

    kind: str
    event: pb.Event = field(default_factory=pb.Event)
    fact: pb.Fact = field(default_factory=pb.Fact)
    alert: pb.Alert = field(default_factory=pb.Alert)
    incident: pb.Incident = field(default_factory=pb.Incident)
    gap: pb.Gap = field(default_factory=pb.Gap)
    sensor_gap: pb.SensorGap = field(default_factory=pb.SensorGap)
    subscribed: pb.Subscribed = field(default_factory=pb.Subscribed)

    def WhichOneof(self, _: str) -> str:
        return self.kind


def flatten(response: pb.SubscribeResponse) -> list[Flat]:
    item = response.WhichOneof("item")
    match item:
        case "events":
            return [Flat("event", event=e) for e in response.events.events]
        case "facts":
            return [Flat("fact", fact=f) for f in response.facts.facts]
        case "alert":
            return [Flat("alert", alert=response.alert)]
        case "incident":
            return [Flat("incident", incident=response.incident)]
        case "gap":
            return [Flat("gap", gap=response.gap)]
        case "sensor_gap":
            return [Flat("sensor_gap", sensor_gap=response.sensor_gap)]
        case "subscribed":
            return [Flat("subscribed", subscribed=response.subscribed)]
    raise AssertionError(f"a stream message with no item: {response}")


class Reader:
    """A subscription read on its own thread, so the test can publish meanwhile."""

    def __init__(self, stub: object, request: pb.SubscribeRequest) -> None:
        self.call = stub.Subscribe(request)  # type: ignore[attr-defined]
        self.subscribed: pb.Subscribed | None = None  # the stream's first message, kept apart from items
        self.items: list[Flat] = []
        self.error: grpc.RpcError | None = None
        self.done = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        try:
            for response in self.call:
                if self.subscribed is None:
                    assert response.WhichOneof("item") == "subscribed", f"the stream began with {response}"
                    self.subscribed = response.subscribed
                    continue
                self.items += flatten(response)
        except grpc.RpcError as exc:
            self.error = exc
        self.done.set()

    def until(self, condition: Callable[[Flat], bool], timeout: float = 10) -> list[Flat]:
        from tests.waiting import wait_until

        wait_until(lambda: any(condition(i) for i in self.items) or self.done.is_set(), timeout)
        index = next(n for n, i in enumerate(self.items) if condition(i))
        return self.items[: index + 1]

    def close(self) -> None:
        self.call.cancel()


def undefined(number: int) -> Any:
    """An enum number the enum does not define: proto3 keeps it, so a client can send it."""
    return number


def wait_subscribers(api: Harness, count: int) -> None:
    from tests.waiting import wait_until

    wait_until(lambda: api.state.broker.stats.subscribers == count, what=f"{count} subscribers")


def exec_argv(item: Flat) -> list[str]:
    return list(item.event.exec.argv) if item.WhichOneof("item") == "event" and item.event.HasField("exec") else []


def test_events_of_one_kind_only(api: Harness) -> None:
    reader = Reader(sensor_stub(api.channel()), pb.SubscribeRequest(events=True, event_kinds=[pb.EVENT_KIND_CONNECT]))
    wait_subscribers(api, 1)
    api.spawn(10, 11, "/usr/bin/curl", "https://example")
    api.connect(11, 443)
    api.connect(11, 8443)
    got = reader.until(lambda i: i.event.connect.port == 8443)
    assert [(i.event.kind, i.event.connect.address, i.event.connect.port, i.event.connect.destination)
            for i in got] == [(pb.EVENT_KIND_CONNECT, "203.0.113.5", 443, "egress"),
                              (pb.EVENT_KIND_CONNECT, "203.0.113.5", 8443, "egress")]
    assert got[0].event.process.pid == 11 and got[0].event.process.exe == "/usr/bin/curl"
    reader.close()


def test_alerts_by_rule_and_severity(api: Harness) -> None:
    stub = sensor_stub(api.channel())
    by_rule = Reader(stub, pb.SubscribeRequest(alerts=True, rule_ids=["marker"]))
    by_severity = Reader(stub, pb.SubscribeRequest(alerts=True, min_severity=pb.SEVERITY_HIGH))
    wait_subscribers(api, 2)
    api.spawn(10, 12, "/bin/loud")
    api.spawn(10, 13, "/bin/marker")
    api.spawn(10, 14, "/bin/loud", "fence")
    assert [(i.alert.rule_id, i.alert.processes[0].process.pid) for i in
            by_rule.until(lambda i: i.alert.rule_id == "marker")] == [("marker", 13)]
    assert [(i.alert.rule_id, i.alert.severity, i.alert.cursor) for i in
            by_severity.until(lambda i: i.alert.processes[0].process.pid == 14)] == [
        ("loud-marker", pb.SEVERITY_CRITICAL, 1), ("loud-marker", pb.SEVERITY_CRITICAL, 5)]


def test_process_filters(api: Harness) -> None:
    stub = sensor_stub(api.channel())
    api.spawn(10, 20, "/usr/bin/python3", "agent.py")
    agent = api.state.aggregator.table.by_pid(20)
    assert agent is not None
    below = Reader(stub, pb.SubscribeRequest(events=True, event_kinds=[pb.EVENT_KIND_EXEC],
                                             process=pb.ProcessFilter(ancestor_exec_id=agent.exec_id)))
    binary = Reader(stub, pb.SubscribeRequest(events=True, event_kinds=[pb.EVENT_KIND_EXEC],
                                              process=pb.ProcessFilter(binary="ssh")))
    cgroup = Reader(stub, pb.SubscribeRequest(events=True, event_kinds=[pb.EVENT_KIND_EXEC], cgroup_ids=[99]))
    wait_subscribers(api, 3)
    api.spawn(20, 21, "/usr/bin/ssh", "-V")  # below the agent
    api.spawn(10, 22, "/usr/bin/ssh", "other")  # not below it
    api.spawn(21, 23, "/bin/true", "grandchild", cgroup=99)
    api.spawn(10, 24, "/usr/bin/ssh", "fence", cgroup=99)
    assert [exec_argv(i) for i in below.until(lambda i: exec_argv(i)[-1:] == ["grandchild"])] == [
        ["/usr/bin/ssh", "-V"], ["/bin/true", "grandchild"]]
    assert [exec_argv(i) for i in binary.until(lambda i: exec_argv(i)[-1:] == ["fence"])] == [
        ["/usr/bin/ssh", "-V"], ["/usr/bin/ssh", "other"], ["/usr/bin/ssh", "fence"]]
    assert [exec_argv(i) for i in cgroup.until(lambda i: exec_argv(i)[-1:] == ["fence"])] == [
        ["/bin/true", "grandchild"], ["/usr/bin/ssh", "fence"]]


@pytest.mark.parametrize(("request_", "message"), [
    (pb.SubscribeRequest(), "events, alerts, incidents, facts: subscribe to at least one of them"),
    (pb.SubscribeRequest(events=True, event_kinds=[undefined(99)]), "event_kinds[0]: 99 is not an event kind"),
    (pb.SubscribeRequest(alerts=True, event_kinds=[pb.EVENT_KIND_EXEC]), "event_kinds: set events to true"),
    (pb.SubscribeRequest(alerts=True, rule_ids=["nope"]), "rule_ids[0]: no rule 'nope'"),
    (pb.SubscribeRequest(alerts=True, min_severity=undefined(42)), "min_severity: 42 is not a severity"),
    (pb.SubscribeRequest(events=True, since_cursor=3),
     "since_cursor: it replays journaled alerts and incidents; set alerts or incidents to true"),
    (pb.SubscribeRequest(facts=True, fact_kinds=[undefined(42)]), "fact_kinds[0]: 42 is not a fact kind"),
    (pb.SubscribeRequest(facts=True, fact_kinds=[pb.FACT_KIND_UNSPECIFIED]), "fact_kinds[0]: 0 is not a fact kind"),
    (pb.SubscribeRequest(alerts=True, fact_kinds=[pb.FACT_KIND_TUNNEL]), "fact_kinds: set facts to true"),
    (pb.SubscribeRequest(facts=True, fact_kinds=[pb.FACT_KIND_TUNNEL] * 65), "fact_kinds: at most 64 values"),
    (pb.SubscribeRequest(events=True, process=pb.ProcessFilter(exec_id="12")), "process.exec_id: '12' is not"),
    (pb.SubscribeRequest(events=True, cgroup_ids=list(range(65))), "cgroup_ids: at most 64 values, not 65"),
    (pb.SubscribeRequest(events=True, event_kinds=[undefined(-1)]), "event_kinds[0]: -1 is not an event kind"),
    (pb.SubscribeRequest(events=True, event_kinds=[pb.EVENT_KIND_EXEC] * 65), "event_kinds: at most 64 values"),
    (pb.SubscribeRequest(alerts=True, rule_ids=["marker"] * 65), "rule_ids: at most 64 values, not 65"),
    (pb.SubscribeRequest(alerts=True, rule_ids=["marker", "x" * 5000]),
     "rule_ids[1]: 5000 characters; a rule id has at most 80"),
    (pb.SubscribeRequest(alerts=True, min_severity=undefined(-3)), "min_severity: -3 is not a severity"),
    (pb.SubscribeRequest(alerts=True, since_cursor=2**64 - 1),
     "since_cursor: 18446744073709551615 is past the largest cursor (2^63-1)"),
    (pb.SubscribeRequest(alerts=True, since_cursor=2**63), "since_cursor: 9223372036854775808 is past the largest"),
    (pb.SubscribeRequest(events=True, process=pb.ProcessFilter(exec_id="1:2:3\n")),
     "process.exec_id: '1:2:3\\n' is not an exec id (pid:start_ns:execs)"),
    (pb.SubscribeRequest(events=True, process=pb.ProcessFilter(exec_id="\u0663:1:1")),
     "process.exec_id: '\\u0663:1:1' is not an exec id"),
    (pb.SubscribeRequest(events=True, process=pb.ProcessFilter(ancestor_exec_id="0:5:1")),
     "process.ancestor_exec_id (its pid): 0 is not a process id (they run from 1 to 4194304)"),
    (pb.SubscribeRequest(events=True, process=pb.ProcessFilter(exec_id="4194305:5:1")),
     "process.exec_id (its pid): 4194305 is above the kernel's PID_MAX_LIMIT (4194304)"),
    (pb.SubscribeRequest(events=True, process=pb.ProcessFilter(binary="b" * 4097)),
     "process.binary: longer than 4096 characters"),
])
def test_bad_filters_are_invalid_argument(api: Harness, request_: pb.SubscribeRequest, message: str) -> None:
    with pytest.raises(grpc.RpcError) as info:
        next(iter(sensor_stub(api.channel()).Subscribe(request_)))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details().startswith(message)


def stamp(seconds: int, nanos: int = 0) -> Timestamp:
    return Timestamp(seconds=seconds, nanos=nanos)


@pytest.mark.parametrize(("request_", "code", "message"), [
    (pb.ListAlertsRequest(after_cursor=2**64 - 1), grpc.StatusCode.INVALID_ARGUMENT,
     "after_cursor: 18446744073709551615 is past the largest cursor (2^63-1)"),
    (pb.ListAlertsRequest(after_cursor=2**63), grpc.StatusCode.INVALID_ARGUMENT,
     "after_cursor: 9223372036854775808 is past the largest cursor (2^63-1)"),
    (pb.ListAlertsRequest(after_cursor=2**63 - 1), grpc.StatusCode.OUT_OF_RANGE,
     "after_cursor: 9223372036854775807 is past the journal's end (2); if the journal was replaced, page it "
     "again from 0"),
    (pb.ListAlertsRequest(page_size=2**32 - 1), grpc.StatusCode.INVALID_ARGUMENT,
     "page_size: at most 1000, not 4294967295"),
    (pb.ListAlertsRequest(rule_ids=["nope"]), grpc.StatusCode.INVALID_ARGUMENT, "rule_ids[0]: no rule 'nope'"),
    (pb.ListAlertsRequest(rule_ids=["marker"] * 65), grpc.StatusCode.INVALID_ARGUMENT,
     "rule_ids: at most 64 values, not 65"),
    (pb.ListAlertsRequest(rule_ids=["\u00e9" * 81]), grpc.StatusCode.INVALID_ARGUMENT,
     "rule_ids[0]: 81 characters; a rule id has at most 80"),
    (pb.ListAlertsRequest(min_severity=undefined(6)), grpc.StatusCode.INVALID_ARGUMENT,
     "min_severity: 6 is not a severity"),
    (pb.ListAlertsRequest(since=stamp(253_402_300_800)), grpc.StatusCode.INVALID_ARGUMENT,
     "since: seconds 253402300800 is outside google.protobuf.Timestamp's range (0001-01-01 to 9999-12-31)"),
    (pb.ListAlertsRequest(until=stamp(-62_135_596_801)), grpc.StatusCode.INVALID_ARGUMENT,
     "until: seconds -62135596801 is outside google.protobuf.Timestamp's range"),
    (pb.ListAlertsRequest(since=stamp(0, -1)), grpc.StatusCode.INVALID_ARGUMENT,
     "since: nanos -1 is outside 0 to 999999999"),
    (pb.ListAlertsRequest(until=stamp(0, 1_000_000_000)), grpc.StatusCode.INVALID_ARGUMENT,
     "until: nanos 1000000000 is outside 0 to 999999999"),
    (pb.ListAlertsRequest(until=stamp(253_402_300_799, 999_999_999)), grpc.StatusCode.INVALID_ARGUMENT,
     "until: 9999-12-31T23:59:59.999999999Z is outside the times this server compares (int64 nanoseconds: "
     "1677-09-21 to 2262-04-11)"),
    (pb.ListAlertsRequest(since=stamp(-9_223_372_037)), grpc.StatusCode.INVALID_ARGUMENT,
     "since: 1677-09-21T00:12:43Z is outside the times this server compares"),
    (pb.ListAlertsRequest(since=stamp(2_000_000_000), until=stamp(1_999_999_999, 999_999_999)),
     grpc.StatusCode.INVALID_ARGUMENT, "since: 2033-05-18T03:33:20Z is after until (2033-05-18T03:33:19.999999999Z)"),
])
def test_bad_alert_pages_are_refused(api: Harness, request_: pb.ListAlertsRequest, code: grpc.StatusCode,
                                     message: str) -> None:
    api.spawn(10, 11, "/bin/marker")  # the journal ends at cursor 2: the alert, then its incident
    with pytest.raises(grpc.RpcError) as info:
        sensor_stub(api.channel()).ListAlerts(request_)
    assert info.value.code() == code
    assert info.value.details().startswith(message)


def test_the_widest_times_the_journal_compares_are_accepted(api: Harness) -> None:
    api.spawn(10, 11, "/bin/marker")
    page = sensor_stub(api.channel()).ListAlerts(pb.ListAlertsRequest(
        since=stamp(-9_223_372_036, 854_775_808), until=stamp(9_223_372_036, 854_775_807)))  # int64 ns, both ends
    assert [a.cursor for a in page.alerts] == [1]
    at_epoch = sensor_stub(api.channel()).ListAlerts(pb.ListAlertsRequest(until=stamp(0)))
    assert list(at_epoch.alerts) == []  # until 1970-01-01 is a bound, not "no bound"


@pytest.mark.parametrize(("request_", "message"), [
    (pb.GetProcessRequest(), "key: give exec_id or pid"),
    (pb.GetProcessRequest(pid=0), "pid: 0 is not a process id (they run from 1 to 4194304)"),
    (pb.GetProcessRequest(pid=4_194_305), "pid: 4194305 is above the kernel's PID_MAX_LIMIT (4194304)"),
    (pb.GetProcessRequest(pid=2**32 - 1), "pid: 4294967295 is above the kernel's PID_MAX_LIMIT (4194304)"),
    (pb.GetProcessRequest(exec_id=""), "exec_id: '' is not an exec id (pid:start_ns:execs)"),
    (pb.GetProcessRequest(exec_id="x; DROP TABLE"), "exec_id: 'x; DROP TABLE' is not an exec id"),
    (pb.GetProcessRequest(exec_id="1:2:3:4"), "exec_id: '1:2:3:4' is not an exec id"),
    (pb.GetProcessRequest(exec_id="12345678:1:1"), "exec_id: '12345678:1:1' is not an exec id"),
    (pb.GetProcessRequest(exec_id="\u00b2:1:1"), "exec_id: '\\xb2:1:1' is not an exec id"),
    (pb.GetProcessRequest(exec_id="0:1:1"), "exec_id (its pid): 0 is not a process id"),
    (pb.GetProcessRequest(exec_id="9" * 5000), "exec_id: '" + "9" * 80 + "'... is not an exec id"),
])
def test_bad_process_keys_are_invalid_argument(api: Harness, request_: pb.GetProcessRequest, message: str) -> None:
    with pytest.raises(grpc.RpcError) as info:
        sensor_stub(api.channel()).GetProcess(request_)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details().startswith(message)


def unknown_field(number: int, value: int = 1) -> bytes:
    """A varint field that gpusentry.v1 does not define: what a newer client might send."""
    return _varint(number << 3) + _varint(value)


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    return bytes([*out, value])


def raw_call(api: Harness, method: str, data: bytes) -> grpc.RpcError:
    """Bytes sent as they are to a method; the error it ends with (the first message, for Subscribe)."""
    path = f"/gpusentry.v1.Sensor/{method}"
    channel = api.channel()
    with pytest.raises(grpc.RpcError) as info:
        if method == "Subscribe":
            next(iter(channel.unary_stream(path)(data, timeout=10)))
        else:
            channel.unary_unary(path)(data, timeout=10)
    return info.value


@pytest.mark.parametrize(("method", "data", "message"), [
    ("GetStatus", unknown_field(1),
     "request: field number 1 is not a field of gpusentry.v1.GetStatusRequest that this server knows "
     "(a newer client's?); refused rather than ignored"),
    ("ListAlerts", pb.ListAlertsRequest(page_size=5).SerializeToString() + unknown_field(7, 3),
     "request: field number 7 is not a field of gpusentry.v1.ListAlertsRequest"),
    ("Subscribe", pb.SubscribeRequest(alerts=True).SerializeToString() + unknown_field(99),
     "request: field number 99 is not a field of gpusentry.v1.SubscribeRequest"),
    ("Subscribe", pb.SubscribeRequest(alerts=True).SerializeToString() + b"\x32\x02" + unknown_field(4),
     "process: field number 4 is not a field of gpusentry.v1.ProcessFilter"),
    ("ListAlerts", b"\x2a\x02" + unknown_field(3), "since: field number 3 is not a field of google.protobuf.Timestamp"),
    ("GetProcess", pb.GetProcessRequest(pid=1).SerializeToString() + unknown_field(3),
     "request: field number 3 is not a field of gpusentry.v1.GetProcessRequest"),
    ("ListIncidents", pb.ListIncidentsRequest(page_size=5).SerializeToString() + unknown_field(7),
     "request: field number 7 is not a field of gpusentry.v1.ListIncidentsRequest"),
])
def test_a_field_this_server_does_not_know_is_refused(api: Harness, method: str, data: bytes, message: str) -> None:
    error = raw_call(api, method, data)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details().startswith(message)


def _damaged() -> list[tuple[str, str, bytes]]:
    """(method, request type, bytes that are not that request) for every method."""
    methods = {"Subscribe": ("SubscribeRequest", 4), "ListAlerts": ("ListAlertsRequest", 3),
               "GetProcess": ("GetProcessRequest", 1), "GetStatus": ("GetStatusRequest", None),
               "ListIncidents": ("ListIncidentsRequest", 6)}
    cases = []
    for method, (message_type, string_field) in methods.items():
        cases += [(method, message_type, b"\xff\xff\xff"),  # a tag with no end
                  (method, message_type, b"\x0a\x05ab"),  # a length past the end
                  (method, message_type, b"\x0b")]  # a group with no end
        if string_field is not None:  # a string field holding invalid UTF-8
            cases.append((method, message_type, _varint(string_field << 3 | 2) + b"\x02\xc3\x28"))
    return cases


@pytest.mark.parametrize(("method", "message_type", "data"), _damaged())
def test_bytes_that_are_no_request_are_invalid_argument(api: Harness, method: str, message_type: str,
                                                        data: bytes) -> None:
    error = raw_call(api, method, data)
    assert (error.code(), error.details()) == (grpc.StatusCode.INVALID_ARGUMENT,
                                               f"request: not a valid gpusentry.v1.{message_type} message")


def test_every_stream_begins_with_subscribed(api: Harness) -> None:
    stub = sensor_stub(api.channel())
    api.spawn(10, 11, "/bin/marker")  # alert 1, incident 2
    api.spawn(10, 12, "/bin/marker")  # alert 3, incident 4
    live = Reader(stub, pb.SubscribeRequest(events=True))
    resumed = Reader(stub, pb.SubscribeRequest(alerts=True, since_cursor=1))
    wait_subscribers(api, 2)
    api.spawn(10, 13, "/bin/marker")  # alert 5
    assert [i.alert.cursor for i in resumed.until(lambda i: i.alert.cursor == 5)] == [3, 5]
    assert live.subscribed == pb.Subscribed(journal_last_cursor=4)
    assert resumed.subscribed == pb.Subscribed(journal_last_cursor=4, replay_after_cursor=1)
    for reader in (live, resumed):
        reader.close()


def test_a_cursor_past_the_journals_end_resumes_from_now(api: Harness) -> None:
    """A client's cursor from a journal that was moved aside: it must not hide new alerts."""
    api.spawn(10, 11, "/bin/marker")
    stub = sensor_stub(api.channel())
    stale = Reader(stub, pb.SubscribeRequest(alerts=True, since_cursor=1_000_000))
    other = Reader(stub, pb.SubscribeRequest(alerts=True))
    wait_subscribers(api, 2)
    api.spawn(10, 12, "/bin/marker", "live")
    assert [(i.alert.cursor, i.alert.processes[0].process.pid)
            for i in stale.until(lambda i: i.alert.cursor == 3)] == [(3, 12)]
    assert [i.alert.cursor for i in other.until(lambda i: i.alert.cursor == 3)] == [3]
    assert stale.subscribed == pb.Subscribed(
        journal_last_cursor=2, replay_after_cursor=2,
        note="since_cursor: 1000000 is past the journal's end (2): this journal is not the one that cursor came from "
             "(was it replaced?); the stream continues from now")
    for reader in (stale, other):
        reader.close()


def test_resume_replays_missed_alerts_in_order_once(api: Harness) -> None:
    stub = sensor_stub(api.channel())
    first = Reader(stub, pb.SubscribeRequest(alerts=True))
    wait_subscribers(api, 1)
    api.spawn(10, 30, "/bin/marker", "one")
    api.spawn(10, 31, "/bin/marker", "two")
    seen = first.until(lambda i: i.alert.processes[0].process.pid == 31)
    cursor = seen[-1].alert.cursor
    first.close()
    wait_subscribers(api, 0)
    for pid in (32, 33, 34):  # raised while the client is away
        api.spawn(10, pid, "/bin/marker", "away")
    again = Reader(stub, pb.SubscribeRequest(alerts=True, since_cursor=cursor))
    wait_subscribers(api, 1)
    api.spawn(10, 35, "/bin/marker", "live")
    got = again.until(lambda i: i.alert.processes[0].process.pid == 35)
    assert [(i.alert.cursor, i.alert.processes[0].process.pid) for i in got] == [
        (cursor + 2, 32), (cursor + 4, 33), (cursor + 6, 34), (cursor + 8, 35)]  # each after its incident


def test_sensor_gaps_reach_every_alert_subscriber_in_cursor_order(api: Harness) -> None:
    stub = sensor_stub(api.channel())
    subscribers = {
        "all": Reader(stub, pb.SubscribeRequest(alerts=True)),
        "one rule": Reader(stub, pb.SubscribeRequest(alerts=True, rule_ids=["loud-marker"])),
        "high": Reader(stub, pb.SubscribeRequest(alerts=True, min_severity=pb.SEVERITY_CRITICAL)),
        "one binary": Reader(stub, pb.SubscribeRequest(alerts=True, process=pb.ProcessFilter(binary="nothing"))),
    }
    events_only = Reader(stub, pb.SubscribeRequest(events=True, event_kinds=[pb.EVENT_KIND_EXEC]))
    wait_subscribers(api, 5)
    api.spawn(10, 11, "/bin/marker")  # alert 1, incident 2
    gap = api.blind("the probe (pid 4242) died: its frame stream ended without the probe's final frame")
    api.spawn(10, 12, "/bin/loud")  # alert 4, incident 5
    assert (gap.cursor, gap.end.ToNanoseconds() - gap.start.ToNanoseconds()) == (3, SEC // 10)

    def records(items: list[Flat]) -> list[tuple[str, int]]:
        return [(i.kind, i.alert.cursor or i.sensor_gap.cursor) for i in items if i.kind != "event"]

    assert records(subscribers["all"].until(lambda i: i.alert.cursor == 4)) == [
        ("alert", 1), ("sensor_gap", 3), ("alert", 4)]
    assert records(subscribers["one rule"].until(lambda i: i.alert.cursor == 4)) == [
        ("sensor_gap", 3), ("alert", 4)]
    assert records(subscribers["high"].until(lambda i: i.alert.cursor == 4)) == [("sensor_gap", 3), ("alert", 4)]
    assert records(subscribers["one binary"].until(lambda i: i.kind == "sensor_gap")) == [("sensor_gap", 3)]
    received = subscribers["all"].items[1].sensor_gap
    assert received == gap and received.cause == gap.cause
    argv = [exec_argv(i) for i in events_only.until(lambda i: exec_argv(i) == ["/bin/loud"])]
    assert argv == [["/bin/marker"], ["/bin/loud"]]  # events only: no journal records
    for reader in (*subscribers.values(), events_only):
        reader.close()


def test_sensor_gaps_are_replayed_with_alerts_from_the_journal(api: Harness) -> None:
    api.spawn(10, 11, "/bin/marker")
    gap = api.blind("the agent was not running: stopped by SIGTERM")
    api.spawn(10, 12, "/bin/loud")
    resumed = Reader(sensor_stub(api.channel()), pb.SubscribeRequest(alerts=True, rule_ids=["loud-marker"],
                                                                    since_cursor=0))
    wait_subscribers(api, 1)
    later = api.blind("the probe (pid 7) died")
    got = resumed.until(lambda i: i.sensor_gap.cursor == later.cursor)
    assert [(i.kind, i.alert.cursor or i.sensor_gap.cursor) for i in got] == [
        ("sensor_gap", 3), ("alert", 4), ("sensor_gap", 6)]
    assert got[0].sensor_gap == gap and got[2].sensor_gap == later
    resumed.close()


def test_alert_pages_carry_every_sensor_gap_in_their_range(api: Harness) -> None:
    api.spawn(10, 11, "/bin/marker")  # 1 (its incident 2)
    first = api.blind("first")  # 3
    api.spawn(10, 12, "/bin/loud")  # 4 (5)
    api.spawn(10, 13, "/bin/marker")  # 6 (7)
    second = api.blind("second")  # 8
    api.spawn(10, 14, "/bin/loud")  # 9 (10)
    stub = sensor_stub(api.channel())
    pages = []
    after = 0
    while True:
        page = stub.ListAlerts(pb.ListAlertsRequest(page_size=2, after_cursor=after, rule_ids=["loud-marker"],
                                                    since=stamp(0), until=stamp(1)))  # times no alert has
        pages.append(([a.cursor for a in page.alerts], [g.cursor for g in page.sensor_gaps], page.next_cursor))
        if not page.next_cursor:
            break
        after = page.next_cursor
    assert pages == [([], [3, 8], 8), ([], [], 0)]  # the filters hide every alert, never a gap; no incident
    pages = []
    after = 0
    while True:
        page = stub.ListAlerts(pb.ListAlertsRequest(page_size=2, after_cursor=after, rule_ids=["loud-marker"]))
        pages.append(([a.cursor for a in page.alerts], [g.cursor for g in page.sensor_gaps], page.next_cursor))
        if not page.next_cursor:
            break
        after = page.next_cursor
    assert pages == [([4], [3], 4), ([9], [8], 9), ([], [], 0)]
    assert list(stub.ListAlerts(pb.ListAlertsRequest(after_cursor=4)).sensor_gaps) == [second]
    assert stub.ListAlerts(pb.ListAlertsRequest()).sensor_gaps[0] == first
    status = stub.GetStatus(pb.GetStatusRequest())
    assert (status.journal_alerts, status.sensor_gaps, status.incidents, status.last_cursor) == (4, 2, 4, 10)


def test_slow_subscriber_gets_a_gap_and_its_alerts_back(tmp_path: Path) -> None:
    api = make_harness(tmp_path, capacity=64)
    try:
        api.spawn(1, 10, "/usr/bin/bash")
        # a client that takes no more than the default window while it reads nothing (the API's
        # process is fast enough to fill a window grown by bandwidth probing)
        channel = grpc.insecure_channel(f"unix:{api.socket}", options=[("grpc.http2.bdp_probe", 0)])
        call = sensor_stub(channel).Subscribe(pb.SubscribeRequest(events=True, alerts=True))
        stream = iter(call)
        wait_subscribers(api, 1)
        api.spawn(10, 40, "/bin/marker", "before")
        for i in range(3000):  # far more than the ring holds, while the client reads nothing
            api.connect(40, 1000 + i % 50)
        api.spawn(10, 41, "/bin/marker", "during")
        api.blind("the probe (pid 4242) died")
        for i in range(3000):
            api.connect(40, 2000 + i % 50)
        api.spawn(10, 42, "/bin/marker", "fence")
        items: list[Flat] = []
        for response in stream:
            items += flatten(response)
            if items[-1].kind == "alert" and items[-1].alert.processes[0].process.pid == 42:
                break
        call.cancel()
        gaps = [i.gap for i in items if i.WhichOneof("item") == "gap"]
        assert gaps and sum(g.missed_events for g in gaps) > 0
        assert gaps[0].reason.startswith("this subscriber fell behind")
        records = [(i.kind, i.alert.cursor or i.sensor_gap.cursor) for i in items if i.kind in ("alert", "sensor_gap")]
        # every alert and sensor gap, in order, once, despite the gaps
        assert records == [("alert", 1), ("alert", 3), ("sensor_gap", 5), ("alert", 6)]
        assert sum(g.missed_sensor_gaps for g in gaps) <= 1  # lost from the ring in most runs, then replayed
        delivered = sum(1 for i in items if i.WhichOneof("item") == "event")
        missed = sum(g.missed_events for g in gaps)
        published = api.state.broker.stats.published_events
        assert delivered + missed <= published
        # the sensor itself lost nothing: its counters show no drop anywhere
        assert api.state.aggregator.counters.kernel_drops == {} and api.state.aggregator.counters.probe_drops == {}
        stats = api.state.broker.stats
        assert (stats.published_alerts, stats.published_sensor_gaps, stats.published_incidents) == (3, 1, 3)
    finally:
        api.server.stop()


def test_a_subscriber_behind_is_told_what_kinds_of_item_it_missed() -> None:
    from sensor.api.broker import ALERT, EVENT, FACT, INCIDENT, SENSOR_GAP, Broker, Entry
    from sensor.api.filters import parse

    broker = Broker(capacity=4)
    subscriber = broker.subscribe(parse(pb.SubscribeRequest(events=True, alerts=True), ()))
    broker.publish([Entry(EVENT), Entry(ALERT, cursor=1), Entry(INCIDENT, cursor=2), Entry(SENSOR_GAP, cursor=3),
                    Entry(FACT), Entry(FACT), Entry(EVENT)])
    broker.publish([Entry(EVENT) for _ in range(4)])  # the first seven fall out of the ring
    behind, items = broker.take(subscriber)
    assert behind is not None
    assert (behind.missed_events, behind.missed_alerts, behind.missed_sensor_gaps, behind.missed_incidents,
            behind.missed_facts, len(items)) == (2, 1, 1, 1, 2, 4)
    assert (subscriber.missed, broker.stats.missed) == (7, {str(subscriber.id): 7})


def test_journaled_records_reach_the_broker_in_cursor_order_or_not_at_all() -> None:
    """A record published after a later one would be skipped by every subscriber that saw the later one."""
    from sensor.api.handover import Item

    broker = Handover()
    broker.journaled_before(5)
    with pytest.raises(ValueError, match=r"^journal record 5 published after record 5: "):
        broker.publish([Item(sensor_gap=pb.SensorGap(cursor=5))])
    broker.publish([Item(alert=pb.Alert(cursor=6)), Item(incident=pb.Incident(cursor=7)), Item(event=pb.Event())])
    with pytest.raises(ValueError, match=r"^journal record 7 published after record 8: "):
        broker.publish([Item(alert=pb.Alert(cursor=8)), Item(incident=pb.Incident(cursor=7))])
    with pytest.raises(ValueError, match=r"^journal record 6 published after record 7: "):
        broker.publish([Item(sensor_gap=pb.SensorGap(cursor=6))])


def test_subscriber_limit(tmp_path: Path) -> None:
    from tests.waiting import wait_until

    api = make_harness(tmp_path, max_subscribers=2)
    try:
        stub = sensor_stub(api.channel())
        readers = [Reader(stub, pb.SubscribeRequest(alerts=True)) for _ in range(2)]
        wait_subscribers(api, 2)
        with pytest.raises(grpc.RpcError) as info:
            next(iter(stub.Subscribe(pb.SubscribeRequest(alerts=True))))
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert info.value.details() == ("the sensor already has 2 subscribers; try again later, or start the "
                                        "agent with a higher --max-subscribers")
        # counted in the API's stream process, and reported to the aggregator's GetStatus soon after
        wait_until(lambda: _status(api.channel()).drops[-1].count == 1, what="the refusal counted")
        assert api.state.broker.stats.refused == 1
        for reader in readers:
            reader.close()
    finally:
        api.server.stop()


def test_oversized_request_is_refused(api: Harness) -> None:
    huge = pb.SubscribeRequest(events=True, process=pb.ProcessFilter(binary="x" * 100_000))
    with pytest.raises(grpc.RpcError) as info:
        next(iter(sensor_stub(api.channel()).Subscribe(huge)))
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_socket_is_not_open_to_everyone(api: Harness) -> None:
    assert os.stat(api.socket).st_mode & 0o777 == 0o660


def test_health_and_reflection(api: Harness) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

    channel = api.channel()
    health = health_pb2_grpc.HealthStub(channel)
    assert health.Check(health_pb2.HealthCheckRequest(service="gpusentry.v1.Sensor")).status == \
        health_pb2.HealthCheckResponse.SERVING
    services = set(ProtoReflectionDescriptorDatabase(channel).get_services())
    assert {"gpusentry.v1.Sensor", "grpc.health.v1.Health"} <= services
    described = ProtoReflectionDescriptorDatabase(channel).FindFileContainingSymbol("gpusentry.v1.Sensor")
    assert (described.name, described.package) == ("sensor/api/v1/gpusentry.proto", "gpusentry.v1")
    assert [m.name for m in described.service[0].method] == [
        "Subscribe", "ListAlerts", "GetProcess", "GetStatus", "ListIncidents"]


def test_get_process_and_status(api: Harness) -> None:
    stub = sensor_stub(api.channel())
    api.spawn(10, 50, "/usr/bin/python3", "job.py")
    api.spawn(50, 51, "/bin/marker")
    job = stub.GetProcess(pb.GetProcessRequest(pid=50))
    assert (job.process.pid, job.process.exe, list(job.process.argv)) == (50, "/usr/bin/python3",
                                                                          ["/usr/bin/python3", "job.py"])
    assert [p.pid for p in job.ancestors] == [10] and [c.pid for c in job.children] == [51]
    same = stub.GetProcess(pb.GetProcessRequest(exec_id=job.process.exec_id))
    assert same.process.exec_id == job.process.exec_id
    with pytest.raises(grpc.RpcError) as info:
        stub.GetProcess(pb.GetProcessRequest(pid=999_999))
    assert (info.value.code(), info.value.details()) == (grpc.StatusCode.NOT_FOUND,
                                                         "pid: no process with pid 999999 is known")
    with pytest.raises(grpc.RpcError) as info:
        stub.GetProcess(pb.GetProcessRequest(exec_id="x; DROP TABLE"))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    status = stub.GetStatus(pb.GetStatusRequest())
    assert status.events_by_kind["exec"] >= 3 and status.last_cursor == 2 and status.journal_alerts == 1
    assert (status.sensor_gaps, status.incidents, status.host) == (0, 1, this_host())
    assert {d.hop for d in status.drops} == {"kernel", "aggregator", "rules", "subscribers"}
    assert all(d.count == 0 for d in status.drops)
    assert {r.id: r.alerts for r in status.rules.rules}["marker"] == 1


def test_status_shows_the_verdicts_the_probe_could_not_make(api: Harness) -> None:
    api.feed(ev.Stats(api.tick(), 1, 1, verdicts_missed={"route_by_range": 3, "binary_unread": 1}))
    drops = sensor_stub(api.channel()).GetStatus(pb.GetStatusRequest()).drops
    assert [(d.hop, d.what, d.count) for d in drops if d.hop == "probe"] == [
        ("probe", "execs whose binary could not be read to identify it (process and file gone)", 1),
        ("probe", "connections judged by address ranges (their namespace's routing table could not be read)", 3)]


def test_status_shows_containers_forgotten_at_the_tables_cap(api: Harness) -> None:
    api.state.aggregator.containers.max_containers = 1
    for key in ("podman:a", "podman:b", "podman:c"):
        api.feed(ev.Container(api.tick(), 1, 1, key=key, runtime="podman", id=key[7:]))
    drops = sensor_stub(api.channel()).GetStatus(pb.GetStatusRequest()).drops
    assert [(d.hop, d.count) for d in drops if d.what == "containers forgotten at the table's cap"] == [
        ("aggregator", 2)]


def test_status_shows_the_kernels_uncounted_socket_bytes_and_gpu_memory(api: Harness) -> None:
    """The kernel's map-full counters, carried by the probe's frames, reach GetStatus (and the live
    view, which shows its drops)."""
    api.feed(ev.SockBytes(api.tick(), 1, 1, [], not_counted=7, closed_lost=2))
    api.feed(ev.GpuCounters(api.tick(), 1, 1, memory_overflow=5))
    drops = sensor_stub(api.channel()).GetStatus(pb.GetStatusRequest()).drops
    assert {(d.hop, d.what): d.count for d in drops if d.hop == "kernel"} == {
        ("kernel", "GPU records held back by a process's budget (still counted)"): 0,
        ("kernel", "GPU ioctls not counted (map full)"): 0,
        ("kernel", "GPU memory allocations not summed (map full)"): 5,
        ("kernel", "TCP sends and receives not counted (map full)"): 7,
        ("kernel", "closed sockets' byte counts lost before read"): 2}


def test_status_counts_partial_matches_a_reload_discards(api: Harness, tmp_path: Path) -> None:
    api.spawn(10, 70, "/bin/marker")  # the first step of marker-then-4444: a partial match opens
    detector = api.state.aggregator.detector
    assert detector is not None and detector.engine.stats.partials == 1
    changed = tmp_path / "changed.yaml"
    changed.write_text(SITE_RULES + SEQUENCE_RULE.replace("port: 4444", "port: 5555"))
    with api.state.lock:
        detector.reload(load_rules([changed]))
    drops = sensor_stub(api.channel()).GetStatus(pb.GetStatusRequest()).drops
    assert [(d.hop, d.count) for d in drops
            if d.what == "partial sequence matches discarded by a rules reload (changed or removed rules)"] == [
        ("rules", 1)]


def test_list_alerts_in_pages(api: Harness) -> None:
    for pid in range(60, 65):
        api.spawn(10, pid, "/bin/marker")
    stub = sensor_stub(api.channel())
    first = stub.ListAlerts(pb.ListAlertsRequest(page_size=2))
    second = stub.ListAlerts(pb.ListAlertsRequest(page_size=2, after_cursor=first.next_cursor))
    last = stub.ListAlerts(pb.ListAlertsRequest(page_size=2, after_cursor=second.next_cursor))
    assert [a.cursor for a in (*first.alerts, *second.alerts, *last.alerts)] == [1, 3, 5, 7, 9]  # no incident
    assert last.next_cursor == 0
    with pytest.raises(grpc.RpcError) as info:
        stub.ListAlerts(pb.ListAlertsRequest(page_size=5000))
    assert (info.value.code(), info.value.details()) == (grpc.StatusCode.INVALID_ARGUMENT,
                                                         "page_size: at most 1000, not 5000")


# -- incidents and facts -------------------------------------------------------------------


def three_incidents_then_a_merge(api: Harness) -> dict[str, str]:
    """Markers 20 and 22 and a loud 21 (children of one shell, each its own command) start three
    incidents; then 20 connects to port 4444, which raises marker-then-4444 over 22's exec and
    20's connect (one shell's lineage) and miner-pool-connection (a pool port), and so joins
    22's incident to 20's, the older. Cursors: alerts 1, 3, 5, 7, 8; incident versions 2, 4, 6, 9.
    The incident ids, by name: a (20's), b (21's), c (22's, merged into a)."""
    api.spawn(10, 20, "/bin/marker")
    api.spawn(10, 21, "/bin/loud")
    api.spawn(10, 22, "/bin/marker")
    api.connect(20, 4444)
    first: dict[int, str] = {}  # the incident each process's first alert was journaled with
    for alert in api.state.journal.read():
        first.setdefault(alert.processes[0].process.pid, alert.incident_id)
    return {"a": first[20], "b": first[21], "c": first[22]}


def test_incidents_are_listed_each_in_its_latest_version(api: Harness) -> None:
    ids = three_incidents_then_a_merge(api)
    stub = sensor_stub(api.channel())
    listed = stub.ListIncidents(pb.ListIncidentsRequest())
    assert [(i.id, i.cursor, i.alerts_total) for i in listed.incidents] == [(ids["b"], 4, 1), (ids["a"], 9, 4)]
    assert listed.next_cursor == 0
    merged = listed.incidents[1]
    assert list(merged.rule_ids) == ["marker", "marker-then-4444", "miner-pool-connection"]
    assert merged.severity == pb.SEVERITY_CRITICAL
    assert [(a.cursor, a.incident_id) for a in merged.alerts] == [(1, ids["a"]), (5, ids["a"]), (7, ids["a"]),
                                                                 (8, ids["a"])]
    assert [p.process.pid for p in merged.processes] == [20, 22]
    assert merged.summary == ("A connection to 203.0.113.5:4444 (miner pool) by pid 20; 4 alerts from 3 rules, "
                              "highest critical.")
    assert merged.host == api.state.incidents.host

    pages, after = [], 0
    while True:
        page = stub.ListIncidents(pb.ListIncidentsRequest(page_size=1, after_cursor=after))
        pages.append(([i.cursor for i in page.incidents], page.next_cursor))
        if not page.next_cursor:
            break
        after = page.next_cursor
    assert pages == [([4], 4), ([9], 9), ([], 0)]

    def cursors(**request: Any) -> list[int]:
        return [i.cursor for i in stub.ListIncidents(pb.ListIncidentsRequest(**request)).incidents]

    assert cursors(id=ids["a"]) == [9] and cursors(id=ids["a"].upper()) == [9]
    assert cursors(id=ids["c"]) == []  # merged into a: listed there
    assert cursors(min_severity=pb.SEVERITY_CRITICAL) == [4, 9]
    assert cursors(after_cursor=4) == [9]
    assert cursors(since=merged.last_seen) == [9]  # b was last seen before
    b_first = listed.incidents[0].first_seen
    assert cursors(until=b_first) == [9]  # a was first seen before b
    assert cursors(since=merged.last_seen, until=b_first) == [9]  # began before b, went on after: not refused
    assert stub.GetStatus(pb.GetStatusRequest()).incidents == 2


@pytest.mark.parametrize(("request_", "code", "message"), [
    (pb.ListIncidentsRequest(page_size=5000), grpc.StatusCode.INVALID_ARGUMENT, "page_size: at most 1000, not 5000"),
    (pb.ListIncidentsRequest(after_cursor=2**63), grpc.StatusCode.INVALID_ARGUMENT,
     "after_cursor: 9223372036854775808 is past the largest cursor (2^63-1)"),
    (pb.ListIncidentsRequest(after_cursor=3), grpc.StatusCode.OUT_OF_RANGE,
     "after_cursor: 3 is past the journal's end (2); if the journal was replaced, page it again from 0"),
    (pb.ListIncidentsRequest(min_severity=undefined(6)), grpc.StatusCode.INVALID_ARGUMENT,
     "min_severity: 6 is not a severity"),
    (pb.ListIncidentsRequest(since=stamp(0, -1)), grpc.StatusCode.INVALID_ARGUMENT,
     "since: nanos -1 is outside 0 to 999999999"),
    (pb.ListIncidentsRequest(until=stamp(253_402_300_800)), grpc.StatusCode.INVALID_ARGUMENT,
     "until: seconds 253402300800 is outside google.protobuf.Timestamp's range"),
    (pb.ListIncidentsRequest(id="nope"), grpc.StatusCode.INVALID_ARGUMENT,
     "id: 'nope' is not an incident id (a UUID, e.g. 0b1c2d3e-4f5a-4b6c-8d7e-9f0a1b2c3d4e)"),
    (pb.ListIncidentsRequest(id="0b1c2d3e-4f5a-4b6c-8d7e-9f0a1b2c3d4e\n"), grpc.StatusCode.INVALID_ARGUMENT,
     "id: '0b1c2d3e-4f5a-4b6c-8d7e-9f0a1b2c3d4e\\n' is not an incident id"),
])
def test_bad_incident_pages_are_refused(api: Harness, request_: pb.ListIncidentsRequest, code: grpc.StatusCode,
                                        message: str) -> None:
    api.spawn(10, 11, "/bin/marker")  # the journal ends at cursor 2
    with pytest.raises(grpc.RpcError) as info:
        sensor_stub(api.channel()).ListIncidents(request_)
    assert (info.value.code(), info.value.details()[:len(message)]) == (code, message)


def test_incidents_stream_live_and_replay_from_the_journal(api: Harness) -> None:
    stub = sensor_stub(api.channel())
    live = Reader(stub, pb.SubscribeRequest(incidents=True))
    both = Reader(stub, pb.SubscribeRequest(alerts=True, incidents=True))
    wait_subscribers(api, 2)
    ids = three_incidents_then_a_merge(api)
    versions = [(i.incident.cursor, i.incident.id, i.incident.alerts_total)
                for i in live.until(lambda i: i.incident.cursor == 9)]
    assert versions == [(2, ids["a"], 1), (4, ids["b"], 1), (6, ids["c"], 1), (9, ids["a"], 4)]
    records = both.until(lambda i: i.incident.cursor == 9)
    assert [(i.kind, i.alert.cursor or i.incident.cursor) for i in records] == [
        ("alert", 1), ("incident", 2), ("alert", 3), ("incident", 4), ("alert", 5), ("incident", 6),
        ("alert", 7), ("alert", 8), ("incident", 9)]
    assert all(i.alert.incident_id == ids["a"] for i in records if i.alert.cursor in (1, 7, 8))

    def replayed(**request: Any) -> list[int]:
        reader = Reader(stub, pb.SubscribeRequest(incidents=True, **request))
        reader.until(lambda i: i.incident.cursor == 9)
        reader.close()
        return [i.incident.cursor for i in reader.items if i.kind == "incident"]

    # the journal keeps each incident's latest version: a's first (2) and c's, merged into a (6), are gone
    assert replayed(since_cursor=0) == [4, 9]
    assert replayed(since_cursor=4) == [9]
    assert replayed(since_cursor=0, min_severity=pb.SEVERITY_CRITICAL) == [4, 9]  # a's first version was low
    loud = Reader(stub, pb.SubscribeRequest(incidents=True, since_cursor=0, rule_ids=["loud-marker"],
                                            process=pb.ProcessFilter(binary="loud")))
    wait_subscribers(api, 3)
    api.spawn(10, 23, "/bin/loud", "fence")  # alert 10, incident 11
    assert [i.incident.cursor for i in loud.until(lambda i: i.incident.cursor == 11)] == [4, 11]
    for reader in (live, both, loud):
        reader.close()


def test_facts_stream_by_kind_and_process(api: Harness) -> None:
    stub = sensor_stub(api.channel())
    by_kind = Reader(stub, pb.SubscribeRequest(facts=True, fact_kinds=[pb.FACT_KIND_CONNECT, pb.FACT_KIND_MINER]))
    by_binary = Reader(stub, pb.SubscribeRequest(facts=True, process=pb.ProcessFilter(binary="curl")))
    wait_subscribers(api, 2)
    api.spawn(10, 30, "/usr/bin/curl", "https://example")
    api.spawn(10, 31, "/usr/bin/wget", "https://example")
    api.connect(30, 443)
    api.connect(30, 3333)
    api.connect(31, 3333)
    got = by_kind.until(lambda i: i.fact.process.pid == 31 and i.fact.kind == pb.FACT_KIND_MINER)
    assert {i.kind for i in got} == {"fact"}  # no event, alert or incident
    assert [(i.fact.kind, i.fact.process.pid, i.fact.connect.port or i.fact.miner.port) for i in got] == [
        (pb.FACT_KIND_CONNECT, 30, 443), (pb.FACT_KIND_CONNECT, 30, 3333), (pb.FACT_KIND_MINER, 30, 3333),
        (pb.FACT_KIND_CONNECT, 31, 3333), (pb.FACT_KIND_MINER, 31, 3333)]
    assert got[0].fact.connect.destination == "egress" and got[0].fact.process.exe == "/usr/bin/curl"
    got = by_binary.until(lambda i: i.fact.kind == pb.FACT_KIND_MINER)
    assert [(i.fact.kind, i.fact.process.pid) for i in got] == [
        (pb.FACT_KIND_EXEC, 30), (pb.FACT_KIND_CONNECT, 30), (pb.FACT_KIND_EGRESS, 30), (pb.FACT_KIND_CONNECT, 30),
        (pb.FACT_KIND_EGRESS, 30), (pb.FACT_KIND_MINER, 30)]
    assert api.state.broker.stats.published_facts >= 8
    for reader in (by_kind, by_binary):
        reader.close()


# -- TLS and mTLS -------------------------------------------------------------------------


def _certificates(tmp_path: Path) -> dict[str, Path]:
    from tests.certificates import make_certificates

    return make_certificates(tmp_path)


def _tls_channel(port: int, certs: dict[str, Path], client: str | None = None) -> grpc.Channel:
    key = certs[f"{client}_key"].read_bytes() if client else None
    chain = certs[client].read_bytes() if client else None
    credentials = grpc.ssl_channel_credentials(certs["ca"].read_bytes(), key, chain)
    return grpc.secure_channel(f"127.0.0.1:{port}", credentials)


def _status(channel: grpc.Channel) -> pb.Status:
    status: pb.Status = sensor_stub(channel).GetStatus(pb.GetStatusRequest(), timeout=5)
    return status


def test_tls(tmp_path: Path) -> None:
    certs = _certificates(tmp_path)
    endpoint = Endpoint(socket=None, listen="127.0.0.1:0", tls_cert=certs["server"], tls_key=certs["server_key"])
    api = make_harness(tmp_path, endpoint)
    try:
        assert _status(_tls_channel(api.server.port, certs)).kernel == api.state.meta.kernel
        with pytest.raises(grpc.RpcError) as info:  # a plain-text client is refused
            _status(grpc.insecure_channel(f"127.0.0.1:{api.server.port}"))
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        api.server.stop()


def test_mtls_refuses_clients_without_the_right_certificate(tmp_path: Path) -> None:
    certs = _certificates(tmp_path)
    endpoint = Endpoint(socket=None, listen="127.0.0.1:0", tls_cert=certs["server"], tls_key=certs["server_key"],
                        tls_client_ca=certs["ca"])
    api = make_harness(tmp_path, endpoint)
    try:
        assert _status(_tls_channel(api.server.port, certs, "client")).kernel == api.state.meta.kernel
        for client in (None, "stranger"):
            with pytest.raises(grpc.RpcError) as info:
                _status(_tls_channel(api.server.port, certs, client))
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        api.server.stop()


@pytest.mark.parametrize(("endpoint", "message"), [
    (Endpoint(socket=None, listen="0.0.0.0:50051"),
     "refusing to serve the API in plain text on 0.0.0.0:50051: anyone who reaches it would read every alert and "
     "process; fix: give --tls-cert and --tls-key (and --tls-client-ca for mTLS), or listen on 127.0.0.1, or pass "
     "--insecure-plaintext"),
    (Endpoint(socket=None, listen="[::]:1"), "refusing to serve the API in plain text on [::]:1"),
    (Endpoint(socket=None, listen="nonsense"), "--listen 'nonsense' is not HOST:PORT"),
    (Endpoint(socket=None, listen=None), "the API has nowhere to listen"),
    (Endpoint(socket=None, listen="127.0.0.1:1", tls_cert=Path("x")), "--tls-cert and --tls-key go together"),
])
def test_endpoint_rules(endpoint: Endpoint, message: str) -> None:
    with pytest.raises(UsageError) as info:
        endpoint.validate()
    assert str(info.value).startswith(message)
    Endpoint(socket=None, listen="0.0.0.0:1", insecure_plaintext=True).validate()  # said out loud: allowed
    Endpoint(socket=None, listen="127.0.0.1:1").validate()  # loopback: allowed


def test_the_agent_refuses_plain_non_loopback_tcp_before_starting() -> None:
    result = subprocess.run([sys.executable, "-m", "sensor", "run", "--listen", "0.0.0.0:50051"], capture_output=True,
                            text=True, cwd=ROOT)
    assert result.returncode == 2
    assert result.stderr.startswith("gpusentry: error: refusing to serve the API in plain text on 0.0.0.0:50051")


def test_generated_code_is_current(tmp_path: Path) -> None:
    """scripts/gen-proto's output is the committed code, byte for byte."""
    subprocess.run([str(ROOT / "scripts" / "gen-proto"), str(tmp_path)], check=True,
                   env={**os.environ, "PYTHON": sys.executable})
    for name in ("gpusentry_pb2.py", "gpusentry_pb2.pyi", "gpusentry_pb2_grpc.py"):
        fresh = (tmp_path / "sensor" / "api" / "v1" / name).read_bytes()
        committed = (ROOT / "sensor" / "api" / "v1" / name).read_bytes()
        assert fresh == committed, f"sensor/api/v1/{name} is stale: run scripts/gen-proto"


def test_a_second_agent_does_not_take_the_socket(api: Harness, tmp_path: Path) -> None:
    from sensor.errors import GpusentryError

    second = ApiServer(api.state, Endpoint(socket=api.socket))
    with pytest.raises(GpusentryError) as info:
        second.start()
    assert str(info.value) == (f"another gpusentry agent is already serving the API at {api.socket}; fix: stop it "
                               "first, or give --socket another path")
    assert _status(api.channel()).subscribers == 0  # the first one still serves
