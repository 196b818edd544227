"""The live view: a gRPC client that shows incidents first, then alerts, GPU activity, events
and drops.

It never talks to BPF: it subscribes to the agent's API like any client. What it shows about
GPU compute comes from the aggregator's gpu_compute facts, never re-derived from raw events.
The screen is one pure function, `render(snapshot)`, of a small snapshot that `apply` updates
from the stream; both are tested with a recording console.
"""

from __future__ import annotations

import errno
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime

import grpc
from rich.console import Group, RenderableType
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from sensor.api.client import sensor_stub
from sensor.api.v1 import gpusentry_pb2 as pb
from sensor.where import place

SEVERITY_STYLE: dict[int, str] = {pb.SEVERITY_CRITICAL: "bold white on red", pb.SEVERITY_HIGH: "bold red",
                  pb.SEVERITY_MEDIUM: "yellow", pb.SEVERITY_LOW: "cyan", pb.SEVERITY_INFO: "dim"}
KIND_NAMES = {k: pb.EventKind.Name(k).removeprefix("EVENT_KIND_").lower() for k in pb.EventKind.values()}


@dataclass
class GpuRow:
    process: pb.ProcessRef
    activity: pb.GpuActivity
    compute: bool = False
    seen: float = 0.0


@dataclass
class Snapshot:
    endpoint: str
    status: pb.Status | None = None
    incidents: dict[str, pb.Incident] = field(default_factory=dict)  # by id, the latest version of each
    alerts: deque[pb.Alert] = field(default_factory=lambda: deque(maxlen=8))
    sensor_gaps: deque[pb.SensorGap] = field(default_factory=lambda: deque(maxlen=4))
    last_cursor: int = 0  # of the last journaled record received: where a new subscription resumes
    events: deque[pb.Event] = field(default_factory=lambda: deque(maxlen=12))
    gpu: dict[str, GpuRow] = field(default_factory=dict)
    received: int = 0
    gaps: int = 0
    missed: int = 0
    error: str = ""


def apply(snapshot: Snapshot, response: pb.SubscribeResponse, now: float | None = None) -> None:
    """Fold one stream message into the snapshot."""
    now = time.time() if now is None else now
    item = response.WhichOneof("item")
    if item == "subscribed":
        return  # says where the stream starts: nothing to show
    snapshot.received += 1
    if item == "incident":
        _apply_incident(snapshot, response.incident)
    elif item == "alert":
        snapshot.alerts.appendleft(response.alert)
        snapshot.last_cursor = max(snapshot.last_cursor, response.alert.cursor)
    elif item == "sensor_gap":
        snapshot.sensor_gaps.appendleft(response.sensor_gap)
        snapshot.last_cursor = max(snapshot.last_cursor, response.sensor_gap.cursor)
    elif item == "gap":
        gap = response.gap
        snapshot.gaps += 1
        snapshot.missed += gap.missed_events + gap.missed_alerts + gap.missed_incidents + gap.missed_facts
    elif item == "events":
        for event in response.events.events:
            _apply_event(snapshot, event, now)
    elif item == "facts":
        for fact in response.facts.facts:
            _apply_fact(snapshot, fact, now)


MAX_INCIDENTS = 64  # kept in memory; the screen shows the most recent few


def _apply_incident(snapshot: Snapshot, incident: pb.Incident) -> None:
    snapshot.incidents.pop(incident.id, None)  # re-inserted: the dict's order is the latest update last
    snapshot.incidents[incident.id] = incident
    snapshot.last_cursor = max(snapshot.last_cursor, incident.cursor)
    while len(snapshot.incidents) > MAX_INCIDENTS:
        del snapshot.incidents[next(iter(snapshot.incidents))]


def _apply_event(snapshot: Snapshot, event: pb.Event, now: float) -> None:
    if event.WhichOneof("detail") == "gpu_activity":
        row = snapshot.gpu.setdefault(event.process.exec_id, GpuRow(event.process, event.gpu_activity))
        row.activity, row.seen = event.gpu_activity, now
    else:
        snapshot.events.appendleft(event)


def _apply_fact(snapshot: Snapshot, fact: pb.Fact, now: float) -> None:
    """GPU compute as the aggregator decided it (its gpu_compute fact)."""
    if fact.kind == pb.FACT_KIND_GPU_COMPUTE:
        row = snapshot.gpu.setdefault(fact.process.exec_id, GpuRow(fact.process, pb.GpuActivity()))
        row.compute, row.seen = True, now


