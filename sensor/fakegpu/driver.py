"""The fake NVIDIA driver: RM objects, handles and status codes, as the real one reports them.

`FakeRm` is the logic, testable on its own: it validates sizes (EINVAL, like the real driver
since 595), allocates handles when asked for handle 0, checks that classes exist on the
modelled GPU and that parents exist and fit, and writes NV_STATUS codes into the argument
struct. `NvidiaFs` serves it over FUSE as nvidiactl, nvidia0 and nvidia-uvm; FUSE copies a
restricted ioctl's argument in and out by its _IOC size, so RM structs arrive whole, while
UVM's plain command numbers carry no size and arrive without their argument.
IOCTL_XFER_CMD points at the real call in the caller's memory: like the real driver's
copy_from_user, the fake reads and writes it there (/proc/PID/mem of the caller FUSE names).

    python -m sensor.fakegpu.driver MOUNTPOINT [--arch hopper|ampere]
"""

from __future__ import annotations

import argparse
import ctypes
import errno
import itertools
import stat
import struct
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from sensor.fakegpu import abi
from sensor.gpu_classes import Role, role_of

# What each modelled GPU answers to (NVIDIA-ABI.md, Classes that matter).
ARCH_CLASSES: dict[str, set[int]] = {
    "hopper": {0xC661, 0xC86F, 0xCBC0, 0xC8B5},
    "ampere": {0xC561, 0xC56F, 0xC6C0, 0xC6B5},
}
COMMON_CLASSES = {0x0, 0x1, 0x41, 0x80, 0x2080, 0x90F1, 0xA06C, 0x9067, 0x900E, 0x3E, 0x3F, 0x40, 0x71, 0xC2,
                  0xF8, 0x5, 0x79, 0x70, 0x50A0, 0x503B}
# Which parent each role needs; roles not listed accept any existing parent.
PARENT_ROLES: dict[Role, set[Role]] = {
    Role.DEVICE: {Role.CLIENT},
    Role.SUBDEVICE: {Role.DEVICE},
    Role.VASPACE: {Role.DEVICE},
    Role.CHANNEL_GROUP: {Role.DEVICE, Role.SUBDEVICE},
    Role.CONTEXT_SHARE: {Role.CHANNEL_GROUP},
    Role.CHANNEL: {Role.CHANNEL_GROUP, Role.DEVICE},
    Role.COMPUTE: {Role.CHANNEL},
    Role.COPY: {Role.CHANNEL},
    Role.DOORBELL: {Role.SUBDEVICE},
}
CLIENT_CLASSES = {0x0, 0x1, 0x41}
DEVICES = ("nvidiactl", "nvidia0", "nvidia-uvm")


class CallerMemory(Protocol):
    """The calling process's memory, for arguments passed by pointer."""

    def read(self, address: int, size: int) -> bytes: ...

    def write(self, address: int, data: bytes) -> None: ...


class ProcMemory:
    def __init__(self, pid: int) -> None:
        self.path = f"/proc/{pid}/mem"

    def read(self, address: int, size: int) -> bytes:
        with open(self.path, "rb", buffering=0) as mem:
            mem.seek(address)
            return mem.read(size)

    def write(self, address: int, data: bytes) -> None:
        with open(self.path, "r+b", buffering=0) as mem:
            mem.seek(address)
            mem.write(data)


