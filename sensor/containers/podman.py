"""A podman container's name, image and labels, from podman's libpod REST API on its unix socket.

GET /v4.0.0/libpod/containers/{id}/json (podman's container inspect). The socket is podman's
own (`systemctl enable --now podman.socket`, or `podman system service`); without it podman
has no daemon to ask, and the resolver leaves podman containers named by id only.

What comes back is what whoever created the container chose, so it is data to show, never to
act on: labels are only ever the container's own Config.Labels, with nothing of ours mixed in.
That is why a podman pod's name is not added as a label (a container can set any label itself,
so an added `io.podman.pod.name` could not be told from a forged one); the pod's id is in the
inspect answer (`Pod`) should Metadata gain a field for it.
"""

from __future__ import annotations

import http.client
import json
import re
import socket
from pathlib import Path
from typing import Any

from sensor.containers.model import Metadata

DEFAULT_SOCKET = Path("/run/podman/podman.sock")
# podman 4 and 5 both serve the 4.0.0 libpod API.
API_VERSION = "v4.0.0"
TIMEOUT_S = 1.0
MAX_ANSWER = 4 << 20  # an inspect answer is a few KiB; a larger one is not podman's
_CONTAINER_ID = re.compile(r"[0-9a-f]{64}")


class PodmanError(Exception):
    """podman's API answered something other than a container or "no such container"."""


class PodmanUnavailable(PodmanError):
    """podman's API socket could not be reached."""

    def __init__(self, socket_path: Path, cause: BaseException) -> None:
        super().__init__(f"podman's API socket {socket_path} cannot be reached ({cause}); start it with "
                         f"`systemctl enable --now podman.socket` or `podman system service --time=0 "
                         f"unix://{socket_path}`, or point the agent at the right socket")
        self.socket_path = socket_path


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, socket_path: Path, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)  # the Host header podman ignores
        self.socket_path = socket_path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(str(self.socket_path))
        except BaseException:
            sock.close()
            raise
        self.sock = sock


class PodmanClient:
    def __init__(self, socket_path: Path = DEFAULT_SOCKET, timeout: float = TIMEOUT_S) -> None:
        self.socket_path = socket_path
        self.timeout = timeout

    def inspect(self, container_id: str) -> Metadata | None:
        """The container's metadata; None when podman has no such container (it has gone)."""
        # The id goes into a URL: only the exact form a cgroup path gives is let through.
        if _CONTAINER_ID.fullmatch(container_id) is None:
            raise ValueError(f"not a podman container id (64 lowercase hex digits): {container_id!r}")
        status, body = self._get(f"/{API_VERSION}/libpod/containers/{container_id}/json")
        if status == http.client.NOT_FOUND:
            return None
        if status != http.client.OK:
            raise PodmanError(f"podman at {self.socket_path} answered {status} for container {container_id}: "
                              f"{body[:200]!r}")
        return metadata_from_inspect(_decode(body, self.socket_path))

    def _get(self, url: str) -> tuple[int, bytes]:
        connection = _UnixConnection(self.socket_path, self.timeout)
        try:
            connection.request("GET", url)
            response = connection.getresponse()
            body = response.read(MAX_ANSWER + 1)
        except OSError as error:  # refused, missing, no permission, timed out
            raise PodmanUnavailable(self.socket_path, error) from error
        except http.client.HTTPException as error:
            raise PodmanError(f"podman at {self.socket_path} sent a broken answer: {error}") from error
        finally:
            connection.close()
        if len(body) > MAX_ANSWER:
            raise PodmanError(f"podman at {self.socket_path} sent an answer over {MAX_ANSWER} bytes")
        return response.status, body


def _decode(body: bytes, socket_path: Path) -> dict[str, Any]:
    try:
        answer = json.loads(body)
    except ValueError as error:
        raise PodmanError(f"podman at {socket_path} sent JSON that does not parse: {error}") from error
    if not isinstance(answer, dict):
        raise PodmanError(f"podman at {socket_path} sent {type(answer).__name__}, not a container")
    return answer


def metadata_from_inspect(answer: dict[str, Any]) -> Metadata:
    """Metadata from a libpod inspect answer; fields of the wrong type count as absent."""
    config = answer.get("Config")
    config = config if isinstance(config, dict) else {}
    # ImageName is what the container was created from (a name, not a digest); Config.Image
    # holds the same for containers made by older podman.
    image = _text(answer.get("ImageName")) or _text(config.get("Image"))
    labels = config.get("Labels")
    labels = labels if isinstance(labels, dict) else {}
    return Metadata(
        name=_text(answer.get("Name")).removeprefix("/"),  # docker-compatible answers add the slash
        image=image,
        labels={k: v for k, v in labels.items() if isinstance(k, str) and isinstance(v, str)},
    )


def _text(value: object) -> str:
    return value if isinstance(value, str) else ""
