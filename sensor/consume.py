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
import contextlib
import ipaddress
import os
import signal
import sys
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import TextIO

from sensor import events as ev
from sensor.aggregator.aggregator import Aggregator, Observation
from sensor.aggregator.detector import DetectorConfig
from sensor.api.publish import Publisher
from sensor.api.server import Endpoint
from sensor.api.state import ApiState
from sensor.api.v1 import gpusentry_pb2 as pb
from sensor.capture import CaptureError, EmptyStream, FrameReader, open_capture
from sensor.errors import GpusentryError, UsageError
from sensor.journal import Journal, PreviousRun, Retention
from sensor.output import alert_json, alert_lines, json_line, line
from sensor.rules.loader import RuleError, load_rules
from sensor.rules.model import RuleSet

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


class Reloader:
    """SIGHUP reloads the rule files; if they are invalid, the current rules stay."""

    def __init__(self, paths: list[str], aggregator: Aggregator, state: ApiState | None = None) -> None:
        self.paths = paths
        self.aggregator = aggregator
        self.state = state
        self.requested = False

    def install(self) -> None:
        signal.signal(signal.SIGHUP, self._request)

    def _request(self, *_: object) -> None:
        self.requested = True

    def reload_if_requested(self) -> None:
        if not self.requested or self.aggregator.detector is None:
            return
        self.requested = False
        current = len(self.aggregator.detector.engine.ruleset.rules)
        try:
            ruleset = load_rules(Path(p) for p in self.paths)
        except RuleError as exc:
            print(f"gpusentry: rules not reloaded, keeping the current {current} rules: {exc}", file=sys.stderr)
            if self.state is not None:
                self.state.load_errors = [str(p) for p in exc.problems]
            return
        lock = self.state.lock if self.state is not None else contextlib.nullcontext()
        with lock:
            self.aggregator.detector.reload(ruleset)
        if self.state is not None:
            self.state.load_errors = []
            self.state.rule_files = ruleset.files
        print(f"gpusentry: rules reloaded: {len(ruleset.rules)} rules", file=sys.stderr)


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
                raise GpusentryError(broken, "the agent stops; start it again (a supervisor restarts it)")
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


def consume(reader: FrameReader, out: TextIO | None, as_json: bool, show: bool = True,
            aggregator: Aggregator | None = None, reloader: Reloader | None = None,
            api: tuple[ApiState, Publisher] | None = None, run: RunLog | None = None) -> Aggregator:
    """Run the aggregator over a frame stream, printing to `out` and publishing to the API.
    With `run`, the stream is the live probe's: a cut stream raises StreamCut."""
    aggregator = aggregator if aggregator is not None else Aggregator()
    lock = api[0].lock if api is not None else contextlib.nullcontext()
    printer = Printer(out, as_json, show, reader.meta.boot_to_wall_ns) if out is not None else None
    try:
        for event in reader:
            if run is not None:
                run.seen(event)
            with lock:
                obs = aggregator.handle(event)
            if api is not None:
                api[1].publish(obs)
            if reloader is not None:
                reloader.reload_if_requested()
            if printer is not None:
                printer.print(obs)
    except CaptureError as exc:
        if run is None:
            raise
        raise run.cut(f"its frame stream broke ({exc})") from exc
    if run is not None and not run.ended:
        raise run.cut("its frame stream ended without the probe's final frame")
    return aggregator


class Printer:
    """Observations as lines on `out`: every event (`show`), or only alerts; text or JSON."""

    def __init__(self, out: TextIO, as_json: bool, show: bool, boot_to_wall_ns: int) -> None:
        self.out, self.as_json, self.show, self.boot_to_wall_ns = out, as_json, show, boot_to_wall_ns

    def print(self, obs: Observation) -> None:
        if not self.show and not obs.alerts:
            return
        if self.show:
            text = json_line(obs) if self.as_json else line(obs, self.boot_to_wall_ns)
        elif self.as_json:
            text = "\n".join(alert_json(a) for a in obs.alerts)
        else:
            text = "\n".join("\n".join(alert_lines(a, self.boot_to_wall_ns)) for a in obs.alerts)
        if text is not None:
            self.out.write(text + "\n")
            self.out.flush()


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
    from sensor.api.broker import Broker
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
    aggregator = Aggregator(rules=ruleset, config=config)
    state = ApiState(aggregator, journal, Broker(max_subscribers=args.max_subscribers), reader.meta,
                     rule_files=ruleset.files)
    publisher = Publisher(state)
    server = ApiServer(state, endpoint, args.max_subscribers)
    run = RunLog(journal, probe_pid, publisher.publish_gap, watchdog=server.failure)
    run.begin()  # journaled before the API serves: a resuming subscriber replays it
    server.start()
    print(f"gpusentry: API on {describe_endpoint(endpoint, server.port)}; journal {journal.path}", file=sys.stderr)
    reloader = Reloader(args.rules, aggregator, state)
    reloader.install()
    grace = 0.0  # failing: the agent must be gone within a second
    try:
        consume(reader, None if args.quiet else sys.stdout, args.json, aggregator=aggregator, reloader=reloader,
                api=(state, publisher), run=run)
        grace = 1.0
    except GpusentryError:
        raise
    except Exception as exc:  # a bug: the journal says why the sensor went blind, the traceback says where
        run.failed(f"the aggregator failed: {type(exc).__name__}: {exc}")
        raise
    finally:
        server.stop(grace)
        journal.close()
    return 0


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
    ruleset, config = load_detection(args)
    src, reader = open_capture(args.file)
    with src:
        aggregator = consume(reader, sys.stdout, args.json, show=args.events,
                             aggregator=Aggregator(rules=ruleset, config=config))
    print(summary(aggregator), file=sys.stdout)
    return 0


def summary(aggregator: Aggregator) -> str:
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
    return text


# -- the probe side ------------------------------------------------------------------------

