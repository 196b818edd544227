"""The agent's own CPU at a steady event rate and idle, and the detection latency under that load.

A C helper (bench/helpers/steady_mix.c) makes a paced mix: fork+exec+exit of /bin/true (three
records each) and UDP connects (one each), 1,000 records a second by default. In each of
--rounds interleaved rounds, the CPU time (user + system, from /proc) over a --seconds window is
read for:
- the floor: a bare BCC ring-buffer reader in Python on the same BPF programs, which only counts
  the records it is given (what any Python reader pays);
- the agent (`gpusentry run --quiet --no-view`): the probe process and the aggregator with
  everything it started (the API, sinks), separately and together;
- the agent idle (no workload).
Then, with one API subscriber, the latency from each marker exec's kernel time to its receipt.

    .venv/bin/python -m bench.cost [--rounds 5] [--seconds 5] [--spawns 200] [--connects 400]

Needs root. Figures are % of one core; compare within one run.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import pwd
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc

from bench.figures import spread
from bench.pipeline import closed_port
from sensor.api.client import sensor_stub
from sensor.api.v1 import gpusentry_pb2 as pb

ROOT = Path(__file__).resolve().parents[1]
TICKS = os.sysconf("SC_CLK_TCK")


def build_mix(out: Path) -> Path:
    binary = out / "steady_mix"
    subprocess.run(["gcc", "-O2", "-o", str(binary), str(ROOT / "bench/helpers/steady_mix.c")], check=True)
    return binary


def cpu_seconds(pid: int) -> float:
    """User + system time of one process (all its threads), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def descendants(pid: int) -> list[int]:
    found = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(FileNotFoundError):
            for child in Path(f"/proc/{pid}/task/{tid}/children").read_text().split():
                found += [int(child), *descendants(int(child))]
    return found


@dataclass
class Window:
    """CPU % of one core over a window, for the probe (the top process) and the rest."""

    probe: float
    rest: float

    @property
    def total(self) -> float:
        return self.probe + self.rest


@contextlib.contextmanager
def cpu_window(top: int) -> Iterator[list[Window]]:
    result: list[Window] = []
    pids = descendants(top)
    before = (cpu_seconds(top), {p: cpu_seconds(p) for p in pids})
    started = time.monotonic()
    yield result
    elapsed = time.monotonic() - started
    rest = sum(cpu_seconds(p) - before[1][p] for p in pids if Path(f"/proc/{p}").exists())
    result.append(Window(100 * (cpu_seconds(top) - before[0]) / elapsed, 100 * rest / elapsed))


def run_mix(mix: Path, seconds: float, spawns: int, connects: int, port: int, marker: str) -> float:
    """The records per second the mix made (fork, exec and exit per spawn; one per connect)."""
    out = subprocess.run([str(mix), str(seconds), str(spawns), str(connects), str(port), marker],
                         capture_output=True, text=True, check=True).stdout.split()
    return (3 * int(out[1]) + int(out[2])) / float(out[3])


def start_agent(tmp: Path) -> tuple[subprocess.Popen[bytes], Path]:
    socket = tmp / "api.sock"
    with contextlib.suppress(KeyError):  # the agent's unprivileged side must reach its directory
        user = pwd.getpwnam("gpusentry")
        os.chown(tmp, user.pw_uid, user.pw_gid)
    agent = subprocess.Popen([sys.executable, "-m", "sensor", "run", "--quiet", "--no-view", "--socket", str(socket),
                              "--journal", str(tmp / "journal.db")],
                             cwd=ROOT, stderr=subprocess.PIPE, start_new_session=True)
    assert agent.stderr is not None
    for line in agent.stderr:
        if b"watching" in line:
            break
    threading.Thread(target=agent.stderr.read, daemon=True).start()  # never let its stderr fill
    while not socket.exists():
        time.sleep(0.05)
    return agent, socket


def start_floor_reader() -> subprocess.Popen[str]:
    reader = subprocess.Popen([sys.executable, "-m", "bench.cost_floor"], cwd=ROOT, stdout=subprocess.PIPE,
                              text=True, start_new_session=True)
    assert reader.stdout is not None
    if reader.stdout.readline().strip() != "ready":
        raise SystemExit("the floor reader did not start")
    return reader


def stop(proc: subprocess.Popen[bytes] | subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=30)


