"""CUDA driver ioctls in the real kernel: fixtures replayed through the fake driver, device
recognition from the file itself, exact in-kernel counting and bounded records under a flood."""

from __future__ import annotations

import contextlib
import errno
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sensor import events as ev
from sensor.aggregator.aggregator import Aggregator
from sensor.aggregator.facts import GpuCompute, GpuProfile
from sensor.aggregator.gpu import GpuSession, allocation_count, profile
from sensor.capture import CaptureError, StreamMeta, open_capture
from sensor.fakegpu.fixtures import load
from sensor.fakegpu.session import ReplayResult, fake_driver, replay
from sensor.gpu_classes import Role, device_name
from tests.kernel.conftest import LiveProbe
from tests.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "gpu"
REPLAYED = ["hopper-bringup", "ampere-bringup", "compute-loop", "training-job", "query-only", "decoder-edges",
            "miner-like", "training-like"]
NOTABLE_ROLES = {Role.CLIENT, Role.DEVICE, Role.SUBDEVICE, Role.CHANNEL_GROUP, Role.CHANNEL, Role.COMPUTE, Role.COPY,
                 Role.DOORBELL, Role.MPS, Role.P2P}


@pytest.fixture(scope="module")
def drivers(root: None) -> Iterator[dict[str, Path]]:
    with fake_driver("hopper") as hopper, fake_driver("ampere") as ampere:
        yield {"hopper": hopper, "ampere": ampere}



def total_calls(session: GpuSession) -> int:
    return sum(count.calls for count in session.counts.values())


def wait_for_counts(live: LiveProbe, pid: int, calls: int) -> GpuSession:
    """The kernel's counters for pid, once they add up to `calls` (read every second)."""
    def counted() -> list[GpuSession]:
        sessions = [s for s in live.aggregator.gpu if s.process.pid == pid]
        return sessions[:1] if sessions and total_calls(sessions[0]) >= calls else []
    (session,) = wait_until(counted, timeout=15, what=f"{calls} GPU ioctls counted for pid {pid}")
    assert total_calls(session) == calls
    return session


def gpu_records(live: LiveProbe, pid: int) -> list[ev.GpuIoctl]:
    return [e for e in live.collector.events(ev.GpuIoctl, tgid=pid) if isinstance(e, ev.GpuIoctl)]


def compute_facts(live: LiveProbe, pid: int) -> list[GpuCompute]:
    with live.collector.lock:
        return [f for o in live.collector.observations for f in o.facts
                if isinstance(f, GpuCompute) and f.process.pid == pid]


def run_fixture(drivers: dict[str, Path], name: str) -> tuple[ReplayResult, Any]:
    fixture = load(FIXTURES / f"{name}.yaml")
    result = replay(drivers[fixture.arch], fixture.path)
    assert result.returncode == 0, result.stderr
    return result, fixture


def assert_records_match_the_driver(records: list[ev.GpuIoctl], calls: list[dict[str, Any]]) -> None:
    """Every allocation that matters, as the driver answered it, is in the sensor's records."""
    from sensor.gpu_classes import role_of

    allocs = [r for r in records if r.reason in (ev.GpuReason.ALLOC, ev.GpuReason.ALLOC_FAILED)]
    got = [(r.h_class, r.h_object, r.h_parent, r.ret, r.status) for r in allocs]
    # an NV01_EVENT is reported with the class in its parameters
    want = [(c["event_class"] or c["klass"], c["handle"], c["parent"], c["ret"], c["status"]) for c in calls
            if c["op"] == "alloc" and (c["ret"] or c["status"] or role_of(c["klass"]) in NOTABLE_ROLES)]
    assert got == want


