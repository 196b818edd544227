"""Binary identity as the probe decides it at exec time: by inode, by content, and never a
cached verdict made without reading the file."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from sensor.probe.identity import BinaryIdentity, How, Identity
from sensor.probe.settled import Settled

NO_PROCESS = 0  # /proc/0/exe does not exist: the path must do


@pytest.fixture
def tools(tmp_path: Path) -> Path:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    shutil.copy("/usr/bin/ssh", bindir / "ssh")
    return bindir


def judge(identity: BinaryIdentity, path: Path, pid: int = NO_PROCESS) -> Identity:
    st = path.stat()
    return identity.identify(pid, st.st_dev, st.st_ino, str(path).encode())


def test_the_tool_itself_and_its_hard_link_by_inode(tools: Path, tmp_path: Path) -> None:
    identity = BinaryIdentity(tools=("ssh",), search_path=str(tools))
    assert judge(identity, tools / "ssh") == Identity("ssh", How.INODE)
    hidden = tmp_path / ".cache-kworker"
    os.link(tools / "ssh", hidden)
    assert judge(identity, hidden) == Identity("ssh", How.INODE)
    assert identity.stats.hashed == 0


def test_a_copy_by_content_and_another_binary_by_size(tools: Path, tmp_path: Path) -> None:
    identity = BinaryIdentity(tools=("ssh",), search_path=str(tools))
    copy = tmp_path / "backup-helper"
    shutil.copy(tools / "ssh", copy)
    assert judge(identity, copy) == Identity("ssh", How.CONTENT)
    other = tmp_path / "true"
    shutil.copy("/bin/true", other)
    assert judge(identity, other) == Identity("", How.SIZE)
    same_size = tmp_path / "padded"
    same_size.write_bytes(b"\0" * (tools / "ssh").stat().st_size)  # a known tool's size, not its content
    assert judge(identity, same_size) == Identity("", How.SIZE)
    assert identity.stats.hashed == 2


def test_a_copy_run_for_a_moment_is_read_through_its_path_after_it_exited(tools: Path, tmp_path: Path) -> None:
    """The exec record may arrive after the process is gone: its path, checked to be the same
    file, still lets the probe read it."""
    identity = BinaryIdentity(tools=("ssh",), search_path=str(tools))
    copy = tmp_path / "backup-helper"
    shutil.copy(tools / "ssh", copy)
    gone = subprocess.Popen([str(copy), "-V"], stderr=subprocess.DEVNULL)
    assert gone.wait() == 0  # exited and reaped: /proc/PID is no more
    assert not Path(f"/proc/{gone.pid}").exists()
    assert judge(identity, copy, pid=gone.pid) == Identity("ssh", How.CONTENT)


def test_a_running_copy_is_read_through_proc_even_when_its_path_moved(tmp_path: Path) -> None:
    identity = BinaryIdentity(tools=("sleep",), search_path="/usr/bin")
    copy = tmp_path / "sleeper"
    shutil.copy("/usr/bin/sleep", copy)
    st = copy.stat()
    sleeper = subprocess.Popen([str(copy), "30"])
    try:
        copy.rename(tmp_path / "elsewhere")
        verdict = identity.identify(sleeper.pid, st.st_dev, st.st_ino, str(copy).encode())
    finally:
        sleeper.kill()
        sleeper.wait()
    assert verdict == Identity("sleep", How.CONTENT)


def test_a_verdict_made_without_reading_is_never_cached(tools: Path, tmp_path: Path) -> None:
    """The timing attack: the process is gone and its path is not that file any more, so
    nothing is known; a later exec of the same file is judged afresh and recognised."""
    identity = BinaryIdentity(tools=("ssh",), search_path=str(tools))
    copy = tmp_path / "backup-helper"
    shutil.copy(tools / "ssh", copy)
    st = copy.stat()
    parked = tmp_path / "parked"
    copy.rename(parked)
    copy.write_bytes(b"decoy")  # the path now names another file
    assert identity.identify(NO_PROCESS, st.st_dev, st.st_ino, str(copy).encode()) == Identity("", How.UNREAD)
    assert identity.stats.unread == 1
    assert identity.identify(NO_PROCESS, st.st_dev, st.st_ino, str(parked).encode()) == Identity("ssh", How.CONTENT)


def test_a_file_rewritten_in_place_is_judged_again(tools: Path, tmp_path: Path) -> None:
    identity = BinaryIdentity(tools=("ssh",), search_path=str(tools))
    target = tmp_path / "helper"
    shutil.copy("/bin/true", target)
    assert judge(identity, target) == Identity("", How.SIZE)
    inode = target.stat().st_ino
    with open(target, "r+b") as rewrite:  # the same inode, new content: ssh's
        rewrite.truncate(0)
        rewrite.write((tools / "ssh").read_bytes())
    assert target.stat().st_ino == inode
    assert judge(identity, target) == Identity("ssh", How.CONTENT)


class Recorded(Settled):
    """What the identity tells the kernel, recorded (the maps themselves are tested in
    tests/kernel/test_settled.py)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, tuple[int, ...]]] = []

    def exe(self, dev: int, ino: int, size: int, ctime_ns: int) -> None:
        self.calls.append(("exe", (dev, ino, size, ctime_ns)))

    def forget_exe(self, dev: int, ino: int) -> None:
        self.calls.append(("forget", (dev, ino)))


