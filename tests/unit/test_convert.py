"""From the aggregator's view to API messages: every event kind, every fact kind, alerts with
each step's fact; and the fact dataclasses and their proto messages cannot drift apart."""

from __future__ import annotations

import dataclasses
import typing
import uuid
from typing import Any

import pytest
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from sensor import events as ev
from sensor.aggregator import facts as f
from sensor.aggregator.aggregator import Aggregator, Observation
from sensor.aggregator.process_table import Process, ProcKey
from sensor.api import convert
from sensor.api.v1 import gpusentry_pb2 as pb
from sensor.rules.alert import Alert, AlertProcess, AlertStep
from sensor.rules.loader import load_rules

SEC = 1_000_000_000
CLOCK = convert.Clock(1_700_000_000 * SEC)
KEY = ProcKey(100, 5 * SEC)
PROC = Process(key=KEY, ppid=1, parent=None, exe=b"/usr/bin/ssh", execs=2)
REF = pb.ProcessRef(exec_id="100:5000000000:2", pid=100, exe="/usr/bin/ssh")
TS = 7 * SEC


def stamp(boot_ns: int) -> Any:
    return CLOCK.timestamp(boot_ns)


def only_event(event: ev.Event, facts: list[f.Fact] | None = None) -> pb.Event:
    [out] = convert.events(Observation(event, PROC, facts or []), CLOCK)
    return out


def exec_event(**changes: Any) -> ev.Exec:
    event = ev.Exec(ts=TS, tgid=100, tid=100, result=0, ppid=1, uid=1000, gid=1001, cgroup_id=7, start_ns=5 * SEC,
                    comm=b"ssh", filename=b"/usr/bin/s\xffh", argv=[b"ssh", b"-fNR"], argc=3, flags=0, exe_dev=0,
                    exe_ino=0, old_tid=100, loginuid=1000, tool="ssh", identity="inode")
    return dataclasses.replace(event, **changes)


def expected_exec(**changes: Any) -> pb.Exec:
    detail = pb.Exec(filename="/usr/bin/s\\xffh", argv=["ssh", "-fNR"], argc=3, result=0, uid=1000, gid=1001,
                     cgroup_id=7, ppid=1, loginuid=1000, tool="ssh", identity="inode")
    for name, value in changes.items():
        setattr(detail, name, value)
    return detail


def test_exec_event_has_every_field() -> None:
    assert only_event(exec_event()) == pb.Event(time=stamp(TS), ts=TS, kind=pb.EVENT_KIND_EXEC, process=REF,
                                                exec=expected_exec())


@pytest.mark.parametrize(("flag", "field"), [
    (ev.ARGV_TRUNCATED, "argv_truncated"), (ev.ARG_CUT, "arg_cut"), (ev.ARGV_UNREAD, "argv_unread"),
    (ev.FILENAME_CUT, "filename_cut"), (ev.ARGC_UNKNOWN, "argc_unknown"), (ev.ARGV_FROM_PROCFS, "argv_from_procfs"),
])
def test_each_exec_flag_has_its_own_field(flag: int, field: str) -> None:
    assert only_event(exec_event(flags=flag)).exec == expected_exec(**{field: True})


