"""The file sink: each record as one line of JSON (outward's Record form, as `run --json` prints
it), appended to a file that the sink rotates by size itself, or that logrotate rotates (then
SIGHUP makes the sink reopen it).

    - type: file
      path: /var/log/gpusentry/alerts.jsonl   # relative: to the configuration file's directory
      max_bytes: 100MiB     # rotate before a write would pass this (K, M, G: 1024-based); 0: never
      keep: 5               # rotated files kept: PATH.1 (the newest) .. PATH.5; 0: none
      mode: 0640            # of a file the sink creates (YAML reads 0640 as octal)
      sync: false           # fdatasync each batch (see below)

A reader (tail -F, a log shipper) never sees half a line in a file: the lines of a batch are
written by whole-line write(2) calls on a file opened O_APPEND, and a write that fails half way
(ENOSPC) is cut back to the last whole line. With `sync: true` each batch is on disk
(fdatasync) before the worker moves the sink's cursor past it, so a power cut cannot lose what
the cursor says was written; it is off by default because, on the journal's filesystem, each
sync stalls the journal's own commits behind it (measured by bench/sinks.py: the median alert
latency x8), and the journal, not this file, is the durable record. With logrotate, set
max_bytes: 0 (its names PATH.1... would clash with the sink's own) and send the agent SIGHUP
in postrotate, or use copytruncate.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import stat
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sensor.api.v1 import gpusentry_pb2 as pb
from sensor.outward import json_line
from sensor.rules import source
from sensor.sinks.base import Invalid, SinkError, reject_unknown

TYPE = "file"
KEYS = ("path", "max_bytes", "keep", "mode", "sync")
DEFAULT_MAX_BYTES = 100 * 1024 * 1024
DEFAULT_KEEP = 5
DEFAULT_MODE = 0o640
MAX_KEEP = 1000
SIZE = re.compile(r"(\d+)\s*(|k|kib|m|mib|g|gib)", re.IGNORECASE)
UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}
OCTAL_MODE = re.compile(r"0?o?([0-7]{3,4})")


@dataclass(frozen=True)
class Options:
    path: Path
    max_bytes: int = DEFAULT_MAX_BYTES  # 0: never rotate
    keep: int = DEFAULT_KEEP
    mode: int = DEFAULT_MODE
    sync: bool = False  # fdatasync each batch before the cursor moves


# -- the configuration ----------------------------------------------------------------------------


def options(raw: source.Located, file: Path) -> Options:
    """The sink's entry in the configuration file `file`; Invalid names the line of a bad value."""
    reject_unknown(raw, KEYS, "a file sink")
    return Options(path=_path(raw, file), max_bytes=_size(raw), keep=_keep(raw), mode=_mode(raw), sync=_sync(raw))


def _path(raw: source.Located, file: Path) -> Path:
    value = raw.get("path")
    if not isinstance(value, str) or not value.strip() or value.endswith("/"):
        raise Invalid(raw.line_of("path"), "`path` is the file to write, e.g. /var/log/gpusentry/alerts.jsonl")
    path = file.parent / value
    if path.is_dir():
        raise Invalid(raw.line_of("path"), f"`path` is a directory ({path}): name the file to write in it")
    return path


def _size(raw: source.Located) -> int:
    value = raw.get("max_bytes", DEFAULT_MAX_BYTES)
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    found = SIZE.fullmatch(str(value).strip())
    if found is None or isinstance(value, bool):
        raise Invalid(raw.line_of("max_bytes"), "`max_bytes` is a size in bytes, or with K, M or G (1024-based: "
                                                "100M), at or above 0 (0: never rotate)")
    return int(found.group(1)) * UNITS[found.group(2)[:1].lower()]


def _sync(raw: source.Located) -> bool:
    value = raw.get("sync", False)
    if not isinstance(value, bool):
        raise Invalid(raw.line_of("sync"), "`sync` is true or false")
    return value


def _keep(raw: source.Located) -> int:
    value = raw.get("keep", DEFAULT_KEEP)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_KEEP:
        raise Invalid(raw.line_of("keep"), f"`keep` is the number of rotated files kept: 0 to {MAX_KEEP}")
    return value


def _mode(raw: source.Located) -> int:
    """YAML 1.1 reads 0640 as the octal number; a quoted '0640' or '640' is read as octal too.
    A bare 640 is the decimal number, above 0o777, and refused rather than guessed at."""
    value: Any = raw.get("mode", DEFAULT_MODE)
    found = OCTAL_MODE.fullmatch(value) if isinstance(value, str) else None
    mode = int(found.group(1), 8) if found is not None else value
    if isinstance(mode, bool) or not isinstance(mode, int) or not 0 <= mode <= 0o777:
        raise Invalid(raw.line_of("mode"), "`mode` is a file mode in octal with its leading 0, e.g. 0640")
    if mode & 0o002:
        # anyone could then write lines that look like the agent's alerts
        raise Invalid(raw.line_of("mode"), f"`mode` {mode:04o} lets every user write the file: drop o+w")
    return mode


