"""What the kernel and this machine offer the probe, checked rather than guessed.

Each check returns a Check: whether it passed, what was found, and the command that fixes
it. `gpusentry doctor` prints them all; the loader stops at the first that the probe
cannot do without.
"""

from __future__ import annotations

import importlib.util
import os
import platform
import subprocess
from dataclasses import dataclass
from pathlib import Path

from sensor.probe.btf import KERNEL_FIELDS, VMLINUX_BTF, BtfError, KernelBtf

TRACEFS = Path("/sys/kernel/tracing")
SETUP = "scripts/install"  # the README's installer does every fix below

# Tracepoints the programs attach to, by the record they feed.
TRACEPOINTS: dict[str, tuple[str, ...]] = {
    "exec": ("sched/sched_process_exec", "syscalls/sys_enter_execve", "syscalls/sys_exit_execve",
             "syscalls/sys_enter_execveat", "syscalls/sys_exit_execveat"),
    "fork": ("sched/sched_process_fork",),
    "exit": ("sched/sched_process_exit",),
    "connect": ("syscalls/sys_enter_connect", "syscalls/sys_exit_connect", "sock/inet_sock_set_state"),
    "accept": ("syscalls/sys_enter_accept", "syscalls/sys_exit_accept",
               "syscalls/sys_enter_accept4", "syscalls/sys_exit_accept4"),
    "gpu": ("syscalls/sys_enter_ioctl", "syscalls/sys_exit_ioctl", "syscalls/sys_exit_openat",
            "syscalls/sys_exit_open"),
}

CAP_SYS_ADMIN, CAP_PERFMON, CAP_BPF = 21, 38, 39

# The bpf() syscall's number, which differs by architecture (arch/x86/entry/syscalls/
# syscall_64.tbl; include/uapi/asm-generic/unistd.h, which arm64 uses).
BPF_SYSCALL = {"x86_64": 321, "aarch64": 280}


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""
    required: bool = True
    skipped: bool = False  # not run here: `detail` says why


def effective_caps() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            return int(line.split()[1], 16)
    return 0


def check_privileges() -> Check:
    caps = effective_caps()

    def has(cap: int) -> bool:
        return bool(caps >> cap & 1)

    if (has(CAP_BPF) and has(CAP_PERFMON)) or has(CAP_SYS_ADMIN):
        who = "root" if os.geteuid() == 0 else "capabilities"
        return Check("privileges", True, f"{who}: CAP_BPF and CAP_PERFMON (or CAP_SYS_ADMIN)")
    return Check("privileges", False, "the probe needs CAP_BPF and CAP_PERFMON (or root)",
                 "run it as root (sudo), or grant CAP_BPF,CAP_PERFMON")


def check_btf() -> Check:
    if not VMLINUX_BTF.exists():
        return Check("btf", False, f"{VMLINUX_BTF} is missing: no kernel BTF",
                     "boot a kernel built with CONFIG_DEBUG_INFO_BTF=y")
    try:
        with KernelBtf() as btf:
            for f in KERNEL_FIELDS:
                btf.field_offset(f.struct, f.path)
    except BtfError as exc:
        return Check("btf", False, str(exc), "report this kernel version: a field gpusentry reads has moved")
    return Check("btf", True, f"{VMLINUX_BTF}: all {len(KERNEL_FIELDS)} kernel fields resolved")


def tracefs_mounted() -> bool:
    """From the mount table, which anyone may read (tracefs itself is root-only)."""
    try:
        mounts = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return False
    return any(len(p := line.split()) > 2 and p[1] == str(TRACEFS) and p[2] == "tracefs" for line in mounts)


def mount_tracefs() -> bool:
    """Mount tracefs if it is not; BCC cannot attach a tracepoint without it."""
    if tracefs_mounted():
        return True
    result = subprocess.run(["mount", "-t", "tracefs", "nodev", str(TRACEFS)], capture_output=True)
    return result.returncode == 0 and tracefs_mounted()


def check_tracefs(mount: bool = False) -> Check:
    if tracefs_mounted():
        return Check("tracefs", True, f"{TRACEFS} is mounted")
    if mount and mount_tracefs():
        return Check("tracefs", True, f"{TRACEFS} was not mounted; mounted it")
    return Check("tracefs", False, f"{TRACEFS} is not mounted: no tracepoint can be attached",
                 f"mount -t tracefs nodev {TRACEFS} (the agent does this itself when run as root)")


def missing_tracepoints() -> list[str]:
    return [tp for tps in TRACEPOINTS.values() for tp in tps if not os.path.isdir(TRACEFS / "events" / tp)]


def check_tracepoints() -> Check:
    if not tracefs_mounted():
        return Check("tracepoints", False, "unknown: tracefs is not mounted",
                     f"mount -t tracefs nodev {TRACEFS}")
    if not os.access(TRACEFS / "events", os.R_OK | os.X_OK):
        return Check("tracepoints", False, "unknown: tracefs is readable only by root", "run as root")
    missing = missing_tracepoints()
    if missing:
        return Check("tracepoints", False, "missing: " + ", ".join(missing),
                     "a kernel with CONFIG_FTRACE_SYSCALLS=y and the sched/sock tracepoints")
    count = sum(len(t) for t in TRACEPOINTS.values())
    return Check("tracepoints", True, f"all {count} present")