@pytest.mark.parametrize(("event", "kind", "field", "detail"), [
    (ev.Fork(TS, 100, 100, 101, 100, 6 * SEC), pb.EVENT_KIND_FORK, "fork", pb.Fork(child_pid=101, parent_pid=100)),
    (ev.Exit(TS, 100, 100, 9, 5 * SEC), pb.EVENT_KIND_EXIT, "exit", pb.Exit(exit_code=0, signal=9)),
    (ev.Exit(TS, 100, 100, 3 << 8, 5 * SEC), pb.EVENT_KIND_EXIT, "exit", pb.Exit(exit_code=3, signal=0)),
    (ev.Accept(TS, 100, 100, 5, 3, "inet", "198.51.100.1", 40022), pb.EVENT_KIND_ACCEPT, "accept",
     pb.Accept(fd=5, family="inet", address="198.51.100.1", port=40022)),
    (ev.TcpEstablished(TS, 100, 100, "inet", "10.0.0.2", 40022, "10.0.0.1", 22, route="lan"),
     pb.EVENT_KIND_TCP_ESTABLISHED, "tcp_established",
     pb.TcpEstablished(family="inet", source_address="10.0.0.2", source_port=40022, destination_address="10.0.0.1",
                       destination_port=22, destination="lan")),
    (ev.TcpEstablished(TS, 100, 100, "inet", "10.0.0.2", 40022, "198.51.100.1", 22),
     pb.EVENT_KIND_TCP_ESTABLISHED, "tcp_established",
     pb.TcpEstablished(family="inet", source_address="10.0.0.2", source_port=40022,
                       destination_address="198.51.100.1", destination_port=22, destination="egress")),
    (ev.GpuOpen(TS, 100, 100, 4, ev.GpuKind.DEV, 0, False), pb.EVENT_KIND_GPU_OPEN, "gpu_open",
     pb.GpuOpen(device="nvidia0", minor=0, by_name=False)),
    (ev.GpuIoctl(TS, 100, 100, ev.GpuReason.ALLOC, ev.GpuKind.CTL, 3, 255, 0xC030462B, 0x2B, 48, 0, 0, 1, 4, 5,
                 0xCBC0, 0, 0, 0, bytes(16), 0), pb.EVENT_KIND_GPU_OBJECT, "gpu_object",
     pb.GpuObject(device="nvidiactl", command="RM_ALLOC", reason="alloc", role="compute", class_id=0xCBC0,
                  architecture="Hopper", handle=5, parent=4, ret=0, status=0)),
])
def test_each_event_kind(event: ev.Event, kind: pb.EventKind, field: str, detail: Message) -> None:
    expected = pb.Event(time=stamp(TS), ts=TS, kind=kind, process=REF)
    getattr(expected, field).CopyFrom(detail)
    assert only_event(event) == expected


def connect_event(**changes: Any) -> ev.Connect:
    return dataclasses.replace(ev.Connect(TS, 100, 100, 3, -115, "inet", "198.51.100.7", 3333), **changes)


def test_connect_event_carries_the_probes_routing_verdict() -> None:
    event = connect_event(route="egress", route_by_range=True)
    assert only_event(event).connect == pb.Connect(family="inet", address="198.51.100.7", port=3333, result=-115,
                                                   fd=3, destination="egress", route_by_range=True)


def test_connect_event_without_a_verdict_takes_the_connect_facts() -> None:
    fact = f.ConnectFact(TS, KEY, "inet", "198.51.100.7", 3333, -115, "egress", False)
    assert only_event(connect_event(), [fact]).connect == pb.Connect(
        family="inet", address="198.51.100.7", port=3333, result=-115, fd=3, destination="egress",
        route_by_range=True)


def test_connect_with_a_negative_fd_keeps_its_bits() -> None:
    assert only_event(connect_event(fd=-1, route="none")).connect.fd == 0xFFFFFFFF


@pytest.mark.parametrize("event", [
    ev.Proc(TS, 100, 100, 1, 0, 0, 0, 5 * SEC, b"ssh", b"/usr/bin/ssh", []),
    ev.Stats(TS, 1, 1), ev.GpuCounters(TS, 1, 1), ev.End(TS, 1, 1),
])
def test_frames_that_are_no_kernel_event_make_no_event(event: ev.Event) -> None:
    assert list(convert.events(Observation(event, PROC), CLOCK)) == []


def test_an_event_without_a_process_makes_no_event() -> None:
    assert list(convert.events(Observation(connect_event(), None), CLOCK)) == []


# -- facts ---------------------------------------------------------------------------------

