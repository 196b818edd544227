"""The consuming side: the aggregator over a frame stream, live (`aggregate`, the agent's
second process) or from a capture file (`analyze`), printing lines and serving the API."""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import signal
import sys
from pathlib import Path
from typing import TextIO

from sensor.aggregator.aggregator import Aggregator
from sensor.aggregator.detector import DetectorConfig
from sensor.api.publish import Publisher
from sensor.api.server import Endpoint
from sensor.api.state import ApiState
from sensor.capture import EmptyStream, FrameReader, open_capture
from sensor.errors import UsageError
from sensor.journal import Journal, Retention
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


def consume(reader: FrameReader, out: TextIO | None, as_json: bool, show: bool = True,
            aggregator: Aggregator | None = None, reloader: Reloader | None = None,
            api: tuple[ApiState, Publisher] | None = None) -> Aggregator:
    """Run the aggregator over a frame stream, printing to `out` and publishing to the API."""
    aggregator = aggregator if aggregator is not None else Aggregator()
    lock = api[0].lock if api is not None else contextlib.nullcontext()
    for event in reader:
        with lock:
            obs = aggregator.handle(event)
        if api is not None:
            api[1].publish(obs)
        if reloader is not None:
            reloader.reload_if_requested()
        if out is None:
            continue
        text = json_line(obs) if as_json else line(obs, reader.meta.boot_to_wall_ns)
        if text is not None and (show or obs.alerts):
            if not show:  # alerts only
                text = "\n".join(alert_json(a) for a in obs.alerts) if as_json else "\n".join(
                    "\n".join(alert_lines(a, reader.meta.boot_to_wall_ns)) for a in obs.alerts)
            out.write(text + "\n")
            out.flush()
    return aggregator


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
    server = ApiServer(state, endpoint, args.max_subscribers)
    server.start()
    print(f"gpusentry: API on {describe_endpoint(endpoint, server.port)}; journal {journal.path}", file=sys.stderr)
    reloader = Reloader(args.rules, aggregator, state)
    reloader.install()
    try:
        consume(reader, None if args.quiet else sys.stdout, args.json, aggregator=aggregator, reloader=reloader,
                api=(state, Publisher(state)))
    finally:
        server.stop()
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
             **{f"probe.{k}": v for k, v in c.probe_drops.items() if v}}
    drop_text = ", ".join(f"{k}={v}" for k, v in sorted(drops.items())) or "none"
    live = sum(1 for p in aggregator.table if p.alive)
    text = (f"events: {events}\nprocesses: {len(aggregator.table)} known, {live} alive\n"
            f"drops: {drop_text}")
    if aggregator.detector is not None:
        stats = aggregator.detector.engine.stats
        by_rule = ", ".join(f"{k}={v}" for k, v in sorted(stats.by_rule.items())) or "none"
        text += f"\nalerts: {stats.alerts} ({by_rule}); facts evaluated: {stats.facts}"
    return text


# -- the probe side ------------------------------------------------------------------------

