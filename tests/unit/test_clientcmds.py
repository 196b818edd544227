"""The API's command-line clients (alerts, incidents, status, events) against a real gRPC server
on a temporary UNIX socket (tests/unit/test_api.py's harness): every filter reaches the request,
tables and JSON lines are exact, and an error the API answers with is one line and status 1."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sensor.api.client import sensor_stub
from sensor.api.v1 import gpusentry_pb2 as pb
from sensor.cli import build_parser, main
from sensor.clientcmds import subscribe_request, when
from sensor.outward import json_line
from tests.unit.test_api import SEC, WALL, Harness, flatten, make_harness, wait_subscribers

START = "2023-11-14T22:13:21Z"  # the harness's clock: WALL + about a second of boot time


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[Harness]:
    """An agent's API with a marker alert (cursor 1), a sensor gap, and a critical alert."""
    harness = make_harness(tmp_path)
    harness.spawn(1, 10, "/usr/bin/bash")
    harness.spawn(10, 11, "/bin/marker")
    harness.blind("the agent was not running: a test")
    harness.spawn(10, 12, "/bin/loud")
    yield harness
    harness.server.stop()
    harness.state.journal.close()


def run(capsys: pytest.CaptureFixture[str], agent: Harness, *argv: str) -> list[str]:
    assert main([*argv, "--socket", str(agent.socket)]) == 0
    return capsys.readouterr().out.splitlines()


def journal(agent: Harness) -> tuple[list[pb.Alert], list[pb.SensorGap]]:
    page = sensor_stub(agent.channel()).ListAlerts(pb.ListAlertsRequest())
    return list(page.alerts), list(page.sensor_gaps)


# -- alerts -----------------------------------------------------------------------------------


def test_alerts_as_a_table_with_the_sensor_gaps_between_them(agent: Harness,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, agent, "alerts") == [
        "CURSOR  TIME                  SEVERITY  RULE          PROCESS         TITLE",
        f"1       {START}  low       marker        11 /bin/marker  Marker exec",
        f"3       {START}  -         (sensor gap)                  blind until {START}: the agent was not running: "
        "a test",
        f"4       {START}  critical  loud-marker   12 /bin/loud    Loud marker exec",
    ]


def test_alerts_as_json_lines(agent: Harness, capsys: pytest.CaptureFixture[str]) -> None:
    (marker, loud), (gap,) = journal(agent)
    assert run(capsys, agent, "alerts", "-o", "json") == [json_line(marker), json_line(gap), json_line(loud)]


def test_alert_filters(agent: Harness, capsys: pytest.CaptureFixture[str]) -> None:
    (marker, loud), (gap,) = journal(agent)
    assert run(capsys, agent, "alerts", "-o", "json", "--rule", "loud-marker") == [json_line(gap), json_line(loud)]
    assert run(capsys, agent, "alerts", "-o", "json", "--min-severity", "high") == [json_line(gap), json_line(loud)]
    assert run(capsys, agent, "alerts", "-o", "json", "--after", "3") == [json_line(loud)]
    assert run(capsys, agent, "alerts", "-o", "json", "--limit", "1") == [json_line(marker)]
    marker_at = marker.time.ToJsonString()
    assert run(capsys, agent, "alerts", "-o", "json", "--until", marker_at) == [json_line(gap)]
    assert run(capsys, agent, "alerts", "-o", "json", "--since", marker_at, "--until", loud.time.ToJsonString()) \
        == [json_line(marker), json_line(gap)]
    assert run(capsys, agent, "alerts", "-o", "json", "--since", "1h") == [json_line(gap)]  # 2023 is long ago


def test_alerts_page_after_page(agent: Harness, capsys: pytest.CaptureFixture[str]) -> None:
    for pid in range(20, 25):
        agent.spawn(10, pid, "/bin/marker")
    lines = run(capsys, agent, "alerts", "--rule", "marker", "--limit", "4")  # pages of 4 records, the gap one
    assert [line.split()[3] for line in lines[1:]] == ["marker", "(sensor", "marker", "marker", "marker"]
    assert [line.split()[4] for line in lines[1:] if "marker" in line] == ["11", "20", "21", "22"]


def test_times_are_rfc_3339_or_ago() -> None:
    assert when("2024-05-01T12:00:00Z").ToJsonString() == "2024-05-01T12:00:00Z"
    assert when("2024-05-01T14:00:00.5+02:00").ToJsonString() == "2024-05-01T12:00:00.500Z"
    assert when("90s", now=lambda: 1000.0).ToJsonString() == "1970-01-01T00:15:10Z"
    assert when("2d", now=lambda: 3 * 86400.0).ToJsonString() == "1970-01-02T00:00:00Z"


