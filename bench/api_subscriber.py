"""One subscriber for bench.api: counts events from a process name, or measures latency.

    python -m bench.api_subscriber SOCKET throughput BINARY SECONDS
    python -m bench.api_subscriber SOCKET latency MARKER COUNT
Prints one JSON line when done (bench.api waits until the agent counts the subscription). The
stream has a deadline: if the last event never comes (dropped upstream, and counted there), the
subscriber still reports what it got.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import grpc

from sensor.api.client import sensor_stub
from sensor.api.v1 import gpusentry_pb2 as pb


@dataclass
class Tally:
    received: int = 0
    seconds: float = 0.0
    gaps: int = 0
    missed: int = 0
    latencies_ns: list[int] = field(default_factory=list)


def read(stream: Any, mode: str, what: str, amount: str, tally: Tally) -> None:
    first = 0.0
    for response in stream:
        now_ns = time.time_ns()
        if response.WhichOneof("item") == "gap":
            tally.gaps += 1
            tally.missed += response.gap.missed_events
            continue
        for event in response.events.events:
            if mode == "throughput":
                tally.received += 1
                first = first or time.monotonic()
                tally.seconds = time.monotonic() - first
                if event.connect.port == 1:  # the flood's last call
                    return
            elif what in event.exec.argv:
                tally.latencies_ns.append(now_ns - event.time.ToNanoseconds())
                if len(tally.latencies_ns) >= int(amount):
                    return


def main() -> None:
    socket, mode, what, amount = sys.argv[1:5]
    stub = sensor_stub(grpc.insecure_channel(f"unix:{socket}"))
    throughput = mode == "throughput"
    kind = pb.EVENT_KIND_CONNECT if throughput else pb.EVENT_KIND_EXEC
    request = pb.SubscribeRequest(events=True, event_kinds=[kind],
                                  process=pb.ProcessFilter(binary=what) if throughput else None)
    stream = stub.Subscribe(request, timeout=float(amount) + 30 if throughput else 120)
    tally = Tally()
    with contextlib.suppress(grpc.RpcError):  # the deadline
        read(stream, mode, what, amount, tally)
    stream.cancel()
    print(json.dumps(asdict(tally)))


if __name__ == "__main__":
    main()