def latencies(socket: Path, mix: Path, seconds: float, spawns: int, connects: int, port: int) -> list[float]:
    """Milliseconds from each marker exec's kernel time to its receipt by one API subscriber."""
    marker = f"gs-cost-{time.monotonic_ns()}"
    got: list[float] = []
    stub = sensor_stub(grpc.insecure_channel(f"unix:{socket}"))
    stream = stub.Subscribe(pb.SubscribeRequest(events=True, event_kinds=[pb.EVENT_KIND_EXEC]))

    def read() -> None:
        with contextlib.suppress(grpc.RpcError):
            for response in stream:
                now_ns = time.time_ns()
                for event in response.events.events:
                    if marker in event.exec.argv:
                        got.append((now_ns - event.time.ToNanoseconds()) / 1e6)

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    while stub.GetStatus(pb.GetStatusRequest()).subscribers < 1:
        time.sleep(0.05)
    run_mix(mix, seconds, spawns, connects, port, marker)
    expected = int(seconds * spawns)
    deadline = time.monotonic() + 10
    while len(got) < expected and time.monotonic() < deadline:
        time.sleep(0.05)
    stream.cancel()
    return got


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@dataclass
class Rounds:
    floor: list[float]  # % of a core: the bare reader under the load
    agent: list[Window]  # the agent under the load
    idle: list[Window]  # the agent without it
    rates: list[float]  # records/s the mix made


def measure(mix: Path, tmp: Path, args: argparse.Namespace, port: int) -> Rounds:
    """Interleaved rounds: the floor reader under the load, then the agent under it and idle."""
    got = Rounds([], [], [], [])
    for _ in range(args.rounds):
        reader = start_floor_reader()
        with cpu_window(reader.pid) as window:
            run_mix(mix, args.seconds, args.spawns, args.connects, port, "gs-cost")
        stop(reader)
        got.floor.append(window[0].total)
        agent, _ = start_agent(tmp)
        try:
            with cpu_window(agent.pid) as window:
                got.rates.append(run_mix(mix, args.seconds, args.spawns, args.connects, port, "gs-cost"))
            got.agent.append(window[0])
            with cpu_window(agent.pid) as window:
                time.sleep(args.seconds)  # the idle window: nothing to wait for
            got.idle.append(window[0])
        finally:
            stop(agent)
    return got


def report(got: Rounds, lat: list[float], args: argparse.Namespace) -> None:
    pct = "{:.2f}"
    print(f"steady load: {spread(got.rates, '{:,.0f}')} records/s ({args.spawns} fork+exec+exit and "
          f"{args.connects} UDP connects per second), {args.rounds} rounds of {args.seconds:g} s; "
          "CPU as % of one core")
    rows = [("floor: bare Python reader, counting", got.floor),
            ("agent: probe", [w.probe for w in got.agent]),
            ("agent: aggregator (and API)", [w.rest for w in got.agent]),
            ("agent: total", [w.total for w in got.agent]),
            ("agent idle: total", [w.total for w in got.idle])]
    print(f"{'':36} {'median [min-max]':>22}")
    for label, values in rows:
        print(f"{label:36} {spread(values, pct):>22}")
    ratios = [a.total / max(f, 0.01) for a, f in zip(got.agent, got.floor, strict=True)]
    print(f"{'agent total / floor':36} {spread(ratios, '{:.1f}'):>22}")
    expected = int(args.seconds * args.spawns)
    if lat:
        print(f"latency, marker exec -> API subscriber, under the load ({len(lat)} of {expected}): "
              f"median {percentile(lat, 0.5):.1f} ms, p99 {percentile(lat, 0.99):.1f} ms, max {max(lat):.1f} ms")
    else:
        print("latency: no marker exec reached the subscriber")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--spawns", type=int, default=200, help="fork+exec+exit per second (3 records each)")
    parser.add_argument("--connects", type=int, default=400, help="UDP connects per second (1 record each)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("bench.cost needs root")
    port = closed_port()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        mix = build_mix(tmp)
        got = measure(mix, tmp, args, port)
        agent, socket = start_agent(tmp)
        try:
            lat = latencies(socket, mix, args.seconds, args.spawns, args.connects, port)
        finally:
            stop(agent)
    report(got, lat, args)


if __name__ == "__main__":
    main()
