"""What containerd says about a container: its image and labels (the CRI plugin's labels name
a Kubernetes container's pod, namespace and container), over containerd's gRPC socket.

containerd keeps containers per namespace: Kubernetes' in `k8s.io`, docker's in `moby`,
`ctr`'s in `default`; the client asks each in turn. Docker's name for a container is not
containerd's business, so docker containers show their image only.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc

from sensor.containers.model import Metadata
from sensor.containers.v1 import containerd_containers_pb2 as pb
from sensor.containers.v1 import containerd_containers_pb2_grpc as pb_grpc

TIMEOUT_S = 1.0
NAMESPACES = ("k8s.io", "moby", "default")
_ID = re.compile(r"[0-9a-f]{64}")
CRI_CONTAINER_NAME = "io.kubernetes.container.name"


class ContainerdError(RuntimeError):
    """containerd did not answer; the message names the socket and the fix."""


class ContainerdClient:
    def __init__(self, socket_path: Path, namespaces: Sequence[str] = NAMESPACES, timeout: float = TIMEOUT_S) -> None:
        self.socket_path = socket_path
        self.namespaces = tuple(namespaces)
        self.timeout = timeout

    def get(self, container_id: str) -> Metadata | None:
        """The container's image and labels from the first namespace that has it; None if none does."""
        if not _ID.fullmatch(container_id):
            raise ValueError(f"not a container id: {container_id!r}")
        with grpc.insecure_channel(f"unix://{self.socket_path}") as channel:
            stub = pb_grpc.ContainersStub(channel)  # type: ignore[no-untyped-call]
            for namespace in self.namespaces:
                found = self._get(stub, namespace, container_id)
                if found is not None:
                    labels = dict(found.labels)
                    return Metadata(name=labels.get(CRI_CONTAINER_NAME, ""), image=found.image, labels=labels)
        return None

    def _get(self, stub: Any, namespace: str, container_id: str) -> pb.Container | None:
        try:
            answer = stub.Get(pb.GetContainerRequest(id=container_id), timeout=self.timeout,
                              metadata=(("containerd-namespace", namespace),))
        except grpc.RpcError as exc:
            if isinstance(exc, grpc.Call) and exc.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise ContainerdError(_why(self.socket_path, exc, self.timeout)) from exc
        container: pb.Container = answer.container
        return container


def _why(socket_path: Path, exc: grpc.RpcError, timeout: float) -> str:
    detail = exc.details() if isinstance(exc, grpc.Call) else str(exc)
    if not socket_path.exists():
        fix = "containerd does not run here, or its socket is not mounted into the agent's container"
    elif not os.access(socket_path, os.R_OK | os.W_OK):
        fix = "the probe needs root to use it"
    elif isinstance(exc, grpc.Call) and exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
        fix = f"containerd did not answer within {timeout:g} s"
    else:
        fix = "check that containerd runs"
    return f"containerd's API at {socket_path}: {detail} ({fix})"
