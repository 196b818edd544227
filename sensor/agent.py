"""The agent's privileged side: the probe in this process, the aggregator (with the API) as a
second process and the live view as a third, both unprivileged; `record` runs the probe alone,
into a capture file.

Privileges (README, "Privileges"): the aggregator and the view are started through
`sensor.privileges` as the `gpusentry` user (no groups, no capabilities, no_new_privs); the
probe keeps uid 0 but, once its programs are attached, only the capabilities its polling,
/proc reads and namespace route lookups need.

The probe process lives as long as the agent, so it imports only what it runs: the checks
that need the rules, the API's settings and the journal (and their modules: the rule engine,
the aggregator, the API, sqlite) run in short-lived forked children (`_apart`), and what they
built and imported never weighs on the probe.

No half-alive agent: when any of its processes dies, the agent stops at once with one line
naming which and how, and a non-zero status, so that a supervisor restarts it; the blind time
is journaled (sensor/consume.py, RunLog).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import io
import json
import os
import pwd
import resource
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, BinaryIO, TypeVar, cast

from sensor import config, privileges
from sensor import events as ev
from sensor.api.endpoint import answers, socket_in_use
from sensor.capture import FrameWriter, StreamMeta
from sensor.containers.resolve import ContainerConfig
from sensor.errors import GpusentryError, RuntimeFailure, UsageError
from sensor.probe.program import ProbeConfig

if TYPE_CHECKING:
    from sensor.probe.probe import Probe

T = TypeVar("T")
AGENT_USER = "gpusentry"
VIEW_WAIT_S = 30
POLL_S = 0.05  # how long a dead reader's exit status may lag its closed pipe
CHECK_S = 1.0  # the watch's wait between checks: deaths and signals wake it at once (SIGCHLD)


def _container_config(args: argparse.Namespace) -> ContainerConfig:
    return ContainerConfig(podman_socket=Path(args.podman_socket), containerd_socket=Path(args.containerd_socket),
                           kubelet_socket=Path(args.kubelet_socket), pod_logs=Path(args.pod_logs))


def _probe_config(args: argparse.Namespace) -> ProbeConfig:
    limits = ProbeConfig(max_args=args.max_args, arg_len=args.arg_len,
                         ringbuf_pages=args.ringbuf_pages, queue_size=args.queue_size)
    limits.validate()
    return limits


@dataclass
class Stop:
    """Why the agent stops: on purpose (status 0), or because a part of it failed."""

    reason: str
    error: GpusentryError | None = None


class Watch:
    """Waits for the first reason to stop: a signal, a duration, or a process that ended."""

    def __init__(self, duration: float | None = None) -> None:
        self.duration = duration
        self.signalled: str | None = None
        self._wake = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._on_signal)
        # a child (the aggregator, the view) that ends wakes the watch: no polling while all is well
        signal.signal(signal.SIGCHLD, lambda *_: self._wake.set())

    def _on_signal(self, signum: int, _frame: object) -> None:
        self.signalled = signal.Signals(signum).name
        self._wake.set()

    def wake(self) -> None:
        """Look again now (the probe failed)."""
        self._wake.set()

    def until_stop(self, probe_failed: threading.Event, errors: list[BaseException],
                   aggregator: subprocess.Popen[bytes] | None = None,
                   viewer: subprocess.Popen[bytes] | None = None) -> Stop:
        deadline = time.monotonic() + self.duration if self.duration is not None else None
        while True:
            self._wake.clear()  # before the checks: a wake during them is not lost
            if self.signalled is not None:
                return Stop(f"stopped by {self.signalled}")
            if probe_failed.is_set() and not _aggregator_gone_first(errors, aggregator):
                cause = f"the probe failed: {errors[0] if errors else 'unknown'}"
                return Stop(cause, RuntimeFailure(cause, "start the agent again; report it if it recurs"))
            if aggregator is not None and aggregator.poll() is not None:
                cause = f"the aggregator (pid {aggregator.pid}) stopped: {_exit_text(aggregator.returncode)}"
                return Stop(cause, RuntimeFailure(cause, "see its message above, then start the agent again"))
            if viewer is not None and viewer.poll() is not None:
                return _view_ended(viewer)
            if deadline is not None and time.monotonic() >= deadline:
                return Stop(f"stopped after {self.duration:g} s")
            self._wake.wait(CHECK_S if deadline is None else max(0.0, min(CHECK_S, deadline - time.monotonic())))


def _aggregator_gone_first(errors: list[BaseException], aggregator: subprocess.Popen[bytes] | None) -> bool:
    """The probe's writes failed because the aggregator had died: name the aggregator, the cause."""
    if aggregator is None or not errors or not isinstance(errors[0], BrokenPipeError):
        return False
    with contextlib.suppress(subprocess.TimeoutExpired):
        aggregator.wait(timeout=POLL_S)  # a dead reader's exit status may lag its closed pipe
    return aggregator.poll() is not None


