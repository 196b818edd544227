"""A built-in rule disabled, overridden, extended and excepted from a configuration file, on a
real agent: what fires, what is suppressed and counted, and what `status` and `rules check`
say about it."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

from sensor.api.v1 import gpusentry_pb2 as pb
from tests.kernel.test_agent import ROOT, Agent, _alerts, workdir
from tests.unit.test_schema import schema_validator
from tests.waiting import wait_until

SITE_RULES = """lists:
  miner_binaries: {{items: [gs-fake-miner], append: true}}

rules:
  - id: tunnel-to-nonstandard-port
    enabled: false

  - id: known-miner-binary
    override:
      severity: critical
      exceptions:
        - name: lab-benchmarks
          where: {{process.exe: {{prefix: "{lab}/"}}}}
"""


def gpusentry(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sensor", *argv], capture_output=True, text=True, cwd=ROOT,
                          timeout=60)


def test_a_builtin_rule_tuned_from_the_config_file(root: None) -> None:
    work = workdir()
    (work / "bin").mkdir()
    (work / "lab").mkdir()
    for place in ("bin", "lab"):  # the same miner's name: one where it counts, one in the lab
        shutil.copy("/bin/true", work / place / "gs-fake-miner")
    rules_d = work / "rules.d"
    rules_d.mkdir()
    (rules_d / "50-site.yaml").write_text(SITE_RULES.format(lab=work / "lab"))
    config = work / "config.yaml"
    config.write_text(f"detection:\n  rules: [{rules_d}]\n")
    for path in (work, work / "bin", work / "lab", rules_d, rules_d / "50-site.yaml", config):
        shutil.chown(path, "gpusentry", "gpusentry")

    agent = Agent("-c", str(config), "--quiet")
    sock = agent.tmp / "api.sock"
    try:
        wait_until(sock.exists, what="the API socket")
        subprocess.run([work / "lab" / "gs-fake-miner"], check=True)
        subprocess.run([work / "bin" / "gs-fake-miner"], check=True)
        (alert,) = wait_until(lambda: [a for a in _alerts(sock) if a.rule_id == "known-miner-binary"],
                              what="the extended list's alert")
        assert alert.severity == pb.SEVERITY_CRITICAL  # overridden from high
        assert alert.processes[0].process.exe == str(work / "bin" / "gs-fake-miner")

        status = gpusentry("status", "-o", "json", "--socket", str(sock))
        assert status.returncode == 0, status.stderr
        document = json.loads(status.stdout)
        published = schema_validator()
        published.evolve(schema={**published.schema, "$ref": "#/$defs/Status"}).validate(document)
        rules = {r["id"]: r for r in document["rules"]["rules"]}
        assert document["config_file"] == str(config)
        assert rules["tunnel-to-nonstandard-port"]["enabled"] is False
        miner = rules["known-miner-binary"]
        assert (miner["severity"], miner["alerts"], miner["suppressed"], miner["suppressed_by_exception"]) == (
            "SEVERITY_CRITICAL", "1", "1", {"lab-benchmarks": "1"})
        assert miner["overridden_by"] == [f"{rules_d / '50-site.yaml'}:8"]

        table = gpusentry("status", "--socket", str(sock)).stdout.splitlines()
        row = next(line for line in table if line.startswith("known-miner-binary "))
        assert row.split()[:5] == ["known-miner-binary", "critical", "yes", "1", "1"]
        assert "exception lab-benchmarks of known-miner-binary: suppressed 1" in table
        assert next(line for line in table if line.startswith("tunnel-to-nonstandard-port ")).split()[2] == "no"
    finally:
        agent.stop()
        agent.kill()

    checked = gpusentry("rules", "check", str(rules_d))
    assert checked.returncode == 0, checked.stdout
    lines = checked.stdout.splitlines()
    site = rules_d / "50-site.yaml"
    assert any(line.startswith("  tunnel-to-nonstandard-port: disabled, medium, ") and
               line.endswith(f"overridden by {site}:5; facts: tunnel; does not fire (disabled)") for line in lines)
    assert any(line.startswith("  known-miner-binary: enabled, critical, ") and
               line.endswith(f"overridden by {site}:8; facts: miner; can fire") for line in lines)
    assert f"    exception lab-benchmarks ({site}:12)" in lines
    assert any(line.startswith("  miner_binaries: 21 items (20 from ") and line.endswith(f"1 from {site}:2)")
               for line in lines)
    assert lines[-1] == "ok: 13 rules (1 disabled) in 2 file(s)"
