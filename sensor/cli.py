# PYTHON_ARGCOMPLETE_OK
"""The `gpusentry` command: its flags, and the commands that are small enough to live here.

The agent's two halves live in sensor/agent.py (the probe side: run, record) and
sensor/consume.py (the aggregator side: the agent's second process, and analyze); the API's
clients in sensor/clientcmds.py. Commands are imported only when they run: shell completion
builds this parser on every Tab.

The settings of run, aggregate and analyze come from sensor/config.py: each of their setting
flags is a key of the configuration file, which a flag given on the command line overrides.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import select
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import argcomplete

from sensor import __version__, config
from sensor.errors import GpusentryError, RuntimeFailure, UsageError

SEVERITIES = ("info", "low", "medium", "high", "critical")
HIDDEN = ("aggregate",)  # the agent's second process: started by run, not by people
EPILOG = f"""\
exit status:
  0  ok
  1  a runtime failure: a part of the agent died, the API answered with an error
  2  a usage or setup error, fixable before running again: a bad flag, configuration,
     rule or capture file, a missing privilege or kernel feature
  3  the probe's stream was cut: the agent went blind; a supervisor should restart it
  4  analyze --fail-on: an alert reached that severity

configuration (run and analyze): {config.DEFAULT_FILE} when it exists, or
`COMMAND -c FILE`; then GPUSENTRY_<SECTION>_<KEY> environment variables (e.g.
GPUSENTRY_API_LISTEN, GPUSENTRY_DETECTION_EGRESS_ALLOW=10.0.0.0/8,192.168.0.0/16); then
flags. `gpusentry config show` prints every setting and where it came from.

shell completion (bash; zsh with bashcompinit):
  eval "$(register-python-argcomplete gpusentry)"
