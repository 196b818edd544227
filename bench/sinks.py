"""What the sinks cost detection: the alert latency and the drop counts of the real agent with
no sinks, with all four sinks delivering (a file, syslog over UDP, a webhook, OTLP), and with
every sink's endpoint down, side by side in interleaved rounds (the machine is noisy: compare
ratios within one run).

In each round the agent runs with one of the three configurations; a marker binary is exec'd
at 50 per second while a connect flood adds load; a site rule alerts on the marker, and an API
subscriber notes, for each alert, its arrival time minus the kernel time of the exec it is
about (both this host's clock). The drops are the agent's own counters (GetStatus), and each
sink's sent, retried and dropped counts say the sinks really were up, or down.

    .venv/bin/python -m bench.sinks [--rounds 3] [--samples 100] [--rate 5000]

Needs root.
"""

from __future__ import annotations

import argparse
import contextlib
import http.server
import os
import pwd
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2 as otlp
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2_grpc as otlp_grpc

from bench.figures import spread
from bench.pipeline import build_helper, closed_port
from sensor.api.client import sensor_stub
from sensor.api.v1 import gpusentry_pb2 as pb

ROOT = Path(__file__).resolve().parents[1]
MARKER_RULE = """rules:
  - id: bench-marker
    title: Bench marker
    description: An exec of the benchmark's marker.
    severity: low
    match: {fact: exec, where: {argv: gs-bench-sink-marker}}
"""
CONFIGS = ("no sinks", "sinks up", "sinks down")


class Ok(http.server.BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *_: Any) -> None:
        pass


class LogsOk(otlp_grpc.LogsServiceServicer):
    def Export(self, request: Any, context: Any) -> Any:
        return otlp.ExportLogsServiceResponse()


@dataclass
class Receivers:
    """Endpoints that take everything: an HTTP server, an OTLP server, a UDP socket."""

    http_port: int = 0
    otlp_port: int = 0
    udp_port: int = 0
    _stop: list[Any] = field(default_factory=list)

    @contextlib.contextmanager
    def running(self) -> Iterator[Receivers]:
        web = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Ok)
        threading.Thread(target=web.serve_forever, daemon=True).start()
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        otlp_grpc.add_LogsServiceServicer_to_server(LogsOk(), server)  # type: ignore[no-untyped-call]
        self.otlp_port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp.bind(("127.0.0.1", 0))
        threading.Thread(target=lambda: [udp.recv(65536) for _ in iter(int, 1)], daemon=True).start()
        self.http_port, self.udp_port = web.server_address[1], udp.getsockname()[1]
        try:
            yield self
        finally:
            web.shutdown()
            server.stop(0)
            udp.close()


def config_text(kind: str, tmp: Path, receivers: Receivers) -> str:
    if kind == "no sinks":
        return f"detection:\n  rules: [{tmp / 'marker.yaml'}]\n"
    up = kind == "sinks up"
    dead = closed_port()
    return f"""detection:
  rules: [{tmp / 'marker.yaml'}]
sinks:
  - type: file
    path: {tmp / 'out' / 'alerts.jsonl' if up else '/proc/gs-no-such-dir/alerts.jsonl'}
  - type: syslog
    address: udp://127.0.0.1:{receivers.udp_port if up else dead}
  - type: webhook
    url: http://127.0.0.1:{receivers.http_port if up else dead}/
  - type: otlp
    endpoint: 127.0.0.1:{receivers.otlp_port if up else dead}
    insecure: true
"""


def start_agent(tmp: Path, config: Path) -> tuple[subprocess.Popen[bytes], Path]:
    sock = tmp / f"api-{time.monotonic_ns()}.sock"
    agent = subprocess.Popen([sys.executable, "-m", "sensor", "run", "-c", str(config), "--quiet", "--no-view",
                              "--socket", str(sock), "--journal", str(tmp / f"journal-{time.monotonic_ns()}.db")],
                             cwd=ROOT, stderr=subprocess.PIPE, start_new_session=True)
    assert agent.stderr is not None
    for line in agent.stderr:
        if b"watching" in line:
            break
    while not sock.exists():
        time.sleep(0.05)
    return agent, sock


