"""GPU session profiles (gpu_profile facts, held bytes on gpu_compute) and the rule built on them,
from constructed events: the kernel's memory totals as the probe ships them in GpuCounters.

The miner-like and training-like workloads here are synthetic shapes (a small steady footprint;
tens of GiB with churn), not measurements: thresholds wait for real traces."""

from __future__ import annotations

from collections.abc import Iterable

from sensor import events as ev
from sensor.aggregator.aggregator import Aggregator
from sensor.aggregator.facts import Fact, GpuCompute, GpuProfile
from sensor.aggregator.gpu import MAX_PROFILES_PER_TICK
from sensor.api import convert
from sensor.api.v1 import gpusentry_pb2 as pb
from sensor.output import fact_line
from sensor.rules.loader import load_rules
from tests.unit.test_builtin_rules import REVERSE, Host, agent_tree
from tests.unit.test_gpu_sessions import PID, START, aggregator_with_process, bring_up, ioctl

SEC = 1_000_000_000
GIB, MIB = 1 << 30, 1 << 20
FAMILIES = len(ev.GPU_MEM_FAMILIES)
RULE = "reverse-tunnel-then-small-long-gpu-compute"


def memory_row(pid: int, ts: int, *, allocated: dict[str, int], freed: dict[str, int] | None = None,
               allocs: dict[str, int] | None = None, frees: dict[str, int] | None = None, peak: int = 0,
               untracked: int = 0) -> list[object]:
    """A GpuCounters.memory row, by family name."""
    def by_family(values: dict[str, int] | None) -> list[int]:
        return [(values or {}).get(name, 0) for name in ev.GPU_MEM_FAMILIES]
    return [pid, by_family(allocated), by_family(freed), by_family(allocs), by_family(frees), peak, untracked, ts]


def counters(ts: int, memory: list[list[object]], counts: list[list[int]] | None = None) -> ev.GpuCounters:
    return ev.GpuCounters(ts, 0, 0, counts or [], 0, memory)


def profiles(observations: Iterable[list[Fact]]) -> list[GpuProfile]:
    return [f for facts in observations for f in facts if isinstance(f, GpuProfile)]


def feed(agg: Aggregator, events: Iterable[ev.Event]) -> list[GpuProfile]:
    return profiles(agg.handle(e).facts for e in events)


