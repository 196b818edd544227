"""What the API costs the sensor and delivers: probe drops, the aggregator's throughput and CPU,
and the events each subscriber receives, with 0 (the same-run baseline), 1 and 20 firehose
subscribers; then the latency from the kernel event to a subscriber.

Runs the real agent (`gpusentry run --quiet` with its API on a temporary socket). Throughput:
a C helper makes connect() calls at a fixed rate (each one is a connect event); every
subscriber (its own process) counts the events of that helper it receives. The sensor's side
comes from GetStatus (drops at the probe's queue and in the kernel, events handled) and from
/proc (CPU time of the aggregator's process and of the processes it started, the API's among
them). Rounds interleave the subscriber counts, so each count has its baseline in the same run;
figures are the median [min-max] over the rounds. Latency: execs of a marker at 50 per second;
each subscriber notes, for each, the wall time at receipt minus the event's kernel time.

    .venv/bin/python -m bench.api [--rate 30000] [--seconds 3] [--subscribers 0,1,20] [--rounds 3]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pwd
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from bench.figures import spread
from bench.pipeline import build_helper, closed_port
from sensor.api.client import sensor_stub
from sensor.api.v1 import gpusentry_pb2 as pb

ROOT = Path(__file__).resolve().parents[1]
TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class Agent:
    process: subprocess.Popen[bytes]
    socket: Path
    aggregator_pid: int


def start_agent(tmp: Path) -> Agent:
    socket = tmp / "api.sock"
    with contextlib.suppress(KeyError):  # the agent's unprivileged side must be able to use it
        agent_user = pwd.getpwnam("gpusentry")
        os.chown(tmp, agent_user.pw_uid, agent_user.pw_gid)
    agent = subprocess.Popen([sys.executable, "-m", "sensor", "run", "--quiet", "--no-view", "--socket", str(socket),
                              "--journal", str(tmp / "journal.db"), "--max-subscribers", "64"],
                             cwd=ROOT, stderr=subprocess.PIPE, start_new_session=True)
    assert agent.stderr is not None
    aggregator_pid = 0
    for line in agent.stderr:
        if found := re.search(rb"aggregator pid (\d+)", line):
            aggregator_pid = int(found.group(1))
            break
    while not socket.exists():
        time.sleep(0.05)
    return Agent(agent, socket, aggregator_pid)


def cpu_seconds(pid: int) -> float:
    """CPU time of a process and of its descendants that are still running."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        children = [int(c) for t in Path(f"/proc/{pid}/task").iterdir()
                    for c in (t / "children").read_text().split()]
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICKS + sum(cpu_seconds(c) for c in children)


def own_cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICKS


@dataclass
class Sensor:
    """What the agent says about itself, and its CPU, at one moment."""

    probe_drops: int
    kernel_drops: int
    handled: int  # events the aggregator handled, every kind
    aggregator_cpu: float  # the aggregator's own process
    children_cpu: float  # the processes it started (the API's, the sinks')


def sensor_now(stub: Any, agent: Agent) -> Sensor:
    status = stub.GetStatus(pb.GetStatusRequest())
    probe = sum(d.count for d in status.drops if d.hop == "probe" and d.what.startswith("queue full"))
    kernel = sum(d.count for d in status.drops if d.hop == "kernel" and d.what.startswith("ring buffer"))
    own = own_cpu_seconds(agent.aggregator_pid)
    return Sensor(probe, kernel, sum(status.events_by_kind.values()), own, cpu_seconds(agent.aggregator_pid) - own)


