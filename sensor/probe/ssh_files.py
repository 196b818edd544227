"""ssh's configuration files as an exec of ssh sees them, read by the probe at exec time.

A forward written in ~/.ssh/config is the adversary's (THREAT-MODEL.md), and so is every file
on the way: the process's root (a container's, a chroot), its home, symlinks in either. So each
file is opened through the process's own root (/proc/PID/root) with openat2(RESOLVE_IN_ROOT):
an absolute symlink or `..` resolves inside that root, never out of it, and no /proc magic
link is followed. The home is the passwd entry of the exec's uid in that root's /etc/passwd (ssh
takes pw_dir, not $HOME), the uid and the files' owners taken as the process's user namespace
names them (/proc/PID/uid_map: in a rootless container, root's files are nobody's to ssh).
$HOME is read from the process's environment only for `~` in Include, which glob(3) expands
from it. Only regular files are read (a FIFO would block the reader thread), never one on a
FUSE file system (its server may be the adversary and answer never), and at most
MAX_FILE_BYTES of each. ssh's own rule for user files (owned by the user or root, not
writable by group or others) is applied by the evaluator (sensor/classify/ssh_config.py).

Files are remembered by (root, path) with the (device, inode, size, mtime, ctime) they had: a file
unchanged since the last exec of ssh is not read again, only stat'ed. What ssh read and what we
read may still differ if the file changes between ssh's read and ours (a few milliseconds):
that is a race the adversary can run, and it is said in docs/rules.md.

This runs only for execs of ssh and autossh (by the binary's identity, not its name), whose
execs always wake the probe at once (sensor/probe/identity.py WAKING_TOOLS) so that the process
is still there to be read.
"""

from __future__ import annotations

import ctypes
import errno
import os
import re
import stat
from collections import OrderedDict
from dataclasses import dataclass

from sensor.classify.ssh_config import MAX_FILE_BYTES, ConfigFile, LocalUser, evaluate
from sensor.classify.tunnel import autossh_child_args

SYS_OPENAT2 = 437  # the same number on every architecture (the generic syscall table's)
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_IN_ROOT = 0x10
FUSE_SUPER_MAGIC = 0x65735546
MAX_ENVIRON = 128 * 1024
MAX_NAMES = 1024  # names listed from one directory for an Include glob
CACHE_SIZE = 256  # files remembered
CACHE_BYTES = 4 * 1024 * 1024  # ... and their characters, at most
_OPEN_FLAGS = os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY
_OWN_FD = re.compile(r"/dev/(?:fd/(?P<fd>[0-9]{1,9})|stdin)|/proc/self/fd/(?P<self>[0-9]{1,9})")


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def openat2_in_root(root_fd: int, path: str, flags: int) -> int:
    """An fd on `path` resolved inside the directory `root_fd` as if it were `/`."""
    how = _OpenHow(flags, 0, RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)
    fd = _libc.syscall(SYS_OPENAT2, root_fd, os.fsencode(path), ctypes.byref(how), ctypes.sizeof(how))
    if fd < 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), path)
    return int(fd)


def _fs_type(fd: int) -> int:
    """statfs's f_type (the first field of struct statfs, a long on Linux)."""
    buf = ctypes.create_string_buffer(256)
    if _libc.fstatfs(fd, buf) != 0:
        return 0
    return ctypes.c_long.from_buffer(buf).value


@dataclass
class SshFileStats:
    evaluated: int = 0  # execs of ssh whose configuration was evaluated
    unread: int = 0  # execs of ssh whose root could not be opened (the process was gone)
    files_read: int = 0  # file contents read
    files_unchanged: int = 0  # files known from an earlier read (same stat)
    failed: int = 0  # evaluations that raised (a bug): counted, and said in the frame


_Stamp = tuple[int, int, int, int, int]  # device, inode, size, mtime, ctime


