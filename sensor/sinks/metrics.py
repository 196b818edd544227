"""Prometheus metrics at http://HOST:PORT/metrics, for the aggregator process.

    metrics:
      listen: 127.0.0.1:9464   # HOST:PORT ([::1]:9464 for IPv6); port 0 picks a free one; null: off

Every number is read when Prometheus scrapes, under the lock the aggregator holds while it
changes its state, and most come from the same `status_of` that GetStatus answers with: the
metrics and the API never disagree, and the hot path counts nothing twice. The endpoint has
no authentication: it shows counters, rule ids and the host name, never alerts or processes,
but keep it on loopback unless Prometheus scrapes from elsewhere.

What is served (help text on each): gpusentry_events_total{kind}, gpusentry_dropped_total{hop,what},
gpusentry_alerts_total{rule,severity}, gpusentry_alerts_suppressed_total{rule,exception},
gpusentry_incidents_total, gpusentry_incidents_open, gpusentry_gpu_sessions_active,
gpusentry_gpu_compute_sessions_active, gpusentry_rule_facts_evaluated_total,
gpusentry_rule_partial_matches_open, gpusentry_rules_load_errors, gpusentry_subscribers,
gpusentry_broker_published_total{type}, gpusentry_broker_capacity, gpusentry_subscriber_backlog_max,
gpusentry_sink_{sent,retried,dropped,failed}_total{sink,type}, gpusentry_sink_{queued,behind,cursor,up}{sink,type},
gpusentry_journal_{alerts,incidents,sensor_gaps,last_cursor}, gpusentry_journal_deleted_total,
gpusentry_probe_cpu_seconds_total, gpusentry_uptime_seconds, gpusentry_start_time_seconds,
gpusentry_build_info{version,kernel,hostname}, and prometheus-client's process_* for this process.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, ProcessCollector, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from sensor import __version__
from sensor.aggregator.aggregator import Aggregator
from sensor.api.service import status_of
from sensor.api.state import ApiState
from sensor.api.v1 import gpusentry_pb2 as pb
from sensor.errors import RuntimeFailure, UsageError

DEFAULT_LISTEN = "127.0.0.1:9464"  # 9464: the port OpenTelemetry's Prometheus exporters use by convention

SinkStatuses = Callable[[], list[pb.SinkStatus]]


class MetricsServer:
    """The /metrics endpoint on its own daemon thread; `port` is the one bound once started.

    `sinks` gives the sink statuses (when it gives none, those GetStatus reports are used);
    `probe_cpu` the probe process's CPU seconds (`cpu_seconds(probe_pid)`), served when given."""

    def __init__(self, listen: str, state: ApiState, sinks: SinkStatuses = list,
                 probe_cpu: Callable[[], float] | None = None) -> None:
        self.listen = listen
        self._host, self._port = listen_address(listen)
        self.registry = CollectorRegistry()  # not the global one: two servers in a process stay apart
        self.registry.register(StateCollector(state, sinks, probe_cpu))
        ProcessCollector(registry=self.registry)
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self._server.server_port if self._server is not None else self._port

    def start(self) -> None:
        try:
            self._server, self._thread = start_http_server(self._port, self._host, registry=self.registry)
        except OSError as exc:
            raise RuntimeFailure(f"metrics.listen {self.listen}: cannot serve metrics there: {exc.strerror or exc}",
                                 "choose a free port and an address of this host, or turn metrics off "
                                 "(metrics.listen: null)") from exc

    def stop(self) -> None:
        server, thread = self._server, self._thread
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if thread is not None:
            thread.join(timeout=5)
        self._server = self._thread = None


def listen_address(listen: str) -> tuple[str, int]:
    """HOST:PORT as (host, port); an IPv6 host in brackets."""
    host, sep, port = listen.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise UsageError(f"metrics.listen {listen!r} is not HOST:PORT", f"e.g. {DEFAULT_LISTEN} or [::1]:9464")
    return host.strip("[]"), int(port)


def cpu_seconds(pid: int) -> Callable[[], float]:
    """CPU time (user and system, all threads) of another process, read from /proc at each call;
    for the probe, whose work in BPF programs is charged to the processes it traces instead."""
    ticks = os.sysconf("SC_CLK_TCK")
    path = f"/proc/{pid}/stat"

    def read() -> float:
        with open(path, "rb") as stat:
            # comm, in parentheses, may hold spaces and parentheses itself: fields follow the last ')'
            fields = stat.read().rpartition(b")")[2].split()
        return (int(fields[11]) + int(fields[12])) / ticks  # utime, stime (proc(5) fields 14 and 15)

    return read


