"""The consuming side: the aggregator over a frame stream, live (`aggregate`, the agent's
second process) or from a capture file (`analyze`), printing lines and serving the API.

Live, it also keeps the agent's run in the journal (RunLog), so that blind time is never
mistaken for quiet time: a heartbeat every second, a clean end when the probe says it stops
(its End frame), and a sensor-gap record for every window in which nothing was watching:
the time the agent was not running (recorded at the next start), and the moment the probe's
stream was cut without its End (the probe died): then the aggregator records the gap and
exits non-zero at once, so a supervisor restarts the agent.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from sensor import events as ev
from sensor.aggregator.aggregator import Aggregator
from sensor.aggregator.detector import DetectorConfig
from sensor.aggregator.launches import pipe_sender
from sensor.api import convert
from sensor.api.convert import SEVERITY
from sensor.api.publish import Publisher
from sensor.api.server import Endpoint
from sensor.api.state import ApiState
from sensor.api.v1 import gpusentry_pb2 as pb
from sensor.capture import CaptureError, EmptyStream, FrameReader, StreamMeta, open_capture
from sensor.errors import GpusentryError, RuntimeFailure, UsageError
from sensor.incidents import IncidentBook
from sensor.journal import Journal, PreviousRun, Retention
from sensor.output import Printer
from sensor.reload import Reloader
from sensor.rules.loader import load_rules
from sensor.rules.model import RuleSet
from sensor.sinks.process import SinkProcess

if TYPE_CHECKING:
    from sensor.sinks.metrics import MetricsServer  # started only when metrics.listen is set

DEFAULT_JOURNAL = Path("/var/lib/gpusentry/journal.db")


def load_detection(args: argparse.Namespace) -> tuple[RuleSet, DetectorConfig]:
    """The rules and detector settings; an invalid rule file stops the command here."""

    for cidr in args.egress_allow:
        try:
            ipaddress.ip_network(cidr, strict=False)
        except ValueError as exc:
            raise UsageError(f"--egress-allow {cidr!r} is not a network", "give a CIDR like 10.0.0.0/8") from exc
    ruleset = load_rules(Path(p) for p in args.rules)
    return ruleset, DetectorConfig(egress_allowlist=tuple(args.egress_allow))


class StreamCut(GpusentryError):
    """The probe's stream ended without its End frame: the probe died, the sensor is blind."""

    exit_code = 3


class RunLog:
    """The agent's run in the journal: heartbeats, a clean end, and sensor gaps."""

    def __init__(self, journal: Journal, probe_pid: int, publish_gap: Callable[[pb.SensorGap], None] | None = None,
                 clock: Callable[[], int] = time.time_ns, watchdog: Callable[[], str | None] | None = None) -> None:
        self.journal = journal
        self.probe_pid = probe_pid
        self.publish_gap = publish_gap
        self.clock = clock
        self.watchdog = watchdog  # what else of this process must be alive: the cause when it is not
        self.last_seen_ns = 0  # wall time of the last frame from the probe
        self.ended = False

    def begin(self) -> pb.SensorGap | None:
        """This run starts; the time since the previous run stopped was blind."""
        now = self.clock()
        self.last_seen_ns = now
        previous = self.journal.begin_run(now)
        if previous is None:
            return None
        return self.journal.append_gap(previous.alive_ns, now, downtime_cause(previous))

    def seen(self, event: ev.Event) -> None:
        """A frame arrived: the probe is watching. Its Stats come every second: a heartbeat."""
        self.last_seen_ns = self.clock()
        if isinstance(event, ev.Stats):
            broken = self.watchdog() if self.watchdog is not None else None
            if broken is not None:  # no half-alive agent: nobody could be told what it sees
                self.failed(broken)
                raise RuntimeFailure(broken, "the agent stops; start it again (a supervisor restarts it)")
            self.journal.heartbeat(self.last_seen_ns)
        elif isinstance(event, ev.End):
            self.journal.end_run(self.last_seen_ns, event.reason or "the probe stopped")
            self.ended = True

    def failed(self, cause: str) -> None:
        if not self.ended:
            self.journal.end_run(self.clock(), cause)
            self.ended = True

    def cut(self, what: str) -> StreamCut:
        """The stream ended without End: record the blind window from the last frame on."""
        cause = f"the probe (pid {self.probe_pid}) died: {what}"
        now = self.clock()
        gap = self.journal.append_gap(self.last_seen_ns, now, cause)
        if self.publish_gap is not None:
            self.publish_gap(gap)
        self.journal.end_run(now, cause)
        return StreamCut(cause, "the agent stops; start it again (a supervisor restarts it)")


def downtime_cause(previous: PreviousRun) -> str:
    if previous.cause:
        return f"the agent was not running: {previous.cause}"
    seen = datetime.fromtimestamp(previous.alive_ns / 1e9).isoformat(timespec="seconds")
    return (f"the agent was not running: it stopped without recording why (killed, or crashed); "
            f"last seen watching at {seen}")


