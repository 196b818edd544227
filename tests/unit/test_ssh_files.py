"""The probe's reading of ssh's files, through a process's root: real openat2 calls on a directory
that stands for that root, and a /proc-like directory that names it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sensor.classify.ssh_config import MAX_FILE_BYTES
from sensor.probe.ssh_files import ProcessFiles, SshConfigReader, SshFileStats, UidMap, _Cache

PID = 4242
UID = os.getuid() or 1000  # the files' owner, or (as root) root: ssh accepts both


def write(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)


@pytest.fixture
def rootfs(tmp_path: Path) -> Path:
    root = tmp_path / "rootfs"
    write(root / "etc/passwd", f"root:x:0:0:root:/root:/bin/sh\nu:x:{UID}:100::/home/u:/bin/sh\n")
    return root


@pytest.fixture
def proc(tmp_path: Path, rootfs: Path) -> Path:
    """/proc/PID as far as the reader looks: root and cwd links, environ."""
    entry = tmp_path / "proc" / str(PID)
    entry.mkdir(parents=True)
    (entry / "root").symlink_to(rootfs)
    (entry / "cwd").symlink_to(rootfs / "work")
    (rootfs / "work").mkdir()
    (entry / "environ").write_bytes(b"PATH=/bin\0HOME=/home/elsewhere\0")
    return tmp_path / "proc"


def files_of(root: Path) -> ProcessFiles:
    fd = os.open(root, os.O_PATH | os.O_DIRECTORY)
    st = os.fstat(fd)
    return ProcessFiles(fd, (st.st_dev, st.st_ino), _Cache(SshFileStats()))


def test_symlinks_resolve_inside_the_root(rootfs: Path, tmp_path: Path) -> None:
    write(tmp_path / "outside", "RemoteForward 1 localhost:22\n")
    write(rootfs / "inside", "RemoteForward 2 localhost:22\n")
    (rootfs / "abs").symlink_to("/inside")
    (rootfs / "dots").symlink_to("../../../../../outside")
    (rootfs / "escape").symlink_to(tmp_path / "outside")
    files = files_of(rootfs)
    assert files.read("/abs").text == "RemoteForward 2 localhost:22\n"
    assert files.read("/dots").problem == "missing"  # `..` stops at the root: /outside there
    assert files.read("/escape").problem == "missing"  # its absolute target, taken inside the root
    assert files.read("/../../outside").problem == "missing"


def test_only_regular_files_are_read_and_at_most_the_cap(rootfs: Path) -> None:
    os.mkfifo(rootfs / "fifo")
    write(rootfs / "big", "#" * (MAX_FILE_BYTES + 10))
    files = files_of(rootfs)
    assert files.read("/fifo").problem == "not a regular file"  # opened without blocking
    big = files.read("/big")
    assert big.text is not None and len(big.text) == MAX_FILE_BYTES and big.cut


def test_an_unchanged_file_is_not_read_again(rootfs: Path) -> None:
    write(rootfs / "cfg", "RemoteForward 1 localhost:22\n")
    files = files_of(rootfs)
    stats = files._cache.stats
    files.read("/cfg")
    files.read("/cfg")
    assert (stats.files_read, stats.files_unchanged) == (1, 1)
    write(rootfs / "cfg", "RemoteForward 9 localhost:22\n")  # rewritten: a new stamp
    assert files.read("/cfg").text == "RemoteForward 9 localhost:22\n"
    assert stats.files_read == 2


def test_the_reader_evaluates_through_the_process_root_home_and_cwd(proc: Path, rootfs: Path) -> None:
    write(rootfs / "home/u/.ssh/config", "Host gw\n  RemoteForward 2222 localhost:22\n  Include extra\n", 0o600)
    write(rootfs / "home/elsewhere/.ssh/extra", "LocalForward 8080 localhost:80\n")  # ~ is $HOME for glob
    write(rootfs / "etc/ssh/ssh_config", "Host *\n  User fallback\n")
    write(rootfs / "work/my.conf", "DynamicForward 1080\n")
    reader = SshConfigReader(str(proc))
    assert reader.directives(PID, UID, [b"ssh", b"-N", b"gw"], "ssh") == [
        "User fallback", "RemoteForward 2222 localhost:22", "LocalForward 8080 localhost:80"]
    assert reader.directives(PID, UID, [b"ssh", b"-F", b"my.conf", b"gw"], "ssh") == ["DynamicForward 1080"]
    # autossh: its ssh child's arguments (-M taken out)
    assert reader.directives(PID, UID, [b"autossh", b"-M", b"0", b"-F", b"my.conf", b"gw"], "autossh") == [
        "DynamicForward 1080"]
    assert reader.stats.evaluated == 3


def test_a_user_config_others_can_write_is_refused_as_ssh_does(proc: Path, rootfs: Path) -> None:
    write(rootfs / "home/u/.ssh/config", "RemoteForward 2222 localhost:22\n", 0o666)
    lines = SshConfigReader(str(proc)).directives(PID, UID, [b"ssh", b"gw"], "ssh")
    assert lines == ["# /home/u/.ssh/config: bad owner or permissions (ssh refuses it and stops)"]


def test_a_process_gone_is_counted(proc: Path) -> None:
    reader = SshConfigReader(str(proc))
    assert reader.directives(PID + 1, 0, [b"ssh", b"gw"], "ssh") is None
    assert reader.stats.unread == 1


def test_a_user_namespace_names_the_uid_and_the_owners(proc: Path, rootfs: Path) -> None:
    """A rootless container: its uid 1000 is 101000 to the kernel; files owned by the host's root
    are nobody's inside, and ssh refuses a user config owned by nobody."""
    assert UidMap([(0, 100000, 65536)]).inside(101000) == 1000
    assert UidMap([(0, 100000, 65536)]).inside(0) == UidMap.OVERFLOW
    (proc / str(PID) / "uid_map").write_text("         0     100000      65536\n")
    write(rootfs / "etc/passwd", "root:x:0:0:root:/root:/bin/sh\nu:x:1000:1000::/home/u:/bin/sh\n")
    config = rootfs / "home/u/.ssh/config"
    write(config, "RemoteForward 2222 localhost:22\n")
    reader = SshConfigReader(str(proc))
    assert reader.directives(PID, 101000, [b"ssh", b"gw"], "ssh") == [
        "# /home/u/.ssh/config: bad owner or permissions (ssh refuses it and stops)"]
    if os.getuid() == 0:  # owned by the container's user: read
        os.chown(config, 101000, 101000)
        assert reader.directives(PID, 101000, [b"ssh", b"gw"], "ssh") == ["RemoteForward 2222 localhost:22"]


def test_minus_f_on_one_of_the_process_own_files(proc: Path, rootfs: Path, tmp_path: Path) -> None:
    """`ssh -F /dev/fd/3 3<file` (the file may be deleted): read through /proc/PID/fd, when a
    regular file; a pipe is not read (its data is ssh's)."""
    own = tmp_path / "deleted-later"
    write(own, "RemoteForward 4444 localhost:22\n")
    (proc / str(PID) / "fd").mkdir()
    (proc / str(PID) / "fd/3").symlink_to(own)
    os.mkfifo(tmp_path / "pipe")
    (proc / str(PID) / "fd/0").symlink_to(tmp_path / "pipe")
    reader = SshConfigReader(str(proc))
    for path in (b"/dev/fd/3", b"/proc/self/fd/3"):
        assert reader.directives(PID, UID, [b"ssh", b"-F", path, b"gw"], "ssh") == ["RemoteForward 4444 localhost:22"]
    assert reader.directives(PID, UID, [b"ssh", b"-F", b"/dev/stdin", b"gw"], "ssh") == [
        "# /dev/stdin: not read (not a regular file)"]