# -- the delivery ---------------------------------------------------------------------------------


def record_line(record: pb.Record) -> str:
    """One record as outward renders it (the record's item, in its own envelope again)."""
    item = getattr(record, record.WhichOneof("item") or "")
    return json_line(item, record.host)


class Delivery:
    """Appends lines to the file, rotating it by size; one worker thread calls it. The lock
    keeps close() (the agent stopping, from another thread) from closing the descriptor under
    a write: a reused descriptor number could put alert lines into some other file."""

    def __init__(self, options: Options, host: pb.Host) -> None:
        self.options = options
        self.target = str(options.path)
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._size = 0  # of the open file: what it had when opened, and what was written since
        self._rotates = False  # only a regular file: never rename /dev/stdout or a FIFO

    def send(self, records: Sequence[pb.Record]) -> None:
        lines = [f"{record_line(record)}\n".encode() for record in records]
        with self._lock, self._failing("write"):
            self._write_lines(lines)

    def reopen(self) -> None:
        """The file may have been moved away (logrotate): write to a new one at the path."""
        with self._lock, self._failing("reopen"):
            self._close_file()
            self._open_file()

    def close(self) -> None:
        with self._lock:
            self._close_file()

    @contextlib.contextmanager
    def _failing(self, action: str) -> Iterator[None]:
        try:
            yield
        except OSError as exc:
            raise SinkError(f"cannot {action} {self.target}: {exc.strerror or exc}") from exc

    def _write_lines(self, lines: list[bytes]) -> None:
        """Whole lines, as few writes as rotation allows; a line longer than max_bytes gets a
        file of its own."""
        fd = self._fd if self._fd is not None else self._open_file()
        chunk: list[bytes] = []
        pending = 0
        for line in lines:
            if self._would_pass(pending + len(line)) and self._size + pending > 0:
                self._write(fd, b"".join(chunk))
                chunk, pending = [], 0
                fd = self._rotate()
            chunk.append(line)
            pending += len(line)
        self._write(fd, b"".join(chunk))
        if not self.options.sync:
            return
        try:
            os.fdatasync(fd)
        except OSError as exc:
            if exc.errno != errno.EINVAL:  # EINVAL: a pipe or a terminal, which keep nothing to sync
                raise

    def _would_pass(self, more: int) -> bool:
        return self._rotates and self.options.max_bytes > 0 and self._size + more > self.options.max_bytes

    def _write(self, fd: int, data: bytes) -> None:
        if not data:
            return
        # the file's true end, not the sum of what was written: logrotate's copytruncate may
        # have emptied it since
        start = os.lseek(fd, 0, os.SEEK_END) if self._rotates else 0
        done = 0
        view = memoryview(data)
        try:
            while done < len(data):
                done += os.write(fd, view[done:])
        except OSError:
            if done and self._rotates:
                with contextlib.suppress(OSError):  # best effort: the write's own error is the one to report
                    os.ftruncate(fd, start)
            raise
        self._size = start + len(data)

    def _rotate(self) -> int:
        """PATH.keep-1 -> PATH.keep, ..., PATH -> PATH.1 (the oldest is replaced), then a new PATH."""
        self._close_file()
        path = self.options.path
        if self.options.keep == 0:
            path.unlink(missing_ok=True)
        for n in range(self.options.keep, 0, -1):
            older = path if n == 1 else numbered(path, n - 1)
            with contextlib.suppress(FileNotFoundError):  # fewer rotations so far than keep
                older.replace(numbered(path, n))
        return self._open_file()

    def _open_file(self) -> int:
        flags = os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC
        try:
            fd = os.open(self.options.path, flags | os.O_CREAT | os.O_EXCL, self.options.mode)
            os.fchmod(fd, self.options.mode)  # the agent's umask must not narrow what was asked for
        except FileExistsError:
            # an existing file (a restart, or logrotate's `create`) keeps the mode it was given
            fd = os.open(self.options.path, flags)
        status = os.fstat(fd)
        self._fd, self._size, self._rotates = fd, status.st_size, stat.S_ISREG(status.st_mode)
        return fd

    def _close_file(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)


def numbered(path: Path, n: int) -> Path:
    """The n-th rotated file: PATH.1 is the newest."""
    return path.with_name(f"{path.name}.{n}")
