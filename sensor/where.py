"""Where a process runs, in words: its pod and container (alerts, incidents, the live view)."""

from __future__ import annotations

from sensor.api.v1 import gpusentry_pb2 as pb
from sensor.events import text


def place(proc: pb.Process) -> str:
    """Where a process runs: its pod and container, "" on the host. Names a monitored process's
    owner chose (pod, image) are shown escaped like everything else they control."""
    parts = []
    if proc.HasField("pod"):
        pod = proc.pod
        gpus = f", GPUs {' '.join(pod.gpus)}" if pod.gpus else ""
        inside = f" container {pod.container}" if pod.container else ""
        parts.append(f"pod {pod.namespace or '?'}/{pod.name or pod.uid}{inside}{gpus}")
    if proc.HasField("container"):
        c = proc.container
        image = f" ({c.image})" if c.image else ""
        parts.append(f"{c.runtime} container {c.name or c.id[:12]}{image}")
    return text("; ".join(parts).encode())