@dataclass
class FakeRm:
    arch: str = "hopper"
    objects: dict[tuple[int, int], int] = field(default_factory=dict)  # (client, handle) -> class
    parents: dict[tuple[int, int], int] = field(default_factory=dict)
    _client_handles: itertools.count[int] = field(default_factory=lambda: itertools.count(0xC1D00001))
    _object_handles: itertools.count[int] = field(default_factory=lambda: itertools.count(0xCAF00001))
    calls: int = 0

    def classes(self) -> set[int]:
        return COMMON_CLASSES | ARCH_CLASSES[self.arch]

    def ioctl(self, device: str, cmd: int, data: bytearray | None, memory: CallerMemory | None = None) -> int:
        """0, or -errno; RM outcomes go into the struct's status field."""
        self.calls += 1
        if device != "nvidia-uvm" and abi.ioc_nr(cmd) == abi.ESCAPES["IOCTL_XFER_CMD"][0] and data is not None:
            return self._xfer(device, cmd, data, memory)
        if device == "nvidia-uvm":
            return 0  # plain command numbers: FUSE passes no argument, nothing to answer
        if abi.ioc_type(cmd) != abi.NV_IOCTL_MAGIC:
            return -errno.ENOTTY
        name = abi.ESCAPE_BY_NR.get(abi.ioc_nr(cmd))
        if name is None:
            return -errno.EINVAL
        sizes = abi.ESCAPES[name][1]
        size = abi.ioc_size(cmd)
        if (sizes is not None and size not in sizes) or data is None or len(data) != size:
            return -errno.EINVAL
        handler = getattr(self, f"_{name.lower()}", None)
        if handler is not None:
            handler(data)
        return 0

    def _xfer(self, device: str, cmd: int, data: bytearray, memory: CallerMemory | None) -> int:
        """IOCTL_XFER_CMD {cmd, size, ptr}: the inner call, read from and written back to ptr."""
        if abi.ioc_size(cmd) != abi.XFER.size or len(data) != abi.XFER.size or memory is None:
            return -errno.EINVAL
        inner_nr, size, pointer = abi.XFER.unpack_from(data)
        if inner_nr == abi.ESCAPES["IOCTL_XFER_CMD"][0] or size > 16384:
            return -errno.EINVAL
        try:
            inner = bytearray(memory.read(pointer, size))
        except OSError:
            return -errno.EFAULT
        result = self.ioctl(device, abi.ioc(inner_nr, size), inner)
        memory.write(pointer, bytes(inner))
        return result

    def _check_version_str(self, data: bytearray) -> None:
        struct.pack_into("<I", data, 4, abi.RM_API_VERSION_REPLY_RECOGNIZED)

    def _rm_alloc(self, data: bytearray) -> None:
        root, parent, new, klass, _ = abi.ALLOC_HEAD.unpack_from(data)
        status, new = self._alloc(root, parent, new, klass)
        struct.pack_into("<I", data, 8, new)
        struct.pack_into("<I", data, abi.ALLOC_STATUS_AT[len(data)], status)

    def _alloc(self, root: int, parent: int, new: int, klass: int) -> tuple[int, int]:
        if klass not in self.classes():
            return abi.NV_ERR_INVALID_CLASS, new
        if klass in CLIENT_CLASSES:
            new = new or next(self._client_handles)
            if (new, new) in self.objects:
                return abi.NV_ERR_INSERT_DUPLICATE_NAME, new
            self.objects[(new, new)] = klass
            return abi.NV_OK, new
        if (root, root) not in self.objects:
            return abi.NV_ERR_INVALID_CLIENT, new
        parent_class = self.objects.get((root, parent))
        if parent_class is None:
            return abi.NV_ERR_INVALID_OBJECT_PARENT, new
        allowed = PARENT_ROLES.get(role_of(klass))
        if allowed is not None and role_of(parent_class) not in allowed:
            return abi.NV_ERR_INVALID_OBJECT_PARENT, new
        new = new or next(self._object_handles)
        if (root, new) in self.objects:
            return abi.NV_ERR_INSERT_DUPLICATE_NAME, new
        self.objects[(root, new)] = klass
        self.parents[(root, new)] = parent
        return abi.NV_OK, new

    def _rm_alloc_memory(self, data: bytearray) -> None:
        """NVOS02: host memory (system, or an OS descriptor) described to the driver."""
        root, parent, new, klass, *_ = abi.ALLOC_MEMORY.unpack_from(data)
        status = abi.NV_ERR_INVALID_CLASS
        if klass in (0x3E, 0x71):
            status, new = self._alloc(root, parent, new, klass)
        struct.pack_into("<I", data, 8, new)
        struct.pack_into("<I", data, abi.ALLOC_MEMORY_STATUS_AT, status)

    def _rm_free(self, data: bytearray) -> None:
        root, _, old, _ = abi.FREE.unpack_from(data)
        if (root, old) not in self.objects:
            status = abi.NV_ERR_INVALID_OBJECT_HANDLE
        else:
            self._free_tree(root, old)
            status = abi.NV_OK
        struct.pack_into("<I", data, 12, status)

    def _free_tree(self, root: int, handle: int) -> None:
        if root == handle:  # freeing a client frees everything under it
            for key in [k for k in self.objects if k[0] == root]:
                self.objects.pop(key)
                self.parents.pop(key, None)
            return
        for child in [k for k, p in self.parents.items() if k[0] == root and p == handle]:
            self._free_tree(*child)
        self.objects.pop((root, handle), None)
        self.parents.pop((root, handle), None)

    def _rm_control(self, data: bytearray) -> None:
        client, obj = struct.unpack_from("<II", data)
        ok = (client, obj) in self.objects
        struct.pack_into("<I", data, 28, abi.NV_OK if ok else abi.NV_ERR_INVALID_OBJECT_HANDLE)


def _now() -> dict[str, int]:
    t = time.time_ns()
    return {"st_ctime": t, "st_mtime": t, "st_atime": t}


def serve(mountpoint: str, arch: str) -> None:
    import mfusepy as fuse

    rm = FakeRm(arch=arch)

    class NvidiaFs(fuse.Operations):  # type: ignore[misc]
        use_ns = True

        def getattr(self, path: str, fh: int | None = None) -> dict[str, Any]:
            if path == "/":
                return {"st_mode": stat.S_IFDIR | 0o755, "st_nlink": 2, **_now()}
            if path.lstrip("/") in DEVICES:
                return {"st_mode": stat.S_IFREG | 0o666, "st_nlink": 1, "st_size": 0, **_now()}
            raise fuse.FuseOSError(errno.ENOENT)

        def readdir(self, path: str, fh: int) -> list[str]:
            return [".", "..", *DEVICES]

        def open(self, path: str, flags: int) -> int:
            if path.lstrip("/") not in DEVICES:
                raise fuse.FuseOSError(errno.ENOENT)
            return 0

        def ioctl(self, path: str, cmd: int, arg: Any, fh: int, flags: int, data: Any) -> int:
            cmd &= 0xFFFFFFFF
            size = abi.ioc_size(cmd) if abi.ioc_type(cmd) == abi.NV_IOCTL_MAGIC else 0
            buf = (ctypes.c_uint8 * size).from_address(data) if data and size else None
            arg_bytes = bytearray(buf) if buf is not None else None
            caller = ProcMemory(fuse.fuse_get_context()[2])
            result = rm.ioctl(path.lstrip("/"), cmd, arg_bytes, caller)
            if result < 0:
                raise fuse.FuseOSError(-result)
            if buf is not None and arg_bytes is not None:
                ctypes.memmove(buf, bytes(arg_bytes), size)
            return 0

    fuse.FUSE(NvidiaFs(), mountpoint, foreground=True, allow_other=True, nothreads=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sensor.fakegpu.driver")
    parser.add_argument("mountpoint")
    parser.add_argument("--arch", choices=sorted(ARCH_CLASSES), default="hopper")
    args = parser.parse_args(argv)
    serve(args.mountpoint, args.arch)
    return 0


if __name__ == "__main__":
    sys.exit(main())
