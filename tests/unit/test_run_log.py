"""The agent's run in the journal: blind time is recorded, never mistaken for quiet time."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from sensor import events as ev
from sensor.api.v1 import gpusentry_pb2 as pb
from sensor.capture import FrameReader, FrameWriter, StreamMeta
from sensor.consume import RunLog, StreamCut, consume
from sensor.journal import Journal

SEC = 1_000_000_000


class Clock:
    def __init__(self, now: int) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


def stream(*events: ev.Event) -> FrameReader:
    out = io.BytesIO()
    writer = FrameWriter(out, StreamMeta())
    for event in events:
        writer.write(event)
    out.seek(0)
    return FrameReader(out, "probe stream")


def stats(ts: int) -> ev.Stats:
    return ev.Stats(ts, 1, 1)


def test_a_first_run_has_nothing_before_it(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.db")
    assert RunLog(journal, 10, clock=Clock(100 * SEC)).begin() is None
    assert journal.records(0, 10) == []


def test_the_time_after_a_clean_stop_is_recorded_with_its_cause(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.db")
    first = RunLog(journal, 10, clock=Clock(100 * SEC))
    first.begin()
    consume(stream(stats(1), ev.End(2, 10, 10, "stopped by SIGTERM")), None, run=first)
    assert first.ended
    second = RunLog(journal, 11, clock=Clock(160 * SEC))
    gap = second.begin()
    assert gap is not None
    assert (gap.start.ToNanoseconds(), gap.end.ToNanoseconds(), gap.cause) == (
        100 * SEC, 160 * SEC, "the agent was not running: stopped by SIGTERM")


def test_a_killed_run_is_recorded_from_its_last_heartbeat(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.db")
    clock = Clock(100 * SEC)
    first = RunLog(journal, 10, clock=clock)
    first.begin()
    clock.now = 103 * SEC
    first.seen(stats(3))  # a heartbeat; then the aggregator is killed: no end recorded
    gap = RunLog(journal, 11, clock=Clock(200 * SEC)).begin()
    assert gap is not None
    assert (gap.start.ToNanoseconds(), gap.end.ToNanoseconds()) == (103 * SEC, 200 * SEC)
    assert gap.cause.startswith("the agent was not running: it stopped without recording why (killed, or "
                                "crashed); last seen watching at ")


def test_a_stream_cut_without_end_is_a_dead_probe(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.db")
    clock = Clock(100 * SEC)
    published: list[pb.SensorGap] = []
    run = RunLog(journal, 4242, published.append, clock=clock)
    run.begin()
    clock.now = 101 * SEC
    with pytest.raises(StreamCut) as cut:
        consume(stream(stats(1)), None, run=run)  # the last frame seen at 101 s
    cause = "the probe (pid 4242) died: its frame stream ended without the probe's final frame"
    assert str(cut.value) == f"{cause}; fix: the agent stops; start it again (a supervisor restarts it)"
    assert cut.value.exit_code == 3
    (gap,) = published
    assert (gap.start.ToNanoseconds(), gap.end.ToNanoseconds(), gap.cause) == (101 * SEC, 101 * SEC, cause)
    assert [r.cursor for r in journal.records(0, 10)] == [gap.cursor]  # journaled before it was published
    after = RunLog(journal, 4300, clock=Clock(130 * SEC)).begin()
    assert after is not None and after.cause == f"the agent was not running: {cause}"


def test_a_stream_that_breaks_is_a_dead_probe_too(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.db")
    run = RunLog(journal, 7, clock=Clock(100 * SEC))
    run.begin()
    out = io.BytesIO()
    FrameWriter(out, StreamMeta()).write(stats(1))
    damaged = FrameReader(io.BytesIO(out.getvalue()[:-3]), "probe stream")
    with pytest.raises(StreamCut, match=r"the probe \(pid 7\) died: its frame stream broke \(probe stream: "
                                        r"truncated frame"):
        consume(damaged, None, run=run)


def test_a_capture_needs_no_end(tmp_path: Path) -> None:
    """Offline, a capture without End is only reported as cut short (analyze's summary)."""
    aggregator = consume(stream(stats(1)), None)
    assert aggregator.counters.events["stats"] == 1
