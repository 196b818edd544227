"""The Prometheus /metrics endpoint over real HTTP, on the API test harness's real state
(aggregator, rules, journal, broker, incidents): exact values for events, drops, alerts,
incidents, GPU sessions, sinks and build info, and the same numbers GetStatus gives."""

from __future__ import annotations

import os
import socket
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from sensor import __version__
from sensor import events as ev
from sensor.api.client import sensor_stub
from sensor.api.v1 import gpusentry_pb2 as pb
from sensor.errors import RuntimeFailure, UsageError
from sensor.outward import this_host
from sensor.sinks.metrics import MetricsServer, cpu_seconds, listen_address
from tests.unit.test_api import Harness

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
SINKS = [pb.SinkStatus(name="alerts-file", type="file", target="/var/log/a.jsonl", sent=12, retried=0, dropped=1,
                       failed=0, queued=3, behind=0, cursor=9, up=True),
         pb.SinkStatus(name="soc", type="syslog", target="udp:192.0.2.1:514", sent=7, retried=4, dropped=0,
                       failed=2, queued=0, behind=5, cursor=4, last_error="timed out", up=False)]


# the `harness` and `metrics` fixtures are in tests/conftest.py (the Prometheus test uses them too)


def scrape(server: MetricsServer) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=10) as response:
        assert response.status == 200
        return str(response.read().decode())


def samples(server: MetricsServer) -> Samples:
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(scrape(server)) for s in family.samples}


def value(got: Samples, name: str, **labels: str) -> float:
    return got[(name, frozenset(labels.items()))]


def labelled(got: Samples, name: str) -> dict[frozenset[tuple[str, str]], float]:
    return {labels: v for (n, labels), v in got.items() if n == name}


def test_events_alerts_and_incidents(harness: Harness, metrics: MetricsServer) -> None:
    harness.spawn(10, 12, "/bin/loud")
    harness.spawn(10, 13, "/bin/marker")
    harness.spawn(10, 14, "/bin/loud", "fence")
    got = samples(metrics)
    assert labelled(got, "gpusentry_events_total") == {frozenset({("kind", "fork")}): 4,
                                                        frozenset({("kind", "exec")}): 4}
    alerts = {dict(labels)["rule"]: (dict(labels)["severity"], v)
              for labels, v in labelled(got, "gpusentry_alerts_total").items()}
    assert (alerts["loud-marker"], alerts["marker"], alerts["marker-then-4444"]) == (
        ("critical", 2), ("low", 1), ("high", 0))
    assert alerts["miner-pool-connection"] == ("critical", 0)  # built-in rules are there, with no alerts
    assert (value(got, "gpusentry_incidents_total"), value(got, "gpusentry_incidents_open")) == (3, 3)
    assert (value(got, "gpusentry_journal_alerts"), value(got, "gpusentry_journal_incidents"),
            value(got, "gpusentry_journal_sensor_gaps"), value(got, "gpusentry_journal_last_cursor")) == (3, 3, 0, 6)
    assert value(got, "gpusentry_rule_facts_evaluated_total") == 4  # one exec fact per exec
    assert value(got, "gpusentry_rule_partial_matches_open") == 1  # marker, waiting for port 4444
    assert value(got, "gpusentry_broker_published_total", type="alerts") == 3
    assert value(got, "gpusentry_broker_published_total", type="incidents") == 3
    assert (value(got, "gpusentry_subscribers"), value(got, "gpusentry_subscriber_backlog_max")) == (0, 0)


def test_drops_by_hop_are_the_status_drops(harness: Harness, metrics: MetricsServer) -> None:
    harness.feed(ev.Stats(harness.tick(), 1, 1, kernel_drops={"exec": 7}, probe_drops={"connect": 2},
                          verdicts_missed={"route_by_range": 3}))
    harness.blind("the probe was restarted")
    got = samples(metrics)
    drops = labelled(got, "gpusentry_dropped_total")
    assert drops[frozenset({("hop", "kernel"), ("what", "ring buffer: exec")})] == 7
    assert drops[frozenset({("hop", "probe"), ("what", "queue full: connect")})] == 2
    assert drops[frozenset({("hop", "probe"), ("what", "connections judged by address ranges (their namespace's "
                                                "routing table could not be read)")})] == 3
    assert sum(drops.values()) == 12
    status = sensor_stub(harness.channel()).GetStatus(pb.GetStatusRequest())
    assert drops == {frozenset({("hop", d.hop), ("what", d.what)}): d.count for d in status.drops}
    assert {dict(k)["kind"]: v for k, v in labelled(got, "gpusentry_events_total").items()} == dict(
        status.events_by_kind)
    assert value(got, "gpusentry_journal_sensor_gaps") == status.sensor_gaps == 1


