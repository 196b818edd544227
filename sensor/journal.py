"""The journal: SQLite in WAL mode, where alerts are written before they are published.

It keeps two kinds of record in one cursor sequence: alerts, and sensor gaps (windows in which
the sensor was blind), so that a client reading it in cursor order sees blind time where it
happened and never mistakes it for quiet time. Each record gets a cursor (SQLite's
AUTOINCREMENT rowid: monotonic, never reused even after old records are deleted). A commit is
durable once `append` or `append_gap` returns: WAL with synchronous=FULL survives a kill -9 and
a power cut without losing a committed record or corrupting the file.

It also keeps the agent's runs (begin, heartbeats, clean end), so that the next run can tell
how long nothing was watching. Retention by age and by count runs as records are added. A file
that is not a journal, or is damaged, is refused with one clear message and left as it is.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from sensor.api.v1 import gpusentry_pb2 as pb
from sensor.errors import GpusentryError

SCHEMA = 2
ALERT, GAP = "alert", "sensor_gap"
MAX_CAUSE = 1024
RUNS_KEPT = 100  # the previous run is all that is needed; a few more help a post-mortem
_RECORDS = """
CREATE TABLE records (
    cursor INTEGER PRIMARY KEY AUTOINCREMENT,
    wall_ns INTEGER NOT NULL,  -- an alert's time, a gap's end: what retention by age compares
    rule_id TEXT NOT NULL,     -- '' for a gap
    severity INTEGER NOT NULL, -- 0 for a gap
    body BLOB NOT NULL,        -- gpusentry.v1.Alert or SensorGap, serialized, without its cursor
    kind TEXT NOT NULL DEFAULT 'alert'
);
CREATE INDEX records_by_time ON records (wall_ns);
"""
_RUNS = """
CREATE TABLE runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    started_ns INTEGER NOT NULL,
    alive_ns INTEGER NOT NULL,  -- the last heartbeat, or the clean stop
    stopped_ns INTEGER,         -- set by a clean stop only
    cause TEXT NOT NULL DEFAULT ''
);
"""
# Schema 1 kept alerts only, in a table named `alerts`. Renaming the table keeps its rows, its
# rowids and its AUTOINCREMENT counter (SQLite renames the sqlite_sequence entry with it), so
# cursors go on where they were; every existing row is an alert (the column's default).
_UPGRADE_FROM_1 = f"""
ALTER TABLE alerts RENAME TO records;
ALTER TABLE records ADD COLUMN kind TEXT NOT NULL DEFAULT 'alert';
DROP INDEX IF EXISTS alerts_by_time;
CREATE INDEX records_by_time ON records (wall_ns);
{_RUNS}
UPDATE meta SET value = '2' WHERE key = 'schema';
"""


class JournalError(GpusentryError):
    """The journal cannot be opened or written."""


@dataclass(frozen=True)
class Retention:
    max_age_s: int = 30 * 24 * 3600
    max_count: int = 1_000_000


@dataclass(frozen=True)
class PreviousRun:
    """How the agent's previous run on this journal ended."""

    alive_ns: int  # the last time it was known to be watching: its last heartbeat, or its clean stop
    clean: bool  # it recorded a clean stop
    cause: str  # the stop cause it recorded, or "" if it never recorded one


def one_line(text: str) -> str:
    """A cause as one readable line of bounded length."""
    line = " ".join(text.split())
    return line if len(line) <= MAX_CAUSE else line[: MAX_CAUSE - 3] + "..."


