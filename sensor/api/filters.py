"""Requests, checked: what a client asked for, or InvalidRequest naming the field that is wrong.

Every message an error carries begins with the field's name ("rule_ids[2]: ...", or "request:"
for the message as a whole), so that a client can tell which of its values was refused.
Anything a client sends is shown back shortened and ASCII-escaped.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import NoReturn, TypeVar

import grpc
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from google.protobuf.unknown_fields import UnknownFieldSet

from sensor.api.v1 import gpusentry_pb2 as pb

MAX_LIST = 64
MAX_TEXT = 4096
MAX_PAGE = 1000
DEFAULT_PAGE = 100
MAX_RULE_ID = 80  # the rule loader's RULE_ID pattern: at most 80 characters
MAX_CURSOR = 2**63 - 1  # cursors are SQLite rowids: signed 64-bit
PID_MAX_LIMIT = 4 * 1024 * 1024  # the kernel's PID_MAX_LIMIT (include/linux/threads.h, 64-bit)
# google.protobuf.Timestamp's valid range: 0001-01-01T00:00:00Z to 9999-12-31T23:59:59.999999999Z
TIMESTAMP_SECONDS = (-62_135_596_800, 253_402_300_799)
INT64 = (-(2**63), 2**63 - 1)
# [0-9], not \d (which takes any Unicode digit); fullmatch, not $ (which takes a final newline)
EXEC_ID = re.compile(r"([0-9]{1,7}):([0-9]{1,20}):([0-9]{1,10})", re.ASCII)
INCIDENT_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.ASCII | re.IGNORECASE)

Request = TypeVar("Request", bound=Message)


class InvalidRequest(ValueError):
    """The message names the field and what is wrong with it."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class OutOfRange(InvalidRequest):
    """A well-formed value past what exists now (a cursor past the journal's end)."""

    code = grpc.StatusCode.OUT_OF_RANGE


@dataclass(frozen=True)
class Malformed:
    """What the server's deserializer hands over for bytes that are not the request message."""

    message_type: str  # gpusentry.v1.ListAlertsRequest


def tolerant(request_type: type[Message]) -> Callable[[bytes], Message | Malformed]:
    """A deserializer that never raises: bytes that are not a request become Malformed, which
    the method refuses with INVALID_ARGUMENT (a raising one would make gRPC answer UNKNOWN)."""
    def deserialize(data: bytes) -> Message | Malformed:
        try:
            return request_type.FromString(data)
        except Exception:  # DecodeError, or anything else a parser may raise on hostile bytes
            return Malformed(request_type.DESCRIPTOR.full_name)

    return deserialize


async def refuse(context: grpc.aio.ServicerContext, error: InvalidRequest) -> NoReturn:
    await end_call(context, error.code, str(error))


async def end_call(context: grpc.aio.ServicerContext, code: grpc.StatusCode, details: str) -> NoReturn:
    await context.abort(code, details)
    raise AssertionError("abort() ends the call by raising")  # for the type checker: it never returns


@dataclass(frozen=True)
class Filter:
    events: bool
    alerts: bool
    kinds: frozenset[int]  # empty: all
    rule_ids: frozenset[str]  # empty: all
    min_severity: int
    exec_id: str
    binary: str
    ancestor: str  # "pid:start_ns": a process (any of its exec images) and its descendants
    cgroup_ids: frozenset[int]
    since_cursor: int | None
    incidents: bool = False
    facts: bool = False
    fact_kinds: frozenset[int] = frozenset()  # empty: all

    @property
    def needs_lineage(self) -> bool:
        return bool(self.ancestor)

    @property
    def journaled(self) -> bool:
        """Whether it wants journaled records (alerts, incidents, and the sensor gaps with them)."""
        return self.alerts or self.incidents


@dataclass(frozen=True)
class AlertPage:
    """A ListAlerts request, checked; times are wall-clock nanoseconds, None when not given."""

    size: int
    after_cursor: int
    rule_ids: list[str]
    min_severity: int
    since_ns: int | None
    until_ns: int | None


@dataclass(frozen=True)
class IncidentPage:
    """A ListIncidents request, checked; times are wall-clock nanoseconds, None when not given."""

    size: int
    after_cursor: int
    min_severity: int
    since_ns: int | None  # last seen at or after
    until_ns: int | None  # first seen before
    incident_id: str | None


def shown(value: str) -> str:
    """A client's string, quoted, shortened and ASCII-only, fit to go back in an error message."""
    return ascii(value[:80]) + ("..." if len(value) > 80 else "")


def process_key(exec_id: str) -> str:
    """"pid:start_ns:execs" -> "pid:start_ns": the process, whichever image it runs."""
    return exec_id.rsplit(":", 1)[0]