def measure(sock: Path, helper: Path, samples: int, rate: int) -> tuple[list[int], pb.Status]:
    stub = sensor_stub(grpc.insecure_channel(f"unix:{sock}"))
    stream = stub.Subscribe(pb.SubscribeRequest(alerts=True, rule_ids=["bench-marker"]), timeout=120)
    latencies: list[int] = []

    def read() -> None:
        with contextlib.suppress(grpc.RpcError):
            for response in stream:
                if response.WhichOneof("item") == "alert":
                    step = response.alert.steps[0]
                    latencies.append(time.time_ns() - step.time.ToNanoseconds())
                    if len(latencies) >= samples:
                        return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    while stub.GetStatus(pb.GetStatusRequest()).subscribers < 1:
        time.sleep(0.05)
    flood = subprocess.Popen([str(helper), str(rate * (samples // 50 + 2)), str(rate), str(closed_port())],
                             stdout=subprocess.DEVNULL)
    for _ in range(samples):
        subprocess.run(["/bin/true", "gs-bench-sink-marker"], check=True)
        time.sleep(0.02)  # the exec rate, not a wait for a result
    reader.join(timeout=60)
    flood.wait(timeout=120)
    stream.cancel()
    return latencies, stub.GetStatus(pb.GetStatusRequest())


def percentile(values: list[int], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] / 1e6


def one_round(kind: str, tmp: Path, receivers: Receivers, helper: Path, samples: int,
              rate: int) -> tuple[list[int], int, str]:
    config = tmp / "config.yaml"
    config.write_text(config_text(kind, tmp, receivers))
    agent, sock = start_agent(tmp, config)
    try:
        latencies, status = measure(sock, helper, samples, rate)
    finally:
        agent.send_signal(signal.SIGINT)
        agent.wait(timeout=60)
    drops = sum(d.count for d in status.drops if d.hop in ("kernel", "probe", "subscribers"))
    sinks = ", ".join(f"{s.type} sent {s.sent} retried {s.retried} dropped {s.dropped}" for s in status.sinks)
    return latencies, drops, sinks or "-"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--rate", type=int, default=5000, help="background connects per second")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as name, Receivers().running() as receivers:
        tmp = Path(name)
        agent_user = pwd.getpwnam("gpusentry")
        for place in (tmp, tmp / "out"):
            place.mkdir(exist_ok=True)
            os.chown(place, agent_user.pw_uid, agent_user.pw_gid)
        (tmp / "marker.yaml").write_text(MARKER_RULE)
        helper = build_helper(tmp)
        medians: dict[str, list[float]] = {k: [] for k in CONFIGS}
        p99s: dict[str, list[float]] = {k: [] for k in CONFIGS}
        drops: dict[str, list[float]] = {k: [] for k in CONFIGS}
        for number in range(args.rounds):
            for kind in CONFIGS:  # interleaved: each round runs all three
                latencies, dropped, sinks = one_round(kind, tmp, receivers, helper, args.samples, args.rate)
                medians[kind].append(percentile(latencies, 0.5))
                p99s[kind].append(percentile(latencies, 0.99))
                drops[kind].append(dropped)
                print(f"round {number + 1} {kind:10}: {len(latencies)} alerts, median {medians[kind][-1]:.1f} ms, "
                      f"p99 {p99s[kind][-1]:.1f} ms, drops {dropped}; sinks: {sinks}", flush=True)
        base_median, base_p99 = medians["no sinks"], p99s["no sinks"]
        for kind in CONFIGS:
            ratio = [m / b for m, b in zip(medians[kind], base_median, strict=True)]
            ratio99 = [m / b for m, b in zip(p99s[kind], base_p99, strict=True)]
            print(f"{kind:10}: latency median {spread(medians[kind], '{:.1f}')} ms (x{spread(ratio, '{:.2f}')} of no "
                  f"sinks), p99 {spread(p99s[kind], '{:.1f}')} ms (x{spread(ratio99, '{:.2f}')}), drops "
                  f"{spread(drops[kind], '{:.0f}')}")


if __name__ == "__main__":
    main()
