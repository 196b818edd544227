"""The frame stream: a versioned header, then length-prefixed, checksummed msgpack frames.

One format serves the pipe from the probe to the aggregator and capture files
(`gpusentry record -w FILE`, `gpusentry analyze FILE`), so an offline analysis sees exactly
what a live aggregator saw. Each frame is `u32 length, u32 crc32, payload` (little-endian):
a truncated or damaged file is reported with the byte offset of the frame that broke.
"""

from __future__ import annotations

import platform
import socket
import struct
import time
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import msgpack

from sensor import __version__
from sensor import events as ev
from sensor.errors import GpusentryError

MAGIC = b"GPUSNTRY"
# 2: exec frames carry the binary's identity, connections their routing verdict, both decided
# by the probe on the host where the stream was made; the stream ends with the probe's End.
FORMAT_VERSION = 2
MAX_FRAME = 1 << 20  # no event comes near this; a larger length means a damaged file
_HEAD = struct.Struct("<8sHHI")  # magic, version, reserved, metadata length
_FRAME = struct.Struct("<II")  # payload length, crc32


class CaptureError(GpusentryError):
    """A frame stream that cannot be read: names the byte offset where it broke."""


class EmptyStream(CaptureError):
    """Not one byte: for the agent's own pipe, the probe stopped before it started."""


def _machine_id() -> str:
    try:
        return Path("/etc/machine-id").read_text().strip()
    except OSError:
        return ""


@dataclass
class StreamMeta:
    """The header: when and where the stream was made, and the clock to turn ts into wall time."""

    created_ns: int = field(default_factory=time.time_ns)
    boot_to_wall_ns: int = field(
        default_factory=lambda: time.time_ns() - time.clock_gettime_ns(time.CLOCK_BOOTTIME)
    )
    hostname: str = field(default_factory=socket.gethostname)
    machine_id: str = field(default_factory=_machine_id)  # /etc/machine-id; empty in older files
    kernel: str = field(default_factory=platform.release)
    writer: str = f"gpusentry {__version__}"
    config: dict[str, Any] = field(default_factory=dict)
    features: dict[str, Any] = field(default_factory=dict)  # what the probe found in the kernel

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> StreamMeta:
        known = {k: v for k, v in raw.items() if k in cls.__dataclass_fields__}
        return cls(**known)


def header_bytes(meta: StreamMeta) -> bytes:
    body: bytes = msgpack.packb(meta.to_dict(), use_bin_type=True)
    return _HEAD.pack(MAGIC, FORMAT_VERSION, 0, len(body)) + body


def frame_bytes(payload: bytes) -> bytes:
    return _FRAME.pack(len(payload), zlib.crc32(payload)) + payload


class FrameWriter:
    """Writes the header once, then batches of encoded events."""

    def __init__(self, out: BinaryIO, meta: StreamMeta) -> None:
        self._out = out
        out.write(header_bytes(meta))
        out.flush()

    def write_payloads(self, payloads: Iterable[bytes]) -> None:
        self._out.write(b"".join(frame_bytes(p) for p in payloads))
        self._out.flush()

    def write(self, event: ev.Event) -> None:
        self.write_payloads([ev.encode(event)])


def _read_exact(src: BinaryIO, n: int) -> bytes:
    first = src.read(n)
    if len(first) == n or not first:  # nearly always: the whole of it, or the end
        return first
    return _read_rest(src, first, n)


def _read_rest(src: BinaryIO, first: bytes, n: int) -> bytes:
    """`first`, a short read, completed to n bytes (or to the end of the stream)."""
    chunks, got = [first], len(first)
    while got < n:
        chunk = src.read(n - got)
        if not chunk:
            break
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


class FrameReader:
    """Reads a frame stream; every problem is a CaptureError naming the offset."""

    def __init__(self, src: BinaryIO, name: str) -> None:
        self._src = src
        self.name = name
        self.offset = 0
        self.meta = self._read_header()

    def _fail(self, what: str, offset: int, fix: str = "") -> CaptureError:
        return CaptureError(f"{self.name}: {what} at byte {offset}", fix)

    def _read_header(self) -> StreamMeta:
        head = _read_exact(self._src, _HEAD.size)
        if not head:
            raise EmptyStream(f"{self.name}: empty (truncated header (0 of {_HEAD.size} bytes) at byte 0)",
                              "give a file written by `gpusentry record -w FILE`")
        if not head.startswith(MAGIC) and not MAGIC.startswith(head):
            raise self._fail("not a gpusentry capture (bad magic)", 0,
                             "give a file written by `gpusentry record -w FILE`")
        if len(head) < _HEAD.size:
            raise self._fail(f"truncated header ({len(head)} of {_HEAD.size} bytes)", len(head))
        _, version, _, meta_len = _HEAD.unpack(head)
        if version > FORMAT_VERSION:
            raise self._fail(
                f"written by a newer gpusentry (format version {version}; this one reads "
                f"version {FORMAT_VERSION})", 8, "analyze it with a newer gpusentry")
        if version < FORMAT_VERSION:
            raise self._fail(
                f"written by an older gpusentry (format version {version}; this one reads version "
                f"{FORMAT_VERSION})", 8,
                "its frames lack the routing and binary verdicts the probe makes on the host it watches, which "
                "no other host can supply: analyze it with the gpusentry that recorded it, or record it again")
        if meta_len > MAX_FRAME:
            raise self._fail(f"corrupt header (metadata length {meta_len})", 12)
        body = _read_exact(self._src, meta_len)
        if len(body) < meta_len:
            raise self._fail(f"truncated header ({len(body)} of {meta_len} metadata bytes)", _HEAD.size + len(body))
        try:
            raw = msgpack.unpackb(body, raw=False)
            if not isinstance(raw, dict):
                raise ValueError("metadata is not a map")
            meta = StreamMeta.from_dict(raw)
        except (ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
            raise self._fail(f"corrupt header metadata ({exc})", _HEAD.size) from exc
        self.offset = _HEAD.size + meta_len
        return meta

    def __iter__(self) -> Iterator[ev.Event]:
        src, read, size = self._src, self._src.read, _FRAME.size  # _read_exact inlined: this runs per frame
        while True:
            start = self.offset
            head = read(size)
            if len(head) != size:
                if not head:
                    return
                head = _read_rest(src, head, size)
                if len(head) < size:
                    raise self._fail(f"truncated frame (the stream ends {len(head)} bytes into its length)", start)
            length, crc = _FRAME.unpack(head)
            if length > MAX_FRAME:
                raise self._fail(f"corrupt frame (length {length})", start)
            payload = read(length)
            if len(payload) != length and payload:
                payload = _read_rest(src, payload, length)
            if len(payload) < length:
                raise self._fail(f"truncated frame ({len(payload)} of {length} bytes)", start)
            if zlib.crc32(payload) != crc:
                raise self._fail("corrupt frame (checksum mismatch)", start)
            try:
                event = ev.decode(payload)
            except (ev.FrameError, TypeError) as exc:
                raise self._fail(f"corrupt frame ({exc})", start) from exc
            self.offset = start + _FRAME.size + length
            yield event


def open_capture(path: str) -> tuple[BinaryIO, FrameReader]:
    try:
        src = open(path, "rb")  # noqa: SIM115 - returned to the caller, who closes it
    except OSError as exc:
        raise CaptureError(f"cannot open capture {path}: {exc.strerror}") from exc
    try:
        return src, FrameReader(src, path)
    except CaptureError:
        src.close()
        raise
