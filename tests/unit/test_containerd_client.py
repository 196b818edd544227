"""containerd's containers client against a real gRPC server built from containerd's published
proto, on a unix socket: namespaces asked in turn, labels and image as containerd keeps them,
and the failures (absent socket, a containerd that never answers) named."""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterator, Mapping
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest

from sensor.containers.containerd import ContainerdClient, ContainerdError
from sensor.containers.model import Metadata
from sensor.containers.v1 import containerd_containers_pb2 as cd
from sensor.containers.v1 import containerd_containers_pb2_grpc as cd_grpc

POD_UID = "0f5c8d52-6b8c-4d27-9a5e-3c1c0b6f2a11"
CRI_ID = "8f3a1c0b5e2d4a6978c1b2d3e4f5061728394a5b6c7d8e9f0a1b2c3d4e5f6a7b"
DOCKER_ID = "1b2c3d4e5f6a7b8f3a1c0b5e2d4a6978c1b2d3e4f5061728394a5b6c7d8e9f0a"
CRI_LABELS = {"io.kubernetes.pod.name": "trainer-0", "io.kubernetes.pod.namespace": "ml",
              "io.kubernetes.pod.uid": POD_UID, "io.kubernetes.container.name": "trainer",
              "io.cri-containerd.kind": "container"}


def stored(container_id: str, image: str, labels: Mapping[str, str]) -> cd.Container:
    """A container as containerd stores it (the fields gpusentry's subset of the proto has)."""
    return cd.Container(id=container_id, image=image, labels=labels, sandbox="")


def test_an_answer_with_the_fields_the_subset_leaves_out_still_decodes() -> None:
    """containerd sends runtime (4), spec (5), snapshotter (6) and times (8) too: skipped on the wire."""
    unknown = bytes([0x22, 0x04, 0x0a, 0x02, 0x72, 0x63,  # 4: Runtime{name: "rc"}
                     0x32, 0x07]) + b"overlay" + bytes([0x42, 0x02, 0x08, 0x01])  # 6: "overlay"; 8: {seconds: 1}
    payload = stored(CRI_ID, "img:1", {"a": "b"}).SerializeToString() + unknown
    decoded = cd.Container.FromString(payload)
    assert (decoded.id, decoded.image, dict(decoded.labels)) == (CRI_ID, "img:1", {"a": "b"})


class Containers(cd_grpc.ContainersServicer):
    """containerd's Get: the namespace from the request header, NOT_FOUND as containerd says it."""

    def __init__(self, by_namespace: Mapping[str, Mapping[str, cd.Container]]) -> None:
        self.by_namespace = by_namespace
        self.asked: list[tuple[str, str]] = []

    def Get(self, request: cd.GetContainerRequest, context: Any) -> cd.GetContainerResponse:
        namespace = dict(context.invocation_metadata()).get("containerd-namespace", "")
        self.asked.append((namespace, request.id))
        if namespace == "broken":
            context.abort(grpc.StatusCode.INTERNAL, "bolt database: input/output error")
        found = self.by_namespace.get(namespace, {}).get(request.id)
        if found is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"container \"{request.id}\" in namespace \"{namespace}\": "
                          f"not found")
        return cd.GetContainerResponse(container=found)


@contextlib.contextmanager
def serve(socket_path: Path, servicer: Containers) -> Iterator[None]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    cd_grpc.add_ContainersServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]
    server.add_insecure_port(f"unix://{socket_path}")
    server.start()
    try:
        yield
    finally:
        server.stop(grace=None)


def test_a_cri_container_gives_its_image_labels_and_kubernetes_name(tmp_path: Path) -> None:
    servicer = Containers({"k8s.io": {CRI_ID: stored(CRI_ID, "nvcr.io/nvidia/pytorch:24.05-py3", CRI_LABELS)}})
    with serve(tmp_path / "containerd.sock", servicer):
        found = ContainerdClient(tmp_path / "containerd.sock").get(CRI_ID)
    assert found == Metadata(name="trainer", image="nvcr.io/nvidia/pytorch:24.05-py3", labels=CRI_LABELS)
    assert servicer.asked == [("k8s.io", CRI_ID)]


def test_namespaces_are_asked_in_turn_and_an_unknown_container_is_none(tmp_path: Path) -> None:
    labels = {"com.docker/engine.bundle.path": f"/var/run/docker/containerd/{DOCKER_ID}"}
    servicer = Containers({"moby": {DOCKER_ID: stored(DOCKER_ID, "", labels)}})
    with serve(tmp_path / "containerd.sock", servicer):
        client = ContainerdClient(tmp_path / "containerd.sock")
        docker = client.get(DOCKER_ID)
        unknown = client.get(CRI_ID)
    assert docker == Metadata(name="", image="", labels=labels)  # docker's name is docker's, not containerd's
    assert unknown is None
    assert servicer.asked == [("k8s.io", DOCKER_ID), ("moby", DOCKER_ID),
                              ("k8s.io", CRI_ID), ("moby", CRI_ID), ("default", CRI_ID)]


def test_an_error_other_than_not_found_is_reported_not_skipped(tmp_path: Path) -> None:
    servicer = Containers({"k8s.io": {CRI_ID: stored(CRI_ID, "busybox", {})}})
    with serve(tmp_path / "containerd.sock", servicer), pytest.raises(ContainerdError) as raised:
        ContainerdClient(tmp_path / "containerd.sock", namespaces=("broken", "k8s.io")).get(CRI_ID)
    assert str(raised.value) == (f"containerd's API at {tmp_path}/containerd.sock: bolt database: input/output error "
                                 f"(is containerd running?)")
    assert servicer.asked == [("broken", CRI_ID)]


def test_an_absent_socket_says_what_it_means(tmp_path: Path) -> None:
    with pytest.raises(ContainerdError) as raised:
        ContainerdClient(tmp_path / "containerd.sock").get(CRI_ID)
    assert str(raised.value) == (f"containerd's API at {tmp_path}/containerd.sock: no such socket (containerd does "
                                 f"not run here, or its socket is not mounted into the agent's container)")


def test_an_empty_id_is_refused_before_asking() -> None:
    with pytest.raises(ValueError, match=r"^an empty container id$"):
        ContainerdClient(Path("/nonexistent/containerd.sock")).get("")


def test_a_containerd_that_never_answers_times_out_within_the_clients_limit(tmp_path: Path) -> None:
    with socket.socket(socket.AF_UNIX) as hung:  # accepts connections (the backlog), never says a word
        hung.bind(str(tmp_path / "containerd.sock"))
        hung.listen()
        client = ContainerdClient(tmp_path / "containerd.sock", namespaces=("k8s.io", "moby", "default"), timeout=0.3)
        started = time.monotonic()
        with pytest.raises(ContainerdError, match=r"Deadline Exceeded \(containerd did not answer within 0.3 s\)$"):
            client.get(CRI_ID)
        assert time.monotonic() - started < 0.3 + 0.5
