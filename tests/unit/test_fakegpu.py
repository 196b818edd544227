"""The fake driver's logic and the fixture checker, without FUSE or a kernel."""

from __future__ import annotations

import errno
import struct
from pathlib import Path

import pytest

from sensor.fakegpu import abi
from sensor.fakegpu.driver import FakeRm
from sensor.fakegpu.fixtures import FixtureError, load

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "gpu"


def alloc(rm: FakeRm, root: int, parent: int, new: int, klass: int, size: int = 48) -> tuple[int, int, int]:
    buf = abi.pack_alloc(size, root, parent, new, klass, 0, 0)
    ret = rm.ioctl("nvidiactl", abi.ioc(0x2B, size), buf)
    return ret, struct.unpack_from("<I", buf, 8)[0], struct.unpack_from("<I", buf, abi.ALLOC_STATUS_AT[size])[0]


def test_client_handle_comes_from_the_driver() -> None:
    rm = FakeRm()
    assert alloc(rm, 0, 0, 0, 0x41) == (0, 0xC1D00001, abi.NV_OK)


def test_allocation_rules() -> None:
    rm = FakeRm(arch="hopper")
    _, client, _ = alloc(rm, 0, 0, 0, 0x41)
    assert alloc(rm, client, client, 0x10, 0x80) == (0, 0x10, abi.NV_OK)
    assert alloc(rm, client, 0x10, 0x11, 0xA06C)[2] == abi.NV_OK
    assert alloc(rm, client, 0x11, 0x12, 0xC86F)[2] == abi.NV_OK
    assert alloc(rm, client, 0x12, 0x13, 0xCBC0)[2] == abi.NV_OK
    assert alloc(rm, client, 0x12, 0x14, 0xC6C0)[2] == abi.NV_ERR_INVALID_CLASS  # Ampere's, on Hopper
    assert alloc(rm, client, 0x10, 0x15, 0xCBC0)[2] == abi.NV_ERR_INVALID_OBJECT_PARENT  # compute needs a channel
    assert alloc(rm, client, 0x99, 0x16, 0x2080)[2] == abi.NV_ERR_INVALID_OBJECT_PARENT  # no such parent
    assert alloc(rm, client, 0x12, 0x13, 0xC8B5)[2] == abi.NV_ERR_INSERT_DUPLICATE_NAME
    assert alloc(rm, 0x777, 0x777, 0x17, 0x80)[2] == abi.NV_ERR_INVALID_CLIENT
    assert alloc(rm, client, 0x11, 0, 0xC86F)[1] == 0xCAF00001  # handle 0: the driver picks


def test_wrong_size_is_einval_like_the_real_driver_since_595() -> None:
    rm = FakeRm()
    assert rm.ioctl("nvidiactl", abi.ioc(0x2B, 40), bytearray(40)) == -errno.EINVAL
    assert rm.ioctl("nvidiactl", abi.ioc(0x2A, 36), bytearray(36)) == -errno.EINVAL
    assert rm.ioctl("nvidiactl", abi.ioc(0x7F, 8), bytearray(8)) == -errno.EINVAL  # no such escape
    assert rm.ioctl("nvidiactl", 0x5401, bytearray(8)) == -errno.ENOTTY  # not an NVIDIA ioctl


def test_free_takes_the_subtree() -> None:
    rm = FakeRm()
    _, client, _ = alloc(rm, 0, 0, 0, 0x41)
    alloc(rm, client, client, 0x10, 0x80)
    alloc(rm, client, 0x10, 0x11, 0xA06C)
    alloc(rm, client, 0x11, 0x12, 0xC86F)
    buf = bytearray(abi.FREE.pack(client, client, 0x11, 0))
    assert rm.ioctl("nvidiactl", abi.ioc(0x29, 16), buf) == 0
    assert struct.unpack_from("<I", buf, 12)[0] == abi.NV_OK
    assert set(rm.objects) == {(client, client), (client, 0x10)}
    buf = bytearray(abi.FREE.pack(client, client, 0x11, 0))
    rm.ioctl("nvidiactl", abi.ioc(0x29, 16), buf)
    assert struct.unpack_from("<I", buf, 12)[0] == abi.NV_ERR_INVALID_OBJECT_HANDLE


