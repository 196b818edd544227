"""Tunnels by behaviour, end to end: the real probe (per-socket byte counts) and aggregator, real
OpenSSH in network namespaces, and the workloads of tests/scenario/workloads/. A reverse port
forward written with paramiko and a plain-socket relay are reverse tunnels whatever their names,
and the logins that come back through them get the tunnel's scope; a kubectl-port-forward-like
relay is a forward tunnel (medium); a web server with its database, a CI runner whose children
test against localhost and a health checker stay below high.

The probe sees the whole machine: every fact and alert is taken from gpuhost's namespace only."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sensor import events as ev
from sensor.aggregator.facts import TunnelFact
from sensor.aggregator.process_table import Process
from sensor.fakegpu.session import fake_driver
from sensor.rules.alert import Alert
from tests.scenario import workloads
from tests.scenario.conftest import OUTSIDE_IP, Network
from tests.scenario.test_rome import ROOT, Recorder, analyze, replay_command
from tests.waiting import wait_until


@pytest.fixture
def hopper(root: None) -> Iterator[Path]:
    """The fake driver, mounted before the network's sshds start (as in test_rome)."""
    with fake_driver("hopper") as driver_dir:
        yield driver_dir


@pytest.fixture
def recorder(network: Network, tmp_path: Path) -> Iterator[Recorder]:
    rec = Recorder(tmp_path / "relay.gscap")
    rec.probe.start()
    try:
        yield rec
    finally:
        if rec.probe.bpf is not None:
            rec.stop()


def process(recorder: Recorder, key: Any) -> Process | None:
    with recorder.live.lock:
        return recorder.live.aggregator.table.get(key)


def in_gpuhost(recorder: Recorder, network: Network, key: Any) -> bool:
    proc = process(recorder, key)
    return proc is not None and proc.netns == network.gpuhost.inode


def behaviour_tunnels(recorder: Recorder, network: Network) -> list[TunnelFact]:
    return [t for t in recorder.facts(TunnelFact) if t.evidence == "behaviour" and in_gpuhost(recorder, network,
                                                                                              t.process)]


def gpuhost_alerts(recorder: Recorder, network: Network) -> list[Alert]:
    table = recorder.live.aggregator.table
    alerts = recorder.alerts()
    with recorder.live.lock:
        found = [(a, table.find_exec_id(a.steps[-1].exec_id)) for a in alerts]
    return [a for a, proc in found if proc is not None and proc.netns == network.gpuhost.inode]


def argv_of(recorder: Recorder, key: Any) -> str:
    proc = process(recorder, key)
    return b" ".join(proc.argv).decode() if proc is not None else ""


def pids_running(recorder: Recorder, network: Network, marker: bytes) -> list[int]:
    """Processes on gpuhost whose exec'd argv has `marker` (the commands a login ran there)."""
    return [e.tgid for e in recorder.live.events(ev.Exec) if isinstance(e, ev.Exec)
            and e.netns == network.gpuhost.inode and any(marker in a for a in e.argv)]


def first_local_connection(recorder: Recorder, pid: int) -> ev.TcpEstablished:
    found = [e for e in recorder.live.events(ev.TcpEstablished, pid) if isinstance(e, ev.TcpEstablished)
             and e.daddr == "127.0.0.1" and e.dport == 22]
    return found[0]


def test_a_paramiko_reverse_forward_under_another_name_and_the_logins_through_it(
        hopper: Path, network: Network, recorder: Recorder) -> None:
    (forward,) = workloads.paramiko_reverse_forward(network)
    first = workloads.login_through(network, 9000, "echo gs-first-login")
    assert first.returncode == 0 and "gs-first-login" in first.stdout, first.stderr

    tunnel = wait_until(lambda: behaviour_tunnels(recorder, network), timeout=15, what="the behaviour tunnel")[0]
    assert (tunnel.reverse, tunnel.directions, tunnel.remote_host, tunnel.remote_port, tunnel.local_services) == (
        True, ("reverse",), OUTSIDE_IP, 22, ("127.0.0.1:22",))
    assert tunnel.relayed_bytes > 2048 and tunnel.tool.startswith("python") and tunnel.process.pid == forward.pid
    assert "workloads.notes_sync" in argv_of(recorder, tunnel.process)
    opened = wait_until(lambda: [a for a in gpuhost_alerts(recorder, network) if a.rule_id == "reverse-tunnel-opened"],
                        what="the high alert")[0]
    assert opened.severity == "high" and opened.steps[0].fields["evidence"] == "behaviour"
    latency_s = (tunnel.ts - first_local_connection(recorder, tunnel.process.pid).ts) / 1e9
    print(f"behaviour tunnel found {latency_s:.2f} s after its first connection to sshd")

    # the first login began before the tunnel was known: its shell got the scope afterwards
    (shell,) = pids_running(recorder, network, b"gs-first-login")
    with recorder.live.lock:
        login = recorder.live.aggregator.table.by_pid(shell)
        assert login is not None and tunnel.scope in login.tunnel_scopes
        ancestors = recorder.live.aggregator.table.ancestors(login.key)
    assert any(a.exe.endswith(b"sshd") for a in ancestors)
    assert tunnel.process not in [a.key for a in ancestors]  # outside the tunnel's own tree

    # a second login, after: GPU compute in the tunnel's scope, the ROME chain by behaviour
    second = workloads.login_through(network, 9000, f"cd {ROOT} && {replay_command(hopper, 'compute-loop.yaml')}")
    assert second.returncode == 0, second.stderr
    chain = wait_until(lambda: [a for a in gpuhost_alerts(recorder, network)
                                if a.rule_id == "reverse-tunnel-then-gpu-compute"], what="the critical alert")[0]
    assert (chain.severity, chain.scope, chain.scope_key) == ("critical", "tunnel", tunnel.scope)
    assert [s.fact for s in chain.steps] == ["tunnel", "gpu_compute"]

    # the capture, analysed offline, raises the same: the byte counts travel in it
    recorder.stop()
    report = analyze(recorder.capture)
    assert "ALERT HIGH reverse-tunnel-opened" in report and "ALERT CRITICAL reverse-tunnel-then-gpu-compute" in report
    assert f"reverse {OUTSIDE_IP}:22 <-> 127.0.0.1:22" in report