@pytest.mark.parametrize("name", REPLAYED)
def test_fixture_replay(live: LiveProbe, drivers: dict[str, Path], name: str) -> None:
    result, fixture = run_fixture(drivers, name)
    pid, expect = result.pid, fixture.expect
    session = wait_for_counts(live, pid, result.report["ioctls"])
    records = gpu_records(live, pid)
    assert_records_match_the_driver(records, result.report["calls"])

    if "devices" in expect:
        assert sorted({device_name(kind, minor) for kind, minor in session.devices}) == expect["devices"]
    facts = sorted((f.klass, f.architecture, f.device_id, f.channel_class, f.by_name)
                   for f in compute_facts(live, pid))
    # the fake driver's files are FUSE regular files: recognised by their names only
    want = sorted((c["class"], c["architecture"], c["device_id"], c["channel_class"], True) for c in expect["compute"])
    assert facts == want
    assert {r.flags & ev.GPU_BY_NAME for r in records} == {ev.GPU_BY_NAME}
    assert session.devices_by_name == set(session.devices)
    assert session.has_compute == bool(want)
    if "channels" in expect:
        assert sorted(o.klass for o in session.ever(Role.CHANNEL)) == sorted(expect["channels"])
    if "copy" in expect:
        assert [o.klass for o in session.ever(Role.COPY)] == expect["copy"]
    if "doorbells" in expect:
        assert [o.klass for o in session.ever(Role.DOORBELL)] == expect["doorbells"]
    assert session.failed_count == expect["failed_allocs"]
    if "cuda_boost" in expect:
        assert session.cuda_boost is expect["cuda_boost"]
        if expect["cuda_boost"]:
            assert session.boost == (0x10, 0xFFFFFFFF)
    if "uvm_channels" in expect:
        channels = {c["handle"] for c in result.report["calls"] if c["op"] == "uvm" and c["cmd"] == 27}
        assert session.uvm_channels == channels and len(channels) == expect["uvm_channels"]
    if "freed_compute" in expect:
        assert sum(1 for o in session.ever(Role.COMPUTE) if o.freed_ts) == expect["freed_compute"]
    if "memory" in expect:
        assert_memory_profile(session, expect["memory"])
    if "min_ioctls" in expect:
        assert result.report["ioctls"] >= expect["min_ioctls"]
    client = next(o for o in session.ever(Role.CLIENT))
    assert client.handle == result.report["handles"]["client"]


def assert_memory_profile(session: GpuSession, want: dict[str, int]) -> None:
    """The kernel's memory totals, read on the timer, and the profile made of them: exact bytes."""
    wait_until(lambda: session.memory is not None and allocation_count(session) == want["allocations"],
               timeout=15, what=f"{want['allocations']} memory allocations summed")
    memory = session.memory
    assert memory is not None
    got = profile(session, session.last_activity_ts)
    assert {"held": got.held_bytes, "peak": got.peak_bytes, "allocated": got.allocated_bytes,
            "system": got.system_bytes, "registered": got.registered_bytes, "virtual": got.virtual_bytes,
            "uvm": got.uvm_mapped_bytes, "allocations": got.allocations, "frees": got.frees,
            "p2p": got.peer_objects} == {"p2p": 0, **want}
    assert memory.untracked == 0


def test_profile_of_a_live_process_carries_its_exact_memory(live: LiveProbe, drivers: dict[str, Path]) -> None:
    """Kernel sums -> probe frame -> aggregator -> gpu_profile fact, while the process holds its
    memory: its 1.25 GiB arriving is a notable change, so a profile comes at once."""
    result, fixture = run_fixture(drivers, "miner-like")
    want = fixture.expect["memory"]

    def held_profiles() -> list[GpuProfile]:
        with live.collector.lock:
            return [f for o in live.collector.observations for f in o.facts
                    if isinstance(f, GpuProfile) and f.process.pid == result.pid and f.held_bytes]
    profile_fact = wait_until(held_profiles, timeout=15, what="a gpu_profile with memory held")[0]
    assert (profile_fact.held_bytes, profile_fact.peak_bytes, profile_fact.registered_bytes,
            profile_fact.virtual_bytes, profile_fact.compute_objects, profile_fact.channels,
            profile_fact.devices, profile_fact.uvm_gpus) == (want["held"], want["peak"], want["registered"],
                                                             want["virtual"], 1, 2, 1, 1)