class _Cache:
    """File contents by (root, path), valid while the file's stamp is the same."""

    def __init__(self, stats: SshFileStats) -> None:
        self._known: OrderedDict[tuple[int, int, str], tuple[_Stamp, ConfigFile]] = OrderedDict()
        self._chars = 0
        self.stats = stats

    def get(self, key: tuple[int, int, str], stamp: _Stamp) -> ConfigFile | None:
        known = self._known.get(key)
        if known is None or known[0] != stamp:
            return None
        self._known.move_to_end(key)
        self.stats.files_unchanged += 1
        return known[1]

    def put(self, key: tuple[int, int, str], stamp: _Stamp, found: ConfigFile) -> None:
        old = self._known.pop(key, None)
        if old is not None:
            self._chars -= len(old[1].text or "")
        self._known[key] = (stamp, found)
        self._chars += len(found.text or "")
        while len(self._known) > CACHE_SIZE or self._chars > CACHE_BYTES:
            _, (_, gone) = self._known.popitem(last=False)
            self._chars -= len(gone.text or "")

    def clear(self) -> None:
        self._known.clear()
        self._chars = 0


class UidMap:
    """A user namespace's uid_map: ids as the kernel (and this probe) sees them, to the ids the
    process sees (its passwd file's, its getuid()'s). The initial namespace maps each to itself."""

    OVERFLOW = 65534  # what an id without a mapping reads as inside the namespace

    def __init__(self, ranges: list[tuple[int, int, int]] | None = None) -> None:
        self.ranges = ranges if ranges is not None else [(0, 0, 2**32)]  # (inside, outside, count)

    @classmethod
    def read(cls, path: str) -> UidMap:
        try:
            with open(path) as text:
                rows = [line.split() for line in text.read(64 * 1024).splitlines()]
            return cls([(int(row[0]), int(row[1]), int(row[2])) for row in rows if len(row) == 3])
        except (OSError, ValueError):
            return cls()

    def inside(self, uid: int) -> int:
        for first_inside, first_outside, count in self.ranges:
            if first_outside <= uid < first_outside + count:
                return first_inside + uid - first_outside
        return self.OVERFLOW


class ProcessFiles:
    """ssh_config.Files for one process: its root, with file owners as its user namespace sees them."""

    def __init__(self, root_fd: int, root_id: tuple[int, int], cache: _Cache, uids: UidMap | None = None,
                 pid: int | None = None, proc: str = "/proc") -> None:
        self._pid, self._proc = pid, proc
        self._root = root_fd
        self._root_id = root_id
        self._cache = cache
        self._uids = uids if uids is not None else UidMap()
        self._passwd: list[list[str]] | None = None

    def read(self, path: str) -> ConfigFile:
        fd: int | None
        try:
            fd = openat2_in_root(self._root, path, _OPEN_FLAGS)
        except OSError as exc:
            fd = self._own_fd(path)
            if fd is None:
                missing = exc.errno == errno.ENOENT
                return ConfigFile(None, problem="missing" if missing else exc.strerror or "unreadable")
        try:
            found = self._read_fd(fd, path)
            return found._replace(uid=self._uids.inside(found.uid))
        except OSError as exc:
            return ConfigFile(None, problem=exc.strerror or "unreadable")
        finally:
            os.close(fd)

    def _own_fd(self, path: str) -> int | None:
        """`-F /dev/fd/3` (or /dev/stdin, /proc/self/fd/N): one of the process's own open files,
        which resolving in its root cannot reach (/proc/self would be ours, its fd links are magic).
        Opened afresh through /proc/PID/fd, as ssh's fopen() opens it; only a regular file is read
        (from its start), never a pipe, whose data is ssh's."""
        match = _OWN_FD.fullmatch(path)
        if match is None or self._pid is None:
            return None
        number = match["fd"] or match["self"] or "0"  # /dev/stdin: fd 0
        try:
            return os.open(f"{self._proc}/{self._pid}/fd/{number}", _OPEN_FLAGS)
        except OSError:
            return None

    def _read_fd(self, fd: int, path: str) -> ConfigFile:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return ConfigFile(None, st.st_uid, st.st_mode, "not a regular file")
        key = (*self._root_id, path)
        stamp = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        known = self._cache.get(key, stamp)
        if known is not None:
            return known
        if _fs_type(fd) == FUSE_SUPER_MAGIC:
            return ConfigFile(None, st.st_uid, st.st_mode, "on a FUSE file system")
        data = os.read(fd, MAX_FILE_BYTES + 1)
        self._cache.stats.files_read += 1
        found = ConfigFile(data[:MAX_FILE_BYTES].decode("utf-8", "replace"), st.st_uid, st.st_mode,
                           cut=len(data) > MAX_FILE_BYTES)
        self._cache.put(key, stamp, found)
        return found

    def listdir(self, path: str) -> list[str] | None:
        try:
            fd = openat2_in_root(self._root, path, _OPEN_FLAGS | os.O_DIRECTORY)
        except OSError:
            return None
        try:
            names = []
            with os.scandir(fd) as entries:
                for entry in entries:
                    names.append(entry.name)
                    if len(names) >= MAX_NAMES:
                        break
            return names
        except OSError:
            return None
        finally:
            os.close(fd)

    def passwd(self) -> list[list[str]]:
        """The root's /etc/passwd entries, split at ':'."""
        if self._passwd is None:
            found = self.read("/etc/passwd")
            lines = (found.text or "").splitlines()
            self._passwd = [fields for fields in (line.split(":") for line in lines) if len(fields) >= 7]
        return self._passwd

    def home_of(self, user: str) -> str | None:
        return next((fields[5] for fields in self.passwd() if fields[0] == user), None)

    def user(self, uid: int) -> tuple[str, str]:
        """(name, home) of the uid's passwd entry; ("", "") when it has none."""
        for fields in self.passwd():
            if fields[2] == str(uid):
                return fields[0], fields[5]
        return "", ""