def _view_ended(viewer: subprocess.Popen[bytes]) -> Stop:
    if viewer.returncode == 0:
        return Stop("the live view was closed")  # the person watching quit: the agent stops with it
    cause = f"the live view (pid {viewer.pid}) stopped: {_exit_text(viewer.returncode)}"
    return Stop(cause, RuntimeFailure(cause, "start the agent again"))


def _exit_text(returncode: int) -> str:
    if returncode < 0:
        return f"killed by signal {-returncode} ({signal.Signals(-returncode).name})"
    return f"exit status {returncode}"


def _start_probe(limits: ProbeConfig, sink: FrameWriter, watch: Watch, exclude: Sequence[int] = (),
                 containers: ContainerConfig | None = None,
                 launch_requests: int | None = None) -> tuple[Probe, threading.Event, list[BaseException]]:
    from sensor.probe.probe import Probe

    failed = threading.Event()
    errors: list[BaseException] = []

    def on_error(exc: BaseException) -> None:
        errors.append(exc)
        failed.set()
        watch.wake()

    probe = Probe(limits, sink, exclude_pids=exclude, on_error=on_error, containers=containers,
                  launch_requests=launch_requests)
    probe.start()
    return probe, failed, errors


def _start_probe_or_end(limits: ProbeConfig, sink: FrameWriter, watch: Watch, exclude: Sequence[int],
                        containers: ContainerConfig,
                        launch_requests: int | None = None) -> tuple[Probe, threading.Event, list[BaseException]]:
    """The probe, started; if it cannot start, the stream still ends with End, saying why,
    so the aggregator ends its run cleanly instead of recording a dead probe."""
    try:
        return _start_probe(limits, sink, watch, exclude, containers, launch_requests)
    except Exception as exc:
        now = time.clock_gettime_ns(time.CLOCK_BOOTTIME)
        with contextlib.suppress(OSError):
            sink.write(ev.End(now, os.getpid(), os.getpid(), f"the probe did not start: {exc}"))
        raise


def _narrow_probe(keep: dict[int, str]) -> str:
    """Keep only what the probe needs from now on (what it has of it); describes the result."""
    have = privileges.ProcStatus.read("self").cap_prm
    kept = {cap for cap in keep if have >> cap & 1}
    privileges.keep_only(kept)
    missing = sorted(privileges.CAP_NAMES[cap] for cap in keep if cap not in kept)
    text = ", ".join(sorted(privileges.CAP_NAMES[cap] for cap in kept)) or "no capabilities"
    return text + (f" (without {', '.join(missing)})" if missing else "")


# -- the agent -----------------------------------------------------------------------------


@dataclass(frozen=True)
class RunAs:
    """Who the aggregator, the API and the view run as: an account, or root (None)."""

    user: str | None
    account: privileges.Account | None

    def command(self, argv: list[str], parent_death: bool = False, group: str | None = None) -> list[str]:
        if self.user is None:
            return argv
        wrapper = [sys.executable, "-m", "sensor.privileges", "--user", self.user]
        wrapper += ["--group", group] if group else []
        wrapper += ["--parent-death"] if parent_death else []
        return [*wrapper, "--", *argv]


