"""The journal: cursors, retention, reopening, sensor gaps, incident versions, the agent's runs
(kill -9 included), the schema upgrades, and files that are not journals."""

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


# -- incidents ------------------------------------------------------------------------------


def incident(incident_id: str, first_s: int, last_s: int, severity: pb.Severity = pb.SEVERITY_HIGH,
             total: int = 1) -> pb.Incident:
    version = pb.Incident(id=incident_id, severity=severity, alerts_total=total)
    version.first_seen.FromNanoseconds(first_s * SEC)
    version.last_seen.FromNanoseconds(last_s * SEC)
    return version


def test_incident_versions_share_the_cursor_sequence(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.db")
    assert journal.append(alert("a")) == 1
    assert journal.append_incident(incident("one", 100, 100)) == 2
    assert journal.append(alert("b")) == 3
    assert journal.append_incident(incident("one", 100, 110, total=2)) == 4
    gap = journal.append_gap(5 * SEC, 9 * SEC, "blind")
    assert journal.append_incident(incident("two", 120, 130, severity=pb.SEVERITY_LOW)) == 6
    # version 4 of incident one replaced version 2: only an incident's latest version is kept
    assert [(type(r).__name__, r.cursor) for r in journal.records()] == [
        ("Alert", 1), ("Alert", 3), ("Incident", 4), ("SensorGap", 5), ("Incident", 6)]
    assert [(type(r).__name__, r.cursor) for r in journal.records(rule_ids=["b"])] == [
        ("Alert", 3), ("Incident", 4), ("SensorGap", 5), ("Incident", 6)]  # versions unfiltered
    assert journal.records(incidents=False, up_to=5) == [*journal.read(), gap]  # what ListAlerts pages
    assert [a.cursor for a in journal.read()] == [1, 3]  # alerts only
    assert (journal.count(), journal.gap_count(), journal.incident_count(), journal.last_cursor()) == (2, 1, 2, 6)
    journal.close()
    reopened = Journal(tmp_path / "j.db")  # durable
    assert [(i.id, i.cursor, i.alerts_total) for i in reopened.incidents()] == [("one", 4, 2), ("two", 6, 1)]


def test_incidents_are_listed_in_their_latest_version_filtered(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.db")
    journal.append_incident(incident("early", 10, 20, severity=pb.SEVERITY_CRITICAL))  # 1
    journal.append_incident(incident("late", 50, 60, severity=pb.SEVERITY_LOW))  # 2
    journal.append_incident(incident("early", 10, 40, severity=pb.SEVERITY_CRITICAL, total=3))  # 3

    def listed(**filters: object) -> list[tuple[str, int]]:
        return [(i.id, i.cursor) for i in journal.incidents(**filters)]  # type: ignore[arg-type]

    assert listed() == [("late", 2), ("early", 3)]  # in the order of their latest version
    assert listed(after=2) == [("early", 3)] and listed(limit=1) == [("late", 2)]
    assert listed(min_severity=pb.SEVERITY_HIGH) == [("early", 3)]
    assert listed(since_ns=40 * SEC) == [("late", 2), ("early", 3)]  # last seen at or after
    assert listed(since_ns=41 * SEC) == [("late", 2)]
    assert listed(until_ns=50 * SEC) == [("early", 3)]  # first seen before
    assert listed(since_ns=45 * SEC, until_ns=20 * SEC) == []
    assert listed(since_ns=30 * SEC, until_ns=20 * SEC) == [("early", 3)]  # spans both: since after until is fine
    assert listed(incident_id="late") == [("late", 2)] and listed(incident_id="none") == []


def test_an_incident_merged_into_another_is_listed_no_more(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.db")
    journal.append_incident(incident("older", 10, 10))
    journal.append_incident(incident("newer", 20, 20))
    journal.append_incident(incident("elsewhere", 25, 25))
    assert journal.append_incident(incident("older", 10, 30, total=3), absorbed=["newer", "never-journaled"]) == 4
    assert [(i.id, i.cursor) for i in journal.incidents()] == [("elsewhere", 3), ("older", 4)]
    assert journal.incident_count() == 2
    assert [r.cursor for r in journal.records()] == [3, 4]  # superseded versions are gone: one per incident
    assert journal.append_incident(incident("older", 10, 40, total=4)) == 5  # cursors are never reused
    assert [r.cursor for r in journal.records()] == [3, 5]


def test_retention_applies_to_incident_versions(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.db", Retention(max_age_s=3600, max_count=5))
    now = time.time_ns() // SEC
    journal.append_incident(incident("stale", now - 7200, now - 7200))
    for n in range(199):
        journal.append_incident(incident("busy", now, now, total=n + 1))
    assert [(i.id, i.cursor, i.alerts_total) for i in journal.incidents()] == [("busy", 200, 199)]
    assert [r.cursor for r in journal.records(limit=1000)] == [200]  # one version kept; the stale one aged out
    journal.retain()
    assert journal.incident_count() == 1


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
    assert db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone() == ("3",)  # through 2
    assert {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")} == {
        "meta", "records", "runs", "sqlite_sequence"}
    assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    db.close()
    assert [r.cursor for r in Journal(path).records()] == [6, 7, 8]  # and it opens again as schema 3


# Schema 2, as gpusentry created it before incidents: alerts and sensor gaps in one table.
SCHEMA_2 = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE records (
    cursor INTEGER PRIMARY KEY AUTOINCREMENT,
    wall_ns INTEGER NOT NULL,
    rule_id TEXT NOT NULL,
    severity INTEGER NOT NULL,
    body BLOB NOT NULL,
    kind TEXT NOT NULL DEFAULT 'alert'
);
CREATE INDEX records_by_time ON records (wall_ns);
CREATE TABLE runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    started_ns INTEGER NOT NULL,
    alive_ns INTEGER NOT NULL,
    stopped_ns INTEGER,
    cause TEXT NOT NULL DEFAULT ''
);
INSERT INTO meta VALUES ('schema', '2');
"""


def test_a_schema_2_journal_is_upgraded_in_place(tmp_path: Path) -> None:
    """Its alerts, sensor gaps and runs stay as they were, cursors included; incidents follow."""
    path = tmp_path / "j.db"
    db = sqlite3.connect(path)
    db.executescript(SCHEMA_2)
    db.execute("PRAGMA journal_mode=WAL")
    for cursor in (1, 2, 4):
        old = alert(f"r{cursor}", wall_ns=cursor * SEC)
        db.execute("INSERT INTO records (cursor, wall_ns, rule_id, severity, body) VALUES (?, ?, ?, ?, ?)",
                   (cursor, cursor * SEC, old.rule_id, int(old.severity), old.SerializeToString()))
    gap = pb.SensorGap(cursor=3, cause="blind")
    db.execute("INSERT INTO records VALUES (3, 3, '', 0, ?, 'sensor_gap')",
               (pb.SensorGap(cause="blind").SerializeToString(),))
    db.execute("INSERT INTO runs (started_ns, alive_ns, stopped_ns, cause) VALUES (1, 2, 2, 'stopped by SIGTERM')")
    db.execute("DELETE FROM records WHERE cursor = 4")  # retention took the last: cursors still go on after it
    db.commit()
    db.close()
    journal = Journal(path)
    assert [(type(r).__name__, r.cursor) for r in journal.records()] == [("Alert", 1), ("Alert", 2), ("SensorGap", 3)]
    assert journal.records(after=2) == [gap]
    assert (journal.count(), journal.gap_count(), journal.incident_count(), journal.incidents()) == (2, 1, 0, [])
    assert journal.append_incident(incident("one", 1, 2)) == 5
    assert journal.begin_run(3 * SEC) == PreviousRun(alive_ns=2, clean=True, cause="stopped by SIGTERM")
    journal.close()
    db = sqlite3.connect(path)
    assert db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone() == ("3",)
    assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    db.close()
    reopened = Journal(path)  # opens again as schema 3
    assert [(i.id, i.cursor) for i in reopened.incidents()] == [("one", 5)]
    assert [r.cursor for r in reopened.records()] == [1, 2, 3, 5]


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
