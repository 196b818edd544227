"""What each BPF program costs per call, against the floor of an empty and a counting program.

A static C helper (bench/helpers/hook_loop.c) runs one syscall pattern in a tight loop:
fork+exec+exit, UDP connect() to loopback, openat+close of a regular file, a 64-byte send and
its recv on a loopback TCP connection (the per-socket byte counts), getpid (no program hooks it:
it shows what merely having syscall tracepoints enabled costs), and an io_uring NOP (what
following io_uring opens costs every other io_uring request). In each of
--rounds interleaved rounds the same workloads run under:
- bare: no program of ours loaded;
- empty: a program that returns at once on exactly the hooks sensor/bpf/*.c uses;
- counting: a per-CPU array increment on the same hooks;
- ours: the real programs (sensor.probe.program.load), their rings drained after each batch.
Batches are sized so that every record fits in the rings between drains: the real programs
are measured on their send path, never on the ring-full path (their drop counters must stay 0).

The kernel's own per-program statistics (kernel.bpf_stats_enabled, on for the run and restored
after) give each program's run time and call count; each figure is the median [min-max] over
the rounds.

    .venv/bin/python -m bench.bpfcost [--rounds 5] [--scale 1.0]

Needs root. Other tracing programs on the host make every variant slower, bare included: the
run says how many it found. Compare figures within one run.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import re
import struct
import subprocess
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.figures import spread
from bench.pipeline import closed_port
from sensor.probe import program
from sensor.probe.features import bpf_syscall

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ("bare", "empty", "counting", "ours")
STATS_SYSCTL = Path("/proc/sys/kernel/bpf_stats_enabled")

# bpf(2) commands and the offsets of struct bpf_prog_info fields (uapi linux/bpf.h: stable ABI).
BPF_PROG_GET_NEXT_ID, BPF_PROG_GET_FD_BY_ID, BPF_OBJ_GET_INFO_BY_FD = 11, 13, 15
INFO_SIZE, INFO_TYPE, INFO_RUN_TIME_NS, INFO_RUN_CNT = 232, 0, 192, 200
TRACING_PROG_TYPES = {2, 5, 17, 26}  # kprobe, tracepoint, raw tracepoint, tracing (fentry)
SYS_BPF = bpf_syscall() or 321  # the project's table of bpf(2) numbers by architecture
DRAIN_S = 0.005  # how often the real programs' rings are drained while they are loaded


@dataclass(frozen=True)
class Workload:
    name: str  # what one iteration is
    mode: str  # hook_loop's first argument
    count: int  # iterations per batch
    batches: int  # the rings are drained between batches
    hooks: tuple[str, ...] = ()  # the hooks one iteration fires; () for none of ours


@dataclass
class Sample:
    """One variant's figures in one round."""

    ns_per_iteration: dict[str, float] = field(default_factory=dict)  # by workload
    bpf_ns_per_iteration: dict[str, float] = field(default_factory=dict)  # by workload
    hook_ns: dict[str, int] = field(default_factory=dict)  # run time by hook, all workloads
    hook_calls: dict[str, int] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# The kernel's per-program statistics


def _bpf(cmd: int, attr: ctypes.Array[ctypes.c_char]) -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    ret = int(libc.syscall(SYS_BPF, cmd, attr, len(attr)))
    if ret < 0:
        raise OSError(ctypes.get_errno(), f"bpf({cmd}) failed")
    return ret


def prog_info(fd: int) -> bytes:
    info = ctypes.create_string_buffer(INFO_SIZE)
    attr = ctypes.create_string_buffer(struct.pack("=IIQ", fd, INFO_SIZE, ctypes.addressof(info)), 16)
    _bpf(BPF_OBJ_GET_INFO_BY_FD, attr)
    return info.raw


def run_stats(fd: int) -> tuple[int, int]:
    """(run_time_ns, run_cnt) of one program, counted while kernel.bpf_stats_enabled is 1."""
    raw = prog_info(fd)
    return (int.from_bytes(raw[INFO_RUN_TIME_NS:INFO_RUN_TIME_NS + 8], "little"),
            int.from_bytes(raw[INFO_RUN_CNT:INFO_RUN_CNT + 8], "little"))


