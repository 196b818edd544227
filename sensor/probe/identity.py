"""What an exec'd binary is, by its identity rather than its name (THREAT-MODEL.md: names are
the adversary's), decided by the probe at exec time and carried in the exec frame.

The tools gpusentry cares about are found on this host at start. An exec's file is read
through a handle taken as soon as its record arrives: /proc/PID/exe, or, when the process is
already gone (a copy run once for a millisecond), the path it exec'd, checked to be the same
file (device and inode). A file that is one of the tools (same device and inode: a hard link,
a symlink, a renamed path) is that tool; a copy has a new inode, and when its size equals a
known tool's, its content is hashed and compared.

Verdicts are cached by (device, inode, size, ctime), so a file rewritten in place is judged
again (ctime, not mtime: the file's owner can set mtime back, never ctime), and only when the
file was really read: a verdict made without evidence (the process gone and its path no longer
that file) is "unread" and never cached, so a later exec of the same file is judged afresh
(THREAT-MODEL.md: the adversary probes our caches).

The exec record carries the same four values as the kernel read them from the inode: a file
judged before is known from them alone, with nothing opened, and the kernel is told which files
are judged (sensor/probe/settled.py) so that their execs need not wake the probe at once.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections import OrderedDict
from dataclasses import dataclass
from enum import StrEnum

from sensor.classify.binaries import TOOLS
from sensor.probe.settled import Settled

MAX_HASHED = 256 * 1024 * 1024
CACHE_SIZE = 65536
# Tools whose execs always wake the probe at once, judged or not: their configuration files are
# read from the process while it is there (sensor/probe/ssh_files.py).
WAKING_TOOLS = frozenset({"ssh", "autossh"})


class How(StrEnum):
    """How a verdict was reached."""

    INODE = "inode"  # the very file of a known tool
    CONTENT = "content"  # a copy: same size and content as a known tool
    SIZE = "size"  # read, and no known tool has its size (or its content differs): not a tool
    UNREAD = "unread"  # the file could not be read: no verdict, nothing cached


@dataclass(frozen=True)
class FileId:
    dev: int
    ino: int
    size: int
    ctime_ns: int

    @classmethod
    def of(cls, st: os.stat_result) -> FileId:
        return cls(st.st_dev, st.st_ino, st.st_size, st.st_ctime_ns)


@dataclass(frozen=True)
class Identity:
    tool: str  # the tool it is, or ""
    how: How


@dataclass
class IdentityStats:
    hashed: int = 0  # files read whole to compare content
    unread: int = 0  # execs whose file could not be read (no verdict)
    unopened: int = 0  # execs of a judged file, known from the kernel's inode values alone


def _sha256(fd: int) -> str:
    digest = hashlib.sha256()
    os.lseek(fd, 0, os.SEEK_SET)
    while chunk := os.read(fd, 1 << 20):
        digest.update(chunk)
    return digest.hexdigest()


def _open_checked(path: str, dev: int, ino: int) -> int | None:
    """An fd on `path` if it is the file (dev, ino); None otherwise."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
    except OSError:
        st = None
    if st is None or (st.st_dev, st.st_ino) != (dev, ino):
        os.close(fd)
        return None
    return fd


class BinaryIdentity:
    def __init__(self, tools: tuple[str, ...] = TOOLS, search_path: str | None = None) -> None:
        self._tools: dict[tuple[int, int], str] = {}  # (dev, ino) of each known tool -> name
        self._by_size: dict[int, list[tuple[str, str]]] = {}  # size -> [(tool, path)]
        self._hashes: dict[str, str] = {}  # path of a known tool -> sha256
        self._cache: OrderedDict[FileId, Identity] = OrderedDict()
        self.stats = IdentityStats()
        self.settled = Settled()  # the kernel's copy of which files are judged (the probe's maps)
        for tool in tools:
            found = shutil.which(tool, path=search_path)
            if found is None:
                continue
            st = os.stat(found)
            self._tools[(st.st_dev, st.st_ino)] = tool
            self._by_size.setdefault(st.st_size, []).append((tool, os.path.realpath(found)))

    def identify(self, pid: int, dev: int, ino: int, path: bytes, stamp: tuple[int, int] | None = None) -> Identity:
        """The exec'd file of process `pid` (device and inode from the kernel, and its (size,
        ctime) when the kernel read them; `path` as exec'd)."""
        if stamp is not None:
            known = self._cached(FileId(dev, ino, *stamp))
            if known is not None:
                self.stats.unopened += 1
                return known
        fd = _open_checked(f"/proc/{pid}/exe", dev, ino)
        if fd is None and path.startswith(b"/"):
            fd = _open_checked(os.fsdecode(path), dev, ino)
        if fd is None:
            self.stats.unread += 1
            return Identity("", How.UNREAD)
        try:
            file = FileId.of(os.fstat(fd))
            verdict = self._judge(fd, file)
        except OSError:
            self.stats.unread += 1
            return Identity("", How.UNREAD)
        finally:
            os.close(fd)
        if stamp is not None and (file.size, file.ctime_ns) == stamp and verdict.tool not in WAKING_TOOLS:
            self.settled.exe(dev, ino, *stamp)  # the very file the kernel saw: judged
        return verdict

    def _cached(self, file: FileId) -> Identity | None:
        cached = self._cache.get(file)
        if cached is not None:
            self._cache.move_to_end(file)
        return cached

    def _judge(self, fd: int, file: FileId) -> Identity:
        cached = self._cached(file)
        if cached is not None:
            return cached
        verdict = self._by_content(fd, file)
        self._cache[file] = verdict
        if len(self._cache) > CACHE_SIZE:
            gone, _ = self._cache.popitem(last=False)
            self.settled.forget_exe(gone.dev, gone.ino)
        return verdict

    def _by_content(self, fd: int, file: FileId) -> Identity:
        tool = self._tools.get((file.dev, file.ino))
        if tool is not None:
            return Identity(tool, How.INODE)
        candidates = self._by_size.get(file.size)
        if not candidates or file.size > MAX_HASHED:
            return Identity("", How.SIZE)
        digest = _sha256(fd)
        self.stats.hashed += 1
        for tool, path in candidates:
            if path not in self._hashes:
                self._hashes[path] = _hash_path(path)
            if digest == self._hashes[path]:
                return Identity(tool, How.CONTENT)
        return Identity("", How.SIZE)


def _hash_path(path: str) -> str:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return ""
    try:
        return _sha256(fd)
    finally:
        os.close(fd)
