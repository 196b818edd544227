"""Real podman containers for tests, made without a registry.

The test image is a rootfs holding only a static busybox, imported as IMAGE. Containers run
with runc, because crun refuses hybrid cgroup hosts ("cgroups in hybrid mode not supported"),
and with explicit ulimits, because the test VMs lack CAP_SYS_RESOURCE and podman's default
limits would need it. Root only, like the kernel tests that use it.
"""

from __future__ import annotations

import contextlib
import http.client
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path

from tests.waiting import wait_until

IMAGE = "localhost/gpusentry-test:busybox"
BUSYBOX = Path("/bin/busybox")
RUN_OPTIONS = ("--runtime", "runc", "--ulimit", "nofile=1024:4096", "--ulimit", "nproc=1024:4096")


def podman(*args: str, timeout: float = 60) -> str:
    """Run podman; its stdout, or an AssertionError carrying its stderr."""
    done = subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"podman {' '.join(args)} failed ({done.returncode}): {done.stderr.strip()}"
    return done.stdout


def ensure_image() -> str:
    """IMAGE, imported from a busybox-only rootfs if it is not there yet."""
    exists = subprocess.run(["podman", "image", "exists", IMAGE], capture_output=True, timeout=60)
    if exists.returncode == 0:
        return IMAGE
    assert BUSYBOX.exists(), f"{BUSYBOX} is missing: apt-get install busybox-static"
    with tempfile.TemporaryDirectory() as root:
        (Path(root) / "bin").mkdir()
        shutil.copy(BUSYBOX, Path(root) / "bin" / "busybox")
        tar = subprocess.run(["tar", "-C", root, "-c", "."], capture_output=True, check=True, timeout=60)
        imported = subprocess.run(["podman", "import", "-", IMAGE], input=tar.stdout, capture_output=True,
                                  timeout=120)
    assert imported.returncode == 0, f"podman import failed: {imported.stderr.decode(errors='replace')}"
    return IMAGE


def run_sleeper(name: str, labels: Mapping[str, str] | None = None) -> str:
    """Start a detached container running `sleep`; its full id."""
    label_args = [arg for key, value in (labels or {}).items() for arg in ("--label", f"{key}={value}")]
    output = podman("run", "--detach", *RUN_OPTIONS, "--name", name, *label_args, ensure_image(),
                    "/bin/busybox", "sleep", "3600")
    return output.strip()


def remove(name_or_id: str) -> None:
    """Remove the container whatever its state; a container already gone is fine."""
    subprocess.run(["podman", "rm", "--force", "--time", "0", "--ignore", name_or_id], capture_output=True,
                   timeout=60)


def pid_of(name_or_id: str) -> int:
    """The container's init process, as the host sees it."""
    return int(podman("inspect", "--format", "{{.State.Pid}}", name_or_id).strip())


@contextlib.contextmanager
def sleeper(name: str, labels: Mapping[str, str] | None = None) -> Iterator[str]:
    """A running container for the block's duration; removed however the block ends."""
    remove(name)  # a leftover of an interrupted run would make the name clash
    try:
        yield run_sleeper(name, labels)
    finally:
        remove(name)


@contextlib.contextmanager
def api_service(socket_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """`podman system service` on socket_path, answering once the block starts; stopped after.
    Its log goes to a file beside the socket (a pipe nobody reads would stall it when full)."""
    log_path = socket_path.with_name(socket_path.name + ".log")
    with log_path.open("wb") as log:
        service = subprocess.Popen(["podman", "system", "service", "--time=0", f"unix://{socket_path}"],
                                   stdout=log, stderr=log)
    try:
        wait_until(lambda: service.poll() is not None or _answers(socket_path), timeout=30,
                   what=f"podman's API on {socket_path}")
        assert service.poll() is None, f"podman system service exited: {log_path.read_text(errors='replace')}"
        yield service
    finally:
        service.terminate()
        try:
            service.wait(timeout=10)
        except subprocess.TimeoutExpired:
            service.kill()
            service.wait()


def _answers(socket_path: Path) -> bool:
    """Whether podman answers its _ping: the socket file appears before it serves."""
    if not socket_path.exists():
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(1.0)
            sock.connect(str(socket_path))
            sock.sendall(b"GET /_ping HTTP/1.0\r\nHost: d\r\n\r\n")
            response = http.client.HTTPResponse(sock)
            response.begin()
            return response.status == 200
    except OSError:
        return False