def tracing_programs() -> int:
    """Tracing programs loaded on the host now (anyone's)."""
    found, prog_id = 0, 0
    while True:
        attr = ctypes.create_string_buffer(struct.pack("=I", prog_id), 16)
        try:
            _bpf(BPF_PROG_GET_NEXT_ID, attr)
        except OSError:
            return found
        prog_id = int.from_bytes(attr.raw[4:8], "little")
        with contextlib.suppress(OSError):
            fd = _bpf(BPF_PROG_GET_FD_BY_ID, ctypes.create_string_buffer(struct.pack("=I", prog_id), 16))
            try:
                found += int.from_bytes(prog_info(fd)[INFO_TYPE:INFO_TYPE + 4], "little") in TRACING_PROG_TYPES
            finally:
                os.close(fd)


@contextlib.contextmanager
def bpf_stats_enabled() -> Iterator[None]:
    saved = STATS_SYSCTL.read_text().strip()
    STATS_SYSCTL.write_text("1")
    try:
        yield
    finally:
        STATS_SYSCTL.write_text(saved)


# ---------------------------------------------------------------------------------------------
# The programs under test

HOOK_PATTERN = re.compile(r"^(RAW_TRACEPOINT_PROBE\((\w+)\)|TRACEPOINT_PROBE\((\w+),\s*(\w+)\))", re.M)


def hooks() -> list[str]:
    """Every hook sensor/bpf/*.c attaches to: "category:name", or "raw:name"."""
    found = []
    for name in program.PROGRAM_FILES:
        for match in HOOK_PATTERN.finditer((program.BPF_DIR / name).read_text()):
            found.append(f"raw:{match.group(2)}" if match.group(2) else f"{match.group(3)}:{match.group(4)}")
    return found


def hook_of(func_name: bytes | str) -> str:
    """BCC's function name for a hook ("tracepoint__sched__sched_process_exec") as "sched:sched_process_exec"."""
    name = func_name.decode() if isinstance(func_name, bytes) else func_name
    if name.startswith("raw_tracepoint__"):
        return "raw:" + name.removeprefix("raw_tracepoint__")
    category, _, event = name.removeprefix("tracepoint__").partition("__")
    return f"{category}:{event}"


def stub_source(hook_names: list[str], counting: bool) -> str:
    """The floor: on each hook, return at once, or count the call in a per-CPU array."""
    lines = [f"BPF_PERCPU_ARRAY(calls, u64, {len(hook_names)});"] if counting else []
    for index, hook in enumerate(hook_names):
        category, _, event = hook.partition(":")
        head = f"RAW_TRACEPOINT_PROBE({event})" if category == "raw" else f"TRACEPOINT_PROBE({category}, {event})"
        body = f"u32 key = {index}; u64 *n = calls.lookup(&key); if (n) (*n)++; " if counting else ""
        lines.append(f"{head} {{ {body}return 0; }}")
    return "\n".join(lines)


@dataclass
class Loaded:
    """A loaded variant: its programs' fds by hook, and how to empty its rings."""

    fds: dict[str, int]
    drain: Callable[[], None]
    drops: Callable[[], int]


def loaded_from(bpf: Any, drain: Callable[[], None] = lambda: None, drops: Callable[[], int] = lambda: 0) -> Loaded:
    return Loaded({hook_of(name): fn.fd for name, fn in bpf.funcs.items()}, drain, drops)


@contextlib.contextmanager
def load_variant(variant: str) -> Iterator[Loaded | None]:
    if variant == "bare":
        yield None
        return
    from bcc import BPF

    if variant == "ours":
        bpf = program.load(program.ProbeConfig())
        stop = threading.Event()
        # Drained all along as well as after each batch: the host's other processes fill the
        # rings too, and a full ring would time the programs' drop path, not their send path.
        drainer = threading.Thread(target=drain_until, args=(bpf, stop), daemon=True)
        drainer.start()
        try:
            yield ours_loaded(bpf)
        finally:
            stop.set()
            drainer.join()
    else:
        bpf = BPF(text=stub_source(hooks(), counting=variant == "counting").encode())
        yield loaded_from(bpf)
    bpf.cleanup()