def test_decoder_edges_in_detail(live: LiveProbe, drivers: dict[str, Path]) -> None:
    result, _ = run_fixture(drivers, "decoder-edges")
    pid = result.pid
    wait_for_counts(live, pid, result.report["ioctls"])
    records = gpu_records(live, pid)
    handles = result.report["handles"]
    by_handle = {r.h_object: r for r in records if r.reason == ev.GpuReason.ALLOC}
    # NVOS21: a 32-byte RM_ALLOC
    assert by_handle[handles["client"]].size == 32 and by_handle[handles["device"]].size == 32
    # IOCTL_XFER_CMD followed one level: the inner RM_ALLOC, marked
    for name in ("channel", "compute"):
        record = by_handle[handles[name]]
        assert record.flags & ev.GPU_XFER and record.nr == 0x2B and record.size == 48
        assert record.cmd == 0xC0104600 | 0xD3
    failed = [(r.h_class, r.ret, r.status, r.size) for r in records if r.reason == ev.GpuReason.ALLOC_FAILED]
    assert failed == [
        (0x79, 0, 0x36, 48),  # NV01_EVENT: its own class; bad parent
        (0xC86F, -errno.EINVAL, 0, 40),  # the 40-byte form: EINVAL since 595
        (0xC86F, 0, 0x19, 48),  # duplicate handle
        (0xC6C0, 0, 0x22, 48),  # no Ampere compute on a Hopper GPU
    ]
    freed = [(r.h_object, r.h_class) for r in records if r.reason == ev.GpuReason.FREE]
    assert freed == [(handles["compute"], 0xCBC0), (handles["channel"], 0xC86F)]


def test_dup_and_inherited_descriptors_are_recognised(live: LiveProbe, drivers: dict[str, Path]) -> None:
    result, _ = run_fixture(drivers, "fd-inheritance")
    (child_report,) = result.report["child_reports"]
    parent, child = result.pid, child_report["pid"]
    wait_for_counts(live, child, child_report["ioctls"])
    parent_allocs = [(r.fd, r.kind, r.h_class) for r in gpu_records(live, parent) if r.reason == ev.GpuReason.ALLOC]
    assert parent_allocs == [(3, ev.GpuKind.CTL, 0x41), (4, ev.GpuKind.CTL, 0x80)]  # 4 is the dup of 3
    child_allocs = [(r.fd, r.kind, r.h_class) for r in gpu_records(live, child) if r.reason == ev.GpuReason.ALLOC]
    assert child_allocs == [(3, ev.GpuKind.CTL, 0x2080), (3, ev.GpuKind.CTL, 0xA06C), (3, ev.GpuKind.CTL, 0xC86F),
                            (3, ev.GpuKind.CTL, 0xCBC0)]
    assert [e for e in live.collector.events(ev.GpuOpen, tgid=child)] == []  # it never opened anything
    (fact,) = compute_facts(live, child)
    assert fact.klass == 0xCBC0 and fact.channel_class == 0xC86F


def run_helper(helpers: Path, *args: str, prefix: tuple[str, ...] = ()) -> list[int]:
    out = subprocess.run([*prefix, str(helpers / "gpu_ioctls"), *args], capture_output=True, text=True, check=True)
    return [int(float(x)) for x in out.stdout.split()]


