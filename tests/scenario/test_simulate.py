"""`gpusentry simulate` against a real agent: the whole ROME run arrives as five alerts in one
incident, a missing alert fails the run (exit 1), and a run that would touch the host's own
network configuration is refused (exit 2). Nothing it made is left behind."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from sensor.simulate.cmd import NAMESPACES
from sensor.simulate.steps import ROME_RULES
from tests.kernel.test_agent import ROOT, Agent, workdir
from tests.waiting import wait_until

DISABLE_POOL = "rules:\n  - id: miner-pool-connection\n    enabled: false\n"


def started(agents: list[Agent], *flags: str) -> Agent:
    agent = Agent("--quiet", *flags)
    agents.append(agent)
    wait_until((agent.tmp / "api.sock").exists, timeout=30, what=f"the agent's API ({agent.messages})")
    return agent


def simulate(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sensor", "simulate", *argv], capture_output=True, text=True,
                          cwd=ROOT, timeout=180)


def leftovers() -> list[str]:
    """Namespaces and processes a simulation made that are still here."""
    names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    found = [name for name in NAMESPACES if name in names]
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            argv = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if "gpusentry-simulate-" in argv:  # its sshds' configs and ssh's key are there
            found.append(argv)
    return found


def test_rome_arrives_as_five_alerts_in_one_incident(agents: list[Agent]) -> None:
    agent = started(agents)
    done = simulate("rome", "--socket", str(agent.tmp / "api.sock"))
    assert done.returncode == 0, done.stdout + done.stderr
    for rule in ROME_RULES:
        assert f"alert     {rule:36} arrived" in done.stdout
    incident = next(line for line in done.stdout.splitlines() if line.startswith("incident"))
    assert incident.split()[-4] == "arrived:"
    assert "simulate rome: ok" in done.stdout
    assert leftovers() == []


def test_a_missing_alert_fails_the_run_and_says_which(agents: list[Agent]) -> None:
    place = workdir()
    rules = place / "no-pool.yaml"
    rules.write_text(DISABLE_POOL)
    rules.chmod(0o644)
    agent = started(agents, "--rules", str(rules))
    done = simulate("pool", "--socket", str(agent.tmp / "api.sock"), "--timeout", "5")
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"alert     {'miner-pool-connection':36} MISSING" in done.stdout
    assert "simulate pool: FAILED, missing: miner-pool-connection" in done.stdout
    assert leftovers() == []


def test_sigterm_midway_removes_everything(agents: list[Agent]) -> None:
    agent = started(agents)
    run = subprocess.Popen([sys.executable, "-m", "sensor", "simulate", "rome", "--socket",
                            str(agent.tmp / "api.sock")], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    wait_until(lambda: NAMESPACES[1] in subprocess.run(["ip", "netns", "list"], capture_output=True,
                                                       text=True).stdout, timeout=30, what="the namespaces")
    run.send_signal(signal.SIGTERM)
    assert run.wait(timeout=60) == 130
    assert leftovers() == []


@pytest.fixture
def taken_namespace(root: None) -> Iterator[str]:
    subprocess.run(["ip", "netns", "add", NAMESPACES[0]], check=True)
    try:
        yield NAMESPACES[0]
    finally:
        subprocess.run(["ip", "netns", "delete", NAMESPACES[0]], check=True)


def test_an_existing_namespace_of_the_same_name_is_refused(taken_namespace: str, tmp_path: Path) -> None:
    done = simulate("tunnel", "--socket", str(tmp_path / "none.sock"))
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr.strip().splitlines() == [
        f"gpusentry: error: simulate refuses to run: network namespace {taken_namespace} exists already "
        "(another simulate, or the host's own)"]
    assert done.stdout == ""
    names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    assert taken_namespace in names and NAMESPACES[1] not in names
