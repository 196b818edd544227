"""The `gpusentry` command: run, record, analyze, doctor."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, TextIO, cast

import grpc

from sensor import __version__
from sensor.aggregator.aggregator import Aggregator
from sensor.aggregator.detector import DetectorConfig
from sensor.api.publish import Publisher
from sensor.api.server import DEFAULT_SOCKET, Endpoint
from sensor.api.state import ApiState
from sensor.capture import EmptyStream, FrameReader, FrameWriter, StreamMeta, open_capture
from sensor.errors import GpusentryError, UsageError
from sensor.journal import Journal, Retention
from sensor.output import alert_json, alert_lines, json_line, line
from sensor.probe.program import ProbeConfig
from sensor.rules.loader import RuleError, load_rules
from sensor.rules.model import RuleSet

if TYPE_CHECKING:
    from sensor.probe.probe import Probe

DEFAULT_JOURNAL = Path("/var/lib/gpusentry/journal.db")


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line with the fix, like every other error."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{self.prog}: {message}", f"see `{self.prog} --help`")


def _probe_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--max-args", type=int, default=64, help="arguments captured per exec (default 64)")
    parser.add_argument("--arg-len", type=int, default=256, help="bytes captured per argument (default 256)")
    parser.add_argument("--ringbuf-pages", type=int, default=1024, help="BPF ring buffer size in 4 KiB pages")
    parser.add_argument("--queue-size", type=int, default=65536, help="frames buffered between probe threads")


def _detection_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rules", action="append", default=[], metavar="FILE",
                        help="a rule file, in addition to the built-in rules (repeatable)")
    parser.add_argument("--egress-allow", action="append", default=[], metavar="CIDR",
                        help="destinations that are allowed egress (repeatable)")


def _api_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--socket", default=str(DEFAULT_SOCKET), metavar="PATH",
                        help=f"the API's UNIX socket (default {DEFAULT_SOCKET}; 'none' for no socket)")
    parser.add_argument("--socket-group", metavar="GROUP", help="group allowed to use the socket (mode 0660)")
    parser.add_argument("--listen", metavar="HOST:PORT", help="also serve the API over TCP")
    parser.add_argument("--tls-cert", metavar="PEM", help="TLS certificate for --listen")
    parser.add_argument("--tls-key", metavar="PEM", help="TLS key for --listen")
    parser.add_argument("--tls-client-ca", metavar="PEM", help="require client certificates signed by this CA")
    parser.add_argument("--insecure-plaintext", action="store_true",
                        help="allow plain-text TCP on a non-loopback address")
    parser.add_argument("--journal", default=str(DEFAULT_JOURNAL), metavar="PATH", help="the alert journal")
    parser.add_argument("--retention-days", type=int, default=30, help="keep journaled alerts this long")
    parser.add_argument("--retention-count", type=int, default=1_000_000, help="keep at most this many alerts")
    parser.add_argument("--max-subscribers", type=int, default=64)


def _client_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--socket", default=str(DEFAULT_SOCKET), metavar="PATH", help="the agent's UNIX socket")
    parser.add_argument("--connect", metavar="HOST:PORT", help="connect over TCP instead")
    parser.add_argument("--tls-ca", metavar="PEM", help="CA of the agent's TLS certificate")
    parser.add_argument("--tls-cert", metavar="PEM", help="client certificate (mTLS)")
    parser.add_argument("--tls-key", metavar="PEM", help="client key (mTLS)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="gpusentry", description="eBPF sensor for GPU hosts")
    parser.add_argument("--version", action="version", version=f"gpusentry {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = sub.add_parser("run", help="start the agent and print events")
    _probe_flags(run)
    run.add_argument("--json", action="store_true", help="print JSON lines")
    run.add_argument("--ebpf", action="store_true", help="print the final BPF C and exit")
    run.add_argument("--user", help="run the aggregator as this unprivileged user")
    run.add_argument("--quiet", action="store_true", help="print no event lines (the API still serves them)")
    run.add_argument("--view", action=argparse.BooleanOptionalAction, default=None,
                     help="show the live view (default: when the output is a terminal and not --json)")
    _detection_flags(run)
    _api_flags(run)

    record = sub.add_parser("record", help="write the probe's frame stream to a capture file")
    _probe_flags(record)
    record.add_argument("-w", "--write", required=True, metavar="FILE", help="capture file ('-' for stdout)")
    record.add_argument("--duration", type=float, help="stop after this many seconds")

    analyze = sub.add_parser("analyze", help="run the aggregator on a capture file, with no kernel")
    analyze.add_argument("file")
    analyze.add_argument("--json", action="store_true")
    analyze.add_argument("--events", action="store_true", help="print every event")
    _detection_flags(analyze)

    aggregate = sub.add_parser("aggregate", help=argparse.SUPPRESS)
    aggregate.add_argument("--json", action="store_true")
    aggregate.add_argument("--quiet", action="store_true")
    _detection_flags(aggregate)
    _api_flags(aggregate)

    watch = sub.add_parser("watch", help="the live view: a client of the agent's API")
    _client_flags(watch)

    events = sub.add_parser("events", help="print live events and alerts as JSON lines (an API client)")
    _client_flags(events)
    events.add_argument("--alerts-only", action="store_true")
    events.add_argument("--since", type=int, metavar="CURSOR", help="replay journaled alerts after CURSOR first")

    rules = sub.add_parser("rules", help="rule files")
    rules_sub = rules.add_subparsers(dest="rules_command", required=True, parser_class=_Parser)
    check = rules_sub.add_parser("check", help="check rule files and report every problem")
    check.add_argument("files", nargs="*", help="rule files (the built-in rules are always checked)")

    sub.add_parser("doctor", help="check what the probe needs from this machine")

    fake = sub.add_parser("fake-gpu", help="a fake NVIDIA driver, for demos and tests on hosts without a GPU")
    fake_sub = fake.add_subparsers(dest="fake_command", required=True, parser_class=_Parser)
    replay = fake_sub.add_parser("replay", help="replay a fixture's CUDA ioctls against the fake driver")
    replay.add_argument("fixture", help="a fixture file (tests/fixtures/gpu/*.yaml)")
    return parser


def _config(args: argparse.Namespace) -> ProbeConfig:
    config = ProbeConfig(max_args=args.max_args, arg_len=args.arg_len,
                         ringbuf_pages=args.ringbuf_pages, queue_size=args.queue_size)
    config.validate()
    return config


# -- aggregate: the consuming side ---------------------------------------------------------


def load_detection(args: argparse.Namespace) -> tuple[RuleSet, DetectorConfig]:
    """The rules and detector settings; an invalid rule file stops the command here."""
    import ipaddress

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


def _wait_for_stop(probe_failed: threading.Event, duration: float | None,
                   child: subprocess.Popen[bytes] | None = None, viewer: subprocess.Popen[bytes] | None = None) -> None:
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    waited = 0.0
    while not stop.is_set() and not probe_failed.is_set():
        if child is not None and child.poll() is not None:
            break
        if viewer is not None and viewer.poll() is not None:
            break  # the view was closed: the agent stops with it
        stop.wait(0.2)
        waited += 0.2
        if duration is not None and waited >= duration:
            break


def _start_probe(config: ProbeConfig, sink: FrameWriter,
                 exclude: Sequence[int] = ()) -> tuple[Probe, threading.Event, list[BaseException]]:
    from sensor.probe.probe import Probe

    failed = threading.Event()
    errors: list[BaseException] = []

    def on_error(exc: BaseException) -> None:
        errors.append(exc)
        failed.set()

    probe = Probe(config, sink, exclude_pids=exclude, on_error=on_error)
    probe.start()
    return probe, failed, errors


def cmd_run(args: argparse.Namespace) -> int:
    config = _config(args)
    from sensor.probe import program

    if args.ebpf:
        print(program.final_source(config))
        return 0
    load_detection(args)  # an invalid rule file (or API setting) stops the agent before anything starts
    endpoint_of(args)
    program.preflight()
    _prepare_directories(args)
    view = args.view if args.view is not None else (sys.stdout.isatty() and not args.json)
    if view and args.socket == "none":
        raise UsageError("the live view reads the API's socket, and --socket is none", "keep a socket, or --no-view")
    child_cmd = [sys.executable, "-m", "sensor", "aggregate"] + (["--json"] if args.json else [])
    child_cmd += ["--quiet"] if args.quiet or view else []
    child_cmd += [flag for path in args.rules for flag in ("--rules", os.path.abspath(path))]
    child_cmd += [flag for cidr in args.egress_allow for flag in ("--egress-allow", cidr)]
    child_cmd += _forwarded_api_flags(args)
    child = subprocess.Popen(child_cmd, stdin=subprocess.PIPE, user=args.user, group=_group_of(args.user),
                             start_new_session=True)
    assert child.stdin is not None
    try:
        meta = StreamMeta(config=config.to_dict(), features=program.kernel_features(config))
        writer = FrameWriter(cast(BinaryIO, child.stdin), meta)
        probe, failed, errors = _start_probe(config, writer, exclude=[child.pid])
        print(f"gpusentry: watching (probe pid {os.getpid()}, aggregator pid {child.pid}); Ctrl-C stops",
              file=sys.stderr)
        signal.signal(signal.SIGHUP, lambda *_: child.send_signal(signal.SIGHUP))  # reload the rules
        viewer = _start_view(args, probe) if view else None
        _wait_for_stop(failed, None, child, viewer)
        probe.stop()
        if viewer is not None and viewer.poll() is None:
            viewer.terminate()
            viewer.wait(timeout=10)
        if child.poll() is not None:
            raise GpusentryError(f"the aggregator (pid {child.pid}) stopped: {_exit_text(child.returncode)}",
                                 "see its message above, then start the agent again")
        if errors:
            raise GpusentryError(f"the probe stopped: {errors[0]}", "start the agent again; report it if it recurs")
    finally:
        if child.stdin and not child.stdin.closed:
            with contextlib.suppress(BrokenPipeError):
                child.stdin.close()
        child.wait(timeout=10)
    return 0


def _exit_text(returncode: int) -> str:
    if returncode < 0:
        return f"killed by signal {-returncode} ({signal.Signals(-returncode).name})"
    return f"exit status {returncode}"


def _start_view(args: argparse.Namespace, probe: Probe) -> subprocess.Popen[bytes]:
    """The live view on this terminal, once the API's socket is up; filtered out like the agent."""
    socket = Path(args.socket)
    deadline = threading.Event()
    for _ in range(300):
        if socket.exists():
            break
        deadline.wait(0.1)
    viewer = subprocess.Popen([sys.executable, "-m", "sensor", "watch", "--socket", str(socket)])
    probe.exclude([viewer.pid])
    return viewer


