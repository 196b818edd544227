"""The `gpusentry` command: its flags, and the commands that are small enough to live here.

The agent's two halves live in sensor/agent.py (the probe side: run, record) and
sensor/consume.py (the aggregator side: the agent's second process, and analyze)."""

from __future__ import annotations

import argparse
import contextlib
import os
import select
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

import grpc

from sensor import __version__
from sensor.agent import cmd_record, cmd_run
from sensor.api.server import DEFAULT_SOCKET
from sensor.consume import DEFAULT_JOURNAL, cmd_aggregate, cmd_analyze
from sensor.errors import GpusentryError, UsageError
from sensor.rules.loader import RuleError, load_rules


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
    run.add_argument("--user", help="run the aggregator, the API and the live view as this user (default: "
                                    "gpusentry, when it exists; 'root' keeps them privileged)")
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
    watch.add_argument("--lifeline", type=int, help=argparse.SUPPRESS)  # the agent's pipe: its end stops the view

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

    try:
        channel, endpoint = client_channel(args)
    except UsageError:
        if args.lifeline is not None and _ended(args.lifeline):
            return 0  # the agent that started this view is gone already, and has said why
        raise
    watcher = Watcher(channel, endpoint)
    # the agent stops its view with SIGTERM: leave the terminal as it was
    signal.signal(signal.SIGTERM, lambda *_: watcher.stop.set())
    if args.lifeline is not None:
        threading.Thread(target=_end_with, args=(args.lifeline, watcher.stop), daemon=True).start()
    try:
        watcher.run()
    except KeyboardInterrupt:
        watcher.stop.set()
    finally:
        channel.close()  # ends the subscription now, rather than when the agent's server goes
    return 0


def _ended(lifeline: int) -> bool:
    """Whether the agent's end of the lifeline is closed (reading it would not block, and gets nothing)."""
    readable, _, _ = select.select([lifeline], [], [], 0)
    return bool(readable) and os.read(lifeline, 64) == b""


def _end_with(lifeline: int, stop: threading.Event) -> None:
    """Block on the agent's lifeline pipe: when the agent is gone, the pipe ends and so does the view."""
    with contextlib.suppress(OSError):
        while os.read(lifeline, 64):
            pass
    stop.set()


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