# -- what a scrape reads ---------------------------------------------------------------------


@dataclass(frozen=True)
class _Snapshot:
    """What is read under the aggregator's lock, so that the lock is held only while copying."""

    status: pb.Status
    incidents_open: int
    incidents_total: int
    gpu_sessions: int
    gpu_compute_sessions: int
    facts_evaluated: int | None  # None: no rules, no rule engine
    partials_open: int


class StateCollector:
    """A prometheus-client collector over the API's state, read at scrape time."""

    def __init__(self, state: ApiState, sinks: SinkStatuses, probe_cpu: Callable[[], float] | None) -> None:
        self.state = state
        self.sinks = sinks
        self.probe_cpu = probe_cpu

    def collect(self) -> Iterator[Metric]:
        snapshot = self._snapshot()
        status = snapshot.status
        yield from _events_and_drops(status)
        yield from _rules(status, snapshot)
        yield from _incidents_and_gpu(snapshot)
        yield from _broker(self.state, status)
        yield from _sinks(self.sinks() or list(status.sinks))
        yield from _journal(self.state)
        yield from self._probe()
        yield from _agent(self.state, status)

    def _snapshot(self) -> _Snapshot:
        state = self.state
        with state.lock:
            aggregator = state.aggregator
            engine = aggregator.detector.engine if aggregator.detector is not None else None
            sessions, compute = _gpu_sessions_active(aggregator)
            return _Snapshot(status=status_of(state), incidents_open=state.incidents.open_count,
                             incidents_total=state.incidents.total, gpu_sessions=sessions,
                             gpu_compute_sessions=compute,
                             facts_evaluated=engine.stats.facts if engine is not None else None,
                             partials_open=engine.stats.partials if engine is not None else 0)

    def _probe(self) -> Iterator[Metric]:
        if self.probe_cpu is None:
            return
        try:
            seconds = self.probe_cpu()
        except OSError:
            return  # the probe is gone (the agent is stopping): no sample rather than a wrong one
        yield _counter("gpusentry_probe_cpu_seconds_total",
                       "CPU time the probe process used (user and system), not counting time in BPF programs",
                       seconds)


def _gpu_sessions_active(aggregator: Aggregator) -> tuple[int, int]:
    """Live processes with a GPU session, and how many of them allocated a compute object."""
    sessions = compute = 0
    for session in aggregator.gpu:
        process = aggregator.table.get(session.process)
        if process is not None and process.alive:
            sessions += 1
            compute += session.has_compute
    return sessions, compute


# -- metric families -------------------------------------------------------------------------


def _counter(name: str, documentation: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, documentation, value=value)


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


def _severity(value: int) -> str:
    name: str = pb.Severity.Name(value)
    return name.removeprefix("SEVERITY_").lower()


def _events_and_drops(status: pb.Status) -> Iterator[Metric]:
    events = CounterMetricFamily("gpusentry_events_total", "Events the aggregator handled, by kind",
                                 labels=["kind"])
    for kind, count in sorted(status.events_by_kind.items()):
        events.add_metric([kind], count)
    yield events
    drops = CounterMetricFamily("gpusentry_dropped_total", "What was lost or not kept, by the hop that dropped "
                                "it (kernel, probe, aggregator, rules, subscribers) and what it was",
                                labels=["hop", "what"])
    for drop in status.drops:
        drops.add_metric([drop.hop, drop.what], drop.count)
    yield drops


def _rules(status: pb.Status, snapshot: _Snapshot) -> Iterator[Metric]:
    alerts = CounterMetricFamily("gpusentry_alerts_total", "Alerts raised since the agent started, by rule and "
                                 "the rule's severity", labels=["rule", "severity"])
    suppressed = CounterMetricFamily("gpusentry_alerts_suppressed_total", "Matches a rule's exception kept "
                                     "from alerting, by rule and exception", labels=["rule", "exception"])
    for rule in status.rules.rules:
        alerts.add_metric([rule.id, _severity(rule.severity)], rule.alerts)
        for exception, count in sorted(rule.suppressed_by_exception.items()):
            suppressed.add_metric([rule.id, exception], count)
    yield alerts
    yield suppressed
    yield _gauge("gpusentry_rules_load_errors", "Errors of the last rules reload that failed (the previous rules "
                 "stayed in effect); 0 after a good one", len(status.rules.load_errors))
    if snapshot.facts_evaluated is not None:
        yield _counter("gpusentry_rule_facts_evaluated_total", "Facts the rule engine evaluated",
                       snapshot.facts_evaluated)
        yield _gauge("gpusentry_rule_partial_matches_open", "Partial sequence matches waiting for their next step",
                     snapshot.partials_open)


