"""Where a shared library's exported functions are in its file: the offsets a uprobe takes.

A small reader of one ELF64 little-endian file's dynamic symbol table (.dynsym and its
.dynstr), nothing else. The file belongs to a monitored process (its libcuda, in its root), so
it is hostile input: every size and offset is checked against the file and against fixed
bounds before it is used, and any inconsistency is one ElfError; nothing in it is run.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from typing import BinaryIO

MAX_TABLE = 4 * 1024 * 1024  # a symbol or string table larger than this is not a real libcuda's (~100 KiB)
MAX_HEADERS = 4096
_EHDR = struct.Struct("<16sHHIQQQIHHHHHH")
_SHDR = struct.Struct("<IIQQQQIIQQ")
_PHDR = struct.Struct("<IIQQQQQQ")
_SYM = struct.Struct("<IBBHQQ")
_SHT_DYNSYM, _PT_LOAD, _STT_FUNC = 11, 1, 2


class ElfError(ValueError):
    """Not an ELF64 little-endian shared object we can read symbols from."""


def function_offsets(file: BinaryIO, names: Iterable[str]) -> dict[str, int]:
    """The file offset of each of `names` that the file exports as a defined function."""
    wanted = {name.encode() for name in names}
    header = _read(file, 0, _EHDR.size)
    ident, _, _, _, _, phoff, shoff, _, _, phentsize, phnum, shentsize, shnum, _ = _EHDR.unpack(header)
    if ident[:4] != b"\x7fELF" or ident[4] != 2 or ident[5] != 1:
        raise ElfError("not an ELF64 little-endian file")
    if shentsize != _SHDR.size or phentsize != _PHDR.size or shnum > MAX_HEADERS or phnum > MAX_HEADERS:
        raise ElfError("unexpected ELF header sizes")
    sections = [_SHDR.unpack(_read(file, shoff + i * _SHDR.size, _SHDR.size)) for i in range(shnum)]
    loads = [ph for ph in (_PHDR.unpack(_read(file, phoff + i * _PHDR.size, _PHDR.size)) for i in range(phnum))
             if ph[0] == _PT_LOAD]
    found: dict[str, int] = {}
    for section in sections:
        if section[1] != _SHT_DYNSYM:
            continue
        link = section[6]
        if link >= len(sections):
            raise ElfError("the symbol table names no string table")
        strings = _table(file, sections[link])
        for name, value in _functions(_table(file, section), strings, wanted):
            found[name] = _file_offset(value, loads)
    return found


def _functions(symbols: bytes, strings: bytes, wanted: set[bytes]) -> Iterable[tuple[str, int]]:
    for start in range(0, len(symbols) - _SYM.size + 1, _SYM.size):
        name_at, info, _, shndx, value, _ = _SYM.unpack_from(symbols, start)
        if shndx == 0 or info & 0xF != _STT_FUNC or name_at >= len(strings):
            continue  # undefined (imported), or not a plain function (an IFUNC's address is its resolver)
        end = strings.find(b"\0", name_at)
        name = strings[name_at:end if end >= 0 else len(strings)]
        if name in wanted:
            yield name.decode(), value


def _file_offset(vaddr: int, loads: list[tuple[int, ...]]) -> int:
    """A virtual address, as the segment that maps it places it in the file."""
    for _, _, offset, seg_vaddr, _, filesz, _, _ in loads:
        if seg_vaddr <= vaddr < seg_vaddr + filesz:
            return vaddr - seg_vaddr + offset
    raise ElfError(f"symbol address {vaddr:#x} is in no loaded segment")


def _table(file: BinaryIO, section: tuple[int, ...]) -> bytes:
    offset, size = section[4], section[5]
    if size > MAX_TABLE:
        raise ElfError(f"a section of {size} bytes is larger than a symbol table can be")
    return _read(file, offset, size)


def _read(file: BinaryIO, offset: int, size: int) -> bytes:
    file.seek(offset)
    data = file.read(size)
    if len(data) != size:
        raise ElfError("the file ends inside one of its tables")
    return data
