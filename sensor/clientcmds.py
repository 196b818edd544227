"""The API's small clients: `alerts`, `incidents`, `status` and `events`.

Each builds its request from the flags (every filter the request has), asks the agent, and
prints one JSON line per item (sensor/outward.py: the lines `run --json` prints) or a table.
An error the API answers with is one line, `the agent's API said CODE: details`, and status 1.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import re
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from sensor.api.client import client_channel, sensor_stub
from sensor.api.v1 import gpusentry_pb2 as pb
from sensor.errors import GpusentryError
from sensor.outward import as_dict, json_line, this_host

MAX_PAGE = 1000  # the API's largest page
HOPS = ("kernel", "probe", "aggregator", "rules", "journal", "subscribers")  # the order records pass them
AGO = re.compile(r"([0-9]+(?:\.[0-9]+)?)([smhdw])")
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def _names(enum: Any, prefix: str) -> tuple[str, ...]:
    """An enum's values as flags name them: lower case, no prefix, no zero value, none deprecated."""
    return tuple(v.name[len(prefix):].lower() for v in enum.DESCRIPTOR.values
                 if v.number and not v.GetOptions().deprecated)


SEVERITIES = _names(pb.Severity, "SEVERITY_")
EVENT_KINDS = _names(pb.EventKind, "EVENT_KIND_")
FACT_KINDS = _names(pb.FactKind, "FACT_KIND_")


class ApiCallError(GpusentryError):
    """The agent's API answered with an error: a runtime failure, not a usage error."""

    exit_code = 1


def when(text: str, now: Callable[[], float] = time.time) -> Timestamp:
    """An argparse type: an RFC 3339 time (2024-05-01T12:00:00Z) or a time ago (90s, 30m, 1h, 2d, 1w)."""
    stamp = Timestamp()
    ago = AGO.fullmatch(text.strip())
    if ago is not None:
        stamp.FromNanoseconds(int((now() - float(ago.group(1)) * UNITS[ago.group(2)]) * 1e9))
        return stamp
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is no time: give RFC 3339 (2024-05-01T12:00:00Z) "
                                         "or a time ago (90s, 30m, 1h, 2d, 1w)") from None
    if moment.tzinfo is None:
        raise argparse.ArgumentTypeError(f"{text!r} has no time zone: end it with Z or +HH:MM")
    stamp.FromDatetime(moment)
    return stamp


