"""Arbitrary requests against a real server, over real gRPC on a UNIX socket.

Requests are drawn from the proto descriptors, so every field of every request message is
covered as the proto grows: nested messages, oneofs, repeated fields, enums with numbers
outside the enum, integer extremes, long and non-ASCII strings, Timestamps at and past their
limits, and fields this server does not know. Raw bytes (random, or a valid request damaged)
go through the generic channel API with identity serializers. Every call must end as OK, or
refused with INVALID_ARGUMENT / OUT_OF_RANGE in a message that begins with a field's name
(or "request:"); NOT_FOUND only for a well-formed GetProcess of a process nobody knows;
RESOURCE_EXHAUSTED only past the server's request size. A valid Subscribe is known to be
accepted from its first message, Subscribed, without waiting on a timeout. Afterwards the
server still serves.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import grpc
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sensor.api.client import sensor_stub
from sensor.api.filters import PID_MAX_LIMIT, TIMESTAMP_SECONDS
from sensor.api.server import MAX_REQUEST
from sensor.api.v1 import gpusentry_pb2 as pb
from tests.unit import test_api as harness
from tests.waiting import wait_until

SERVICE = pb.DESCRIPTOR.services_by_name["Sensor"]
METHODS: dict[str, MethodDescriptor] = {m.name: m for m in SERVICE.methods}
EXAMPLES = 300  # for each of the two runs: structured requests, and raw bytes
SETTINGS = settings(max_examples=EXAMPLES, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
T = FieldDescriptor
INT_RANGES = {
    T.TYPE_UINT64: (0, 2**64 - 1), T.TYPE_FIXED64: (0, 2**64 - 1),
    T.TYPE_UINT32: (0, 2**32 - 1), T.TYPE_FIXED32: (0, 2**32 - 1),
    T.TYPE_INT64: (-(2**63), 2**63 - 1), T.TYPE_SINT64: (-(2**63), 2**63 - 1), T.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    T.TYPE_INT32: (-(2**31), 2**31 - 1), T.TYPE_SINT32: (-(2**31), 2**31 - 1), T.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
}
LOW, HIGH = TIMESTAMP_SECONDS
INT64_NS_SECONDS = (-9_223_372_037, -9_223_372_036, 9_223_372_036, 9_223_372_037)  # where int64 ns end


def integers(low: int, high: int) -> st.SearchStrategy[int]:
    """Any value in the type's range, with its extremes, the signed-64 cut and the PID limit likely."""
    edges = [v for v in (low, low + 1, -1, 0, 1, 2, 10, PID_MAX_LIMIT, PID_MAX_LIMIT + 1, 2**31 - 1, 2**32 - 1,
                         2**63 - 1, 2**63, high - 1, high) if low <= v <= high]
    return st.one_of(st.sampled_from(edges), st.integers(0, 100).filter(lambda v: low <= v <= high),
                     st.integers(low, high))


def strings(interesting: list[str]) -> st.SearchStrategy[str]:
    """Values that mean something to the server, any short text, and long text (over every limit)."""
    long = st.builds(lambda piece, count: piece * count, st.text(min_size=1, max_size=2), st.integers(81, 4200))
    return st.one_of(st.sampled_from(interesting), st.text(max_size=40), long)


