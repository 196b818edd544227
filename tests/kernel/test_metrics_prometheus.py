"""The /metrics endpoint scraped by a real Prometheus, with deploy/prometheus's alerting rules
loaded: the values Prometheus stored, the alerts it fired on drops, a critical detection and a
failing sink, and promtool's verdict on the rules. And the Grafana dashboard: valid JSON that
asks only for metrics the exporter serves.

Prometheus runs with its own configuration, storage and a free loopback port, started and
killed by each test (never the system service). It comes from Debian's `prometheus` package
(apt-get install -y prometheus), which brings promtool too.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from sensor import __version__
from sensor import events as ev
from sensor.outward import this_host
from sensor.sinks.metrics import MetricsServer
from tests.unit.test_api import Harness
from tests.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]
ALERT_RULES = ROOT / "deploy" / "prometheus" / "gpusentry-alerts.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "gpusentry-dashboard.json"
CONFIG = """global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files: ["{rules}"]
scrape_configs:
  - job_name: gpusentry
    static_configs:
      - targets: ["127.0.0.1:{target}"]
"""

@dataclass
class Prometheus:
    url: str

    def get(self, path: str, **params: str) -> Any:
        address = f"{self.url}{path}?{urllib.parse.urlencode(params)}"
        with urllib.request.urlopen(address, timeout=10) as response:
            answer = json.loads(response.read())
        assert answer["status"] == "success", answer
        return answer["data"]

    def query(self, promql: str) -> dict[frozenset[tuple[str, str]], float]:
        """An instant query's samples, by their labels (__name__ left out)."""
        return {frozenset((k, v) for k, v in sample["metric"].items() if k != "__name__"): float(sample["value"][1])
                for sample in self.get("/api/v1/query", query=promql)["result"]}

    def alerts(self) -> list[dict[str, Any]]:
        return list(self.get("/api/v1/alerts")["alerts"])


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/-/ready", timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, ConnectionError):
        return False


@pytest.fixture
def exporter(metrics: MetricsServer) -> MetricsServer:
    """The unit tests' exporter (tests/unit/test_metrics.py), for Prometheus to scrape."""
    return metrics


@pytest.fixture
def prometheus(tmp_path: Path, exporter: MetricsServer) -> Iterator[Prometheus]:
    binary = shutil.which("prometheus")
    assert binary is not None, "the Prometheus test needs prometheus: apt-get install -y prometheus"
    config = tmp_path / "prometheus.yml"
    config.write_text(CONFIG.format(rules=ALERT_RULES, target=exporter.port))
    listen = f"127.0.0.1:{free_port()}"
    log = tmp_path / "prometheus.log"
    with log.open("wb") as output:
        process = subprocess.Popen([binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                                    f"--web.listen-address={listen}"], stdout=output, stderr=output)
    url = f"http://{listen}"
    try:
        wait_until(lambda: process.poll() is not None or ready(url), timeout=60, what="Prometheus to be ready")
        assert process.poll() is None, f"prometheus exited: {log.read_text()}"
        yield Prometheus(url)
    finally:
        process.kill()
        process.wait()


def firing(prometheus: Prometheus, name: str) -> list[dict[str, str]]:
    return [a["labels"] for a in prometheus.alerts() if a["labels"]["alertname"] == name and a["state"] == "firing"]


def test_prometheus_scrapes_the_api_numbers_and_fires_the_rules(harness: Harness, exporter: MetricsServer,
                                                                prometheus: Prometheus) -> None:
    harness.feed(ev.Stats(harness.tick(), 1, 1, kernel_drops={"exec": 0}))
    harness.spawn(10, 12, "/bin/loud")
    harness.spawn(10, 13, "/bin/marker")
    wait_until(lambda: prometheus.query('gpusentry_alerts_total{rule="loud-marker"}'), timeout=30,
               what="a first scrape")
    # after the first scrape, so that the counters rise between two samples
    harness.feed(ev.Stats(harness.tick(), 1, 1, kernel_drops={"exec": 5}))
    harness.spawn(10, 14, "/bin/loud", "again")
    dropping = wait_until(lambda: firing(prometheus, "GpusentryDropping"), timeout=30, what="GpusentryDropping")
    critical = wait_until(lambda: firing(prometheus, "GpusentryCriticalAlert"), timeout=30,
                          what="GpusentryCriticalAlert")
    assert [(a["hop"], a["what"], a["severity"]) for a in dropping] == [("kernel", "ring buffer: exec", "warning")]
    assert [(a["rule"], a["severity"]) for a in critical] == [("loud-marker", "critical")]
    pending = [a["labels"]["sink"] for a in prometheus.alerts()
               if a["labels"]["alertname"] == "GpusentrySinkDown" and a["state"] == "pending"]
    assert pending == ["soc"]  # for: 5m

    instance = {("job", "gpusentry"), ("instance", f"127.0.0.1:{exporter.port}")}
    assert prometheus.query("gpusentry_alerts_total > 0") == {
        frozenset({*instance, ("rule", "loud-marker"), ("severity", "critical")}): 2,
        frozenset({*instance, ("rule", "marker"), ("severity", "low")}): 1}
    assert prometheus.query('gpusentry_events_total{kind="exec"}') == {frozenset({*instance, ("kind", "exec")}): 4}
    assert prometheus.query("gpusentry_incidents_total") == {frozenset(instance): 3}
    assert prometheus.query('gpusentry_dropped_total{hop="kernel",what="ring buffer: exec"}') == {
        frozenset({*instance, ("hop", "kernel"), ("what", "ring buffer: exec")}): 5}
    assert prometheus.query("gpusentry_sink_sent_total") == {
        frozenset({*instance, ("sink", "alerts-file"), ("type", "file")}): 12,
        frozenset({*instance, ("sink", "soc"), ("type", "syslog")}): 7}
    assert prometheus.query("gpusentry_build_info") == {frozenset({
        *instance, ("version", __version__), ("kernel", harness.state.meta.kernel),
        ("hostname", this_host().hostname)}): 1}
    assert prometheus.query("gpusentry_probe_cpu_seconds_total") == {frozenset(instance): 2.5}


