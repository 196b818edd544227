"""Attach a loaded BPF program to a function of one process's shared library, with perf_event_open.

The long-lived probe holds no BCC (sensor/probe/loader.py), so it attaches its own uprobes
through the kernel's interface: a perf event of the `uprobe` PMU on (file, offset) for one
process (pid), the program set on it (PERF_EVENT_IOC_SET_BPF), enabled. The kernel then plants
the breakpoint only in that process's memory (the perf event's filter is its mm): no other
process traps, whatever it maps. Closing the event's file descriptor detaches it.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import platform
from pathlib import Path

PERF_EVENT_OPEN = {"x86_64": 298, "aarch64": 241}
PERF_FLAG_FD_CLOEXEC = 8
PERF_EVENT_IOC_ENABLE = 0x2400  # _IO('$', 0)
PERF_EVENT_IOC_SET_BPF = 0x40042408  # _IOW('$', 8, u32)
UPROBE_PMU = Path("/sys/bus/event_source/devices/uprobe/type")

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


class _PerfEventAttr(ctypes.Structure):
    """struct perf_event_attr up to config2 (PERF_ATTR_SIZE_VER1, 72 bytes): the kernel zero-fills the rest."""

    _fields_ = [("type", ctypes.c_uint32), ("size", ctypes.c_uint32), ("config", ctypes.c_uint64),
                ("sample_period", ctypes.c_uint64), ("sample_type", ctypes.c_uint64),
                ("read_format", ctypes.c_uint64), ("flags", ctypes.c_uint64), ("wakeup_events", ctypes.c_uint32),
                ("bp_type", ctypes.c_uint32), ("config1", ctypes.c_uint64), ("config2", ctypes.c_uint64)]


class UprobeError(OSError):
    """A uprobe could not be attached (errno and what failed)."""


def available() -> str | None:
    """Why uprobes cannot be attached here, or None when they can."""
    if platform.machine() not in PERF_EVENT_OPEN:
        return f"perf_event_open's number is not known for {platform.machine()}"
    if not UPROBE_PMU.exists():
        return f"{UPROBE_PMU} is missing (a kernel without CONFIG_UPROBE_EVENTS)"
    return None


def attach(program_fd: int, path: str, offset: int, pid: int) -> int:
    """The perf event's descriptor: `program_fd` runs when process `pid` calls the function at
    file offset `offset` of `path` (a path this process can open: /proc/PID/map_files/...).
    The breakpoint is planted when the event is made, the program set just after: calls in
    between (microseconds) are not counted."""
    number = PERF_EVENT_OPEN.get(platform.machine())
    if number is None:
        raise UprobeError(0, available())
    encoded = ctypes.create_string_buffer(os.fsencode(path))
    attr = _PerfEventAttr(type=int(UPROBE_PMU.read_text()), size=ctypes.sizeof(_PerfEventAttr), config=0,
                          sample_period=1, wakeup_events=1, config1=ctypes.addressof(encoded), config2=offset)
    while True:  # a signal to this thread (the agent's SIGCHLD) interrupts it: try again
        fd = int(_libc.syscall(number, ctypes.byref(attr), pid, -1, -1, PERF_FLAG_FD_CLOEXEC))
        if fd >= 0 or ctypes.get_errno() != errno.EINTR:
            break
    if fd < 0:
        error = ctypes.get_errno()
        raise UprobeError(error, f"perf_event_open(uprobe) failed: {os.strerror(error)}")
    try:
        fcntl.ioctl(fd, PERF_EVENT_IOC_SET_BPF, program_fd)
        fcntl.ioctl(fd, PERF_EVENT_IOC_ENABLE, 0)
    except OSError as exc:
        os.close(fd)
        raise UprobeError(exc.errno or 0, f"attaching the program to the uprobe failed: {exc.strerror}") from exc
    return fd
