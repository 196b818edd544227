"""The published JSON Schema (docs/schema/) is what scripts/gen-schema makes of the proto now,
and everything gpusentry writes as JSON validates against it: each item kind in its Record,
and the whole `--output events --json` stream over a capture, line by line (jq reads it too)."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from google.protobuf.message import Message
from jsonschema import Draft202012Validator, FormatChecker

from sensor import events as ev
from sensor.aggregator.aggregator import Aggregator
from sensor.api import convert
from sensor.api.v1 import gpusentry_pb2 as pb
from sensor.capture import FrameWriter, StreamMeta, open_capture
from sensor.output import Printer
from sensor.outward import json_line
from sensor.rules.loader import load_rules

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = ROOT / "docs" / "schema" / "gpusentry.schema.json"
SEC = 1_000_000_000
WALL = 1_700_000_000 * SEC
HOST = pb.Host(hostname="gpu-7", machine_id="0123456789abcdef0123456789abcdef")


# jsonschema checks "date-time" only with an optional package; RFC 3339 as proto3 JSON writes it
# (a date, "T", a time, a zone) is checked here.
FORMATS = FormatChecker(formats=())


def is_rfc3339(value: object) -> bool:
    return not isinstance(value, str) or ("T" in value and datetime.fromisoformat(value).tzinfo is not None)


FORMATS.checks("date-time", raises=ValueError)(is_rfc3339)


def schema_validator() -> Draft202012Validator:
    """The published schema's validator (other tests validate what they see with it too)."""
    schema = json.loads(SCHEMA.read_text())
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema, format_checker=FORMATS)


@pytest.fixture(scope="module")
def validator() -> Draft202012Validator:
    return schema_validator()


def problems(validator: Draft202012Validator, line: str) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(json.loads(line))]


def test_committed_schema_is_what_the_proto_makes_now() -> None:
    made = subprocess.run([sys.executable, str(ROOT / "scripts" / "gen-schema"), "-"], capture_output=True,
                          text=True, cwd=ROOT, timeout=120)
    assert made.returncode == 0, made.stderr
    assert made.stdout == SCHEMA.read_text(), f"{SCHEMA.relative_to(ROOT)} is stale: run scripts/gen-schema"


def test_the_top_level_is_a_record_and_every_message_has_its_definition(validator: Draft202012Validator) -> None:
    schema = validator.schema
    assert schema["$ref"] == "#/$defs/Record"
    assert set(pb.DESCRIPTOR.message_types_by_name) <= set(schema["$defs"])
    assert set(pb.DESCRIPTOR.enum_types_by_name) <= set(schema["$defs"])


# -- every item kind, alone --------------------------------------------------------------------

STAMP = convert.Clock(WALL).timestamp(5 * SEC)
REF = pb.ProcessRef(exec_id="100:1000000000:1", pid=100, exe="/usr/bin/python3")
PROCESS = pb.Process(exec_id="100:1000000000:1", pid=100, ppid=1, exe="/usr/bin/python3", argv=["python3", "x"],
                     argc=2, uid=0, loginuid=4294967295, cgroup_id=2**63 + 1, start_time=STAMP, alive=True,
                     tunnel_scopes=["tunnel:1"])
TUNNEL = pb.Tunnel(tool="ssh", reverse=True, directions=["reverse"], remote_host="198.51.100.1", remote_user="root",
                   remote_port=22, forwards=["reverse 9000 -> localhost:22"], scope="tunnel:1")
COMPUTE = pb.Fact(time=STAMP, ts=5 * SEC, kind=pb.FACT_KIND_GPU_COMPUTE, process=REF, summary="GPU compute",
                  gpu_compute=pb.GpuComputeFact(handle=5, class_id=0xCBC0, architecture="Hopper", device_id=-1))
ALERT = pb.Alert(cursor=7, id="6f1c2b4e-8d3a-4e5f-9a0b-1c2d3e4f5a6b", incident_id="inc", rule_id="r",
                 severity=pb.SEVERITY_CRITICAL, title="T", description="D", tags=["attack.T1572"], time=STAMP,
                 ts=5 * SEC, scope="lineage", scope_key="lineage:1",
                 steps=[pb.AlertStep(fact="gpu_compute", time=STAMP, summary="s", exec_id=REF.exec_id, detail=COMPUTE)],
                 processes=[pb.AlertProcess(process=PROCESS, ancestors=[REF])])


def event(**detail: Message) -> pb.Event:
    return pb.Event(time=STAMP, ts=5 * SEC, kind=pb.EVENT_KIND_GPU_ACTIVITY, process=REF, **detail)


