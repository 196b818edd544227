"""Process identity, lineage, reaping and bounds, on constructed events."""

from __future__ import annotations

from sensor import events as ev
from sensor.aggregator.aggregator import Aggregator
from sensor.aggregator.process_table import ProcessTable, ProcKey
from sensor.events import NS_PER_TICK

SEC = 1_000_000_000


def exec_event(pid: int, start_ns: int, ts: int, argv: list[bytes], ppid: int = 1) -> ev.Exec:
    return ev.Exec(ts=ts, tgid=pid, tid=pid, result=0, ppid=ppid, uid=0, gid=0, cgroup_id=1, start_ns=start_ns,
                   comm=argv[0].rsplit(b"/", 1)[-1], filename=argv[0], argv=argv, argc=len(argv), flags=0,
                   exe_dev=0, exe_ino=0, old_tid=pid)


def fork(parent: int, child: int, start_ns: int, ts: int | None = None) -> ev.Fork:
    return ev.Fork(ts=ts or start_ns, tgid=parent, tid=parent, child_pid=child, parent_tgid=parent,
                   child_start_ns=start_ns)


def exit_event(pid: int, start_ns: int, ts: int, code: int = 0) -> ev.Exit:
    return ev.Exit(ts=ts, tgid=pid, tid=pid, exit_code=code, start_ns=start_ns)


def proc_event(pid: int, ppid: int, start_tick: int, argv: list[bytes]) -> ev.Proc:
    return ev.Proc(ts=1, tgid=pid, tid=pid, ppid=ppid, uid=0, gid=0, cgroup_id=1,
                   start_ns=start_tick * NS_PER_TICK, comm=b"x", exe=argv[0], argv=argv)


def feed(agg: Aggregator, *events: ev.Event) -> None:
    for event in events:
        agg.handle(event)


def test_forked_child_inherits_until_exec() -> None:
    agg = Aggregator()
    feed(agg, exec_event(100, 1000, 1000, [b"/usr/bin/ssh", b"-fNR", b"9000:localhost:22", b"h"]),
         fork(100, 101, 2000))
    child = agg.table.lookup(101, 2000)
    assert child is not None
    assert child.inherited and child.argv == [b"/usr/bin/ssh", b"-fNR", b"9000:localhost:22", b"h"]
    assert child.parent == ProcKey(100, 1000)
    feed(agg, exec_event(101, 2000, 3000, [b"/bin/sh"], ppid=100))
    assert not child.inherited and child.argv == [b"/bin/sh"] and child.execs == 1


def test_pid_reuse_keeps_two_processes() -> None:
    agg = Aggregator()
    feed(agg, fork(1, 200, 10), exec_event(200, 10, 11, [b"/bin/a"]),
         exit_event(200, 10, 12), fork(1, 200, 50), exec_event(200, 50, 51, [b"/bin/b"]))
    first, second = agg.table.lookup(200, 10), agg.table.lookup(200, 50)
    assert first is not None and second is not None and first is not second
    assert first.argv == [b"/bin/a"] and not first.alive
    assert second.argv == [b"/bin/b"] and second.alive
    assert agg.table.by_pid(200) is second
    assert agg.table.stats.pid_reuse == 0


def test_pid_reuse_with_a_lost_exit_is_counted() -> None:
    agg = Aggregator()
    feed(agg, fork(1, 300, 10), fork(1, 300, 90))
    first = agg.table.lookup(300, 10)
    assert first is not None and not first.alive
    assert agg.table.stats.pid_reuse == 1


def test_snapshot_process_matches_bpf_events_to_the_tick() -> None:
    agg = Aggregator()
    feed(agg, proc_event(1, 0, 0, [b"/sbin/init"]), proc_event(400, 1, 123, [b"/usr/sbin/sshd"]))
    sshd = agg.table.by_pid(400)
    assert sshd is not None and sshd.parent == ProcKey(1, 0)
    feed(agg, exit_event(400, 123 * NS_PER_TICK + 4_321_000, 10 * SEC))
    assert not sshd.alive
    assert agg.table.stats.pid_reuse == 0 and agg.counters.unknown_process == 0


def test_snapshot_child_listed_before_its_parent_is_linked() -> None:
    agg = Aggregator()
    feed(agg, proc_event(5, 900, 7, [b"/bin/child"]), proc_event(900, 1, 3, [b"/bin/parent"]))
    child, parent = agg.table.by_pid(5), agg.table.by_pid(900)
    assert child is not None and parent is not None
    assert child.parent == parent.key and child.key in parent.children