class Requests:
    """Strategies for request messages, built from their descriptors."""

    OVERRIDES: ClassVar[dict[tuple[str, str], st.SearchStrategy[Any]]] = {
        ("google.protobuf.Timestamp", "seconds"): st.one_of(
            st.sampled_from([LOW - 1, LOW, 0, HIGH, HIGH + 1, *INT64_NS_SECONDS]), st.integers(LOW, HIGH),
            integers(-(2**63), 2**63 - 1)),
        ("google.protobuf.Timestamp", "nanos"): st.one_of(
            st.sampled_from([-1, 0, 999_999_999, 1_000_000_000]), st.integers(0, 999_999_999),
            integers(-(2**31), 2**31 - 1)),
    }

    def __init__(self, interesting: list[str]) -> None:
        self.strings = strings(interesting)

    def message(self, descriptor: Descriptor, depth: int = 0) -> st.SearchStrategy[Message]:
        fields = [(f, self.value(f, descriptor, depth)) for f in descriptor.fields if f.containing_oneof is None]
        oneofs = [[(f, self.value(f, descriptor, depth)) for f in oneof.fields] for oneof in descriptor.oneofs]
        unknown = unknown_fields(descriptor)

        @st.composite
        def build(draw: st.DrawFn) -> Message:
            message: Message = GetMessageClass(descriptor)()
            for field, strategy in fields:
                # A few fields at a time, as most values alone are refused; a flag is set half
                # the time (proto3 cannot tell false from absent).
                if draw(st.integers(0, 1 if field.type == T.TYPE_BOOL else 2)) == 0:
                    assign(message, field, draw(strategy))
            for choices in oneofs:
                choice = draw(st.integers(-1, len(choices) - 1))
                if choice >= 0:
                    assign(message, choices[choice][0], draw(choices[choice][1]))
            if draw(st.integers(0, 9)) == 0:  # a newer client's field
                message.MergeFromString(draw(unknown))
            return message

        return build()

    def value(self, field: FieldDescriptor, owner: Descriptor, depth: int) -> st.SearchStrategy[Any]:
        override = self.OVERRIDES.get((owner.full_name, field.name))
        single = override if override is not None else self.scalar(field, depth)
        if not field.is_repeated:
            return single
        # around the limit of 64 values: one value many times keeps the request under its size limit
        many = st.tuples(single, st.integers(60, 70)).map(lambda pair: [pair[0]] * pair[1])
        return st.one_of(st.lists(single, max_size=3), many)

    def scalar(self, field: FieldDescriptor, depth: int) -> st.SearchStrategy[Any]:
        if field.type in INT_RANGES:
            return integers(*INT_RANGES[field.type])
        if field.type == T.TYPE_ENUM:
            return st.one_of(st.sampled_from([v.number for v in field.enum_type.values]),
                             integers(-(2**31), 2**31 - 1))
        if field.type == T.TYPE_MESSAGE:
            return self.message(field.message_type, depth + 1) if depth < 4 else st.just(None)
        simple: dict[int, st.SearchStrategy[Any]] = {
            T.TYPE_BOOL: st.just(True), T.TYPE_STRING: self.strings, T.TYPE_BYTES: st.binary(max_size=64),
            T.TYPE_DOUBLE: st.floats(), T.TYPE_FLOAT: st.floats(width=32)}
        return simple[field.type]


def assign(message: Message, field: FieldDescriptor, value: Any) -> None:
    target = getattr(message, field.name)
    if field.type == T.TYPE_MESSAGE:
        if value is None:
            return
        if field.is_repeated:
            for item in value:
                target.add().CopyFrom(item)
        else:
            target.CopyFrom(value)
    elif field.is_repeated:
        target.extend(value)
    else:
        setattr(message, field.name, value)


def unknown_fields(descriptor: Descriptor) -> st.SearchStrategy[bytes]:
    """One field whose number the message does not define, in any wire type."""
    number = st.one_of(st.integers(1, 20), st.integers(1, 2**29 - 1)).filter(
        lambda n: n not in descriptor.fields_by_number)
    payload = st.one_of(
        st.tuples(st.just(0), integers(0, 2**64 - 1).map(varint)),
        st.tuples(st.just(1), st.binary(min_size=8, max_size=8)),
        st.tuples(st.just(2), st.binary(max_size=20).map(lambda b: varint(len(b)) + b)),
        st.tuples(st.just(5), st.binary(min_size=4, max_size=4)))
    return st.builds(lambda n, wire: varint(n << 3 | wire[0]) + wire[1], number, payload)


def varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    return bytes([*out, value])


