"""Start the fake driver, replay a fixture under it in a private namespace, stop the driver."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sensor.errors import GpusentryError


class FakeGpuError(GpusentryError):
    """The fake driver or a replay could not run."""


@dataclass
class ReplayResult:
    returncode: int
    report: dict[str, Any]
    stderr: str

    @property
    def pid(self) -> int:
        return int(self.report["pid"])


def _wait_for_mount(path: Path, driver: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    waited = threading.Event()
    steps = int(timeout / 0.05)
    for _ in range(steps):
        if os.path.ismount(path):
            return
        if driver.poll() is not None:
            break
        waited.wait(0.05)
    stderr = driver.stderr.read().decode(errors="replace") if driver.stderr and driver.poll() is not None else ""
    raise FakeGpuError(f"the fake driver did not mount at {path}: {stderr.strip() or 'timed out'}",
                       "check that FUSE works here (fuse3 installed, /dev/fuse present, running as root)")


@contextlib.contextmanager
def fake_driver(arch: str = "hopper") -> Iterator[Path]:
    """The fake driver, mounted in a temporary directory, for as long as the block runs."""
    mountpoint = Path(tempfile.mkdtemp(prefix="gpusentry-fakegpu-"))
    driver = subprocess.Popen([sys.executable, "-m", "sensor.fakegpu.driver", str(mountpoint), "--arch", arch],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _wait_for_mount(mountpoint, driver)
        yield mountpoint
    finally:
        subprocess.run(["fusermount3", "-u", str(mountpoint)], capture_output=True)
        driver.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            driver.wait(timeout=10)
        if driver.poll() is None:
            driver.kill()
            driver.wait()
        with contextlib.suppress(OSError):
            mountpoint.rmdir()


def replay(driver_dir: Path, fixture: Path, timeout: float = 300) -> ReplayResult:
    """Run the CUDA-like client on `fixture` with the fake's files at /dev/nvidia*."""
    command = [sys.executable, "-m", "sensor.fakegpu.isolate", str(driver_dir), "--",
               sys.executable, "-m", "sensor.fakegpu.client", str(fixture)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    report: dict[str, Any] = {}
    lines = done.stdout.strip().splitlines()
    if done.returncode == 0 and lines:
        report = json.loads(lines[-1])
        report["child_reports"] = [json.loads(line) for line in lines[:-1] if line.startswith("{")]
    return ReplayResult(done.returncode, report, done.stderr)
