"""Container and pod attribution from cgroup paths (sensor/containers/cgroups.py).

Ids and UIDs are real ones, from published /proc/PID/cgroup lines, kubelet and runtime test
data, and this project's own podman (noted per case), so the layouts are the ones that exist.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sensor.containers.cgroups import Pod, parse, parse_path, parse_pod
from sensor.containers.model import ContainerRef

# podman 4.3 on this project's test VM (cgroupfs manager): a container, and a pod's id.
PODMAN_ID = "40ae0b62dd963fa6264a0ac429d1af8769d22d20a90d5e64dbad8244e612806f"
PODMAN_POD = "8cd4cb1789247febd9ddbd8d22e80010eece689437b530096623db547ff14849"
# podman on systemd (unix.stackexchange 706472): a container and a pod.
PODMAN_SYSTEMD_ID = "1d16e5700bb207936a96b02cfe929fa161e5685aa15186f4c8be5dc44821b860"
PODMAN_SYSTEMD_POD = "aed1dcce39a52379aaa25179323c2597863a7a9bc9a974950c58d6b5ea4f04e7"
# docker: cgroupfs (DataDog dd-trace docs) and systemd (a cgroup-parsing test's fixture).
DOCKER_ID = "3726184226f5d3147c25fdeab5b60097e378e8a720503a5e19ecfdf29f869860"
DOCKER_SYSTEMD_ID = "ea06501e021b11a0d46a09de007b3d71bd6f37537cceabd2c3cbfa7f9b3da1ee"
# Kubernetes: cgroupfs (dd-trace docs), containerd systemd (a CSI driver's test), cri-o
# systemd (kubernetes e2e test comment), docker systemd (elastic apm-agent fixture).
KUBE_CGROUPFS_UID, KUBE_CGROUPFS_ID = (
    "3d274242-8ee0-11e9-a8a6-1e68d864ef1a", "3e74d3fd9db4c9dd921ae05c2502fb984d0cde1b36e581b13f79c639da4518a1")
CONTAINERD_UID, CONTAINERD_ID = (
    "6553a60b-2b97-442a-b6da-a5704d81dd98", "413715dc061efe71c16ef989f2f2ff5cf999a7dc905bb7078eda82cbb38210ec")
CRIO_UID, CRIO_ID = (
    "0b7632a2-a56e-4278-987a-22de18008dbe", "0bc5eac79e3ae7a0c2651f14722aa10fa333eb2325c2ca97da33aa284cda81b0")
GUARANTEED_UID, DOCKER_KUBE_ID = (
    "9c26dfb6-b9c9-11e7-bfb9-02c6c1fc4861", "3dd988081e7149463c043b5d9c57d7309e079c5e9290f91feba1cc45a04d6a5b")
# kind (kubelet --cgroup-root=/kubelet): a static pod, whose UID is the kubelet's 32-hex hash.
KIND_STATIC_UID, KIND_ID = (
    "99dcb84d2a34f7e338778606703258c4", "ec9ea0ad54dd0d96142d5dbe11eb3f1509e12ba9af739620c7b5ad377ce94602")


def under(uid: str) -> str:
    return uid.replace("-", "_")


LAYOUTS = {
    "docker cgroupfs": (f"/docker/{DOCKER_ID}", ContainerRef("docker", DOCKER_ID)),
    "docker systemd": (f"/system.slice/docker-{DOCKER_SYSTEMD_ID}.scope", ContainerRef("docker", DOCKER_SYSTEMD_ID)),
    "podman cgroupfs": (f"/libpod_parent/libpod-{PODMAN_ID}", ContainerRef("podman", PODMAN_ID)),
    "podman cgroupfs pod": (f"/libpod_parent/{PODMAN_POD}/libpod-{PODMAN_ID}", ContainerRef("podman", PODMAN_ID)),
    "podman systemd": (f"/machine.slice/libpod-{PODMAN_SYSTEMD_ID}.scope", ContainerRef("podman", PODMAN_SYSTEMD_ID)),
    "podman systemd pod": (
        f"/machine.slice/machine-libpod_pod_{PODMAN_SYSTEMD_POD}.slice/libpod-{PODMAN_SYSTEMD_ID}.scope",
        ContainerRef("podman", PODMAN_SYSTEMD_ID)),
    "podman rootless": (f"/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{PODMAN_SYSTEMD_ID}.scope",
                        ContainerRef("podman", PODMAN_SYSTEMD_ID)),
    "podman rootless crun inner cgroup": (
        f"/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{PODMAN_SYSTEMD_ID}.scope/container",
        ContainerRef("podman", PODMAN_SYSTEMD_ID)),
    "kube cgroupfs guaranteed": (f"/kubepods/pod{KUBE_CGROUPFS_UID}/{KUBE_CGROUPFS_ID}",
                                 ContainerRef("cri", KUBE_CGROUPFS_ID, KUBE_CGROUPFS_UID, "guaranteed")),
    "kube cgroupfs burstable": (f"/kubepods/burstable/pod{KUBE_CGROUPFS_UID}/{KUBE_CGROUPFS_ID}",
                                ContainerRef("cri", KUBE_CGROUPFS_ID, KUBE_CGROUPFS_UID, "burstable")),
    "kube cgroupfs besteffort": (f"/kubepods/besteffort/pod{KUBE_CGROUPFS_UID}/{KUBE_CGROUPFS_ID}",
                                 ContainerRef("cri", KUBE_CGROUPFS_ID, KUBE_CGROUPFS_UID, "besteffort")),
    "cri-o cgroupfs": (f"/kubepods/burstable/pod{CRIO_UID}/crio-{CRIO_ID}",
                       ContainerRef("cri-o", CRIO_ID, CRIO_UID, "burstable")),
    "containerd systemd guaranteed": (
        f"/kubepods.slice/kubepods-pod{under(CONTAINERD_UID)}.slice/cri-containerd-{CONTAINERD_ID}.scope",
        ContainerRef("containerd", CONTAINERD_ID, CONTAINERD_UID, "guaranteed")),
    "containerd systemd burstable": (
        f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{under(CONTAINERD_UID)}.slice/"
        f"cri-containerd-{CONTAINERD_ID}.scope",
        ContainerRef("containerd", CONTAINERD_ID, CONTAINERD_UID, "burstable")),
    "containerd systemd besteffort": (
        f"/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{under(CONTAINERD_UID)}.slice/"
        f"cri-containerd-{CONTAINERD_ID}.scope",
        ContainerRef("containerd", CONTAINERD_ID, CONTAINERD_UID, "besteffort")),
    "cri-o systemd burstable": (
        f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{under(CRIO_UID)}.slice/crio-{CRIO_ID}.scope",
        ContainerRef("cri-o", CRIO_ID, CRIO_UID, "burstable")),
    "cri-o systemd besteffort": (
        f"/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{under(CRIO_UID)}.slice/crio-{CRIO_ID}.scope",
        ContainerRef("cri-o", CRIO_ID, CRIO_UID, "besteffort")),
    "docker systemd under kubernetes": (
        f"/kubepods.slice/kubepods-pod{under(GUARANTEED_UID)}.slice/docker-{DOCKER_KUBE_ID}.scope",
        ContainerRef("docker", DOCKER_KUBE_ID, GUARANTEED_UID, "guaranteed")),
    "kind static pod, cgroup root /kubelet": (
        f"/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-burstable.slice/"
        f"kubelet-kubepods-burstable-pod{KIND_STATIC_UID}.slice/cri-containerd-{KIND_ID}.scope",
        ContainerRef("containerd", KIND_ID, KIND_STATIC_UID, "burstable")),
    "kind node in docker: the innermost container": (
        f"/docker/{DOCKER_ID}/kubepods/besteffort/pod{KUBE_CGROUPFS_UID}/{KUBE_CGROUPFS_ID}",
        ContainerRef("cri", KUBE_CGROUPFS_ID, KUBE_CGROUPFS_UID, "besteffort")),
    "outside the reader's cgroup namespace": (f"/../../system.slice/docker-{DOCKER_SYSTEMD_ID}.scope",
                                              ContainerRef("docker", DOCKER_SYSTEMD_ID)),
}


@pytest.mark.parametrize(("path", "expected"), LAYOUTS.values(), ids=LAYOUTS.keys())
def test_layout(path: str, expected: ContainerRef) -> None:
    want = ContainerRef(expected.runtime, expected.id, expected.pod_uid, expected.qos, cgroup=path)
    assert parse_path(path) == want
    assert parse(f"0::{path}\n") == want


def test_docker_in_docker_reports_the_inner_container() -> None:
    path = f"/docker/{DOCKER_ID}/docker/{DOCKER_KUBE_ID}"
    assert parse_path(path) == ContainerRef("docker", DOCKER_KUBE_ID, cgroup=path)


def test_container_in_a_pod_keeps_the_pod_above_it() -> None:
    # docker-in-docker inside a Kubernetes pod: the inner container, in the outer pod.
    path = f"/kubepods/burstable/pod{KUBE_CGROUPFS_UID}/{KUBE_CGROUPFS_ID}/docker/{DOCKER_ID}"
    assert parse_path(path) == ContainerRef("docker", DOCKER_ID, KUBE_CGROUPFS_UID, "burstable", cgroup=path)


V1_LINES = [f"{n}:{c}:/docker/{DOCKER_ID}" for n, c in
            [(11, "perf_event"), (10, "net_cls,net_prio"), (9, "name=systemd"), (4, "memory"), (1, "cpu,cpuacct")]]


def test_cgroup_v1_text() -> None:
    text = "\n".join(V1_LINES) + "\n"
    assert parse(text) == ContainerRef("docker", DOCKER_ID, cgroup=f"/docker/{DOCKER_ID}")


def test_hybrid_text_as_this_machine_writes_it() -> None:
    path = f"/libpod_parent/libpod-{PODMAN_ID}"
    controllers = ["name=systemd", "pids", "blkio", "freezer", "devices", "memory", "cpuset", "cpuacct", "cpu"]
    text = "".join(f"{9 - n}:{c}:{path}\n" for n, c in enumerate(controllers)) + f"0::{path}\n"
    assert parse(text) == ContainerRef("podman", PODMAN_ID, cgroup=path)


def test_first_recognised_line_wins() -> None:
    # A host whose v1 name=systemd hierarchy does not follow the container (PID 1 not systemd).
    path = f"/libpod_parent/libpod-{PODMAN_ID}"
    text = f"9:name=systemd:/\n8:pids:{path}\n0::{path}\n"
    assert parse(text) == ContainerRef("podman", PODMAN_ID, cgroup=path)


def test_cgroup_v2_text() -> None:
    path = f"/system.slice/docker-{DOCKER_SYSTEMD_ID}.scope"
    assert parse(f"0::{path}\n") == ContainerRef("docker", DOCKER_SYSTEMD_ID, cgroup=path)


HOST_PATHS = [
    "/",
    "/init.scope",
    "/user.slice/user-1000.slice/session-1.scope",
    "/system.slice/sshd.service",
    "/system.slice/docker.service",  # dockerd itself
    "/process_api/c851e693fc58cf6ef049c17cb39f0e59",
    "/libpod_parent/conmon",  # podman's monitor, cgroupfs
    f"/machine.slice/libpod-conmon-{PODMAN_SYSTEMD_ID}.scope",  # podman's monitor, systemd
    f"/libpod_parent/libpod-conmon-{PODMAN_ID}",
    f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{under(CRIO_UID)}.slice/crio-conmon-{CRIO_ID}.scope",
    f"/kubepods/burstable/pod{KUBE_CGROUPFS_UID}",  # pod level: a pod, no container
    "/kubepods.slice",
    "/kubepods/burstable",
]


@pytest.mark.parametrize("path", HOST_PATHS)
def test_not_a_container(path: str) -> None:
    assert parse_path(path) is None
    assert parse(f"0::{path}\n") is None


BAD_IDS = [
    DOCKER_ID[:12],  # docker's short form
    DOCKER_ID[:63],
    DOCKER_ID + "0",
    DOCKER_ID.upper(),
    "g" + DOCKER_ID[1:],
    "container456",
]


@pytest.mark.parametrize("bad", BAD_IDS)
@pytest.mark.parametrize("layout", ["/docker/{}", "/system.slice/docker-{}.scope", "/libpod_parent/libpod-{}",
                                    "/kubepods/besteffort/pod" + KUBE_CGROUPFS_UID + "/{}",
                                    "/kubepods.slice/kubepods-pod" + under(CONTAINERD_UID)
                                    + ".slice/cri-containerd-{}.scope"])
def test_malformed_ids_are_refused(layout: str, bad: str) -> None:
    assert parse_path(layout.format(bad)) is None


HOSTILE = [
    f"/docker/../docker/{DOCKER_ID}",
    f"/docker/./{DOCKER_ID}",
    f"/docker//{DOCKER_ID}",
    f"/docker/{DOCKER_ID}/",
    f"docker/{DOCKER_ID}",  # not absolute
    f"/x\n0::/docker/{DOCKER_ID}",
    f"/docker/{DOCKER_ID}\x00",
    f"/evil\t/docker/{DOCKER_ID}",
    f"/{DOCKER_ID}",  # a bare id names a container only below docker or a kubelet pod
    f"/machine.slice/{DOCKER_ID}",
    f"/kubepods/guaranteed/pod{KUBE_CGROUPFS_UID}/{KUBE_CGROUPFS_ID}",  # no such QoS level
    f"/pod{KUBE_CGROUPFS_UID}/{KUBE_CGROUPFS_ID}",
]


@pytest.mark.parametrize("path", HOSTILE)
def test_hostile_paths_are_refused(path: str) -> None:
    assert parse_path(path) is None


def test_a_forged_line_refuses_the_whole_text() -> None:
    # A cgroup named "x\n1:cpu:" in /docker/<id> makes the kernel print a line that looks real.
    # Alone, the forged line cannot be told from a real one (attribution, not proof)...
    assert parse(f"0::/x\n1:cpu:/docker/{DOCKER_ID}\n") is not None
    assert parse(f"1:cpu:/\n0::/x\n1:cpu:/docker/{DOCKER_ID}\n") is None  # ...but a hierarchy twice is refused
    assert parse(f"0::/x\nnot a line/docker/{DOCKER_ID}\n") is None


@pytest.mark.parametrize("text", ["", "\n", "0::", "garbage", "0:/docker"])
def test_texts_without_a_path(text: str) -> None:
    assert parse(text) is None


POD_PATHS = {
    f"/kubepods/pod{KUBE_CGROUPFS_UID}": Pod(KUBE_CGROUPFS_UID, "guaranteed"),
    f"/kubepods/burstable/pod{KUBE_CGROUPFS_UID}": Pod(KUBE_CGROUPFS_UID, "burstable"),
    f"/kubepods/besteffort/pod{KUBE_CGROUPFS_UID}/{KUBE_CGROUPFS_ID}": Pod(KUBE_CGROUPFS_UID, "besteffort"),
    f"/kubepods.slice/kubepods-pod{under(CONTAINERD_UID)}.slice": Pod(CONTAINERD_UID, "guaranteed"),
    f"/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{under(CRIO_UID)}.slice": Pod(CRIO_UID,
                                                                                                     "besteffort"),
    f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{under(CRIO_UID)}.slice/crio-conmon-{CRIO_ID}.scope":
        Pod(CRIO_UID, "burstable"),
    f"/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-pod{KIND_STATIC_UID}.slice": Pod(KIND_STATIC_UID,
                                                                                             "guaranteed"),
    # Seen from inside a cgroup namespace rooted at the QoS slice.
    f"/kubepods-burstable-pod{under(CRIO_UID)}.slice/crio-{CRIO_ID}.scope": Pod(CRIO_UID, "burstable"),
}


@pytest.mark.parametrize(("path", "pod"), POD_PATHS.items(), ids=range(len(POD_PATHS)))
def test_pod(path: str, pod: Pod) -> None:
    assert parse_pod(path) == pod


NOT_PODS = [
    "/", "/kubepods.slice", "/kubepods", "/kubepods/burstable", "/kubepods.slice/kubepods-burstable.slice",
    f"/docker/{DOCKER_ID}",
    f"/kubepods/burstable/pod{KUBE_CGROUPFS_UID.upper()}",
    f"/kubepods/burstable/pod{under(KUBE_CGROUPFS_UID)}",  # underscores belong to the systemd driver
    f"/kubepods.slice/kubepods-pod{CONTAINERD_UID}.slice",  # and dashes to cgroupfs
    f"/system.slice/kubepods-burstable-pod{under(CRIO_UID)}.slice",  # not in its parent slice
    f"/kubepods/../kubepods/pod{KUBE_CGROUPFS_UID}",
]


@pytest.mark.parametrize("path", NOT_PODS)
def test_not_a_pod(path: str) -> None:
    assert parse_pod(path) is None


def test_pod_slice_at_the_namespace_root_still_names_its_container() -> None:
    path = f"/kubepods-burstable-pod{under(CRIO_UID)}.slice/crio-{CRIO_ID}.scope"
    assert parse_path(path) == ContainerRef("cri-o", CRIO_ID, CRIO_UID, "burstable", cgroup=path)


CGROUP_ALPHABET = st.sampled_from([*"0123456789abcdef:/.-_\n", "docker", "libpod-", "kubepods", "pod", ".slice",
                                   ".scope", "crio-", "cri-containerd-", "burstable", "besteffort", DOCKER_ID,
                                   under(CRIO_UID), CRIO_UID, "\x00", "é"])


@given(st.text())
def test_parse_never_raises_on_any_text(text: str) -> None:
    result = parse(text)
    assert result is None or len(result.id) == 64


@given(st.lists(CGROUP_ALPHABET, max_size=40).map("".join))
def test_parse_never_raises_on_cgroup_like_text(text: str) -> None:
    for result in (parse(text), parse_path(text)):
        assert result is None or (len(result.id) == 64 and result.runtime in {"docker", "containerd", "cri-o",
                                                                              "podman", "cri"})
    parse_pod(text)
