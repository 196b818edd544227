"""The podman client against a real podman API service, and the cgroup parser against a real
podman container's /proc/PID/cgroup (root; podman, runc and busybox-static installed)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from sensor.containers import cgroups
from sensor.containers.model import ContainerRef, Metadata
from sensor.containers.podman import PodmanClient, PodmanUnavailable
from tests import podman

NAME = "gpusentry-test-podman-client"
LABELS = {"team": "ml-infra", "io.gpusentry.test": "podman client", "empty": ""}
ABSENT_ID = "0" * 64


@pytest.fixture
def client(root: None, tmp_path: Path) -> Iterator[PodmanClient]:
    socket_path = tmp_path / "podman.sock"
    with podman.api_service(socket_path):
        yield PodmanClient(socket_path)


@pytest.fixture
def container(root: None) -> Iterator[str]:
    with podman.sleeper(NAME, LABELS) as container_id:
        yield container_id


def test_inspect_returns_name_image_and_labels(client: PodmanClient, container: str) -> None:
    assert client.inspect(container) == Metadata(name=NAME, image=podman.IMAGE, labels=LABELS)


def test_a_missing_container_is_none(client: PodmanClient) -> None:
    assert client.inspect(ABSENT_ID) is None


def test_a_missing_socket_says_where_and_how(tmp_path: Path) -> None:
    socket_path = tmp_path / "absent.sock"
    with pytest.raises(PodmanUnavailable) as raised:
        PodmanClient(socket_path).inspect(ABSENT_ID)
    assert raised.value.socket_path == socket_path
    assert str(socket_path) in str(raised.value)
    assert "podman system service" in str(raised.value)


@pytest.mark.parametrize("bad", ["../../info", ABSENT_ID[:12], "ABCDEF" + ABSENT_ID[6:], ABSENT_ID + "/json?x=1"])
def test_ids_other_than_64_hex_never_reach_the_url(tmp_path: Path, bad: str) -> None:
    # No service at all: a ValueError, not PodmanUnavailable, shows nothing was sent.
    with pytest.raises(ValueError, match="not a podman container id"):
        PodmanClient(tmp_path / "absent.sock").inspect(bad)


def test_a_real_container_cgroup_parses_to_its_id(container: str) -> None:
    text = Path(f"/proc/{podman.pid_of(container)}/cgroup").read_text()
    found = cgroups.parse(text)
    assert found is not None, text
    assert found == ContainerRef(runtime="podman", id=container, cgroup=found.cgroup)
    # This machine's podman uses its cgroupfs manager: /libpod_parent/libpod-<id>.
    assert found.cgroup.endswith(f"/libpod-{container}"), text