def _run_as(args: argparse.Namespace) -> RunAs:
    """--user, or gpusentry when it exists; root only when asked for (or with no such user), loudly."""
    name = args.user
    if name is None:
        try:
            pwd.getpwnam(AGENT_USER)
            name = AGENT_USER
        except KeyError:
            print(f"gpusentry: WARNING: no user {AGENT_USER}: the aggregator, the API and the live view run as "
                  "root; fix: scripts/install creates it (or give --user)", file=sys.stderr)
            return RunAs(None, None)
    if name == "root":
        print("gpusentry: WARNING: --user root: the aggregator, the API and the live view run with every "
              "privilege, though they read what monitored processes control", file=sys.stderr)
        return RunAs(None, None)
    try:
        return RunAs(name, privileges.account(name, args.socket_group))
    except privileges.PrivilegeError as exc:
        raise UsageError(f"--user {name}: {exc.problem}", exc.fix) from exc


def cmd_run(args: argparse.Namespace) -> int:
    limits = _probe_config(args)
    from sensor.probe import program

    if args.ebpf:
        print(program.final_source(limits))
        return 0
    # an invalid rule file, API setting or journal stops the agent before anything starts; the
    # rules are checked apart while this process checks the privileges
    checked_rules = _start_apart(lambda: _check_detection(args))
    try:
        # privileges next: without them, nothing below is the real problem; BCC only found here,
        # not imported (the probe's loader child imports it: sensor/probe/loader.py)
        program.preflight(load_bcc=False)
    except BaseException:
        checked_rules()  # a rule's error is said first, as it was when checked here
        raise
    rule_files = [Path(path) for path in checked_rules()]
    if args.socket != "none" and answers(Path(args.socket)):
        raise socket_in_use(Path(args.socket))  # here, one line; in the aggregator it would be two
    view = args.view if args.view is not None else (sys.stdout.isatty() and not args.json)
    if view and args.socket == "none":
        raise UsageError("the live view reads the API's socket, and --socket is none", "keep a socket, or --no-view")
    run_as = _run_as(args)
    _check_readable(args.rules, rule_files, run_as)
    _check_config_readable(args.settings, run_as)
    _prepare_directories(args, run_as)  # before the journal is opened: a directory it made would be root's
    _apart(lambda: _check_journal(args))
    _own_journal(args, run_as)
    child, requests = _start_aggregator(args, view, run_as)
    assert child.stdin is not None
    stream = _last_to_close(child.stdin)
    stop = Stop("the agent did not start")
    try:
        meta = StreamMeta(config=limits.to_dict(), features=program.kernel_features(limits))
        writer = FrameWriter(stream, meta)
        watch = Watch()
        probe, failed, errors = _start_probe_or_end(limits, writer, watch, [child.pid], _container_config(args),
                                                    launch_requests=requests)
        viewer = _start_view(args, probe, run_as) if view else None
        kept = _narrow_probe(privileges.AGENT_PROBE_CAPS)
        who = run_as.user or "root"
        print(f"gpusentry: watching (probe pid {os.getpid()} with {kept}; aggregator pid {child.pid} as {who}); "
              "Ctrl-C stops", file=sys.stderr)
        signal.signal(signal.SIGHUP, lambda *_: child.send_signal(signal.SIGHUP))  # reload the rules
        stop = watch.until_stop(failed, errors, child, viewer)
        if viewer is not None and viewer.poll() is None:
            viewer.terminate()  # it leaves the screen while the probe stops
        probe.stop(stop.reason, after_last_frame=lambda: _close(stream))
        _stop_view(viewer)
    finally:
        _close(stream)
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.wait(timeout=10)
    if stop.error is not None:
        raise stop.error
    return 0


def _start_aggregator(args: argparse.Namespace, view: bool, run_as: RunAs) -> tuple[subprocess.Popen[bytes], int]:
    """The aggregator, reading frames on its stdin; and the read end of the pipe on which it asks
    the probe for launch watches (sensor/aggregator/launches.py), which only the probe reads."""
    requests, asking = os.pipe()
    command = [*_aggregate_command(args, view), "--launch-requests", str(asking)]
    child = subprocess.Popen(run_as.command(command, group=args.socket_group),
                             stdin=subprocess.PIPE, start_new_session=True, pass_fds=(asking,))
    os.close(asking)
    return child, requests


