"""Launch evidence in the aggregator, on constructed events: which processes are asked for (a GPU
user that is suspicious: in a tunnel's scope, or in an open sequence opened by more than GPU
facts), asked once, never offline; and the gpu_launches facts the probe's counts give."""

from __future__ import annotations

from pathlib import Path

from sensor import events as ev
from sensor.aggregator.aggregator import Aggregator
from sensor.aggregator.facts import GpuLaunches
from sensor.api.service import launch_watches
from sensor.rules.loader import load_rules
from tests.unit.test_builtin_rules import REVERSE, Host, agent_tree

LIBCUDA = "/usr/lib/x86_64-linux-gnu/libcuda.so.1"


class Asked:
    """The probe's end of the request pipe, as a list; `full` refuses as a full pipe does."""

    def __init__(self, full: bool = False) -> None:
        self.requests: list[tuple[int, int]] = []
        self.full = full

    def __call__(self, pid: int, start_ns: int) -> bool:
        self.requests.append((pid, start_ns))
        return not self.full


def run(events: list[ev.Event], asked: Asked | None = None) -> Aggregator:
    aggregator = Aggregator(rules=load_rules([]), launch_requests=asked)
    for event in events:
        aggregator.handle(event)
    return aggregator


def gpu_open(host: Host, pid: int) -> None:
    host.events.append(ev.GpuOpen(host.tick(), pid, pid, 3, ev.GpuKind.CTL, 255, False))


def test_a_gpu_user_in_a_tunnels_scope_is_asked_for_once() -> None:
    host = agent_tree()
    host.spawn(101, 102, *REVERSE)
    host.spawn(102, 103, "/usr/bin/python3", "hash.py")  # the tunnel's descendant: in its scope
    gpu_open(host, 103)
    host.gpu_compute(103)
    gpu_open(host, 103)
    asked = Asked()
    aggregator = run(host.events, asked)
    assert asked.requests == [(103, host.started[103])]
    (session,) = aggregator.launches.sessions.values()
    assert (session.reason, session.state) == ("tunnel", "requested")


def test_a_gpu_user_in_an_open_sequence_is_asked_for() -> None:
    """reverse-tunnel-then-gpu-compute opened by the tunnel, in the lineage of the agent's tree:
    a sibling of the tunnel (not in its scope) that uses a GPU is in that lineage."""
    host = agent_tree()
    host.spawn(101, 102, *REVERSE)
    host.spawn(101, 104, "/usr/bin/python3", "train.py")
    gpu_open(host, 104)
    asked = Asked()
    aggregator = run(host.events, asked)
    assert asked.requests == [(104, host.started[104])]
    assert aggregator.launches.sessions[next(iter(aggregator.launches.sessions))].reason == \
        "sequence reverse-tunnel-then-gpu-compute"


def test_a_gpu_user_that_becomes_suspicious_later_is_asked_for_on_the_timer() -> None:
    host = agent_tree()
    host.spawn(101, 104, "/usr/bin/python3", "train.py")
    gpu_open(host, 104)
    asked = Asked()
    aggregator = run(host.events, asked)
    assert asked.requests == []
    host.events.clear()
    host.spawn(101, 102, *REVERSE)  # after the GPU was taken; the timer runs each second of events
    host.connect(101, "10.0.0.1", 80)
    for event in host.events:
        aggregator.handle(event)
    assert asked.requests == [(104, host.started[104])]


def test_ordinary_gpu_users_are_not_asked_for() -> None:
    """Training in its own tree, and a process whose only open sequence its own GPU compute opened
    (gpu-compute-then-miner-egress opens for every CUDA process): using a GPU is not suspicious."""
    host = agent_tree()
    host.spawn(1, 200, "/usr/bin/python3", "train.py")
    gpu_open(host, 200)
    host.gpu_compute(200)
    host.tick(2)
    gpu_open(host, 200)
    asked = Asked()
    aggregator = run(host.events, asked)
    assert aggregator.detector is not None and aggregator.detector.engine.stats.partials >= 1
    assert asked.requests == []


def test_offline_nobody_is_asked_for() -> None:
    host = agent_tree()
    host.spawn(101, 102, *REVERSE)
    gpu_open(host, 102)
    aggregator = run(host.events)
    assert aggregator.launches.sessions == {} and aggregator.launches.stats.asked == 0


def test_a_request_the_pipe_does_not_take_is_counted() -> None:
    host = agent_tree()
    host.spawn(101, 102, *REVERSE)
    gpu_open(host, 102)
    asked = Asked(full=True)
    aggregator = run(host.events, asked)
    assert aggregator.launches.stats.unsent == 1
    assert launch_watches(aggregator.launches.stats) == {"asked": 1, "unsent": 1, "watching": 0}