def _time(stamp: object) -> str:
    return datetime.fromtimestamp(stamp.ToNanoseconds() / 1e9).strftime("%H:%M:%S")  # type: ignore[attr-defined]


def _header(snapshot: Snapshot) -> RenderableType:
    status = snapshot.status
    line = Text()
    line.append("gpusentry ", style="bold")
    line.append(f"on {snapshot.endpoint}  ")
    if status is None:
        line.append(snapshot.error or "connecting…", style="yellow" if not snapshot.error else "red")
        return line
    line.append(f"kernel {status.kernel}  up {int(status.uptime_s)}s  ")
    total = sum(status.events_by_kind.values())
    if status.host.hostname:
        line.append(f"host {status.host.hostname}  ")
    line.append(f"events {total}  incidents {status.incidents}  alerts {status.journal_alerts}  ")
    if status.sensor_gaps:
        line.append(f"blind windows {status.sensor_gaps}  ", style="bold red")
    line.append(f"subscribers {status.subscribers}  ")
    dropped = [(d.hop, d.what, d.count) for d in status.drops if d.count]
    if dropped:
        line.append("drops: " + ", ".join(f"{hop} {what} {count}" for hop, what, count in dropped), style="bold red")
    else:
        line.append("drops: none", style="green")
    if snapshot.missed:
        line.append(f"  this view missed {snapshot.missed} in {snapshot.gaps} gap(s)", style="yellow")
    for sink in status.sinks:  # where alerts leave the host: a failing one shows in red
        counts = f"sent {sink.sent}" + "".join(f" {name} {value}" for name, value in (
            ("retried", sink.retried), ("dropped", sink.dropped), ("failed", sink.failed)) if value)
        style = "green" if sink.up and not (sink.dropped or sink.failed) else "bold red"
        line.append(f"  {sink.type} {sink.name}: {'ok' if sink.up else 'DOWN'} ({counts})", style=style)
    return line


def _severity(value: int) -> Text:
    return Text(pb.Severity.Name(value).removeprefix("SEVERITY_"), style=SEVERITY_STYLE.get(value, ""))


def _incidents(snapshot: Snapshot) -> RenderableType:
    """The most recently updated incidents first: what an operator looks at before anything else.
    Each is a line (when, severity, id, its alerts' rules) and its summary, wrapped beneath: on
    a narrow terminal a table would squeeze the summary into a column of single letters."""
    shown: list[RenderableType] = []
    for incident in list(reversed(snapshot.incidents.values()))[:4]:
        line = Text(f"{_time(incident.last_seen)}  ")
        line.append_text(_severity(incident.severity))
        line.append(f"  {incident.id[:8]}  {incident.alerts_total} alert{'s' if incident.alerts_total != 1 else ''}: ",
                    style="bold")
        line.append(", ".join(incident.rule_ids))
        shown += [line, Text(f"    {incident.summary}")]
    body = Group(*shown) if shown else Text("no incidents", style="dim")
    return Panel(body, title="incidents", border_style="bold red")


def _alerts(snapshot: Snapshot) -> RenderableType:
    table = Table(expand=True, box=None, show_header=True, header_style="bold")
    for column in ("time", "severity", "rule", "chain", "where"):
        table.add_column(column, overflow="fold", ratio={"chain": 4, "where": 2}.get(column))
    for alert in snapshot.alerts:
        chain = " → ".join(f"{s.fact}: {s.summary}" for s in alert.steps)
        where = "; ".join(dict.fromkeys(w for p in alert.processes if (w := place(p.process)))) or "host"
        table.add_row(_time(alert.time), _severity(alert.severity), alert.rule_id, chain, where)
    # Blind windows go above the alerts: no alert in such a window means nothing was watching.
    blind = [Text(f"SENSOR BLIND {_time(g.start)}–{_time(g.end)}: {g.cause}", style="bold white on magenta")
             for g in snapshot.sensor_gaps]
    body = table if snapshot.alerts else Text("no alerts", style="dim")
    return Panel(Group(*blind, body), title="alerts", border_style="red")