def _forwarded_api_flags(args: argparse.Namespace) -> list[str]:
    flags = ["--socket", args.socket if args.socket == "none" else os.path.abspath(args.socket),
             "--journal", os.path.abspath(args.journal), "--retention-days", str(args.retention_days),
             "--retention-count", str(args.retention_count), "--max-subscribers", str(args.max_subscribers)]
    for name in ("socket_group", "listen", "tls_cert", "tls_key", "tls_client_ca"):
        value = getattr(args, name)
        if value:
            flags += [f"--{name.replace('_', '-')}", os.path.abspath(value) if name.startswith("tls") else value]
    return flags + (["--insecure-plaintext"] if args.insecure_plaintext else [])


def _prepare_directories(args: argparse.Namespace) -> None:
    """The socket's and the journal's directories, owned by the aggregator's user."""
    for directory in (Path(args.journal).parent, *([] if args.socket == "none" else [Path(args.socket).parent])):
        try:
            directory.mkdir(parents=True, exist_ok=True, mode=0o755)
            if args.user:
                import pwd

                entry = pwd.getpwnam(args.user)
                os.chown(directory, entry.pw_uid, entry.pw_gid)
        except (OSError, KeyError) as exc:
            raise UsageError(f"cannot prepare {directory}: {exc}", "check --journal and --socket") from exc
    if args.user and Path(args.journal).exists():
        import pwd

        entry = pwd.getpwnam(args.user)
        for suffix in ("", "-wal", "-shm"):
            journal = Path(args.journal + suffix)
            if journal.exists():
                os.chown(journal, entry.pw_uid, entry.pw_gid)


