"""The alert journal: cursors, retention, reopening, and files that are not journals."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

from sensor.api.v1 import gpusentry_pb2 as pb
from sensor.journal import Journal, JournalError, Retention


def alert(rule: str = "r", wall_ns: int | None = None, severity: int = pb.SEVERITY_HIGH) -> pb.Alert:
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