ITEMS: list[Message] = [
    event(gpu_activity=pb.GpuActivity(calls_by_command={"RM_ALLOC": 2**40}, rate_by_device={"nvidia0": 1.5,
                                                                                             "nvidiactl": float("nan")},
                                      errors=1, suppressed=2)),
    event(exec=pb.Exec(filename="/bin/\x1b", argv=["\\xff"], argc=4, argv_truncated=True, result=-2, loginuid=7)),
    event(exit=pb.Exit(exit_code=1, signal=9)),
    event(tunnel=TUNNEL),  # deprecated, still valid
    event(egress=pb.Egress(address="198.51.100.7", port=443, result=-111)),
    pb.Event(),  # nothing set: every field without presence is still written
    COMPUTE,
    pb.Fact(time=STAMP, ts=1, kind=pb.FACT_KIND_TUNNEL, process=REF, summary="t", tunnel=TUNNEL),
    ALERT,
    pb.Incident(id="inc", cursor=8, first_seen=STAMP, last_seen=STAMP, severity=pb.SEVERITY_CRITICAL, summary="s",
                rule_ids=["r"], scope_keys=["lineage:1"], alerts=[ALERT], alerts_total=1,
                processes=[pb.AlertProcess(process=PROCESS)], tunnels=[COMPUTE], gpu_compute=[COMPUTE],
                connections=[COMPUTE], first_ts=5 * SEC, last_ts=5 * SEC, host=HOST),
    pb.SensorGap(cursor=9, start=STAMP, end=STAMP, cause="the agent was not running"),
    pb.Gap(missed_events=1, missed_alerts=2, resume_cursor=3, reason="slow", missed_sensor_gaps=4,
           missed_incidents=5, missed_facts=6),
    pb.Subscribed(journal_last_cursor=2**64 - 1, replay_after_cursor=1, note="n"),
]


@pytest.mark.parametrize("item", ITEMS, ids=lambda m: f"{type(m).__name__}:{m.WhichOneof('detail') or ''}"
                         if isinstance(m, pb.Event | pb.Fact) else type(m).__name__)
def test_every_item_kind_validates(validator: Draft202012Validator, item: Message) -> None:
    assert problems(validator, json_line(item, HOST)) == []


def test_every_record_item_kind_is_tested() -> None:
    tested = {type(item).DESCRIPTOR.full_name for item in ITEMS}
    assert {f.message_type.full_name for f in pb.Record.DESCRIPTOR.oneofs_by_name["item"].fields} <= tested


def record_of(item: Message) -> dict[str, Any]:
    rendered: dict[str, Any] = json.loads(json_line(item, HOST))
    return rendered


def without_ts(line: dict[str, Any]) -> None:
    del line["event"]["ts"]


def with_extra_field(line: dict[str, Any]) -> None:
    line["event"]["exec"]["argv_cut"] = True


def with_int64_as_number(line: dict[str, Any]) -> None:
    line["event"]["ts"] = 5 * SEC


def with_two_details(line: dict[str, Any]) -> None:
    line["event"]["exit"] = {"exit_code": 0, "signal": 0}


def with_unknown_kind(line: dict[str, Any]) -> None:
    line["event"]["kind"] = "EVENT_KIND_TELEPORT"


def with_bad_time(line: dict[str, Any]) -> None:
    line["event"]["time"] = "yesterday"


def with_negative_pid(line: dict[str, Any]) -> None:
    line["event"]["process"]["pid"] = -1


@pytest.mark.parametrize("damage", [without_ts, with_extra_field, with_int64_as_number, with_two_details,
                                    with_unknown_kind, with_bad_time, with_negative_pid])
def test_the_schema_refuses_what_the_agent_never_writes(validator: Draft202012Validator, damage: Any) -> None:
    line = record_of(event(exec=pb.Exec(filename="/bin/true")))
    assert not list(validator.iter_errors(line))
    damage(line)
    assert list(validator.iter_errors(line))


# -- the stream over a capture -----------------------------------------------------------------

