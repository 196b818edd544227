"""The contract every sink keeps (sensor/sinks/base.py), on a real journal: it resumes after its
own cursor, drops only what is past its horizon or beyond its queue (counted), retries with
backoff, skips what an endpoint refuses for good, and never blocks the aggregator."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from sensor.api.v1 import gpusentry_pb2 as pb
from sensor.journal import Journal
from sensor.rules import source
from sensor.sinks import sinkset
from sensor.sinks.base import Backoff, CursorFile, Sink, SinkError, SinkSpec
from tests.waiting import wait_until

SEC = 1_000_000_000
HOST = pb.Host(hostname="gpu-node-7", machine_id="0123")


class Recorder:
    """A delivery that keeps what it was sent, and fails as told: a test double for an endpoint,
    the sink's only collaborator that is not the code under test."""

    target = "memory"

    def __init__(self) -> None:
        self.sent: list[pb.Record] = []
        self.failures: list[SinkError] = []  # raised, in order, before anything is accepted
        self.gate = threading.Event()
        self.gate.set()
        self.closed = False
        self.reopened = 0

    def send(self, records: Sequence[pb.Record]) -> None:
        self.gate.wait()
        if self.failures:
            raise self.failures.pop(0)
        self.sent += records

    def reopen(self) -> None:
        self.reopened += 1

    def close(self) -> None:
        self.closed = True

    def ids(self) -> list[str]:
        return [r.alert.id for r in self.sent if r.type == "alert"]


def alert(n: int, wall_s: float | None = None) -> pb.Alert:
    out = pb.Alert(id=f"alert-{n}", rule_id="marker", severity=pb.SEVERITY_LOW, title="Marker")
    out.time.FromNanoseconds(int((time.time() if wall_s is None else wall_s) * SEC))
    return out


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[Journal]:
    journal = Journal(tmp_path / "journal.db")
    yield journal
    journal.close()


def sink(journal: Journal, tmp_path: Path, delivery: Recorder, **spec: object) -> Sink:
    made = Sink(SinkSpec(type="test", name="test", options=None, where="test", **spec),  # type: ignore[arg-type]
                delivery, journal, CursorFile(tmp_path / "sinks" / "test.cursor"), HOST,
                backoff=Backoff(base_s=0.001, cap_s=0.005))
    made.start()
    return made


def test_a_new_sink_starts_at_the_journals_end_and_resumes_after_its_cursor(journal: Journal,
                                                                            tmp_path: Path) -> None:
    journal.append(alert(0))  # before the sink existed: not its to send
    first = Recorder()
    running = sink(journal, tmp_path, first)
    for n in (1, 2):
        journal.append(alert(n))
    running.wake()
    wait_until(lambda: first.ids() == ["alert-1", "alert-2"], what="the first two alerts")
    running.stop()
    assert first.closed
    for n in (3, 4):  # journaled while the sink is down (or the agent restarts)
        journal.append(alert(n))
    second = Recorder()
    resumed = sink(journal, tmp_path, second)
    wait_until(lambda: second.ids() == ["alert-3", "alert-4"], what="what it missed, once")
    assert {r.host.hostname for r in second.sent} == {"gpu-node-7"}  # in the Record envelope
    assert (resumed.status().sent, resumed.status().cursor, resumed.status().behind) == (2, 5, 0)
    resumed.stop()


def test_records_past_the_horizon_are_dropped_and_counted(journal: Journal, tmp_path: Path) -> None:
    delivery = Recorder()
    delivery.gate.clear()  # the endpoint is away while the records age
    running = sink(journal, tmp_path, delivery, horizon_s=3600)
    journal.append(alert(1, wall_s=time.time() - 7200))  # two hours old when it gets to it
    journal.append(alert(2))
    running.wake()
    delivery.gate.set()
    wait_until(lambda: delivery.ids() == ["alert-2"], what="the fresh alert")
    status = running.status()
    assert (status.sent, status.dropped) == (1, 1)
    running.stop()


def test_a_failing_endpoint_is_retried_with_backoff_and_nothing_is_lost(journal: Journal, tmp_path: Path) -> None:
    delivery = Recorder()
    delivery.failures = [SinkError("connection refused"), SinkError("connection refused")]
    running = sink(journal, tmp_path, delivery)
    journal.append(alert(1))
    running.wake()
    wait_until(lambda: delivery.ids() == ["alert-1"], what="the alert, on the third attempt")
    status = running.status()
    assert (status.sent, status.retried, status.failed, status.up, status.last_error) == (1, 2, 0, True, "")
    running.stop()


def test_what_the_endpoint_refuses_for_good_is_counted_and_skipped(journal: Journal, tmp_path: Path) -> None:
    delivery = Recorder()
    delivery.failures = [SinkError("HTTP 400: bad payload", permanent=True)]
    running = sink(journal, tmp_path, delivery, batch=1)
    journal.append(alert(1))
    journal.append(alert(2))
    running.wake()
    wait_until(lambda: delivery.ids() == ["alert-2"], what="the next alert")
    status = running.status()
    assert (status.sent, status.failed, status.retried, status.cursor) == (1, 1, 0, 2)
    assert (status.up, status.last_error) == (True, "")
    running.stop()


