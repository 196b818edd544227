"""What the kernel may deliver without waking the probe: an exec whose binary, cgroup and network
namespace the probe has already settled.

An exec record wakes the probe at once (BPF_RB_FORCE_WAKEUP) only when the probe must read the
new process's /proc before it is gone: to judge a binary it has not judged, to place a cgroup
it has not placed, to open a route socket in a namespace it has no socket for. What it has
settled it writes into two kernel maps, and the exec program looks there first; every other
exec waits for the next timed drain (FLUSH_S), like every other record. A host that runs the
same few binaries in the same few cgroups is then drained a few dozen times a second, not once
per exec.

The maps only ever hold what the probe holds: an entry goes into a map after the probe has
cached the verdict, the placement or the socket, and out of it when the probe's own cache lets
go of it. An entry the kernel's LRU drops first only costs a wake-up. The binary's entry is
keyed by what the kernel read from its inode (device, inode number) with its size and ctime,
which any rewrite changes (mtime can be set back by the file's owner; ctime cannot).

Cgroups: on a v2 host a process's cgroup is named by its v2 id, and the cgroups the probe has
placed go into the map. On cgroup v1 and hybrid hosts (these machines, many GPU fleets) that id
is the root's for every process and tells nothing, and a v1 cgroup has no id that is never
reused and names all of a process's hierarchies; there the kernel checks instead that the
process's cgroups are its parent's (one css_set): its container is then its parent's, which the
aggregator has already, and if the process is gone by the drain it keeps that one.
"""

from __future__ import annotations

import errno
import os
import struct

from sensor.probe import procfs
from sensor.probe.bpfsys import BpfMap

# known_scopes kinds (sensor/bpf/process.bpf.c)
SCOPE_CGROUP2, SCOPE_NETNS = 1, 2

_EXE_KEY = struct.Struct("<QI4x")  # inode number, kernel dev_t
_EXE_STAMP = struct.Struct("<QQ")  # size, ctime in ns
_SCOPE_KEY = struct.Struct("<QI4x")  # id, kind
_PRESENT = b"\x01"


def cgroup2_root_id() -> int:
    """The v2 cgroup id of the hierarchy's root: BPF's id for every process on a cgroup v1 host
    (whose unified hierarchy is empty), and for most on a hybrid one."""
    mount = procfs.cgroup2_mount()
    try:
        return mount.stat().st_ino if mount is not None else 1
    except OSError:
        return 1


def kernel_defines() -> dict[str, int]:
    """The exec program's constant: the v2 root's id, which names no cgroup."""
    return {"CGROUP2_ROOT_ID": cgroup2_root_id()}


def kernel_dev(dev: int) -> int:
    """A user-space st_dev as the kernel's dev_t (major << 20 | minor), which BPF reads."""
    return os.major(dev) << 20 | os.minor(dev)


class Settled:
    """The probe's side of the two maps; without them (a test's probe on no kernel) a no-op."""

    def __init__(self, exes: BpfMap | None = None, scopes: BpfMap | None = None) -> None:
        self._exes, self._scopes = exes, scopes

    def exe(self, dev: int, ino: int, size: int, ctime_ns: int) -> None:
        if self._exes is not None:
            self._update(self._exes, _EXE_KEY.pack(ino, kernel_dev(dev)), _EXE_STAMP.pack(size, ctime_ns))

    def forget_exe(self, dev: int, ino: int) -> None:
        if self._exes is not None:
            self._exes.delete(_EXE_KEY.pack(ino, kernel_dev(dev)))

    def scope(self, kind: int, ident: int) -> None:
        if self._scopes is not None:
            self._update(self._scopes, _SCOPE_KEY.pack(ident, kind), _PRESENT)

    def forget_scope(self, kind: int, ident: int) -> None:
        if self._scopes is not None:
            self._scopes.delete(_SCOPE_KEY.pack(ident, kind))

    def _update(self, bpf_map: BpfMap, key: bytes, value: bytes) -> None:
        """An update the kernel refuses (no memory) loses nothing: those execs keep waking the probe."""
        try:
            bpf_map.update(key, value)
        except OSError as exc:
            if exc.errno not in (errno.E2BIG, errno.ENOMEM):
                raise