"""
SETTINGS_EPILOG = """\
Each setting is also a key of the configuration file and an environment variable
(--max-args: probe.max_args, GPUSENTRY_PROBE_MAX_ARGS; --journal: journal.path); a flag
beats both. `gpusentry config show` lists every setting and where its value comes from.
"""
COMMANDS = {
    "run": "sensor.agent:cmd_run", "record": "sensor.agent:cmd_record", "analyze": "sensor.consume:cmd_analyze",
    "aggregate": "sensor.consume:cmd_aggregate", "watch": "sensor.cli:cmd_watch",
    "events": "sensor.clientcmds:cmd_events", "alerts": "sensor.clientcmds:cmd_alerts",
    "incidents": "sensor.clientcmds:cmd_incidents", "status": "sensor.clientcmds:cmd_status",
    "rules": "sensor.cli:cmd_rules", "config": "sensor.cli:cmd_config", "doctor": "sensor.cli:cmd_doctor",
    "fake-gpu": "sensor.cli:cmd_fake_gpu", "simulate": "sensor.simulate.cmd:cmd_simulate",
}


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Every flag's default, said as a person would ('not set', 'none'), and the epilog as written."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "(default" in text or action.default is argparse.SUPPRESS or action.required or not action.option_strings:
            return text
        return f"{text} (default: {_shown(action.default)})".replace("%(", "%%(")


def _shown(default: Any) -> str:
    if default is None:
        return "not set"
    if default == []:
        return "none"
    return config.render(default).replace("%", "%%")


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line with the fix, like every other error."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _Formatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{self.prog}: {message}", f"see `{self.prog} --help`")


# -- flags ------------------------------------------------------------------------------------


def _setting(parser: argparse.ArgumentParser, dotted: str, **kwargs: Any) -> None:
    """The flag of a configuration key: its name, default and help come from the key."""
    key = config.KEY[dotted]
    default = list(key.default) if isinstance(key.default, tuple) else key.default
    action = parser.add_argument(key.flag, dest=key.dest, default=default, **kwargs)
    action.help = key.help  # BooleanOptionalAction would add a default of its own


def _probe_flags(parser: argparse.ArgumentParser) -> None:
    for name in ("max_args", "arg_len", "ringbuf_pages", "queue_size"):
        _setting(parser, f"probe.{name}", type=int, metavar="N")
    for name in ("podman_socket", "containerd_socket", "kubelet_socket", "pod_logs"):
        _setting(parser, f"containers.{name}", metavar="PATH")


def _detection_flags(parser: argparse.ArgumentParser) -> None:
    _setting(parser, "detection.rules", action="append", metavar="FILE")
    _setting(parser, "detection.egress_allow", action="append", metavar="CIDR")
    _setting(parser, "detection.incident_window", type=float, metavar="SECONDS")


def _output_flags(parser: argparse.ArgumentParser, events_alias: bool = False) -> None:
    _setting(parser, "output.mode", choices=config.OUTPUT_MODES)
    parser.add_argument("--quiet", dest="output", action="store_const", const="none", default=argparse.SUPPRESS,
                        help="the same as --output none")
    if events_alias:
        parser.add_argument("--events", dest="output", action="store_const", const="events",
                            default=argparse.SUPPRESS, help="the same as --output events")
    _setting(parser, "output.json", action=argparse.BooleanOptionalAction)


def _api_flags(parser: argparse.ArgumentParser) -> None:
    _setting(parser, "api.socket", metavar="PATH")
    _setting(parser, "api.socket_group", metavar="GROUP")
    _setting(parser, "api.listen", metavar="HOST:PORT")
    for name in ("tls_cert", "tls_key", "tls_client_ca"):
        _setting(parser, f"api.{name}", metavar="PEM")
    _setting(parser, "api.insecure_plaintext", action=argparse.BooleanOptionalAction)
    _setting(parser, "api.max_subscribers", type=int, metavar="N")
    _setting(parser, "journal.path", metavar="PATH")
    _setting(parser, "journal.retention_days", type=int, metavar="DAYS")
    _setting(parser, "journal.retention_count", type=int, metavar="N")
    _setting(parser, "metrics.listen", metavar="HOST:PORT")


def _config_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-c", "--config", metavar="FILE",
                        help=f"the configuration file (default: {config.DEFAULT_FILE}, when it exists)")


def _client_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--socket", metavar="PATH",
                        help=f"the agent's UNIX socket (default: api.socket of {config.DEFAULT_FILE} or "
                             f"GPUSENTRY_API_SOCKET, else {config.DEFAULT_SOCKET})")
    parser.add_argument("--connect", metavar="HOST:PORT", help="connect over TCP instead")
    parser.add_argument("--tls-ca", metavar="PEM", help="the CA of the agent's TLS certificate: TLS on --connect")
    parser.add_argument("--tls-cert", metavar="PEM", help="a client certificate (mTLS)")
    parser.add_argument("--tls-key", metavar="PEM", help="the client certificate's key (mTLS)")


def _format_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-o", "--output", dest="format", choices=("table", "json"), default="table",
                        help="a table, or one JSON object per line")


def _page_flags(parser: argparse.ArgumentParser, what: str) -> None:
    from sensor.clientcmds import count, when

    parser.add_argument("--min-severity", choices=SEVERITIES, help=f"only {what} of at least this severity")
    parser.add_argument("--since", type=when, metavar="TIME",
                        help=f"only {what} seen at or after TIME: RFC 3339 (2024-05-01T12:00:00Z) or a time ago "
                             "(90s, 30m, 1h, 2d, 1w)")
    parser.add_argument("--until", type=when, metavar="TIME", help=f"only {what} before TIME (as --since)")
    parser.add_argument("--after", type=int, metavar="CURSOR", help=f"only {what} after this journal cursor")
    parser.add_argument("--limit", type=count, metavar="N", help=f"at most N {what} (default: all)")
    _format_flag(parser)


# -- commands ---------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="gpusentry", description="eBPF sensor for GPU hosts", epilog=EPILOG)
    parser.add_argument("--version", action="version", version=f"gpusentry {__version__}")
    # metavar: the choices listed in the usage line leave out the hidden commands
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser, metavar="COMMAND")
    _agent_commands(sub)
    _client_commands(sub)
    _tool_commands(sub)
    return parser


def _agent_commands(sub: Any) -> None:
    run = sub.add_parser("run", help="start the agent and print incidents and alerts", epilog=SETTINGS_EPILOG,
                         description="Start the agent: the probe, the aggregator with the API, and the live view.")
    _config_flag(run)
    _probe_flags(run)
    run.add_argument("--ebpf", action="store_true", help="print the final BPF C and exit")
    _setting(run, "agent.user", metavar="USER")
    _setting(run, "agent.view", action=argparse.BooleanOptionalAction)
    _output_flags(run)
    _detection_flags(run)
    _api_flags(run)

    record = sub.add_parser("record", help="write the probe's frame stream to a capture file")
    _probe_flags(record)
    record.add_argument("-w", "--write", required=True, metavar="FILE", help="capture file ('-' for stdout)")
    record.add_argument("--duration", type=float, metavar="SECONDS", help="stop after this many seconds")

    analyze = sub.add_parser("analyze", help="run the aggregator on a capture file, with no kernel",
                             epilog=SETTINGS_EPILOG)
    analyze.add_argument("file", help="a capture file (from `gpusentry record`)")
    _config_flag(analyze)
    _output_flags(analyze, events_alias=True)
    analyze.add_argument("--fail-on", choices=SEVERITIES, metavar="SEVERITY",
                         help="exit with status 4 when an alert reaches this severity (info, low, medium, high, "
                              "critical) (default: never)")
    _detection_flags(analyze)

    aggregate = sub.add_parser("aggregate")  # HIDDEN: no help, so not listed
    # the pipe on which it asks the probe for launch watches (sensor/aggregator/launches.py): run sets it
    aggregate.add_argument("--launch-requests", type=int, default=None, help=argparse.SUPPRESS)
    _config_flag(aggregate)
    _output_flags(aggregate)
    _detection_flags(aggregate)
    _api_flags(aggregate)


def _client_commands(sub: Any) -> None:
    from sensor.clientcmds import EVENT_KINDS, FACT_KINDS, count

    watch = sub.add_parser("watch", help="the live view: a client of the agent's API")
    _client_flags(watch)
    watch.add_argument("--lifeline", type=int, help=argparse.SUPPRESS)  # the agent's pipe: its end stops the view

    events = sub.add_parser("events", help="print live events, alerts and more as JSON lines (an API client)")
    _client_flags(events)
    events.add_argument("--kind", action="append", default=[], choices=EVENT_KINDS, metavar="KIND",
                        help=f"only events of this kind (repeatable): {', '.join(EVENT_KINDS)}")
    events.add_argument("--rule", action="append", default=[], metavar="ID", help="only this rule's alerts "
                        "(repeatable)")
    events.add_argument("--min-severity", choices=SEVERITIES, help="only alerts of at least this severity")
    events.add_argument("--exec-id", metavar="ID", help="only this exec image (pid:start_ns:execs)")
    events.add_argument("--binary", metavar="PATH", help="only processes running this executable (a path or a "
                        "basename)")
    events.add_argument("--ancestor", metavar="EXEC_ID", help="only this process and everything below it")
    events.add_argument("--cgroup", action="append", default=[], type=int, metavar="ID",
                        help="only processes in this cgroup (repeatable)")
    events.add_argument("--since", type=int, metavar="CURSOR", help="replay journaled alerts and sensor gaps after "
                        "CURSOR first")
    events.add_argument("--alerts-only", action="store_true", help="no events: alerts and sensor gaps only")
    events.add_argument("--incidents", action="store_true", help="incidents too (each new version)")
    events.add_argument("--facts", action="store_true", help="facts too")
    events.add_argument("--fact-kind", action="append", default=[], choices=FACT_KINDS, metavar="KIND",
                        help=f"only facts of this kind (repeatable; implies --facts): {', '.join(FACT_KINDS)}")
    events.add_argument("--limit", type=count, metavar="N", help="stop after N lines (default: when the agent "
                        "ends the stream)")

    alerts = sub.add_parser("alerts", help="journaled alerts and sensor gaps, oldest first (an API client)")
    _client_flags(alerts)
    alerts.add_argument("--rule", action="append", default=[], metavar="ID", help="only this rule's alerts "
                        "(repeatable)")
    _page_flags(alerts, "alerts")

    incidents = sub.add_parser("incidents", help="journaled incidents, each in its latest version (an API client)")
    _client_flags(incidents)
    incidents.add_argument("--id", metavar="ID", help="only this incident")
    _page_flags(incidents, "incidents")

    status = sub.add_parser("status", help="the agent's status: uptime, counters by hop, rules (an API client)")
    _client_flags(status)
    _format_flag(status)


def _tool_commands(sub: Any) -> None:
    rules = sub.add_parser("rules", help="rule files")
    rules_sub = rules.add_subparsers(dest="rules_command", required=True, parser_class=_Parser, metavar="COMMAND")
    check = rules_sub.add_parser("check", help="check rule files and report every problem")
    check.add_argument("files", nargs="*", help="rule files (the built-in rules are always checked)")

    settings = sub.add_parser("config", help="the configuration file")
    settings_sub = settings.add_subparsers(dest="config_command", required=True, parser_class=_Parser,
                                           metavar="COMMAND")
    config_check = settings_sub.add_parser("check", help="check a configuration file and report every problem")
    config_check.add_argument("file", help="the configuration file")
    show = settings_sub.add_parser("show", help="every setting `run` would get, and where it comes from "
                                   "(default, file:line, environment variable)")
    _config_flag(show)

    sub.add_parser("doctor", help="check what the probe needs from this machine")

    fake = sub.add_parser("fake-gpu", help="a fake NVIDIA driver, for demos and tests on hosts without a GPU")
    fake_sub = fake.add_subparsers(dest="fake_command", required=True, parser_class=_Parser, metavar="COMMAND")
    replay = fake_sub.add_parser("replay", help="replay a fixture's CUDA ioctls against the fake driver")
    replay.add_argument("fixture", help="a fixture file (tests/fixtures/gpu/*.yaml)")

    simulate = sub.add_parser("simulate", help="perform an incident in namespaces of its own and check that the "
                              "running agent reports it (root)")
    simulate.add_argument("what", choices=("rome", "tunnel", "gpu", "pool"),
                          help="the whole ROME incident, or one of its steps")
    simulate.add_argument("--socket", metavar="PATH",
                          help=f"the running agent's UNIX socket (default: api.socket of {config.DEFAULT_FILE} or "
                               f"GPUSENTRY_API_SOCKET, else {config.DEFAULT_SOCKET})")
    simulate.add_argument("--timeout", type=float, default=30.0, metavar="SECONDS",
                          help="how long to wait for what is expected")


# -- settings: defaults, file, environment, flags ---------------------------------------------


def configure(args: argparse.Namespace, argv: Sequence[str] | None) -> None:
    """The command's settings from every source, checked, onto `args` (and `args.settings`)."""
    path = Path(args.config) if args.config else None
    settings = config.load(path, given_flags(argv), os.environ, config.SECTIONS_READ[args.command])
    config.apply(settings, args)
    args.settings = settings