def consume(reader: FrameReader, printer: Printer | None = None, aggregator: Aggregator | None = None,
            reloader: Reloader | None = None, api: tuple[ApiState, Publisher] | None = None,
            run: RunLog | None = None, incidents: IncidentBook | None = None) -> Aggregator:
    """Run the aggregator over a frame stream: each observation's alerts join their incidents,
    are journaled and published (with `api`), then printed. With `run`, the stream is the live
    probe's: a cut stream raises StreamCut."""
    aggregator = aggregator if aggregator is not None else Aggregator()
    book = incidents if incidents is not None else IncidentBook(host=stream_host(reader.meta))
    clock = convert.Clock(reader.meta.boot_to_wall_ns)
    # Without the API nobody else takes it: a lock of its own costs less than a null context, per event.
    lock = api[0].lock if api is not None else threading.Lock()
    try:
        for event in reader:
            if run is not None:
                run.seen(event)
            with lock:
                obs = aggregator.handle(event)
            if isinstance(event, ev.Stats):  # every second: quiet incidents close, and leave memory
                book.expire(event.ts)
            alerts = [convert.alert(a, clock) for a in obs.alerts] if obs.alerts else []
            touched = api[1].publish(obs, alerts, book) if api is not None else group(alerts, book)
            if reloader is not None:
                reloader.reload_if_requested()
            if printer is not None:
                printer.print(obs, alerts, touched)
    except CaptureError as exc:
        if run is None:
            raise
        raise run.cut(f"its frame stream broke ({exc})") from exc
    if run is not None and not run.ended:
        raise run.cut("its frame stream ended without the probe's final frame")
    return aggregator


def group(alerts: list[pb.Alert], book: IncidentBook) -> list[pb.Incident]:
    """Without the API (analyze): the alerts join their incidents, and nothing is journaled."""
    if not alerts:
        return []  # most events: nothing to group
    return [book.render(incident_id) for incident_id in book.add_all(alerts)]


def stream_host(meta: StreamMeta) -> pb.Host:
    """The host the stream was recorded on (a capture may be analysed anywhere)."""
    return pb.Host(hostname=meta.hostname, machine_id=meta.machine_id)


def endpoint_of(args: argparse.Namespace) -> Endpoint:
    def path(value: str | None) -> Path | None:
        return Path(value) if value else None

    endpoint = Endpoint(socket=None if args.socket == "none" else Path(args.socket), socket_group=args.socket_group,
                        listen=args.listen, tls_cert=path(args.tls_cert), tls_key=path(args.tls_key),
                        tls_client_ca=path(args.tls_client_ca), insecure_plaintext=args.insecure_plaintext)
    endpoint.validate()
    if args.retention_days < 1 or args.retention_count < 1:
        raise UsageError("--retention-days and --retention-count must be at least 1", "give positive numbers")
    if not 1 <= args.max_subscribers <= 4096:
        raise UsageError(f"--max-subscribers {args.max_subscribers} is out of range", "give 1 to 4096")
    return endpoint


def cmd_aggregate(args: argparse.Namespace) -> int:
    from sensor.api.handover import Handover
    from sensor.api.server import ApiServer

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the probe decides when to stop
    probe_pid = os.getppid()
    ruleset, config = load_detection(args)
    endpoint = endpoint_of(args)
    journal = Journal(Path(args.journal), Retention(args.retention_days * 86400, args.retention_count))
    try:
        reader = FrameReader(sys.stdin.buffer, "probe stream")
    except EmptyStream:
        return 0  # the probe failed to start and has said why
    requests = getattr(args, "launch_requests", None)
    aggregator = Aggregator(rules=ruleset, config=config,
                            launch_requests=pipe_sender(requests) if requests is not None else None)
    book = IncidentBook(window_s=args.incident_window, host=stream_host(reader.meta))
    sinks = sinks_of(args, journal, stream_host(reader.meta))
    state = ApiState(aggregator, journal, Handover(max_subscribers=args.max_subscribers), reader.meta,
                     rule_files=ruleset.files, incidents=book, config_file=config_file_of(args), sinks=sinks)
    publisher = Publisher(state)
    server = ApiServer(state, endpoint, args.max_subscribers)
    run = RunLog(journal, probe_pid, publisher.publish_gap, watchdog=server.failure)
    run.begin()  # journaled before the API serves: a resuming subscriber replays it
    server.start()
    print(f"gpusentry: API on {describe_endpoint(endpoint, server.port)}; journal {journal.path}", file=sys.stderr)
    reloader = Reloader(args, aggregator, state)
    reloader.install()
    grace = 0.0  # failing: the agent must be gone within a second
    metrics: MetricsServer | None = None
    try:
        metrics = start_metrics(args, state, probe_pid)
        if sinks is not None:
            sinks.start()  # each resumes after its own cursor: what was journaled while it was away goes first
        printer = Printer(sys.stdout, args.output, args.json, reader.meta.boot_to_wall_ns, stream_host(reader.meta))
        consume(reader, printer, aggregator=aggregator, reloader=reloader, api=(state, publisher), run=run,
                incidents=book)
        grace = 1.0
    except GpusentryError:
        raise
    except Exception as exc:  # a bug: the journal says why the sensor went blind, the traceback says where
        run.failed(f"the aggregator failed: {type(exc).__name__}: {exc}")
        raise
    finally:
        if sinks is not None:
            sinks.stop(grace)  # what is left stays in the journal: the next run sends it
        if metrics is not None:
            metrics.stop()
        server.stop(grace)
        journal.close()
    return 0