# -- the message as a whole ---------------------------------------------------------------


def whole(request: Request | Malformed) -> Request:
    """The request, if it is one this server fully understands."""
    if isinstance(request, Malformed):
        raise InvalidRequest(f"request: not a valid {request.message_type} message")
    _known_fields(request, "request")
    return request


def _known_fields(message: Message, path: str) -> None:
    # A field this server does not know is a newer client's: most likely a filter. Ignoring it
    # would answer a different question than the one asked (more alerts, other processes)
    # without saying so, so the request is refused instead.
    unknown = UnknownFieldSet(message)
    if len(unknown):
        number = unknown[0].field_number
        raise InvalidRequest(f"{path}: field number {number} is not a field of {message.DESCRIPTOR.full_name} "
                             "that this server knows (a newer client's?); refused rather than ignored")
    for field, value in message.ListFields():
        if field.message_type is None:
            continue
        name = field.name if path == "request" else f"{path}.{field.name}"
        if field.is_repeated:
            for index, item in enumerate(value):
                _known_fields(item, f"{name}[{index}]")
        else:
            _known_fields(value, name)


# -- fields -------------------------------------------------------------------------------


def _count(field: str, values: Collection[object], limit: int = MAX_LIST) -> None:
    if len(values) > limit:
        raise InvalidRequest(f"{field}: at most {limit} values, not {len(values)}")


def _exec_id(value: str, field: str) -> str:
    match = EXEC_ID.fullmatch(value)
    if match is None:
        raise InvalidRequest(f"{field}: {shown(value)} is not an exec id (pid:start_ns:execs)")
    _pid(int(match[1]), f"{field} (its pid)")
    return value


def _pid(pid: int, field: str) -> int:
    if pid == 0:
        raise InvalidRequest(f"{field}: 0 is not a process id (they run from 1 to {PID_MAX_LIMIT})")
    if pid > PID_MAX_LIMIT:
        raise InvalidRequest(f"{field}: {pid} is above the kernel's PID_MAX_LIMIT ({PID_MAX_LIMIT})")
    return pid


def _rule_ids(values: Collection[str], known: Collection[str]) -> list[str]:
    _count("rule_ids", values)
    for index, rule_id in enumerate(values):
        if len(rule_id) > MAX_RULE_ID:
            raise InvalidRequest(f"rule_ids[{index}]: {len(rule_id)} characters; a rule id has at most {MAX_RULE_ID}")
        if rule_id not in known:
            raise InvalidRequest(f"rule_ids[{index}]: no rule {shown(rule_id)}")
    return list(values)


def _severity(value: int) -> int:
    if value not in pb.Severity.values():
        raise InvalidRequest(f"min_severity: {value} is not a severity")
    return value


def _kinds(values: Collection[int], field: str, known: Collection[int], what: str) -> frozenset[int]:
    _count(field, values)
    for index, kind in enumerate(values):
        if kind == 0 or kind not in known:
            raise InvalidRequest(f"{field}[{index}]: {kind} is not {what}")
    return frozenset(values)


def _page_size(value: int) -> int:
    size = value or DEFAULT_PAGE
    if size > MAX_PAGE:
        raise InvalidRequest(f"page_size: at most {MAX_PAGE}, not {size}")
    return size


def _after_cursor(value: int, last_cursor: int) -> int:
    after = _cursor(value, "after_cursor")
    if after > last_cursor:
        raise OutOfRange(f"after_cursor: {after} is past the journal's end ({last_cursor}); if the journal was "
                         "replaced, page it again from 0")
    return after


def _incident_id(value: str) -> str:
    if INCIDENT_ID.fullmatch(value) is None:
        raise InvalidRequest(f"id: {shown(value)} is not an incident id (a UUID, "
                             "e.g. 0b1c2d3e-4f5a-4b6c-8d7e-9f0a1b2c3d4e)")
    return value.lower()


def _cursor(value: int, field: str) -> int:
    if value > MAX_CURSOR:
        raise InvalidRequest(f"{field}: {value} is past the largest cursor (2^63-1)")
    return value


def _time_ns(stamp: Timestamp, field: str) -> int:
    """A Timestamp as int64 nanoseconds, which is how the journal keeps and compares times."""
    low, high = TIMESTAMP_SECONDS
    if not low <= stamp.seconds <= high:
        raise InvalidRequest(f"{field}: seconds {stamp.seconds} is outside google.protobuf.Timestamp's range "
                             "(0001-01-01 to 9999-12-31)")
    if not 0 <= stamp.nanos <= 999_999_999:
        raise InvalidRequest(f"{field}: nanos {stamp.nanos} is outside 0 to 999999999")
    nanoseconds = int(stamp.seconds) * 1_000_000_000 + int(stamp.nanos)
    if not INT64[0] <= nanoseconds <= INT64[1]:
        raise InvalidRequest(f"{field}: {stamp.ToJsonString()} is outside the times this server compares "
                             "(int64 nanoseconds: 1677-09-21 to 2262-04-11)")
    return nanoseconds


