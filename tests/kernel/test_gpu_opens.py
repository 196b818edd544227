"""GPU device opens that make no openat: openat2, creat, open_by_handle_at and io_uring, in the real
kernel. Each workload opens a character device 195:0 (an NVIDIA GPU's number, under another name,
in a private mount namespace: no driver is loaded, so it opens with O_PATH only) or a plain file
named nvidiactl, and asserts the exact gpu_open record."""

from __future__ import annotations

import errno
import subprocess
from pathlib import Path

import pytest

from sensor import events as ev
from tests.kernel.conftest import LiveProbe

# A private mount namespace with a tmpfs at /mnt holding /mnt/innocent-name, char 195:0; then
# the command given after the script.
DEVICE_NODE = "mount -t tmpfs none /mnt && mknod /mnt/innocent-name c 195 0 && exec \"$@\""
NODE = "/mnt/innocent-name"

OPENAT2 = """
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
how = (ctypes.c_uint64 * 3)(os.O_PATH, 0, 0)  # struct open_how: flags, mode, resolve
fd = libc.syscall(437, -100, sys.argv[1].encode(), how, ctypes.sizeof(how))  # openat2(AT_FDCWD, ...)
assert fd >= 0, os.strerror(ctypes.get_errno())
print(os.getpid(), fd)
"""

BY_HANDLE = """
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
handle = (ctypes.c_uint32 * 34)(128)  # struct file_handle: handle_bytes, handle_type, f_handle[128]
mount_id = ctypes.c_int()
assert libc.name_to_handle_at(-100, sys.argv[1].encode(), handle, ctypes.byref(mount_id), 0) == 0
mount_fd = os.open(os.path.dirname(sys.argv[1]), os.O_RDONLY)
fd = libc.open_by_handle_at(mount_fd, handle, os.O_RDWR)
assert fd >= 0, os.strerror(ctypes.get_errno())
print(os.getpid(), fd)
"""

CREAT = """
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
fd = libc.syscall(85, sys.argv[1].encode(), 0o600)  # creat(2) on x86_64: opens the existing file
assert fd >= 0, os.strerror(ctypes.get_errno())
print(os.getpid(), fd)
"""


def in_device_namespace(*command: str) -> list[int]:
    out = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", DEVICE_NODE, "sh", *command],
                         capture_output=True, text=True, check=True)
    return [int(x) for x in out.stdout.split()]


def opens_of(live: LiveProbe, pid: int) -> list[ev.GpuOpen]:
    return [e for e in live.collector.events(ev.GpuOpen, tgid=pid) if isinstance(e, ev.GpuOpen)]


def wait_for_ioctl(live: LiveProbe, pid: int) -> ev.GpuIoctl:
    """The workload's one ioctl record: it comes after its open, so by then every open is in."""
    (record,) = live.wait_for(lambda e: isinstance(e, ev.GpuIoctl) and e.tgid == pid)
    assert isinstance(record, ev.GpuIoctl)
    return record


def test_openat2_of_a_device_node(live: LiveProbe) -> None:
    pid, fd = in_device_namespace("/usr/bin/python3", "-c", OPENAT2, NODE)
    (opened,) = live.wait_for(lambda e: isinstance(e, ev.GpuOpen) and e.tgid == pid)
    assert isinstance(opened, ev.GpuOpen)
    assert (opened.fd, opened.kind, opened.minor, opened.by_name, opened.tid) == (fd, ev.GpuKind.DEV, 0, False, pid)


@pytest.mark.parametrize("script", [BY_HANDLE, CREAT], ids=["open_by_handle_at", "creat"])
def test_other_open_syscalls_of_a_file_named_like_a_device(live: LiveProbe, tmp_path: Path, script: str) -> None:
    target = tmp_path / "nvidiactl"
    target.touch()
    out = subprocess.run(["/usr/bin/python3", "-c", script, str(target)], capture_output=True, text=True, check=True)
    pid, fd = (int(x) for x in out.stdout.split())
    (opened,) = live.wait_for(lambda e: isinstance(e, ev.GpuOpen) and e.tgid == pid)
    assert isinstance(opened, ev.GpuOpen)
    assert (opened.fd, opened.kind, opened.minor, opened.by_name) == (fd, ev.GpuKind.CTL, 0, True)


def uring(helpers: Path, mode: str, path: str = NODE, flags: str = "path") -> tuple[int, int, int, int]:
    pid, fd, err, threads = in_device_namespace(str(helpers / "uring_open"), mode, path, flags)
    return pid, fd, err, threads


