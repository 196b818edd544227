"""The journal: SQLite in WAL mode, where alerts are written before they are published.

It keeps three kinds of record in one cursor sequence: alerts, sensor gaps (windows in which
the sensor was blind), and incident versions (each change to an incident is a new version), so
that a client reading it in cursor order sees blind time where it happened and never mistakes
it for quiet time, and sees each incident change right after the alerts that changed it (only
an incident's latest version stays: replay gives each incident as it is now). Each
record gets a cursor (SQLite's AUTOINCREMENT rowid: monotonic, never reused even after old
records are deleted). A commit is durable once `append`, `append_gap` or `append_incident`
returns: WAL with synchronous=FULL survives a kill -9 and a power cut without losing a committed
record or corrupting the file.

It also keeps the agent's runs (begin, heartbeats, clean end), so that the next run can tell
how long nothing was watching. Retention by age and by count runs as records are added. A file
that is not a journal, or is damaged, is refused with one clear message and left as it is.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from sensor.api.v1 import gpusentry_pb2 as pb
from sensor.errors import GpusentryError

SCHEMA = 3
ALERT, GAP, INCIDENT = "alert", "sensor_gap", "incident"
MAX_CAUSE = 1024
RUNS_KEPT = 100  # the previous run is all that is needed; a few more help a post-mortem
# An incident's versions are found by its id (`incident`); `latest` marks the one version of
# each incident that ListIncidents shows. Only that version is kept: a new version deletes the
# ones it supersedes (the incident's own, and those of incidents merged into it), so that an
# incident that goes on for days (a miner reconnecting to its pool raises an alert a minute)
# costs the journal one version, not one per alert; its alerts are journaled one by one anyway.
_INCIDENT_INDEXES = """
CREATE INDEX records_by_incident ON records (incident) WHERE kind = 'incident';
CREATE INDEX records_latest ON records (latest) WHERE latest = 1;
"""
_RECORDS = f"""
CREATE TABLE records (
    cursor INTEGER PRIMARY KEY AUTOINCREMENT,
    wall_ns INTEGER NOT NULL,  -- an alert's time, a gap's end, an incident's last_seen: what retention compares
    rule_id TEXT NOT NULL,     -- '' for a gap or an incident
    severity INTEGER NOT NULL, -- 0 for a gap; an incident's highest
    body BLOB NOT NULL,        -- gpusentry.v1.Alert, SensorGap or Incident, serialized, without its cursor
    kind TEXT NOT NULL DEFAULT 'alert',
    incident TEXT NOT NULL DEFAULT '',    -- an incident version's incident id
    first_ns INTEGER NOT NULL DEFAULT 0,  -- an incident version's first_seen
    latest INTEGER NOT NULL DEFAULT 0     -- 1 on the version of an incident that lists it
);
CREATE INDEX records_by_time ON records (wall_ns);
{_INCIDENT_INDEXES}
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
# Schema 2 had no incidents: its records keep their cursors and bodies, and none is an incident.
_UPGRADE_FROM_2 = f"""
ALTER TABLE records ADD COLUMN incident TEXT NOT NULL DEFAULT '';
ALTER TABLE records ADD COLUMN first_ns INTEGER NOT NULL DEFAULT 0;
ALTER TABLE records ADD COLUMN latest INTEGER NOT NULL DEFAULT 0;
{_INCIDENT_INDEXES}
UPDATE meta SET value = '3' WHERE key = 'schema';
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
            self._transaction(_UPGRADE_FROM_1 + _UPGRADE_FROM_2)
        elif schema == 2:
            self._transaction(_UPGRADE_FROM_2)

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

    def append_incident(self, incident: pb.Incident, absorbed: Collection[str] = ()) -> int:
        """Write a version of an incident durably; its cursor. It replaces the incident's
        earlier version, and those of the incidents merged into it (`absorbed`)."""
        return self._insert(incident.last_seen.ToNanoseconds(), "", int(incident.severity),
                            incident.SerializeToString(), INCIDENT,
                            _Version(incident.id, incident.first_seen.ToNanoseconds(), (incident.id, *absorbed)))

    def _insert(self, wall_ns: int, rule_id: str, severity: int, body: bytes, kind: str,
                version: _Version | None = None) -> int:
        with self._lock, self._atomic():
            if version is not None:
                # one change with the insert: should the process die between them, no incident loses its listing
                marks = ",".join("?" * len(version.supersedes))
                self._db.execute(f"DELETE FROM records WHERE kind = 'incident' AND incident IN ({marks})",
                                 version.supersedes)
            incident, first_ns = (version.incident, version.first_ns) if version is not None else ("", 0)
            row = self._db.execute("INSERT INTO records (wall_ns, rule_id, severity, body, kind, incident, first_ns, "
                                   "latest) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                                   (wall_ns, rule_id, severity, body, kind, incident, first_ns, int(bool(incident))))
            cursor = int(row.lastrowid or 0)
            if cursor % 100 == 0:
                self._retain()
        return cursor

    @contextmanager
    def _atomic(self) -> Iterator[None]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

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
        return self._count("kind = 'alert'")

    def gap_count(self) -> int:
        """Sensor-gap records in the journal."""
        return self._count("kind = 'sensor_gap'")

    def incident_count(self) -> int:
        """Incidents in the journal (each once, whatever its versions; merged ones not at all)."""
        return self._count("latest = 1")

    def _count(self, where: str) -> int:
        with self._lock:
            return int(self._db.execute(f"SELECT count(*) FROM records WHERE {where}").fetchone()[0])

    def read(self, after: int = 0, limit: int = 100, rule_ids: list[str] | None = None, min_severity: int = 0,
             since_ns: int | None = None, until_ns: int | None = None, up_to: int = 0) -> list[pb.Alert]:
        """Alerts after a cursor, oldest first, filtered."""
        alerts = _AlertFilter(rule_ids, min_severity, since_ns, until_ns)
        records = self._select(after, limit, alerts, up_to, others=())
        return [r for r in records if isinstance(r, pb.Alert)]

    def records(self, after: int = 0, limit: int = 100, rule_ids: list[str] | None = None, min_severity: int = 0,
                since_ns: int | None = None, until_ns: int | None = None, up_to: int = 0,
                incidents: bool = True) -> list[Record]:
        """Alerts that pass the filters, every sensor gap, and (with `incidents`) every incident
        version, after a cursor, in cursor order.

        The filters are the alerts' own: a gap is blind time for every rule, so none hides it,
        and an incident's versions are for its reader to filter."""
        alerts = _AlertFilter(rule_ids, min_severity, since_ns, until_ns)
        return self._select(after, limit, alerts, up_to, others=(GAP, INCIDENT) if incidents else (GAP,))

    def _select(self, after: int, limit: int, alerts: _AlertFilter, up_to: int,
                others: tuple[str, ...]) -> list[Record]:
        where, params = alerts.sql()
        where += "".join(f" OR kind = '{kind}'" for kind in others)  # module constants, never a caller's text
        query = f"SELECT cursor, body, kind FROM records WHERE cursor > ? AND cursor <= ? AND ({where}) " \
                "ORDER BY cursor LIMIT ?"
        with self._lock:
            rows = self._db.execute(query, [after, up_to or 2**63 - 1, *params, limit]).fetchall()
        return [_record(cursor, body, kind) for cursor, body, kind in rows]

    def incidents(self, after: int = 0, limit: int = 100, min_severity: int = 0, since_ns: int | None = None,
                  until_ns: int | None = None, incident_id: str | None = None) -> list[pb.Incident]:
        """Incidents, each in its latest version, in the order of that version's cursor, after a
        cursor: of at least this severity, last seen at or after `since_ns`, first seen before
        `until_ns` (wall-clock nanoseconds)."""
        where = "latest = 1 AND cursor > ? AND severity >= ?"
        params: list[object] = [after, min_severity]
        for clause, value in (("wall_ns >= ?", since_ns), ("first_ns < ?", until_ns), ("incident = ?", incident_id)):
            if value is not None:
                where += f" AND {clause}"
                params.append(value)
        with self._lock:
            rows = self._db.execute(f"SELECT cursor, body FROM records WHERE {where} ORDER BY cursor LIMIT ?",
                                    [*params, limit]).fetchall()
        return [_incident(cursor, body) for cursor, body in rows]

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


