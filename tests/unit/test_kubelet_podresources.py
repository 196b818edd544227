"""The kubelet's pod-resources client against a real gRPC server built from the kubelet's
published proto, on a unix socket; and the kubelet log directory parser."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest

from sensor.containers.kubelet import PodResourcesClient, PodResourcesError, pod_names
from sensor.containers.model import PodGpus
from sensor.containers.v1 import podresources_pb2 as pr
from sensor.containers.v1 import podresources_pb2_grpc as pr_grpc

ROOT = Path(__file__).resolve().parents[2]
POD_UID = "0f5c8d52-6b8c-4d27-9a5e-3c1c0b6f2a11"
STATIC_POD_UID = "5d2a4c1e9b7f40c3a8e6d1f2b3c4d5e6"  # a static pod's: the hash of its manifest
NOBODY = 65534
# (namespace, pod, container) -> resource name -> device ids
Allocations = Mapping[tuple[str, str, str], Mapping[str, Sequence[str]]]


class PodResources(pr_grpc.PodResourcesListerServicer):
    """Answers List as the kubelet does: pods, their containers and their devices."""

    def __init__(self, allocations: Allocations) -> None:
        self.allocations = allocations

    def List(self, request: pr.ListPodResourcesRequest, context: Any) -> pr.ListPodResourcesResponse:
        pods: dict[tuple[str, str], pr.PodResources] = {}
        for (namespace, pod, container), devices in self.allocations.items():
            entry = pods.setdefault((namespace, pod), pr.PodResources(name=pod, namespace=namespace))
            entry.containers.append(pr.ContainerResources(name=container, devices=[
                pr.ContainerDevices(resource_name=name, device_ids=list(ids))
                for name, ids in devices.items()]))
        return pr.ListPodResourcesResponse(pod_resources=list(pods.values()))


@contextlib.contextmanager
def serve(socket_path: Path, allocations: Allocations) -> Iterator[None]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    pr_grpc.add_PodResourcesListerServicer_to_server(PodResources(allocations), server)  # type: ignore[no-untyped-call]
    server.add_insecure_port(f"unix://{socket_path}")
    server.start()
    try:
        yield
    finally:
        server.stop(grace=None)


def test_list_gives_every_container_with_its_devices_by_resource(tmp_path: Path) -> None:
    allocations = {("ml", "trainer-0", "trainer"): {"nvidia.com/gpu": ["GPU-6f1e2d3c-0000-1111-2222-333344445555",
                                                                       "GPU-7a8b9c0d-0000-1111-2222-333344445555"],
                                                    "example.com/nic": ["n0"]},
                   ("ml", "trainer-0", "sidecar"): {},
                   ("batch", "job-1", "main"): {"nvidia.com/mig-1g.10gb": ["MIG-8e9f0a1b-0000-1111-2222-333344445555"]}}
    with serve(tmp_path / "kubelet.sock", allocations):
        found = PodResourcesClient(tmp_path / "kubelet.sock").list()
    assert found == [
        PodGpus("ml", "trainer-0", "trainer", {"nvidia.com/gpu": ("GPU-6f1e2d3c-0000-1111-2222-333344445555",
                                                                  "GPU-7a8b9c0d-0000-1111-2222-333344445555"),
                                               "example.com/nic": ("n0",)}),
        PodGpus("ml", "trainer-0", "sidecar", {}),
        PodGpus("batch", "job-1", "main", {"nvidia.com/mig-1g.10gb": ("MIG-8e9f0a1b-0000-1111-2222-333344445555",)})]


def test_a_node_without_pods_lists_nothing(tmp_path: Path) -> None:
    with serve(tmp_path / "kubelet.sock", {}):
        assert PodResourcesClient(tmp_path / "kubelet.sock").list() == []


def test_an_absent_socket_says_what_it_means(tmp_path: Path) -> None:
    with pytest.raises(PodResourcesError) as raised:
        PodResourcesClient(tmp_path / "kubelet.sock").list()
    assert str(raised.value) == (f"the kubelet's pod-resources API at {tmp_path}/kubelet.sock: no such socket "
                                 f"(not a Kubernetes node, or /var/lib/kubelet/pod-resources is not mounted "
                                 f"into the agent's container)")


def test_a_socket_nobody_listens_on_is_unavailable(tmp_path: Path) -> None:
    with socket.socket(socket.AF_UNIX) as stale:  # bound, then closed: what a stopped kubelet leaves
        stale.bind(str(tmp_path / "kubelet.sock"))
    with pytest.raises(PodResourcesError, match=rf"^the kubelet's pod-resources API at {tmp_path}/kubelet.sock: "
                       r".*Connection refused.*\(is the kubelet running, with the pod-resources API enabled\?\)$"):
        PodResourcesClient(tmp_path / "kubelet.sock").list()


def test_a_socket_the_agent_may_not_reach_says_it_needs_root(tmp_path: Path) -> None:
    # /var/lib/kubelet is 0700 root on most nodes: an unprivileged agent cannot even see the socket
    locked = tmp_path / "kubelet"
    locked.mkdir()
    client = (f"from pathlib import Path; from sensor.containers.kubelet import PodResourcesClient as C\n"
              f"C(Path({str(locked / 'kubelet.sock')!r})).list()")
    with serve(locked / "kubelet.sock", {}):
        locked.chmod(0)
        try:
            ran = subprocess.run([sys.executable, "-c", client], cwd=ROOT, capture_output=True, text=True,
                                 timeout=60, **as_unprivileged())
        finally:
            locked.chmod(0o700)
    assert ran.returncode == 1
    assert ran.stderr.splitlines()[-1] == (f"sensor.containers.kubelet.PodResourcesError: the kubelet's pod-resources "
                                           f"API at {locked}/kubelet.sock: permission denied (the agent needs root "
                                           f"to use it)")


def as_unprivileged() -> dict[str, Any]:
    """subprocess.run's arguments that drop root, where the tests run as root."""
    return {"user": NOBODY, "group": NOBODY, "extra_groups": []} if os.geteuid() == 0 else {}


