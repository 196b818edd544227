"""Container and pod attribution end to end: the real agent, real processes in real cgroups.

A podman container (real podman, runc, podman's API served by the test) execs, and the alert
its exec raises names the container and its image. Kubernetes' cgroup layouts (cgroupfs and
systemd drivers) are made on this host, a real process moves itself into one and execs, and
the alert names the pod, from the kubelet's pod log directory, and its GPUs, from a
pod-resources server built from the kubelet's published proto.
"""

from __future__ import annotations

import contextlib
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import podman
from tests.kernel.test_agent import Agent, workdir
from tests.unit.test_kubelet_podresources import serve as serve_pod_resources
from tests.waiting import wait_until

CGROUP_V1 = Path("/sys/fs/cgroup")
CONTAINER_ID = "4e1f0c9a7b3d2e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7"
GPU_UUIDS = ["GPU-8c3c6a2e-1b7f-4d0e-9a55-1f2e3d4c5b6a", "GPU-0d9e8f7a-6b5c-4d3e-2f1a-0b9c8d7e6f5a"]

RULES = """rules:
  - id: container-exec
    title: a process execs in a container
    description: any exec in a container, so that the test sees what the alert says of it
    severity: low
    match: {fact: exec, where: {process.container.runtime: {in: [podman, cri, containerd]}, name: busybox}}
  - id: pod-exec
    title: a process execs in a pod of the ml namespace
    description: an exec in a pod, matched by namespace
    severity: low
    match: {fact: exec, where: {pod.namespace: ml, name: busybox}}
"""


def start_agent(agents: list[Agent], *flags: str) -> Agent:
    rules = workdir() / "containers.yaml"
    rules.write_text(RULES)
    agent = Agent("--rules", str(rules), "--output", "alerts", *flags)
    agents.append(agent)
    return agent


def first_alert(agent: Agent, rule: str, pid: int) -> dict[str, Any]:
    def found() -> dict[str, Any] | None:
        for alert in agent.alerts(rule):
            if alert["processes"][0]["process"]["pid"] == pid:
                return alert
        return None
    alert: dict[str, Any] = wait_until(found, timeout=20, what=f"{rule} alert for pid {pid}")  # type: ignore[arg-type]
    return alert


def test_a_podman_containers_exec_carries_its_name_and_image(agents: list[Agent], tmp_path: Path) -> None:
    podman.ensure_image()
    socket = tmp_path / "podman.sock"
    name = f"gs-attr-{uuid.uuid4().hex[:8]}"
    with podman.api_service(socket):
        agent = start_agent(agents, "--podman-socket", str(socket))
        with podman.sleeper(name, {"team": "ml"}) as container_id:
            pid = podman.pid_of(name)
            alert = first_alert(agent, "container-exec", pid)
    assert alert["processes"][0]["process"]["container"] == {
        "runtime": "podman", "id": container_id, "name": name, "image": podman.IMAGE}
    assert "pod" not in alert["processes"][0]["process"]


# -- Kubernetes cgroup layouts, made here ----------------------------------------------------------


def cgroupfs_layout(pod_uid: str) -> tuple[Path, str]:
    """The kubelet's cgroupfs driver, a burstable pod: memory:/kubepods/burstable/pod<uid>/<id>."""
    return CGROUP_V1 / "memory" / "kubepods" / "burstable" / f"pod{pod_uid}" / CONTAINER_ID, "cri"


def systemd_layout(pod_uid: str) -> tuple[Path, str]:
    """The systemd driver, a best-effort pod with containerd, in the name=systemd hierarchy."""
    underscored = pod_uid.replace("-", "_")
    return (CGROUP_V1 / "systemd" / "kubepods.slice" / "kubepods-besteffort.slice"
            / f"kubepods-besteffort-pod{underscored}.slice" / f"cri-containerd-{CONTAINER_ID}.scope"), "containerd"


@contextlib.contextmanager
def cgroup(path: Path) -> Iterator[Path]:
    """A cgroup directory made for the test (with its parents), removed deepest first after."""
    made = [p for p in (path, *path.parents) if not p.exists()]
    path.mkdir(parents=True)
    try:
        yield path
    finally:
        for directory in made:  # deepest first: a cgroup goes once its children are gone
            with contextlib.suppress(OSError):
                directory.rmdir()


@pytest.mark.parametrize("layout", [cgroupfs_layout, systemd_layout], ids=["cgroupfs", "systemd"])
def test_a_kubepods_cgroup_gives_the_pod_and_the_pod_resources_api_its_gpus(
        agents: list[Agent], layout: Any) -> None:
    pod_uid = str(uuid.uuid4())
    where, runtime = layout(pod_uid)
    state = workdir()
    (state / "pods" / f"ml_trainer-0_{pod_uid}" / "trainer").mkdir(parents=True)
    allocations = {("ml", "trainer-0", "trainer"): {"nvidia.com/gpu": GPU_UUIDS}}
    with serve_pod_resources(state / "kubelet.sock", allocations), cgroup(where) as group:
        agent = start_agent(agents, "--kubelet-socket", str(state / "kubelet.sock"), "--pod-logs",
                            str(state / "pods"), "--containerd-socket", str(state / "absent.sock"))
        # a real process that moves itself into the pod's container cgroup, then execs
        proc = subprocess.Popen(["/bin/sh", "-c", f'echo $$ > {group}/cgroup.procs && exec /bin/busybox sleep 30'])
        try:
            alert = first_alert(agent, "pod-exec", proc.pid)
        finally:
            proc.kill()
            proc.wait()
    process = alert["processes"][0]["process"]
    # no runtime API here: the container's name and image, and its name in the pod, are unknown,
    # so the GPUs are the pod's
    assert process["pod"] == {"uid": pod_uid, "name": "trainer-0", "namespace": "ml", "container": "",
                              "gpus": GPU_UUIDS}
    assert process["container"] == {"runtime": runtime, "id": CONTAINER_ID, "name": "", "image": ""}
