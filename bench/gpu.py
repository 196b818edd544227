"""What the GPU ioctl path absorbs, and what it costs.

1. A flood of RM_ALLOC ioctls on a file the sensor takes for nvidiactl, from 1 and from 4
   processes at once: ioctls per second with and without the probe loaded (the slowdown), whether the
   kernel counted every call, and how many records per second reached the aggregator (held
   to each process's record budget).
2. The cost of the openat hook, which inspects every successful open on the host: an
   open/close loop with and without the probe.

    .venv/bin/python -m bench.gpu [--count 1000000] [--repeat 3]

Needs root. Baselines run in the same invocation; compare ratios, not absolute rates.
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
import threading
from collections.abc import Iterable
from pathlib import Path

from bench.figures import spread
from sensor import events as ev
from sensor.aggregator.aggregator import Aggregator
from sensor.probe.probe import Probe
from sensor.probe.program import ProbeConfig

ROOT = Path(__file__).resolve().parents[1]


class CountingSink:
    """Feeds an Aggregator, as the agent does; counts GPU records and notes the final counters."""

    def __init__(self) -> None:
        self.aggregator = Aggregator()
        self.records: dict[int, int] = {}
        self.lock = threading.Lock()

    def write_payloads(self, payloads: Iterable[bytes]) -> None:
        with self.lock:
            for payload in payloads:
                event = ev.decode(payload)
                self.aggregator.handle(event)
                if isinstance(event, ev.GpuIoctl):
                    self.records[event.tgid] = self.records.get(event.tgid, 0) + 1

    def calls(self, pid: int) -> int:
        with self.lock:
            return sum(sum(c.calls for c in s.counts.values()) for s in self.aggregator.gpu if s.process.pid == pid)


def build(tmp: Path) -> dict[str, Path]:
    out = {}
    for name, source in (("gpu_ioctls", ROOT / "tests/kernel/helpers/gpu_ioctls.c"),
                         ("open_loop", ROOT / "bench/helpers/open_loop.c")):
        out[name] = tmp / name
        subprocess.run(["gcc", "-O2", "-o", str(out[name]), str(source)], check=True)
    return out


def parallel(commands: list[list[str]]) -> list[tuple[int, int, float]]:
    procs = [subprocess.Popen(c, stdout=subprocess.PIPE, text=True) for c in commands]
    results = []
    for proc in procs:
        out, _ = proc.communicate()
        pid, count, seconds = out.split()
        results.append((int(pid), int(count), float(seconds)))
    return results


def flood(helpers: dict[str, Path], target: Path, count: int, procs: int) -> list[tuple[int, int, float]]:
    return parallel([[str(helpers["gpu_ioctls"]), "flood", str(target), str(count)] for _ in range(procs)])


def rate(results: list[tuple[int, int, float]]) -> float:
    return sum(count for _, count, _ in results) / max(seconds for _, _, seconds in results)



def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        helpers = build(tmp)
        target = tmp / "nvidiactl"
        target.touch()
        plain = tmp / "plain-file"
        plain.touch()
        rows: dict[str, dict[str, list[float]]] = {}
        for _ in range(args.repeat):
            baselines = {p: rate(flood(helpers, target, args.count // p, p)) for p in (1, 4)}
            open_base = rate(parallel([[str(helpers["open_loop"]), str(plain), str(args.count)]]))
            sink = CountingSink()
            probe = Probe(ProbeConfig(), sink)
            probe.start()
            try:
                for procs in (1, 4):
                    results = flood(helpers, target, args.count // procs, procs)
                    exact = _wait_exact(sink, results)
                    seconds = max(s for _, _, s in results)
                    records = sum(sink.records.get(pid, 0) for pid, _, _ in results)
                    row = rows.setdefault(f"flood x{procs}", {})
                    row.setdefault("ioctls/s with probe", []).append(rate(results))
                    row.setdefault("slowdown", []).append(baselines[procs] / rate(results))
                    row.setdefault("counted exactly", []).append(float(exact))
                    row.setdefault("records/s to aggregator", []).append(records / seconds)
                    row.setdefault("kernel drops", []).append(float(sum(probe.kernel_drops().values())))
                with_probe = rate(parallel([[str(helpers["open_loop"]), str(plain), str(args.count)]]))
                rows.setdefault("open+close", {}).setdefault("slowdown", []).append(open_base / with_probe)
                rows["open+close"].setdefault("opens/s with probe", []).append(with_probe)
            finally:
                probe.stop()
        for name, row in rows.items():
            print(name)
            for metric, values in row.items():
                print(f"  {metric:26} {spread(values, '{:,.3f}' if max(values) < 100 else '{:,.0f}')}")


def _wait_exact(sink: CountingSink, results: list[tuple[int, int, float]]) -> bool:
    """Whether the kernel's counters, read every second, reach exactly each process's calls."""
    done = threading.Event()
    for _ in range(100):
        if all(sink.calls(pid) == count for pid, count, _ in results):
            return True
        done.wait(0.1)
    return False


if __name__ == "__main__":
    main()
