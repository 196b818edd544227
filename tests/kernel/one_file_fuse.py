"""Serves one file, read-only, through FUSE: a library on a filesystem a process controls (its
reads could stall whoever reads it). For tests/kernel/test_launches.py.

    python -m tests.kernel.one_file_fuse SOURCE MOUNTPOINT     (MOUNTPOINT/NAME is SOURCE's copy)
"""

from __future__ import annotations

import errno
import stat
import sys
from pathlib import Path
from typing import Any


def serve(source: Path, mountpoint: str) -> None:
    import mfusepy as fuse

    name, data = "/" + source.name, source.read_bytes()

    class OneFile(fuse.Operations):  # type: ignore[misc]
        def getattr(self, path: str, fh: int | None = None) -> dict[str, Any]:
            if path == "/":
                return {"st_mode": stat.S_IFDIR | 0o755, "st_nlink": 2}
            if path == name:
                return {"st_mode": stat.S_IFREG | 0o755, "st_nlink": 1, "st_size": len(data)}
            raise fuse.FuseOSError(errno.ENOENT)

        def readdir(self, path: str, fh: int) -> list[str]:
            return [".", "..", name[1:]]

        def open(self, path: str, flags: int) -> int:
            if path != name:
                raise fuse.FuseOSError(errno.ENOENT)
            return 0

        def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
            return data[offset:offset + size]

    fuse.FUSE(OneFile(), mountpoint, foreground=True, ro=True, allow_other=True, nothreads=True)


if __name__ == "__main__":
    serve(Path(sys.argv[1]), sys.argv[2])
