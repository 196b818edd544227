"""The frame stream format: round trips, and a precise error for every kind of damage."""

from __future__ import annotations

import io
import struct
import zlib

import msgpack
import pytest

from sensor import events as ev
from sensor.capture import FORMAT_VERSION, MAGIC, CaptureError, FrameReader, FrameWriter, StreamMeta

EXEC = ev.Exec(ts=10, tgid=5, tid=5, result=0, ppid=1, uid=1000, gid=1000, cgroup_id=7, start_ns=99,
               comm=b"ssh", filename=b"/usr/bin/ssh", argv=[b"ssh", b"-R", b"\xff\x00x"], argc=3, flags=0,
               exe_dev=2049, exe_ino=12, old_tid=5)
CONNECT = ev.Connect(ts=11, tgid=5, tid=6, fd=3, result=-115, family="inet", address="192.0.2.1", port=22)


def stream(*events: ev.Event, meta: StreamMeta | None = None) -> bytes:
    buf = io.BytesIO()
    writer = FrameWriter(buf, meta or StreamMeta(config={"max_args": 64}))
    for event in events:
        writer.write(event)
    return buf.getvalue()


def read_all(data: bytes) -> list[ev.Event]:
    return list(FrameReader(io.BytesIO(data), "cap"))


def test_round_trip_keeps_every_field() -> None:
    stats = ev.Stats(ts=12, tgid=1, tid=1, kernel_drops={"exec": 2}, probe_drops={}, records={"exec": 9})
    assert read_all(stream(EXEC, CONNECT, stats)) == [EXEC, CONNECT, stats]


def test_header_carries_the_metadata() -> None:
    meta = StreamMeta(created_ns=1, boot_to_wall_ns=2, hostname="gpu-7", kernel="6.18", config={"a": 1})
    reader = FrameReader(io.BytesIO(stream(meta=meta)), "cap")
    assert reader.meta == meta


def header_len(data: bytes | bytearray) -> int:
    return 16 + int(struct.unpack_from("<I", data, 12)[0])


def test_truncated_frame_names_its_offset() -> None:
    data = stream(EXEC, CONNECT)
    first_len = struct.unpack_from("<I", data, header_len(data))[0]
    second_at = header_len(data) + 8 + first_len
    with pytest.raises(CaptureError, match=f"cap: truncated frame \\(.* bytes\\) at byte {second_at}$"):
        read_all(data[:-1])


def test_truncated_length_prefix() -> None:
    data = stream(EXEC)
    with pytest.raises(CaptureError, match=f"stream ends 3 bytes into its length\\) at byte {len(data)}"):
        read_all(data + b"\x01\x02\x03")


def test_flipped_byte_is_a_checksum_mismatch() -> None:
    data = bytearray(stream(EXEC))
    data[-5] ^= 0x40
    with pytest.raises(CaptureError, match=f"corrupt frame \\(checksum mismatch\\) at byte {header_len(data)}"):
        read_all(bytes(data))


def test_absurd_length_is_corrupt() -> None:
    data = stream() + struct.pack("<II", 1 << 30, 0)
    with pytest.raises(CaptureError, match="corrupt frame \\(length 1073741824\\) at byte"):
        read_all(data)


def test_valid_checksum_but_unknown_kind() -> None:
    payload = msgpack.packb([250, 1, 2, 3])
    data = stream() + struct.pack("<II", len(payload), zlib.crc32(payload)) + payload
    with pytest.raises(CaptureError, match="corrupt frame \\(unknown event kind 250\\)"):
        read_all(data)


def test_wrong_field_count() -> None:
    payload = msgpack.packb([int(ev.Kind.EXIT), 1, 2, 3])
    data = stream() + struct.pack("<II", len(payload), zlib.crc32(payload)) + payload
    with pytest.raises(CaptureError, match="Exit frame has 3 fields, expected 5"):
        read_all(data)


def test_newer_format_version() -> None:
    data = bytearray(stream(EXEC))
    struct.pack_into("<H", data, 8, FORMAT_VERSION + 1)
    with pytest.raises(CaptureError) as info:
        read_all(bytes(data))
    assert str(info.value) == (
        f"cap: written by a newer gpusentry (format version {FORMAT_VERSION + 1}; this one reads version "
        f"{FORMAT_VERSION}) at byte 8; fix: analyze it with a newer gpusentry")


def test_an_older_format_is_refused_rather_than_judged_here() -> None:
    """Version 1 frames carry no routing or binary verdicts: deciding them on this host would
    describe this host, not the one recorded."""
    data = bytearray(stream(EXEC))
    struct.pack_into("<H", data, 8, 1)
    with pytest.raises(CaptureError) as info:
        read_all(bytes(data))
    assert str(info.value) == (
        f"cap: written by an older gpusentry (format version 1; this one reads version {FORMAT_VERSION}) at "
        "byte 8; fix: its frames lack the routing and binary verdicts the probe makes on the host it watches, "
        "which no other host can supply: analyze it with the gpusentry that recorded it, or record it again")


def test_not_a_capture() -> None:
    with pytest.raises(CaptureError, match="cap: not a gpusentry capture \\(bad magic\\) at byte 0"):
        read_all(b"PK\x03\x04 a zip file, say")


def test_empty_and_short_headers() -> None:
    with pytest.raises(CaptureError, match="cap: empty \\(truncated header \\(0 of 16 bytes\\) at byte 0\\)"):
        read_all(b"")
    with pytest.raises(CaptureError, match="truncated header \\(5 of 16 bytes\\) at byte 5"):
        read_all(MAGIC[:5])


def test_metadata_that_is_not_a_map() -> None:
    body = msgpack.packb([1, 2])
    data = MAGIC + struct.pack("<HHI", FORMAT_VERSION, 0, len(body)) + body
    with pytest.raises(CaptureError, match="corrupt header metadata \\(metadata is not a map\\) at byte 16"):
        read_all(data)


def test_events_before_the_damage_are_delivered() -> None:
    data = stream(EXEC, CONNECT)
    reader = FrameReader(io.BytesIO(data[:-2]), "cap")
    got = []
    with pytest.raises(CaptureError):
        for event in reader:
            got.append(event)
    assert got == [EXEC]
