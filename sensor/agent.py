"""The agent's privileged side: the probe in this process, the aggregator as a second process
(dropping privileges with --user) joined by the frame stream on a pipe, and the live view as a
third on the terminal. `record` runs the probe alone, into a capture file."""

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
from typing import TYPE_CHECKING, BinaryIO, cast

from sensor.api.server import answers, socket_in_use
from sensor.capture import FrameWriter, StreamMeta
from sensor.consume import endpoint_of, load_detection
from sensor.errors import GpusentryError, UsageError
from sensor.journal import Journal
from sensor.probe.program import ProbeConfig

if TYPE_CHECKING:
    from sensor.probe.probe import Probe


def _config(args: argparse.Namespace) -> ProbeConfig:
    config = ProbeConfig(max_args=args.max_args, arg_len=args.arg_len,
                         ringbuf_pages=args.ringbuf_pages, queue_size=args.queue_size)
    config.validate()
    return config


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
    load_detection(args)  # an invalid rule file, API setting or journal stops the agent before anything starts
    endpoint_of(args)
    program.preflight()  # privileges first: without them, nothing below is the real problem
    Journal(Path(args.journal)).close()
    if args.socket != "none" and answers(Path(args.socket)):
        raise socket_in_use(Path(args.socket))  # here, one line; in the aggregator it would be two
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

