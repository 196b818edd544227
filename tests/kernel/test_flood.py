"""A flood cannot hide what detection turns on: while one process floods connects as fast as it
can (far more than the probe reads, so records are dropped, and counted), another process's
`ssh -R` exec, GPU compute allocation and pool connect all reach the capture, because they go
on the decisive ring and lane (sensor/bpf/common.bpf.c, sensor/probe/lanes.py)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from sensor import events as ev
from sensor.capture import open_capture
from sensor.fakegpu.session import fake_driver, replay
from sensor.gpu_classes import Role, role_of

ROOT = Path(__file__).resolve().parents[2]
FLOODS = 4_000_000  # connects: several seconds of flood on these machines, whatever the probe does
POOL_PORT = 3333
ROUNDS = 5
DECISIVE_KINDS = ("exec", "fork", "exit", "gpu_open", "gpu_ioctl")  # all of them on the decisive ring


@pytest.fixture(scope="module")
def flooder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    binary = tmp_path_factory.mktemp("flood") / "connect_flood"
    subprocess.run(["gcc", "-O2", "-o", str(binary), str(ROOT / "bench/helpers/connect_flood.c")], check=True)
    return binary


@pytest.fixture
def recorder(root: None, tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], Path]]:
    """`gpusentry record` with small rings (64 pages each), so that the flood surely overflows."""
    capture = tmp_path / "flood.cap"
    proc = subprocess.Popen([sys.executable, "-m", "sensor", "record", "-w", str(capture), "--ringbuf-pages", "64"],
                            stderr=subprocess.PIPE, text=True, cwd=ROOT)
    assert proc.stderr is not None
    while "recording to" not in (line := proc.stderr.readline()):
        assert line, f"the recorder did not start: {proc.stderr.read()}"
    yield proc, capture
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def decisive_acts(driver: Path) -> None:
    """The other processes' acts, ROUNDS times: an `ssh -R` exec (-G: print the configuration,
    connect nowhere) and this process's connect to a pool's port; and a CUDA-like client's
    compute allocations."""
    for n in range(ROUNDS):
        subprocess.run(["/usr/bin/ssh", "-G", "-R", f"{9000 + n}:localhost:22", "x@203.0.113.5"],
                       capture_output=True, check=True)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as pool:
            pool.connect(("127.0.0.1", POOL_PORT + n))  # UDP: no packet sent
    result = replay(driver, ROOT / "tests/fixtures/gpu/compute-loop.yaml")
    assert result.returncode == 0, result.stderr


def test_decisive_records_get_through_a_connect_flood(flooder: Path, recorder: tuple[subprocess.Popen[str], Path],
                                                       tmp_path: Path) -> None:
    proc, capture = recorder
    with fake_driver("hopper") as driver:
        flood = subprocess.Popen([str(flooder), str(FLOODS), "0", "9"], stdout=subprocess.PIPE, text=True)
        decisive_acts(driver)
        assert flood.poll() is None, "the flood ended before the acts: raise FLOODS"
        out, _ = flood.communicate(timeout=120)
    proc.send_signal(2)
    proc.wait(timeout=60)
    flood_pid = int(out.split()[0])

    src, reader = open_capture(str(capture))
    with src:
        events = list(reader)
    stats = [e for e in events if isinstance(e, ev.Stats)][-1]
    flooded = sum(1 for e in events if isinstance(e, ev.Connect) and e.tgid == flood_pid)
    lost = stats.kernel_drops.get("connect", 0) + stats.probe_drops.get("connect", 0)
    assert lost > 0 and flooded + lost >= FLOODS // 2, (flooded, lost)  # the flood did overflow

    # nothing on the decisive ring was lost: every exec, fork, exit and GPU record arrived
    assert {kind: stats.kernel_drops[kind] for kind in DECISIVE_KINDS} == dict.fromkeys(DECISIVE_KINDS, 0)
    assert [kind for kind in DECISIVE_KINDS if stats.probe_drops.get(kind)] == []
    ssh = [e.argv[3] for e in events if isinstance(e, ev.Exec) and e.argv[:3] == [b"/usr/bin/ssh", b"-G", b"-R"]]
    pool = [e.port for e in events if isinstance(e, ev.Connect) and e.tgid == os.getpid()
            and e.address == "127.0.0.1" and POOL_PORT <= e.port < POOL_PORT + ROUNDS]
    compute = [e for e in events if isinstance(e, ev.GpuIoctl) and e.reason == ev.GpuReason.ALLOC
               and role_of(e.h_class) is Role.COMPUTE]
    assert ssh == [f"{9000 + n}:localhost:22".encode() for n in range(ROUNDS)]
    assert pool == [POOL_PORT + n for n in range(ROUNDS)]
    assert len(compute) >= 1
