"""The few bpf(2) map operations the long-lived probe needs, on file descriptors it was handed.

The probe's programs are compiled and attached by a short-lived child (sensor/probe/loader.py),
so that BCC and its LLVM never live in the long-running process; what stays is a map file
descriptor per map, used through these calls. Keys and values are bytes of the sizes the
loader reported; per-CPU maps give one value per possible CPU, each padded to 8 bytes.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Iterator
from dataclasses import dataclass

from sensor.probe.features import bpf_syscall

_SYS_BPF = bpf_syscall() or 321  # where unknown, the loader's BCC would have failed first
_MAP_LOOKUP_ELEM, _MAP_UPDATE_ELEM, _MAP_DELETE_ELEM, _MAP_GET_NEXT_KEY = 1, 2, 3, 4

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


class _ElemAttr(ctypes.Structure):
    """union bpf_attr, as the map element commands read it."""

    _fields_ = [("map_fd", ctypes.c_uint32), ("_pad", ctypes.c_uint32), ("key", ctypes.c_uint64),
                ("value", ctypes.c_uint64), ("flags", ctypes.c_uint64)]


def _bpf(cmd: int, attr: _ElemAttr) -> int:
    result = int(_libc.syscall(_SYS_BPF, cmd, ctypes.byref(attr), ctypes.sizeof(attr)))
    return result if result >= 0 else -ctypes.get_errno()


@dataclass
class BpfMap:
    """One map, by file descriptor; `cpus` > 0 for a per-CPU map (values per possible CPU)."""

    name: str
    fd: int
    key_size: int
    value_size: int
    max_entries: int
    cpus: int = 0

    @property
    def _stride(self) -> int:
        return (self.value_size + 7) & ~7

    def _value_buffer(self) -> ctypes.Array[ctypes.c_char]:
        return ctypes.create_string_buffer(self._stride * self.cpus if self.cpus else self.value_size)

    def lookup(self, key: bytes) -> bytes | None:
        """The value (a per-CPU map's: every CPU's, concatenated, each padded to 8 bytes), or None."""
        key_buf, value = ctypes.create_string_buffer(key, self.key_size), self._value_buffer()
        result = _bpf(_MAP_LOOKUP_ELEM, _ElemAttr(self.fd, 0, ctypes.addressof(key_buf), ctypes.addressof(value)))
        if result == -2:  # ENOENT
            return None
        self._check(result, "lookup")
        return value.raw

    def per_cpu(self, key: bytes) -> list[bytes]:
        raw = self.lookup(key) or b""
        return [raw[i:i + self.value_size] for i in range(0, len(raw), self._stride)]

    def update(self, key: bytes, value: bytes) -> None:
        key_buf = ctypes.create_string_buffer(key, self.key_size)
        value_buf = ctypes.create_string_buffer(value, self.value_size)
        self._check(_bpf(_MAP_UPDATE_ELEM, _ElemAttr(self.fd, 0, ctypes.addressof(key_buf),
                                                      ctypes.addressof(value_buf), 0)), "update")

    def delete(self, key: bytes) -> None:
        key_buf = ctypes.create_string_buffer(key, self.key_size)
        result = _bpf(_MAP_DELETE_ELEM, _ElemAttr(self.fd, 0, ctypes.addressof(key_buf)))
        if result != -2:  # gone already: what deleting wanted
            self._check(result, "delete")

    def keys(self) -> Iterator[bytes]:
        """Every key, as the kernel walks the map (a key deleted meanwhile restarts nothing)."""
        previous = None
        next_key = ctypes.create_string_buffer(self.key_size)
        for _ in range(self.max_entries + 1):
            prev_addr = ctypes.addressof(previous) if previous is not None else 0
            result = _bpf(_MAP_GET_NEXT_KEY, _ElemAttr(self.fd, 0, prev_addr, ctypes.addressof(next_key)))
            if result == -2:
                return
            self._check(result, "walk")
            yield next_key.raw
            previous = ctypes.create_string_buffer(next_key.raw, self.key_size)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def _check(self, result: int, what: str) -> None:
        if result < 0:
            raise OSError(-result, f"BPF map {self.name}: {what} failed: {os.strerror(-result)}")