def test_renamed_device_node_is_recognised_by_its_device_number(live: LiveProbe, helpers: Path) -> None:
    """A character device 195:0 under another name, in a private mount namespace. No NVIDIA
    driver is loaded, so it opens only with O_PATH; the ioctl fails, but the sensor has
    already decided what the file is."""
    script = ("mount -t tmpfs none /mnt && mknod /mnt/innocent-name c 195 0 && "
              f"exec {helpers / 'gpu_ioctls'} opath /mnt/innocent-name")
    out = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                         capture_output=True, text=True, check=True)
    pid, fd, err = (int(x) for x in out.stdout.split())
    assert err == errno.EBADF
    (opened,) = live.wait_for(lambda e: isinstance(e, ev.GpuOpen) and e.tgid == pid)
    assert isinstance(opened, ev.GpuOpen)
    assert (opened.fd, opened.kind, opened.minor, opened.by_name) == (fd, ev.GpuKind.DEV, 0, False)
    (record,) = live.wait_for(lambda e: isinstance(e, ev.GpuIoctl) and e.tgid == pid)
    assert isinstance(record, ev.GpuIoctl)
    assert (record.reason, record.kind, record.minor, record.ret, record.h_class, record.flags) == (
        ev.GpuReason.ALLOC_FAILED, ev.GpuKind.DEV, 0, -errno.EBADF, 0xCBC0, ev.GPU_STATUS_READ)


def test_plain_file_named_like_a_device_is_marked_by_name(live: LiveProbe, helpers: Path, tmp_path: Path) -> None:
    """A plain file named nvidiactl is taken for the control device by its name only, and
    its ioctl records say so: rules can tell it from a real device."""
    target = tmp_path / "nvidiactl"
    target.touch()
    pid, fd, err = run_helper(helpers, "rmalloc", str(target))
    assert err == errno.ENOTTY
    (opened,) = live.wait_for(lambda e: isinstance(e, ev.GpuOpen) and e.tgid == pid)
    assert isinstance(opened, ev.GpuOpen)
    assert (opened.fd, opened.kind, opened.minor, opened.by_name) == (fd, ev.GpuKind.CTL, 0, True)
    (record,) = live.wait_for(lambda e: isinstance(e, ev.GpuIoctl) and e.tgid == pid)
    assert isinstance(record, ev.GpuIoctl)
    assert (record.reason, record.kind, record.fd, record.ret, record.h_class, record.flags) == (
        ev.GpuReason.ALLOC_FAILED, ev.GpuKind.CTL, fd, -errno.ENOTTY, 0xCBC0, ev.GPU_BY_NAME | ev.GPU_STATUS_READ)
    session = wait_for_counts(live, pid, 1)
    assert session.devices_by_name == {(ev.GpuKind.CTL, 0)}


# A second real probe, for a test that needs another UVM major than this host has.
RECORDER = """
import signal, sys, threading
from sensor.capture import FrameWriter, StreamMeta
from sensor.probe import program
from sensor.probe.probe import Probe
stop = threading.Event()
for sig in (signal.SIGINT, signal.SIGTERM):
    signal.signal(sig, lambda *_: stop.set())
config = program.ProbeConfig()
with open(sys.argv[1], "wb") as out:
    probe = Probe(config, FrameWriter(out, StreamMeta(features=program.kernel_features(config))))
    probe.start()
    print("recording", file=sys.stderr, flush=True)
    stop.wait()
    probe.stop()
"""


def char_major(name: str) -> int:
    text = Path("/proc/devices").read_text().split("Block devices:")[0]
    (major,) = re.findall(rf"^\s*(\d+) {re.escape(name)}$", text, flags=re.M)
    return int(major)


