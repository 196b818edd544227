"""The alert journal: SQLite in WAL mode, written before an alert is published.

Each alert gets a cursor (SQLite's AUTOINCREMENT rowid: monotonic, never reused even after
old alerts are deleted). A commit is durable once `append` returns: WAL with
synchronous=FULL survives a kill -9 and a power cut without losing a committed alert or
corrupting the file. Retention by age and by count runs as alerts are added. A file that is
not a journal, or is damaged, is refused with one clear message and left as it is.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from sensor.api.v1 import gpusentry_pb2 as pb
from sensor.errors import GpusentryError

SCHEMA = 1
_TABLES = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS alerts (
    cursor INTEGER PRIMARY KEY AUTOINCREMENT,
    wall_ns INTEGER NOT NULL,
    rule_id TEXT NOT NULL,
    severity INTEGER NOT NULL,
    body BLOB NOT NULL  -- gpusentry.v1.Alert, serialized, without its cursor
);
CREATE INDEX IF NOT EXISTS alerts_by_time ON alerts (wall_ns);
"""


class JournalError(GpusentryError):
    """The journal cannot be opened or written."""


@dataclass(frozen=True)
class Retention:
    max_age_s: int = 30 * 24 * 3600
    max_count: int = 1_000_000


class Journal:
    def __init__(self, path: Path, retention: Retention | None = None) -> None:
        self.path = path
        self.retention = retention or Retention()
        self._lock = threading.Lock()
        self.deleted = 0  # alerts removed by retention
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            self._check()
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_TABLES)
            self._db.execute("INSERT OR IGNORE INTO meta VALUES ('schema', ?)", (str(SCHEMA),))
        except sqlite3.DatabaseError as exc:
            raise JournalError(f"cannot use {path} as the alert journal: {exc}",
                               "move the file aside (it is left untouched) and start again; a new journal "
                               "is created") from exc
        except OSError as exc:
            raise JournalError(f"cannot create the alert journal {path}: {exc.strerror}",
                               "give --journal a writable path") from exc
        schema = self._db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
        if schema is None or int(schema[0]) > SCHEMA:
            raise JournalError(f"{path} was written by a newer gpusentry (journal schema {schema})",
                               "use a newer gpusentry, or give --journal another path")

    def _check(self) -> None:
        """Fail on a damaged file before anything is written to it."""
        result = self._db.execute("PRAGMA quick_check").fetchone()
        if result is None or result[0] != "ok":
            raise sqlite3.DatabaseError(f"integrity check failed: {result}")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def append(self, alert: pb.Alert) -> int:
        """Write an alert durably; its cursor."""
        body = alert.SerializeToString()
        wall_ns = alert.time.ToNanoseconds()
        with self._lock:
            row = self._db.execute("INSERT INTO alerts (wall_ns, rule_id, severity, body) VALUES (?, ?, ?, ?)",
                                   (wall_ns, alert.rule_id, int(alert.severity), body))
            cursor = int(row.lastrowid or 0)
            if cursor % 100 == 0:
                self._retain()
        return cursor

    def _retain(self) -> None:
        cutoff = time.time_ns() - self.retention.max_age_s * 1_000_000_000
        old = self._db.execute("DELETE FROM alerts WHERE wall_ns < ?", (cutoff,)).rowcount
        last = self._last()
        extra = self._db.execute("DELETE FROM alerts WHERE cursor <= ?", (last - self.retention.max_count,)).rowcount
        self.deleted += old + extra

    def retain(self) -> None:
        with self._lock:
            self._retain()

    def _last(self) -> int:
        row = self._db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'alerts'").fetchone()
        return int(row[0]) if row else 0

    def last_cursor(self) -> int:
        with self._lock:
            return self._last()

    def count(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT count(*) FROM alerts").fetchone()[0])

    def read(self, after: int = 0, limit: int = 100, rule_ids: list[str] | None = None, min_severity: int = 0,
             since_ns: int = 0, until_ns: int = 0, up_to: int = 0) -> list[pb.Alert]:
        """Alerts after a cursor, oldest first, filtered."""
        query = "SELECT cursor, body FROM alerts WHERE cursor > ? AND severity >= ?"
        params: list[object] = [after, min_severity]
        if rule_ids:
            query += f" AND rule_id IN ({','.join('?' * len(rule_ids))})"
            params += rule_ids
        if since_ns:
            query += " AND wall_ns >= ?"
            params.append(since_ns)
        if until_ns:
            query += " AND wall_ns < ?"
            params.append(until_ns)
        if up_to:
            query += " AND cursor <= ?"
            params.append(up_to)
        query += " ORDER BY cursor LIMIT ?"
        params.append(limit)
        with self._lock:
            rows = self._db.execute(query, params).fetchall()
        out = []
        for cursor, body in rows:
            alert = pb.Alert.FromString(body)
            alert.cursor = cursor
            out.append(alert)
        return out