FACTS: list[tuple[f.Fact, str, Message]] = [
    (f.ExecFact(TS, KEY, "/usr/bin/ssh", "ssh", ("ssh", "-R"), "ssh -R", 1000, 4294967295, "ssh"), "exec",
     pb.ExecFact(exe="/usr/bin/ssh", name="ssh", argv=["ssh", "-R"], cmdline="ssh -R", uid=1000,
                 loginuid=4294967295, known_tool="ssh")),
    (f.ConnectFact(TS, KEY, "inet", "198.51.100.7", 443, 0, "egress", True), "connect",
     pb.Connect(family="inet", address="198.51.100.7", port=443, result=0, destination="egress", allowed=True)),
    (f.EgressFact(TS, KEY, "198.51.100.7", 443, -111, False), "egress",
     pb.Egress(address="198.51.100.7", port=443, result=-111, allowed=False)),
    (f.TunnelFact(TS, KEY, "ssh", True, ("reverse",), "198.51.100.1", "root", 2222, ("reverse 9000 -> localhost:22",),
                  "tunnel:100:5000000000:2", "config", ("hop1", "bob@hop2:2022")), "tunnel",
     pb.Tunnel(tool="ssh", reverse=True, directions=["reverse"], remote_host="198.51.100.1", remote_user="root",
               remote_port=2222, forwards=["reverse 9000 -> localhost:22"], scope="tunnel:100:5000000000:2",
               evidence="config", via=["hop1", "bob@hop2:2022"])),
    (f.TunnelFact(TS, KEY, "python3", True, ("reverse",), "198.51.100.1", "", 22,
                  ("reverse 198.51.100.1:22 <-> 127.0.0.1:22",), "tunnel:100:5000000000:2", evidence="behaviour",
                  local_services=("127.0.0.1:22",), relayed_bytes=9000), "tunnel",
     pb.Tunnel(tool="python3", reverse=True, directions=["reverse"], remote_host="198.51.100.1", remote_port=22,
               forwards=["reverse 198.51.100.1:22 <-> 127.0.0.1:22"], scope="tunnel:100:5000000000:2",
               evidence="behaviour", local_services=["127.0.0.1:22"], relayed_bytes=9000)),
    (f.MinerFact(TS, KEY, "pool-port", "3333", "198.51.100.7", 3333), "miner",
     pb.MinerFact(reason="pool-port", detail="3333", address="198.51.100.7", port=3333)),
    (f.InternalScanFact(TS, KEY, 40, 10), "internal_scan", pb.InternalScanFact(destinations=40, window_s=10)),
    (f.GpuOpenFact(TS, KEY, "nvidia0", 0, False), "gpu_open", pb.GpuOpen(device="nvidia0", minor=0, by_name=False)),
    (f.GpuCompute(TS, KEY, 5, 0xCBC0, "Hopper", 0xC86F, 0, True), "gpu_compute",
     pb.GpuComputeFact(handle=5, class_id=0xCBC0, architecture="Hopper", channel_class=0xC86F, device_id=0,
                       by_name=True)),
    (f.GpuProfile(TS, KEY, 2 << 30, 3 << 30, 9 << 30, 1 << 26, 1 << 24, 1 << 32, 1 << 30, 40, 12, 6, 120, 1, 2, 301,
                  1, 1, 0, 0), "gpu_profile",
     pb.GpuProfileFact(held_bytes=2 << 30, peak_bytes=3 << 30, allocated_bytes=9 << 30, system_bytes=1 << 26,
                       registered_bytes=1 << 24, virtual_bytes=1 << 32, uvm_mapped_bytes=1 << 30, allocations=40,
                       frees=12, alloc_rate=6, ioctl_rate=120, compute_objects=1, channels=2, compute_age_s=301,
                       devices=1, uvm_gpus=1)),
    (f.GpuLaunches(TS, KEY, 420, 3, 5, 2100, 9000, "hit budget"), "gpu_launches",
     pb.GpuLaunchesFact(launches_per_s=420, distinct_kernels=3, window_s=5, launches=2100, total_launches=9000,
                        watch="hit budget")),
]
FACT_KIND_OF = {"exec": pb.FACT_KIND_EXEC, "connect": pb.FACT_KIND_CONNECT, "egress": pb.FACT_KIND_EGRESS,
                "tunnel": pb.FACT_KIND_TUNNEL, "miner": pb.FACT_KIND_MINER,
                "internal_scan": pb.FACT_KIND_INTERNAL_SCAN, "gpu_open": pb.FACT_KIND_GPU_OPEN,
                "gpu_compute": pb.FACT_KIND_GPU_COMPUTE, "gpu_profile": pb.FACT_KIND_GPU_PROFILE,
                "gpu_launches": pb.FACT_KIND_GPU_LAUNCHES}


