"""GPU sessions and the gpu_compute fact, from constructed records."""

from __future__ import annotations

from pathlib import Path

from sensor import events as ev
from sensor.aggregator.aggregator import Aggregator
from sensor.aggregator.facts import GpuCompute
from sensor.gpu_classes import Role, architecture_of, class_name, command_name, role_of
from sensor.output import fact_line
from sensor.rules.loader import load_rules

PID, START = 500, 1_000


def ioctl(reason: int, klass: int, handle: int, parent: int, ts: int, **extra: int) -> ev.GpuIoctl:
    fields = dict(reason=reason, kind=ev.GpuKind.CTL, fd=3, minor=255, cmd=0xC030462B, nr=0x2B, size=48, ret=0,
                  status=0, h_root=0xC1D00001, h_parent=parent, h_object=handle, h_class=klass, ctrl_cmd=0,
                  param0=0, param1=0, uuid=bytes(16), flags=0)
    fields.update(extra)
    return ev.GpuIoctl(ts=ts, tgid=PID, tid=PID, **fields)  # type: ignore[arg-type]


def aggregator_with_process(agg: Aggregator | None = None) -> Aggregator:
    agg = agg if agg is not None else Aggregator()
    agg.handle(ev.Fork(ts=START, tgid=1, tid=1, child_pid=PID, parent_tgid=1, child_start_ns=START))
    return agg


def bring_up(agg: Aggregator, compute_class: int = 0xCBC0, flags: int = 0, compute_flags: int | None = None
             ) -> list[GpuCompute]:
    """Client to compute; every call with `flags`, the compute allocation with `compute_flags`."""
    facts = []
    last = flags if compute_flags is None else compute_flags
    steps = [(0x41, 0xC1D00001, 0xC1D00001, {}), (0x80, 0x10, 0xC1D00001, {"param0": 1}), (0x2080, 0x11, 0x10, {}),
             (0xA06C, 0x12, 0x10, {}), (0xC86F, 0x13, 0x12, {}), (compute_class, 0x14, 0x13, {"flags": last})]
    for ts, (klass, handle, parent, extra) in enumerate(steps, start=2_000):
        obs = agg.handle(ioctl(ev.GpuReason.ALLOC, klass, handle, parent, ts, **{"flags": flags, **extra}))
        facts += [f for f in obs.facts if isinstance(f, GpuCompute)]
    return facts


def test_compute_fact_names_the_channel_and_the_gpu() -> None:
    agg = aggregator_with_process()
    (fact,) = bring_up(agg)
    assert (fact.process.pid, fact.klass, fact.architecture, fact.channel_class, fact.device_id, fact.handle) == (
        PID, 0xCBC0, "Hopper", 0xC86F, 1, 0x14)
    (session,) = list(agg.gpu)
    assert session.first_compute_ts == 2_005 and session.has_compute
    assert [o.klass for o in session.live(Role.CHANNEL)] == [0xC86F]


def test_compute_on_a_device_known_by_its_number_is_not_by_name() -> None:
    agg = aggregator_with_process()
    (fact,) = bring_up(agg, flags=ev.GPU_STATUS_READ)
    assert fact.by_name is False and fact.fields()["by_name"] is False
    (session,) = list(agg.gpu)
    assert session.devices == {(ev.GpuKind.CTL, 255): 2_000} and session.devices_by_name == set()
    assert fact_line(fact) == "fact    gpu_compute pid=500 compute 0xcbc0 (Hopper) on GPU 1 (channel 0xc86f)"


def test_compute_on_a_device_known_only_by_name_says_so() -> None:
    agg = aggregator_with_process()
    (fact,) = bring_up(agg, flags=ev.GPU_BY_NAME | ev.GPU_STATUS_READ)
    assert fact.by_name is True and fact.fields()["by_name"] is True
    (session,) = list(agg.gpu)
    assert session.devices_by_name == {(ev.GpuKind.CTL, 255)}
    assert {o.by_name for o in session.objects.values()} == {True}
    assert fact_line(fact) == "fact    gpu_compute pid=500 compute 0xcbc0 (Hopper) on GPU 1 (channel 0xc86f) (by name)"
    assert fact.summary() == "GPU compute class 0xcbc0 (Hopper) on GPU 1 (by name)"


def test_compute_fact_takes_its_own_allocations_verdict() -> None:
    """Parents made on a fake file cannot relabel a compute allocation on a real device."""
    agg = aggregator_with_process()
    (fact,) = bring_up(agg, flags=ev.GPU_BY_NAME, compute_flags=0)
    assert (fact.by_name, fact.channel_class, fact.device_id) == (False, 0xC86F, 1)
    agg = aggregator_with_process()
    (fact,) = bring_up(agg, flags=0, compute_flags=ev.GPU_BY_NAME)
    assert fact.by_name is True