def _incidents_and_gpu(snapshot: _Snapshot) -> Iterator[Metric]:
    yield _counter("gpusentry_incidents_total", "Incidents opened since the agent started (merged ones included)",
                   snapshot.incidents_total)
    yield _gauge("gpusentry_incidents_open", "Incidents open now: alerts may still join them",
                 snapshot.incidents_open)
    yield _gauge("gpusentry_gpu_sessions_active", "Live processes that opened an NVIDIA device",
                 snapshot.gpu_sessions)
    yield _gauge("gpusentry_gpu_compute_sessions_active", "Live processes that allocated a GPU compute object "
                 "(they can run kernels)", snapshot.gpu_compute_sessions)


def _broker(state: ApiState, status: pb.Status) -> Iterator[Metric]:
    broker = state.broker
    # positions before the published total: the total only grows, so no backlog reads negative
    positions = [s.position for s in broker.subscriptions()]
    stats = broker.stats
    published = {"events": stats.published_events, "facts": stats.published_facts,
                 "alerts": stats.published_alerts, "sensor_gaps": stats.published_sensor_gaps,
                 "incidents": stats.published_incidents}
    family = CounterMetricFamily("gpusentry_broker_published_total", "Items published to API subscribers, by type",
                                 labels=["type"])
    for kind, count in published.items():
        family.add_metric([kind], count)
    yield family
    yield _gauge("gpusentry_subscribers", "API subscribers connected now", status.subscribers)
    yield _gauge("gpusentry_broker_capacity", "Items the broker keeps for subscribers: one further behind "
                 "misses some (its gap is counted under gpusentry_dropped_total)", broker.capacity)
    total = sum(published.values())
    yield _gauge("gpusentry_subscriber_backlog_max", "Items published that the slowest subscriber has not taken "
                 "yet", max((total - p for p in positions), default=0))


_SINK_COUNTERS = (("sent", "Records the sink delivered"),
                  ("retried", "Delivery attempts that failed and were tried again"),
                  ("dropped", "Records never delivered: events at a full queue, journaled records past the horizon"),
                  ("failed", "Records the endpoint refused for good (counted and skipped)"))
_SINK_GAUGES = (("queued", "Events and facts waiting in the sink's queue"),
                ("behind", "Journaled records the sink has not delivered yet"),
                ("cursor", "The last journaled record the sink delivered"),
                ("up", "1 when the sink's last delivery attempt succeeded (or none was needed yet), else 0"))


def _sinks(statuses: list[pb.SinkStatus]) -> Iterator[Metric]:
    for field, documentation in _SINK_COUNTERS:
        counter = CounterMetricFamily(f"gpusentry_sink_{field}_total", documentation, labels=["sink", "type"])
        for sink in statuses:
            counter.add_metric([sink.name, sink.type], getattr(sink, field))
        yield counter
    for field, documentation in _SINK_GAUGES:
        gauge = GaugeMetricFamily(f"gpusentry_sink_{field}", documentation, labels=["sink", "type"])
        for sink in statuses:
            gauge.add_metric([sink.name, sink.type], float(getattr(sink, field)))
        yield gauge


def _journal(state: ApiState) -> Iterator[Metric]:
    # The journal has its own lock: these queries never hold up the aggregator.
    journal = state.journal
    yield _gauge("gpusentry_journal_alerts", "Alerts in the journal (retention removes old ones)", journal.count())
    yield _gauge("gpusentry_journal_incidents", "Incidents in the journal", journal.incident_count())
    yield _gauge("gpusentry_journal_sensor_gaps", "Sensor-gap records in the journal: times the sensor was blind",
                 journal.gap_count())
    yield _gauge("gpusentry_journal_last_cursor", "Cursor of the last record journaled", journal.last_cursor())
    yield _counter("gpusentry_journal_deleted_total", "Journal records retention removed since the agent started",
                   journal.deleted)


def _agent(state: ApiState, status: pb.Status) -> Iterator[Metric]:
    yield _gauge("gpusentry_uptime_seconds", "Seconds since the aggregator started", status.uptime_s)
    yield _gauge("gpusentry_start_time_seconds", "When the aggregator started, in seconds since the epoch",
                 state.started_ns / 1e9)
    build = GaugeMetricFamily("gpusentry_build_info", "Always 1: the agent's version, the kernel it runs on, "
                              "the host", labels=["version", "kernel", "hostname"])
    build.add_metric([__version__, status.kernel, status.host.hostname], 1)
    yield build