def _gpu(snapshot: Snapshot) -> RenderableType:
    table = Table(expand=True, box=None, header_style="bold")
    for column in ("pid", "process", "compute", "ioctls/s", "calls"):
        table.add_column(column, overflow="fold")
    rows = sorted(snapshot.gpu.values(), key=lambda r: -r.seen)[:8]
    for row in rows:
        rate = sum(row.activity.rate_by_device.values())
        calls = sum(row.activity.calls_by_command.values())
        table.add_row(str(row.process.pid), row.process.exe, "yes" if row.compute else "", f"{rate:,.0f}",
                      f"{calls:,}")
    return Panel(table if rows else Text("no GPU activity", style="dim"), title="GPU", border_style="green")


def _events(snapshot: Snapshot) -> RenderableType:
    table = Table(expand=True, box=None, header_style="bold")
    for column in ("time", "kind", "pid", "process", "detail"):
        table.add_column(column, overflow="ellipsis", no_wrap=True, ratio=3 if column == "detail" else None)
    for event in snapshot.events:
        table.add_row(_time(event.time), KIND_NAMES.get(event.kind, "?"), str(event.process.pid), event.process.exe,
                      _detail(event))
    return Panel(table, title="events", border_style="blue")


def _failed(result: int) -> str:
    """' (ENOENT)' for a failed call (-errno); '' for a successful one."""
    return f" ({errno.errorcode.get(-result, str(result))})" if result < 0 else ""


def _detail(event: pb.Event) -> str:
    match event.WhichOneof("detail"):
        case "exec":  # a failed exec (a PATH search) is still the old image: say it failed
            return " ".join(event.exec.argv) + _failed(event.exec.result)
        case "connect":
            c = event.connect
            where = f"{c.address}:{c.port}" if c.family in ("inet", "inet6") else c.address
            return f"{where} {c.destination}" + _failed(c.result)
        case "exit":
            return f"signal {event.exit.signal}" if event.exit.signal else f"code {event.exit.exit_code}"
        case "gpu_open":
            return event.gpu_open.device
        case "gpu_object":
            g = event.gpu_object
            return f"{g.command} {g.role} {g.class_id:#x} {g.architecture}".strip()
        case "accept":
            a = event.accept
            return f"from {a.address}:{a.port}" if a.family in ("inet", "inet6") else f"{a.family or 'unix'} peer"
        case "fork":
            return f"child {event.fork.child_pid}"
    return ""


def render(snapshot: Snapshot) -> RenderableType:
    return Group(_header(snapshot), _incidents(snapshot), _alerts(snapshot), _gpu(snapshot), _events(snapshot))


class Watcher:
    """Keeps a subscription and a status poll running, and the screen up to date."""

    def __init__(self, channel: grpc.Channel, endpoint: str) -> None:
        self.stub = sensor_stub(channel)
        self.snapshot = Snapshot(endpoint)
        self.lock = threading.Lock()
        self.stop = threading.Event()

    def _subscribe(self) -> None:
        while not self.stop.is_set():
            try:
                request = pb.SubscribeRequest(events=True, alerts=True, incidents=True, facts=True,
                                              fact_kinds=[pb.FACT_KIND_GPU_COMPUTE],
                                              since_cursor=self.snapshot.last_cursor)
                for response in self.stub.Subscribe(request):
                    with self.lock:
                        apply(self.snapshot, response)
                    if self.stop.is_set():
                        return
            except grpc.RpcError as exc:
                with self.lock:
                    self.snapshot.error = f"{exc.code().name}: {exc.details()}"
                self.stop.wait(1)

    def _poll(self) -> None:
        while not self.stop.is_set():
            try:
                status = self.stub.GetStatus(pb.GetStatusRequest(), timeout=5)
                with self.lock:
                    self.snapshot.status, self.snapshot.error = status, ""
            except grpc.RpcError as exc:
                with self.lock:
                    self.snapshot.status, self.snapshot.error = None, f"{exc.code().name}: {exc.details()}"
            self.stop.wait(1)

    def run(self) -> None:
        for target in (self._subscribe, self._poll):
            threading.Thread(target=target, daemon=True).start()
        with Live(render(self.snapshot), refresh_per_second=4, screen=True) as live:
            while not self.stop.wait(0.25):
                with self.lock:
                    live.update(render(self.snapshot))