Record = pb.Alert | pb.SensorGap | pb.Incident


@dataclass(frozen=True)
class _Version:
    """What an incident version adds to its record: which incident, since when, and whose
    earlier versions it supersedes (its own, and those of the incidents merged into it)."""

    incident: str
    first_ns: int
    supersedes: tuple[str, ...]


@dataclass(frozen=True)
class _AlertFilter:
    rule_ids: list[str] | None
    min_severity: int
    since_ns: int | None
    until_ns: int | None

    def sql(self) -> tuple[str, list[object]]:
        where = "kind = 'alert' AND severity >= ?"
        params: list[object] = [self.min_severity]
        if self.rule_ids:
            where += f" AND rule_id IN ({','.join('?' * len(self.rule_ids))})"
            params += self.rule_ids
        if self.since_ns is not None:
            where += " AND wall_ns >= ?"
            params.append(self.since_ns)
        if self.until_ns is not None:
            where += " AND wall_ns < ?"
            params.append(self.until_ns)
        return where, params


def _record(cursor: int, body: bytes, kind: str) -> Record:
    if kind == INCIDENT:
        return _incident(cursor, body)
    record: pb.Alert | pb.SensorGap = pb.SensorGap.FromString(body) if kind == GAP else pb.Alert.FromString(body)
    record.cursor = cursor
    return record


def _incident(cursor: int, body: bytes) -> pb.Incident:
    incident: pb.Incident = pb.Incident.FromString(body)
    incident.cursor = cursor
    return incident