def sinks_of(args: argparse.Namespace, journal: Journal, host: pb.Host) -> SinkProcess | None:
    """The configuration file's sinks, in a process of their own (sensor/sinks/process.py); their
    cursors live beside the journal."""
    settings = getattr(args, "settings", None)
    if settings is None or not settings.sinks:
        return None
    return SinkProcess(settings.sinks, journal.path.absolute(), settings.file.absolute(), host)


def start_metrics(args: argparse.Namespace, state: ApiState, probe_pid: int) -> MetricsServer | None:
    listen = getattr(args, "metrics_listen", None)
    if not listen:
        return None
    from sensor.sinks.metrics import MetricsServer, cpu_seconds

    server = MetricsServer(listen, state, state.sinks.statuses if state.sinks is not None else list,
                           probe_cpu=cpu_seconds(probe_pid))
    server.start()
    print(f"gpusentry: metrics on http://{listen.rpartition(':')[0]}:{server.port}/metrics", file=sys.stderr)
    return server


def config_file_of(args: argparse.Namespace) -> str:
    settings = getattr(args, "settings", None)
    return str(settings.file) if settings is not None and settings.loaded else ""


def describe_endpoint(endpoint: Endpoint, port: int) -> str:
    where = []
    if endpoint.socket is not None:
        where.append(f"unix:{endpoint.socket}")
    if endpoint.listen is not None:
        host = endpoint.listen.rpartition(":")[0]
        security = "mTLS" if endpoint.tls_client_ca else "TLS" if endpoint.tls_cert else "plain text"
        where.append(f"{host}:{port} ({security})")
    return ", ".join(where)


def cmd_analyze(args: argparse.Namespace) -> int:
    """Alerts and incidents on stdout (JSON lines with --json); the summary on stderr, so that
    stdout stays one format. With --fail-on, exit 4 when an alert reaches that severity."""
    ruleset, config = load_detection(args)
    src, reader = open_capture(args.file)
    with src:
        printer = Printer(sys.stdout, args.output, args.json, reader.meta.boot_to_wall_ns, stream_host(reader.meta))
        book = IncidentBook(window_s=args.incident_window, host=stream_host(reader.meta))
        aggregator = consume(reader, printer, aggregator=Aggregator(rules=ruleset, config=config), incidents=book)
    print(summary(aggregator, book), file=sys.stderr)
    if args.fail_on is not None and book.highest_severity >= SEVERITY[args.fail_on]:
        print(f"gpusentry: an alert reached --fail-on {args.fail_on}", file=sys.stderr)
        return FAIL_ON_EXIT
    return 0


FAIL_ON_EXIT = 4  # analyze --fail-on: an alert reached the given severity (for CI pipelines)


def summary(aggregator: Aggregator, book: IncidentBook | None = None) -> str:
    c = aggregator.counters
    events = ", ".join(f"{k}={v}" for k, v in sorted(c.events.items()))
    drops = {**{f"kernel.{k}": v for k, v in c.kernel_drops.items() if v},
             **{f"probe.{k}": v for k, v in c.probe_drops.items() if v},
             **{f"probe.{k}": v for k, v in c.verdicts_missed.items() if v}}
    drop_text = ", ".join(f"{k}={v}" for k, v in sorted(drops.items())) or "none"
    live = sum(1 for p in aggregator.table if p.alive)
    ending = "complete (it ends with the probe's End)" if c.events.get("end") else \
        "cut short (no End frame: the recorder was killed, or the file was truncated)"
    text = (f"events: {events}\nprocesses: {len(aggregator.table)} known, {live} alive\n"
            f"drops: {drop_text}\ncapture: {ending}")
    if aggregator.detector is not None:
        stats = aggregator.detector.engine.stats
        by_rule = ", ".join(f"{k}={v}" for k, v in sorted(stats.by_rule.items())) or "none"
        text += f"\nalerts: {stats.alerts} ({by_rule}); facts evaluated: {stats.facts}"
    if book is not None:
        text += f"\nincidents: {book.total}"
    return text


# -- the probe side ------------------------------------------------------------------------