def damaged(valid: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    """A valid request with one byte changed, or cut short."""
    @st.composite
    def damage(draw: st.DrawFn) -> bytes:
        data = bytearray(draw(valid))
        if not data:
            return draw(st.binary(min_size=1, max_size=8))
        index = draw(st.integers(0, len(data) - 1))
        if draw(st.booleans()):
            return bytes(data[:index])
        data[index] = draw(st.integers(0, 255))
        return bytes(data)

    return damage()


# -- calling and judging ------------------------------------------------------------------


def call(channel: grpc.Channel, method: str, data: bytes) -> tuple[grpc.StatusCode, str, bytes]:
    """The call's status and details, and its (first) response's bytes when it succeeded."""
    path = f"/{SERVICE.full_name}/{method}"
    try:
        if METHODS[method].server_streaming:
            stream = channel.unary_stream(path)(data, timeout=10)
            try:
                first: bytes = next(stream)
            finally:
                stream.cancel()
            return grpc.StatusCode.OK, "", first
        response: bytes = channel.unary_unary(path)(data, timeout=10)
        return grpc.StatusCode.OK, "", response
    except grpc.RpcError as error:
        return error.code(), error.details() or "", b""


def names_a_field(method: str, details: str) -> bool:
    """Whether the message begins with a field of the request ("process.exec_id", "rule_ids[3]",
    "events, alerts", a oneof such as "key"), or with "request"."""
    prefix, colon, _ = details.partition(":")
    if not colon:
        return False
    if prefix == "request":
        return True
    for path in prefix.split(", "):
        descriptor = METHODS[method].input_type
        for part in re.sub(r" \(.*\)$", "", path).split("."):
            name = re.sub(r"\[\d+\]$", "", part)
            if descriptor is None or not (name in descriptor.fields_by_name or name in descriptor.oneofs_by_name):
                return False
            field = descriptor.fields_by_name.get(name)
            descriptor = field.message_type if field is not None else None
    return True


def judge(method: str, data: bytes, outcome: tuple[grpc.StatusCode, str, bytes]) -> None:
    code, details, response = outcome
    what = f"{method}({data[:200]!r}) -> {code.name}: {details!r}"
    if len(data) > MAX_REQUEST:
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, what
        return
    if code == grpc.StatusCode.OK:
        reply = GetMessageClass(METHODS[method].output_type).FromString(response)
        if method == "Subscribe":
            assert reply.WhichOneof("item") == "subscribed", what
        return
    if code == grpc.StatusCode.NOT_FOUND:
        request = pb.GetProcessRequest.FromString(data) if method == "GetProcess" else None
        assert request is not None and request.WhichOneof("key") is not None, what
    else:
        assert code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.OUT_OF_RANGE), what
    assert names_a_field(method, details), what


def test_arbitrary_requests_get_a_clear_answer_and_the_server_keeps_serving(tmp_path: Path) -> None:
    api = harness.make_harness(tmp_path, max_subscribers=100_000)  # cancelled streams leave asynchronously
    try:
        api.spawn(1, 10, "/usr/bin/bash")
        api.spawn(10, 11, "/bin/marker")  # alert 1, its incident 2
        api.blind("the probe (pid 4242) died")  # 3
        proc = api.state.aggregator.table.by_pid(11)
        assert proc is not None
        incident = api.state.journal.incidents()[0].id
        requests = Requests(["", "marker", "loud-marker", "reverse-tunnel-opened", proc.exec_id, "11:1:1",
                             "1:2:3\n", "\u0663:1:1", "0:1:1", f"{PID_MAX_LIMIT + 1}:1:1", "ssh", "/bin/marker",
                             incident, incident.upper(), f"{incident}\n", str(uuid.UUID(int=0))])
        messages = {name: requests.message(m.input_type) for name, m in METHODS.items()}
        channel = api.channel()
        _fuzz_messages(channel, messages)
        _fuzz_bytes(channel, messages)
        stub = sensor_stub(channel)
        assert stub.GetStatus(pb.GetStatusRequest(), timeout=5).last_cursor == 3
        assert [i.id for i in stub.ListIncidents(pb.ListIncidentsRequest(id=incident), timeout=5).incidents] == [
            incident]
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=SERVICE.full_name))
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        wait_until(lambda: api.state.broker.stats.subscribers == 0, what="every fuzzed subscription to end")
    finally:
        api.server.stop()
        api.state.journal.close()


