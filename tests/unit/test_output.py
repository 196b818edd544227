"""What `run` and `analyze` print: hostile bytes never reach the terminal raw, alerts and
incidents as lines, and each output mode's items, as text or as JSON Records."""

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from sensor import events as ev
from sensor.aggregator.aggregator import Aggregator, Observation
from sensor.api import convert
from sensor.api.v1 import gpusentry_pb2 as pb
from sensor.output import Printer, alert_lines, argv_text, describe, incident_lines, text
from sensor.rules.loader import load_rules

SEC = 1_000_000_000
WALL = 1_700_000_000 * SEC  # 2023-11-14T22:13:20Z
HOST = pb.Host(hostname="gpu-7", machine_id="0123abcd")
REVERSE = [b"ssh", b"-fNR", b"9000:localhost:22", b"root@198.51.100.1"]


@pytest.fixture(autouse=True)
def utc(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Lines show local time: make it UTC, and give the machine's zone back afterwards."""
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def test_control_bytes_and_invalid_utf8_are_escaped() -> None:
    assert text(b"a\x1b[2Jb\n\xff") == "a\\x1b[2Jb\\x0a\\xff"


def test_long_arguments_and_missing_ones_are_marked() -> None:
    shown = argv_text([b"x" * 200, b"two words"], argc=70)
    assert shown == "x" * 120 + "…(+80) 'two words' …(+68 args)"


def test_exec_line() -> None:
    event = ev.Exec(ts=0, tgid=5, tid=5, result=-2, ppid=1, uid=0, gid=0, cgroup_id=0, start_ns=0, comm=b"",
                    filename=b"/nope", argv=[b"/nope"], argc=1, flags=0, exe_dev=0, exe_ino=0, old_tid=5)
    assert describe(Observation(event, None)) == "exec    pid=5 ppid=1 uid=0 /nope /nope -> ENOENT"


@pytest.fixture
def tunnel_opened() -> tuple[Observation, pb.Alert, pb.Incident]:
    """A reverse tunnel, seen by the built-in rules: its exec, its facts, its alert and incident."""
    aggregator = Aggregator(rules=load_rules([]))
    aggregator.handle(ev.Fork(SEC, 1, 1, 100, 1, SEC))
    obs = aggregator.handle(ev.Exec(2 * SEC, 100, 100, 0, 1, 1000, 1000, 7, SEC, b"ssh", b"/usr/bin/ssh\x1b",
                                    REVERSE, 4, 0, 0, 0, 100, loginuid=1000, tool="ssh", identity="inode"))
    [internal] = obs.alerts
    alert = convert.alert(internal, convert.Clock(WALL), 3)
    alert.id, alert.incident_id = "11111111-2222-4333-8444-555555555555", "abcdef01-2222-4333-8444-555555555555"
    incident = pb.Incident(id=alert.incident_id, cursor=4, first_seen=alert.time, last_seen=alert.time,
                           severity=pb.SEVERITY_HIGH, summary="A reverse tunnel to 198.51.100.1\n",
                           rule_ids=["reverse-tunnel-opened", "reverse-tunnel-then-gpu-compute"],
                           scope_keys=["tunnel:100:1000000000:1", "lineage:100@1000000000"], alerts=[alert],
                           alerts_total=5, first_ts=2 * SEC, last_ts=2 * SEC, host=HOST)
    return obs, alert, incident


ALERT_LINES = [
    "22:13:22.000 ALERT HIGH reverse-tunnel-opened: Reverse tunnel opened",
    "    1. 22:13:22.000 tunnel       pid=100 /usr/bin/ssh\\x1b: ssh tunnel (reverse) to 198.51.100.1: "
    "reverse 9000 -> localhost:22",
    "    pid 100 uid=1000 cgroup=7: ssh -fNR 9000:localhost:22 root@198.51.100.1",
]
INCIDENT_LINES = [
    "22:13:22.000 INCIDENT HIGH abcdef01 5 alerts: A reverse tunnel to 198.51.100.1\\x0a",
    "    rules: reverse-tunnel-opened, reverse-tunnel-then-gpu-compute",
    "    joined by: tunnel:100:1000000000:1, lineage:100@1000000000",
]
EVENT_LINES = [
    "22:13:22.000 exec    pid=100 ppid=1 uid=1000 /usr/bin/ssh\\x1b ssh -fNR 9000:localhost:22 root@198.51.100.1 -> ok",
    "22:13:22.000 fact    tunnel pid=100 ssh tunnel (reverse) to 198.51.100.1: reverse 9000 -> localhost:22",
]


def test_alert_lines(tunnel_opened: tuple[Observation, pb.Alert, pb.Incident]) -> None:
    assert alert_lines(tunnel_opened[1]) == ALERT_LINES


def test_alert_lines_show_scope_and_lineage() -> None:
    stamp = convert.Clock(WALL).timestamp(3 * SEC)
    proc = pb.Process(exec_id="9:1:1", pid=9, exe="/bin/sh", argv=["sh", "-c", "x y"], uid=0, cgroup_id=2)
    alert = pb.Alert(rule_id="r", severity=pb.SEVERITY_CRITICAL, title="T", time=stamp, scope="lineage",
                     scope_key="lineage:4@0",
                     steps=[pb.AlertStep(fact="exec", time=stamp, summary="exec sh", exec_id="9:1:1")],
                     processes=[pb.AlertProcess(process=proc, ancestors=[
                         pb.ProcessRef(exec_id="4:0:1", pid=4, exe="/usr/bin/python3"),
                         pb.ProcessRef(exec_id="1:0:1", pid=1, exe="")])])
    assert alert_lines(alert) == [
        "22:13:23.000 ALERT CRITICAL r: T [scope lineage: lineage:4@0]",
        "    1. 22:13:23.000 exec         pid=9 /bin/sh: exec sh",
        "    pid 9 uid=0 cgroup=2: sh -c 'x y'",
        "        lineage: 4 /usr/bin/python3 <- 1 ?",
    ]


def test_incident_lines(tunnel_opened: tuple[Observation, pb.Alert, pb.Incident]) -> None:
    assert incident_lines(tunnel_opened[2]) == INCIDENT_LINES


def test_an_incident_of_one_alert_says_so() -> None:
    incident = pb.Incident(id="0123456789", severity=pb.SEVERITY_LOW, summary="s", rule_ids=["r"], alerts_total=1,
                           last_seen=convert.Clock(WALL).timestamp(0))
    assert incident_lines(incident) == ["22:13:20.000 INCIDENT LOW 01234567 1 alert: s", "    rules: r"]


class Terminal(io.StringIO):
    """Records what was on the terminal at each flush."""

    def __init__(self) -> None:
        super().__init__()
        self.flushed: list[str] = []

    def flush(self) -> None:
        self.flushed.append(self.getvalue())


def printed(mode: str, as_json: bool, obs: Observation, alerts: list[pb.Alert],
            incidents: list[pb.Incident]) -> Terminal:
    out = Terminal()
    Printer(out, mode, as_json, WALL, HOST).print(obs, alerts, incidents)
    return out


@pytest.mark.parametrize(("mode", "expected"), [
    ("alerts", ALERT_LINES + INCIDENT_LINES),
    ("incidents", INCIDENT_LINES),
    ("events", EVENT_LINES + ALERT_LINES + INCIDENT_LINES),
    ("none", []),
])
def test_text_by_mode(mode: str, expected: list[str], tunnel_opened: tuple[Observation, pb.Alert, pb.Incident]) -> None:
    obs, alert, incident = tunnel_opened
    out = printed(mode, False, obs, [alert], [incident])
    assert out.getvalue().splitlines() == expected
    assert out.flushed == ([out.getvalue()] if expected else [])


def records(out: Terminal) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.getvalue().splitlines()]


