"""What the kubelet says about pods: the devices each container was allocated, and pod names.

The GPUs come from the kubelet's pod-resources gRPC API (`v1.PodResourcesLister/List` on
/var/lib/kubelet/pod-resources/kubelet.sock), the API NVIDIA's DCGM exporter reads for the
same purpose. It names pods by namespace and name, while a cgroup path gives only the pod's
UID: the kubelet's log directory, /var/log/pods/<namespace>_<pod>_<uid>, joins the two
(namespaces and pod names cannot hold `_`, so the split is unambiguous).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import grpc

from sensor.containers.model import PodGpus
from sensor.containers.v1 import podresources_pb2 as pb
from sensor.containers.v1 import podresources_pb2_grpc as pb_grpc

TIMEOUT_S = 1.0
MAX_ANSWER = 16 * 1024 * 1024  # the kubelet's own limit for this API
# <namespace>_<pod>_<uid>: DNS labels and subdomains for the names, a UUID (or, for a static
# pod, 32 hex digits) for the UID
_LOG_DIR = re.compile(r"(?P<namespace>[a-z0-9-]{1,63})_(?P<pod>[a-z0-9.-]{1,253})_"
                      r"(?P<uid>[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|[0-9a-f]{32})")


class PodResourcesError(RuntimeError):
    """The pod-resources API did not answer; the message names the socket and the fix."""


class PodResourcesClient:
    def __init__(self, socket_path: Path, timeout: float = TIMEOUT_S) -> None:
        self.socket_path = socket_path
        self.timeout = timeout

    def list(self) -> list[PodGpus]:
        """Every container the kubelet allocated devices to, with its devices by resource name."""
        options = [("grpc.max_receive_message_length", MAX_ANSWER)]
        try:
            with grpc.insecure_channel(f"unix://{self.socket_path}", options=options) as channel:
                stub = pb_grpc.PodResourcesListerStub(channel)  # type: ignore[no-untyped-call]
                answer = stub.List(pb.ListPodResourcesRequest(), timeout=self.timeout)
        except grpc.RpcError as exc:
            raise PodResourcesError(_why(self.socket_path, exc)) from exc
        return [PodGpus(pod.namespace, pod.name, container.name,
                        {d.resource_name: tuple(d.device_ids) for d in container.devices})
                for pod in answer.pod_resources for container in pod.containers if container.devices]


def _why(socket_path: Path, exc: grpc.RpcError) -> str:
    code = exc.code() if isinstance(exc, grpc.Call) else None
    detail = exc.details() if isinstance(exc, grpc.Call) else str(exc)
    if not socket_path.exists():
        fix = "not a Kubernetes node, or /var/lib/kubelet/pod-resources is not mounted into the agent's container"
    elif not os.access(socket_path, os.R_OK | os.W_OK):
        fix = "the probe needs root to use it"
    elif code == grpc.StatusCode.DEADLINE_EXCEEDED:
        fix = f"the kubelet did not answer within {TIMEOUT_S:g} s"
    else:
        fix = "check that the kubelet runs and serves pod-resources"
    return f"the kubelet's pod-resources API at {socket_path}: {detail} ({fix})"


def pod_names(log_dir: Path) -> dict[str, tuple[str, str]]:
    """Pod UID -> (namespace, pod name), from the kubelet's log directory names; others ignored."""
    try:
        entries = os.listdir(log_dir)
    except OSError:
        return {}
    names = {}
    for entry in entries:
        found = _LOG_DIR.fullmatch(entry)
        if found is not None:
            names[found["uid"]] = (found["namespace"], found["pod"])
    return names