# -- requests -----------------------------------------------------------------------------


def subscription(request: pb.SubscribeRequest | Malformed, known_rules: Collection[str]) -> Filter:
    return parse(whole(request), known_rules)


def parse(request: pb.SubscribeRequest, known_rules: Collection[str]) -> Filter:
    if not (request.events or request.alerts or request.incidents or request.facts):
        raise InvalidRequest("events, alerts, incidents, facts: subscribe to at least one of them (set it to true)")
    kinds = _kinds(request.event_kinds, "event_kinds", pb.EventKind.values(), "an event kind")
    if kinds and not request.events:
        raise InvalidRequest("event_kinds: set events to true to receive events")
    fact_kinds = _kinds(request.fact_kinds, "fact_kinds", pb.FactKind.values(), "a fact kind")
    if fact_kinds and not request.facts:
        raise InvalidRequest("fact_kinds: set facts to true to receive facts")
    _count("cgroup_ids", request.cgroup_ids)
    rule_ids = _rule_ids(request.rule_ids, known_rules)
    min_severity = _severity(request.min_severity)
    process = request.process
    if len(process.binary) > MAX_TEXT:
        raise InvalidRequest(f"process.binary: longer than {MAX_TEXT} characters")
    exec_id = _exec_id(process.exec_id, "process.exec_id") if process.exec_id else ""
    ancestor = _exec_id(process.ancestor_exec_id, "process.ancestor_exec_id") if process.ancestor_exec_id else ""
    since = _cursor(request.since_cursor, "since_cursor") if request.HasField("since_cursor") else None
    if since is not None and not (request.alerts or request.incidents):
        raise InvalidRequest("since_cursor: it replays journaled alerts and incidents; set alerts or incidents "
                             "to true")
    return Filter(
        events=request.events, alerts=request.alerts, kinds=kinds, rule_ids=frozenset(rule_ids),
        min_severity=min_severity, exec_id=exec_id, binary=process.binary,
        ancestor=process_key(ancestor) if ancestor else "", cgroup_ids=frozenset(request.cgroup_ids),
        since_cursor=since, incidents=request.incidents, facts=request.facts, fact_kinds=fact_kinds)


def alert_page(request: pb.ListAlertsRequest | Malformed, known_rules: Collection[str],
               last_cursor: int) -> AlertPage:
    checked: pb.ListAlertsRequest = whole(request)
    size = _page_size(checked.page_size)
    after = _after_cursor(checked.after_cursor, last_cursor)
    since = _time_ns(checked.since, "since") if checked.HasField("since") else None
    until = _time_ns(checked.until, "until") if checked.HasField("until") else None
    if since is not None and until is not None and since > until:
        raise InvalidRequest(f"since: {checked.since.ToJsonString()} is after until "
                             f"({checked.until.ToJsonString()})")
    return AlertPage(size=size, after_cursor=after, rule_ids=_rule_ids(checked.rule_ids, known_rules),
                     min_severity=_severity(checked.min_severity), since_ns=since, until_ns=until)


def incident_page(request: pb.ListIncidentsRequest | Malformed, last_cursor: int) -> IncidentPage:
    """Unlike an alert page's, `since` may be after `until`: an incident is an interval, and one
    first seen before `until` may well be last seen after a later `since` (it spans both)."""
    checked: pb.ListIncidentsRequest = whole(request)
    size = _page_size(checked.page_size)
    after = _after_cursor(checked.after_cursor, last_cursor)
    return IncidentPage(
        size=size, after_cursor=after, min_severity=_severity(checked.min_severity),
        since_ns=_time_ns(checked.since, "since") if checked.HasField("since") else None,
        until_ns=_time_ns(checked.until, "until") if checked.HasField("until") else None,
        incident_id=_incident_id(checked.id) if checked.id else None)


def process_lookup(request: pb.GetProcessRequest | Malformed) -> tuple[str, str | int]:
    """("exec_id", "pid:start_ns:execs") or ("pid", pid)."""
    checked: pb.GetProcessRequest = whole(request)
    key = checked.WhichOneof("key")
    if key == "exec_id":
        return key, _exec_id(checked.exec_id, "exec_id")
    if key == "pid":
        return key, _pid(checked.pid, "pid")
    raise InvalidRequest("key: give exec_id or pid")


def status_request(request: pb.GetStatusRequest | Malformed) -> None:
    whole(request)
