"""Time from `gpusentry run` to its first event, and the agent's memory.

Starts the agent as the README's command does, execs /bin/true with a marker every 20 ms
until the agent prints it, and reports the time from launch to that line (median and spread
over --repeat runs), then the resident memory of the probe and aggregator processes after
2000 execs, from /proc.

    .venv/bin/python -m bench.startup [--repeat 5]
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def children(pid: int) -> list[int]:
    return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def one_run(load: bool) -> tuple[float, int, int]:
    marker = f"startup-marker-{time.monotonic_ns()}"
    launched = time.monotonic()
    agent = subprocess.Popen([sys.executable, "-m", "sensor", "run", "--json"], stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, text=True, cwd=ROOT)
    assert agent.stdout is not None
    seen = threading.Event()

    def trigger() -> None:
        while not seen.wait(0.02):
            subprocess.run(["/bin/true", marker])

    threading.Thread(target=trigger, daemon=True).start()
    for line in agent.stdout:
        if marker in line:
            break
    first_event = time.monotonic() - launched
    seen.set()
    probe_kib = aggregator_kib = 0
    if load:
        # A burst of process activity, then memory of both halves.
        subprocess.run(["/bin/sh", "-c", "for i in $(seq 2000); do /bin/true; done"], check=True)
        drain = threading.Thread(target=lambda: [None for _ in agent.stdout], daemon=True)  # type: ignore[union-attr]
        drain.start()
        time.sleep(2)  # let the agent settle before reading RSS (a measurement pause, not a test wait)
        probe_kib = rss_kib(agent.pid)
        aggregator_kib = sum(rss_kib(c) for c in children(agent.pid))
    agent.send_signal(signal.SIGINT)
    agent.wait(timeout=30)
    return first_event, probe_kib, aggregator_kib


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("bench.startup needs root")
    times = [one_run(load=False)[0] for _ in range(args.repeat)]
    _, probe_kib, aggregator_kib = one_run(load=True)
    print(f"launch to first event: median {statistics.median(times):.2f} s "
          f"[{min(times):.2f}-{max(times):.2f}] over {len(times)} runs")
    print(f"memory after 2000 execs: probe {probe_kib / 1024:.0f} MiB RSS, "
          f"aggregator {aggregator_kib / 1024:.0f} MiB RSS")


if __name__ == "__main__":
    main()
