"""Two network namespaces with real OpenSSH servers: a GPU host and an outside host.

"gpuhost" (where the watched agent runs; it has an sshd on 127.0.0.1:22) and "outside" (an
attacker's host, sshd on 198.51.100.1:22) are joined by a veth pair on 203.0.113.0/30, and
gpuhost reaches 198.51.100.0/24 through 203.0.113.2 as its gateway, so connections to the
outside are real egress. Only documentation ranges are used, and `refusal` says why a run
would touch the host's own network (names taken, ranges in use) before anything is made.
Used by `gpusentry simulate` and by the scenario tests.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pyroute2 import IPRoute, netns

from sensor.errors import RuntimeFailure

SSHD = "/usr/sbin/sshd"
SSH = "/usr/bin/ssh"
OUTSIDE_IP = "198.51.100.1"
GATEWAY_IP = "203.0.113.2"
RANGES = (ipaddress.ip_network("203.0.113.0/30"), ipaddress.ip_network("198.51.100.0/24"))


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
            remove(self.gpuhost, self.outside)


def refusal(names: tuple[str, ...]) -> str | None:
    """Why making these namespaces would touch the host's own network, or None."""
    if os.geteuid() != 0:
        return "simulate makes network namespaces and mounts a fake GPU driver: it needs root"
    if not shutil.which("ip") or not os.path.exists(SSHD):
        return f"simulate needs iproute2 (ip) and openssh-server ({SSHD})"
    taken = [name for name in names if name in netns.listnetns()]
    if taken:
        return f"network namespace {taken[0]} exists already (another simulate, or the host's own)"
    return _ranges_in_use()


def _ranges_in_use() -> str | None:
    with IPRoute() as ipr:
        for addr in ipr.get_addr(family=2):
            address = ipaddress.ip_address(addr.get_attr("IFA_ADDRESS"))
            if any(address in net for net in RANGES):
                return f"the host has address {address}, in a range simulate uses ({_ranges()})"
        for route in ipr.get_routes(family=2):
            dst = route.get_attr("RTA_DST")
            if dst is None or route["dst_len"] == 0:
                continue  # a default route covers everything, and is no conflict
            net = ipaddress.ip_network(f"{dst}/{route['dst_len']}", strict=False)
            if any(net.overlaps(ours) for ours in RANGES):
                return f"the host routes {net}, which overlaps a range simulate uses ({_ranges()})"
    return None


def _ranges() -> str:
    return ", ".join(str(net) for net in RANGES)


def remove(*hosts: Host) -> None:
    """Kill every process in the namespaces (a backgrounded ssh -f too), then remove them."""
    for host in hosts:
        for proc in reversed(host.processes):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        if host.name not in netns.listnetns():
            continue
        pids = subprocess.run(["ip", "netns", "pids", host.name], capture_output=True, text=True).stdout.split()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), 9)
        subprocess.run(["ip", "netns", "delete", host.name], capture_output=True)


def _configure(name: str, address: str, peer_link: str, routes: list[tuple[str, str]], extra: list[str]) -> None:
    # `ip -n`, not pyroute2's NetNS: NetNS forks a helper, and the simulate command forks with
    # gRPC's threads running, where a forked child is not reliable
    commands = [["link", "set", "lo", "up"], ["addr", "add", f"{address}/30", "dev", peer_link],
                ["link", "set", peer_link, "up"]]
    commands += [["addr", "add", f"{extra_address}/32", "dev", "lo"] for extra_address in extra]
    commands += [["route", "add", dst, "via", gateway] for dst, gateway in routes]
    for command in commands:
        subprocess.run(["ip", "-n", name, *command], check=True, capture_output=True)


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


def start_sshd(host: Host, listen: str, key: Path, timeout: float = 20.0) -> None:
    config = _sshd_config(host, listen, key)
    host.sshd = host.popen(SSHD, "-D", "-e", "-f", str(config), stderr=subprocess.DEVNULL)
    address, _, port = listen.rpartition(":")
    deadline = time.monotonic() + timeout
    while host.run("bash", "-c", f"exec 3<>/dev/tcp/{address}/{port}").returncode != 0:
        if host.sshd.poll() is not None or time.monotonic() > deadline:
            raise RuntimeFailure(f"sshd is not listening on {listen} in {host.name}")
        threading.Event().wait(0.05)


@contextlib.contextmanager
def network(workdir: Path, gpuhost_name: str, outside_name: str, links: tuple[str, str]) -> Iterator[Network]:
    """Both hosts, their link, routes and sshds, in `workdir`; everything is removed on exit,
    however the block ends. `links` names the veth pair's ends (at most 15 characters each)."""
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation directory
    gpuhost, outside = Host(gpuhost_name, workdir / "gpuhost"), Host(outside_name, workdir / "outside")
    made: list[Host] = []  # only these are removed: a name taken before is never ours
    try:
        for host in (gpuhost, outside):
            host.workdir.mkdir(parents=True)
            made.append(host)  # first: an interrupt may land while `ip netns add` runs
            if subprocess.run(["ip", "netns", "add", host.name], capture_output=True).returncode != 0:
                made.remove(host)  # taken since `refusal` looked: not ours to remove
                raise RuntimeFailure(f"could not make network namespace {host.name}")
        with IPRoute() as ipr:
            ipr.link("add", ifname=links[0], kind="veth", peer=links[1])
            ipr.link("set", index=ipr.link_lookup(ifname=links[0])[0], net_ns_fd=gpuhost.name)
            ipr.link("set", index=ipr.link_lookup(ifname=links[1])[0], net_ns_fd=outside.name)
        _configure(gpuhost.name, "203.0.113.1", links[0], [("198.51.100.0/24", GATEWAY_IP)], [])
        _configure(outside.name, GATEWAY_IP, links[1], [], [OUTSIDE_IP])
        key = workdir / "id_ed25519"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
        start_sshd(gpuhost, "127.0.0.1:22", key)
        start_sshd(outside, f"{OUTSIDE_IP}:22", key)
        options = ["-i", str(key), "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                   "-o", "BatchMode=yes", "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=10"]
        net = Network(gpuhost, outside, key, options)
        yield net
    finally:
        remove(*made)
        _remove_link(links[0])  # left on the host only when moving it into gpuhost failed


def _remove_link(name: str) -> None:
    with IPRoute() as ipr:
        found = ipr.link_lookup(ifname=name)
        if found:
            ipr.link("del", index=found[0])