def given_flags(argv: Sequence[str] | None) -> dict[str, Any]:
    """The settings given on the command line, by dest: the same parse, with no defaults."""
    parser = build_parser()
    dests = {key.dest for key in config.KEYS}
    parsers = [parser]
    while parsers:
        for action in parsers.pop()._actions:  # argparse has no public list of a parser's actions
            if isinstance(action, argparse._SubParsersAction):
                parsers += action.choices.values()
            elif action.dest in dests:
                action.default = argparse.SUPPRESS
    return {k: v for k, v in vars(parser.parse_args(argv)).items() if k in dests}


def cmd_config(args: argparse.Namespace) -> int:
    if args.config_command == "check":
        return _config_check(Path(args.file))
    try:
        settings = config.load(Path(args.config) if args.config else None)
    except config.ConfigError as exc:
        _print_problems(exc.problems, sys.stderr)
        return 2
    state = "" if settings.loaded else " (not found: every value is the default)"
    print(f"# configuration file: {settings.file}{state}")
    rows = [(dotted, config.render(s.value), s.source) for dotted, s in settings.values.items()]
    widths = [max(len(row[i]) for row in rows) for i in range(2)]
    for dotted, value, source in rows:
        print(f"{dotted:{widths[0]}}  {value:{widths[1]}}  {source}")
    for spec in settings.sinks:  # their options as configured: secrets show where they are kept, never a value
        print(f"sinks.{spec.name}  {spec.type} {', '.join(spec.kinds)}: {spec.options}  {spec.where}")
    return 0