class SshConfigReader:
    """The probe's evaluation of ssh's configuration for each exec of ssh (reader thread only)."""

    def __init__(self, proc: str = "/proc") -> None:
        self.proc = proc
        self.stats = SshFileStats()
        self._cache = _Cache(self.stats)

    def directives(self, pid: int, uid: int, argv: list[bytes], tool: str) -> list[str] | None:
        """What ssh's files add to this command line (see ssh_config.SshConfig.directives), or None
        when the process was gone before its root could be opened. `uid`: its real uid, as the
        kernel sees it (a user namespace's are mapped to the namespace's, as ssh sees them)."""
        try:
            root_fd = os.open(f"{self.proc}/{pid}/root", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            self.stats.unread += 1
            return None
        try:
            root = os.fstat(root_fd)
            uids = UidMap.read(f"{self.proc}/{pid}/uid_map")
            files = ProcessFiles(root_fd, (root.st_dev, root.st_ino), self._cache, uids, pid, self.proc)
            own_uid = uids.inside(uid)  # the uid the process has, in its passwd file's terms
            name, home = files.user(own_uid)
            user = LocalUser(name, own_uid, home, self._env_home(pid), self._cwd(pid))
            args = [arg.decode("utf-8", "replace") for arg in argv[1:]]
            if tool == "autossh":
                args = autossh_child_args(args)
            self.stats.evaluated += 1
            return evaluate(args, files, user).directives()
        finally:
            os.close(root_fd)

    def _env_home(self, pid: int) -> str | None:
        try:
            with open(f"{self.proc}/{pid}/environ", "rb") as environ:
                data = environ.read(MAX_ENVIRON)
        except OSError:
            return None
        for entry in data.split(b"\0"):
            if entry.startswith(b"HOME="):
                return entry[5:].decode("utf-8", "replace")
        return None

    def _cwd(self, pid: int) -> str:
        """The cwd as the process names it: under its root (both links read as this process sees them)."""
        try:
            root = os.readlink(f"{self.proc}/{pid}/root")
            cwd = os.readlink(f"{self.proc}/{pid}/cwd")
        except OSError:
            return "/"
        if root == "/":
            return cwd
        if cwd == root or cwd.startswith(root.rstrip("/") + "/"):
            return cwd[len(root.rstrip("/")):] or "/"
        return "/"
