"""What the API delivers: events per second to 1 and to 20 subscribers, and the latency from
the kernel event to a subscriber.

Runs the real agent (`gpusentry run --quiet` with its API on a temporary socket). Throughput:
a C helper makes connect() calls at a fixed rate (each one is a connect event); every
subscriber (its own process) counts the events of that helper it receives. Latency: execs of a
marker at 50 per second; each subscriber notes, for each, the wall time at receipt minus the
event's kernel time (both this host's clock). The baseline for throughput, in the same run,
is what the probe itself read (its counters).

    .venv/bin/python -m bench.api [--rate 20000] [--seconds 3] [--subscribers 1,20]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pwd
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc

from bench.pipeline import build_helper, closed_port
from sensor.api.client import sensor_stub
from sensor.api.v1 import gpusentry_pb2 as pb

ROOT = Path(__file__).resolve().parents[1]


def start_agent(tmp: Path) -> tuple[subprocess.Popen[bytes], Path]:
    socket = tmp / "api.sock"
    with contextlib.suppress(KeyError):  # the agent's unprivileged side must be able to use it
        agent_user = pwd.getpwnam("gpusentry")
        os.chown(tmp, agent_user.pw_uid, agent_user.pw_gid)
    agent = subprocess.Popen([sys.executable, "-m", "sensor", "run", "--quiet", "--no-view", "--socket", str(socket),
                              "--journal", str(tmp / "journal.db"), "--max-subscribers", "64"],
                             cwd=ROOT, stderr=subprocess.PIPE, start_new_session=True)
    assert agent.stderr is not None
    for line in agent.stderr:
        if b"watching" in line:
            break
    while not socket.exists():
        time.sleep(0.05)
    return agent, socket


def subscribers(socket: Path, count: int, mode: str, what: str, amount: str) -> list[subprocess.Popen[str]]:
    procs = [subprocess.Popen([sys.executable, "-m", "bench.api_subscriber", str(socket), mode, what, amount],
                              cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(count)]
    stub = sensor_stub(grpc.insecure_channel(f"unix:{socket}"))
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


def throughput(socket: Path, helper: Path, count: int, rate: int, seconds: float) -> list[dict[str, Any]]:
    procs = subscribers(socket, count, "throughput", helper.name, str(seconds))
    calls = int(rate * seconds)
    subprocess.run([str(helper), str(calls - 1), str(rate), str(closed_port())], check=True, capture_output=True)
    subprocess.run([str(helper), "1", "0", "1"], check=True, capture_output=True)  # the fence: port 1
    return results(procs)


def latency(socket: Path, count: int, samples: int) -> list[int]:
    marker = f"gs-latency-{time.monotonic_ns()}"
    procs = subscribers(socket, count, "latency", marker, str(samples))
    for _ in range(samples):
        subprocess.run(["/bin/true", marker], check=True)
        time.sleep(0.02)  # the exec rate, not a wait for a result
    return [ns for r in results(procs) for ns in r["latencies_ns"]]


def percentile(values: list[int], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] / 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rate", type=int, default=20000)
    parser.add_argument("--seconds", type=float, default=3)
    parser.add_argument("--subscribers", default="1,20")
    parser.add_argument("--samples", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        helper = build_helper(tmp)
        agent, socket = start_agent(tmp)
        try:
            for count in (int(c) for c in args.subscribers.split(",")):
                got = throughput(socket, helper, count, args.rate, args.seconds)
                received = [int(r["received"]) for r in got]
                rates = [int(r["received"]) / max(float(r["seconds"]), 1e-9) for r in got]
                gaps = sum(int(r["gaps"]) for r in got)
                missed = sum(int(r["missed"]) for r in got)
                sent = int(args.rate * args.seconds)
                print(f"{count:>2} subscriber(s), {sent} connects at {args.rate}/s: each received median "
                      f"{statistics.median(received)} [{min(received)}-{max(received)}] events, "
                      f"{statistics.median(rates):,.0f} [{min(rates):,.0f}-{max(rates):,.0f}] events/s; "
                      f"gaps {gaps} ({missed} events missed in them)", flush=True)
                lat = latency(socket, count, args.samples)
                print(f"   latency kernel event -> subscriber ({len(lat)} samples): median "
                      f"{percentile(lat, 0.5):.1f} ms, p99 {percentile(lat, 0.99):.1f} ms, max {max(lat) / 1e6:.1f} ms",
                      flush=True)
        finally:
            agent.send_signal(signal.SIGINT)
            agent.wait(timeout=30)


if __name__ == "__main__":
    main()