class Journal:
    def __init__(self, path: Path, retention: Retention | None = None) -> None:
        self.path = path
        self.retention = retention or Retention()
        self._lock = threading.Lock()
        self._run: int | None = None  # this process's row in `runs`, once begin_run was called
        self.deleted = 0  # records removed by retention
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            self._check()
            self._prepare()
        except sqlite3.DatabaseError as exc:
            raise JournalError(f"cannot use {path} as the alert journal: {exc}",
                               "move the file aside (it is left untouched) and start again; a new journal "
                               "is created") from exc
        except OSError as exc:
            raise JournalError(f"cannot create the alert journal {path}: {exc.strerror}",
                               "give --journal a writable path") from exc

    def _check(self) -> None:
        """Fail on a damaged file before anything is written to it."""
        result = self._db.execute("PRAGMA quick_check").fetchone()
        if result is None or result[0] != "ok":
            raise sqlite3.DatabaseError(f"integrity check failed: {result}")

    def _prepare(self) -> None:
        """Create a new journal, upgrade an older one in place, refuse a newer one or a stranger."""
        schema = self._schema()
        if schema is not None and schema > SCHEMA:
            raise JournalError(f"{self.path} was written by a newer gpusentry (journal schema {schema})",
                               "use a newer gpusentry, or give --journal another path")
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        if schema is None:
            self._transaction(f"CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);{_RECORDS}{_RUNS}"
                              f"INSERT INTO meta VALUES ('schema', '{SCHEMA}');")
        elif schema == 1:
            self._transaction(_UPGRADE_FROM_1)

    def _schema(self) -> int | None:
        """The file's schema; None for a new (empty) file."""
        tables = {row[0] for row in self._db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if not tables:
            return None
        row = self._db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone() if "meta" in tables else None
        if row is None or not str(row[0]).isdigit():
            raise JournalError(f"{self.path} is an SQLite database, but not a gpusentry journal",
                               "give --journal another path (the file is left untouched)")
        return int(row[0])

    def _transaction(self, script: str) -> None:
        # executescript runs the statements as written: BEGIN ... COMMIT makes them one change,
        # all or nothing, should the process die half way.
        try:
            self._db.executescript(f"BEGIN IMMEDIATE;\n{script}\nCOMMIT;")
        except BaseException:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- records --------------------------------------------------------------------------

    def append(self, alert: pb.Alert) -> int:
        """Write an alert durably; its cursor."""
        return self._insert(alert.time.ToNanoseconds(), alert.rule_id, int(alert.severity),
                            alert.SerializeToString(), ALERT)

    def append_gap(self, start_ns: int, end_ns: int, cause: str) -> pb.SensorGap:
        """Write a sensor gap durably (wall-clock nanoseconds); the record, with its cursor.

        The times are kept as given, even when a clock step put the end before the start:
        a blind window is recorded whatever the clock did."""
        gap = pb.SensorGap(cause=one_line(cause))
        gap.start.FromNanoseconds(start_ns)
        gap.end.FromNanoseconds(end_ns)
        gap.cursor = self._insert(end_ns, "", 0, gap.SerializeToString(), GAP)
        return gap

    def _insert(self, wall_ns: int, rule_id: str, severity: int, body: bytes, kind: str) -> int:
        with self._lock:
            row = self._db.execute("INSERT INTO records (wall_ns, rule_id, severity, body, kind) "
                                   "VALUES (?, ?, ?, ?, ?)", (wall_ns, rule_id, severity, body, kind))
            cursor = int(row.lastrowid or 0)
            if cursor % 100 == 0:
                self._retain()
        return cursor

    def _retain(self) -> None:
        cutoff = time.time_ns() - self.retention.max_age_s * 1_000_000_000
        old = self._db.execute("DELETE FROM records WHERE wall_ns < ?", (cutoff,)).rowcount
        last = self._last()
        extra = self._db.execute("DELETE FROM records WHERE cursor <= ?",
                                 (last - self.retention.max_count,)).rowcount
        self.deleted += old + extra

    def retain(self) -> None:
        with self._lock:
            self._retain()

    def _last(self) -> int:
        row = self._db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'records'").fetchone()
        return int(row[0]) if row else 0

    def last_cursor(self) -> int:
        with self._lock:
            return self._last()

    def count(self) -> int:
        """Alerts in the journal."""
        return self._count(ALERT)

    def gap_count(self) -> int:
        """Sensor-gap records in the journal."""
        return self._count(GAP)

    def _count(self, kind: str) -> int:
        with self._lock:
            return int(self._db.execute("SELECT count(*) FROM records WHERE kind = ?", (kind,)).fetchone()[0])

    def read(self, after: int = 0, limit: int = 100, rule_ids: list[str] | None = None, min_severity: int = 0,
             since_ns: int | None = None, until_ns: int | None = None, up_to: int = 0) -> list[pb.Alert]:
        """Alerts after a cursor, oldest first, filtered."""
        records = self._select(after, limit, rule_ids, min_severity, since_ns, until_ns, up_to, gaps=False)
        return [r for r in records if isinstance(r, pb.Alert)]

    def records(self, after: int = 0, limit: int = 100, rule_ids: list[str] | None = None, min_severity: int = 0,
                since_ns: int | None = None, until_ns: int | None = None,
                up_to: int = 0) -> list[pb.Alert | pb.SensorGap]:
        """Alerts that pass the filters and every sensor gap, after a cursor, in cursor order.

        The filters are the alerts' own: a gap is blind time for every rule, so none hides it."""
        return self._select(after, limit, rule_ids, min_severity, since_ns, until_ns, up_to, gaps=True)

    def _select(self, after: int, limit: int, rule_ids: list[str] | None, min_severity: int, since_ns: int | None,
                until_ns: int | None, up_to: int, gaps: bool) -> list[pb.Alert | pb.SensorGap]:
        alert = "kind = 'alert' AND severity >= ?"
        params: list[object] = [min_severity]
        if rule_ids:
            alert += f" AND rule_id IN ({','.join('?' * len(rule_ids))})"
            params += rule_ids
        if since_ns is not None:
            alert += " AND wall_ns >= ?"
            params.append(since_ns)
        if until_ns is not None:
            alert += " AND wall_ns < ?"
            params.append(until_ns)
        query = f"SELECT cursor, body, kind FROM records WHERE cursor > ? AND cursor <= ? AND ({alert}"
        query += " OR kind = 'sensor_gap')" if gaps else ")"
        query += " ORDER BY cursor LIMIT ?"
        with self._lock:
            rows = self._db.execute(query, [after, up_to or 2**63 - 1, *params, limit]).fetchall()
        return [_record(cursor, body, kind) for cursor, body, kind in rows]

    # -- runs -----------------------------------------------------------------------------

    def begin_run(self, now_ns: int) -> PreviousRun | None:
        """An agent run starts now; how the previous run on this journal ended (None: there was none)."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                row = self._db.execute("SELECT alive_ns, stopped_ns, cause FROM runs ORDER BY id DESC LIMIT 1")
                last = row.fetchone()
                run = self._db.execute("INSERT INTO runs (started_ns, alive_ns) VALUES (?, ?)", (now_ns, now_ns))
                self._run = int(run.lastrowid or 0)
                self._db.execute("DELETE FROM runs WHERE id <= ?", (self._run - RUNS_KEPT,))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        if last is None:
            return None
        alive_ns, stopped_ns, cause = last
        return PreviousRun(alive_ns=int(alive_ns), clean=stopped_ns is not None, cause=str(cause))

    def heartbeat(self, now_ns: int) -> None:
        """The running agent is watching at now_ns.

        Called every second, so it does not wait for the disk: with synchronous=NORMAL a WAL
        commit survives the process's death (kill -9: the write is in the kernel's page cache)
        and reaches the disk with the next durable commit or checkpoint. A power cut can lose
        the last heartbeats, which makes the next gap start earlier: longer, never shorter."""
        run = self._current_run("heartbeat")
        with self._lock:
            self._db.execute("PRAGMA synchronous=NORMAL")
            try:
                self._db.execute("UPDATE runs SET alive_ns = ? WHERE id = ?", (now_ns, run))
            finally:
                self._db.execute("PRAGMA synchronous=FULL")

    def end_run(self, now_ns: int, cause: str) -> None:
        """This run stops cleanly now, for this cause (e.g. "stopped by SIGTERM"); durable."""
        run = self._current_run("end_run")
        with self._lock:
            self._db.execute("UPDATE runs SET alive_ns = ?, stopped_ns = ?, cause = ? WHERE id = ?",
                             (now_ns, now_ns, one_line(cause), run))

    def _current_run(self, caller: str) -> int:
        if self._run is None:
            raise RuntimeError(f"Journal.{caller} before begin_run")
        return self._run


def _record(cursor: int, body: bytes, kind: str) -> pb.Alert | pb.SensorGap:
    record: pb.Alert | pb.SensorGap = pb.SensorGap.FromString(body) if kind == GAP else pb.Alert.FromString(body)
    record.cursor = cursor
    return record
