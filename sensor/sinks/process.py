"""The sinks run in a process of their own, beside the aggregator.

Rendering records for four endpoints is Python work; in the aggregator's process it would
share one interpreter lock with detection, and alerts would wait behind it (bench/sinks.py
measured the median alert latency x3 at rest, x11 under load, with the sinks as threads). In
their own process they cost detection nothing but a few bytes on a pipe:

    aggregator -> sinks (its stdin):  WAKE (new records are in the journal: each sink reads
                                      them itself, after its own cursor), EVENT and FACT frames
    sinks -> aggregator (its stdout): STATUS frames, every second: each sink's counters

Each frame is a kind byte, a 4-byte length and the bytes (a serialized proto). The aggregator
never blocks on it: its frames go through a bounded queue to a writer thread; a full queue
drops events and facts, counted. When the sinks' process dies the aggregator starts it again
(every sink resumes after its cursor: nothing journaled is lost); when the aggregator closes
the pipe, the sinks deliver what is waiting for up to a few seconds, and stop.

    python -m sensor.sinks.process --journal PATH --config FILE --hostname H --machine-id M
"""

from __future__ import annotations

import argparse
import contextlib
import os
import queue
import signal
import struct
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import IO

from google.protobuf.message import Message

from sensor.api.v1 import gpusentry_pb2 as pb

FRAME = struct.Struct("!BI")
WAKE, EVENT, FACT, STATUS = 1, 2, 3, 4
MAX_FRAME = 16 << 20
HANDOFF_QUEUE = 10_000  # frames waiting for the pipe
RESTART_AFTER_S = 1.0
STOP_TIMEOUT_S = 5.0


def write_frame(out: IO[bytes], kind: int, body: bytes = b"") -> None:
    out.write(FRAME.pack(kind, len(body)) + body)
    out.flush()


def read_frame(source: IO[bytes]) -> tuple[int, bytes] | None:
    """The next frame; None at the end of the stream (or a damaged one)."""
    head = source.read(FRAME.size)
    if len(head) < FRAME.size:
        return None
    kind, length = FRAME.unpack(head)
    if length > MAX_FRAME:
        return None
    body = source.read(length)
    return (kind, body) if len(body) == length else None


# -- the aggregator's side ------------------------------------------------------------------------


