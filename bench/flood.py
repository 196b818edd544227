"""Flood resistance: what gets through while one process floods connects as fast as it can.

Each round: the flood alone (no tracer: the helper's own rate, the floor), then the flood
under `gpusentry record` (the agent's probe with its default rings) while other processes do
what detection turns on: ROUNDS `ssh -R` execs, ROUNDS connects to a pool's port (each a new
destination), and a CUDA-like client's compute allocations on the fake driver. The capture
is then counted: the flood's records delivered and dropped (kernel and probe, counted), and
the decisive acts delivered out of those made.

    .venv/bin/python -m bench.flood [--repeat 3] [--connects 4000000]

Needs root and gcc. Compare within one run: the machines are noisy.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from bench.figures import spread
from bench.pipeline import build_helper, flood
from sensor import events as ev
from sensor.capture import open_capture
from sensor.fakegpu.session import fake_driver, replay
from sensor.gpu_classes import Role, role_of

ROOT = Path(__file__).resolve().parents[1]
POOL_PORT = 3333
ROUNDS = 5
FLOOD_PORT = 9  # discard: closed on these machines; UDP connect sends nothing
DECISIVE_KINDS = ("exec", "fork", "exit", "gpu_open", "gpu_ioctl")


def decisive_acts(driver: Path, rounds: int = ROUNDS) -> None:
    """`rounds` times an `ssh -R` exec (-G: print the configuration, connect nowhere) and a
    connect from this process to a pool's port (a new one each time); then a CUDA-like
    client's compute allocations."""
    for n in range(rounds):
        subprocess.run(["/usr/bin/ssh", "-G", "-R", f"{9000 + n}:localhost:22", "x@203.0.113.5"],
                       capture_output=True, check=True)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as pool:
            pool.connect(("127.0.0.1", POOL_PORT + n))  # UDP: no packet sent
    result = replay(driver, ROOT / "tests/fixtures/gpu/compute-loop.yaml")
    if result.returncode != 0:
        raise SystemExit(f"the CUDA-like client failed: {result.stderr}")


@dataclass
class Delivered:
    ssh: list[bytes]  # the -R argument of each ssh exec that arrived
    pool: list[int]  # ports of this process's pool connects that arrived
    compute: int  # compute allocations that arrived
    flooded: int  # the flood's connect records that arrived
    kernel_drops: dict[str, int]
    probe_drops: dict[str, int]


def count(capture: Path, flood_pid: int, rounds: int = ROUNDS) -> Delivered:
    src, reader = open_capture(str(capture))
    with src:
        events = list(reader)
    stats = [e for e in events if isinstance(e, ev.Stats)][-1]
    return Delivered(
        ssh=[e.argv[3] for e in events if isinstance(e, ev.Exec) and e.argv[:3] == [b"/usr/bin/ssh", b"-G", b"-R"]],
        pool=[e.port for e in events if isinstance(e, ev.Connect) and e.tgid == os.getpid()
              and e.address == "127.0.0.1" and POOL_PORT <= e.port < POOL_PORT + rounds],
        compute=sum(1 for e in events if isinstance(e, ev.GpuIoctl) and e.reason == ev.GpuReason.ALLOC
                    and role_of(e.h_class) is Role.COMPUTE),
        flooded=sum(1 for e in events if isinstance(e, ev.Connect) and e.tgid == flood_pid),
        kernel_drops=stats.kernel_drops, probe_drops=stats.probe_drops)


def start_recorder(capture: Path, *flags: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-m", "sensor", "record", "-w", str(capture), *flags],
                            stderr=subprocess.PIPE, text=True, cwd=ROOT)
    assert proc.stderr is not None
    while "recording to" not in (line := proc.stderr.readline()):
        if not line:
            raise SystemExit(f"the recorder did not start: {proc.stderr.read()}")
    return proc


def flooded_round(helper: Path, driver: Path, capture: Path, connects: int, *flags: str) -> tuple[float, Delivered]:
    """The flood under the recorder, the decisive acts meanwhile: the flood's rate, and what arrived."""
    recorder = start_recorder(capture, *flags)
    flooder = subprocess.Popen([str(helper), str(connects), "0", str(FLOOD_PORT)], stdout=subprocess.PIPE, text=True)
    try:
        decisive_acts(driver)
        concurrent = flooder.poll() is None
        out, _ = flooder.communicate(timeout=300)
        recorder.send_signal(2)
        recorder.wait(timeout=60)
    finally:
        for proc in (flooder, recorder):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    if not concurrent:
        raise SystemExit("the flood ended before the decisive acts: give more --connects")
    pid, calls, elapsed = out.split()
    return int(calls) / float(elapsed), count(capture, int(pid))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--connects", type=int, default=4_000_000)
    args = parser.parse_args()
    acts = 2 * ROUNDS + 1
    with tempfile.TemporaryDirectory() as tmp, fake_driver("hopper") as driver:
        helper = build_helper(Path(tmp))
        bare, traced, fractions, decisive, lost = [], [], [], [], []
        for _ in range(args.repeat):
            _, rate = flood(helper, args.connects, 0, FLOOD_PORT)
            bare.append(rate)
            rate, got = flooded_round(helper, driver, Path(tmp) / "flood.cap", args.connects)
            traced.append(rate)
            fractions.append(got.flooded / args.connects)
            decisive.append(len(got.ssh) + len(got.pool) + min(got.compute, 1))
            lost.append(sum(got.kernel_drops.get(k, 0) + got.probe_drops.get(k, 0) for k in DECISIVE_KINDS))
            print(f"  round: flood {rate:,.0f}/s, {got.flooded:,} of its records delivered, kernel drops "
                  f"{got.kernel_drops.get('connect', 0):,}; ssh -R {len(got.ssh)}/{ROUNDS}, pool connects "
                  f"{len(got.pool)}/{ROUNDS}, compute allocations {got.compute}", flush=True)
    print(f"flood rate, no tracer (floor):  {spread(bare, '{:,.0f}')} connects/s")
    print(f"flood rate, under the probe:    {spread(traced, '{:,.0f}')} connects/s "
          f"(slowdown {spread([b / t for b, t in zip(bare, traced, strict=True)], '{:.2f}')})")
    print(f"flood records delivered:        {spread(fractions, '{:.1%}')}")
    print(f"decisive acts delivered:        {spread([float(d) for d in decisive], '{:.0f}')} of {acts}")
    print(f"decisive records dropped:       {max(lost)} (exec, fork, exit, GPU; worst round)")


if __name__ == "__main__":
    main()