def _apart(check: Callable[[], T]) -> T:
    """`check()` in a forked child: its result (plain data, sent back as JSON), or its error
    raised here (as a GpusentryError with the same line and exit status). What it imports and
    builds goes with the child, not into the long-lived probe process."""
    return _start_apart(check)()


def _start_apart(check: Callable[[], T]) -> Callable[[], T]:
    """_apart, started: this process goes on meanwhile; the function returned waits for it."""
    sys.stdout.flush()
    sys.stderr.flush()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover (the child ends in os._exit)
        try:
            os.close(read)
            _report(check, write)
        finally:
            os._exit(0)  # whatever happens, the child never goes on as the agent
    os.close(write)

    def outcome() -> T:
        with os.fdopen(read, "rb") as pipe:
            answer = pipe.read()
        os.waitpid(pid, 0)
        if not answer:
            raise RuntimeFailure("the agent's check process died before it answered", "start the agent again")
        kind, *rest = json.loads(answer)  # plain data only: nothing in it is ever run
        if kind == "interrupted":
            raise KeyboardInterrupt
        if kind == "failed":
            problem, fix, exit_code = rest
            error = GpusentryError(problem, fix)
            error.exit_code = exit_code
            raise error
        return cast(T, rest[0])

    return outcome


def _report(check: Callable[[], object], fd: int) -> None:
    """In the child: what `check()` gave, or the one line of its error, onto `fd`. A bug's
    traceback goes to stderr from here, and the parent reports it as a runtime failure."""
    outcome: tuple[object, ...]
    try:
        outcome = ("ok", check())
    except GpusentryError as exc:
        outcome = ("failed", exc.problem, exc.fix, exc.exit_code)
    except KeyboardInterrupt:
        outcome = ("interrupted",)
    except BaseException as exc:  # a bug: the parent says it, and the agent stops
        traceback.print_exc()
        outcome = ("failed", f"the agent's checks failed: {type(exc).__name__}: {exc}",
                   "report it, with the traceback above", RuntimeFailure.exit_code)
    with contextlib.suppress(Exception), os.fdopen(fd, "wb") as out:
        out.write(json.dumps(outcome).encode())
    sys.stdout.flush()
    sys.stderr.flush()


def _check_detection(args: argparse.Namespace) -> list[str]:
    """The rules and the API's settings, checked as the aggregator will read them; the rule
    files, for _check_readable."""
    from sensor.consume import endpoint_of, load_detection
    from sensor.rules.loader import rule_files

    load_detection(args)
    endpoint_of(args)
    return [str(path) for path in rule_files(Path(given) for given in args.rules)[0]]


def _check_journal(args: argparse.Namespace) -> None:
    """A journal at --journal (created if new), or the error that says what is there instead."""
    from sensor.journal import Journal

    Journal(Path(args.journal)).close()


def _close(stream: BinaryIO) -> None:
    if not stream.closed:
        with contextlib.suppress(BrokenPipeError):
            stream.close()


def _last_to_close(pipe: IO[bytes]) -> BinaryIO:
    """The pipe to the aggregator, moved to the highest fd this process may have.

    When the probe is killed, the kernel releases its files in reverse fd order, and each
    BPF attachment takes a grace period to release: on the lowest fd, the pipe would close
    (and the aggregator learn that the probe died) only after all of them, over a second
    later. On the highest, it closes first."""
    high = _move_high(pipe.fileno(), 1)
    cast(io.BufferedIOBase, pipe).detach()  # its fd moved, and is closed: the object must not close it again
    return cast(BinaryIO, os.fdopen(high, "wb"))


def _move_high(fd: int, rank: int) -> int:
    """Move `fd` to the `rank`-th highest fd this process may have (close-on-exec)."""
    limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    high = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, max(limit - rank, 3))
    os.close(fd)
    return high


def _aggregate_command(args: argparse.Namespace, view: bool) -> list[str]:
    """The aggregator's command line: the configuration file, which it reads itself (and again
    on SIGHUP), and the settings given here as flags (absolute paths). It inherits the
    environment. Settings from the file are not repeated as flags: a flag beats the file, so
    a reload could never change them. With the live view on this terminal it prints nothing."""
    settings: config.Settings = args.settings
    command = [sys.executable, "-m", "sensor", "aggregate"]
    if settings.loaded or settings.explicit:
        command += ["--config", os.path.abspath(settings.file)]
    for key in config.KEYS:
        if key.section in config.SECTIONS_READ["aggregate"] and settings.values[key.dotted].from_flag:
            command += _as_flags(key, settings[key.dotted])
    return command + (["--output", "none"] if view else [])