class SinkProcess:
    """What the aggregator holds: the same face as a SinkSet (journaled, offer, reopen,
    statuses), and a child process doing the work."""

    def __init__(self, specs: Sequence[object], journal: Path, config_file: Path, host: pb.Host) -> None:
        self.names = [(getattr(s, "name", ""), getattr(s, "type", "")) for s in specs]
        kinds = {k for s in specs for k in getattr(s, "kinds", ())}
        self.wants_events, self.wants_facts = "event" in kinds, "fact" in kinds
        self.command = [sys.executable, "-m", "sensor.sinks.process", "--journal", str(journal), "--config",
                        str(config_file), "--hostname", host.hostname, "--machine-id", host.machine_id]
        self.frames: queue.Queue[tuple[int, bytes] | None] = queue.Queue(maxsize=HANDOFF_QUEUE)
        self.handoff_dropped = 0  # events and facts the aggregator could not hand over (queue full)
        self.restarts = 0
        self._latest: list[pb.SinkStatus] = []
        self._child: subprocess.Popen[bytes] | None = None
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        self._spawn()
        for target in (self._write, self._watch):
            thread = threading.Thread(target=target, name=f"sinks {target.__name__}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def _spawn(self) -> None:
        child = subprocess.Popen(self.command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, start_new_session=True)
        with self._lock:
            self._child = child

    # -- never blocks -------------------------------------------------------------------------

    def journaled(self) -> None:
        self._put((WAKE, b""), count=False)  # the sinks read the new records from the journal themselves

    def offer(self, items: Sequence[Message], kind: str) -> None:
        frame = EVENT if kind == "event" else FACT
        for item in items:
            self._put((frame, item.SerializeToString()), count=True)

    def _put(self, frame: tuple[int, bytes], count: bool) -> None:
        try:
            self.frames.put_nowait(frame)
        except queue.Full:
            if count:
                self.handoff_dropped += 1

    def reopen(self) -> None:
        with self._lock:
            if self._child is not None and self._child.poll() is None:
                self._child.send_signal(signal.SIGHUP)

    def statuses(self) -> list[pb.SinkStatus]:
        with self._lock:
            latest = list(self._latest)
        if latest:
            return latest
        return [pb.SinkStatus(name=name, type=kind, up=False, last_error="the sinks' process is starting")
                for name, kind in self.names]

    # -- the threads --------------------------------------------------------------------------

    def _write(self) -> None:
        """Frames to the child's stdin, blocking here (never in the aggregator's thread)."""
        while True:
            frame = self.frames.get()
            if frame is None:
                return
            with self._lock:
                child = self._child
            if child is None or child.stdin is None:
                continue
            with contextlib.suppress(OSError, ValueError):  # a dead child: _watch starts another
                write_frame(child.stdin, *frame)

    def _watch(self) -> None:
        """Statuses from the child; when it dies, say so and start it again."""
        while not self._stopping.is_set():
            with self._lock:
                child = self._child
            assert child is not None and child.stdout is not None
            while (frame := read_frame(child.stdout)) is not None:
                if frame[0] == STATUS:
                    with self._lock:
                        self._latest = list(pb.Status.FromString(frame[1]).sinks)
            code = child.wait()
            if self._stopping.is_set():
                return
            self._died(child.pid, code)
            self._stopping.wait(RESTART_AFTER_S)
            if not self._stopping.is_set():
                self.restarts += 1
                self._spawn()
                self.journaled()

    def _died(self, pid: int, code: int) -> None:
        how = f"killed by signal {-code}" if code < 0 else f"exit status {code}"
        with self._lock:
            self._latest = [pb.SinkStatus(name=s.name, type=s.type, target=s.target, sent=s.sent, retried=s.retried,
                                          dropped=s.dropped, failed=s.failed, cursor=s.cursor, up=False,
                                          last_error=f"the sinks' process (pid {pid}) stopped: {how}; restarting it")
                            for s in self._latest]

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> None:
        """Close the pipe: the child delivers what is waiting, for up to `timeout`, and exits."""
        self._stopping.set()
        with contextlib.suppress(queue.Full):
            self.frames.put(None, timeout=1)
        with self._lock:
            child = self._child
        if child is None:
            return
        for thread in self._threads[:1]:
            thread.join(timeout=1)
        if child.stdin is not None:
            with contextlib.suppress(OSError):
                child.stdin.close()
        try:
            child.wait(timeout + 1)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


# -- the child ----------------------------------------------------------------------------------


def serve(sinks: object, stdin: IO[bytes], stdout: IO[bytes], stop_timeout: float) -> None:
    """Frames in, statuses out (every second), until the aggregator closes the pipe."""
    from sensor.sinks.sinkset import SinkSet

    assert isinstance(sinks, SinkSet)
    done = threading.Event()
    lock = threading.Lock()

    def report() -> None:
        while not done.wait(1.0):
            with lock, contextlib.suppress(OSError, ValueError):
                write_frame(stdout, STATUS, pb.Status(sinks=sinks.statuses()).SerializeToString())

    threading.Thread(target=report, daemon=True).start()
    while (frame := read_frame(stdin)) is not None:
        kind, body = frame
        if kind == WAKE:
            sinks.journaled()
        elif kind == EVENT:
            sinks.offer([pb.Event.FromString(body)], "event")
        elif kind == FACT:
            sinks.offer([pb.Fact.FromString(body)], "fact")
    sinks.stop(stop_timeout)
    done.set()
    with lock, contextlib.suppress(OSError, ValueError):
        write_frame(stdout, STATUS, pb.Status(sinks=sinks.statuses()).SerializeToString())


def main(argv: Sequence[str] | None = None) -> int:
    from sensor import config
    from sensor.journal import Journal
    from sensor.sinks.sinkset import SinkSet

    parser = argparse.ArgumentParser(prog="python -m sensor.sinks.process")
    for flag in ("--journal", "--config", "--hostname", "--machine-id"):
        parser.add_argument(flag, required=True)
    args = parser.parse_args(argv)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the aggregator decides when the sinks stop
    settings = config.load(Path(args.config), environ=os.environ)
    journal = Journal(Path(args.journal))
    host = pb.Host(hostname=args.hostname, machine_id=args.machine_id)
    sinks = SinkSet(settings.sinks, journal, Path(args.journal).parent / "sinks", host)
    signal.signal(signal.SIGHUP, lambda *_: sinks.reopen())
    sinks.start()
    sinks.journaled()  # what was journaled while nothing was sending
    try:
        serve(sinks, sys.stdin.buffer, sys.stdout.buffer, STOP_TIMEOUT_S)
    finally:
        journal.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
