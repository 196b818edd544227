"""The kubelet's pod-resources client and containerd's containers client, each against a real
gRPC server built from the same proto, on a unix socket; the kubelet log directory parser;
and the committed generated code against a fresh generation."""

from __future__ import annotations

import contextlib
import filecmp
import subprocess
import threading
from collections.abc import Iterator, Mapping, Sequence
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest

from sensor.containers.containerd import ContainerdClient, ContainerdError
from sensor.containers.kubelet import PodResourcesClient, PodResourcesError, pod_names
from sensor.containers.model import Metadata, PodGpus
from sensor.containers.v1 import containerd_containers_pb2 as cd
from sensor.containers.v1 import containerd_containers_pb2_grpc as cd_grpc
from sensor.containers.v1 import podresources_pb2 as pr
from sensor.containers.v1 import podresources_pb2_grpc as pr_grpc

ROOT = Path(__file__).resolve().parents[2]
POD_UID = "0f5c8d52-6b8c-4d27-9a5e-3c1c0b6f2a11"
CONTAINER_ID = "8f3a1c0b5e2d4a6978c1b2d3e4f5061728394a5b6c7d8e9f0a1b2c3d4e5f6a7b"
Allocations = Mapping[tuple[str, str, str], Mapping[str, Sequence[str]]]


class PodResources(pr_grpc.PodResourcesListerServicer):
    def __init__(self, allocations: Allocations, hold: threading.Event | None = None) -> None:
        self.allocations = allocations
        self.hold = hold  # set: answer; unset: keep the caller waiting (a kubelet that hangs)

    def List(self, request: pr.ListPodResourcesRequest, context: Any) -> pr.ListPodResourcesResponse:
        if self.hold is not None:
            self.hold.wait(5)
        pods: dict[tuple[str, str], pr.PodResources] = {}
        for (namespace, pod, container), devices in self.allocations.items():
            entry = pods.setdefault((namespace, pod), pr.PodResources(name=pod, namespace=namespace))
            entry.containers.append(pr.ContainerResources(name=container, devices=[
                pr.ContainerDevices(resource_name=name, device_ids=list(ids)) for name, ids in devices.items()]))
        return pr.ListPodResourcesResponse(pod_resources=list(pods.values()))


@contextlib.contextmanager
def serve(socket_path: Path, add: Any, servicer: Any) -> Iterator[grpc.Server]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    add(servicer, server)
    server.add_insecure_port(f"unix://{socket_path}")
    server.start()
    try:
        yield server
    finally:
        server.stop(grace=None)


@contextlib.contextmanager
def serve_pod_resources(socket_path: Path, allocations: Allocations) -> Iterator[grpc.Server]:
    """A pod-resources server, as the kubelet serves it: (namespace, pod, container) -> devices."""
    with serve(socket_path, pr_grpc.add_PodResourcesListerServicer_to_server, PodResources(allocations)) as server:
        yield server


def test_list_gives_each_containers_devices_by_resource(tmp_path: Path) -> None:
    allocations = {("ml", "trainer-0", "trainer"): {"nvidia.com/gpu": ["GPU-a", "GPU-b"], "example.com/nic": ["n0"]},
                   ("ml", "trainer-0", "sidecar"): {},
                   ("batch", "job-1", "main"): {"nvidia.com/mig-1g.10gb": ["MIG-c"]}}
    with serve_pod_resources(tmp_path / "kubelet.sock", allocations):
        found = PodResourcesClient(tmp_path / "kubelet.sock").list()
    assert found == [  # a container with no devices is left out
        PodGpus("ml", "trainer-0", "trainer", {"nvidia.com/gpu": ("GPU-a", "GPU-b"), "example.com/nic": ("n0",)}),
        PodGpus("batch", "job-1", "main", {"nvidia.com/mig-1g.10gb": ("MIG-c",)})]


def test_an_absent_socket_says_what_it_means(tmp_path: Path) -> None:
    with pytest.raises(PodResourcesError, match=rf"the kubelet's pod-resources API at {tmp_path}/kubelet.sock: .*"
                       r"\(not a Kubernetes node, or /var/lib/kubelet/pod-resources is not mounted"):
        PodResourcesClient(tmp_path / "kubelet.sock").list()