@dataclass
class Scenario:
    """A host where an agent's tree opens a reverse tunnel, computes on the GPU, reaches a
    mining pool and scans the LAN, and a login comes back through the tunnel: every event and
    fact kind, written as the probe writes a capture."""

    frames: list[ev.Event] = field(default_factory=list)
    ts: int = SEC
    started: dict[int, int] = field(default_factory=dict)

    def tick(self, seconds: float = 1) -> int:
        self.ts += int(seconds * SEC)
        return self.ts

    def spawn(self, parent: int, child: int, *argv: str, flags: int = 0, tool: str = "") -> None:
        self.started[child] = self.tick()
        self.frames.append(ev.Fork(self.ts, parent, parent, child, parent, self.started[child]))
        raw = [a.encode() for a in argv]
        self.frames.append(ev.Exec(self.tick(), child, child, 0, parent, 1000, 1000, 7, self.started[child],
                                   raw[0][-15:], raw[0], raw, len(raw) + 1, flags, 0, 0, child, loginuid=1000,
                                   tool=tool, identity="inode" if tool else ""))

    def connect(self, pid: int, address: str, port: int, route: str) -> None:
        self.frames.append(ev.Connect(self.tick(0.01), pid, pid, 3, -115, "inet", address, port, route=route))

    def gpu_compute(self, pid: int) -> None:
        self.frames.append(ev.GpuOpen(self.tick(), pid, pid, 3, ev.GpuKind.CTL, 255, False))
        for klass, handle, parent in ((0x41, 1, 1), (0x80, 2, 1), (0xA06C, 3, 2), (0xC86F, 4, 3), (0xCBC0, 5, 4)):
            self.frames.append(ev.GpuIoctl(self.tick(0.001), pid, pid, ev.GpuReason.ALLOC, ev.GpuKind.CTL, 3, 255,
                                           0xC030462B, 0x2B, 48, 0, 0, 1, parent, handle, klass, 0, 0, 0, bytes(16),
                                           0))

    def story(self) -> list[ev.Event]:
        self.frames.append(ev.Proc(self.ts, 300, 300, 1, 0, 0, 0, 0, b"sshd", b"/usr/sbin/sshd", [b"sshd", b"-D"]))
        self.spawn(1, 100, "/usr/bin/python3", "agent.py", flags=ev.ARGV_FROM_PROCFS)
        self.spawn(100, 101, "/bin/bash", "-c", "tools \x1b\xff", flags=ev.ARGV_TRUNCATED | ev.ARG_CUT)
        self.spawn(101, 102, "/usr/bin/ssh", "-fNR", "9000:localhost:22", "root@198.51.100.1", tool="ssh")
        self.frames.append(ev.TcpEstablished(self.tick(), 102, 102, "inet", "127.0.0.1", 40022, "127.0.0.1", 22,
                                             route="loopback"))
        self.frames.append(ev.Accept(self.tick(0.001), 300, 300, 5, 3, "inet", "127.0.0.1", 40022))
        self.spawn(101, 103, "/usr/bin/python3", "hash.py")
        self.gpu_compute(103)
        self.frames.append(ev.GpuCounters(self.tick(), 0, 0, [[103, ev.GpuKind.CTL, 0x2B, 5, 0, 0, self.ts]]))
        since = self.tick()  # in a tunnel's scope with a GPU: the probe watches its launches
        self.frames.append(ev.LaunchWatch(since, 103, 103, self.started[103], "watching", "", "/usr/lib/libcuda.so.1"))
        self.frames.append(ev.LaunchCounts(self.tick(6), 103, 103, self.started[103], 3000, 0, 2, 0, since))
        self.connect(103, "203.0.113.9", 4444, "egress")
        for host in range(40):
            self.connect(103, f"10.0.0.{host + 1}", 22, "lan")
        self.frames.append(ev.Stats(self.tick(), 0, 0, {"exec": 0}, {"exec": 0}, {"exec": 9}))
        self.frames.append(ev.Exit(self.tick(), 103, 103, 9, self.started[103]))
        self.frames.append(ev.End(self.tick(), 0, 0, "stopped by SIGTERM"))
        return self.frames


def incident_of(alert: pb.Alert) -> pb.Incident:
    return pb.Incident(id=alert.incident_id, cursor=alert.cursor + 1, first_seen=alert.time, last_seen=alert.time,
                       severity=alert.severity, summary=alert.title, rule_ids=[alert.rule_id],
                       scope_keys=[alert.scope_key], alerts=[alert], alerts_total=1, processes=alert.processes,
                       first_ts=alert.ts, last_ts=alert.ts, host=HOST)


def printed_stream(capture: Path) -> Iterator[str]:
    """`analyze --output events --json` of the capture: the aggregator with the built-in rules."""
    src, reader = open_capture(str(capture))
    out = io.StringIO()
    printer = Printer(out, "events", True, reader.meta.boot_to_wall_ns, HOST)
    aggregator = Aggregator(rules=load_rules([]))
    clock = convert.Clock(reader.meta.boot_to_wall_ns)
    cursor = 0
    with src:
        for frame in reader:
            obs = aggregator.handle(frame)
            alerts = [convert.alert(a, clock, cursor := cursor + 2) for a in obs.alerts]
            for alert in alerts:
                alert.incident_id = f"incident-{alert.cursor}"
            printer.print(obs, alerts, [incident_of(a) for a in alerts])
    yield from out.getvalue().splitlines()


