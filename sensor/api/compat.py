"""Whether the API's proto is still compatible with the one clients were built against.

The committed descriptor set (proto/gpusentry.v1.binpb) is the baseline; a change is breaking,
as buf's wire and JSON rules have it, when it removes a message, field, enum value, service or
RPC; renumbers, renames, retypes or relabels a field (or moves it in or out of a oneof);
renumbers or renames an enum value; reuses a reserved number or name; or changes an RPC's
types or streaming. A retired field is marked deprecated and stays (gpusentry.proto says so).

    python -m sensor.api.compat BASELINE.binpb [NEW.binpb]    (NEW: the generated code's own)
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

from google.protobuf import descriptor_pb2 as d
from google.protobuf.descriptor_pb2 import FieldDescriptorProto as FieldProto

BASELINE = Path(__file__).resolve().parents[2] / "proto" / "gpusentry.v1.binpb"
PROTO_NAME = "sensor/api/v1/gpusentry.proto"




def current() -> d.FileDescriptorProto:
    """The proto the generated code (sensor/api/v1) was made from."""
    from sensor.api.v1 import gpusentry_pb2

    out = d.FileDescriptorProto()
    gpusentry_pb2.DESCRIPTOR.CopyToProto(out)
    return out


def load(path: Path, name: str = PROTO_NAME) -> d.FileDescriptorProto:
    """One file of a descriptor set (protoc --descriptor_set_out)."""
    files = d.FileDescriptorSet.FromString(path.read_bytes()).file
    for file in files:
        if file.name == name:
            return file
    raise ValueError(f"{path}: no {name} in this descriptor set (it has {', '.join(f.name for f in files)})")


def breaking_changes(old: d.FileDescriptorProto, new: d.FileDescriptorProto) -> list[str]:
    """Every change from `old` to `new` that breaks a client built against `old`, one line each."""
    problems = []
    if old.package != new.package:
        problems.append(f"package changed from {old.package} to {new.package}")
    new_messages = dict(_messages(new.package, new.message_type))
    for name, message in _messages(old.package, old.message_type):
        if name not in new_messages:
            problems.append(f"message {name} was removed")
        else:
            problems += _message_changes(name, message, new_messages[name])
    new_enums = dict(_enums(new.package, new.enum_type, new.message_type))
    for name, enum in _enums(old.package, old.enum_type, old.message_type):
        if name not in new_enums:
            problems.append(f"enum {name} was removed")
        else:
            problems += _enum_changes(name, enum, new_enums[name])
    new_services = {s.name: s for s in new.service}
    for service in old.service:
        name = f"{old.package}.{service.name}"
        if service.name not in new_services:
            problems.append(f"service {name} was removed")
        else:
            problems += _service_changes(name, service, new_services[service.name])
    return problems


# -- messages ------------------------------------------------------------------------------

def _messages(prefix: str, messages: Iterable[d.DescriptorProto]) -> Iterator[tuple[str, d.DescriptorProto]]:
    for message in messages:
        name = f"{prefix}.{message.name}"
        yield name, message
        yield from _messages(name, message.nested_type)


def _message_changes(name: str, old: d.DescriptorProto, new: d.DescriptorProto) -> list[str]:
    problems = []
    by_number = {f.number: f for f in new.field}
    by_name = {f.name: f for f in new.field}
    for field in old.field:
        now = by_number.get(field.number)
        if now is not None:
            problems += _field_changes(name, old, field, new, now)
        elif field.name in by_name:
            problems.append(f"{name}.{field.name}: renumbered from {field.number} to {by_name[field.name].number}")
        else:
            problems.append(f"{name}.{field.name} ({field.number}) was removed: mark it deprecated instead")
    problems += _reserved_reuse(name, "field", [(f.name, f.number) for f in new.field],
                                _ranges(old.reserved_range, inclusive_end=False)
                                + _ranges(new.reserved_range, inclusive_end=False),
                                {*old.reserved_name, *new.reserved_name})
    return problems


def _field_changes(message: str, old_message: d.DescriptorProto, old: FieldProto, new_message: d.DescriptorProto,
                   new: FieldProto) -> list[str]:
    where = f"{message}.{old.name} ({old.number})"
    problems = []
    if old.name != new.name:
        problems.append(f"{message} field {old.number}: renamed from {old.name} to {new.name} "
                        f"(JSON uses the name)")
    if _type(old) != _type(new):
        problems.append(f"{where}: type changed from {_type(old)} to {_type(new)}")
    if _label(old) != _label(new):
        problems.append(f"{where}: label changed from {_label(old)} to {_label(new)}")
    old_oneof, new_oneof = _oneof(old_message, old), _oneof(new_message, new)
    if old_oneof != new_oneof:
        problems.append(f"{where}: moved from {old_oneof or 'no oneof'} to {new_oneof or 'no oneof'}")
    return problems


def _type(field: FieldProto) -> str:
    if field.type in (FieldProto.TYPE_MESSAGE, FieldProto.TYPE_ENUM):
        return str(field.type_name).lstrip(".")
    return str(FieldProto.Type.Name(field.type)).removeprefix("TYPE_").lower()


def _label(field: FieldProto) -> str:
    if field.label == FieldProto.LABEL_REPEATED:
        return "repeated"
    if field.label == FieldProto.LABEL_REQUIRED:
        return "required"
    return "optional" if field.proto3_optional else "singular"


def _oneof(message: d.DescriptorProto, field: FieldProto) -> str:
    """The real oneof a field belongs to ("" for none, or for proto3 `optional`'s synthetic one)."""
    if not field.HasField("oneof_index") or field.proto3_optional:
        return ""
    return f"oneof {message.oneof_decl[field.oneof_index].name}"


# -- enums ---------------------------------------------------------------------------------

def _enums(prefix: str, enums: Iterable[d.EnumDescriptorProto],
           messages: Iterable[d.DescriptorProto]) -> Iterator[tuple[str, d.EnumDescriptorProto]]:
    for enum in enums:
        yield f"{prefix}.{enum.name}", enum
    for message in messages:
        name = f"{prefix}.{message.name}"
        yield from _enums(name, message.enum_type, message.nested_type)


def _enum_changes(name: str, old: d.EnumDescriptorProto, new: d.EnumDescriptorProto) -> list[str]:
    problems = []
    by_number = {v.number: v for v in new.value}
    by_name = {v.name: v for v in new.value}
    for value in old.value:
        if value.name in by_name and by_name[value.name].number != value.number:
            problems.append(f"{name}.{value.name}: renumbered from {value.number} to {by_name[value.name].number}")
        elif value.number not in by_number:
            problems.append(f"{name}.{value.name} ({value.number}) was removed: mark it deprecated instead")
        elif value.name not in by_name:
            problems.append(f"{name} value {value.number}: renamed from {value.name} to "
                            f"{by_number[value.number].name} (JSON uses the name)")
    problems += _reserved_reuse(name, "value", [(v.name, v.number) for v in new.value],
                                _ranges(old.reserved_range, inclusive_end=True)
                                + _ranges(new.reserved_range, inclusive_end=True),
                                {*old.reserved_name, *new.reserved_name})
    return problems


# -- reserved numbers and names ------------------------------------------------------------------

def _ranges(ranges: Iterable[d.DescriptorProto.ReservedRange | d.EnumDescriptorProto.EnumReservedRange],
            inclusive_end: bool) -> list[range]:
    """Reserved ranges as Python ranges: a message's end is exclusive, an enum's inclusive."""
    return [range(r.start, r.end + 1 if inclusive_end else r.end) for r in ranges]


def _reserved_reuse(owner: str, what: str, members: list[tuple[str, int]], reserved: list[range],
                    names: set[str]) -> list[str]:
    problems = []
    for name, number in members:
        if any(number in r for r in reserved):
            problems.append(f"{owner}.{name}: {what} number {number} is reserved (it was retired): use a new one")
        if name in names:
            problems.append(f"{owner}.{name}: the {what} name {name} is reserved (it was retired): use a new one")
    return problems


# -- services ------------------------------------------------------------------------------

def _service_changes(name: str, old: d.ServiceDescriptorProto, new: d.ServiceDescriptorProto) -> list[str]:
    problems = []
    methods = {m.name: m for m in new.method}
    for method in old.method:
        now = methods.get(method.name)
        where = f"{name}.{method.name}"
        if now is None:
            problems.append(f"rpc {where} was removed")
            continue
        for part, before, after in (("request", method.input_type, now.input_type),
                                    ("response", method.output_type, now.output_type)):
            if before != after:
                problems.append(f"rpc {where}: {part} type changed from {before.lstrip('.')} to {after.lstrip('.')}")
        for part, was, now_streams in (("client", method.client_streaming, now.client_streaming),
                                       ("server", method.server_streaming, now.server_streaming)):
            if was != now_streams:
                problems.append(f"rpc {where}: {part} streaming changed from {was} to {now_streams}")
    return problems


def main(argv: list[str]) -> int:
    if not 1 <= len(argv) <= 2:
        print(__doc__, file=sys.stderr)
        return 2
    old = load(Path(argv[0]))
    new = load(Path(argv[1])) if len(argv) == 2 else current()
    problems = breaking_changes(old, new)
    for problem in problems:
        print(f"breaking change: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
