"""The journal: cursors, retention, reopening, sensor gaps, the agent's runs (kill -9
included), the schema upgrade, and files that are not journals."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sensor.api.v1 import gpusentry_pb2 as pb
from sensor.journal import RUNS_KEPT, Journal, JournalError, PreviousRun, Retention

SEC = 1_000_000_000
ROOT = Path(__file__).resolve().parents[2]


def alert(rule: str = "r", wall_ns: int | None = None, severity: pb.Severity = pb.SEVERITY_HIGH) -> pb.Alert:
    message = pb.Alert(rule_id=rule, severity=severity, title="t")
    message.time.FromNanoseconds(wall_ns if wall_ns is not None else time.time_ns())
    return message


def test_cursors_are_monotonic_and_survive_reopening(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.db")
    assert [journal.append(alert()) for _ in range(3)] == [1, 2, 3]
    journal.close()
    reopened = Journal(tmp_path / "j.db")
    assert [a.cursor for a in reopened.read()] == [1, 2, 3]
    assert reopened.append(alert()) == 4


def test_retention_by_count_never_reuses_cursors(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.db", Retention(max_count=5))
    for _ in range(200):
        journal.append(alert())
    assert [a.cursor for a in journal.read(limit=1000)] == [196, 197, 198, 199, 200]
    assert journal.deleted == 195
    assert journal.append(alert()) == 201


def test_retention_by_age(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.db", Retention(max_age_s=3600))
    old = time.time_ns() - 7200 * 1_000_000_000
    journal.append(alert("old", wall_ns=old))
    journal.append(alert("new"))
    journal.retain()
    assert [a.rule_id for a in journal.read()] == ["new"]


def test_filters(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.db")
    journal.append(alert("a", severity=pb.SEVERITY_LOW))
    journal.append(alert("b", severity=pb.SEVERITY_CRITICAL))
    journal.append(alert("a", severity=pb.SEVERITY_CRITICAL))
    assert [a.cursor for a in journal.read(rule_ids=["a"])] == [1, 3]
    assert [a.cursor for a in journal.read(min_severity=pb.SEVERITY_HIGH)] == [2, 3]
    assert [a.cursor for a in journal.read(after=1, up_to=2)] == [2]


def test_a_newer_schema_is_refused_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    Journal(path).close()
    db = sqlite3.connect(path)
    db.execute("UPDATE meta SET value = '99' WHERE key = 'schema'")
    db.commit()
    db.close()
    before = path.read_bytes()
    with pytest.raises(JournalError) as info:
        Journal(path)
    assert str(info.value).startswith(f"{path} was written by a newer gpusentry (journal schema")
    assert path.read_bytes() == before


# -- sensor gaps ----------------------------------------------------------------------------


def test_sensor_gaps_share_the_alerts_cursor_sequence(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.db")
    assert journal.append(alert("a")) == 1
    gap = journal.append_gap(5 * SEC, 9 * SEC, "the probe (pid 4242) died:\n  its frame stream ended")
    assert journal.append(alert("b")) == 3
    assert (gap.cursor, gap.start.ToNanoseconds(), gap.end.ToNanoseconds(), gap.cause) == (
        2, 5 * SEC, 9 * SEC, "the probe (pid 4242) died: its frame stream ended")  # one line
    assert [(type(r).__name__, r.cursor) for r in journal.records()] == [
        ("Alert", 1), ("SensorGap", 2), ("Alert", 3)]
    assert journal.records(after=1, limit=1) == [gap]
    assert [a.cursor for a in journal.read()] == [1, 3]  # alerts only
    assert (journal.count(), journal.gap_count(), journal.last_cursor()) == (2, 1, 3)
    journal.close()
    assert Journal(tmp_path / "j.db").records(after=1, limit=1) == [gap]  # durable


def test_no_alert_filter_hides_a_sensor_gap(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.db")
    journal.append(alert("a", wall_ns=100 * SEC, severity=pb.SEVERITY_LOW))
    journal.append_gap(1 * SEC, 2 * SEC, "blind")
    journal.append(alert("b", wall_ns=300 * SEC, severity=pb.SEVERITY_CRITICAL))
    records = journal.records(rule_ids=["b"], min_severity=pb.SEVERITY_HIGH, since_ns=250 * SEC, until_ns=400 * SEC)
    assert [r.cursor for r in records] == [2, 3]
    assert [r.cursor for r in journal.records(since_ns=0, until_ns=0)] == [2]  # an empty window still has the gap
    assert [r.cursor for r in journal.records(up_to=2)] == [1, 2]


def test_a_long_cause_is_cut_to_one_bounded_line(tmp_path: Path) -> None:
    cause = Journal(tmp_path / "j.db").append_gap(0, 1, "x" * 5000 + "\n\ty").cause
    assert (len(cause), cause[-3:], "\n" in cause) == (1024, "...", False)


# -- the agent's runs -----------------------------------------------------------------------


def test_a_journal_no_run_used_has_no_previous_run(tmp_path: Path) -> None:
    assert Journal(tmp_path / "j.db").begin_run(10 * SEC) is None


def test_a_clean_stop_is_reported_with_its_cause(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.db")
    journal.begin_run(10 * SEC)
    journal.heartbeat(11 * SEC)
    journal.end_run(12 * SEC, "stopped by\nSIGTERM")
    journal.close()
    reopened = Journal(tmp_path / "j.db")
    assert reopened.begin_run(20 * SEC) == PreviousRun(alive_ns=12 * SEC, clean=True, cause="stopped by SIGTERM")
    assert reopened.begin_run(30 * SEC) == PreviousRun(alive_ns=20 * SEC, clean=False, cause="")  # never beat


def test_after_a_kill_9_the_last_heartbeat_is_reported(tmp_path: Path) -> None:
    """A real process beats and is killed with SIGKILL: the beat it made is what the next run sees."""
    path = tmp_path / "j.db"
    script = (f"from pathlib import Path; from sensor.journal import Journal\n"
              f"j = Journal(Path({str(path)!r})); j.begin_run({10 * SEC})\n"
              f"for n in range(1, 4): j.heartbeat({10 * SEC} + n * {SEC})\n"
              f"print('beating', flush=True); import time; time.sleep(60)\n")
    agent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert agent.stdout is not None and agent.stdout.readline() == "beating\n"
    finally:
        agent.send_signal(signal.SIGKILL)
        agent.wait()
    assert Journal(path).begin_run(60 * SEC) == PreviousRun(alive_ns=13 * SEC, clean=False, cause="")


def test_heartbeat_and_end_run_need_a_run(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.db")
    with pytest.raises(RuntimeError, match=r"^Journal.heartbeat before begin_run$"):
        journal.heartbeat(SEC)
    with pytest.raises(RuntimeError, match=r"^Journal.end_run before begin_run$"):
        journal.end_run(SEC, "stopped")


def test_old_runs_are_not_kept_forever(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.db")
    for n in range(RUNS_KEPT + 20):
        journal.begin_run(n * SEC)
    journal.close()
    db = sqlite3.connect(tmp_path / "j.db")
    assert db.execute("SELECT count(*), min(started_ns) FROM runs").fetchone() == (RUNS_KEPT, 20 * SEC)
    db.close()


# -- schemas --------------------------------------------------------------------------------

SCHEMA_1 = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE alerts (
    cursor INTEGER PRIMARY KEY AUTOINCREMENT,
    wall_ns INTEGER NOT NULL,
    rule_id TEXT NOT NULL,
    severity INTEGER NOT NULL,
    body BLOB NOT NULL
);
CREATE INDEX alerts_by_time ON alerts (wall_ns);
INSERT INTO meta VALUES ('schema', '1');
"""