class DictMemory:
    def __init__(self) -> None:
        self.cells: dict[int, bytes] = {}

    def read(self, address: int, size: int) -> bytes:
        return self.cells[address][:size]

    def write(self, address: int, data: bytes) -> None:
        self.cells[address] = data


def test_xfer_runs_the_inner_call_in_the_callers_memory() -> None:
    rm = FakeRm()
    memory = DictMemory()
    memory.cells[0x1000] = bytes(abi.pack_alloc(48, 0, 0, 0, 0x41, 0, 0))
    outer = bytearray(abi.XFER.pack(0x2B, 48, 0x1000))
    assert rm.ioctl("nvidiactl", abi.ioc(0xD3, 16), outer, memory) == 0
    inner = memory.cells[0x1000]
    assert struct.unpack_from("<I", inner, 8)[0] == 0xC1D00001 and struct.unpack_from("<I", inner, 40)[0] == 0
    assert rm.ioctl("nvidiactl", abi.ioc(0xD3, 16), outer, None) == -errno.EINVAL


def test_uvm_commands_are_accepted_without_argument() -> None:
    assert FakeRm().ioctl("nvidia-uvm", 0x30000001, None) == 0


def test_every_shipped_fixture_loads() -> None:
    names = sorted(p.name for p in FIXTURES.glob("*.yaml"))
    assert names == ["ampere-bringup.yaml", "compute-loop.yaml", "decoder-edges.yaml", "fd-inheritance.yaml",
                     "hopper-bringup.yaml", "miner-like.yaml", "query-only.yaml", "training-job.yaml",
                     "training-like.yaml"]
    for name in names:
        fixture = load(FIXTURES / name)
        assert fixture.driver == "595.45.04" and fixture.source