def _group_of(user: str | None) -> int | None:
    if user is None:
        return None
    import pwd

    try:
        return pwd.getpwnam(user).pw_gid
    except KeyError as exc:
        raise UsageError(f"--user {user}: no such user", "give an existing unprivileged user") from exc


def cmd_record(args: argparse.Namespace) -> int:
    config = _config(args)
    try:
        out = sys.stdout.buffer if args.write == "-" else open(args.write, "wb")  # noqa: SIM115
    except OSError as exc:
        raise UsageError(f"cannot write {args.write}: {exc.strerror}", "give a writable path") from exc
    with out:
        from sensor.probe import program

        writer = FrameWriter(out, StreamMeta(config=config.to_dict(), features=program.kernel_features(config)))
        probe, failed, errors = _start_probe(config, writer)
        print(f"gpusentry: recording to {args.write}; Ctrl-C stops", file=sys.stderr)
        _wait_for_stop(failed, args.duration)
        probe.stop()
    if errors:
        raise GpusentryError(f"the probe stopped: {errors[0]}")
    stats = probe.stats()
    print(f"gpusentry: recorded {sum(stats.records.values())} records; drops: kernel "
          f"{sum(stats.kernel_drops.values())}, probe {sum(stats.probe_drops.values())}", file=sys.stderr)
    return 0