def watched(host: Host, pid: int) -> tuple[Aggregator, int]:
    """The aggregator after the probe began watching `pid` (asked for, in a tunnel's scope)."""
    gpu_open(host, pid)
    since = host.tick()
    host.events.append(ev.LaunchWatch(since, pid, pid, host.started[pid], "watching", "", LIBCUDA))
    return run(host.events, Asked()), since


def counts(host: Host, pid: int, since: int, launches: int, distinct: int, seconds: float) -> ev.LaunchCounts:
    return ev.LaunchCounts(host.tick(seconds), pid, pid, host.started[pid], launches, 0, distinct, 0, since)


def launch_facts(aggregator: Aggregator, event: ev.Event) -> list[GpuLaunches]:
    return [f for f in aggregator.handle(event).facts if isinstance(f, GpuLaunches)]


def test_counts_give_a_fact_per_window_and_a_last_one_at_the_end() -> None:
    host = agent_tree()
    host.spawn(101, 102, *REVERSE)
    aggregator, since = watched(host, 102)
    assert launch_facts(aggregator, counts(host, 102, since, 1000, 2, 1)) == []  # within the window
    (first,) = launch_facts(aggregator, counts(host, 102, since, 6000, 3, 4))
    assert (first.launches_per_s, first.distinct_kernels, first.window_s, first.launches, first.total_launches,
            first.watch) == (1200, 3, 5, 6000, 6000, "watching")
    assert launch_facts(aggregator, counts(host, 102, since, 7000, 3, 2)) == []
    (last,) = launch_facts(aggregator, ev.LaunchWatch(host.tick(0), 102, 102, host.started[102], "ended", "exit",
                                                      LIBCUDA))
    assert (last.launches_per_s, last.window_s, last.launches, last.total_launches, last.watch) == (
        500, 2, 1000, 7000, "exit")
    assert last.summary() == "500 kernel launches/s, 3 distinct kernels; watch ended: exit"
    session = aggregator.launches.sessions[last.process]
    assert (session.state, session.why, session.launches, session.launches_per_s) == ("ended", "exit", 7000, 500)
    assert launch_watches(aggregator.launches.stats) == {"asked": 1, "unsent": 0, "watching": 0, "ended: exit": 1}


def test_the_end_is_told_even_after_a_quiet_last_window() -> None:
    host = agent_tree()
    host.spawn(101, 102, *REVERSE)
    aggregator, since = watched(host, 102)
    (window,) = launch_facts(aggregator, counts(host, 102, since, 400, 2, 5))
    assert (window.launches, window.watch) == (400, "watching")
    (last,) = launch_facts(aggregator, ev.LaunchWatch(host.tick(2), 102, 102, host.started[102], "ended", "exit"))
    assert (last.launches, last.launches_per_s, last.total_launches, last.distinct_kernels, last.watch) == (
        0, 0, 400, 2, "exit")


def test_a_watch_with_no_launches_gives_no_fact() -> None:
    host = agent_tree()
    host.spawn(101, 102, *REVERSE)
    aggregator, since = watched(host, 102)
    assert launch_facts(aggregator, counts(host, 102, since, 0, 0, 6)) == []
    end = ev.LaunchWatch(host.tick(), 102, 102, host.started[102], "ended", "duration", LIBCUDA)
    assert launch_facts(aggregator, end) == []
    assert aggregator.launches.stats.ended == {"duration": 1}


def test_a_refusal_is_kept_and_counted() -> None:
    host = agent_tree()
    host.spawn(101, 102, *REVERSE)
    gpu_open(host, 102)
    host.events.append(ev.LaunchWatch(host.tick(), 102, 102, host.started[102], "refused", "no libcuda"))
    aggregator = run(host.events, Asked())
    (session,) = aggregator.launches.sessions.values()
    assert (session.state, session.why) == ("refused", "no libcuda")
    assert aggregator.launches.stats.refused == {"no libcuda": 1}


def test_a_launch_rule_matches_a_tunnel_scoped_process(tmp_path: Path) -> None:
    rules = tmp_path / "launches.yaml"
    rules.write_text("rules:\n  - id: steady-launches\n    title: T\n    description: D\n    severity: high\n"
                     "    match:\n      fact: gpu_launches\n"
                     "      where: {process.tunnel_scoped: true, distinct_kernels: {range: [1, 4]},"
                     " launches_per_s: {range: [100, 100000]}}\n")
    host = agent_tree()
    host.spawn(101, 102, *REVERSE)
    gpu_open(host, 102)
    since = host.tick()
    host.events.append(ev.LaunchWatch(since, 102, 102, host.started[102], "watching", "", LIBCUDA))
    host.events.append(ev.LaunchCounts(host.tick(5), 102, 102, host.started[102], 5000, 0, 2, 0, since))
    aggregator = Aggregator(rules=load_rules([rules]), launch_requests=Asked())
    raised = [a.rule_id for event in host.events for a in aggregator.handle(event).alerts]
    assert "steady-launches" in raised
    assert raised.count("steady-launches") == 1
