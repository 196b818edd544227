"""What the probe needs after attaching, measured on this kernel: each capability it keeps is
needed by one of its jobs (without it, that job fails), and its BPF work needs none at all.

Each check runs in a process of its own (tests/kernel/privilege_checks.py) that keeps exactly
the capabilities given, as the probe does, and tries one job on real targets: a root process
with full capabilities, an execute-only copy of sleep run by the gpusentry user, and a process
in a network namespace of its own."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from sensor import privileges
from sensor.privileges import CAP_DAC_READ_SEARCH, CAP_KILL, CAP_SYS_ADMIN, CAP_SYS_PTRACE, PROBE_CAPS
from tests.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]


def run_check(caps: set[int], check: str, *args: object) -> dict[str, Any]:
    result = subprocess.run([sys.executable, "-m", "tests.kernel.privilege_checks", ",".join(map(str, sorted(caps))),
                             check, *map(str, args)], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stderr
    out: dict[str, Any] = json.loads(result.stdout.splitlines()[-1])
    assert out["cap_eff"] == sum(1 << c for c in caps)  # it really ran with exactly these
    return out


@dataclass
class Targets:
    root_sleep: subprocess.Popen[bytes]  # uid 0, every capability
    user_sleep: subprocess.Popen[bytes]  # gpusentry, an execute-only copy of sleep
    user_sleep_file: Path
    netns_sleep: subprocess.Popen[bytes]  # in a network namespace with no routes
    netns: int


@pytest.fixture(scope="module")
def targets(root: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Targets]:
    agent = pwd.getpwnam("gpusentry")
    work = tmp_path_factory.mktemp("privileges")
    os.chmod(work, 0o755)
    copy = work / "sleeper"
    shutil.copy("/usr/bin/sleep", copy)
    os.chown(copy, agent.pw_uid, agent.pw_gid)
    os.chmod(copy, 0o111)  # execute-only: even its owner cannot read it
    root_sleep = subprocess.Popen(["/usr/bin/sleep", "120"])
    user_sleep = subprocess.Popen(["setpriv", f"--reuid={agent.pw_uid}", f"--regid={agent.pw_gid}", "--clear-groups",
                                   str(copy), "120"])
    netns_sleep = subprocess.Popen(["unshare", "--net", "/usr/bin/sleep", "120"])
    own = os.stat("/proc/self/ns/net").st_ino
    try:
        netns = wait_until(lambda: (i if (i := os.stat(f"/proc/{netns_sleep.pid}/ns/net").st_ino) != own else 0),
                           what="the process in its own namespace")
        wait_until(lambda: Path(f"/proc/{user_sleep.pid}/exe").exists() and
                   os.stat(f"/proc/{user_sleep.pid}/exe").st_ino == copy.stat().st_ino, what="the copy running")
        yield Targets(root_sleep, user_sleep, copy, netns_sleep, netns)
    finally:
        for proc in (root_sleep, user_sleep, netns_sleep):
            proc.kill()
            proc.wait()


def test_bpf_work_after_attaching_needs_no_capability(root: None) -> None:
    """Ring-buffer polling, per-CPU map reads, map deletes and updates, and detaching."""
    nothing = run_check(set(), "probe")
    assert (nothing["ok"], nothing["exec_seen"], nothing["drops_read"], nothing["end"]) == (True, True, True,
                                                                                           "check done")
    kept = run_check(set(PROBE_CAPS), "probe")
    assert (kept["ok"], kept["exec_seen"], kept["identity"]) == (True, True, "size")  # /bin/true: read, not a tool


def test_cap_sys_ptrace_opens_other_processes_exe(targets: Targets) -> None:
    assert run_check(set(PROBE_CAPS), "exe", targets.root_sleep.pid)["ok"] is True
    without = run_check(set(PROBE_CAPS) - {CAP_SYS_PTRACE}, "exe", targets.root_sleep.pid)
    assert (without["ok"], without["error"]) == (False, 13)  # EACCES: it has more capabilities than we do


def test_cap_dac_read_search_reads_an_execute_only_binary(targets: Targets) -> None:
    st = targets.user_sleep_file.stat()
    args = (targets.user_sleep.pid, st.st_dev, st.st_ino, "/usr/bin")
    full = run_check(set(PROBE_CAPS), "content", *args)
    assert (full["tool"], full["how"]) == ("sleep", "content")  # a copy, known by what it is
    for missing in (CAP_DAC_READ_SEARCH, CAP_SYS_PTRACE):
        without = run_check(set(PROBE_CAPS) - {missing}, "content", *args)
        assert (without["tool"], without["how"]) == ("", "unread"), privileges.CAP_NAMES[missing]


def test_cap_sys_admin_enters_a_namespace_for_its_routes(targets: Targets) -> None:
    args = (targets.netns_sleep.pid, targets.netns, "198.51.100.1")
    full = run_check(set(PROBE_CAPS), "netns", *args)
    assert (full["destination"], full["by_range"]) == ("unreachable", False)  # its own table: no route at all
    for missing in (CAP_SYS_ADMIN, CAP_SYS_PTRACE):
        without = run_check(set(PROBE_CAPS) - {missing}, "netns", *args)
        # without its table, the ranges guess "egress", and say so
        assert (without["destination"], without["by_range"]) == ("egress", True), privileges.CAP_NAMES[missing]


def test_cap_kill_signals_the_unprivileged_processes(targets: Targets) -> None:
    assert run_check(set(privileges.AGENT_PROBE_CAPS), "kill", targets.user_sleep.pid)["ok"] is True
    without = run_check(set(privileges.AGENT_PROBE_CAPS) - {CAP_KILL}, "kill", targets.user_sleep.pid)
    assert (without["ok"], without["error"]) == (False, 1)  # EPERM