def _as_flags(key: config.Key, value: object) -> list[str]:
    """A setting as the flags that give it."""
    kind = key.kind
    if isinstance(kind, config.Boolean):
        return [key.flag if value else "--no-" + key.flag[2:]]
    if isinstance(kind, config.TextList):
        assert isinstance(value, tuple)
        return [part for item in value for part in (key.flag, os.path.abspath(item) if kind.path else item)]
    if value is None:
        return [key.flag, ""]  # not set, whatever the file says
    if isinstance(kind, config.Text) and kind.path and value not in kind.keep:
        return [key.flag, os.path.abspath(str(value))]
    return [key.flag, str(value)]


def _start_view(args: argparse.Namespace, probe: Probe, run_as: RunAs) -> subprocess.Popen[bytes]:
    """The live view on this terminal, once the API's socket is up; filtered out like the agent.

    It goes when the probe goes, whatever stops the probe: it holds the read end of a pipe
    (its lifeline) whose write end only the probe has, on one of its last-closed fds, so a
    killed probe's view sees the pipe end at once (a parent-death signal comes only after
    the kernel has detached every BPF program, over a second later)."""
    socket = Path(args.socket)
    pause = threading.Event()
    for _ in range(VIEW_WAIT_S * 10):
        if socket.exists():
            break
        pause.wait(0.1)
    lifeline, keep = os.pipe()
    _move_high(keep, 2)  # the pipe to the aggregator has the last fd
    command = run_as.command([sys.executable, "-m", "sensor", "watch", "--socket", str(socket),
                              "--lifeline", str(lifeline)], parent_death=True)
    viewer = subprocess.Popen(command, pass_fds=(lifeline,))
    os.close(lifeline)
    probe.exclude([viewer.pid])
    return viewer


def _stop_view(viewer: subprocess.Popen[bytes] | None) -> None:
    if viewer is None:
        return
    if viewer.poll() is None:
        viewer.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            viewer.wait(timeout=10)
    if viewer.returncode != 0 and sys.stdout.isatty():
        # A view that was killed could not leave its full screen: leave it for it, so the
        # agent's last line is seen.
        sys.stdout.write("\x1b[?1049l\x1b[?25h")
        sys.stdout.flush()


# -- directories ---------------------------------------------------------------------------


def _prepare_directories(args: argparse.Namespace, run_as: RunAs) -> None:
    """The journal's and the socket's directories, usable by the aggregator's user.

    A directory this creates (or a default one) is given to that user: the journal's 0700
    (alerts are sensitive), the socket's 0755 (the socket itself is 0660). An existing
    directory elsewhere is never chowned (it may be /tmp): it must already let that user in."""
    journal_dir = Path(args.journal).parent
    wanted = [(journal_dir, 0o700, journal_dir == Path(config.DEFAULT_JOURNAL).parent)]
    if args.socket != "none":
        socket_dir = Path(args.socket).parent
        wanted.append((socket_dir, 0o755, socket_dir == Path(config.DEFAULT_SOCKET).parent))
    for directory, mode, default in wanted:
        _prepare(directory, mode, default, run_as)


def _own_journal(args: argparse.Namespace, run_as: RunAs) -> None:
    """The journal's files (just checked to be a journal) belong to the aggregator's user."""
    if run_as.account is not None:
        for suffix in ("", "-wal", "-shm"):
            journal = Path(args.journal + suffix)
            if journal.exists():
                os.chown(journal, run_as.account.uid, run_as.account.gid)


def _prepare(directory: Path, mode: int, default: bool, run_as: RunAs) -> None:
    try:
        created = not directory.exists()
        directory.mkdir(parents=True, exist_ok=True, mode=mode)
        who = run_as.account
        if who is None:
            return
        if created or default:
            os.chown(directory, who.uid, who.gid)
            os.chmod(directory, mode)
        elif not _usable_by(directory, who):
            raise UsageError(f"the aggregator runs as {run_as.user} and cannot write in {directory}",
                             f"give --journal and --socket paths in a directory {run_as.user} may write "
                             "(the defaults are made for it), or --user root")
    except OSError as exc:
        raise UsageError(f"cannot prepare {directory}: {exc}", "check --journal and --socket") from exc


