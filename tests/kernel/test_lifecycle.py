"""fork, exit, the start-up snapshot, lineage, PID reuse and the self filter, in the real kernel."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from sensor import events as ev
from sensor.aggregator.aggregator import Aggregator
from sensor.probe.probe import Probe
from sensor.probe.program import ProbeConfig
from tests.kernel.conftest import Collector, LiveProbe, exec_of, run_python
from tests.waiting import wait_until

FORK_WITHOUT_EXEC = """
import os, sys
child = os.fork()
if child == 0:
    os._exit(3)
os.waitpid(child, 0)
print(child)
"""


def test_fork_without_exec_inherits_identity_and_exit_code(live: LiveProbe) -> None:
    helper = run_python(FORK_WITHOUT_EXEC, "marker-arg")
    assert helper.returncode == 0, helper.stderr
    child = int(helper.stdout)
    (fork,) = live.wait_for(lambda e: isinstance(e, ev.Fork) and e.child_pid == child)
    assert isinstance(fork, ev.Fork)
    (helper_exec,) = live.wait_for(lambda e: isinstance(e, ev.Exec) and e.argv[-1:] == [b"marker-arg"])
    parent_pid = helper_exec.tgid
    assert fork.tgid == parent_pid
    assert fork.parent_tgid == parent_pid
    (exit_event,) = live.wait_for(lambda e: isinstance(e, ev.Exit) and e.tgid == child)
    assert isinstance(exit_event, ev.Exit)
    assert exit_event.exit_code == 3 << 8
    assert exit_event.start_ns == fork.child_start_ns
    proc = live.aggregator.table.lookup(child, fork.child_start_ns)
    assert proc is not None
    assert proc.inherited and proc.execs == 0
    assert proc.exe == b"/usr/bin/python3"
    assert proc.argv[-1] == b"marker-arg"
    assert proc.exit_code == 3 << 8 and not proc.alive
    assert proc.parent is not None and proc.parent.pid == parent_pid


def test_exit_by_signal(live: LiveProbe) -> None:
    sleeper = subprocess.Popen(["/bin/sleep", "30"])
    live.wait_for(exec_of(sleeper.pid))
    sleeper.send_signal(signal.SIGKILL)
    sleeper.wait()
    (exit_event,) = live.wait_for(lambda e: isinstance(e, ev.Exit) and e.tgid == sleeper.pid)
    assert isinstance(exit_event, ev.Exit)
    assert exit_event.exit_code == signal.SIGKILL


def test_threads_are_not_processes(live: LiveProbe) -> None:
    code = "import threading\nts=[threading.Thread(target=lambda: None) for _ in range(8)]\n" \
           "[t.start() for t in ts]; [t.join() for t in ts]\nimport os; print(os.getpid())"
    helper = run_python(code)
    pid = int(helper.stdout)
    live.wait_for(lambda e: isinstance(e, ev.Exit) and e.tgid == pid)
    assert [e for e in live.collector.events(ev.Fork) if e.tgid == pid] == []
    assert len([e for e in live.collector.events(ev.Exit) if e.tgid == pid]) == 1


def test_lineage_through_a_double_fork_daemon(live: LiveProbe, tmp_path: Path) -> None:
    """sh -> sh (subshell) -> sleep, the middle one exits: the daemon still descends from sh."""
    pidfile = tmp_path / "daemon.pid"
    script = f"( /bin/sleep 30 & echo $! > {pidfile} ) ; exit 0"
    outer = subprocess.Popen(["/bin/sh", "-c", script])
    assert outer.wait(timeout=10) == 0
    daemon = int(wait_until(lambda: pidfile.read_text().strip() if pidfile.exists() else "", what="pidfile"))
    try:
        live.wait_for(exec_of(daemon))
        table = live.aggregator.table
        proc = wait_until(lambda: table.by_pid(daemon), what="daemon in table")
        assert proc is not None
        chain = [p for p in table.ancestors(proc.key)]
        subshell, shell = chain[0], chain[1]
        assert shell.pid == outer.pid
        assert subshell.pid != outer.pid and subshell.inherited and not subshell.alive
        outer_proc = table.by_pid(outer.pid)
        assert outer_proc is not None
        assert daemon in [p.pid for p in table.descendants(outer_proc.key)]
        assert proc.exe == b"/bin/sleep" and proc.argv == [b"/bin/sleep", b"30"]
    finally:
        os.kill(daemon, signal.SIGKILL)


def test_pid_reuse_does_not_merge_two_processes(live: LiveProbe) -> None:
    """Force the next PID with ns_last_pid so the same PID is really used twice."""
    first = subprocess.Popen(["/bin/true", "first-holder"])
    first.wait()
    pid = first.pid
    live.wait_for(lambda e: isinstance(e, ev.Exit) and e.tgid == pid)

    def reuse() -> subprocess.Popen[bytes] | None:
        Path("/proc/sys/kernel/ns_last_pid").write_text(str(pid - 1))
        second = subprocess.Popen(["/bin/true", "second-holder"])
        second.wait()
        return second if second.pid == pid else None

    second = wait_until(reuse, timeout=10, what="PID reuse")
    assert second is not None and second.pid == pid
    events = live.wait_for(lambda e: isinstance(e, ev.Exec) and e.tgid == pid, count=2)
    first_exec, second_exec = (e for e in events if isinstance(e, ev.Exec))
    assert first_exec.argv == [b"/bin/true", b"first-holder"]
    assert second_exec.argv == [b"/bin/true", b"second-holder"]
    assert first_exec.start_ns != second_exec.start_ns
    table = live.aggregator.table
    one, two = table.lookup(pid, first_exec.start_ns), table.lookup(pid, second_exec.start_ns)
    assert one is not None and two is not None and one is not two
    assert one.argv == first_exec.argv and two.argv == second_exec.argv
    assert one.exec_id != two.exec_id


def test_process_started_before_the_probe_has_lineage(root: None) -> None:
    """A tree started before the probe is known from /proc, with its lineage and argv."""
    tree = subprocess.Popen(["/bin/sh", "-c", "/bin/sleep 30 & wait"])
    sleeper_pid = wait_until(lambda: _child_of(tree.pid), what="sleeper")
    assert sleeper_pid is not None
    collector = Collector(Aggregator())
    probe = Probe(ProbeConfig(), collector)
    probe.start()
    try:
        table = collector.aggregator.table
        sleeper = wait_until(lambda: table.by_pid(sleeper_pid), what="snapshot")
        assert sleeper is not None and sleeper.from_snapshot
        assert sleeper.argv == [b"/bin/sleep", b"30"]
        assert sleeper.exe == b"/usr/bin/sleep"
        assert sleeper.ppid == tree.pid
        assert table.ancestors(sleeper.key)[0].pid == tree.pid
        shell = table.by_pid(tree.pid)
        assert shell is not None and shell.argv == [b"/bin/sh", b"-c", b"/bin/sleep 30 & wait"]
        # The same process seen by BPF later (its exit) matches the snapshot entry by tick.
        os.kill(sleeper_pid, signal.SIGTERM)
        wait_until(lambda: not sleeper.alive, what="snapshot process exit")
        assert sleeper.exit_code == signal.SIGTERM
        assert table.stats.pid_reuse == 0
    finally:
        probe.stop()
        tree.kill()
        tree.wait()


def _child_of(pid: int) -> int | None:
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return None
    return int(children[0]) if children else None


def test_the_probes_own_process_is_filtered_in_the_kernel(live: LiveProbe) -> None:
    """The runner (the probe's process) forks and execs: only the child's exec is seen."""
    marker = f"self-filter-{time.monotonic_ns()}"
    child = subprocess.Popen(["/bin/true", marker])
    child.wait()
    live.wait_for(lambda e: isinstance(e, ev.Exec) and e.argv[-1:] == [marker.encode()])
    own = [e for e in live.collector.events() if e.tgid == os.getpid() and not isinstance(e, ev.PROBE_MADE)]
    assert own == []
