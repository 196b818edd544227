"""A CUDA-like client: replays a fixture's ioctls against /dev/nvidia*, with the real layouts.

It makes the same syscalls a CUDA program makes at those points (open, RM_ALLOC with NVOS64,
RM_CONTROL with a params pointer, UVM commands, IOCTL_XFER_CMD), and prints what the driver
answered as JSON on its last line: the handles it got and every RM and UVM call's result, so
a test can compare them with what the sensor reported.

    python -m sensor.fakegpu.client FIXTURE [--dev-dir /dev]
"""

from __future__ import annotations

import argparse
import ctypes
import errno
import fcntl
import json
import os
import struct
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sensor.errors import GpusentryError
from sensor.fakegpu import abi
from sensor.fakegpu.fixtures import Fixture, load

CLIENT_CLASSES = {0x0, 0x1, 0x41}
FAKE_GPU_UUID = bytes.fromhex("5f2e1a0c9b7d4e3fa1b2c3d4e5f60718")  # GPU-5f2e1a0c-9b7d-...
MAX_CALLS_KEPT = 20_000


@dataclass
class Call:
    op: str
    ret: int
    status: int
    klass: int = 0
    handle: int = 0
    parent: int = 0
    cmd: int = 0
    event_class: int = 0  # NV01_EVENT: the class in its parameters