def _fuzz_messages(channel: grpc.Channel, messages: dict[str, st.SearchStrategy[Message]]) -> None:
    @SETTINGS
    @given(st.sampled_from(sorted(messages)).flatmap(lambda m: st.tuples(st.just(m), messages[m])))
    def run(case: tuple[str, Message]) -> None:
        method, request = case
        data = request.SerializeToString()
        judge(method, data, call(channel, method, data))

    run()


def _fuzz_bytes(channel: grpc.Channel, messages: dict[str, st.SearchStrategy[Message]]) -> None:
    def raw(method: str) -> st.SearchStrategy[tuple[str, bytes]]:
        valid = messages[method].map(lambda m: m.SerializeToString())
        return st.tuples(st.just(method), st.one_of(st.binary(max_size=200), damaged(valid)))

    @SETTINGS
    @given(st.sampled_from(sorted(messages)).flatmap(raw))
    def run(case: tuple[str, bytes]) -> None:
        method, data = case
        judge(method, data, call(channel, method, data))

    run()


def test_the_judge_refuses_what_it_should() -> None:
    """The property is only as good as its judge: answers that break it are caught."""
    judged: Callable[[str, bytes, tuple[grpc.StatusCode, str, bytes]], None] = judge
    bad = [("ListAlerts", b"", (grpc.StatusCode.UNKNOWN, "after_cursor: OverflowError", b"")),
           ("ListAlerts", b"", (grpc.StatusCode.INTERNAL, "request: failed to deserialize", b"")),
           ("ListAlerts", b"", (grpc.StatusCode.INVALID_ARGUMENT, "Python int too large to convert", b"")),
           ("ListAlerts", b"", (grpc.StatusCode.INVALID_ARGUMENT, "colour: no such field", b"")),
           ("Subscribe", b"", (grpc.StatusCode.INVALID_ARGUMENT, "process.colour: no such field", b"")),
           ("GetStatus", b"", (grpc.StatusCode.NOT_FOUND, "request: nothing", b"")),
           ("Subscribe", b"\x10\x01", (grpc.StatusCode.OK, "", pb.SubscribeResponse(
               alert=pb.Alert(cursor=1)).SerializeToString())),
           ("GetStatus", b"x" * (MAX_REQUEST + 1), (grpc.StatusCode.INVALID_ARGUMENT, "request: too big", b"")),
           ("ListIncidents", b"", (grpc.StatusCode.UNIMPLEMENTED, "Method not found!", b"")),
           ("ListIncidents", b"", (grpc.StatusCode.INVALID_ARGUMENT, "rule_ids: not a field of this request", b"")),
           ("ListIncidents", b"", (grpc.StatusCode.NOT_FOUND, "id: no such incident", b""))]
    for method, data, outcome in bad:
        try:
            judged(method, data, outcome)
        except AssertionError:
            continue
        raise AssertionError(f"the judge let through {method} -> {outcome}")
    judged("GetProcess", pb.GetProcessRequest(pid=5).SerializeToString(),
           (grpc.StatusCode.NOT_FOUND, "pid: no process with pid 5 is known", b""))
    judged("Subscribe", b"", (grpc.StatusCode.INVALID_ARGUMENT, "events, alerts: subscribe to ...", b""))
    judged("Subscribe", b"", (grpc.StatusCode.INVALID_ARGUMENT, "process.ancestor_exec_id (its pid): 0 ...", b""))
    judged("GetProcess", b"", (grpc.StatusCode.INVALID_ARGUMENT, "key: give exec_id or pid", b""))
    judged("ListAlerts", b"", (grpc.StatusCode.INVALID_ARGUMENT, "rule_ids[63]: no rule 'x'", b""))
    judged("ListIncidents", b"", (grpc.StatusCode.INVALID_ARGUMENT, "id: 'x' is not an incident id", b""))
    judged("ListIncidents", b"", (grpc.StatusCode.OUT_OF_RANGE, "after_cursor: 9 is past the journal's end", b""))
