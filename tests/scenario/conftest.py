"""Network namespaces and real OpenSSH servers, made by each scenario and removed after.

Two namespaces stand for two hosts: "gpuhost" (where the agent-under-watch runs; it has an
sshd on 127.0.0.1:22) and "outside" (an attacker's host, sshd on 198.51.100.1:22). They are
joined by a veth pair on 203.0.113.0/30, and gpuhost reaches 198.51.100.0/24 through
203.0.113.2 as its gateway, so connections to the outside are real egress. Only the
documentation ranges are used; the host's own interfaces and routes are never touched.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from pyroute2 import IPRoute, NetNS, netns

from tests.waiting import wait_until

SSHD = "/usr/sbin/sshd"
SSH = "/usr/bin/ssh"
OUTSIDE_IP = "198.51.100.1"


@dataclass
class Host:
    name: str  # the namespace's name under /run/netns
    workdir: Path
    sshd: subprocess.Popen[bytes] | None = None
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def inode(self) -> int:
        return os.stat(f"/run/netns/{self.name}").st_ino

    def command(self, *argv: str) -> list[str]:
        return ["ip", "netns", "exec", self.name, *argv]

    def run(self, *argv: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        result: subprocess.CompletedProcess[str] = subprocess.run(self.command(*argv), capture_output=True,
                                                                  text=True, timeout=60, **kwargs)
        return result

    def popen(self, *argv: str, **kwargs: Any) -> subprocess.Popen[bytes]:
        proc: subprocess.Popen[bytes] = subprocess.Popen(self.command(*argv), **kwargs)
        self.processes.append(proc)
        return proc


@dataclass
class Network:
    gpuhost: Host
    outside: Host
    key: Path  # the private key root logs in with on both sshds
    ssh_options: list[str]
    closed: bool = False

    def close(self) -> None:
        """Stop everything in both namespaces and remove them (a test may do it early)."""
        if not self.closed:
            self.closed = True
            _remove(self.gpuhost, self.outside)


def _remove(*hosts: Host) -> None:
    for host in hosts:
        for proc in reversed(host.processes):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        # whatever is left in the namespace (a backgrounded ssh -f) goes with it
        pids = subprocess.run(["ip", "netns", "pids", host.name], capture_output=True, text=True).stdout.split()
        for pid in pids:
            subprocess.run(["kill", "-9", pid], capture_output=True)
        netns.remove(host.name)


def _configure(name: str, address: str, peer_link: str, routes: list[tuple[str, str]], extra: list[str]) -> None:
    with NetNS(name) as ns:
        lo = ns.link_lookup(ifname="lo")[0]
        ns.link("set", index=lo, state="up")
        link = ns.link_lookup(ifname=peer_link)[0]
        ns.addr("add", index=link, address=address, prefixlen=30)
        ns.link("set", index=link, state="up")
        for extra_address in extra:
            ns.addr("add", index=lo, address=extra_address, prefixlen=32)
        for dst, gateway in routes:
            ns.route("add", dst=dst, gateway=gateway)


def _sshd_config(host: Host, listen: str, key: Path) -> Path:
    host_key = host.workdir / "host_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(host_key)], check=True)
    authorized = host.workdir / "authorized_keys"
    authorized.write_text(Path(f"{key}.pub").read_text())
    config = host.workdir / "sshd_config"
    config.write_text(f"""ListenAddress {listen}
HostKey {host_key}
PidFile {host.workdir}/sshd.pid
AuthorizedKeysFile {authorized}
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
AllowTcpForwarding yes
GatewayPorts no
Subsystem sftp /usr/lib/openssh/sftp-server
LogLevel VERBOSE
""")
    return config


def start_sshd(host: Host, listen: str, key: Path) -> None:
    config = _sshd_config(host, listen, key)
    host.sshd = host.popen(SSHD, "-D", "-e", "-f", str(config), stderr=subprocess.DEVNULL)
    address, _, port = listen.rpartition(":")

    def listening() -> bool:
        probe = host.run("bash", "-c", f"exec 3<>/dev/tcp/{address}/{port}")
        return probe.returncode == 0

    wait_until(listening, timeout=20, what=f"sshd listening on {listen} in {host.name}")


@pytest.fixture
def network(root: None, tmp_path: Path) -> Iterator[Network]:
    assert shutil.which("ip") and os.path.exists(SSHD), "scenario tests need iproute2 and openssh-server"
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation directory
    tag = secrets.token_hex(3)
    gpuhost = Host(f"gs-gpu-{tag}", tmp_path / "gpuhost")
    outside = Host(f"gs-out-{tag}", tmp_path / "outside")
    for host in (gpuhost, outside):
        host.workdir.mkdir()
        netns.create(host.name)
    network: Network | None = None
    try:
        with IPRoute() as ipr:
            ipr.link("add", ifname=f"gsg{tag}", kind="veth", peer=f"gso{tag}")
            ipr.link("set", index=ipr.link_lookup(ifname=f"gsg{tag}")[0], net_ns_fd=gpuhost.name)
            ipr.link("set", index=ipr.link_lookup(ifname=f"gso{tag}")[0], net_ns_fd=outside.name)
        _configure(gpuhost.name, "203.0.113.1", f"gsg{tag}", [("198.51.100.0/24", "203.0.113.2")], [])
        _configure(outside.name, "203.0.113.2", f"gso{tag}", [], [OUTSIDE_IP])
        key = tmp_path / "id_ed25519"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
        start_sshd(gpuhost, "127.0.0.1:22", key)
        start_sshd(outside, f"{OUTSIDE_IP}:22", key)
        options = ["-i", str(key), "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                   "-o", "BatchMode=yes", "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=10"]
        network = Network(gpuhost, outside, key, options)
        yield network
    finally:
        if network is None:
            _remove(gpuhost, outside)
        else:
            network.close()