def subscribers(agent: Agent, count: int, mode: str, what: str, amount: str) -> list[subprocess.Popen[str]]:
    procs = [subprocess.Popen([sys.executable, "-m", "bench.api_subscriber", str(agent.socket), mode, what, amount],
                              cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(count)]
    stub = sensor_stub(grpc.insecure_channel(f"unix:{agent.socket}"))
    # a gRPC call starts when it is first read: wait until the agent counts every subscriber
    while stub.GetStatus(pb.GetStatusRequest()).subscribers < count:
        time.sleep(0.05)
    return procs


def results(procs: list[subprocess.Popen[str]]) -> list[dict[str, Any]]:
    out = []
    for proc in procs:
        stdout, _ = proc.communicate(timeout=180)
        out.append(json.loads(stdout.strip().splitlines()[-1]))
    return out


@dataclass
class Trial:
    probe_drops: int
    kernel_drops: int
    handled_per_s: float  # the aggregator's throughput: events handled over the flood and its drain
    aggregator_cpu: float
    children_cpu: float
    received: list[int]  # per subscriber
    gaps: int


def settled(stub: Any, agent: Agent, before: int) -> Sensor:
    """The sensor once the aggregator has handled what the flood sent (its count stops growing)."""
    last = sensor_now(stub, agent)
    while True:
        time.sleep(0.3)
        now = sensor_now(stub, agent)
        if now.handled == last.handled and now.handled > before:
            return now
        last = now


def throughput(agent: Agent, helper: Path, count: int, rate: int, seconds: float) -> Trial:
    stub = sensor_stub(grpc.insecure_channel(f"unix:{agent.socket}"))
    procs = subscribers(agent, count, "throughput", helper.name, str(seconds))
    start, began = sensor_now(stub, agent), time.monotonic()
    calls = int(rate * seconds)
    subprocess.run([str(helper), str(calls - 1), str(rate), str(closed_port())], check=True, capture_output=True)
    subprocess.run([str(helper), "1", "0", "1"], check=True, capture_output=True)  # the fence: port 1
    got = results(procs)
    end = settled(stub, agent, start.handled)
    # the drain ended somewhere in the last poll: count half of it
    elapsed = time.monotonic() - began - 0.45
    return Trial(end.probe_drops - start.probe_drops, end.kernel_drops - start.kernel_drops,
                 (end.handled - start.handled) / elapsed, end.aggregator_cpu - start.aggregator_cpu,
                 end.children_cpu - start.children_cpu, [int(r["received"]) for r in got],
                 sum(int(r["gaps"]) for r in got))


def latency(agent: Agent, count: int, samples: int) -> list[int]:
    marker = f"gs-latency-{time.monotonic_ns()}"
    procs = subscribers(agent, count, "latency", marker, str(samples))
    for _ in range(samples):
        subprocess.run(["/bin/true", marker], check=True)
        time.sleep(0.02)  # the exec rate, not a wait for a result
    return [ns for r in results(procs) for ns in r["latencies_ns"]]


def percentile(values: list[int], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] / 1e6


ROW = "{:>11} | {:>16} | {:>16} | {:>24} | {:>18} | {:>18} | {:>24} | {:>5}"


def report(counts: list[int], trials: dict[int, list[Trial]], sent: int) -> None:
    print(ROW.format("subscribers", "probe drops", "kernel drops", "aggregator events/s", "aggregator CPU s",
                     "its children CPU s", "each subscriber received", "gaps"))
    for count in counts:
        runs = trials[count]
        received = [statistics.median(t.received) for t in runs if t.received]
        print(ROW.format(
            f"{count}" + (" (base)" if count == counts[0] else ""),
            spread([t.probe_drops for t in runs], "{:.0f}"), spread([t.kernel_drops for t in runs], "{:.0f}"),
            spread([t.handled_per_s for t in runs], "{:,.0f}"), spread([t.aggregator_cpu for t in runs], "{:.2f}"),
            spread([t.children_cpu for t in runs], "{:.2f}"),
            spread(received, "{:.0f}") + f"/{sent}" if received else "-", sum(t.gaps for t in runs)))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rate", type=int, default=30000)
    parser.add_argument("--seconds", type=float, default=3)
    parser.add_argument("--subscribers", default="0,1,20", help="the first is the baseline")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--samples", type=int, default=100, help="latency samples per count (0: none)")
    args = parser.parse_args()
    counts = [int(c) for c in args.subscribers.split(",")]
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        helper = build_helper(tmp)
        agent = start_agent(tmp)
        trials: dict[int, list[Trial]] = {c: [] for c in counts}
        try:
            for _ in range(args.rounds):
                for count in counts:
                    trials[count].append(throughput(agent, helper, count, args.rate, args.seconds))
            print(f"{int(args.rate * args.seconds)} connects at {args.rate}/s, {args.rounds} rounds; median "
                  "[min-max] per round", flush=True)
            report(counts, trials, int(args.rate * args.seconds))
            for count in (c for c in counts if c and args.samples):
                lat = latency(agent, count, args.samples)
                print(f"{count:>2} subscriber(s): latency kernel event -> subscriber ({len(lat)} samples): median "
                      f"{percentile(lat, 0.5):.1f} ms, p99 {percentile(lat, 0.99):.1f} ms, "
                      f"max {max(lat) / 1e6:.1f} ms", flush=True)
        finally:
            agent.process.send_signal(signal.SIGINT)
            agent.process.wait(timeout=30)


if __name__ == "__main__":
    main()