def drain_until(bpf: Any, stop: threading.Event) -> None:
    while not stop.wait(DRAIN_S):
        bpf.ring_buffer_consume()


def ours_loaded(bpf: Any) -> Loaded:
    """The real programs, with a reader on both rings that only counts what it is given."""
    received = [0]

    def count(_ctx: Any, _data: Any, _size: int) -> None:
        received[0] += 1

    bpf["events"].open_ring_buffer(count)
    bpf["decisive"].open_ring_buffer(count)

    def drops() -> int:
        return sum(sum(per_cpu) for per_cpu in bpf["ringbuf_drops"].values())

    return loaded_from(bpf, bpf.ring_buffer_consume, drops)


# ---------------------------------------------------------------------------------------------
# Running the workloads


def build_helper(out: Path) -> Path:
    binary = out / "hook_loop"
    subprocess.run(["gcc", "-O2", "-static", "-o", str(binary), str(ROOT / "bench/helpers/hook_loop.c")],
                   check=True)
    return binary


LIFECYCLE_HOOKS = ("raw:sched_process_fork", "syscalls:sys_enter_execve", "syscalls:sys_exit_execve",
                   "sched:sched_process_exec", "sched:sched_process_exit")


def workloads(scale: float) -> list[Workload]:
    # Counts keep each batch's records within one 4 MiB ring: 20,000 connect records of 160
    # bytes, 1,000 execs with their forks and exits.
    return [
        Workload("fork+exec+exit", "forkexec", int(500 * scale), 1, LIFECYCLE_HOOKS),
        Workload("connect", "connect", int(20000 * scale), 3,
                 ("syscalls:sys_enter_connect", "syscalls:sys_exit_connect")),
        Workload("open+close", "open", int(50000 * scale), 2, ("syscalls:sys_exit_openat",)),
        Workload("send+recv (TCP)", "sendrecv", int(200000 * scale), 1,
                 ("sock:sock_send_length", "sock:sock_recv_length")),
        Workload("getpid", "getpid", int(500000 * scale), 1),
        Workload("io_uring nop", "uring", int(100000 * scale), 1,
                 ("io_uring:io_uring_submit_req", "io_uring:io_uring_complete")),
    ]


def snapshot(loaded: Loaded | None) -> dict[str, tuple[int, int]]:
    return {hook: run_stats(fd) for hook, fd in loaded.fds.items()} if loaded else {}


def run_workload(helper: Path, work: Workload, extra: str, loaded: Loaded | None, sample: Sample) -> None:
    elapsed = 0
    window_ns: dict[str, int] = {}
    window_calls: dict[str, int] = {}
    for _ in range(work.batches):
        before = snapshot(loaded)
        out = subprocess.run([str(helper), work.mode, str(work.count), extra], capture_output=True, text=True,
                             check=True)
        after = snapshot(loaded)
        elapsed += int(out.stdout)
        for hook, (run_ns, calls) in after.items():
            sample.hook_ns[hook] = sample.hook_ns.get(hook, 0) + run_ns - before[hook][0]
            sample.hook_calls[hook] = sample.hook_calls.get(hook, 0) + calls - before[hook][1]
            window_ns[hook] = window_ns.get(hook, 0) + run_ns - before[hook][0]
            window_calls[hook] = window_calls.get(hook, 0) + calls - before[hook][1]
        if loaded:
            loaded.drain()
    sample.ns_per_iteration[work.name] = elapsed / (work.count * work.batches)
    # One call of each of the workload's hooks per iteration, at the hook's mean cost in this
    # window: the host's other processes fire the same hooks, so totals / iterations would
    # count their calls too.
    sample.bpf_ns_per_iteration[work.name] = sum(window_ns[h] / window_calls[h] for h in work.hooks
                                                 if window_calls.get(h))


