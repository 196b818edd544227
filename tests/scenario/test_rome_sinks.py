"""Every sink at once, then the ROME run: its alerts and its incident reach a JSON lines file, a
real rsyslog, a webhook receiver in Falco's shape, a real Prometheus (through the agent's
/metrics) and an OTLP logs receiver, and `gpusentry status` counts what each sink sent."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.kernel.test_agent import ROOT, Agent, workdir
from tests.kernel.test_metrics_prometheus import free_port, ready
from tests.kernel.test_sink_syslog import Rsyslog, rsyslogd  # noqa: F401 (a fixture)
from tests.scenario.conftest import OUTSIDE_IP, SSH, Network
from tests.scenario.test_rome import ROME_RULES, hopper, replay_command  # noqa: F401 (a fixture)
from tests.unit.test_sink_otlp import Receiver as OtlpReceiver
from tests.unit.test_sink_otlp import attrs, serving
from tests.unit.test_sink_webhook import FALCO_KEYS, Receiver, assert_falco_shape
from tests.waiting import wait_until

PROMETHEUS = """global:
  scrape_interval: 1s
scrape_configs:
  - job_name: gpusentry
    static_configs:
      - targets: ["127.0.0.1:{port}"]
"""


@pytest.fixture
def webhook() -> Iterator[Receiver]:
    receiver = Receiver().start()
    yield receiver
    receiver.stop()


@pytest.fixture
def otlp_receiver() -> Iterator[tuple[OtlpReceiver, str]]:
    receiver = OtlpReceiver()
    with serving(receiver) as endpoint:
        yield receiver, endpoint


class Prometheus:
    """A real Prometheus, scraping the agent every second, on its own port and storage."""

    def __init__(self, tmp: Path, target_port: int) -> None:
        binary = shutil.which("prometheus")
        assert binary is not None, "needs prometheus: apt-get install -y prometheus"
        config = tmp / "prometheus.yml"
        config.write_text(PROMETHEUS.format(port=target_port))
        self.url = f"http://127.0.0.1:{free_port()}"
        self.log = tmp / "prometheus.log"
        with self.log.open("wb") as out:
            self.process = subprocess.Popen([binary, f"--config.file={config}", f"--storage.tsdb.path={tmp / 'tsdb'}",
                                             f"--web.listen-address={self.url.removeprefix('http://')}"],
                                            stdout=out, stderr=out)
        wait_until(lambda: self.process.poll() is not None or ready(self.url), timeout=60, what="Prometheus")
        assert self.process.poll() is None, self.log.read_text()

    def value(self, promql: str) -> float | None:
        query = urllib.parse.urlencode({"query": promql})
        with urllib.request.urlopen(f"{self.url}/api/v1/query?{query}", timeout=5) as response:
            result = json.load(response)["data"]["result"]
        return float(result[0]["value"][1]) if result else None

    def stop(self) -> None:
        self.process.kill()
        self.process.wait()


def sinks_config(tmp: Path, rsyslog: Rsyslog, webhook: Receiver, otlp_endpoint: str, metrics_port: int) -> str:
    return f"""metrics:
  listen: 127.0.0.1:{metrics_port}
sinks:
  - type: file
    path: {tmp / 'out' / 'alerts.jsonl'}
  - type: syslog
    address: udp://127.0.0.1:{rsyslog.udp}
  - type: webhook
    url: {webhook.url}
  - type: otlp
    endpoint: {otlp_endpoint}
    insecure: true