def test_open_by_name_marks_the_device() -> None:
    agg = aggregator_with_process()
    agg.handle(ev.GpuOpen(ts=1_500, tgid=PID, tid=PID, fd=3, kind=ev.GpuKind.UVM, minor=0, by_name=True))
    agg.handle(ev.GpuOpen(ts=1_501, tgid=PID, tid=PID, fd=4, kind=ev.GpuKind.DEV, minor=0, by_name=False))
    (session,) = list(agg.gpu)
    assert session.devices == {(ev.GpuKind.UVM, 0): 1_500, (ev.GpuKind.DEV, 0): 1_501}
    assert session.devices_by_name == {(ev.GpuKind.UVM, 0)}


def test_rules_tell_a_real_device_from_one_known_by_name(tmp_path: Path) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text("rules:\n  - id: real-gpu-compute\n    title: T\n    description: D\n    severity: high\n"
                     "    match: {fact: gpu_compute, where: {by_name: false}}\n")
    raised = {}
    for flags in (0, ev.GPU_BY_NAME):
        agg = aggregator_with_process(Aggregator(rules=load_rules([rules], builtin=False)))
        steps = [(0x41, 1, 1), (0x80, 2, 1), (0xA06C, 3, 2), (0xC86F, 4, 3), (0xCBC0, 5, 4)]
        raised[flags] = [a.rule_id for ts, (klass, handle, parent) in enumerate(steps, start=10)
                         for a in agg.handle(ioctl(ev.GpuReason.ALLOC, klass, handle, parent, ts, flags=flags)).alerts]
    assert raised == {0: ["real-gpu-compute"], ev.GPU_BY_NAME: []}


def test_query_only_process_never_gets_compute() -> None:
    agg = aggregator_with_process()
    for ts, (klass, handle, parent) in enumerate([(0x41, 1, 1), (0x80, 2, 1), (0x2080, 3, 2)], start=10):
        assert agg.handle(ioctl(ev.GpuReason.ALLOC, klass, handle, parent, ts)).facts == []
    (session,) = list(agg.gpu)
    assert not session.has_compute


def test_failed_allocation_and_free() -> None:
    agg = aggregator_with_process()
    bring_up(agg)
    agg.handle(ioctl(ev.GpuReason.ALLOC_FAILED, 0xCBC0, 0x20, 0x13, 3_000, status=0x22))
    agg.handle(ioctl(ev.GpuReason.FREE, 0xCBC0, 0x14, 0x13, 3_001, nr=0x29, size=16))
    (session,) = list(agg.gpu)
    assert session.failed_count == 1 and session.failed[0].status == 0x22
    assert session.freed == 1 and session.live(Role.COMPUTE) == []


def test_counters_give_totals_and_rates() -> None:
    agg = aggregator_with_process()
    agg.handle(ev.GpuCounters(ts=1_000_000_000, tgid=0, tid=0, counts=[[PID, 1, 0x2A, 100, 0, 0, 5]]))
    agg.handle(ev.GpuCounters(ts=3_000_000_000, tgid=0, tid=0, counts=[[PID, 1, 0x2A, 700, 2, 0, 6]]))
    (session,) = list(agg.gpu)
    assert session.ioctl_totals() == {"RM_CONTROL": 700}
    assert session.rates == {"ctl": 300.0}


def test_session_goes_with_its_process() -> None:
    agg = aggregator_with_process()
    bring_up(agg)
    agg.handle(ev.Exit(ts=4_000, tgid=PID, tid=PID, exit_code=0, start_ns=START))
    agg.handle(ev.Stats(ts=200 * 1_000_000_000, tgid=0, tid=0))
    assert list(agg.gpu) == []


def test_class_catalogue() -> None:
    assert role_of(0xCBC0) is Role.COMPUTE and architecture_of(0xCBC0) == "Hopper"
    assert role_of(0xC6B5) is Role.COPY and role_of(0xC661) is Role.DOORBELL
    assert role_of(0x900E) is Role.MPS and role_of(0x40) is Role.MEMORY
    assert class_name(0xDDC0) == "compute 0xddc0 (unknown)"
    assert command_name(ev.GpuKind.UVM, 27) == "UVM_REGISTER_CHANNEL"
    assert command_name(ev.GpuKind.CTL, 0x2B) == "RM_ALLOC"