def test_a_plain_socket_relay_that_dials_sshd_for_each_request(network: Network, recorder: Recorder) -> None:
    _, relay = workloads.plain_relay(network)
    for n in range(2):
        login = workloads.login_through(network, 7001, f"echo gs-relay-login-{n}")
        assert login.returncode == 0 and f"gs-relay-login-{n}" in login.stdout, login.stderr
    tunnel = wait_until(lambda: behaviour_tunnels(recorder, network), timeout=15, what="the behaviour tunnel")[0]
    assert (tunnel.process.pid, tunnel.reverse, tunnel.remote_host, tunnel.remote_port, tunnel.local_services) == (
        relay.pid, True, OUTSIDE_IP, 7002, ("127.0.0.1:22",))  # a request's own connection out
    assert "workloads.plain_relay" in argv_of(recorder, tunnel.process)
    wait_until(lambda: [a for a in gpuhost_alerts(recorder, network) if a.rule_id == "reverse-tunnel-opened"],
               what="the high alert")
    for n in range(2):
        (shell,) = pids_running(recorder, network, f"gs-relay-login-{n}".encode())
        with recorder.live.lock:
            login_proc = recorder.live.aggregator.table.by_pid(shell)
            assert login_proc is not None and tunnel.scope in login_proc.tunnel_scopes, n


def test_ssh_with_its_reverse_forward_only_in_a_config_file(network: Network, recorder: Recorder) -> None:
    """No -R on the command line: the relay ssh's own forked child does is the evidence."""
    workloads.ssh_config_reverse_forward(network)
    login = workloads.login_through(network, 9000, "echo gs-config-login")
    assert login.returncode == 0 and "gs-config-login" in login.stdout, login.stderr
    tunnel = wait_until(lambda: behaviour_tunnels(recorder, network), timeout=15, what="the behaviour tunnel")[0]
    assert (tunnel.tool, tunnel.reverse, tunnel.remote_host, tunnel.remote_port, tunnel.local_services) == (
        "ssh", True, OUTSIDE_IP, 22, ("127.0.0.1:22",))
    argv = argv_of(recorder, tunnel.process)
    assert "-F" in argv and "-R" not in argv
    (shell,) = pids_running(recorder, network, b"gs-config-login")
    with recorder.live.lock:
        login_proc = recorder.live.aggregator.table.by_pid(shell)
        assert login_proc is not None and tunnel.scope in login_proc.tunnel_scopes


def test_a_port_forward_is_a_forward_tunnel_at_medium(network: Network, recorder: Recorder) -> None:
    _, forwarder = workloads.port_forward(network)
    used = workloads.local_client(network, 15432, 8192, 3)
    assert used.returncode == 0 and "done" in used.stdout, used.stderr
    tunnel = wait_until(lambda: behaviour_tunnels(recorder, network), timeout=15, what="the forward tunnel")[0]
    assert (tunnel.process.pid, tunnel.reverse, tunnel.directions, tunnel.remote_host, tunnel.remote_port) == (
        forwarder.pid, False, ("local",), OUTSIDE_IP, 443)
    assert tunnel.local_services == ("127.0.0.1:15432",) and tunnel.relayed_bytes >= 2 * 8192
    alert = wait_until(lambda: [a for a in gpuhost_alerts(recorder, network)
                                if a.rule_id == "forward-tunnel-by-behaviour"], what="the medium alert")[0]
    assert alert.severity == "medium"
    assert [a.rule_id for a in gpuhost_alerts(recorder, network) if a.severity in ("high", "critical")] == []


def test_a_web_server_a_ci_runner_and_a_health_checker_stay_below_high(network: Network,
                                                                       recorder: Recorder) -> None:
    started = [*workloads.web_with_db(network), *workloads.ci_runner(network), *workloads.health_checker(network)]
    ours = {p.pid for p in started}
    # every socket they used has had its counts read since they finished: the probe reads them
    # each second, just before its Stats frame
    done_at = max(e.ts for e in recorder.live.events() if e.tgid in ours)
    wait_until(lambda: len([e for e in recorder.live.events(ev.Stats) if e.ts > done_at]) >= 2,
               what="two byte-count reads after the workloads")
    seen = {t.process.pid for t in recorder.facts(TunnelFact)}
    assert seen & ours == set()  # none of them is a tunnel
    assert behaviour_tunnels(recorder, network) == []
    assert [(a.rule_id, a.severity) for a in gpuhost_alerts(recorder, network)
            if a.severity in ("high", "critical")] == []
    # and they were followed: each holds a connection out, so its local connections were weighed
    detector = recorder.live.aggregator.detector
    assert detector is not None
    for proc in (started[1], started[3], started[5]):  # the web server, the runner, the checker
        followed = process_of_pid(recorder, proc.pid)
        assert followed is not None and detector.relay.is_candidate(followed.key), proc.args


def process_of_pid(recorder: Recorder, pid: int) -> Process | None:
    with recorder.live.lock:
        return recorder.live.aggregator.table.by_pid(pid)