@pytest.fixture(scope="module")
def story(tmp_path_factory: pytest.TempPathFactory) -> Path:
    capture = tmp_path_factory.mktemp("schema") / "story.gscap"
    with capture.open("wb") as out:
        writer = FrameWriter(out, StreamMeta(boot_to_wall_ns=WALL, hostname=HOST.hostname,
                                             machine_id=HOST.machine_id))
        writer.write_payloads(ev.encode(e) for e in Scenario().story())
    return capture


@pytest.fixture(scope="module")
def stream(story: Path) -> list[str]:
    return list(printed_stream(story))


def test_every_line_of_the_event_stream_validates(validator: Draft202012Validator, stream: list[str]) -> None:
    assert {n: problems(validator, line) for n, line in enumerate(stream) if problems(validator, line)} == {}


def test_the_stream_has_every_event_fact_and_record_kind(stream: list[str]) -> None:
    records = [json.loads(line) for line in stream]
    events = {r["event"]["kind"] for r in records if r["type"] == "event"}
    facts = {r["fact"]["kind"] for r in records if r["type"] == "fact"}
    retired = {"EVENT_KIND_UNSPECIFIED", "EVENT_KIND_TUNNEL", "EVENT_KIND_EGRESS", "EVENT_KIND_GPU_ACTIVITY"}
    assert events == set(pb.EventKind.keys()) - retired
    assert facts == set(pb.FactKind.keys()) - {"FACT_KIND_UNSPECIFIED"}
    assert [r["alert"]["rule_id"] for r in records if r["type"] == "alert"] == [
        "reverse-tunnel-opened", "reverse-tunnel-then-gpu-compute", "miner-pool-connection",
        "reverse-tunnel-then-miner-egress", "gpu-compute-then-miner-egress", "internal-scan"]
    assert len([r for r in records if r["type"] == "incident"]) == 6


def test_jq_reads_every_line(stream: list[str]) -> None:
    jq = shutil.which("jq")
    assert jq is not None, "jq is not installed: scripts/install --test installs it"
    read = subprocess.run([jq, "-c", "."], input="\n".join(stream) + "\n", capture_output=True, text=True,
                          timeout=60)
    assert read.returncode == 0, read.stderr
    assert [json.loads(line) for line in read.stdout.splitlines()] == [json.loads(line) for line in stream]


def analyze(capture: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sensor", "analyze", str(capture), *flags], capture_output=True,
                          text=True, timeout=120, cwd=Path(__file__).resolve().parents[2])


def test_analyze_prints_only_valid_json_lines_and_fails_on_a_severity(validator: Draft202012Validator,
                                                                    story: Path) -> None:
    """The real command: alerts and their incidents on stdout, every line valid; the summary
    on stderr; --fail-on decides the exit status."""
    result = analyze(story, "--json", "--fail-on", "critical")
    assert result.returncode == 4, result.stderr
    lines = result.stdout.splitlines()
    assert {n: problems(validator, line) for n, line in enumerate(lines) if problems(validator, line)} == {}
    records = [json.loads(line) for line in lines]
    assert {r["type"] for r in records} == {"alert", "incident"}
    assert {r["host"]["hostname"] for r in records} == {HOST.hostname}  # the host it was recorded on
    last = {r["incident"]["id"]: r["incident"] for r in records if r["type"] == "incident"}
    (rome,) = last.values()  # the tunnel, the compute, the pool and the scan: one lineage, one incident
    assert (rome["alerts_total"], rome["severity"]) == ("6", "SEVERITY_CRITICAL")
    assert {r["alert"]["incident_id"] for r in records if r["type"] == "alert"} == {rome["id"]}
    assert "gpusentry: an alert reached --fail-on critical" in result.stderr
    assert "\nincidents: 1\n" in result.stderr + "\n"
    assert analyze(story, "--json", "--output", "none").returncode == 0  # no --fail-on: 0
    assert analyze(story, "--output", "none").stdout == ""


def test_analyze_without_fail_on_reached_exits_0(story: Path, tmp_path: Path) -> None:
    rules = tmp_path / "quiet.yaml"
    rules.write_text("rules:\n" + "".join(f"  - id: {rule}\n    enabled: false\n" for rule in (
        "reverse-tunnel-opened", "reverse-tunnel-then-gpu-compute", "miner-pool-connection",
        "reverse-tunnel-then-miner-egress", "gpu-compute-then-miner-egress", "known-miner-binary",
        "gpu-compute-in-tunnel-scope")))
    result = analyze(story, "--rules", str(rules), "--fail-on", "high")  # internal-scan (medium) alone
    assert result.returncode == 0, result.stderr
    assert "ALERT MEDIUM internal-scan" in result.stdout and "INCIDENT MEDIUM" in result.stdout
