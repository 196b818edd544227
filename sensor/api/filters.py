"""What a subscriber asked for, checked: a bad field is INVALID_ARGUMENT naming the field."""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass

from sensor.api.v1 import gpusentry_pb2 as pb

MAX_LIST = 64
MAX_TEXT = 4096
EXEC_ID = re.compile(r"^(\d{1,10}):(\d{1,20}):(\d{1,10})$")


class InvalidRequest(ValueError):
    """The message names the field and what is wrong with it."""


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

    @property
    def needs_lineage(self) -> bool:
        return bool(self.ancestor)


def process_key(exec_id: str) -> str:
    """"pid:start_ns:execs" -> "pid:start_ns": the process, whichever image it runs."""
    return exec_id.rsplit(":", 1)[0]


def _exec_id(value: str, field: str) -> str:
    if value and not EXEC_ID.match(value):
        raise InvalidRequest(f"{field}: {value[:80]!r} is not an exec id (pid:start_ns:execs)")
    return value


def parse(request: pb.SubscribeRequest, known_rules: Collection[str]) -> Filter:
    if not request.events and not request.alerts:
        raise InvalidRequest("events, alerts: subscribe to events, alerts or both (set one to true)")
    for field, values in (("event_kinds", request.event_kinds), ("rule_ids", request.rule_ids),
                          ("cgroup_ids", request.cgroup_ids)):
        if len(values) > MAX_LIST:
            raise InvalidRequest(f"{field}: at most {MAX_LIST} values, not {len(values)}")
    kinds = set()
    for index, kind in enumerate(request.event_kinds):
        if kind == pb.EVENT_KIND_UNSPECIFIED or kind not in pb.EventKind.values():
            raise InvalidRequest(f"event_kinds[{index}]: {kind} is not an event kind")
        kinds.add(kind)
    if kinds and not request.events:
        raise InvalidRequest("event_kinds: set events to true to receive events")
    for index, rule_id in enumerate(request.rule_ids):
        if rule_id not in known_rules:
            raise InvalidRequest(f"rule_ids[{index}]: no rule {rule_id[:80]!r}")
    if request.min_severity not in pb.Severity.values():
        raise InvalidRequest(f"min_severity: {request.min_severity} is not a severity")
    binary = request.process.binary
    if len(binary) > MAX_TEXT:
        raise InvalidRequest(f"process.binary: longer than {MAX_TEXT} characters")
    since = request.since_cursor if request.HasField("since_cursor") else None
    if since is not None and not request.alerts:
        raise InvalidRequest("since_cursor: it replays alerts; set alerts to true")
    ancestor = _exec_id(request.process.ancestor_exec_id, "process.ancestor_exec_id")
    return Filter(
        events=request.events, alerts=request.alerts, kinds=frozenset(kinds), rule_ids=frozenset(request.rule_ids),
        min_severity=request.min_severity, exec_id=_exec_id(request.process.exec_id, "process.exec_id"),
        binary=binary, ancestor=process_key(ancestor) if ancestor else "",
        cgroup_ids=frozenset(request.cgroup_ids), since_cursor=since)