def exit_has_group_dead() -> bool:
    """sched_process_exit gained `group_dead`; older kernels need the leader-only test."""
    fmt = TRACEFS / "events/sched/sched_process_exit/format"
    try:
        return "group_dead" in fmt.read_text()
    except OSError:
        return False


def kernel_build_dir() -> Path:
    return Path("/lib/modules") / platform.release() / "build"


def check_headers() -> Check:
    build = kernel_build_dir()
    if (build / "include").is_dir():
        target = build.resolve()
        return Check("kernel headers", True, f"{build} -> {target}")
    release = platform.release()
    return Check(
        "kernel headers", False,
        f"{build} is missing: BCC compiles the BPF programs against kernel headers",
        f"apt-get install linux-headers-{release}; where none matches this kernel, "
        f"apt-get install linux-headers-amd64 and link it at {build} ({SETUP} does both)",
    )


def check_bcc(load: bool = True) -> Check:
    """BCC's Python bindings; without `load`, only found, not imported: importing maps BCC's
    LLVM into the process for good, and the long-lived probe leaves that to its loader child."""
    fix = ("apt-get install python3-bpfcc, and make the virtualenv with "
           "/usr/bin/python3 -m venv --system-site-packages")
    if not load:
        spec = importlib.util.find_spec("bcc")
        if spec is None or spec.origin is None:  # an empty bcc directory is a namespace package
            return Check("bcc", False, "BCC's Python bindings are missing (no module named 'bcc')", fix)
        return Check("bcc", True, f"bcc at {spec.origin}")
    try:
        import bcc
        from bcc import BPF  # noqa: F401 - an empty bcc directory imports as a namespace package
    except ImportError as exc:
        return Check("bcc", False, f"BCC's Python bindings are missing ({exc})", fix)
    return Check("bcc", True, f"bcc {getattr(bcc, '__version__', '?')}")


def bpf_syscall(machine: str | None = None) -> int | None:
    """The bpf() syscall number on this machine's architecture (`machine`), or None when unknown."""
    return BPF_SYSCALL.get(machine if machine is not None else platform.machine())


def check_ringbuf(machine: str | None = None) -> Check:
    """Create a BPF ring buffer map with the raw bpf() syscall (kernel 5.8+)."""
    import ctypes

    machine = machine if machine is not None else platform.machine()
    sys_bpf = bpf_syscall(machine)
    if sys_bpf is None:
        return Check("ring buffer", False, f"unknown architecture {machine!r}: the bpf() syscall check is skipped "
                     f"(its number is known for {', '.join(BPF_SYSCALL)})", required=False, skipped=True)
    libc = ctypes.CDLL(None, use_errno=True)
    BPF_MAP_CREATE, BPF_MAP_TYPE_RINGBUF = 0, 27
    attr = (ctypes.c_uint32 * 32)()
    attr[0], attr[1], attr[2], attr[3] = BPF_MAP_TYPE_RINGBUF, 0, 0, 4096
    fd = libc.syscall(sys_bpf, BPF_MAP_CREATE, ctypes.byref(attr), ctypes.sizeof(attr))
    if fd < 0:
        err = ctypes.get_errno()
        return Check("ring buffer", False, f"cannot create a BPF ring buffer: {os.strerror(err)}",
                     "a kernel of 5.8 or later, and root" if err != 1 else "run as root")
    os.close(fd)
    return Check("ring buffer", True, "BPF_MAP_TYPE_RINGBUF available")


def filesystem_type(fd: int) -> int:
    """The filesystem magic number (statfs f_type) of an open file; 0 when unknown."""
    import ctypes

    buffer = ctypes.create_string_buffer(120)  # struct statfs: f_type is its first field (a long)
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.fstatfs(fd, buffer) != 0:
        return 0
    return int.from_bytes(buffer.raw[:ctypes.sizeof(ctypes.c_long)], "little") & 0xFFFFFFFF


def check_uprobes() -> Check:
    """Launch watches (libcuda's launch entry points, in suspicious processes only) need uprobes;
    without them the agent runs on, with no gpu_launches facts."""
    from sensor.probe.uprobes import available

    why = available()
    if why is None:
        return Check("uprobes", True, "uprobe perf events: launch watches can attach (suspicious processes only)")
    return Check("uprobes", False, f"{why}: no launch watch, no gpu_launches facts",
                 "a kernel with CONFIG_UPROBE_EVENTS (launch evidence only; detection runs without it)",
                 required=False)


def run_checks(mount: bool = False) -> list[Check]:
    return [
        check_privileges(),
        check_btf(),
        check_tracefs(mount=mount),
        check_tracepoints(),
        check_ringbuf(),
        check_headers(),
        check_bcc(),
        check_uprobes(),
    ]
