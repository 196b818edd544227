"""Throughput of the kernel -> probe -> frame stream -> aggregator pipeline, and its cost.

For each target rate, a C helper makes that many connect() calls per second for a few
seconds (each is one connect record). The real `gpusentry record` captures them; the capture
is then analysed, and the records of the helper counted against the calls it made, with the
kernel and probe drop counters. The same helper run without the agent, in the same run, is
the baseline: the ratio of its achieved rate with and without the agent is the workload's
slowdown.

    .venv/bin/python -m bench.pipeline [--seconds 3] [--repeat 3] [--rates 10000,20000,...]

Needs root. Results vary with the machine: compare ratios within one run.
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from bench.figures import spread
from sensor import events as ev
from sensor.capture import open_capture

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Trial:
    rate: int
    calls: int
    achieved: float  # calls per second the helper managed
    delivered: int  # its connect records in the capture
    kernel_drops: int
    probe_drops: int


def build_helper(out: Path) -> Path:
    binary = out / "connect_flood"
    subprocess.run(["gcc", "-O2", "-o", str(binary), str(ROOT / "bench/helpers/connect_flood.c")], check=True)
    return binary


def closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = int(s.getsockname()[1])
    s.close()
    return port


def flood(helper: Path, calls: int, rate: int, port: int) -> tuple[int, float]:
    out = subprocess.run([str(helper), str(calls), str(rate), str(port)], capture_output=True, text=True,
                         check=True)
    pid, count, elapsed = out.stdout.split()
    return int(pid), int(count) / float(elapsed)


def recorded_trial(helper: Path, capture: Path, calls: int, rate: int, port: int) -> Trial:
    recorder = subprocess.Popen([sys.executable, "-m", "sensor", "record", "-w", str(capture)],
                                stderr=subprocess.PIPE, text=True, cwd=ROOT)
    assert recorder.stderr is not None
    while "recording to" not in (line := recorder.stderr.readline()):
        if not line:
            raise SystemExit(f"recorder failed: {recorder.stderr.read()}")
    pid, achieved = flood(helper, calls, rate, port)
    recorder.send_signal(2)
    recorder.wait(timeout=60)
    src, reader = open_capture(str(capture))
    delivered, last_stats = 0, None
    with src:
        for event in reader:
            if isinstance(event, ev.Connect) and event.tgid == pid:
                delivered += 1
            elif isinstance(event, ev.Stats):
                last_stats = event
    kernel = last_stats.kernel_drops.get("connect", 0) if last_stats else -1
    probe = last_stats.probe_drops.get("connect", 0) if last_stats else -1
    return Trial(rate, calls, achieved, delivered, kernel, probe)



def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--rates", default="5000,10000,20000,40000,80000,0", help="0: as fast as it can")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        helper = build_helper(Path(tmp))
        port = closed_port()
        print(f"{'rate/s':>8} {'delivered':>22} {'slowdown (with/without)':>26} {'kernel drops':>13} "
              f"{'probe drops':>12} {'unaccounted':>12}")
        for rate in (int(r) for r in args.rates.split(",")):
            calls = int((rate or 200_000) * args.seconds)  # rate 0: as fast as it can
            fractions, slowdowns, kdrops, pdrops, lost = [], [], [], [], []
            for _ in range(args.repeat):
                _, baseline = flood(helper, calls, rate, port)
                trial = recorded_trial(helper, Path(tmp) / "cap", calls, rate, port)
                fractions.append(trial.delivered / calls)
                slowdowns.append(baseline / trial.achieved)
                kdrops.append(trial.kernel_drops)
                pdrops.append(trial.probe_drops)
                # Nothing lost silently: every call is delivered or counted as dropped.
                lost.append(calls - trial.delivered - trial.kernel_drops - trial.probe_drops)
            print(f"{rate:>8} {spread(fractions):>22} {spread(slowdowns):>26} {max(kdrops):>13} "
                  f"{max(pdrops):>12} {max(lost, key=abs):>12}", flush=True)


if __name__ == "__main__":
    main()
