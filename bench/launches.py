"""What a launch watch costs the process watched: each launch call with the libcuda uprobes
attached, against the same loop unattached, in the same process and run; and what attaching
and detaching a watch take.

The stand-in libcuda and the client of the kernel tests (tests/kernel/helpers/libcuda/
fake_libcuda.c, tests/kernel/helpers/launch_client.c) are built into a temporary directory;
the probe's programs are loaded by its loader child, and the probe's own LaunchWatcher attaches
and detaches them (sensor/probe/launches.py), as on a request from the aggregator. In each of
--rounds rounds a fresh client times --launches calls of cuLaunchKernel unwatched, is watched,
times as many again, and the watch ends; the stand-in is built two ways (VARIANTS), interleaved.
Each figure is the median [min-max] over the rounds.

    .venv/bin/python -m bench.launches [--rounds 7] [--launches 100000]

Needs root. The stand-in's launch does nothing, so the unwatched figure is a function call's
cost and the difference is all the uprobe's: the trap, the kernel's uprobe dispatch and our
program (a map lookup, two atomic adds, one hash insert per new function).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from bench.figures import spread
from sensor import events as ev
from sensor.probe.launches import LaunchBudget, LaunchWatcher
from sensor.probe.loader import load_in_child
from sensor.probe.program import ProbeConfig

ROOT = Path(__file__).resolve().parents[1]
HELPERS = ROOT / "tests" / "kernel" / "helpers"
BUDGET = LaunchBudget().hits_per_s


@dataclass
class Round:
    unwatched_ns: float  # per call
    watched_ns: float
    attach_ms: float
    end_ms: float  # the watch ended: what the probe's timer waits
    detach_ms: float  # until the uprobes are gone from the process (the kernel's unregistration)
    counted: int  # launches the kernel counted while watched


class Client:
    def __init__(self, binary: Path, library: Path) -> None:
        self.proc = subprocess.Popen([str(binary), str(library)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, bufsize=1)
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.stdin, self.stdout = self.proc.stdin, self.proc.stdout
        assert self.stdout.readline().split()[0] == "ready"
        raw = Path(f"/proc/{self.proc.pid}/stat").read_bytes()
        self.start_ns = int(raw[raw.rfind(b")") + 2:].split()[19]) * ev.NS_PER_TICK

    def time(self, launches: int) -> float:
        """Nanoseconds per cuLaunchKernel call over `launches` calls."""
        self.stdin.write(f"time {launches}\n")
        kind, total = self.stdout.readline().split()
        assert kind == "ns"
        return int(total) / launches

    def close(self) -> None:
        self.stdin.close()
        self.proc.wait(timeout=30)


# The kernel emulates some first instructions of a probed function (push, nop, jmp, call...) and
# single-steps the others out of line, a second trap: the stand-in built two ways shows both.
# (Which one libcuda's entry points begin with depends on how NVIDIA built it.)
VARIANTS = {"first instruction single-stepped (gcc -O1: mov)": "-O1",
            "first instruction emulated (gcc -O0: push %rbp)": "-O0"}


def build(directory: Path) -> tuple[dict[str, Path], Path]:
    """The stand-in libcuda in each variant (DIRECTORY/VARIANT/libcuda.so.1), and the client."""
    libraries = {}
    for n, (variant, level) in enumerate(VARIANTS.items()):
        (directory / str(n)).mkdir()
        libraries[variant] = directory / str(n) / "libcuda.so.1"
        subprocess.run(["gcc", level, "-shared", "-fPIC", "-o", str(libraries[variant]),
                        str(HELPERS / "libcuda" / "fake_libcuda.c")], check=True)
    client = directory / "launch_client"
    subprocess.run(["gcc", "-O1", "-o", str(client), str(HELPERS / "launch_client.c")], check=True)
    return libraries, client


def one_round(watcher: LaunchWatcher, library: Path, binary: Path, launches: int) -> Round:
    client = Client(binary, library)
    try:
        client.time(launches // 10)  # warm: pages touched, caches filled
        unwatched = client.time(launches)
        began = time.perf_counter()
        frame = watcher.request(client.proc.pid, client.start_ns, time.clock_gettime_ns(time.CLOCK_BOOTTIME))
        attach_ms = (time.perf_counter() - began) * 1e3
        assert frame.state == "watching", frame
        watched = client.time(launches)
        now = time.clock_gettime_ns(time.CLOCK_BOOTTIME)
        counted = [e for e in watcher.read(now) if isinstance(e, ev.LaunchCounts)]
        began = time.perf_counter()
        watcher.stop(now)
        end_ms = (time.perf_counter() - began) * 1e3
        for thread in threading.enumerate():
            if thread.name == "probe-detach":
                thread.join()
        detach_ms = (time.perf_counter() - began) * 1e3
    finally:
        client.close()
    return Round(unwatched, watched, attach_ms, end_ms, detach_ms, counted[0].launches if counted else 0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--launches", type=int, default=100_000)
    args = parser.parse_args()
    loaded = load_in_child(ProbeConfig())
    # no hit budget here: the bench ends each watch itself, after its timed loop
    watcher = LaunchWatcher(loaded.programs, loaded.maps["launch_counts"], loaded.maps["launch_funcs"],
                            LaunchBudget(hits_per_s=1 << 40))
    rounds: dict[str, list[Round]] = {variant: [] for variant in VARIANTS}
    try:
        with tempfile.TemporaryDirectory(prefix="bench-launches-") as tmp:
            libraries, binary = build(Path(tmp))
            for _ in range(args.rounds):  # the variants interleaved, round by round
                for variant, library in libraries.items():
                    rounds[variant].append(one_round(watcher, library, binary, args.launches))
    finally:
        for fd in loaded.links:
            os.close(fd)
        loaded.close_maps()
    for variant, measured in rounds.items():
        report(variant, measured, args.launches)


def report(variant: str, rounds: list[Round], launches: int) -> None:
    unwatched = [r.unwatched_ns for r in rounds]
    watched = [r.watched_ns for r in rounds]
    hit = [w - u for w, u in zip(watched, unwatched, strict=True)]
    print(f"{variant}: {len(rounds)} rounds of {launches} cuLaunchKernel calls, median [min-max]")
    print(f"  per call, unwatched      {spread(unwatched, '{:.1f}')} ns")
    print(f"  per call, watched        {spread(watched, '{:.1f}')} ns")
    print(f"  a uprobe hit costs       {spread(hit, '{:.0f}')} ns")
    print(f"  watched / unwatched      {spread([w / u for w, u in zip(watched, unwatched, strict=True)], '{:.0f}')}x")
    print(f"  attach (request served)  {spread([r.attach_ms for r in rounds], '{:.2f}')} ms")
    print(f"  watch ended (timer)      {spread([r.end_ms for r in rounds], '{:.2f}')} ms")
    print(f"  uprobes gone (kernel)    {spread([r.detach_ms for r in rounds], '{:.1f}')} ms")
    exact = all(r.counted == launches for r in rounds)
    print(f"  counted while watched    {'exactly' if exact else 'NOT exactly'} {launches} each round")
    at_budget = [BUDGET * h / 1e9 * 100 for h in hit]
    print(f"  at the budget ({BUDGET} hits/s) the process spends {spread(at_budget, '{:.1f}')}% of a CPU in traps")


if __name__ == "__main__":
    main()