@dataclass
class Replay:
    fixture: Fixture
    dev_dir: Path
    fds: dict[str, int] = field(default_factory=dict)
    handles: dict[str, int] = field(default_factory=dict)
    calls: list[Call] = field(default_factory=list)
    calls_dropped: int = 0
    ioctls: int = 0  # every ioctl this process made, for comparison with the kernel's count
    children: list[int] = field(default_factory=list)
    _next_handle: int = 0x5C000001
    _keep: list[Any] = field(default_factory=list)  # ctypes buffers whose addresses are in flight

    def run(self) -> None:
        self._steps(self.fixture.steps)

    def _steps(self, steps: list[dict[str, Any]]) -> None:
        for step in steps:
            op, args = next(iter(step.items()))
            getattr(self, f"_op_{op}")(args)

    # -- file descriptors -----------------------------------------------------------------

    def _op_open(self, args: dict[str, Any]) -> None:
        self.fds[args["as"]] = os.open(self.dev_dir / args["dev"], os.O_RDWR | os.O_CLOEXEC)

    def _op_dup(self, args: dict[str, Any]) -> None:
        self.fds[args["as"]] = os.dup(self.fds[args["fd"]])

    def _op_close(self, args: dict[str, Any]) -> None:
        os.close(self.fds.pop(args["fd"]))

    def _op_fork(self, args: dict[str, Any]) -> None:
        """The child replays the steps on the inherited descriptors, prints its own report
        line, then exits."""
        sys.stdout.flush()
        pid = os.fork()
        if pid == 0:
            code = 0
            self.calls, self.ioctls, self.children = [], 0, []
            try:
                self._steps(args["steps"])
                print(json.dumps({"child_of": os.getppid(), **self.report()}), flush=True)
            except BaseException:
                code = 1
            os._exit(code)
        _, status = os.waitpid(pid, 0)
        self.children.append(pid)
        if status != 0:
            raise GpusentryError(f"forked replay child {pid} failed (status {status})")

    # -- ioctls ---------------------------------------------------------------------------

    def _ioctl(self, fd_name: str, cmd: int, buf: bytearray) -> int:
        self.ioctls += 1
        try:
            fcntl.ioctl(self.fds[fd_name], cmd, buf, True)
        except OSError as exc:
            return -(exc.errno or errno.EIO)
        return 0

    def _record(self, call: Call) -> None:
        if len(self.calls) < MAX_CALLS_KEPT:
            self.calls.append(call)
        else:
            self.calls_dropped += 1

    def _op_frontend(self, args: dict[str, Any]) -> None:
        nr, sizes = abi.ESCAPES[args["esc"]]
        size = args.get("size") or (sizes[0] if sizes else 72)
        self._ioctl(args["fd"], abi.ioc(nr, size), bytearray(size))

    def _handle(self, name: Any) -> int:
        return int(self.handles[name]) if isinstance(name, str) else int(name or 0)

    def _alloc_args(self, args: dict[str, Any]) -> tuple[int, int, int, int, int, int]:
        klass = args["class"]
        root = self.handles.get("client", 0)
        parent = self._handle(args.get("parent", "client")) if klass not in CLIENT_CLASSES else 0
        if "handle" in args:
            new = args["handle"]
        elif klass in CLIENT_CLASSES:
            new = 0  # the driver picks a client's handle
        else:
            new, self._next_handle = self._next_handle, self._next_handle + 1
        params, params_size = 0, 0
        if klass == 0x5:
            p = ctypes.create_string_buffer(abi.EVENT_PARAMS.pack(root, parent, args.get("event_class", 0x79), 0, 0))
            self._keep.append(p)
            params, params_size = ctypes.addressof(p), abi.EVENT_PARAMS.size
        elif klass == 0x80:
            p = ctypes.create_string_buffer(abi.DEVICE_PARAMS.pack(args.get("device_id", 0)))
            self._keep.append(p)
            params, params_size = ctypes.addressof(p), abi.DEVICE_PARAMS.size
        elif "bytes" in args and (memory := abi.memory_params(klass, args["bytes"], args.get("virtual", False))):
            p = ctypes.create_string_buffer(memory, len(memory))
            self._keep.append(p)
            params, params_size = ctypes.addressof(p), len(memory)
        if klass in CLIENT_CLASSES:
            root = parent = new
        return root, parent, new, klass, params, params_size

    def _op_alloc(self, args: dict[str, Any], via_xfer: bool = False) -> None:
        size = args.get("size", 48)
        root, parent, new, klass, params, params_size = self._alloc_args(args)
        buf = abi.pack_alloc(size, root, parent, new, klass, params, params_size)
        ret = self._rm_call(args["fd"], 0x2B, buf, via_xfer)
        handle = struct.unpack_from("<I", buf, 8)[0]
        status = struct.unpack_from("<I", buf, abi.ALLOC_STATUS_AT[size])[0] if size in abi.ALLOC_STATUS_AT else 0
        if klass in CLIENT_CLASSES and ret == 0 and status == 0:
            self.handles["client"] = handle
        if "as" in args:
            self.handles[args["as"]] = handle
        event_class = args.get("event_class", 0x79) if klass == 0x5 else 0
        self._record(Call("alloc", ret, status, klass, handle, parent, event_class=event_class))
        self._keep.clear()

    def _op_alloc_memory(self, args: dict[str, Any]) -> None:
        """RM_ALLOC_MEMORY (NVOS02): `bytes` of host memory at a buffer of ours, class 0x3E or 0x71."""
        root = self.handles["client"]
        parent = self._handle(args.get("parent", "device"))
        new, self._next_handle = self._next_handle, self._next_handle + 1
        buf = bytearray(abi.ALLOC_MEMORY.pack(root, parent, new, args["class"], 0, 0x7E0000000000,
                                              args["bytes"] - 1, 0, self.fds.get("gpu", -1)))
        ret = self._ioctl(args["fd"], abi.ioc(0x27, len(buf)), buf)
        handle = struct.unpack_from("<I", buf, 8)[0]
        if "as" in args:
            self.handles[args["as"]] = handle
        self._record(Call("alloc_memory", ret, struct.unpack_from("<I", buf, abi.ALLOC_MEMORY_STATUS_AT)[0],
                          args["class"], handle, parent))

    def _op_free(self, args: dict[str, Any], via_xfer: bool = False) -> None:
        root = self.handles["client"]
        handle = self._handle(args["object"])
        parent = self._handle(args.get("parent", "client"))
        buf = bytearray(abi.FREE.pack(root, parent, handle, 0))
        ret = self._rm_call(args["fd"], 0x29, buf, via_xfer)
        self._record(Call("free", ret, struct.unpack_from("<I", buf, 12)[0], handle=handle))

    def _op_control(self, args: dict[str, Any], via_xfer: bool = False) -> None:
        root = self.handles["client"]
        obj = self._handle(args["object"])
        params = ctypes.create_string_buffer(64)
        if "boost" in args:
            abi.PERF_BOOST_PARAMS.pack_into(params, 0, args["boost"]["flags"], args["boost"]["duration"])
        buf = bytearray(abi.CONTROL.pack(root, obj, args["cmd"], 0, ctypes.addressof(params), 8, 0))
        ret = self._rm_call(args["fd"], 0x2A, buf, via_xfer)
        self._record(Call("control", ret, struct.unpack_from("<I", buf, 28)[0], handle=obj, cmd=args["cmd"]))

    def _rm_call(self, fd_name: str, nr: int, buf: bytearray, via_xfer: bool) -> int:
        if not via_xfer:
            return self._ioctl(fd_name, abi.ioc(nr, len(buf)), buf)
        inner = ctypes.create_string_buffer(bytes(buf), len(buf))
        outer = bytearray(abi.XFER.pack(nr, len(buf), ctypes.addressof(inner)))
        ret = self._ioctl(fd_name, abi.ioc(0xD3, abi.XFER.size), outer)
        buf[:] = inner.raw
        return ret

    def _op_xfer(self, args: dict[str, Any]) -> None:
        op, inner = next(iter(args["step"].items()))
        getattr(self, f"_op_{op}")({**inner, "fd": args["fd"]}, via_xfer=True)

    def _op_uvm(self, args: dict[str, Any]) -> None:
        cmd = abi.UVM_COMMANDS[args["cmd"]]
        buf = bytearray(max(abi.UVM_PARAM_SIZES.get(cmd, 16), 8))
        channel = self._handle(args["channel"]) if "channel" in args else 0
        client = self.handles.get("client", 0)
        ctl_fd = self.fds.get("ctl", -1)
        if cmd == abi.UVM_COMMANDS["REGISTER_GPU"]:  # {uuid, numa, node, rmCtrlFd, hClient, hSmcPartRef, status}
            buf[0:16] = FAKE_GPU_UUID
            struct.pack_into("<iI", buf, 24, ctl_fd, client)
        elif cmd == abi.UVM_COMMANDS["REGISTER_CHANNEL"]:  # {uuid, rmCtrlFd, hClient, hChannel, base, len, status}
            buf[0:16] = FAKE_GPU_UUID
            struct.pack_into("<iII", buf, 16, ctl_fd, client, channel)
        elif cmd == abi.UVM_COMMANDS["MAP_EXTERNAL_ALLOCATION"]:  # {base, length, offset, ...}
            struct.pack_into("<QQ", buf, 0, 0x7F0000000000, args.get("bytes", 0))
        ret = self._ioctl(args["fd"], cmd, buf)
        self._record(Call("uvm", ret, 0, cmd=cmd, handle=channel))

    def _op_hold(self, args: dict[str, Any]) -> None:
        """Stay alive, holding what was allocated: a long job's steady state (kernel launches
        make no ioctl, so the driver sees nothing of it)."""
        threading.Event().wait(args["seconds"])

    def _op_repeat(self, args: dict[str, Any]) -> None:
        for _ in range(args["times"]):
            self._steps(args["steps"])

    def report(self) -> dict[str, Any]:
        return {"pid": os.getpid(), "fixture": self.fixture.name, "handles": self.handles,
                "calls": [c.__dict__ for c in self.calls], "calls_dropped": self.calls_dropped,
                "ioctls": self.ioctls, "children": self.children}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sensor.fakegpu.client")
    parser.add_argument("fixture", type=Path)
    parser.add_argument("--dev-dir", type=Path, default=Path("/dev"))
    args = parser.parse_args(argv)
    try:
        replay = Replay(load(args.fixture), args.dev_dir)
        replay.run()
    except (GpusentryError, OSError) as exc:
        print(f"replay: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(replay.report()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
