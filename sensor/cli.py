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

from sensor import __version__
from sensor.aggregator.aggregator import Aggregator
from sensor.aggregator.detector import DetectorConfig
from sensor.capture import EmptyStream, FrameReader, FrameWriter, StreamMeta, open_capture
from sensor.errors import GpusentryError, UsageError
from sensor.output import alert_json, alert_lines, json_line, line
from sensor.probe.program import ProbeConfig
from sensor.rules.loader import RuleError, load_rules
from sensor.rules.model import RuleSet

if TYPE_CHECKING:
    from sensor.probe.probe import Probe


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


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="gpusentry", description="eBPF sensor for GPU hosts")
    parser.add_argument("--version", action="version", version=f"gpusentry {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = sub.add_parser("run", help="start the agent and print events")
    _probe_flags(run)
    run.add_argument("--json", action="store_true", help="print JSON lines")
    run.add_argument("--ebpf", action="store_true", help="print the final BPF C and exit")
    run.add_argument("--user", help="run the aggregator as this unprivileged user")
    _detection_flags(run)

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
    _detection_flags(aggregate)

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

    def __init__(self, paths: list[str], aggregator: Aggregator) -> None:
        self.paths = paths
        self.aggregator = aggregator
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
            return
        self.aggregator.detector.reload(ruleset)
        print(f"gpusentry: rules reloaded: {len(ruleset.rules)} rules", file=sys.stderr)


def consume(reader: FrameReader, out: TextIO, as_json: bool, show: bool = True,
            aggregator: Aggregator | None = None, reloader: Reloader | None = None) -> Aggregator:
    aggregator = aggregator if aggregator is not None else Aggregator()
    for event in reader:
        obs = aggregator.handle(event)
        if reloader is not None:
            reloader.reload_if_requested()
        text = json_line(obs) if as_json else line(obs, reader.meta.boot_to_wall_ns)
        if text is not None and (show or obs.alerts):
            if not show:  # alerts only
                text = "\n".join(alert_json(a) for a in obs.alerts) if as_json else "\n".join(
                    "\n".join(alert_lines(a, reader.meta.boot_to_wall_ns)) for a in obs.alerts)
            out.write(text + "\n")
            out.flush()
    return aggregator


def cmd_aggregate(args: argparse.Namespace) -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the probe decides when to stop
    ruleset, config = load_detection(args)
    try:
        reader = FrameReader(sys.stdin.buffer, "probe stream")
    except EmptyStream:
        return 0  # the probe failed to start and has said why
    aggregator = Aggregator(rules=ruleset, config=config)
    reloader = Reloader(args.rules, aggregator)
    reloader.install()
    consume(reader, sys.stdout, args.json, aggregator=aggregator, reloader=reloader)
    return 0


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
                   child: subprocess.Popen[bytes] | None = None) -> None:
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    waited = 0.0
    while not stop.is_set() and not probe_failed.is_set():
        if child is not None and child.poll() is not None:
            break
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
    load_detection(args)  # an invalid rule file stops the agent before anything starts
    program.preflight()
    child_cmd = [sys.executable, "-m", "sensor", "aggregate"] + (["--json"] if args.json else [])
    child_cmd += [flag for path in args.rules for flag in ("--rules", os.path.abspath(path))]
    child_cmd += [flag for cidr in args.egress_allow for flag in ("--egress-allow", cidr)]
    child = subprocess.Popen(child_cmd, stdin=subprocess.PIPE, user=args.user, group=_group_of(args.user),
                             start_new_session=True)
    assert child.stdin is not None
    try:
        writer = FrameWriter(cast(BinaryIO, child.stdin), StreamMeta(config=config.to_dict()))
        probe, failed, errors = _start_probe(config, writer, exclude=[child.pid])
        print(f"gpusentry: watching (probe pid {os.getpid()}, aggregator pid {child.pid}); Ctrl-C stops",
              file=sys.stderr)
        signal.signal(signal.SIGHUP, lambda *_: child.send_signal(signal.SIGHUP))  # reload the rules
        _wait_for_stop(failed, None, child)
        probe.stop()
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
        writer = FrameWriter(out, StreamMeta(config=config.to_dict()))
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
            "aggregate": cmd_aggregate, "doctor": cmd_doctor, "fake-gpu": cmd_fake_gpu, "rules": cmd_rules}


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