def test_a_judged_file_is_known_again_from_the_kernel_s_values_without_opening_it(tools: Path, tmp_path: Path) -> None:
    identity = BinaryIdentity(tools=("ssh",), search_path=str(tools))
    identity.settled = recorded = Recorded()
    target = tmp_path / "helper"
    shutil.copy("/bin/true", target)
    st = target.stat()
    stamp = (st.st_size, st.st_ctime_ns)
    assert identity.identify(NO_PROCESS, st.st_dev, st.st_ino, str(target).encode(), stamp) == Identity("", How.SIZE)
    assert recorded.calls == [("exe", (st.st_dev, st.st_ino, *stamp))]
    target.rename(tmp_path / "elsewhere")  # neither /proc nor the path can be read now
    assert identity.identify(NO_PROCESS, st.st_dev, st.st_ino, b"/nowhere", stamp) == Identity("", How.SIZE)
    assert identity.stats.unopened == 1
    # other values (a rewrite changes ctime) are not known: without the file, no verdict
    changed = (st.st_size, st.st_ctime_ns + 1)
    assert identity.identify(NO_PROCESS, st.st_dev, st.st_ino, b"/nowhere", changed) == Identity("", How.UNREAD)


def test_a_file_the_kernel_saw_otherwise_than_the_probe_reads_it_is_not_settled(tools: Path, tmp_path: Path) -> None:
    identity = BinaryIdentity(tools=("ssh",), search_path=str(tools))
    identity.settled = recorded = Recorded()
    target = tmp_path / "helper"
    shutil.copy("/bin/true", target)
    st = target.stat()
    # rewritten between the exec and the probe's read: the verdict is the new file's, not settled
    assert judge(identity, target) == Identity("", How.SIZE)
    assert identity.identify(NO_PROCESS, st.st_dev, st.st_ino, str(target).encode(),
                             (st.st_size, st.st_ctime_ns - 1)) == Identity("", How.SIZE)
    assert recorded.calls == []


def test_a_verdict_the_cache_lets_go_of_is_taken_back_from_the_kernel(tools: Path, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sensor.probe.identity.CACHE_SIZE", 1)
    identity = BinaryIdentity(tools=("ssh",), search_path=str(tools))
    identity.settled = recorded = Recorded()
    first, second = tmp_path / "first", tmp_path / "second"
    shutil.copy("/bin/true", first)
    shutil.copy("/bin/true", second)
    for path in (first, second):
        st = path.stat()
        identity.identify(NO_PROCESS, st.st_dev, st.st_ino, str(path).encode(), (st.st_size, st.st_ctime_ns))
    st = first.stat()
    assert recorded.calls[1:] == [("forget", (st.st_dev, st.st_ino)), ("exe", recorded.calls[2][1])]
    assert recorded.calls[2][1][1] == second.stat().st_ino


def test_ssh_is_never_settled_its_execs_wake_the_probe(tools: Path) -> None:
    """The probe reads an ssh exec's configuration files from the process while it is there."""
    identity = BinaryIdentity(tools=("ssh",), search_path=str(tools))
    identity.settled = recorded = Recorded()
    ssh = tools / "ssh"
    st = ssh.stat()
    stamp = (st.st_size, st.st_ctime_ns)
    assert identity.identify(NO_PROCESS, st.st_dev, st.st_ino, str(ssh).encode(), stamp) == Identity("ssh", How.INODE)
    assert recorded.calls == []
    assert identity.identify(NO_PROCESS, st.st_dev, st.st_ino, b"/nowhere", stamp) == Identity("ssh", How.INODE)