def test_a_kubelet_that_never_answers_times_out_within_the_clients_limit(tmp_path: Path) -> None:
    with socket.socket(socket.AF_UNIX) as hung:  # accepts connections (the backlog), never says a word
        hung.bind(str(tmp_path / "kubelet.sock"))
        hung.listen()
        started = time.monotonic()
        with pytest.raises(PodResourcesError, match=r"Deadline Exceeded \(the kubelet did not answer within 0.3 s\)$"):
            PodResourcesClient(tmp_path / "kubelet.sock", timeout=0.3).list()
        assert time.monotonic() - started < 0.3 + 0.5


def test_pod_names_come_from_the_kubelets_log_directory(tmp_path: Path) -> None:
    for name in (f"ml_trainer-0_{POD_UID}", f"kube-system_etcd-node1_{STATIC_POD_UID}",
                 f"default_web.v2_{POD_UID[:-1]}7"):
        (tmp_path / name).mkdir()
    malformed = ("no-uid_pod_x", f"Upper_case_{POD_UID[:-1]}0", f"a_b_c_{POD_UID[:-1]}1", f"ns_pod_{POD_UID}-x",
                 f"_pod_{POD_UID[:-1]}2", f"ns-_pod_{POD_UID[:-1]}3", f"ns_pod_{POD_UID.upper()}", "stray")
    for name in malformed:
        (tmp_path / name).mkdir()
    (tmp_path / f"files_are-not-pods_{POD_UID[:-1]}4").write_text("")
    assert pod_names(tmp_path) == {POD_UID: ("ml", "trainer-0"),
                                   STATIC_POD_UID: ("kube-system", "etcd-node1"),
                                   f"{POD_UID[:-1]}7": ("default", "web.v2")}


def test_pod_names_of_an_absent_log_directory_are_none(tmp_path: Path) -> None:
    assert pod_names(tmp_path / "absent") == {}
