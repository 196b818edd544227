"""What sizing GPU memory in the kernel costs: the ioctl exit program per call, on memory
allocations and frees (sizes read from the allocation parameters, per-process sums, a handle
map) against the same RM_ALLOC + RM_FREE pattern on a class that is not memory.

Both workloads are replayed by the CUDA-like client through the fake driver (sensor/fakegpu),
interleaved, --rounds times, under the real programs; the kernel's own per-program statistics
(kernel.bpf_stats_enabled, on for the run) give the exit and entry programs' mean run time per
call. The fake driver's FUSE round trip makes each ioctl slow, which does not matter here: only
the programs' own time is measured. Other processes' ioctls on the host fire the same programs
(cheaply: not a GPU file) and are in both windows alike.

With --baseline REV the programs of that git revision (sensor/bpf as committed there) run the
same workloads in the same rounds: what the change costs, measured in one run.

    .venv/bin/python -m bench.gpuprofile [--rounds 5] [--pairs 3000] [--baseline REV]

Needs root and FUSE. Compare the rows of one run.
"""

from __future__ import annotations

import argparse
import contextlib
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import yaml

from bench.bpfcost import bpf_stats_enabled, load_variant, run_stats
from bench.figures import spread
from sensor.fakegpu.session import fake_driver, replay
from sensor.probe import program

ROOT = Path(__file__).resolve().parents[1]
BRINGUP = ROOT / "tests" / "fixtures" / "gpu" / "hopper-bringup.yaml"
HOOKS = ("syscalls:sys_enter_ioctl", "syscalls:sys_exit_ioctl")
# workload -> the allocation each pair makes (then frees)
WORKLOADS = {
    "memory (0x40, 1 MiB)": {"fd": "ctl", "parent": "device", "class": 0x40, "bytes": 1 << 20, "as": "buf"},
    "not memory (0x90F1)": {"fd": "ctl", "parent": "device", "class": 0x90F1, "as": "buf"},
}


def fixture(tmp: Path, name: str, alloc: dict[str, object], pairs: int) -> Path:
    path = tmp / f"workload-{alloc['class']:x}.yaml"
    path.write_text(yaml.safe_dump({
        "format": 1, "name": name, "driver": "595.45.04", "arch": "hopper", "source": "bench/gpuprofile.py",
        "include": [str(BRINGUP)],
        "steps": [{"repeat": {"times": pairs, "steps": [{"alloc": alloc}, {"free": {"fd": "ctl", "object": "buf"}}]}}],
    }))
    return path


def export_bpf(revision: str, into: Path) -> Path:
    """sensor/bpf as committed at `revision`, written under `into`."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", revision, "sensor/bpf"], capture_output=True,
                             check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into / "sensor" / "bpf"


@contextlib.contextmanager
def programs_from(bpf_dir: Path | None) -> Iterator[None]:
    """Load the programs from `bpf_dir` (None: this tree's) while the block runs."""
    saved = program.BPF_DIR
    program.BPF_DIR = bpf_dir or saved
    try:
        yield
    finally:
        program.BPF_DIR = saved


def measure(driver: Path, fixtures: dict[str, Path], bpf_dir: Path | None,
            per_call: dict[str, dict[str, list[float]]]) -> int:
    """One round of every workload under one set of programs; returns their ring drops."""
    with programs_from(bpf_dir), load_variant("ours") as loaded:
        assert loaded is not None
        for name, path in fixtures.items():
            before = {hook: run_stats(loaded.fds[hook]) for hook in HOOKS}
            result = replay(driver, path)
            after = {hook: run_stats(loaded.fds[hook]) for hook in HOOKS}
            if result.returncode != 0:
                raise SystemExit(f"replay of {name} failed: {result.stderr}")
            for hook in HOOKS:
                ns, calls = (a - b for a, b in zip(after[hook], before[hook], strict=True))
                per_call.setdefault(name, {}).setdefault(hook, []).append(ns / max(calls, 1))
            loaded.drain()
        return loaded.drops()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--pairs", type=int, default=3000)
    parser.add_argument("--baseline", metavar="REV", help="also run the programs of this git revision")
    args = parser.parse_args()
    per_call: dict[str, dict[str, list[float]]] = {}
    drops = 0
    with tempfile.TemporaryDirectory() as tmp_name, fake_driver("hopper") as driver, bpf_stats_enabled():
        tmp = Path(tmp_name)
        fixtures = {name: fixture(tmp, name, alloc, args.pairs) for name, alloc in WORKLOADS.items()}
        variants: dict[str, Path | None] = {"this tree": None}
        if args.baseline:
            variants[args.baseline] = export_bpf(args.baseline, tmp)
        for _ in range(args.rounds):
            for label, bpf_dir in variants.items():
                rows = {f"{name}, {label}": path for name, path in fixtures.items()}
                drops += measure(driver, rows, bpf_dir, per_call)
    print(f"ns per call of each program, median [min-max] over {args.rounds} rounds of {args.pairs} "
          f"RM_ALLOC + RM_FREE pairs (ring drops: {drops})")
    for name, by_hook in per_call.items():
        cells = "  ".join(f"{hook.split(':')[1]} {spread(values, '{:,.0f}')}" for hook, values in by_hook.items())
        print(f"  {name:34} {cells}")


if __name__ == "__main__":
    main()
