"""What /proc says about processes: the start-up snapshot and the argv fallback.

Processes that were running before the probe attached have no exec or fork record; the
snapshot gives them identity and lineage. Start times are read in clock ticks since boot,
the same clock as the kernel's task->start_boottime, so a process from the snapshot and the
same process seen by BPF get the same identity (sensor/aggregator/process_table.py).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

from sensor import events as ev

PROC = Path("/proc")


def cgroup2_mount() -> Path | None:
    """Where the cgroup v2 hierarchy is mounted (/sys/fs/cgroup, or .../unified in hybrid mode)."""
    try:
        for line in (PROC / "self/mounts").read_text().splitlines():
            parts = line.split()
            if len(parts) > 2 and parts[2] == "cgroup2":
                return Path(parts[1])
    except OSError:
        pass
    return None


def cgroup_id(pid: int, mount: Path | None) -> int:
    """The cgroup v2 id bpf_get_current_cgroup_id() reports: the cgroup directory's inode."""
    if mount is None:
        return 0
    try:
        for line in (PROC / str(pid) / "cgroup").read_text().splitlines():
            if line.startswith("0::"):
                return (mount / line[3:].lstrip("/")).stat().st_ino
    except OSError:
        pass
    return 0


def read_cmdline(pid: int) -> list[bytes] | None:
    try:
        raw = (PROC / str(pid) / "cmdline").read_bytes()
    except OSError:
        return None
    if not raw:
        return []
    return raw.rstrip(b"\0").split(b"\0")


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the comm, which may itself hold spaces and parentheses."""
    try:
        raw = (PROC / str(pid) / "stat").read_bytes()
    except OSError:
        return None
    return raw[raw.rfind(b")") + 2 :].decode().split()


def start_tick(pid: int) -> int | None:
    """The process's start time in clock ticks (/proc/PID/stat starttime); None when it is gone
    (or a zombie: it has exited, only its parent has not reaped it)."""
    fields = _stat_fields(pid)
    if fields is None or len(fields) < 20 or fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


def _ids(pid: int) -> tuple[int, int]:
    uid = gid = 0
    try:
        for line in (PROC / str(pid) / "status").read_text().splitlines():
            if line.startswith("Uid:"):
                uid = int(line.split()[1])
            elif line.startswith("Gid:"):
                gid = int(line.split()[1])
    except OSError:
        pass
    return uid, gid


def _read_int(path: Path, default: int) -> int:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return default


def netns_inode(pid: int) -> int:
    """The network namespace's inode, from the "net:[4026531840]" link."""
    try:
        return os.stat(PROC / str(pid) / "ns/net").st_ino
    except OSError:
        return 0


def _exe_identity(pid: int) -> tuple[int, int]:
    try:
        st = os.stat(PROC / str(pid) / "exe")
    except OSError:
        return 0, 0
    return st.st_dev, st.st_ino


def read_process(pid: int, now_ns: int, mount: Path | None) -> ev.Proc | None:
    fields = _stat_fields(pid)
    if fields is None:
        return None  # exited meanwhile
    try:
        comm = (PROC / str(pid) / "comm").read_bytes().rstrip(b"\n")
    except OSError:
        return None
    try:
        exe = os.readlink(PROC / str(pid) / "exe").encode("utf-8", "surrogateescape")
    except OSError:
        exe = b""  # kernel thread, or exited
    uid, gid = _ids(pid)
    exe_dev, exe_ino = _exe_identity(pid)
    # stat fields after comm: state(0) ppid(1) ... starttime(19)
    return ev.Proc(
        ts=now_ns,
        tgid=pid,
        tid=pid,
        ppid=int(fields[1]),
        uid=uid,
        gid=gid,
        cgroup_id=cgroup_id(pid, mount),
        start_ns=int(fields[19]) * ev.NS_PER_TICK,
        comm=comm,
        exe=exe,
        argv=read_cmdline(pid) or [],
        loginuid=_read_int(PROC / str(pid) / "loginuid", 0xFFFFFFFF),
        sessionid=_read_int(PROC / str(pid) / "sessionid", 0xFFFFFFFF),
        netns=netns_inode(pid),
        exe_dev=exe_dev,
        exe_ino=exe_ino,
    )


def snapshot() -> Iterator[ev.Proc]:
    """Every process now running, parents before children where /proc's order allows."""
    now_ns = time.clock_gettime_ns(time.CLOCK_BOOTTIME)
    mount = cgroup2_mount()
    pids = sorted(int(p) for p in os.listdir(PROC) if p.isdigit())
    for pid in pids:
        proc = read_process(pid, now_ns, mount)
        if proc is not None:
            yield proc
