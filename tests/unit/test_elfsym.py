"""The ELF reader that finds libcuda's launch entry points: the offsets it gives are where the
dynamic loader put those functions (checked against this process's own memory map), and a
hostile or broken file is one ElfError, never a crash or an unbounded read."""

from __future__ import annotations

import ctypes
import io
import struct
import subprocess
from pathlib import Path

import pytest

from sensor.probe.elfsym import MAX_TABLE, ElfError, function_offsets

SOURCE = Path(__file__).resolve().parents[1] / "kernel" / "helpers" / "libcuda" / "fake_libcuda.c"
NAMES = ("cuLaunchKernel", "cuLaunchKernelEx")
SHDR = struct.Struct("<IIQQQQIIQQ")


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("elf") / "libcuda.so.1"
    subprocess.run(["gcc", "-O1", "-shared", "-fPIC", "-o", str(path), str(SOURCE)], check=True)
    return path


def mapped_offset(library: Path, address: int) -> int:
    """The file offset that `address` of this process maps, from /proc/self/maps."""
    for line in Path("/proc/self/maps").read_text().splitlines():
        parts = line.split(maxsplit=5)
        if len(parts) == 6 and parts[5] == str(library):
            start, end = (int(x, 16) for x in parts[0].split("-"))
            if start <= address < end:
                return address - start + int(parts[2], 16)
    raise AssertionError(f"{address:#x} is not in {library}")


def test_offsets_are_where_the_loader_maps_the_functions(library: Path) -> None:
    loaded = ctypes.CDLL(str(library))
    with library.open("rb") as file:
        offsets = function_offsets(file, [*NAMES, "cuNotThere", "printf"])
    assert set(offsets) == set(NAMES)  # an absent name, and one the library only imports, are not found
    for name in NAMES:
        address = ctypes.cast(getattr(loaded, name), ctypes.c_void_p).value
        assert address is not None
        assert offsets[name] == mapped_offset(library, address)
    assert offsets["cuLaunchKernel"] != offsets["cuLaunchKernelEx"]


def corrupt(library: Path, edit: int, value: bytes) -> io.BytesIO:
    data = bytearray(library.read_bytes())
    data[edit:edit + len(value)] = value
    return io.BytesIO(bytes(data))


def dynsym_header(library: Path) -> int:
    """Where the .dynsym section's header is in the file."""
    data = library.read_bytes()
    shoff: int = struct.unpack_from("<Q", data, 0x28)[0]
    shnum: int = struct.unpack_from("<H", data, 0x3C)[0]
    for i in range(shnum):
        if SHDR.unpack_from(data, shoff + i * SHDR.size)[1] == 11:
            return shoff + i * SHDR.size
    raise AssertionError("no .dynsym")


def test_not_an_elf_file_is_refused() -> None:
    with pytest.raises(ElfError, match="not an ELF64"):
        function_offsets(io.BytesIO(b"#!/bin/sh\n" + bytes(100)), NAMES)


def test_a_32_bit_file_is_refused(library: Path) -> None:
    with pytest.raises(ElfError, match="not an ELF64"):
        function_offsets(corrupt(library, 4, b"\x01"), NAMES)


def test_a_truncated_file_is_refused(library: Path) -> None:
    with pytest.raises(ElfError, match="ends inside"):
        function_offsets(io.BytesIO(library.read_bytes()[:200]), NAMES)


def test_a_huge_symbol_table_is_refused_before_it_is_read(library: Path) -> None:
    size_field = dynsym_header(library) + 32  # sh_size
    with pytest.raises(ElfError, match="larger than a symbol table"):
        function_offsets(corrupt(library, size_field, struct.pack("<Q", MAX_TABLE + 1)), NAMES)


def test_a_symbol_table_linked_to_no_string_table_is_refused(library: Path) -> None:
    link_field = dynsym_header(library) + 40  # sh_link
    with pytest.raises(ElfError, match="no string table"):
        function_offsets(corrupt(library, link_field, struct.pack("<I", 0xFFFF)), NAMES)


def test_a_section_past_the_end_of_the_file_is_refused(library: Path) -> None:
    offset_field = dynsym_header(library) + 24  # sh_offset
    with pytest.raises(ElfError, match="ends inside"):
        function_offsets(corrupt(library, offset_field, struct.pack("<Q", 1 << 40)), NAMES)