@pytest.mark.parametrize(("text", "message"), [
    ("format: 2\nname: x\n", "format 2 is not 1"),
    ("format: 1\nname: x\ndriver: d\narch: hopper\nsource: s\n", "missing `steps`"),
    ("format: 1\nname: x\ndriver: d\narch: hopper\nsource: s\nsteps: [{spawn: {cmd: sh}}]\n",
     "steps[0]: unknown operation 'spawn'"),
    ("format: 1\nname: x\ndriver: d\narch: hopper\nsource: s\nsteps: [{open: {dev: nvidia0}}]\n",
     "steps[0]: `open` needs as"),
    ("format: 1\nname: x\ndriver: d\narch: hopper\nsource: s\nsteps: [{open: {dev: sda, as: d}}]\n",
     "unknown device 'sda'"),
    ("format: 1\nname: x\ndriver: d\narch: hopper\nsource: s\nsteps: [{alloc: {fd: c, class: -1}}]\n",
     "`class` must be an integer from 0 to 0xFFFFFFFF, not -1"),
    ("format: 1\nname: x\ndriver: d\narch: hopper\nsource: s\nsteps: [{alloc: {fd: c, class: 1, colour: 2}}]\n",
     "`alloc` has no argument colour"),
    ("format: 1\nname: x\ndriver: d\narch: hopper\nsource: s\n"
     "steps: [{repeat: {times: 2, steps: [{uvm: {fd: u, cmd: FORMAT_DISK}}]}}]\n",
     "steps[0].steps[0]: unknown UVM command 'FORMAT_DISK'"),
    ("format: 1\nname: x\ndriver: d\narch: hopper\nsource: s\n"
     "steps: [{xfer: {fd: c, step: {uvm: {cmd: INITIALIZE}}}}]\n",
     "`xfer` wraps an alloc, free or control"),
    ("format: 1\nname: x\ndriver: d\narch: hopper\nsource: s\nsteps: [{alloc: {fd: c, class: 0x80, bytes: 4096}}]\n",
     "`bytes` is for memory classes (0x3E, 0x3F, 0x40, 0x70, 0x71, 0xC2, 0xF8, 0x50A0), not 0x80"),
    ("format: 1\nname: x\ndriver: d\narch: hopper\nsource: s\nsteps: [{alloc: {fd: c, class: 0x40, bytes: 0}}]\n",
     "`bytes` must be an integer from 1 to 2**64 - 1, not 0"),
    ("format: 1\nname: x\ndriver: d\narch: hopper\nsource: s\nsteps: [{uvm: {fd: u, cmd: FREE, bytes: 1}}]\n",
     "`bytes` of a UVM command is for MAP_EXTERNAL_ALLOCATION"),
    ("steps: [oops\n", "not valid YAML"),
])
def test_bad_fixtures_are_refused_with_the_place(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(FixtureError) as info:
        load(path)
    assert str(info.value).startswith(f"{path}: ")
    assert message in str(info.value)


def test_memory_parameters_put_the_size_where_the_driver_reads_it() -> None:
    """NVIDIA-ABI.md, Memory classes: the offsets the BPF reads the size from."""
    local = abi.memory_params(0x40, 3 << 20)
    assert local is not None and len(local) == 128
    assert struct.unpack_from("<IQ", local, 8)[0] == 0 and struct.unpack_from("<Q", local, 64)[0] == 3 << 20
    virtual = abi.memory_params(0x40, 1 << 30, virtual=True)
    assert virtual is not None and struct.unpack_from("<I", virtual, 8)[0] == 0x80000
    assert struct.unpack_from("<Q", abi.memory_params(0x71, 4096) or b"", 24)[0] == 4095  # limit
    assert struct.unpack_from("<QQ", abi.memory_params(0x50A0, 1 << 20) or b"", 0) == (0, (1 << 20) - 1)
    assert struct.unpack_from("<Q", abi.memory_params(0xC2, 8192) or b"", 0)[0] == 8192
    assert struct.unpack_from("<Q", abi.memory_params(0xF8, 2 << 20) or b"", 8)[0] == 2 << 20
    assert abi.memory_params(0x80, 4096) is None


def test_alloc_memory_registers_host_memory_and_answers_in_its_status() -> None:
    rm = FakeRm()
    client = bytearray(48)
    abi.ALLOC_HEAD.pack_into(client, 0, 0, 0, 0, 0x41, 0)
    rm.ioctl("nvidiactl", abi.ioc(0x2B, 48), client)
    root = struct.unpack_from("<I", client, 8)[0]
    described = bytearray(abi.ALLOC_MEMORY.pack(root, root, 0x77, 0x71, 0, 0x1000, 4095, 0, 3))
    assert len(described) == 56 and rm.ioctl("nvidia0", abi.ioc(0x27, 56), described) == 0
    assert struct.unpack_from("<I", described, 40)[0] == abi.NV_OK and rm.objects[(root, 0x77)] == 0x71
    wrong = bytearray(abi.ALLOC_MEMORY.pack(root, root, 0x78, 0x40, 0, 0x1000, 4095, 0, 3))
    rm.ioctl("nvidia0", abi.ioc(0x27, 56), wrong)
    assert struct.unpack_from("<I", wrong, 40)[0] == abi.NV_ERR_INVALID_CLASS


@pytest.mark.parametrize("seconds", [0, 31, "3", True])
def test_hold_is_bounded(tmp_path: Path, seconds: object) -> None:
    path = tmp_path / "hold.yaml"
    value = f'"{seconds}"' if isinstance(seconds, str) else str(seconds).lower()
    path.write_text("format: 1\nname: x\ndriver: d\narch: hopper\nsource: s\n"
                    f"steps: [{{hold: {{seconds: {value}}}}}]\n")
    with pytest.raises(FixtureError, match="`hold` takes `seconds` from 0 to 30"):
        load(path)