def expected_fact(fact: f.Fact, field: str, detail: Message, ref: pb.ProcessRef = REF) -> pb.Fact:
    out = pb.Fact(time=stamp(fact.ts), ts=fact.ts, kind=FACT_KIND_OF[fact.KIND], process=ref, summary=fact.summary())
    getattr(out, field).CopyFrom(detail)
    return out


@pytest.mark.parametrize(("fact", "field", "detail"), FACTS, ids=[x[0].KIND for x in FACTS])
def test_each_fact_kind(fact: f.Fact, field: str, detail: Message) -> None:
    assert convert.fact(fact, CLOCK, PROC) == expected_fact(fact, field, detail)


def test_every_fact_kind_is_tested() -> None:
    assert {type(x[0]) for x in FACTS} == set(f.FACT_KINDS.values())


def test_facts_of_an_observation_name_its_process() -> None:
    obs = Observation(exec_event(), PROC, [x[0] for x in FACTS])
    assert convert.facts(obs, CLOCK) == [expected_fact(*x) for x in FACTS]


def test_a_fact_without_its_process_names_its_pid() -> None:
    fact, field, detail = FACTS[0]
    other = Process(key=ProcKey(100, 9 * SEC), ppid=1, parent=None)  # the PID's next holder
    assert convert.fact(fact, CLOCK, other) == expected_fact(fact, field, detail, pb.ProcessRef(pid=100))
    assert convert.fact(fact, CLOCK) == expected_fact(fact, field, detail, pb.ProcessRef(pid=100))


def test_a_32_bit_value_out_of_a_signed_fields_range_keeps_its_bits() -> None:
    fact = f.GpuCompute(TS, KEY, 5, 0xCBC0, "Hopper", 0, 0xFFFFFFFE)  # deviceId is whatever the caller passed
    assert convert.fact(fact, CLOCK, PROC).gpu_compute.device_id == -2


# -- the fact dataclasses and their proto messages ---------------------------------------------

PROTO_TYPES: dict[Any, set[int]] = {
    str: {FieldDescriptor.TYPE_STRING}, bool: {FieldDescriptor.TYPE_BOOL},
    int: {FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_UINT32, FieldDescriptor.TYPE_INT64,
          FieldDescriptor.TYPE_UINT64},
}
# Fields a detail message has that its fact has not: the Connect message serves events too.
EVENT_ONLY = {("connect", "fd"), ("connect", "route_by_range")}


def detail_fields(kind: str) -> dict[str, FieldDescriptor]:
    _, field = convert.FACT_DETAIL[kind]
    oneof = pb.Fact.DESCRIPTOR.oneofs_by_name["detail"]
    assert field in [x.name for x in oneof.fields], f"Fact has no detail field {field!r}"
    return dict(pb.Fact.DESCRIPTOR.fields_by_name[field].message_type.fields_by_name)


@pytest.mark.parametrize("kind", sorted(f.FACT_KINDS))
def test_every_fact_field_has_its_proto_field_of_the_same_type(kind: str) -> None:
    cls = f.FACT_KINDS[kind]
    assert convert.FACT_DETAIL[kind][0] == FACT_KIND_OF[kind]
    proto = detail_fields(kind)
    hints = typing.get_type_hints(cls)
    for name in f.field_names(kind):
        proto_name = convert.FACT_FIELD_RENAMED.get(name, name)
        assert proto_name in proto, f"{cls.__name__}.{name} has no field {proto_name!r} in its proto message"
        field = proto[proto_name]
        hint = hints[name]
        repeated = typing.get_origin(hint) is tuple
        assert field.is_repeated == repeated, f"{cls.__name__}.{name}: repeated in one, not the other"
        element = typing.get_args(hint)[0] if repeated else hint
        assert field.type in PROTO_TYPES[element], f"{cls.__name__}.{name}: {element} but proto type {field.type}"


@pytest.mark.parametrize("kind", sorted(f.FACT_KINDS))
def test_every_proto_detail_field_has_its_fact_field(kind: str) -> None:
    fact_fields = {convert.FACT_FIELD_RENAMED.get(n, n) for n in f.field_names(kind)}
    extra = {n for n in detail_fields(kind) if n not in fact_fields and (kind, n) not in EVENT_ONLY}
    assert extra == set()