@contextlib.contextmanager
def probe_with_uvm_major(major: int, tmp_path: Path) -> Iterator[Path]:
    """A real probe loaded in a private mount namespace whose /proc/devices also lists
    `MAJOR nvidia-uvm`: the loader reads the UVM major from there. Yields its capture file,
    complete once the block ends."""
    devices, capture, log = tmp_path / "devices", tmp_path / "capture.gscap", tmp_path / "recorder.log"
    devices.write_text(Path("/proc/devices").read_text().replace(
        "Character devices:\n", f"Character devices:\n{major:3d} nvidia-uvm\n", 1))
    script = 'mount --bind "$1" /proc/devices && exec "$2" -c "$3" "$4"'
    with log.open("wb") as err:
        recorder = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh",
                                     str(devices), sys.executable, RECORDER, str(capture)], stderr=err, cwd=ROOT)
    try:
        wait_until(lambda: recorder.poll() is not None or b"recording" in log.read_bytes(), timeout=120,
                   what="the second probe to attach")
        assert recorder.poll() is None, log.read_text()
        yield capture
    finally:
        recorder.send_signal(signal.SIGINT)
        assert recorder.wait(timeout=60) == 0, log.read_text()


def captured(capture: Path, strict: bool = True) -> tuple[StreamMeta, list[ev.Event]]:
    """The capture's header and events; not strict while it is written (its last frame may be
    partial)."""
    src, reader = open_capture(str(capture))
    events: list[ev.Event] = []
    with src:
        try:
            events.extend(reader)
        except CaptureError:
            if strict:
                raise
    return reader.meta, events


def counted(events: list[ev.Event], pid: int) -> list[list[int]]:
    """pid's rows in the last GpuCounters that had any (the counters are totals)."""
    rows = [[row for row in e.counts if row[0] == pid] for e in events if isinstance(e, ev.GpuCounters)]
    return [r for r in rows if r][-1] if any(rows) else []


def test_device_number_verdict_on_a_successful_ioctl(helpers: Path, tmp_path: Path) -> None:
    """The device-number path with a call that succeeds. No NVIDIA driver (or CUSE) exists
    here, but the sensor also recognises the nvidia-uvm major, which it reads from
    /proc/devices at load: a probe that reads the pts major there takes a terminal for
    /dev/nvidia-uvm. The workload opens terminal 0 of its own devpts instance (a real driver,
    not a file named like a device) and makes ioctl 2, FIGETBSZ, which is a plain number as
    UVM commands are and which the VFS answers with success."""
    pts = char_major("pts")
    mountpoint = tmp_path / "devpts"
    mountpoint.mkdir()
    script = 'dir="$1"; shift; mount -t devpts -o newinstance,ptmxmode=0666 devpts "$dir" && exec "$@" "$dir"'
    with probe_with_uvm_major(pts, tmp_path) as capture:
        pid, fd, err, blocksize, index = run_helper(
            helpers, "pts", prefix=("unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh",
                                    str(mountpoint)))
        assert (err, index) == (0, 0) and blocksize > 0
        wait_until(lambda: counted(captured(capture, strict=False)[1], pid), timeout=15,
                   what=f"the second probe's counters for pid {pid}")
    meta, events = captured(capture)
    assert meta.features["nvidia_uvm_major"] == str(pts)
    opens = [e for e in events if isinstance(e, ev.GpuOpen) and e.tgid == pid]
    assert [(o.fd, o.kind, o.minor, o.by_name) for o in opens] == [(fd, ev.GpuKind.UVM, 0, False)]
    (record,) = [e for e in events if isinstance(e, ev.GpuIoctl) and e.tgid == pid]
    assert record == ev.GpuIoctl(
        ts=record.ts, tgid=pid, tid=pid, reason=ev.GpuReason.FIRST_USE, kind=ev.GpuKind.UVM, fd=fd, minor=0,
        cmd=2, nr=2, size=0, ret=0, status=0, h_root=0, h_parent=0, h_object=0, h_class=0, ctrl_cmd=0, param0=0,
        param1=0, uuid=bytes(16), flags=0)  # no GPU_BY_NAME: by its device number
    assert counted(events, pid) == [[pid, ev.GpuKind.UVM, 2, 1, 0, 0, record.ts]]
    aggregator = Aggregator()
    for event in events:
        aggregator.handle(event)
    (session,) = [s for s in aggregator.gpu if s.process.pid == pid]
    assert session.devices == {(ev.GpuKind.UVM, 0): opens[0].ts} and session.devices_by_name == set()
    assert {k: (c.calls, c.errors) for k, c in session.counts.items()} == {(ev.GpuKind.UVM, 2): (1, 0)}