def run_round(helper: Path, works: list[Workload], extras: dict[str, str]) -> tuple[dict[str, Sample], int]:
    """Every variant once; returns the samples and the real programs' ring drops."""
    samples: dict[str, Sample] = {}
    drops = 0
    for variant in VARIANTS:
        sample = samples[variant] = Sample()
        with load_variant(variant) as loaded:
            for work in works:
                run_workload(helper, work, extras[work.mode], loaded, sample)
            if loaded:
                drops += loaded.drops()
    return samples, drops


# ---------------------------------------------------------------------------------------------
# The report


def hook_cell(rounds: list[dict[str, Sample]], variant: str, hook: str) -> tuple[str, list[float]]:
    values = [r[variant].hook_ns[hook] / r[variant].hook_calls[hook] for r in rounds
              if r[variant].hook_calls.get(hook)]
    return (spread(values, "{:.0f}") if values else "-"), values


def ratio_cell(ours: list[float], floor: list[float]) -> str:
    # A floor under 1 ns is no floor (a workload none of the hooks is for): no ratio.
    if not ours or len(ours) != len(floor) or min(floor) < 1:
        return "-"
    return spread([o / f for o, f in zip(ours, floor, strict=True)], "{:.2f}")


def row(label: str, cells: list[str]) -> str:
    return f"{label:<34} " + " ".join(f"{cell:>20}" for cell in cells)


def report(rounds: list[dict[str, Sample]], works: list[Workload]) -> list[str]:
    lines = [row("hook (BPF ns per call)", ["empty", "counting", "ours", "ours/counting"])]
    for hook in hooks():
        cells = [hook_cell(rounds, v, hook) for v in ("empty", "counting", "ours")]
        lines.append(row(hook, [c[0] for c in cells] + [ratio_cell(cells[2][1], cells[1][1])]))
    lines.append("")
    lines.append(row("workload (BPF ns per iteration)", ["empty", "counting", "ours", "ours/counting"]))
    for work in works:
        values = {v: [r[v].bpf_ns_per_iteration[work.name] for r in rounds] for v in VARIANTS}
        lines.append(row(work.name, [spread(values[v], "{:.0f}") for v in ("empty", "counting", "ours")]
                         + [ratio_cell(values["ours"], values["counting"])]))
    lines.append("")
    lines.append(row("workload (slowdown vs bare)", ["bare ns/iteration", "empty", "counting", "ours"]))
    for work in works:
        bare = [r["bare"].ns_per_iteration[work.name] for r in rounds]
        ratios = [spread([r[v].ns_per_iteration[work.name] / b for r, b in zip(rounds, bare, strict=True)])
                  for v in ("empty", "counting", "ours")]
        lines.append(row(work.name, [spread(bare, "{:.0f}"), *ratios]))
    return lines


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every workload's iterations")
    parser.add_argument("--only", default="",
                        help="comma-separated workload modes (forkexec,connect,open,sendrecv,getpid,uring)")
    args = parser.parse_args()
    works = [w for w in workloads(args.scale) if not args.only or w.mode in args.only.split(",")]
    rounds: list[dict[str, Sample]] = []
    total_drops = 0
    others = tracing_programs()
    with tempfile.TemporaryDirectory() as tmp, bpf_stats_enabled():
        helper = build_helper(Path(tmp))
        plain = Path(tmp) / "plain-file"
        plain.write_bytes(b"x")
        extras = {"forkexec": "", "connect": str(closed_port()), "open": str(plain), "sendrecv": "", "getpid": "",
                  "uring": ""}
        for number in range(args.rounds):
            samples, drops = run_round(helper, works, extras)
            rounds.append(samples)
            total_drops += drops
            print(f"round {number + 1}/{args.rounds} done", flush=True)
    print("\n".join(report(rounds, works)))
    print(f"\n{args.rounds} rounds; ring-buffer drops of the real programs: {total_drops} (must be 0); "
          f"other tracing programs loaded on the host at start: {others}")


if __name__ == "__main__":
    main()