def _config_check(path: Path) -> int:
    """The file alone (no environment, no flags), and the rule files it names."""
    from sensor.rules.loader import RuleError, load_rules

    try:
        settings = config.load(path, environ={})
        load_rules(Path(p) for p in settings["detection.rules"])
    except config.ConfigError as exc:
        _print_problems(exc.problems, sys.stdout)
        return 2
    except RuleError as exc:
        _print_problems([str(p) for p in exc.problems], sys.stdout)
        return 2
    print(f"ok: {path}")
    return 0


def _print_problems(problems: list[str], out: Any) -> None:
    for problem in problems:
        print(problem, file=out)
    print(f"{len(problems)} problem(s)", file=out)


# -- the commands small enough to live here ---------------------------------------------------


def cmd_watch(args: argparse.Namespace) -> int:
    from sensor.api.client import client_channel
    from sensor.view import Watcher

    try:
        channel, endpoint = client_channel(args.socket, args.connect, args.tls_ca, args.tls_cert, args.tls_key)
    except UsageError:
        if args.lifeline is not None and _ended(args.lifeline):
            return 0  # the agent that started this view is gone already, and has said why
        raise
    # rich takes COLUMNS and LINES over the terminal's real size: an exported, stale pair (some
    # shells and test runners export 80x24) would freeze the view at that size, resizes ignored
    for stale in ("COLUMNS", "LINES"):
        os.environ.pop(stale, None)
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


