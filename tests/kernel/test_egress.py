"""Destinations classified by the probe with the routing table of the connecting process's own
namespace: once the namespace's socket is open, its verdicts need neither the process nor
the namespace's name."""

from __future__ import annotations

import os
import secrets
import subprocess
from collections.abc import Iterator

import pytest
from pyroute2 import NetNS, netns

from sensor.classify.egress import Destination
from sensor.probe.routes import Router
from tests.waiting import wait_until


@pytest.fixture
def sandbox(root: None) -> Iterator[subprocess.Popen[bytes]]:
    """A namespace with an address on a /24, a route via a gateway, and a process inside.
    (This kernel has no dummy interfaces: a veth pair, both ends in the namespace, serves.)"""
    name = f"gs-eg-{secrets.token_hex(3)}"
    netns.create(name)
    with NetNS(name) as ns:
        lo = ns.link_lookup(ifname="lo")[0]
        ns.link("set", index=lo, state="up")
        ns.link("add", ifname="gsv0", kind="veth", peer="gsv1")  # both ends inside: a link to put a /24 on
        for ifname in ("gsv0", "gsv1"):
            ns.link("set", index=ns.link_lookup(ifname=ifname)[0], state="up")
        ns.addr("add", index=ns.link_lookup(ifname="gsv0")[0], address="203.0.113.10", prefixlen=24)
        ns.route("add", dst="198.51.100.0/24", gateway="203.0.113.1")
    inside = subprocess.Popen(["ip", "netns", "exec", name, "sleep", "60"])
    try:
        yield inside
    finally:
        inside.kill()
        inside.wait()
        netns.remove(name)


def test_classification_in_the_process_namespace(sandbox: subprocess.Popen[bytes]) -> None:
    host = os.stat("/proc/self/ns/net").st_ino
    pid = sandbox.pid  # ip netns exec enters the namespace, then execs sleep in the same process
    inode = wait_until(lambda: (ino if (ino := os.stat(f"/proc/{pid}/ns/net").st_ino) != host else 0),
                       what="the process in its namespace")
    router = Router()
    try:
        router.prepare(inode, pid)  # its first sighting, while the process lives
        sandbox.kill()
        sandbox.wait()
        verdicts = {address: router.route(address, inode) for address in
                    ("127.0.0.1", "203.0.113.10", "203.0.113.77", "198.51.100.5", "192.0.2.99")}
    finally:
        router.close()
    assert verdicts == {
        "127.0.0.1": (Destination.LOOPBACK, False),
        "203.0.113.10": (Destination.LOCAL, False),  # the namespace's own address
        "203.0.113.77": (Destination.LAN, False),  # on its /24
        "198.51.100.5": (Destination.EGRESS, False),  # through its gateway
        "192.0.2.99": (Destination.UNREACHABLE, False),  # no route there, inside the namespace
    }
    assert (router.stats.by_range, router.stats.lookups, router.stats.namespaces) == (0, 4, 0)
