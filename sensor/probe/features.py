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

from sensor.probe.btf import IO_URING_FIELDS, KERNEL_FIELDS, VMLINUX_BTF, BtfError, KernelBtf

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
            "syscalls/sys_exit_open", "syscalls/sys_exit_openat2", "syscalls/sys_exit_creat",
            "syscalls/sys_exit_open_by_handle_at"),
}

# GPU opens through io_uring (gpu.bpf.c), where the kernel has these tracepoints with these fields
# (5.19 and later); without them the probe loads all the rest and `doctor` says what is unseen.
IO_URING_TRACEPOINTS: dict[str, tuple[str, ...]] = {
    "io_uring/io_uring_submit_req": ("req", "opcode", "flags"),
    "io_uring/io_uring_complete": ("req", "res"),
}

# Tracepoints the probe uses where the kernel has them, and starts without: what each gives.
OPTIONAL_TRACEPOINTS: dict[str, tuple[str, ...]] = {
    "socket bytes": ("sock/sock_send_length", "sock/sock_recv_length"),
}
SOCK_BYTES_LOST = ("without them no per-socket byte counts: tunnels are still found by their command line, "
                   "but not by behaviour (a process relaying bytes between an egress connection and a local "
                   "service, whatever its name)")

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


def has_sock_length() -> bool:
    """sock:sock_send_length and sock:sock_recv_length (kernel 6.3): per-socket byte counts."""
    return all((TRACEFS / "events" / tp).is_dir() for tp in OPTIONAL_TRACEPOINTS["socket bytes"])


def check_sock_bytes() -> Check:
    """Optional: the probe starts without them, and says what is lost."""
    if not tracefs_mounted():
        return Check("socket bytes", False, "unknown: tracefs is not mounted", f"mount -t tracefs nodev {TRACEFS}",
                     required=False)
    if has_sock_length():
        return Check("socket bytes", True, "sock:sock_send_length and sock:sock_recv_length present: "
                     "tunnels are also found by behaviour", required=False)
    return Check("socket bytes", False, "sock:sock_send_length / sock_recv_length missing (kernel before 6.3); "
                 + SOCK_BYTES_LOST, "a kernel of 6.3 or later", required=False)


def exit_has_group_dead() -> bool:
    """sched_process_exit gained `group_dead`; older kernels need the leader-only test."""
    fmt = TRACEFS / "events/sched/sched_process_exit/format"
    try:
        return "group_dead" in fmt.read_text()
    except OSError:
        return False


def tracepoint_fields(tracepoint: str, tracefs: Path = TRACEFS) -> set[str]:
    """The field names in a tracepoint's format file ("field:void * req;\toffset:16;..."); empty
    when it has none or cannot be read."""
    try:
        text = (tracefs / "events" / tracepoint / "format").read_text()
    except OSError:
        return set()
    names = set()
    for line in text.splitlines():
        declaration = line.strip().removeprefix("field:").partition(";")[0]
        if line.strip().startswith("field:") and declaration.split():
            names.add(declaration.split()[-1].partition("[")[0])
    return names


def io_uring_opens(tracefs: Path = TRACEFS, btf_path: Path = VMLINUX_BTF) -> tuple[dict[str, int], str]:
    """The -D constants that make gpu.bpf.c follow opens through io_uring, and what was found;
    no constants when this kernel lacks what it needs (the reason says what)."""
    for tracepoint, fields in IO_URING_TRACEPOINTS.items():
        missing = sorted(set(fields) - tracepoint_fields(tracepoint, tracefs))
        if missing:
            return {}, (f"tracepoint {tracepoint} is missing" if len(missing) == len(fields)
                        else f"tracepoint {tracepoint} has no field {', '.join(missing)}")
    try:
        with KernelBtf(btf_path) as btf:
            offsets = {f.macro: btf.field_offset(f.struct, f.path) for f in IO_URING_FIELDS}
    except BtfError as exc:
        return {}, str(exc)
    return {**offsets, "HAVE_IO_URING_OPENS": 1}, "IORING_OP_OPENAT, OPENAT2 and FIXED_FD_INSTALL followed"


def check_io_uring(tracefs: Path = TRACEFS, btf_path: Path = VMLINUX_BTF) -> Check:
    """Optional: without it, a GPU device opened through io_uring has no gpu_open record (its
    ioctls are still seen)."""
    defines, detail = io_uring_opens(tracefs, btf_path)
    if defines:
        return Check("io_uring opens", True, detail, required=False)
    return Check("io_uring opens", False,
                 f"{detail}: GPU devices opened through io_uring give no gpu_open record (their ioctls are "
                 "still seen)", "a kernel of 5.19 or later with CONFIG_IO_URING and BTF", required=False)


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
        check_io_uring(),
        check_sock_bytes(),
        check_ringbuf(),
        check_headers(),
        check_bcc(),
        check_uprobes(),
    ]
