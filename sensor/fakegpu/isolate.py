"""Run a command with the fake driver's files at /dev/nvidia*, in a private mount namespace.

/dev in the new namespace is an overlay on the host's /dev, so every other node still works;
the fake's files are bind-mounted onto nvidiactl, nvidia0 and nvidia-uvm there. Nothing
outside the namespace changes: the host's /dev is never touched.

    python -m sensor.fakegpu.isolate DRIVER_DIR -- COMMAND [ARG ...]
"""

from __future__ import annotations

import ctypes
import os
import stat
import sys
import tempfile
from pathlib import Path

CLONE_NEWNS = 0x00020000
MS_BIND, MS_REC, MS_PRIVATE = 0x1000, 0x4000, 0x40000
DEVICES = ("nvidiactl", "nvidia0", "nvidia-uvm")

_libc = ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def mount(source: str, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    _check(_libc.mount(source.encode(), target.encode(), fstype.encode() if fstype else None, flags,
                       data.encode() if data else None), f"mount {target}")


def enter(driver_dir: Path) -> None:
    _check(_libc.unshare(CLONE_NEWNS), "unshare(CLONE_NEWNS)")
    mount("none", "/", None, MS_REC | MS_PRIVATE)  # nothing below propagates back to the host
    scratch = Path(tempfile.mkdtemp(prefix="gpusentry-dev-"))
    mount("none", str(scratch), "tmpfs", 0, "mode=0755")
    (scratch / "upper").mkdir()
    (scratch / "work").mkdir()
    mount("overlay", "/dev", "overlay", 0, f"lowerdir=/dev,upperdir={scratch}/upper,workdir={scratch}/work")
    for name in DEVICES:
        target = Path("/dev") / name
        # mknod, not open: an open of a file named nvidiactl is itself a GPU open to the sensor
        os.mknod(target, 0o644 | stat.S_IFREG)
        mount(str(driver_dir / name), str(target), None, MS_BIND)


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[1] != "--":
        print("usage: python -m sensor.fakegpu.isolate DRIVER_DIR -- COMMAND [ARG ...]", file=sys.stderr)
        return 2
    try:
        enter(Path(argv[0]))
    except OSError as exc:
        print(f"isolate: error: {exc.strerror}; fix: run as root (it makes a mount namespace)", file=sys.stderr)
        return 2
    os.execvp(argv[2], argv[2:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