def test_gpu_sessions_count_live_processes(harness: Harness, metrics: MetricsServer) -> None:
    for pid in (20, 21, 22):
        harness.spawn(10, pid, "/usr/bin/python3")
        harness.feed(ev.GpuOpen(harness.tick(), pid, pid, fd=3, kind=ev.GpuKind.CTL, minor=255, by_name=False))
    for pid in (21, 22):  # a compute object: these two can run kernels
        harness.feed(compute_alloc(harness.tick(), pid))
    assert harness.started is not None
    harness.feed(ev.Exit(harness.tick(), 22, 22, exit_code=0, start_ns=harness.started[22]))
    got = samples(metrics)
    assert value(got, "gpusentry_gpu_sessions_active") == 2  # 22 exited; its session is kept a while
    assert value(got, "gpusentry_gpu_compute_sessions_active") == 1
    assert len(list(harness.state.aggregator.gpu)) == 3


def compute_alloc(ts: int, pid: int) -> ev.GpuIoctl:
    return ev.GpuIoctl(ts=ts, tgid=pid, tid=pid, reason=ev.GpuReason.ALLOC, kind=ev.GpuKind.CTL, fd=3, minor=255,
                       cmd=0xC030462B, nr=0x2B, size=48, ret=0, status=0, h_root=0xC1D00001, h_parent=0x13,
                       h_object=0x14, h_class=0xCBC0, ctrl_cmd=0, param0=0, param1=0, uuid=bytes(16), flags=0)


def test_sink_counters_by_sink(metrics: MetricsServer) -> None:
    got = samples(metrics)
    expected = {"sent": (12, 7), "retried": (0, 4), "dropped": (1, 0), "failed": (0, 2)}
    for field, (file_value, syslog_value) in expected.items():
        assert labelled(got, f"gpusentry_sink_{field}_total") == {
            frozenset({("sink", "alerts-file"), ("type", "file")}): file_value,
            frozenset({("sink", "soc"), ("type", "syslog")}): syslog_value}, field
    gauges = {"queued": (3, 0), "behind": (0, 5), "cursor": (9, 4), "up": (1, 0)}
    for field, (file_value, syslog_value) in gauges.items():
        assert (value(got, f"gpusentry_sink_{field}", sink="alerts-file", type="file"),
                value(got, f"gpusentry_sink_{field}", sink="soc", type="syslog")) == (file_value, syslog_value), field


def test_agent_build_and_cpu(harness: Harness, metrics: MetricsServer) -> None:
    got = samples(metrics)
    assert labelled(got, "gpusentry_build_info") == {frozenset({
        ("version", __version__), ("kernel", harness.state.meta.kernel), ("hostname", this_host().hostname)}): 1}
    assert value(got, "gpusentry_probe_cpu_seconds_total") == 2.5
    assert value(got, "process_cpu_seconds_total") > 0
    assert value(got, "gpusentry_start_time_seconds") == harness.state.started_ns / 1e9
    assert 0 < value(got, "gpusentry_uptime_seconds") < 300


def test_a_server_without_probe_or_sinks_serves_neither(harness: Harness) -> None:
    server = MetricsServer("127.0.0.1:0", harness.state)
    server.start()
    try:
        names = {name for name, _ in samples(server)}
    finally:
        server.stop()
    assert "gpusentry_probe_cpu_seconds_total" not in names
    assert not {n for n in names if n.startswith("gpusentry_sink_")}
    assert "gpusentry_events_total" in names


def test_stop_frees_the_port(harness: Harness) -> None:
    server = MetricsServer("127.0.0.1:0", harness.state)
    server.start()
    port = server.port
    assert port != 0
    server.stop()
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5)
    server.stop()  # twice is harmless


def test_a_port_in_use_is_a_readable_failure(harness: Harness) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        server = MetricsServer(f"127.0.0.1:{taken.getsockname()[1]}", harness.state)
        with pytest.raises(RuntimeFailure, match="cannot serve metrics there"):
            server.start()


@pytest.mark.parametrize(("listen", "address"), [("127.0.0.1:9464", ("127.0.0.1", 9464)),
                                                 ("[::1]:0", ("::1", 0)), ("localhost:80", ("localhost", 80))])
def test_listen_addresses(listen: str, address: tuple[str, int]) -> None:
    assert listen_address(listen) == address


@pytest.mark.parametrize("listen", ["9464", ":9464", "127.0.0.1:", "127.0.0.1:http", "127.0.0.1:70000"])
def test_bad_listen_addresses_are_refused(listen: str) -> None:
    with pytest.raises(UsageError, match="is not HOST:PORT"):
        listen_address(listen)


def test_cpu_seconds_of_a_process() -> None:
    before = os.times()
    seconds = cpu_seconds(os.getpid())()
    after = os.times()
    # times(2) and /proc/PID/stat count the same clock ticks
    assert before.user + before.system - 1e-9 <= seconds <= after.user + after.system + 1e-9
