"""What the probe has settled, the kernel knows (sensor/probe/settled.py): a binary judged once is
known again from the kernel's inode values alone, never opened; a rewritten one is judged again;
the network namespaces it has sockets in are in the kernel's map, under the ids the kernel reads;
where the v2 cgroup id tells nothing (cgroup v1, here), the kernel says whether an exec's cgroups
are its parent's. Such execs then wait for the timed drain instead of waking the probe."""

from __future__ import annotations

import ctypes
import os
import shutil
import struct
import subprocess
from pathlib import Path

from sensor import events as ev
from sensor.probe import settled
from tests.kernel.conftest import LiveProbe, exec_of
from tests.kernel.test_containers import CGROUP_V1
from tests.waiting import wait_until

_EXE_KEY = struct.Struct("<QI4x")
_EXE_STAMP = struct.Struct("<QQ")
_SCOPE_KEY = struct.Struct("<QI4x")
_IN_OPEN, _IN_NONBLOCK, _EVENT = 0x20, 0o4000, struct.Struct("iIII")
_libc = ctypes.CDLL(None, use_errno=True)


class Opens:
    """Counts the opens of one file (inotify IN_OPEN: an exec opens its file too)."""

    def __init__(self, path: Path) -> None:
        self.fd = _libc.inotify_init1(_IN_NONBLOCK | os.O_CLOEXEC)
        assert self.fd >= 0 and _libc.inotify_add_watch(self.fd, str(path).encode(), _IN_OPEN) >= 0

    def since_last(self) -> int:
        try:
            data = os.read(self.fd, 65536)
        except BlockingIOError:
            return 0
        return len(data) // _EVENT.size  # no names: a watch on a file reports none

    def close(self) -> None:
        os.close(self.fd)


def run_and_wait(live: LiveProbe, argv: list[str]) -> ev.Exec:
    child = subprocess.Popen(argv)
    assert child.wait(timeout=10) == 0
    (event,) = live.wait_for(exec_of(child.pid), what=f"the exec of {argv[0]}")
    assert isinstance(event, ev.Exec)
    return event


def exe_entry(live: LiveProbe, path: Path) -> bytes | None:
    assert live.probe.bpf is not None
    st = os.stat(path)
    return live.probe.bpf.maps["known_exes"].lookup(_EXE_KEY.pack(st.st_ino, settled.kernel_dev(st.st_dev)))


def stamp_of(path: Path) -> bytes:
    st = os.stat(path)
    return _EXE_STAMP.pack(st.st_size, st.st_ctime_ns)


def test_a_judged_binary_is_known_from_the_kernel_s_inode_values_and_a_rewritten_one_is_judged_again(
        live: LiveProbe, tmp_path: Path) -> None:
    binary = tmp_path / "settled-true"
    shutil.copy("/bin/true", binary)
    opens = Opens(binary)
    try:
        first = run_and_wait(live, [str(binary)])
        assert (first.tool, first.identity) == ("", "size")
        assert opens.since_last() == 2  # the exec, and the probe through /proc/PID/exe
        assert exe_entry(live, binary) == stamp_of(binary)

        again = run_and_wait(live, [str(binary)])
        assert (again.tool, again.identity) == ("", "size")
        assert opens.since_last() == 1  # the exec alone: known from the record

        with binary.open("r+b") as f:  # the same bytes written back: same inode, new ctime
            first_byte = f.read(1)
            f.seek(0)
            f.write(first_byte)
        assert opens.since_last() == 1  # that open
        rewritten = run_and_wait(live, [str(binary)])
        assert (rewritten.tool, rewritten.identity) == ("", "size")
        assert opens.since_last() == 2  # judged again, from the file
        assert exe_entry(live, binary) == stamp_of(binary)
    finally:
        opens.close()


def scope_known(live: LiveProbe, kind: int, ident: int) -> bool:
    assert live.probe.bpf is not None
    return live.probe.bpf.maps["known_scopes"].lookup(_SCOPE_KEY.pack(ident, kind)) is not None


def test_a_new_network_namespace_is_settled_under_the_kernel_s_id(live: LiveProbe) -> None:
    in_namespace = subprocess.Popen(["unshare", "--net", "sleep", "30"])
    try:
        event = live.wait_for(lambda e: exec_of(in_namespace.pid)(e) and isinstance(e, ev.Exec) and
                              e.filename.endswith(b"sleep"), what="sleep's exec in its namespace")[0]
        assert isinstance(event, ev.Exec)
        netns = os.stat(f"/proc/{in_namespace.pid}/ns/net").st_ino
        assert event.netns == netns != os.stat("/proc/self/ns/net").st_ino
        wait_until(lambda: scope_known(live, settled.SCOPE_NETNS, netns), what="the namespace settled")
    finally:
        in_namespace.kill()
        in_namespace.wait()


def test_the_kernel_says_whether_an_exec_s_cgroups_are_its_parent_s(live: LiveProbe) -> None:
    """cgroup v1 here: a child execs in its parent's cgroups; one that moved itself first (as a
    container runtime's init does) does not, and is read at once and placed by its own."""
    group = CGROUP_V1 / "memory" / f"gs-settled-{os.getpid()}"
    group.mkdir()
    try:
        plain = run_and_wait(live, ["/bin/true"])
        assert plain.flags & ev.CGROUPS_INHERITED
        moved = subprocess.Popen(["/bin/sh", "-c", f"echo $$ > {group}/cgroup.procs && exec /bin/true"])
        assert moved.wait(timeout=10) == 0
        (event,) = live.wait_for(lambda e: exec_of(moved.pid)(e) and isinstance(e, ev.Exec) and
                                 e.filename == b"/bin/true", what="the moved process's exec")
        assert isinstance(event, ev.Exec) and not event.flags & ev.CGROUPS_INHERITED
    finally:
        group.rmdir()
