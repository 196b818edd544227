"""Time from `gpusentry run` to its first event, and the agent's memory.

Starts the agent as the README's command does, execs /bin/true with a marker every 20 ms
until the agent prints it, and reports the time from launch to that line (median and spread
over --repeat runs), then the memory of each of the agent's long-lived processes (the probe,
the aggregator, the API's stream process, ...) at start and after --processes short-lived
processes: resident (RSS) and proportional (PSS: shared pages split among the processes that
map them, so the processes' PSS add up to what they hold together), from /proc.

    .venv/bin/python -m bench.startup [--repeat 5] [--processes 20000]
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
SOCKET, JOURNAL = "/tmp/gpusentry-bench-startup.sock", "/tmp/gpusentry-bench-startup.db"  # not the installed agent's


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def pss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1])
    return 0


def children(pid: int) -> list[int]:
    return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def agent_tree(pid: int) -> dict[str, int]:
    """The agent's processes by role: the probe (the agent's own), and its descendants by the
    module or command they run (`sensor aggregate`, `sensor.api.stream`, ...)."""
    found, todo = {"probe": pid}, children(pid)
    while todo:
        child = todo.pop()
        argv = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
        role = next((a.decode() for a in argv[1:] if a and not a.startswith(b"-") and a != b"sensor"), "?")
        found[role if role not in found else f"{role}-{child}"] = child
        todo += children(child)
    return found


def memory(pid: int) -> dict[str, tuple[int, int]]:
    """(RSS, PSS) in KiB of each of the agent's processes, by role."""
    return {role: (rss_kib(p), pss_kib(p)) for role, p in agent_tree(pid).items()}


def print_memory(label: str, got: dict[str, tuple[int, int]]) -> None:
    parts = ", ".join(f"{role} {rss / 1024:.0f}/{pss / 1024:.0f}" for role, (rss, pss) in got.items())
    rss_total, pss_total = (sum(v[i] for v in got.values()) / 1024 for i in (0, 1))
    print(f"memory {label} (MiB RSS/PSS): {parts}; together RSS {rss_total:.0f}, PSS {pss_total:.0f}")


def one_run(processes: int = 0) -> tuple[float, dict[str, tuple[int, int]], dict[str, tuple[int, int]]]:
    marker = f"startup-marker-{time.monotonic_ns()}"
    launched = time.monotonic()
    agent = subprocess.Popen([sys.executable, "-m", "sensor", "run", "--json", "--output", "events",
                              "--socket", SOCKET, "--journal", JOURNAL], stdout=subprocess.PIPE,
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
    at_start = after = {}
    if processes:
        drain = threading.Thread(target=lambda: [None for _ in agent.stdout], daemon=True)  # type: ignore[union-attr]
        drain.start()
        time.sleep(2)  # let the agent settle before reading memory (a measurement pause, not a test wait)
        at_start = memory(agent.pid)
        subprocess.run(["/bin/sh", "-c", f"i=0; while [ $i -lt {processes} ]; do /bin/true; i=$((i+1)); done"],
                       check=True)
        time.sleep(2)
        after = memory(agent.pid)
    agent.send_signal(signal.SIGINT)
    agent.wait(timeout=30)
    return first_event, at_start, after


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--processes", type=int, default=20000, help="short-lived processes before the second reading")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("bench.startup needs root")
    times = [one_run()[0] for _ in range(args.repeat)]
    _, at_start, after = one_run(args.processes)
    print(f"launch to first event: median {statistics.median(times):.2f} s "
          f"[{min(times):.2f}-{max(times):.2f}] over {len(times)} runs")
    print_memory("at start", at_start)
    print_memory(f"after {args.processes} processes", after)


if __name__ == "__main__":
    main()