def cmd_rules(args: argparse.Namespace) -> int:
    from sensor.rules.check import run_check

    return run_check([Path(p) for p in args.files], sys.stdout)


def cmd_doctor(_args: argparse.Namespace) -> int:
    from sensor.probe.features import run_checks

    checks = run_checks(mount=os.geteuid() == 0)
    for check in checks:
        mark = "skipped" if check.skipped else "ok  " if check.ok else "MISSING"
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
        raise RuntimeFailure(f"the replay of {fixture.name} failed: {result.stderr.strip()}")
    calls = result.report["calls"]
    allocs = [c for c in calls if c["op"] == "alloc"]
    failed = sum(1 for c in allocs if c["ret"] or c["status"])
    print(f"replayed {fixture.name} ({fixture.arch}, driver {fixture.driver}) as pid {result.pid}: "
          f"{result.report['ioctls']} ioctls, {len(allocs)} allocations ({failed} failed)")
    return 0


def command(name: str) -> Callable[[argparse.Namespace], int]:
    module, function = COMMANDS[name].split(":")
    found: Callable[[argparse.Namespace], int] = getattr(importlib.import_module(module), function)
    return found


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argcomplete.autocomplete(parser, exclude=HIDDEN)  # on Tab: completes, and exits here
    try:
        args = parser.parse_args(argv)
        if args.command in config.SECTIONS_READ:
            configure(args, argv)
        elif getattr(args, "socket", "") is None:  # an API client: where the agent's configuration puts it
            args.socket = config.load(checked=())["api.socket"]
        return command(args.command)(args)
    except GpusentryError as exc:
        print(f"gpusentry: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except BrokenPipeError:
        return 0
    except KeyboardInterrupt:
        return 130
