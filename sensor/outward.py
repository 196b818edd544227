"""What leaves the agent, in one form: a `Record` (the proto's envelope) rendered as one JSON
object per line, with proto3's JSON mapping (field names as in the proto, timestamps as
RFC 3339, 64-bit integers as strings, enums by name) and every field present, so that `jq`
and the JSON Schema in docs/schema/ see the same keys on every line.

Every JSON output goes through `json_line`: stdout (`run --json`, `analyze --json`), the API
clients (`events`, `alerts`, `incidents`, `status`) and the sinks.
"""

from __future__ import annotations

import functools
import json
import socket
from pathlib import Path
from typing import Any

from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message

from sensor.api.v1 import gpusentry_pb2 as pb

MACHINE_ID = Path("/etc/machine-id")

# The Record field each item travels in, by message type.
ITEM_FIELD: dict[type[Message], str] = {
    pb.Event: "event", pb.Fact: "fact", pb.Alert: "alert", pb.Incident: "incident",
    pb.SensorGap: "sensor_gap", pb.Gap: "gap", pb.Subscribed: "subscribed",
}


@functools.cache
def this_host() -> pb.Host:
    """This machine: its hostname and machine id (empty when /etc/machine-id is unreadable)."""
    try:
        machine_id = MACHINE_ID.read_text().strip()
    except OSError:
        machine_id = ""
    return pb.Host(hostname=socket.gethostname(), machine_id=machine_id)


def record(item: Message, host: pb.Host | None = None) -> pb.Record:
    """The envelope for one item: its type, the host it comes from, the item."""
    name = ITEM_FIELD[type(item)]
    out = pb.Record(type=name, host=host if host is not None else this_host())
    getattr(out, name).CopyFrom(item)
    return out


def as_dict(message: Message) -> dict[str, Any]:
    rendered: dict[str, Any] = MessageToDict(message, preserving_proto_field_name=True,
                                             always_print_fields_with_no_presence=True)
    return rendered


def json_line(item: Message, host: pb.Host | None = None) -> str:
    """One item as one line of JSON (no newline), in its Record envelope."""
    return json.dumps(as_dict(record(item, host)), ensure_ascii=False, separators=(",", ":"))