def client_channel(args: argparse.Namespace) -> tuple[grpc.Channel, str]:
    if args.connect is None:
        if not Path(args.socket).exists():
            raise UsageError(f"no agent API at {args.socket}", "start the agent (scripts/agent), or give --socket")
        return grpc.insecure_channel(f"unix:{args.socket}"), f"unix:{args.socket}"
    if args.tls_ca is None:
        return grpc.insecure_channel(args.connect), args.connect

    def read(path: str | None) -> bytes | None:
        return Path(path).read_bytes() if path else None

    credentials = grpc.ssl_channel_credentials(read(args.tls_ca), read(args.tls_key), read(args.tls_cert))
    return grpc.secure_channel(args.connect, credentials), f"{args.connect} (TLS)"


def cmd_watch(args: argparse.Namespace) -> int:
    from sensor.view import Watcher

    channel, endpoint = client_channel(args)
    watcher = Watcher(channel, endpoint)
    try:
        watcher.run()
    except KeyboardInterrupt:
        watcher.stop.set()
    return 0


def cmd_events(args: argparse.Namespace) -> int:
    """A small API client: every event and alert as a JSON line."""
    from google.protobuf.json_format import MessageToJson

    from sensor.api.client import sensor_stub
    from sensor.api.v1 import gpusentry_pb2 as pb

    channel, _ = client_channel(args)
    request = pb.SubscribeRequest(events=not args.alerts_only, alerts=True)
    if args.since is not None:
        request.since_cursor = args.since
    try:
        for response in sensor_stub(channel).Subscribe(request):
            print(MessageToJson(response, indent=None), flush=True)
    except grpc.RpcError as exc:
        raise GpusentryError(f"the agent's API said {exc.code().name}: {exc.details()}") from exc
    return 0


def cmd_rules(args: argparse.Namespace) -> int:
    try:
        ruleset = load_rules(Path(p) for p in args.files)
    except RuleError as exc:
        for problem in exc.problems:
            print(problem)
        print(f"{len(exc.problems)} problem(s)")
        return 1
    print(f"ok: {len(ruleset.rules)} rules in {len(ruleset.files)} file(s)")
    return 0


def cmd_doctor(_args: argparse.Namespace) -> int:
    from sensor.probe.features import run_checks

    checks = run_checks(mount=os.geteuid() == 0)
    for check in checks:
        mark = "ok  " if check.ok else "MISSING"
        print(f"{mark:8}{check.name:16}{check.detail}")
        if not check.ok and check.fix:
            print(f"{'':24}fix: {check.fix}")
    failed = [c for c in checks if not c.ok and c.required]
    print("ready" if not failed else f"not ready: {len(failed)} problem(s) above")
    return 0 if not failed else 1


def cmd_fake_gpu(args: argparse.Namespace) -> int:
    from sensor.fakegpu.fixtures import load
    from sensor.fakegpu.session import fake_driver, replay

    fixture = load(Path(args.fixture))
    if os.geteuid() != 0:
        raise UsageError("fake-gpu replay mounts a FUSE driver in a private mount namespace",
                         "run it as root (sudo)")
    with fake_driver(fixture.arch) as driver_dir:
        result = replay(driver_dir, fixture.path)
    if result.returncode != 0:
        raise GpusentryError(f"the replay of {fixture.name} failed: {result.stderr.strip()}")
    calls = result.report["calls"]
    allocs = [c for c in calls if c["op"] == "alloc"]
    failed = sum(1 for c in allocs if c["ret"] or c["status"])
    print(f"replayed {fixture.name} ({fixture.arch}, driver {fixture.driver}) as pid {result.pid}: "
          f"{result.report['ioctls']} ioctls, {len(allocs)} allocations ({failed} failed)")
    return 0


COMMANDS = {"run": cmd_run, "record": cmd_record, "analyze": cmd_analyze,
            "aggregate": cmd_aggregate, "doctor": cmd_doctor, "fake-gpu": cmd_fake_gpu, "rules": cmd_rules,
            "watch": cmd_watch, "events": cmd_events}


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        return COMMANDS[args.command](args)
    except GpusentryError as exc:
        print(f"gpusentry: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except BrokenPipeError:
        return 0
    except KeyboardInterrupt:
        return 130