def test_every_alerting_rule_evaluates_without_error(exporter: MetricsServer, prometheus: Prometheus) -> None:
    def evaluated() -> list[dict[str, Any]]:
        rules = [r for g in prometheus.get("/api/v1/rules")["groups"] for r in g["rules"]]
        return rules if rules and all(r["health"] != "unknown" for r in rules) else []

    rules = wait_until(evaluated, timeout=30, what="every rule evaluated")
    assert [(r["name"], r["health"], r.get("lastError", "")) for r in rules if r["health"] != "ok"] == []
    assert {r["name"] for r in rules} >= {"GpusentryAgentDown", "GpusentryDropping", "GpusentrySinkDown"}


def test_promtool_accepts_the_alerting_rules() -> None:
    promtool = shutil.which("promtool")
    assert promtool is not None, "the rules check needs promtool: apt-get install -y prometheus"
    checked = subprocess.run([promtool, "check", "rules", str(ALERT_RULES)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS" in checked.stdout


# -- the dashboard and the rules ask only for what the exporter serves -------------------------

PROMQL_WORDS = {"sum", "min", "max", "avg", "count", "rate", "increase", "delta", "and", "or", "unless",
                "label_values"}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression (or a Grafana label_values query) reads."""
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers, with their strings
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # range durations
    expr = re.sub(r"\b(?:by|without|on|ignoring)\s*\([^)]*\)", "", expr)  # grouping labels
    expr = re.sub(r",\s*\w+\s*\)", ")", expr)  # label_values(metric, label): the label
    return set(re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", expr)) - PROMQL_WORDS


def exported_names(exporter: MetricsServer) -> set[str]:
    """Every name the scrape declares (a family with no samples yet, as suppressions before any
    exception matched, is declared all the same) and every name it has samples of."""
    with urllib.request.urlopen(f"http://127.0.0.1:{exporter.port}/metrics", timeout=10) as response:
        text = response.read().decode()
    declared = set(re.findall(r"^# TYPE (\S+) ", text, re.MULTILINE))
    return declared | {s.name for family in text_string_to_metric_families(text) for s in family.samples}


def dashboard_queries(dashboard: dict[str, Any]) -> list[str]:
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    queries = [t["expr"] for p in panels for t in p["targets"]]
    return queries + [v["query"]["query"] for v in dashboard["templating"]["list"] if v["type"] == "query"]


def test_the_dashboard_reads_only_exported_metrics(exporter: MetricsServer) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["schemaVersion"] == 39 and dashboard["uid"] == "gpusentry"
    (source,) = [v for v in dashboard["templating"]["list"] if v["type"] == "datasource"]
    assert (source["name"], source["query"]) == ("datasource", "prometheus")
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert all(t["datasource"]["uid"] == "${datasource}" for p in panels for t in p["targets"])
    read = set().union(*(metric_names(q) for q in dashboard_queries(dashboard)))
    exported = exported_names(exporter)
    assert read - exported == set()
    assert {"gpusentry_events_total", "gpusentry_dropped_total", "gpusentry_alerts_total", "gpusentry_incidents_open",
            "gpusentry_sink_sent_total", "gpusentry_sink_up", "gpusentry_probe_cpu_seconds_total",
            "gpusentry_build_info"} <= read


def test_the_alerting_rules_read_only_exported_metrics(exporter: MetricsServer) -> None:
    import yaml

    groups = yaml.safe_load(ALERT_RULES.read_text())["groups"]
    read = set().union(*(metric_names(r["expr"]) for g in groups for r in g["rules"]))
    assert read - exported_names(exporter) == {"up"}  # Prometheus's own, per scrape target


def test_metric_names_of_an_expression() -> None:
    assert metric_names('sum by (hop, what) (increase(gpusentry_dropped_total{what!~".*(x)"}[5m])) > 0') == {
        "gpusentry_dropped_total"}
    assert metric_names('label_values(gpusentry_build_info{job="$job"}, instance)') == {"gpusentry_build_info"}
    assert metric_names("gpusentry_a > 0.5 * gpusentry_b or up") == {"gpusentry_a", "gpusentry_b", "up"}