def _check_readable(given: list[str], rule_files: list[Path], run_as: RunAs) -> None:
    """What the aggregator and the view read as their own user: this Python and the gpusentry
    package (a clone under /root is not theirs to read), the rule directories given and the rule
    files in them (read again on SIGHUP)."""
    if run_as.account is None:
        return
    for code in (Path(sys.executable).parent, Path(__file__).parent):
        if not _usable_by(code, run_as.account, 0o5):
            raise UsageError(f"the aggregator runs as {run_as.user} and cannot read {code}",
                             f"install gpusentry where {run_as.user} can read it (e.g. under /opt), or --user root")
    for directory in given:
        if Path(directory).is_dir() and not _usable_by(Path(directory), run_as.account, 0o5):
            raise UsageError(f"the aggregator runs as {run_as.user} and cannot list the rule directory {directory}",
                             f"make it readable by {run_as.user} (e.g. /etc/gpusentry/rules.d, mode 0755), "
                             "or --user root")
    for path in rule_files:
        if not _usable_by(path, run_as.account, 0o4):
            raise UsageError(f"the aggregator runs as {run_as.user} and cannot read the rule file {path}",
                             f"make it readable by {run_as.user} (e.g. in /etc/gpusentry, mode 0644), "
                             "or --user root")


def _check_config_readable(settings: config.Settings, run_as: RunAs) -> None:
    """The aggregator reads the configuration file itself, at start and on SIGHUP."""
    if run_as.account is None or not settings.loaded:
        return
    if not _usable_by(settings.file, run_as.account, 0o4):
        raise UsageError(f"the aggregator runs as {run_as.user} and cannot read the configuration file "
                         f"{settings.file} (it reads it at start and again on SIGHUP)",
                         f"make it readable by {run_as.user} (e.g. chgrp {run_as.user} {settings.file}; chmod 0640 "
                         f"{settings.file}), or --user root")


def _usable_by(path: Path, who: privileges.Account, bits: int = 0o3) -> bool:
    """Whether `who` may reach `path` (search every ancestor) and use it so (bits: 4 read, 3
    create in a directory)."""
    for ancestor in reversed(path.resolve().parents):
        if not _allows(ancestor, who, 0o1):
            return False
    return _allows(path, who, bits)


def _allows(path: Path, who: privileges.Account, bits: int) -> bool:
    st = path.stat()
    if st.st_uid == who.uid:
        granted = st.st_mode >> 6
    elif st.st_gid == who.gid or st.st_gid in who.groups:
        granted = st.st_mode >> 3
    else:
        granted = st.st_mode
    return granted & bits == bits


# -- record --------------------------------------------------------------------------------


def cmd_record(args: argparse.Namespace) -> int:
    limits = _probe_config(args)
    try:
        out = sys.stdout.buffer if args.write == "-" else open(args.write, "wb")  # noqa: SIM115
    except OSError as exc:
        raise UsageError(f"cannot write {args.write}: {exc.strerror}", "give a writable path") from exc
    with out:
        from sensor.probe import program

        writer = FrameWriter(out, StreamMeta(config=limits.to_dict(), features=program.kernel_features(limits)))
        watch = Watch(args.duration)
        probe, failed, errors = _start_probe(limits, writer, watch, containers=_container_config(args))
        kept = _narrow_probe(privileges.PROBE_CAPS)
        print(f"gpusentry: recording to {args.write} (probe with {kept}); Ctrl-C stops", file=sys.stderr)
        stop = watch.until_stop(failed, errors)
        probe.stop(stop.reason)
    if stop.error is not None:
        raise stop.error
    stats = probe.stats()
    print(f"gpusentry: recorded {sum(stats.records.values())} records; drops: kernel "
          f"{sum(stats.kernel_drops.values())}, probe {sum(stats.probe_drops.values())}", file=sys.stderr)
    return 0
