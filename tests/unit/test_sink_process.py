"""The sinks' own process (sensor/sinks/process.py), for real: the aggregator's side wakes it
after journaling and hands it events; statuses come back; a child killed with SIGKILL is
started again and resumes after its cursor, losing nothing that was journaled."""

from __future__ import annotations

import io
import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sensor.api.v1 import gpusentry_pb2 as pb
from sensor.config import load
from sensor.journal import Journal
from sensor.sinks.process import FACT, STATUS, WAKE, SinkProcess, read_frame, write_frame
from tests.waiting import wait_until

HOST = pb.Host(hostname="gpu-node-7", machine_id="0123")


def alert(n: int) -> pb.Alert:
    out = pb.Alert(id=f"alert-{n}", rule_id="marker", severity=pb.SEVERITY_LOW, title="Marker")
    out.time.FromNanoseconds(time.time_ns())
    return out


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[tuple[Journal, SinkProcess, Path]]:
    out = tmp_path / "alerts.jsonl"
    config = tmp_path / "config.yaml"
    config.write_text(f"sinks:\n  - type: file\n    path: {out}\n    kinds: [alert, incident, event]\n"
                      "    linger: 0\n")
    journal = Journal(tmp_path / "journal.db")
    sinks = SinkProcess(load(config).sinks, journal.path, config, HOST)
    sinks.start()
    yield journal, sinks, out
    sinks.stop()
    journal.close()


def lines(out: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []


def ids(out: Path) -> list[str]:
    return [str(r["alert"]["id"]) for r in lines(out) if r["type"] == "alert"]  # type: ignore[index]


def test_wake_deliver_report_and_restart_after_a_kill(setup: tuple[Journal, SinkProcess, Path]) -> None:
    journal, sinks, out = setup
    assert sinks.statuses()[0].last_error == "the sinks' process is starting"
    wait_until(lambda: sinks.statuses()[0].up and sinks.statuses()[0].last_error == "", what="the first status")
    journal.append(alert(1))
    sinks.journaled()
    sinks.offer([pb.Event(kind=pb.EVENT_KIND_EXEC, ts=7)], "event")
    wait_until(lambda: ids(out) == ["alert-1"] and any(r["type"] == "event" for r in lines(out)),
               what="the alert and the event in the file")
    wait_until(lambda: sinks.statuses()[0].sent == 2, what="the counts back from the child")
    assert (sinks.statuses()[0].name, sinks.statuses()[0].type) == ("file", "file")

    child = sinks._child  # the test kills the process it made
    assert child is not None
    os.kill(child.pid, signal.SIGKILL)
    wait_until(lambda: "stopped: killed by signal 9; restarting it" in sinks.statuses()[0].last_error,
               what="the death, said")
    journal.append(alert(2))  # journaled while no sink was running
    wait_until(lambda: ids(out) == ["alert-1", "alert-2"], what="the alert, after the restart")
    assert sinks.restarts == 1


def test_frames_are_a_kind_a_length_and_the_bytes() -> None:
    stream = io.BytesIO()
    write_frame(stream, WAKE)
    write_frame(stream, FACT, b"\x08\x01")
    write_frame(stream, STATUS, b"x" * 3)
    stream.write(b"\x02\x00")  # a frame cut short: the end
    stream.seek(0)
    assert [read_frame(stream) for _ in range(4)] == [(WAKE, b""), (FACT, b"\x08\x01"), (STATUS, b"xxx"), None]
