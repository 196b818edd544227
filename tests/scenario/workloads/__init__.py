"""Workloads for tunnels by behaviour, each a standalone script in this folder, and helpers that
start them in a scenario Network (sensor/simulate/network.py): gpuhost has sshd on 127.0.0.1:22,
the outside host is 198.51.100.1, reached from gpuhost through a gateway. Each helper returns the
processes it started, once each has printed "ready"; Network.close (or its fixture) ends them.

Positives: `paramiko_reverse_forward`, `plain_relay`, `ssh_config_reverse_forward` (reverse tunnels: the outside reaches
gpuhost's sshd through them, `login_through`), and `port_forward` (a forward tunnel, kubectl
port-forward's shape, used by `local_client`). Negatives: `web_with_db`, `ci_runner`,
`health_checker`.
"""

from __future__ import annotations

import select
import subprocess
import sys
import time
from pathlib import Path

from sensor.simulate.network import OUTSIDE_IP, SSH, Host, Network

ROOT = Path(__file__).resolve().parents[3]
PYTHON = sys.executable  # the project's virtualenv: paramiko is in its test extra


def start(host: Host, script: str, *args: str, timeout: float = 30.0) -> subprocess.Popen[bytes]:
    """`python -m tests.scenario.workloads.<script> args` in `host`'s namespace, once it says ready."""
    proc = host.popen(PYTHON, "-u", "-m", f"tests.scenario.workloads.{script}", *args, cwd=ROOT,
                      stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 0.1)
        if ready:
            line = proc.stdout.readline()
            if line.strip() == b"ready":
                return proc
            if not line:
                break
        if proc.poll() is not None:
            break
    proc.kill()
    _, err = proc.communicate()
    raise RuntimeError(f"workload {script} did not get ready: {err.decode(errors='replace')[-2000:]}")


def finish(proc: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    """Wait for a workload that ends by itself (it prints "done"); fail with its error if it did not."""
    out, err = proc.communicate(timeout=timeout)
    if proc.returncode != 0 or b"done" not in out:
        raise RuntimeError(f"workload failed ({proc.returncode}): {err.decode(errors='replace')[-2000:]}")


def paramiko_reverse_forward(net: Network, remote_port: int = 9000) -> list[subprocess.Popen[bytes]]:
    """The outside's 127.0.0.1:remote_port leads to gpuhost's sshd, through a paramiko script."""
    return [start(net.gpuhost, "notes_sync", OUTSIDE_IP, str(net.key), str(remote_port), "127.0.0.1:22")]


def ssh_config_reverse_forward(net: Network, remote_port: int = 9000) -> list[subprocess.Popen[bytes]]:
    """`ssh -fN tunnelhost` with the reverse forward only in the config file it is given (-F): no
    -R on its command line. It backgrounds itself once the forward is up (ExitOnForwardFailure),
    so nothing is returned; the namespace's removal ends it."""
    config = net.gpuhost.workdir / "ssh_config"
    config.write_text(f"Host tunnelhost\n  HostName {OUTSIDE_IP}\n  User root\n  IdentityFile {net.key}\n"
                      f"  RemoteForward {remote_port} localhost:22\n  ExitOnForwardFailure yes\n"
                      "  StrictHostKeyChecking no\n  UserKnownHostsFile /dev/null\n  BatchMode yes\n"
                      "  LogLevel ERROR\n")
    done = net.gpuhost.run(SSH, "-F", str(config), "-fN", "tunnelhost")
    if done.returncode != 0:
        raise RuntimeError(f"ssh -F did not set up its forward: {done.stderr[-2000:]}")
    return []


def plain_relay(net: Network, relay_port: int = 7000, data_port: int = 7002,
                user_port: int = 7001) -> list[subprocess.Popen[bytes]]:
    """The outside's user_port leads to gpuhost's sshd, through a relay that dialled out to relay_port
    and dials data_port (and gpuhost's sshd) for each request."""
    control = start(net.outside, "outside", "control", str(relay_port), str(data_port), str(user_port))
    return [control, start(net.gpuhost, "plain_relay", OUTSIDE_IP, str(relay_port), str(data_port), "127.0.0.1:22")]


def login_through(net: Network, port: int, command: str, host: str = "127.0.0.1") -> subprocess.CompletedProcess[str]:
    """From the outside, ssh to gpuhost through a reverse tunnel listening on host:port there."""
    return net.outside.run(SSH, *net.ssh_options, "-p", str(port), f"root@{host}", command)


def port_forward(net: Network, local_port: int = 15432, remote_port: int = 443) -> list[subprocess.Popen[bytes]]:
    """gpuhost's 127.0.0.1:local_port leads to an echo service outside."""
    service = start(net.outside, "outside", "echo", str(remote_port))
    return [service, start(net.gpuhost, "port_forward", str(local_port), f"{OUTSIDE_IP}:{remote_port}")]


def local_client(net: Network, port: int, size: int, count: int) -> subprocess.CompletedProcess[str]:
    return net.gpuhost.run(PYTHON, "-m", "tests.scenario.workloads.local_client", f"127.0.0.1:{port}", str(size),
                           str(count), cwd=ROOT)


def web_with_db(net: Network, port: int = 8080, db_port: int = 5432,
                requests: int = 20) -> list[subprocess.Popen[bytes]]:
    """A web server on gpuhost with its database outside; `requests` requests from the outside, served."""
    database = start(net.outside, "outside", "db", str(db_port))
    server = start(net.gpuhost, "web_with_db", str(port), f"{OUTSIDE_IP}:{db_port}")
    clients = net.outside.run(PYTHON, "-m", "tests.scenario.workloads.outside", "web", "203.0.113.1", str(port),
                              str(requests), cwd=ROOT)
    if clients.returncode != 0:
        raise RuntimeError(f"web clients failed: {clients.stderr[-2000:]}")
    return [database, server]


def ci_runner(net: Network, jobs: int = 3, server_port: int = 8443) -> list[subprocess.Popen[bytes]]:
    """A runner that long-polls outside and runs `jobs` tests (ssh to gpuhost's sshd) as children; returns
    once it is done."""
    server = start(net.outside, "outside", "poll", str(server_port))
    runner = start(net.gpuhost, "ci_runner", f"{OUTSIDE_IP}:{server_port}", str(jobs), *net.ssh_options)
    finish(runner)
    return [server, runner]


def health_checker(net: Network, rounds: int = 30, metrics_port: int = 9100,
                   web_port: int = 8081) -> list[subprocess.Popen[bytes]]:
    """A checker that probes gpuhost's sshd and a local web service `rounds` times, reporting
    outside; returns once it is done."""
    sink = start(net.outside, "outside", "sink", str(metrics_port))
    checker = start(net.gpuhost, "health_checker", f"{OUTSIDE_IP}:{metrics_port}", str(web_port), str(rounds))
    finish(checker)
    return [sink, checker]
