"""The configured sinks, built from the configuration file's `sinks:` list, and the one place
the aggregator talks to them: wake them after journaling, offer them events and facts,
reopen them on SIGHUP, and read their status.

    sinks:
      - type: file                      # file, syslog, webhook, otlp
        name: alerts-file               # unique; names its cursor file (default: the type)
        path: /var/log/gpusentry/alerts.jsonl
        kinds: [alert, incident]        # of alert, incident, sensor_gap, event, fact
        horizon: 24h                    # journaled records older than this when sent are dropped, counted
        queue_size: 10000               # events and facts waiting; a full queue drops, counted
        batch: 100                      # records per delivery at most
        linger: 0.5                     # seconds it lets a burst gather before it reads (0 to 10)
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from google.protobuf.message import Message

from sensor.api.v1 import gpusentry_pb2 as pb
from sensor.rules import source
from sensor.sinks import base
from sensor.sinks.base import Invalid, Journaled, Sink, SinkSpec

TYPES = ("file", "syslog", "webhook", "otlp")
NAME = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}")
DURATION = re.compile(r"(\d+)([smhd]?)")
UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def sink_type(name: str) -> ModuleType:
    """The module of a sink type (imported when used: a webhook-only agent loads no OTLP code)."""
    return importlib.import_module(f"sensor.sinks.{name}")


# -- the configuration ----------------------------------------------------------------------------


def parse(raw: Any, file: Path, line: int) -> tuple[list[SinkSpec], list[str]]:
    """The `sinks:` list of a configuration file: the specs, and every problem as FILE:LINE: text."""
    if raw is None:
        return [], []
    if not isinstance(raw, source.LocatedList):
        return [], [f"{file}:{line}: sinks: a list of sinks, each a mapping with a `type` ({', '.join(TYPES)})"]
    specs, problems = [], []
    for index, entry in enumerate(raw):
        try:
            specs.append(spec_of(entry, file, raw.line_of_item(index)))
        except Invalid as exc:
            problems.append(f"{file}:{exc.line}: sinks: {exc.message}")
    names = [s.name for s in specs]
    problems += [f"{s.where}: sinks: the name {s.name!r} is used twice: give each sink its own `name`"
                 for n, s in enumerate(specs) if s.name in names[:n]]
    return specs, problems


def spec_of(entry: Any, file: Path, line: int) -> SinkSpec:
    if not isinstance(entry, source.Located):
        raise Invalid(line, f"a sink is a mapping with a `type` ({', '.join(TYPES)})")
    kind = entry.get("type")
    if kind not in TYPES:
        raise Invalid(entry.line_of("type"), f"`type` is one of {', '.join(TYPES)}, not {kind!r}")
    name = entry.get("name", kind)
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise Invalid(entry.line_of("name"), "`name` is lowercase letters, digits, '.', '_' and '-' (64 at most)")
    options = sink_type(kind).options(entry, file)
    return SinkSpec(type=kind, name=name, options=options, where=f"{file}:{entry.line}", kinds=_kinds(entry),
                    horizon_s=_duration(entry, "horizon", base.DEFAULT_HORIZON_S),
                    queue_size=_count(entry, "queue_size", base.DEFAULT_QUEUE, 1, 10_000_000),
                    batch=_count(entry, "batch", base.DEFAULT_BATCH, 1, 10_000), linger_s=_linger(entry))


def _kinds(entry: source.Located) -> tuple[str, ...]:
    kinds = entry.get("kinds", list(base.DEFAULT_KINDS))
    if not isinstance(kinds, list) or not kinds or not all(k in base.KINDS for k in kinds):
        raise Invalid(entry.line_of("kinds"), f"`kinds` is a list of {', '.join(base.KINDS)}")
    return tuple(dict.fromkeys(kinds))


def _duration(entry: source.Located, key: str, default: float) -> float:
    value = entry.get(key, default)
    if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
        return float(value)
    found = DURATION.fullmatch(str(value))
    if found is None or int(found.group(1)) == 0:
        raise Invalid(entry.line_of(key), f"`{key}` is a duration like 90s, 30m, 24h, 7d (or seconds), above 0")
    return float(int(found.group(1)) * UNITS[found.group(2)])


def _linger(entry: source.Located) -> float:
    value = entry.get("linger", base.DEFAULT_LINGER_S)
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 10:
        raise Invalid(entry.line_of("linger"), "`linger` is a number of seconds from 0 to 10")
    return float(value)


def _count(entry: source.Located, key: str, default: int, low: int, high: int) -> int:
    value = entry.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise Invalid(entry.line_of(key), f"`{key}` is an integer from {low} to {high}")
    return value


# -- the running sinks ----------------------------------------------------------------------------


class SinkSet:
    """Every configured sink, running; what the aggregator's thread calls never blocks."""

    def __init__(self, specs: Sequence[SinkSpec], journal: Journaled, cursor_dir: Path, host: pb.Host) -> None:
        self.sinks = [Sink(spec, sink_type(spec.type).Delivery(spec.options, host), journal,
                           base.CursorFile(cursor_dir / f"{spec.name}.cursor"), host) for spec in specs]
        self.wants_events = any(s.wants("event") for s in self.sinks)
        self.wants_facts = any(s.wants("fact") for s in self.sinks)
        self.handoff_dropped = 0  # as SinkProcess's: in one process nothing is handed over

    def start(self) -> None:
        for sink in self.sinks:
            sink.start()

    def stop(self, timeout: float = 5.0) -> None:
        for sink in self.sinks:
            sink.stop(timeout)

    def journaled(self) -> None:
        """New records are in the journal: each sink reads them itself, after its cursor."""
        for sink in self.sinks:
            sink.wake()

    def offer(self, items: Sequence[Message], kind: str) -> None:
        """Events or facts (`kind`), to the sinks that take them."""
        for sink in self.sinks:
            if sink.wants(kind):
                for item in items:
                    sink.offer(item)

    def reopen(self) -> None:
        for sink in self.sinks:
            sink.reopen()

    def statuses(self) -> list[pb.SinkStatus]:
        return [sink.status() for sink in self.sinks]