def test_a_kubelet_that_never_answers_times_out_within_the_clients_limit(tmp_path: Path) -> None:
    hold = threading.Event()
    servicer = PodResources({}, hold)
    with serve(tmp_path / "kubelet.sock", pr_grpc.add_PodResourcesListerServicer_to_server, servicer):
        client = PodResourcesClient(tmp_path / "kubelet.sock", timeout=0.3)
        with pytest.raises(PodResourcesError, match=r"Deadline Exceeded .*did not answer"):
            client.list()
        hold.set()


def test_pod_names_come_from_the_kubelets_log_directory(tmp_path: Path) -> None:
    for name in (f"ml_trainer-0_{POD_UID}", "kube-system_etcd-node1_5d2a4c1e9b7f40c3a8e6d1f2b3c4d5e6",
                 "no-uid_pod_x", f"Upper_case_{POD_UID[:-1]}z", "stray-file", f"a_b_c_{POD_UID}"):
        (tmp_path / name).mkdir()
    assert pod_names(tmp_path) == {POD_UID: ("ml", "trainer-0"),
                                   "5d2a4c1e9b7f40c3a8e6d1f2b3c4d5e6": ("kube-system", "etcd-node1")}
    assert pod_names(tmp_path / "absent") == {}


# -- containerd ------------------------------------------------------------------------------------


class Containers(cd_grpc.ContainersServicer):
    def __init__(self, by_namespace: Mapping[str, Mapping[str, cd.Container]]) -> None:
        self.by_namespace = by_namespace
        self.asked: list[str] = []

    def Get(self, request: cd.GetContainerRequest, context: Any) -> cd.GetContainerResponse:
        namespace = dict(context.invocation_metadata()).get("containerd-namespace", "")
        self.asked.append(namespace)
        found = self.by_namespace.get(namespace, {}).get(request.id)
        if found is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"container {request.id!r} in namespace {namespace!r}: not found")
        return cd.GetContainerResponse(container=found)


def test_containerd_gives_image_and_cri_labels_from_the_namespace_that_has_it(tmp_path: Path) -> None:
    labels = {"io.kubernetes.pod.name": "trainer-0", "io.kubernetes.pod.namespace": "ml",
              "io.kubernetes.pod.uid": POD_UID, "io.kubernetes.container.name": "trainer"}
    servicer = Containers({"k8s.io": {CONTAINER_ID: cd.Container(id=CONTAINER_ID, image="nvcr.io/nvidia/pytorch:24.05",
                                                                 labels=labels)}})
    with serve(tmp_path / "containerd.sock", cd_grpc.add_ContainersServicer_to_server, servicer):
        client = ContainerdClient(tmp_path / "containerd.sock", namespaces=("moby", "k8s.io"))
        found = client.get(CONTAINER_ID)
        missing = client.get(CONTAINER_ID[::-1])
    assert found == Metadata(name="trainer", image="nvcr.io/nvidia/pytorch:24.05", labels=labels)
    assert missing is None
    assert servicer.asked == ["moby", "k8s.io", "moby", "k8s.io"]


def test_containerd_refuses_an_id_that_is_not_one_and_names_an_absent_socket(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"not a container id: '\.\./x'"):
        ContainerdClient(tmp_path / "containerd.sock").get("../x")
    with pytest.raises(ContainerdError, match=rf"containerd's API at {tmp_path}/containerd.sock: .*"
                       r"\(containerd does not run here"):
        ContainerdClient(tmp_path / "containerd.sock").get(CONTAINER_ID)


def test_the_committed_generated_code_is_what_the_protos_generate(tmp_path: Path) -> None:
    subprocess.run([str(ROOT / "scripts/gen-container-protos"), str(tmp_path)], check=True, cwd=ROOT)
    generated = sorted(p.name for p in (tmp_path / "sensor/containers/v1").iterdir())
    assert generated == sorted(p.name for p in (ROOT / "sensor/containers/v1").iterdir()
                               if p.name != "__init__.py" and p.suffix in (".py", ".pyi"))
    stale = [name for name in generated
             if not filecmp.cmp(tmp_path / "sensor/containers/v1" / name, ROOT / "sensor/containers/v1" / name,
                                shallow=False)]
    assert stale == [], "run scripts/gen-container-protos and commit the result"