def test_regular_file_is_not_a_gpu(live: LiveProbe, helpers: Path, tmp_path: Path) -> None:
    plain = tmp_path / "data.bin"
    plain.write_bytes(b"\0" * 64)
    marker = tmp_path / "nvidiactl"  # a control: the same helper on a GPU-named file is seen
    marker.touch()
    pid, _, _ = run_helper(helpers, "flood", str(plain), "1000")
    control, _, _ = run_helper(helpers, "flood", str(marker), "10")
    wait_for_counts(live, control, 10)
    assert gpu_records(live, pid) == []
    assert [s for s in live.aggregator.gpu if s.process.pid == pid] == []


def test_flood_is_counted_exactly_with_bounded_records(live: LiveProbe, helpers: Path, tmp_path: Path) -> None:
    """Hundreds of thousands of RM_ALLOC calls per second on a file the sensor takes for
    nvidiactl (by name): every call counted in the kernel, records held to the budget."""
    target = tmp_path / "nvidiactl"
    target.touch()
    count = 300_000
    pid, _, elapsed_us = _flood(helpers, target, count)
    session = wait_for_counts(live, pid, count)
    (totals,) = session.counts.values()
    assert (totals.kind, totals.cmd_id, totals.calls, totals.errors) == (ev.GpuKind.CTL, 0x2B, count, count)
    records = len(gpu_records(live, pid))
    burst, rate = 1024, 256
    elapsed = elapsed_us / 1e6
    assert records <= burst + rate * elapsed + 1
    assert records + totals.suppressed == count
    assert live.probe.kernel_drops()["gpu_ioctl"] == 0


def _flood(helpers: Path, target: Path, count: int) -> tuple[int, int, int]:
    out = subprocess.run([str(helpers / "gpu_ioctls"), "flood", str(target), str(count)], capture_output=True,
                         text=True, check=True)
    pid, calls, seconds = out.stdout.split()
    return int(pid), int(calls), int(float(seconds) * 1e6)


def test_closed_file_struct_reused_for_a_gpu_is_not_mistaken(live: LiveProbe, helpers: Path, tmp_path: Path) -> None:
    """A plain file's ioctl caches "not a GPU"; it is closed, and a GPU-named file opened with
    open_tree (not hooked) gets the same fd and, from the slab, usually the same struct file."""
    target = tmp_path / "nvidiactl"
    target.touch()
    count = 200
    pid, _, _ = run_helper(helpers, "reuse", str(target), str(count))
    session = wait_for_counts(live, pid, count)
    assert {(k, c.calls) for k, c in session.counts.items()} == {((ev.GpuKind.CTL, 0x2A), count)}


def test_ioctls_of_the_agent_itself_are_not_seen(live: LiveProbe, tmp_path: Path) -> None:
    import fcntl

    target = tmp_path / "nvidiactl"
    target.touch()
    fd = os.open(target, os.O_RDWR)
    try:
        for _ in range(10):
            with contextlib.suppress(OSError):
                fcntl.ioctl(fd, 0xC030462B, bytearray(48))
    finally:
        os.close(fd)
    control = tmp_path / "control"
    control.mkdir()
    (control / "nvidiactl").touch()
    helper = subprocess.run(["/usr/bin/python3", "-c",
                             "import os,fcntl,sys\nfd=os.open(sys.argv[1],os.O_RDWR)\n"
                             "try: fcntl.ioctl(fd,0xC030462B,bytearray(48))\nexcept OSError: pass\nprint(os.getpid())",
                             str(control / "nvidiactl")], capture_output=True, text=True, check=True)
    wait_for_counts(live, int(helper.stdout), 1)
    assert [s for s in live.aggregator.gpu if s.process.pid == os.getpid()] == []