def test_a_schema_1_journal_is_upgraded_in_place(tmp_path: Path) -> None:
    """Its alerts keep their cursors, and the sequence goes on after the last one ever given
    (here 7, though retention left only 6 and 7)."""
    path = tmp_path / "j.db"
    db = sqlite3.connect(path)
    db.executescript(SCHEMA_1)
    db.execute("PRAGMA journal_mode=WAL")
    for cursor in range(1, 8):
        old = alert(f"r{cursor}", wall_ns=cursor * SEC)
        db.execute("INSERT INTO alerts VALUES (?, ?, ?, ?, ?)",
                   (cursor, cursor * SEC, old.rule_id, int(old.severity), old.SerializeToString()))
    db.execute("DELETE FROM alerts WHERE cursor <= 5")
    db.commit()
    db.close()
    journal = Journal(path)
    assert [(a.cursor, a.rule_id) for a in journal.read()] == [(6, "r6"), (7, "r7")]
    assert journal.last_cursor() == 7
    assert journal.append_gap(SEC, 2 * SEC, "blind").cursor == 8
    assert journal.begin_run(3 * SEC) is None
    journal.close()
    db = sqlite3.connect(path)
    assert db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone() == ("2",)
    assert {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")} == {
        "meta", "records", "runs", "sqlite_sequence"}
    assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    db.close()
    assert [r.cursor for r in Journal(path).records()] == [6, 7, 8]  # and it opens again as schema 2


def test_a_database_that_is_not_a_journal_is_refused_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE photos (name TEXT)")
    db.commit()
    db.close()
    before = path.read_bytes()
    with pytest.raises(JournalError) as info:
        Journal(path)
    assert str(info.value).startswith(f"{path} is an SQLite database, but not a gpusentry journal")
    assert path.read_bytes() == before