"""


def test_the_rome_incident_reaches_every_sink(hopper: Path, network: Network, rsyslogd: Rsyslog,  # noqa: F811
                                              webhook: Receiver, otlp_receiver: tuple[OtlpReceiver, str]) -> None:
    tmp = workdir()
    (tmp / "out").mkdir()
    shutil.chown(tmp / "out", "gpusentry", "gpusentry")
    metrics_port = free_port()
    config = tmp / "config.yaml"
    config.write_text(sinks_config(tmp, rsyslogd, webhook, otlp_receiver[1], metrics_port))
    shutil.chown(config, "gpusentry", "gpusentry")
    agent = Agent("-c", str(config), "--quiet")
    prometheus = Prometheus(tmp, metrics_port)
    try:
        ssh = " ".join([SSH, *network.ssh_options, "-fNR", "9000:localhost:22", f"root@{OUTSIDE_IP}"])
        pool = f"bash -c 'exec 3<>/dev/tcp/{OUTSIDE_IP}/3333' 2>/dev/null; true"
        rome = f"cd {ROOT} && {ssh} && {replay_command(hopper, 'hopper-bringup.yaml')} && {pool}"
        assert network.gpuhost.run("sh", "-c", rome).returncode == 0

        # the file: one Record a line, the five alerts and the incident's last version with all five
        lines = tmp / "out" / "alerts.jsonl"
        records = wait_until(lambda: _whole([json.loads(x) for x in lines.read_text().splitlines()])
                             if lines.exists() else [], timeout=30, what="the incident in the file")
        incident = [r["incident"] for r in records if r["type"] == "incident"][-1]
        assert {r["alert"]["rule_id"] for r in records if r["type"] == "alert"} == ROME_RULES
        assert {r["alert"]["incident_id"] for r in records if r["type"] == "alert"} == {incident["id"]}

        # rsyslog: RFC 5424 with the structured data naming the incident
        def logged_rules() -> set[str]:
            alert_lines = [line for line in rsyslogd.lines() if " alert " in line and "gpusentry@32473" in line]
            return {rule for rule in ROME_RULES if any(f'rule_id="{rule}"' in line for line in alert_lines)}

        wait_until(lambda: logged_rules() == ROME_RULES, timeout=30, what="the five alerts in rsyslog's output")
        assert any(f'id="{incident["id"]}"' in line and " incident " in line for line in rsyslogd.lines())

        # the webhook: Falco's output shape, the critical rule as Falco's Critical priority
        wait_until(lambda: len([p for p in webhook.accepted if p["rule"] in ROME_RULES]) == 5, timeout=30,
                   what="the five alerts at the webhook")
        for payload in webhook.accepted:
            assert_falco_shape(payload)
            assert set(payload) == FALCO_KEYS
        critical = next(p for p in webhook.accepted if p["rule"] == "reverse-tunnel-then-gpu-compute")
        assert (critical["priority"], critical["source"], critical["output_fields"]["gpusentry.incident.id"]) == (
            "Critical", "gpusentry", incident["id"])
        assert any(p["rule"] == "gpusentry incident" for p in webhook.accepted)

        # OTLP: log records with the alert's fields as attributes
        receiver = otlp_receiver[0]
        wait_until(lambda: {attrs(r.attributes).get("gpusentry.alert.rule_id") for r in receiver.log_records()}
                   >= ROME_RULES, timeout=30, what="the alerts at the OTLP receiver")
        incidents = [attrs(r.attributes) for r in receiver.log_records()
                     if attrs(r.attributes).get("gpusentry.type") == "incident"]
        assert {a["gpusentry.incident.id"] for a in incidents} == {incident["id"]}

        # Prometheus, through the agent's /metrics: the alerts by rule, and the sinks' counters
        wait_until(lambda: prometheus.value('sum(gpusentry_alerts_total{rule=~"reverse-tunnel.*|miner.*|gpu-compute'
                                            '-then.*"})') == 5.0, timeout=30, what="the alerts in Prometheus")
        assert prometheus.value("gpusentry_incidents_total") == 1.0
        wait_until(lambda: prometheus.value('min(gpusentry_sink_up)') == 1.0, timeout=30, what="every sink up")

        status = subprocess.run([sys.executable, "-m", "sensor", "status", "-o", "json", "--socket",
                                 str(agent.tmp / "api.sock")], capture_output=True, text=True, cwd=ROOT, timeout=60)
        sinks = {s["type"]: s for s in json.loads(status.stdout)["sinks"]}
        assert set(sinks) == {"file", "syslog", "webhook", "otlp"}
        assert all(int(s["sent"]) >= 6 and s["up"] and s["dropped"] == "0" and s["failed"] == "0"
                   for s in sinks.values()), sinks
    finally:
        prometheus.stop()
        agent.stop()
        agent.kill()


def _whole(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The records, once an incident with the five alerts is among them."""
    done = any(r["type"] == "incident" and set(r["incident"]["rule_ids"]) >= ROME_RULES for r in records)
    return records if done else []