def test_lineage_queries() -> None:
    agg = Aggregator()
    feed(agg, fork(1, 10, 1), fork(10, 11, 2), fork(10, 12, 3), fork(11, 13, 4))
    table = agg.table
    p13 = table.by_pid(13)
    assert p13 is not None
    assert [p.pid for p in table.ancestors(p13.key)] == [11, 10]
    p10 = table.by_pid(10)
    assert p10 is not None
    assert sorted(p.pid for p in table.descendants(p10.key)) == [11, 12, 13]
    p11 = table.by_pid(11)
    assert p11 is not None
    assert [p.pid for p in table.siblings(p11.key)] == [12]


def test_reaping_waits_for_the_grace_period_and_live_descendants() -> None:
    agg = Aggregator(ProcessTable(grace_ns=60 * SEC))
    feed(agg, fork(1, 20, SEC), fork(20, 21, 2 * SEC), exit_event(20, SEC, 3 * SEC))
    feed(agg, ev.Stats(ts=30 * SEC, tgid=0, tid=0))
    assert agg.table.by_pid(20) is not None  # inside the grace period
    feed(agg, ev.Stats(ts=100 * SEC, tgid=0, tid=0))
    parent = agg.table.by_pid(20)
    assert parent is not None  # kept: its child is alive and needs its lineage
    child = agg.table.by_pid(21)
    assert child is not None and [p.pid for p in agg.table.ancestors(child.key)] == [20]
    feed(agg, exit_event(21, 2 * SEC, 101 * SEC), ev.Stats(ts=300 * SEC, tgid=0, tid=0))
    assert agg.table.by_pid(20) is None and agg.table.by_pid(21) is None
    assert agg.table.stats.reaped == 2


def test_fork_storm_stays_under_the_cap_and_counts_evictions() -> None:
    agg = Aggregator(ProcessTable(max_processes=1000, grace_ns=60 * SEC))
    for i in range(20_000):
        start = SEC + i * 1000
        feed(agg, fork(1, 10_000 + i, start), exit_event(10_000 + i, start, start + 10))
    assert len(agg.table) == 1000
    assert agg.table.stats.evicted == 19_000
    newest = agg.table.by_pid(10_000 + 19_999)
    assert newest is not None


def test_failed_exec_changes_nothing() -> None:
    agg = Aggregator()
    feed(agg, fork(1, 30, 5), exec_event(30, 5, 6, [b"/bin/sh"]))
    failed = exec_event(30, 5, 7, [b"/nope"])
    failed.result = -2
    feed(agg, failed)
    proc = agg.table.by_pid(30)
    assert proc is not None and proc.argv == [b"/bin/sh"] and proc.execs == 1


def test_exec_for_unknown_process_is_created_and_counted() -> None:
    agg = Aggregator()
    feed(agg, exec_event(40, 5, 6, [b"/bin/x"], ppid=1))
    proc = agg.table.by_pid(40)
    assert proc is not None and proc.argv == [b"/bin/x"]
    assert agg.counters.unknown_process == 1


def test_churn_holds_at_most_max_exited_once_their_minimum_grace_is_over() -> None:
    table = ProcessTable(grace_ns=60 * SEC, max_exited=100, min_grace_ns=SEC)
    agg = Aggregator(table)
    for i in range(5_000):  # 1,000 exits a second: a shell loop
        start = SEC + i * SEC // 1000
        feed(agg, fork(1, 10_000 + i, start), exit_event(10_000 + i, start, start + 10))
    assert len(table._exited) <= 100 + 1_000  # the last second's exits wait out their minimum grace
    assert table.stats.reaped_early >= 3_900 and table.stats.evicted == 0
    newest = table.by_pid(10_000 + 4_999)
    assert newest is not None and not newest.alive  # still shown by the API, and found by a late event


def test_churn_never_takes_the_lineage_of_a_live_process() -> None:
    table = ProcessTable(grace_ns=60 * SEC, max_exited=10, min_grace_ns=0)
    agg = Aggregator(table)
    # a daemon's double fork: 20 forks 21 and exits, 21 forks 22 (alive) and exits
    feed(agg, fork(1, 20, SEC), fork(20, 21, 2 * SEC), fork(21, 22, 3 * SEC),
         exit_event(20, SEC, 4 * SEC), exit_event(21, 2 * SEC, 4 * SEC))
    for i in range(1_000):
        start = 5 * SEC + i * 1000
        feed(agg, fork(1, 1_000 + i, start), exit_event(1_000 + i, start, start + 10))
    assert len(table._exited) <= 10
    daemon = table.by_pid(22)
    assert daemon is not None and [p.pid for p in table.ancestors(daemon.key)] == [21, 20]
    feed(agg, exit_event(22, 3 * SEC, 10 * SEC), fork(1, 5_000, 11 * SEC), exit_event(5_000, 11 * SEC, 11 * SEC))
    for i in range(20):
        start = 12 * SEC + i * 1000
        feed(agg, fork(1, 6_000 + i, start), exit_event(6_000 + i, start, start + 10))
    assert table.by_pid(20) is None and table.by_pid(21) is None and table.by_pid(22) is None