def test_times_without_a_zone_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["alerts", "--since", "2024-05-01T12:00:00"]) == 2
    assert "'2024-05-01T12:00:00' has no time zone: end it with Z or +HH:MM" in capsys.readouterr().err


# -- errors -----------------------------------------------------------------------------------


def test_an_error_the_api_answers_with_is_one_line_and_status_1(agent: Harness,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["alerts", "--socket", str(agent.socket), "--rule", "nope"]) == 1
    assert capsys.readouterr().err == \
        "gpusentry: error: the agent's API said INVALID_ARGUMENT: rule_ids[0]: no rule 'nope'\n"
    assert main(["events", "--socket", str(agent.socket), "--exec-id", "x"]) == 1
    assert capsys.readouterr().err.startswith(
        "gpusentry: error: the agent's API said INVALID_ARGUMENT: process.exec_id")


def test_no_agent_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["status", "--socket", str(tmp_path / "none.sock")]) == 2
    assert capsys.readouterr().err == (f"gpusentry: error: no agent API at {tmp_path / 'none.sock'}; fix: start the "
                                       "agent (scripts/agent), or give --socket\n")


def test_without_socket_the_client_goes_where_the_configuration_puts_the_api(
        agent: Harness, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GPUSENTRY_API_SOCKET", str(agent.socket))
    assert main(["incidents", "-o", "json"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 2
    monkeypatch.setenv("GPUSENTRY_API_SOCKET", "/nonexistent/api.sock")
    assert main(["status"]) == 2
    assert "no agent API at /nonexistent/api.sock" in capsys.readouterr().err


# -- incidents --------------------------------------------------------------------------------


def test_incidents_as_a_table_and_as_json_lines(agent: Harness, capsys: pytest.CaptureFixture[str]) -> None:
    page = sensor_stub(agent.channel()).ListIncidents(pb.ListIncidentsRequest())
    marker, loud = page.incidents
    assert run(capsys, agent, "incidents", "-o", "json") == [json_line(marker), json_line(loud)]
    rows = [(str(i.cursor), i.id, START, START, i.summary) for i in (marker, loud)]
    assert run(capsys, agent, "incidents") == [
        "CURSOR  ID                                    FIRST SEEN            LAST SEEN             SEVERITY  ALERTS  "
        "RULES        SUMMARY",
        "{}       {}  {}  {}  low       1       marker       {}".format(*rows[0]),
        "{}       {}  {}  {}  critical  1       loud-marker  {}".format(*rows[1]),
    ]
    assert run(capsys, agent, "incidents", "-o", "json", "--min-severity", "critical") == [json_line(loud)]
    assert run(capsys, agent, "incidents", "-o", "json", "--id", marker.id) == [json_line(marker)]
    assert run(capsys, agent, "incidents", "-o", "json", "--after", str(marker.cursor)) == [json_line(loud)]
    assert run(capsys, agent, "incidents", "-o", "json", "--limit", "1") == [json_line(marker)]
    assert run(capsys, agent, "incidents", "-o", "json", "--since", "1h") == []


# -- status -----------------------------------------------------------------------------------


class FrozenTime:
    """The time module, at one instant."""

    def __init__(self, now_ns: int) -> None:
        self.now_ns = now_ns

    def time_ns(self) -> int:
        return self.now_ns

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


def test_status_as_a_table(agent: Harness, capsys: pytest.CaptureFixture[str],
                           monkeypatch: pytest.MonkeyPatch) -> None:
    agent.state.started_ns = WALL
    monkeypatch.setattr("sensor.api.service.time", FrozenTime(WALL + 3723 * SEC))
    status = sensor_stub(agent.channel()).GetStatus(pb.GetStatusRequest())
    lines = run(capsys, agent, "status")
    host = status.host.hostname + (f" (machine id {status.host.machine_id})" if status.host.machine_id else "")
    events, drops, rules = "\n".join(lines).split("\n\n")[1:]
    assert lines[:7] == [
        "AGENT",
        f"host         {host}",
        "started      2023-11-14T22:13:20Z (up 1:02:03)",
        f"kernel       {status.kernel or '-'}",
        "config file  none",
        f"journal      2 alerts, 1 sensor gaps, {status.incidents} incidents; last cursor {status.last_cursor}",
        "subscribers  0",
    ]
    assert events.splitlines() == ["EVENTS  COUNT", "exec    3", "fork    3"]
    hops = [line.split()[0] for line in drops.splitlines()[1:]]
    assert hops == sorted(hops, key=["kernel", "probe", "aggregator", "rules", "journal", "subscribers"].index)
    assert len(hops) == len(status.drops)
    width = len(max((d.what for d in status.drops), key=len))
    assert f"rules        {'tunnel taint entries dropped at the cap':{width}}  0" in drops.splitlines()
    header = ["RULE", "SEVERITY", "ENABLED", "ALERTS", "SUPPRESSED", "SOURCE", "TUNED", "BY"]
    assert rules.splitlines()[0].split() == header
    marker = next(line for line in rules.splitlines() if line.startswith("marker "))
    assert marker.split()[:5] == ["marker", "low", "yes", "1", "0"]


def test_status_as_one_json_line(agent: Harness, capsys: pytest.CaptureFixture[str],
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    from sensor.outward import as_dict

    monkeypatch.setattr("sensor.api.service.time", FrozenTime(WALL + 3723 * SEC))
    status = sensor_stub(agent.channel()).GetStatus(pb.GetStatusRequest())
    assert run(capsys, agent, "status", "-o", "json") == [json.dumps(as_dict(status), separators=(",", ":"))]


# -- events -----------------------------------------------------------------------------------


def test_every_filter_reaches_the_subscription() -> None:
    args = build_parser().parse_args([
        "events", "--kind", "exec", "--kind", "gpu_open", "--rule", "marker", "--min-severity", "medium",
        "--exec-id", "11:1:1", "--binary", "ssh", "--ancestor", "10:1:1", "--cgroup", "7", "--since", "5",
        "--incidents", "--fact-kind", "tunnel", "--fact-kind", "gpu_compute"])
    request = pb.SubscribeRequest(
        events=True, alerts=True, incidents=True, facts=True, event_kinds=[pb.EVENT_KIND_EXEC, pb.EVENT_KIND_GPU_OPEN],
        rule_ids=["marker"], min_severity=pb.SEVERITY_MEDIUM, cgroup_ids=[7], since_cursor=5,
        fact_kinds=[pb.FACT_KIND_TUNNEL, pb.FACT_KIND_GPU_COMPUTE],
        process=pb.ProcessFilter(exec_id="11:1:1", binary="ssh", ancestor_exec_id="10:1:1"))
    assert subscribe_request(args) == request
    alerts_only = subscribe_request(build_parser().parse_args(["events", "--alerts-only"]))
    assert alerts_only == pb.SubscribeRequest(alerts=True)


def test_events_prints_each_item_of_the_stream_as_a_line(agent: Harness, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["events", "--socket", str(agent.socket), "--kind", "exec", "--fact-kind", "exec", "--limit", "6"]
    raw = sensor_stub(agent.channel()).Subscribe(subscribe_request(build_parser().parse_args(argv)))
    codes: list[int] = []
    command = threading.Thread(target=lambda: codes.append(main(argv)))
    command.start()
    wait_subscribers(agent, 2)
    agent.spawn(10, 20, "/bin/marker")  # an alert; then a fork (not asked for), an exec, its exec fact
    agent.spawn(10, 21, "/usr/bin/true")
    command.join(timeout=10)
    assert codes == [0]
    items = []
    for response in raw:  # the same subscription, read directly
        items += flatten(response)
        if len(items) >= 6:
            break
    raw.cancel()
    assert [item.kind for item in items[:6]] == ["subscribed", "alert", "event", "fact", "event", "fact"]
    assert capsys.readouterr().out.splitlines() == [json_line(getattr(item, item.kind)) for item in items[:6]]


def test_events_replays_the_journal_from_a_cursor(agent: Harness, capsys: pytest.CaptureFixture[str]) -> None:
    (_, loud), (gap,) = journal(agent)
    lines = run(capsys, agent, "events", "--alerts-only", "--since", "1", "--limit", "3")
    subscribed = pb.Subscribed(journal_last_cursor=agent.state.journal.last_cursor(), replay_after_cursor=1)
    assert lines == [json_line(subscribed), json_line(gap), json_line(loud)]


def test_every_json_line_the_clients_print_is_a_valid_record_and_jq_reads_it(
        agent: Harness, capsys: pytest.CaptureFixture[str]) -> None:
    import json
    import subprocess

    from tests.unit.test_schema import problems, schema_validator

    published = schema_validator()
    printed = [*run(capsys, agent, "alerts", "-o", "json"), *run(capsys, agent, "incidents", "-o", "json"),
               *run(capsys, agent, "events", "--incidents", "--since", "0", "--limit", "6")]
    assert {json.loads(line)["type"] for line in printed} == {"alert", "sensor_gap", "incident", "subscribed"}
    assert {n: problems(published, line) for n, line in enumerate(printed) if problems(published, line)} == {}
    read = subprocess.run(["jq", "-c", "."], input="\n".join(printed) + "\n", capture_output=True, text=True,
                          check=True, timeout=60)
    assert [json.loads(line) for line in read.stdout.splitlines()] == [json.loads(line) for line in printed]
    status = run(capsys, agent, "status", "-o", "json")
    assert len(status) == 1
    published.evolve(schema={**published.schema, "$ref": "#/$defs/Status"}).validate(json.loads(status[0]))