def item_of(record: dict[str, Any]) -> tuple[str, str]:
    """A record's type, and what identifies its item: an event's or fact's kind, an id."""
    item = record[record["type"]]
    return record["type"], item.get("kind") or item["id"]


@pytest.mark.parametrize(("mode", "expected"), [
    ("alerts", [("alert", "11111111-2222-4333-8444-555555555555"),
                ("incident", "abcdef01-2222-4333-8444-555555555555")]),
    ("incidents", [("incident", "abcdef01-2222-4333-8444-555555555555")]),
    ("events", [("event", "EVENT_KIND_EXEC"), ("fact", "FACT_KIND_EXEC"), ("fact", "FACT_KIND_TUNNEL"),
                ("alert", "11111111-2222-4333-8444-555555555555"),
                ("incident", "abcdef01-2222-4333-8444-555555555555")]),
    ("none", []),
])
def test_json_by_mode(mode: str, expected: list[tuple[str, str]],
                      tunnel_opened: tuple[Observation, pb.Alert, pb.Incident]) -> None:
    obs, alert, incident = tunnel_opened
    out = printed(mode, True, obs, [alert], [incident])
    got = records(out)
    assert [item_of(r) for r in got] == expected
    assert all(r["host"] == {"hostname": "gpu-7", "machine_id": "0123abcd"} for r in got)
    assert out.flushed == ([out.getvalue()] if expected else [])


def test_json_event_and_facts_are_the_converted_messages(
        tunnel_opened: tuple[Observation, pb.Alert, pb.Incident]) -> None:
    obs, _, _ = tunnel_opened
    got = records(printed("events", True, obs, [], []))
    event, exec_fact, tunnel = (r[r["type"]] for r in got)
    assert event["exec"]["filename"] == "/usr/bin/ssh\x1b"
    assert (event["ts"], event["time"], event["process"]) == (
        "2000000000", "2023-11-14T22:13:22Z", {"exec_id": "100:1000000000:1", "pid": 100, "exe": "/usr/bin/ssh\x1b"})
    assert exec_fact["exec"]["known_tool"] == "ssh"
    assert tunnel["tunnel"]["scope"] == "tunnel:100:1000000000:1"


def test_gpu_counters_print_nothing() -> None:
    obs = Observation(ev.GpuCounters(SEC, 1, 1, [[100, 1, 0x2B, 3, 0, 0, SEC]]), None)
    for as_json in (True, False):
        assert printed("events", as_json, obs, [], []).getvalue() == ""


def test_an_unknown_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="output mode 'all' is not one of alerts, incidents, events, none"):
        Printer(io.StringIO(), "all", False, 0)