def test_offering_events_never_blocks_and_a_full_queue_counts_its_drops(journal: Journal, tmp_path: Path) -> None:
    delivery = Recorder()
    delivery.gate.clear()  # a stalled endpoint
    running = sink(journal, tmp_path, delivery, kinds=("event",), queue_size=10, batch=5)
    started = time.monotonic()
    for n in range(100):
        running.offer(pb.Event(kind=pb.EVENT_KIND_EXEC, ts=n))
    assert time.monotonic() - started < 0.5  # the aggregator's thread never waits on a sink
    dropped = running.status().dropped
    assert 100 - 10 - 5 <= dropped <= 100 - 10  # the queue's 10, and at most a batch the worker took
    delivery.gate.set()
    wait_until(lambda: running.status().sent == 100 - dropped, what="what was queued")
    sent = [r.event.ts for r in delivery.sent]
    assert sent == sorted(sent) and running.status().dropped == dropped  # nothing else lost, in order
    running.stop()


def test_reopen_reaches_the_delivery(journal: Journal, tmp_path: Path) -> None:
    delivery = Recorder()
    running = sink(journal, tmp_path, delivery)
    running.reopen()
    wait_until(lambda: delivery.reopened == 1, what="the reopen")
    running.stop()


def test_backoff_grows_to_its_cap_with_jitter() -> None:
    backoff = Backoff(base_s=0.5, cap_s=4.0)
    waits = [backoff.next_wait() for _ in range(8)]
    assert all(0 <= w <= min(4.0, 0.5 * 2**n) for n, w in enumerate(waits))
    assert len(set(waits)) > 1  # not in step with every other agent
    backoff.reset()
    assert backoff.failures == 0


def test_a_cursor_file_is_never_half_written(tmp_path: Path) -> None:
    cursor = CursorFile(tmp_path / "sinks" / "one.cursor")
    assert cursor.load() is None
    cursor.save(41)
    cursor.save(42)
    assert (cursor.load(), sorted(p.name for p in (tmp_path / "sinks").iterdir())) == (42, ["one.cursor"])
    (tmp_path / "sinks" / "one.cursor").write_text("garbage")
    assert cursor.load() is None  # unreadable: it starts again at the journal's end


@pytest.mark.parametrize(("text", "problem"), [
    ("sinks: {type: file}", "CONFIG:1: sinks: a list of sinks, each a mapping with a `type` (file, syslog, webhook, "
                            "otlp)"),
    ("sinks:\n  - type: carrier-pigeon", "CONFIG:2: sinks: `type` is one of file, syslog, webhook, otlp, not "
                                          "'carrier-pigeon'"),
    ("sinks:\n  - [file]", "CONFIG:2: sinks: a sink is a mapping with a `type` (file, syslog, webhook, otlp)"),
    ("sinks:\n  - type: file\n    name: Bad Name", "CONFIG:3: sinks: `name` is lowercase letters, digits, '.', '_' "
                                                   "and '-' (64 at most)"),
])
def test_sink_entries_that_are_wrong_say_where_and_what(text: str, problem: str, tmp_path: Path) -> None:
    document = source.load(text)
    specs, problems = sinkset.parse(document["sinks"], tmp_path / "config.yaml", document.line_of("sinks"))
    assert (specs, problems) == ([], [problem.replace("CONFIG", str(tmp_path / "config.yaml"))])


def test_a_cursor_from_a_replaced_journal_starts_at_the_new_journals_end(journal: Journal, tmp_path: Path) -> None:
    CursorFile(tmp_path / "sinks" / "test.cursor").save(500)  # the old journal had 500 records
    journal.append(alert(1))  # the new one has 1
    delivery = Recorder()
    running = sink(journal, tmp_path, delivery)
    journal.append(alert(2))
    running.wake()
    wait_until(lambda: delivery.ids() == ["alert-2"], what="what comes after the new journal's end")
    running.stop()


def test_a_burst_sends_each_incident_once_in_its_latest_version(journal: Journal, tmp_path: Path) -> None:
    delivery = Recorder()
    running = sink(journal, tmp_path, delivery, linger_s=0.3)
    for n in range(1, 6):  # five alerts, each a new version of one incident, as fast as the aggregator goes
        journal.append(alert(n))
        version = pb.Incident(id="incident-1", alerts_total=n)
        version.last_seen.FromNanoseconds(time.time_ns())
        journal.append_incident(version)
    running.wake()
    wait_until(lambda: len(delivery.ids()) == 5, what="the five alerts")
    incidents = [r.incident.alerts_total for r in delivery.sent if r.type == "incident"]
    assert incidents == [5]  # the versions before it were superseded: not rendered, not sent
    running.stop()
