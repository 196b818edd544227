"""The pipes between the aggregator and the API's stream process, and SubscribeResponse bytes
made from messages serialised once.

    aggregator -> stream (its stdin):   INIT (rule ids, the last journal cursor published),
                                        ITEMS (a hole's counts, then items), RULES (after a reload),
                                        STOP (the grace its subscribers get), then the pipe ends
    stream -> aggregator (its stdout):  READY (the TCP port bound) or FAILED (problem, fix),
                                        then STATUS (subscribers, refusals, misses, wants, backlog)

Each frame is a kind byte, a 4-byte length and a msgpack body. An item is a tuple: type (an
index of broker.Tally), the serialised message, its journal cursor (0 for events and facts),
its kind, and what filters look at: exec_id, exe, lineage, cgroup id.
"""

from __future__ import annotations

import struct
from typing import IO, Any

import msgpack

FRAME = struct.Struct("!BI")
INIT, ITEMS, RULES, STOP = 1, 2, 3, 4
READY, FAILED, STATUS = 11, 12, 13
MAX_FRAME = 64 << 20

WireItem = tuple[int, bytes, int, int, str, str, list[str], int]


def frame(kind: int, body: Any) -> bytes:
    data: bytes = msgpack.packb(body, use_bin_type=True)
    return FRAME.pack(kind, len(data)) + data


def read_frame(source: IO[bytes]) -> tuple[int, Any] | None:
    """The next frame; None at the end of the stream (or a damaged one)."""
    head = source.read(FRAME.size)
    if head is None or len(head) < FRAME.size:
        return None
    kind, length = FRAME.unpack(head)
    if length > MAX_FRAME:
        return None
    body = source.read(length)
    if body is None or len(body) != length:
        return None
    return kind, msgpack.unpackb(body, raw=False, use_list=True)


# -- protobuf wire format -------------------------------------------------------------------
# A repeated or singular message field is its tag (field number, wire type 2), the length as a
# varint, then the bytes: SubscribeResponse{events: Events{events: [...]}} is built by joining
# bytes, without parsing or copying a message.

EVENTS_FIELD, ALERT_FIELD, SENSOR_GAP_FIELD, INCIDENT_FIELD, FACTS_FIELD = 1, 2, 4, 6, 7  # SubscribeResponse
ELEMENT_FIELD = 1  # Events.events, Facts.facts


def varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def field(number: int, payload: bytes) -> bytes:
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def batch(number: int, elements: list[bytes]) -> bytes:
    """A SubscribeResponse of events (number 1) or facts (7) from elements made with field(1, ...)."""
    return field(number, b"".join(elements))
