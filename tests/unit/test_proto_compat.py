"""The API's proto stays compatible with the committed descriptor (proto/gpusentry.v1.binpb),
and the check catches each kind of break, saying what broke."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2 as d
from google.protobuf import text_format
from google.protobuf.descriptor_pb2 import FieldDescriptorProto as FieldProto

from sensor.api import compat


def test_the_proto_is_compatible_with_the_committed_descriptor() -> None:
    problems = compat.breaking_changes(compat.load(compat.BASELINE), compat.current())
    assert problems == [], "a breaking change to gpusentry.proto (retire fields with [deprecated = true] instead)"


def test_the_committed_descriptor_is_gpusentrys() -> None:
    baseline = compat.load(compat.BASELINE)
    assert (baseline.name, baseline.package, [s.name for s in baseline.service]) == (
        "sensor/api/v1/gpusentry.proto", "gpusentry.v1", ["Sensor"])


BASE = """
package: "t.v1"
message_type {
  name: "M"
  field { name: "a" number: 1 label: LABEL_OPTIONAL type: TYPE_STRING }
  field { name: "b" number: 2 label: LABEL_REPEATED type: TYPE_UINT64 }
  field { name: "c" number: 3 label: LABEL_OPTIONAL type: TYPE_BOOL oneof_index: 0 }
  field { name: "inner" number: 4 label: LABEL_OPTIONAL type: TYPE_MESSAGE type_name: ".t.v1.M.Inner" }
  oneof_decl { name: "choice" }
  nested_type { name: "Inner" field { name: "x" number: 1 label: LABEL_OPTIONAL type: TYPE_INT32 } }
  enum_type { name: "Mode" value { name: "MODE_UNSPECIFIED" number: 0 } }
  reserved_range { start: 9 end: 11 }
  reserved_name: "old"
}
enum_type {
  name: "E"
  value { name: "E_UNSPECIFIED" number: 0 }
  value { name: "E_ONE" number: 1 }
  reserved_range { start: 5 end: 5 }
  reserved_name: "E_OLD"
}
service {
  name: "S"
  method { name: "Get" input_type: ".t.v1.M" output_type: ".t.v1.M" }
  method { name: "Watch" input_type: ".t.v1.M" output_type: ".t.v1.M.Inner" server_streaming: true }
}
"""


def base() -> d.FileDescriptorProto:
    return text_format.Parse(BASE, d.FileDescriptorProto())


def field(file: d.FileDescriptorProto, name: str) -> FieldProto:
    found: FieldProto = next(f for f in file.message_type[0].field if f.name == name)
    return found


def remove_field(name: str) -> Callable[[d.FileDescriptorProto], None]:
    def change(file: d.FileDescriptorProto) -> None:
        file.message_type[0].field.remove(field(file, name))
    return change


def add_field(name: str, number: int) -> Callable[[d.FileDescriptorProto], None]:
    def change(file: d.FileDescriptorProto) -> None:
        file.message_type[0].field.add(name=name, number=number, label=FieldProto.LABEL_OPTIONAL,
                                       type=FieldProto.TYPE_STRING)
    return change


def set_field(which: str, **values: object) -> Callable[[d.FileDescriptorProto], None]:
    def change(file: d.FileDescriptorProto) -> None:
        for key, value in values.items():
            setattr(field(file, which), key, value)
    return change


def make_optional(file: d.FileDescriptorProto) -> None:
    file.message_type[0].oneof_decl.add(name="_a")
    set_field("a", proto3_optional=True, oneof_index=1)(file)


def leave_oneof(file: d.FileDescriptorProto) -> None:
    field(file, "c").ClearField("oneof_index")


def unreserve_and_reuse(file: d.FileDescriptorProto) -> None:
    del file.message_type[0].reserved_range[:]
    add_field("d", 9)(file)


def remove_nested(file: d.FileDescriptorProto) -> None:
    del file.message_type[0].nested_type[:]


def remove_nested_enum(file: d.FileDescriptorProto) -> None:
    del file.message_type[0].enum_type[:]


def remove_value(file: d.FileDescriptorProto) -> None:
    del file.enum_type[0].value[1]


def set_value(**values: object) -> Callable[[d.FileDescriptorProto], None]:
    def change(file: d.FileDescriptorProto) -> None:
        for key, value in values.items():
            setattr(file.enum_type[0].value[1], key, value)
    return change


def add_value(name: str, number: int) -> Callable[[d.FileDescriptorProto], None]:
    def change(file: d.FileDescriptorProto) -> None:
        file.enum_type[0].value.add(name=name, number=number)
    return change


def remove_enum(file: d.FileDescriptorProto) -> None:
    del file.enum_type[:]


def remove_rpc(file: d.FileDescriptorProto) -> None:
    del file.service[0].method[1]


def set_rpc(**values: object) -> Callable[[d.FileDescriptorProto], None]:
    def change(file: d.FileDescriptorProto) -> None:
        for key, value in values.items():
            setattr(file.service[0].method[1], key, value)
    return change


def remove_service(file: d.FileDescriptorProto) -> None:
    del file.service[:]


BREAKS: list[tuple[str, Callable[[d.FileDescriptorProto], None], list[str]]] = [
    ("message removed", remove_nested, ["message t.v1.M.Inner was removed"]),
    ("field removed", remove_field("a"), ["t.v1.M.a (1) was removed: mark it deprecated instead"]),
    ("field renumbered", set_field("a", number=5), ["t.v1.M.a: renumbered from 1 to 5"]),
    ("field renamed", set_field("a", name="title"), ["t.v1.M field 1: renamed from a to title (JSON uses the name)"]),
    ("scalar retyped", set_field("b", type=FieldProto.TYPE_INT64),
     ["t.v1.M.b (2): type changed from uint64 to int64"]),
    ("message retyped", set_field("inner", type_name=".t.v1.M"),
     ["t.v1.M.inner (4): type changed from t.v1.M.Inner to t.v1.M"]),
    ("repeated made singular", set_field("b", label=FieldProto.LABEL_OPTIONAL),
     ["t.v1.M.b (2): label changed from repeated to singular"]),
    ("singular made optional", make_optional, ["t.v1.M.a (1): label changed from singular to optional"]),
    ("field left its oneof", leave_oneof, ["t.v1.M.c (3): moved from oneof choice to no oneof"]),
    ("reserved number reused", add_field("d", 10),
     ["t.v1.M.d: field number 10 is reserved (it was retired): use a new one"]),
    ("reservation dropped and number reused", unreserve_and_reuse,
     ["t.v1.M.d: field number 9 is reserved (it was retired): use a new one"]),
    ("reserved name reused", add_field("old", 12),
     ["t.v1.M.old: the field name old is reserved (it was retired): use a new one"]),
    ("enum removed", remove_enum, ["enum t.v1.E was removed"]),
    ("nested enum removed", remove_nested_enum, ["enum t.v1.M.Mode was removed"]),
    ("enum value removed", remove_value, ["t.v1.E.E_ONE (1) was removed: mark it deprecated instead"]),
    ("enum value renumbered", set_value(number=2), ["t.v1.E.E_ONE: renumbered from 1 to 2"]),
    ("enum value renamed", set_value(name="E_FIRST"),
     ["t.v1.E value 1: renamed from E_ONE to E_FIRST (JSON uses the name)"]),
    ("reserved enum number reused", add_value("E_FIVE", 5),
     ["t.v1.E.E_FIVE: value number 5 is reserved (it was retired): use a new one"]),
    ("reserved enum name reused", add_value("E_OLD", 6),
     ["t.v1.E.E_OLD: the value name E_OLD is reserved (it was retired): use a new one"]),
    ("service removed", remove_service, ["service t.v1.S was removed"]),
    ("rpc removed", remove_rpc, ["rpc t.v1.S.Watch was removed"]),
    ("rpc request retyped", set_rpc(input_type=".t.v1.M.Inner"),
     ["rpc t.v1.S.Watch: request type changed from t.v1.M to t.v1.M.Inner"]),
    ("rpc response retyped", set_rpc(output_type=".t.v1.M"),
     ["rpc t.v1.S.Watch: response type changed from t.v1.M.Inner to t.v1.M"]),
    ("rpc no longer streams", set_rpc(server_streaming=False),
     ["rpc t.v1.S.Watch: server streaming changed from True to False"]),
]


@pytest.mark.parametrize(("change", "expected"), [(b[1], b[2]) for b in BREAKS], ids=[b[0] for b in BREAKS])
def test_each_break_is_reported(change: Callable[[d.FileDescriptorProto], None], expected: list[str]) -> None:
    new = base()
    change(new)
    assert compat.breaking_changes(base(), new) == expected


def deprecate(file: d.FileDescriptorProto) -> None:
    field(file, "a").options.deprecated = True


def add_message(file: d.FileDescriptorProto) -> None:
    file.message_type.add(name="N")


def add_rpc(file: d.FileDescriptorProto) -> None:
    file.service[0].method.add(name="List", input_type=".t.v1.M", output_type=".t.v1.M")


def reserve_more(file: d.FileDescriptorProto) -> None:
    file.message_type[0].reserved_range.add(start=20, end=30)


COMPATIBLE: list[tuple[str, Callable[[d.FileDescriptorProto], None]]] = [
    ("field added", add_field("d", 5)), ("field deprecated", deprecate), ("message added", add_message),
    ("enum value added", add_value("E_TWO", 2)), ("rpc added", add_rpc), ("numbers reserved", reserve_more),
]


@pytest.mark.parametrize("change", [c[1] for c in COMPATIBLE], ids=[c[0] for c in COMPATIBLE])
def test_compatible_changes_pass(change: Callable[[d.FileDescriptorProto], None]) -> None:
    new = base()
    change(new)
    assert compat.breaking_changes(base(), new) == []


def write_set(path: Path, file: d.FileDescriptorProto) -> Path:
    file.name = compat.PROTO_NAME
    path.write_bytes(d.FileDescriptorSet(file=[file]).SerializeToString())
    return path


def test_the_command_names_each_break_and_fails(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    old = write_set(tmp_path / "old.binpb", base())
    new = base()
    remove_rpc(new)
    remove_value(new)
    assert compat.main([str(old), str(write_set(tmp_path / "new.binpb", new))]) == 1
    assert capsys.readouterr().err.splitlines() == [
        "breaking change: t.v1.E.E_ONE (1) was removed: mark it deprecated instead",
        "breaking change: rpc t.v1.S.Watch was removed",
    ]
    assert compat.main([str(old), str(old)]) == 0


def test_a_descriptor_set_without_the_proto_is_refused(tmp_path: Path) -> None:
    other = base()
    other.name = "other.proto"
    path = tmp_path / "other.binpb"
    path.write_bytes(d.FileDescriptorSet(file=[other]).SerializeToString())
    with pytest.raises(ValueError, match=r"no sensor/api/v1/gpusentry.proto in this descriptor set \(it has other"):
        compat.load(path)