def test_profile_numbers_are_the_kernel_totals_and_the_session() -> None:
    agg = aggregator_with_process()
    bring_up(agg)  # compute at 2_005 ns, on a channel, GPU 1
    row = memory_row(PID, 10 * SEC, allocated={"device": 3 * GIB, "system": 64 * MIB, "registered": 16 * MIB,
                                              "virtual": 8 * GIB, "fabric": 2 * MIB, "uvm": GIB},
                     freed={"device": GIB, "system": 32 * MIB}, allocs={"device": 5, "system": 2, "registered": 1,
                                                                         "virtual": 2, "fabric": 1, "uvm": 4},
                     frees={"device": 2, "system": 1}, peak=5 * GIB // 2, untracked=1)
    # the first tick after the counters arrive (the counters' own event here)
    (fact,) = feed(agg, [counters(10 * SEC, [row], [[PID, ev.GpuKind.CTL, 0x2B, 600, 0, 0, 10 * SEC]])])
    assert fact.process == (PID, START) and fact.ts == 10 * SEC
    assert fact.fields() == {
        "held_bytes": 2 * GIB, "peak_bytes": 5 * GIB // 2, "allocated_bytes": 3 * GIB, "system_bytes": 32 * MIB,
        "registered_bytes": 16 * MIB, "virtual_bytes": 8 * GIB, "uvm_mapped_bytes": GIB,
        "allocations": 11, "frees": 3,
        # since the first compute (2_005 ns), 10 s ago: 11 allocations and 600 ioctls
        "alloc_rate": 66, "ioctl_rate": 60,
        "compute_objects": 1, "channels": 1, "compute_age_s": 9, "devices": 0, "uvm_gpus": 0,
        "peer_objects": 1, "untracked": 1}
    assert fact.summary() == ("GPU profile: 2.00 GiB held (peak 2.50 GiB), 1 compute, 1 channels, "
                              "compute for 9s, 66 allocations/min")
    assert fact_line(fact) == f"fact    gpu_profile pid={PID} {fact.summary()}"


def test_rates_are_since_the_previous_profile() -> None:
    agg = aggregator_with_process()
    bring_up(agg)
    (first,) = feed(agg, [counters(SEC, [memory_row(PID, SEC, allocated={"device": GIB}, allocs={"device": 10})],
                                   [[PID, ev.GpuKind.CTL, 0x2B, 100, 0, 0, SEC]])])
    assert first.ts == SEC
    assert feed(agg, [counters(20 * SEC, [memory_row(PID, 20 * SEC, allocated={"device": GIB},
                                                     allocs={"device": 40})],
                               [[PID, ev.GpuKind.CTL, 0x2B, 400, 0, 0, 20 * SEC]])]) == []
    (second,) = feed(agg, [ev.Stats(31 * SEC, 0, 0)])
    assert (second.alloc_rate, second.ioctl_rate) == (60, 10)  # 30 allocations and 300 ioctls in 30 s


def test_profiles_come_every_30_seconds_and_at_once_on_a_notable_change() -> None:
    agg = aggregator_with_process()
    bring_up(agg)
    ticks = [ev.Stats(s * SEC, 0, 0) for s in range(1, 95)]
    times = [f.ts // SEC for f in feed(agg, ticks[:40])]
    assert times == [1, 31]
    # 3 GiB held at once: a profile at the next tick, not 30 s later
    agg.handle(counters(40 * SEC + 1, [memory_row(PID, 40 * SEC, allocated={"device": 3 * GIB}, peak=3 * GIB)]))
    changed = feed(agg, ticks[40:60])
    assert [(f.ts // SEC, f.held_bytes) for f in changed] == [(41, 3 * GIB)]
    # a small change is not notable; a new channel is
    agg.handle(counters(61 * SEC, [memory_row(PID, 61 * SEC, allocated={"device": 3 * GIB + 100 * MIB})]))
    assert feed(agg, ticks[60:62]) == []
    agg.handle(ioctl(ev.GpuReason.ALLOC, 0xC86F, 0x30, 0x12, 62 * SEC))
    assert [(f.ts // SEC, f.channels) for f in feed(agg, ticks[62:64])] == [(63, 2)]
    assert [f.ts // SEC for f in feed(agg, ticks[64:])] == [93]


def test_no_profile_without_compute_nor_after_exit() -> None:
    agg = aggregator_with_process()
    for ts, (klass, handle, parent) in enumerate([(0x41, 1, 1), (0x80, 2, 1), (0x2080, 3, 2)], start=10):
        agg.handle(ioctl(ev.GpuReason.ALLOC, klass, handle, parent, ts))
    assert feed(agg, [ev.Stats(s * SEC, 0, 0) for s in range(1, 40)]) == []
    agg = aggregator_with_process()
    bring_up(agg)
    agg.handle(ev.Exit(ts=SEC // 2, tgid=PID, tid=PID, exit_code=0, start_ns=START))
    assert feed(agg, [ev.Stats(s * SEC, 0, 0) for s in range(1, 3)]) == []


def test_profiles_per_tick_are_bounded_and_the_rest_follow() -> None:
    agg = Aggregator()
    pids = range(1000, 1000 + MAX_PROFILES_PER_TICK + 6)
    for pid in pids:
        agg.handle(ev.Fork(ts=START, tgid=1, tid=1, child_pid=pid, parent_tgid=1, child_start_ns=START))
        agg.handle(ev.GpuIoctl(2_000, pid, pid, ev.GpuReason.ALLOC, ev.GpuKind.CTL, 3, 255, 0xC030462B, 0x2B, 48,
                               0, 0, 1, 4, 5, 0xCBC0, 0, 0, 0, bytes(16), 0))
    first = feed(agg, [ev.Stats(SEC, 0, 0)])
    second = feed(agg, [ev.Stats(2 * SEC, 0, 0)])
    assert len(first) == MAX_PROFILES_PER_TICK and len(second) == 6
    assert sorted(f.process.pid for f in first + second) == list(pids)


def test_gpu_compute_carries_the_memory_held_then() -> None:
    agg = aggregator_with_process()
    agg.handle(counters(1_000, [memory_row(PID, 1_000, allocated={"device": 5 * GIB}, freed={"device": GIB})]))
    (fact,) = bring_up(agg)
    assert isinstance(fact, GpuCompute) and fact.held_bytes == 4 * GIB
    message = convert.fact(fact, convert.Clock(0))
    assert message.gpu_compute.held_bytes == 4 * GIB


def test_profile_travels_in_the_api() -> None:
    agg = aggregator_with_process()
    bring_up(agg)
    (fact,) = feed(agg, [counters(2 * SEC, [memory_row(PID, SEC, allocated={"device": 40 * GIB}, peak=40 * GIB)])])
    message = convert.fact(fact, convert.Clock(0))
    assert message.kind == pb.FACT_KIND_GPU_PROFILE and message.WhichOneof("detail") == "gpu_profile"
    assert (message.gpu_profile.held_bytes, message.gpu_profile.peak_bytes, message.gpu_profile.compute_objects,
            message.gpu_profile.compute_age_s) == (40 * GIB, 40 * GIB, 1, 1)


# -- the built-in rule, on synthetic workloads ------------------------------------------------

def compute(host: Host, pid: int) -> int:
    host.gpu_compute(pid)
    return host.ts


def miner_like(host: Host, pid: int, seconds: int) -> None:
    """SYNTHETIC: 1.25 GiB allocated once, then nothing but time (launches make no ioctl)."""
    started = compute(host, pid)
    row = memory_row(pid, started + SEC, allocated={"device": GIB + 256 * MIB}, allocs={"device": 2},
                     peak=GIB + 256 * MIB)
    host.events.append(counters(host.tick(), [row]))
    for _ in range(seconds // 10):
        host.events.append(ev.Stats(host.tick(10), 0, 0))


def training_like(host: Host, pid: int, seconds: int) -> None:
    """SYNTHETIC: 40 GiB held, and a 512 MiB buffer allocated and freed 50 times in each 10 s."""
    compute(host, pid)
    for step in range(seconds // 10):
        churn = 50 * (step + 1)
        row = memory_row(pid, host.ts, allocated={"device": 40 * GIB + churn * 512 * MIB},
                         freed={"device": churn * 512 * MIB}, allocs={"device": 20 + churn},
                         frees={"device": churn}, peak=40 * GIB + 512 * MIB)
        host.events.append(counters(host.tick(10), [row]))
        host.events.append(ev.Stats(host.ts, 0, 0))


def alerts_of(host: Host) -> list[str]:
    agg = Aggregator(rules=load_rules([]))
    return [a.rule_id for e in host.events for a in agg.handle(e).alerts]


def test_miner_like_profile_after_a_reverse_tunnel_raises_once_after_five_minutes() -> None:
    host = agent_tree()
    host.spawn(101, 102, *REVERSE)
    host.spawn(101, 103, "/usr/bin/python3", "hash.py")
    miner_like(host, 103, 600)
    assert alerts_of(host) == ["reverse-tunnel-opened", "reverse-tunnel-then-gpu-compute", RULE]


def test_miner_like_profile_for_under_five_minutes_is_not_enough() -> None:
    host = agent_tree()
    host.spawn(101, 102, *REVERSE)
    host.spawn(101, 103, "/usr/bin/python3", "hash.py")
    miner_like(host, 103, 280)
    assert RULE not in alerts_of(host)


def test_training_like_profile_after_a_reverse_tunnel_does_not_match() -> None:
    host = agent_tree()
    host.spawn(101, 102, *REVERSE)
    host.spawn(101, 103, "/usr/bin/python3", "train.py")
    training_like(host, 103, 900)
    assert alerts_of(host) == ["reverse-tunnel-opened", "reverse-tunnel-then-gpu-compute"]


def test_miner_like_profile_without_a_tunnel_does_not_match() -> None:
    host = agent_tree()
    host.spawn(101, 103, "/usr/bin/python3", "hash.py")
    miner_like(host, 103, 600)
    assert alerts_of(host) == []