@pytest.mark.parametrize("mode", ["openat", "openat2"])
def test_io_uring_open_of_a_device_node(live: LiveProbe, helpers: Path, mode: str) -> None:
    pid, fd, err, _ = uring(helpers, mode)
    assert err == errno.EBADF  # an O_PATH fd: the ioctl fails, after the sensor has classified it
    record = wait_for_ioctl(live, pid)
    assert (record.kind, record.fd, record.reason) == (ev.GpuKind.DEV, fd, ev.GpuReason.ALLOC_FAILED)
    assert [(o.fd, o.kind, o.minor, o.by_name) for o in opens_of(live, pid)] == [(fd, ev.GpuKind.DEV, 0, False)]


@pytest.mark.parametrize("mode", ["async", "sqpoll"])
def test_io_uring_open_run_by_a_kernel_thread_of_the_process(live: LiveProbe, helpers: Path, mode: str) -> None:
    """IOSQE_ASYNC: the open runs in an io-wq worker; IORING_SETUP_SQPOLL: the ring's own thread
    submits and runs it. Either is a thread of the same process that shares its fd table: the
    record is the process's, made on that thread."""
    pid, fd, _, threads = uring(helpers, mode)
    assert threads > 1
    wait_for_ioctl(live, pid)
    (opened,) = opens_of(live, pid)
    assert (opened.fd, opened.kind, opened.minor, opened.by_name) == (fd, ev.GpuKind.DEV, 0, False)
    assert opened.tgid == pid and opened.tid != pid


def test_io_uring_direct_descriptor_is_seen_when_installed(live: LiveProbe, helpers: Path) -> None:
    """The helper opens the node normally (a record) and moves it to fd 0, then opens it into a
    direct descriptor, whose completion's result is 0: not an fd, so no record, though fd 0 is
    the device. Installing the descriptor in the fd table gives the second record."""
    pid, fd, _, _ = uring(helpers, "direct")
    wait_for_ioctl(live, pid)
    first_open = fd  # the normal open took the same lowest free fd before it moved to 0
    assert [(o.fd, o.kind, o.minor, o.by_name) for o in opens_of(live, pid)] == [
        (first_open, ev.GpuKind.DEV, 0, False), (fd, ev.GpuKind.DEV, 0, False)]


def test_io_uring_open_without_completion_is_seen_only_at_its_ioctl(live: LiveProbe, helpers: Path) -> None:
    """The blind spot that remains: IOSQE_CQE_SKIP_SUCCESS posts no completion, so the open has no
    record; the file is still classified when an ioctl uses its fd."""
    pid, fd, err, _ = uring(helpers, "skip")
    assert err == errno.EBADF
    record = wait_for_ioctl(live, pid)
    assert (record.kind, record.fd, record.minor, record.reason) == (ev.GpuKind.DEV, fd, 0, ev.GpuReason.ALLOC_FAILED)
    assert opens_of(live, pid) == []


def test_io_uring_open_of_a_plain_file_named_like_a_device(live: LiveProbe, helpers: Path, tmp_path: Path) -> None:
    target = tmp_path / "nvidiactl"
    target.touch()
    out = subprocess.run([str(helpers / "uring_open"), "openat", str(target), "rdwr"], capture_output=True, text=True,
                         check=True)
    pid, fd, err, _ = (int(x) for x in out.stdout.split())
    assert err == errno.ENOTTY
    wait_for_ioctl(live, pid)
    assert [(o.fd, o.kind, o.minor, o.by_name) for o in opens_of(live, pid)] == [(fd, ev.GpuKind.CTL, 0, True)]


def test_io_uring_open_of_a_plain_file_is_not_a_gpu(live: LiveProbe, helpers: Path, tmp_path: Path) -> None:
    plain, marker = tmp_path / "data.bin", tmp_path / "nvidiactl"
    plain.touch()
    marker.touch()
    out = subprocess.run([str(helpers / "uring_open"), "openat", str(plain), "rdwr"], capture_output=True, text=True,
                         check=True)
    pid = int(out.stdout.split()[0])
    control = subprocess.run([str(helpers / "uring_open"), "openat", str(marker), "rdwr"], capture_output=True,
                             text=True, check=True)
    control_pid = int(control.stdout.split()[0])
    wait_for_ioctl(live, control_pid)  # the control's records are in: the first helper's would be too
    assert opens_of(live, pid) == [] and len(opens_of(live, control_pid)) == 1


def test_the_programs_load_without_io_uring_opens(root: None) -> None:
    """A kernel without the io_uring tracepoints (or their fields) gets every other program."""
    from sensor.probe import program

    constants = {k: v for k, v in program.kernel_constants().items() if k != "HAVE_IO_URING_OPENS"}
    bpf = program.compile_text(program.source_text(), program.cflags(program.ProbeConfig(), constants))
    try:
        names = {name.decode() for name in bpf.funcs}
        assert "tracepoint__syscalls__sys_exit_openat2" in names
        assert not {n for n in names if "io_uring" in n}
        assert bpf.num_open_tracepoints() == len([n for n in names if n.startswith("tracepoint__")])  # all attached
    finally:
        bpf.cleanup()
