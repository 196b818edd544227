"""What the kubelet says about pods: the devices each container was allocated, and pod names.

The devices come from the kubelet's pod-resources gRPC API (`v1.PodResourcesLister/List` on
/var/lib/kubelet/pod-resources/kubelet.sock), the API NVIDIA's DCGM exporter reads for the
same purpose. It names pods by namespace and name, while a cgroup path gives only the pod's
UID: the kubelet's log directory, /var/log/pods/<namespace>_<pod>_<uid>, joins the two.

What comes back is data to show and match, never to act on.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import grpc

from sensor.containers.model import PodGpus
from sensor.containers.sockets import rpc_problem, socket_problem
from sensor.containers.v1 import podresources_pb2 as pb
from sensor.containers.v1 import podresources_pb2_grpc as pb_grpc

DEFAULT_SOCKET = Path("/var/lib/kubelet/pod-resources/kubelet.sock")
DEFAULT_POD_LOGS = Path("/var/log/pods")
TIMEOUT_S = 1.0
# The limit the kubelet's own clients use for this API (defaultPodResourcesMaxSize in
# kubernetes' node e2e tests and tools): a node's whole List answer fits in it.
MAX_ANSWER = 16 << 20
# <namespace>_<pod>_<uid>. Namespaces are DNS labels and pod names DNS subdomains, neither of
# which can hold `_`, so the split is unambiguous. The UID is a UUID, or for a static pod
# (one from a manifest file) 32 hex digits, the hash the kubelet names it by.
_POD_LOG_DIR = re.compile(r"(?P<namespace>[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)"
                          r"_(?P<pod>[a-z0-9](?:[a-z0-9.-]{0,251}[a-z0-9])?)"
                          r"_(?P<uid>[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|[0-9a-f]{32})")


class PodResourcesError(RuntimeError):
    """The pod-resources API did not answer; the message names the socket and the fix."""


class PodResourcesClient:
    def __init__(self, socket_path: Path = DEFAULT_SOCKET, timeout: float = TIMEOUT_S) -> None:
        self.socket_path = socket_path
        self.timeout = timeout

    def list(self) -> list[PodGpus]:
        """Every container of every pod on the node, with its devices by resource name (all
        resources: nvidia.com/gpu, MIG slices, NICs...; a container with none has {})."""
        _check_socket(self.socket_path)
        options = [("grpc.max_receive_message_length", MAX_ANSWER)]
        try:
            with grpc.insecure_channel(f"unix://{self.socket_path}", options=options) as channel:
                stub = pb_grpc.PodResourcesListerStub(channel)  # type: ignore[no-untyped-call]
                answer = stub.List(pb.ListPodResourcesRequest(), timeout=self.timeout)
        except grpc.RpcError as exc:
            raise PodResourcesError(_explain(self.socket_path, exc, self.timeout)) from exc
        return [PodGpus(pod.namespace, pod.name, container.name,
                        {d.resource_name: tuple(d.device_ids) for d in container.devices})
                for pod in answer.pod_resources for container in pod.containers]


API = "the kubelet's pod-resources API"


def _check_socket(socket_path: Path) -> None:
    problem = socket_problem(API, socket_path, "not a Kubernetes node, or /var/lib/kubelet/pod-resources is not "
                                                "mounted into the agent's container")
    if problem is not None:
        raise PodResourcesError(problem)


def _explain(socket_path: Path, exc: grpc.RpcError, timeout: float) -> str:
    return rpc_problem(API, socket_path, exc, f"the kubelet did not answer within {timeout:g} s",
                       "is the kubelet running, with the pod-resources API enabled?")


def pod_names(log_dir: Path = DEFAULT_POD_LOGS) -> dict[str, tuple[str, str]]:
    """Pod UID -> (namespace, pod name), from the kubelet's log directory names; entries that
    are not such a directory are ignored, and an unreadable log directory gives {}."""
    try:
        entries = list(os.scandir(log_dir))
    except OSError:
        return {}
    names = {}
    for entry in entries:
        found = _POD_LOG_DIR.fullmatch(entry.name)
        if found is not None and entry.is_dir(follow_symlinks=False):
            names[found["uid"]] = (found["namespace"], found["pod"])
    return names