def test_every_fact_kind_has_its_detail() -> None:
    assert set(convert.FACT_DETAIL) == set(f.FACT_KINDS)
    assert {kind for kind, _ in convert.FACT_DETAIL.values()} == set(pb.FactKind.values()) - {
        pb.FACT_KIND_UNSPECIFIED}


# -- alerts --------------------------------------------------------------------------------

def test_an_alert_step_carries_its_fact_as_the_fact_itself_renders() -> None:
    aggregator = Aggregator(rules=load_rules([]))
    aggregator.handle(ev.Fork(SEC, 1, 1, 100, 1, SEC))
    obs = aggregator.handle(exec_event(ts=2 * SEC, start_ns=SEC, filename=b"/usr/bin/ssh",
                                       argv=[b"ssh", b"-fNR", b"9000:localhost:22", b"root@198.51.100.1"], argc=4))
    [internal] = obs.alerts
    alert = convert.alert(internal, CLOCK, 41)
    tunnel = convert.facts(obs, CLOCK)[1]
    assert tunnel.kind == pb.FACT_KIND_TUNNEL
    assert [(s.fact, s.time, s.summary, s.exec_id, s.fields_json, s.detail) for s in alert.steps] == [
        ("tunnel", stamp(2 * SEC), tunnel.summary, "100:1000000000:1", "", tunnel)]
    assert (alert.cursor, alert.rule_id, alert.severity, alert.ts, alert.time, alert.incident_id) == (
        41, "reverse-tunnel-opened", pb.SEVERITY_HIGH, 2 * SEC, stamp(2 * SEC), "")


def hand_made_alert() -> Alert:
    fields = {"handle": 5, "klass": 0xCBC0, "architecture": "Hopper", "channel_class": 0xC86F, "device_id": 1,
              "by_name": False}
    proc = AlertProcess(exec_id="100:5000000000:2", pid=100, ppid=1, exe="/usr/bin/python3", argv=("python3", "x"),
                        uid=0, loginuid=1000, cgroup_id=7, tunnel_scopes=("tunnel:1",),
                        ancestors=({"exec_id": "1:0:1", "pid": 1, "exe": "/sbin/init", "argv": ["init"]},))
    return Alert(rule_id="r", severity="critical", title="T", description="D", tags=("a",), ts=TS, scope="lineage",
                 scope_key="lineage:1", steps=(AlertStep("gpu_compute", TS, "GPU compute", fields, proc.exec_id),),
                 processes=(proc,))


def test_an_alert_has_every_field() -> None:
    alert = convert.alert(hand_made_alert(), CLOCK)
    assert uuid.UUID(alert.id).version == 4
    alert.id = ""
    detail = pb.Fact(time=stamp(TS), ts=TS, kind=pb.FACT_KIND_GPU_COMPUTE,
                     process=pb.ProcessRef(exec_id="100:5000000000:2", pid=100, exe="/usr/bin/python3"),
                     summary="GPU compute", gpu_compute=pb.GpuComputeFact(
                         handle=5, class_id=0xCBC0, architecture="Hopper", channel_class=0xC86F, device_id=1))
    assert alert == pb.Alert(
        cursor=0, rule_id="r", severity=pb.SEVERITY_CRITICAL, title="T", description="D", tags=["a"],
        time=stamp(TS), ts=TS, scope="lineage", scope_key="lineage:1",
        steps=[pb.AlertStep(fact="gpu_compute", time=stamp(TS), summary="GPU compute", exec_id="100:5000000000:2",
                            detail=detail)],
        processes=[pb.AlertProcess(
            process=pb.Process(exec_id="100:5000000000:2", pid=100, ppid=1, exe="/usr/bin/python3",
                               argv=["python3", "x"], argc=2, uid=0, loginuid=1000, cgroup_id=7,
                               tunnel_scopes=["tunnel:1"]),
            ancestors=[pb.ProcessRef(exec_id="1:0:1", pid=1, exe="/sbin/init")])])


def test_each_conversion_of_an_alert_has_its_own_id() -> None:
    internal = hand_made_alert()
    assert convert.alert(internal, CLOCK).id != convert.alert(internal, CLOCK).id