def count(text: str) -> int:
    """An argparse type: a number of items, at least 1."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a count: give 1 or more")
    return int(text)


def severity(name: str | None) -> pb.Severity:
    return pb.Severity.Value(f"SEVERITY_{name.upper()}") if name else pb.SEVERITY_UNSPECIFIED


# -- the commands -----------------------------------------------------------------------------


def cmd_alerts(args: argparse.Namespace) -> int:
    request = pb.ListAlertsRequest(page_size=_page(args.limit), after_cursor=args.after or 0, rule_ids=args.rule,
                                   min_severity=severity(args.min_severity))
    _set_times(request, args)
    with _agent(args) as (stub, host):
        records = list(alert_records(stub, request, args.limit))
    _print(alert_table(records) if args.format == "table" else [json_line(r, host) for r in records])
    return 0


def cmd_incidents(args: argparse.Namespace) -> int:
    request = pb.ListIncidentsRequest(page_size=_page(args.limit), after_cursor=args.after or 0,
                                      min_severity=severity(args.min_severity), id=args.id or "")
    _set_times(request, args)
    with _agent(args) as (stub, host):
        incidents = list(incident_pages(stub, request, args.limit))
    _print(incident_table(incidents) if args.format == "table" else [json_line(i, host) for i in incidents])
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    with _agent(args) as (stub, _):
        status = stub.GetStatus(pb.GetStatusRequest())
    _print(status_table(status) if args.format == "table" else
           [json.dumps(as_dict(status), ensure_ascii=False, separators=(",", ":"))])
    return 0


def cmd_events(args: argparse.Namespace) -> int:
    """Every item of the stream as its own JSON line, as it comes (batches split), until the
    agent ends the stream or --limit lines are printed."""
    request = subscribe_request(args)
    with _agent(args) as (stub, host):
        for item in itertools.islice(stream_items(stub.Subscribe(request)), args.limit):
            print(json_line(item, host), flush=True)
    return 0


def subscribe_request(args: argparse.Namespace) -> pb.SubscribeRequest:
    request = pb.SubscribeRequest(
        events=not args.alerts_only, alerts=True, incidents=args.incidents, facts=args.facts or bool(args.fact_kind),
        event_kinds=[pb.EventKind.Value(f"EVENT_KIND_{k.upper()}") for k in args.kind], rule_ids=args.rule,
        min_severity=severity(args.min_severity), cgroup_ids=args.cgroup,
        fact_kinds=[pb.FactKind.Value(f"FACT_KIND_{k.upper()}") for k in args.fact_kind])
    if args.exec_id or args.binary or args.ancestor:
        request.process.CopyFrom(pb.ProcessFilter(exec_id=args.exec_id or "", binary=args.binary or "",
                                                  ancestor_exec_id=args.ancestor or ""))
    if args.since is not None:
        request.since_cursor = args.since
    return request


# -- talking to the agent ---------------------------------------------------------------------


@contextlib.contextmanager
def _agent(args: argparse.Namespace) -> Iterator[tuple[Any, pb.Host]]:
    """A stub for the agent and the host it runs on; an error it answers with is ApiCallError."""
    channel, _ = client_channel(args.socket, args.connect, args.tls_ca, args.tls_cert, args.tls_key)
    try:
        stub = sensor_stub(channel)
        yield stub, _host(stub, over_tcp=args.connect is not None)
    except grpc.RpcError as exc:
        raise ApiCallError(f"the agent's API said {exc.code().name}: {exc.details()}") from exc
    finally:
        channel.close()


def _host(stub: Any, over_tcp: bool) -> pb.Host:
    """On the UNIX socket the agent is on this machine; over TCP it says where it is (or nothing)."""
    if not over_tcp:
        return this_host()
    host: pb.Host = stub.GetStatus(pb.GetStatusRequest()).host
    return host


def alert_records(stub: Any, request: pb.ListAlertsRequest, limit: int | None) -> Iterator[Message]:
    """Alerts and the sensor gaps between them in the journal's order, page after page; at most
    `limit` alerts."""
    shown = 0
    while True:
        page = stub.ListAlerts(request)
        for record in sorted([*page.alerts, *page.sensor_gaps], key=lambda r: r.cursor):
            shown += isinstance(record, pb.Alert)
            yield record
            if shown == limit:
                return
        if not page.next_cursor:
            return
        request.after_cursor = page.next_cursor


def incident_pages(stub: Any, request: pb.ListIncidentsRequest, limit: int | None) -> Iterator[pb.Incident]:
    shown = 0
    while True:
        page = stub.ListIncidents(request)
        for incident in page.incidents:
            if limit is not None and shown >= limit:
                return
            shown += 1
            yield incident
        if not page.next_cursor:
            return
        request.after_cursor = page.next_cursor


def stream_items(responses: Iterable[pb.SubscribeResponse]) -> Iterator[Message]:
    """Each item of a subscription on its own: batches of events and facts split."""
    for response in responses:
        which = response.WhichOneof("item")
        if which == "events":
            yield from response.events.events
        elif which == "facts":
            yield from response.facts.facts
        elif which is not None:
            yield getattr(response, which)


def _page(limit: int | None) -> int:
    return MAX_PAGE if limit is None else min(limit, MAX_PAGE)


def _set_times(request: pb.ListAlertsRequest | pb.ListIncidentsRequest, args: argparse.Namespace) -> None:
    if args.since is not None:
        request.since.CopyFrom(args.since)
    if args.until is not None:
        request.until.CopyFrom(args.until)


def _print(lines: Iterable[str]) -> None:
    for line in lines:
        print(line)


# -- tables -----------------------------------------------------------------------------------


def table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    """Columns as wide as their widest cell, two spaces apart; the last one not padded."""
    lines = [list(header), *(list(row) for row in rows)]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return ["  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
            for line in lines]


def moment(stamp: Timestamp) -> str:
    """A time to the second, in UTC."""
    return datetime.fromtimestamp(stamp.seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def severity_name(value: int) -> str:
    return str(pb.Severity.Name(value)).removeprefix("SEVERITY_").lower()


def alert_table(records: Iterable[Message]) -> list[str]:
    rows = []
    for record in records:
        if isinstance(record, pb.SensorGap):
            rows.append([str(record.cursor), moment(record.start), "-", "(sensor gap)", "",
                         f"blind until {moment(record.end)}: {record.cause}"])
            continue
        assert isinstance(record, pb.Alert)
        who = record.processes[0].process if record.processes else pb.Process()
        rows.append([str(record.cursor), moment(record.time), severity_name(record.severity), record.rule_id,
                     f"{who.pid} {who.exe}" if who.pid else "", record.title])
    return table(["CURSOR", "TIME", "SEVERITY", "RULE", "PROCESS", "TITLE"], rows)


def incident_table(incidents: Iterable[pb.Incident]) -> list[str]:
    rows = [[str(i.cursor), i.id, moment(i.first_seen), moment(i.last_seen), severity_name(i.severity),
             str(i.alerts_total), ",".join(i.rule_ids), i.summary] for i in incidents]
    return table(["CURSOR", "ID", "FIRST SEEN", "LAST SEEN", "SEVERITY", "ALERTS", "RULES", "SUMMARY"], rows)


def status_table(status: pb.Status) -> list[str]:
    """Everything GetStatus says: the agent, the journal, events by kind, every drop counter by
    hop (kernel, probe, aggregator, rules, journal, subscribers), and each rule."""
    host = status.host.hostname + (f" (machine id {status.host.machine_id})" if status.host.machine_id else "")
    lines = table(["AGENT", ""], [
        ["host", host or "-"],
        ["started", f"{moment(status.started)} (up {_duration(status.uptime_s)})"],
        ["kernel", status.kernel or "-"],
        *([name, value] for name, value in sorted(status.kernel_features.items())),
        ["config file", status.config_file or "none"],
        ["journal", f"{status.journal_alerts} alerts, {status.sensor_gaps} sensor gaps, {status.incidents} "
                    f"incidents; last cursor {status.last_cursor}"],
        ["subscribers", str(status.subscribers)],
    ])
    lines += ["", *table(["EVENTS", "COUNT"], ([k, str(v)] for k, v in sorted(status.events_by_kind.items())))]
    drops = sorted(status.drops, key=lambda d: HOPS.index(d.hop) if d.hop in HOPS else len(HOPS))
    lines += ["", *table(["HOP", "DROPPED", "COUNT"], ([d.hop, d.what, str(d.count)] for d in drops))]
    lines += ["", *_rule_table(status.rules)]
    if any(status.launch_watches.values()):  # launches counted in suspicious processes (docs/rules.md)
        watches = sorted(status.launch_watches.items())
        lines += ["", *table(["LAUNCH WATCHES", "COUNT"], ([k, str(v)] for k, v in watches))]
    if status.sinks:
        lines += ["", *table(["SINK", "TYPE", "TARGET", "UP", "SENT", "RETRIED", "DROPPED", "FAILED", "QUEUED",
                              "BEHIND", "LAST ERROR"],
                             ([s.name, s.type, s.target, "yes" if s.up else "NO", str(s.sent), str(s.retried),
                               str(s.dropped), str(s.failed), str(s.queued), str(s.behind), s.last_error or "-"]
                              for s in status.sinks))]
    return lines


def _rule_table(rules: pb.RuleSetStatus) -> list[str]:
    rows = [[r.id, severity_name(r.severity), "yes" if r.enabled else "no", str(r.alerts), str(r.suppressed),
             r.source, ", ".join(r.overridden_by) or "-"] for r in rules.rules]
    lines = table(["RULE", "SEVERITY", "ENABLED", "ALERTS", "SUPPRESSED", "SOURCE", "TUNED BY"], rows)
    # what each exception suppressed: an exception that swallows too much shows here
    lines += [f"exception {name} of {r.id}: suppressed {count}" for r in rules.rules
              for name, count in sorted(r.suppressed_by_exception.items())]
    lines += [f"rule file: {name}" for name in rules.files]
    return lines + [f"rules not reloaded: {error}" for error in rules.load_errors]


def _duration(seconds: float) -> str:
    return str(timedelta(seconds=int(seconds)))
