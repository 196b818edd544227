"""What containerd says about a container: its image and labels (the CRI plugin's labels name
a Kubernetes container's pod, namespace and container), over containerd's gRPC socket
(`containerd.services.containers.v1.Containers/Get` on /run/containerd/containerd.sock).

containerd keeps containers per namespace, named in the `containerd-namespace` request header:
Kubernetes' in `k8s.io`, docker's in `moby`, `ctr`'s in `default`; the client asks each in
turn. Docker's name for a container is docker's, not containerd's, so docker containers show
their image only. What comes back is data to show and match, never to act on.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc

from sensor.containers.model import Metadata
from sensor.containers.sockets import rpc_problem, socket_problem
from sensor.containers.v1 import containerd_containers_pb2 as pb
from sensor.containers.v1 import containerd_containers_pb2_grpc as pb_grpc

DEFAULT_SOCKET = Path("/run/containerd/containerd.sock")
NAMESPACES = ("k8s.io", "moby", "default")
TIMEOUT_S = 1.0  # for one get(), all namespaces together
CRI_CONTAINER_NAME = "io.kubernetes.container.name"  # set by containerd's CRI plugin


class ContainerdError(RuntimeError):
    """containerd did not answer; the message names the socket and the fix."""


class ContainerdClient:
    def __init__(self, socket_path: Path = DEFAULT_SOCKET, namespaces: Sequence[str] = NAMESPACES,
                 timeout: float = TIMEOUT_S) -> None:
        self.socket_path = socket_path
        self.namespaces = tuple(namespaces)
        self.timeout = timeout

    def get(self, container_id: str) -> Metadata | None:
        """The container's name (the CRI's container name, when it has one), image and labels,
        from the first namespace that has it; None when none does."""
        if not container_id:
            raise ValueError("an empty container id")
        _check_socket(self.socket_path)
        deadline = time.monotonic() + self.timeout
        with grpc.insecure_channel(f"unix://{self.socket_path}") as channel:
            stub = pb_grpc.ContainersStub(channel)  # type: ignore[no-untyped-call]
            for namespace in self.namespaces:
                found = self._get(stub, namespace, container_id, deadline)
                if found is not None:
                    labels = dict(found.labels)
                    return Metadata(name=labels.get(CRI_CONTAINER_NAME, ""), image=found.image, labels=labels)
        return None

    def _get(self, stub: Any, namespace: str, container_id: str, deadline: float) -> pb.Container | None:
        # one deadline for all namespaces: a containerd that hangs costs one timeout, not one each
        left = max(deadline - time.monotonic(), 0.0)
        try:
            answer = stub.Get(pb.GetContainerRequest(id=container_id), timeout=left,
                              metadata=(("containerd-namespace", namespace),))
        except grpc.RpcError as exc:
            if isinstance(exc, grpc.Call) and exc.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise ContainerdError(_explain(self.socket_path, exc, self.timeout)) from exc
        container: pb.Container = answer.container
        return container


API = "containerd's API"


def _check_socket(socket_path: Path) -> None:
    problem = socket_problem(API, socket_path, "containerd does not run here, or its socket is not mounted into "
                                                "the agent's container")
    if problem is not None:
        raise ContainerdError(problem)


def _explain(socket_path: Path, exc: grpc.RpcError, timeout: float) -> str:
    return rpc_problem(API, socket_path, exc, f"containerd did not answer within {timeout:g} s",
                       "is containerd running?")
