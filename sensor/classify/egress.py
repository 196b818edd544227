"""Where a connection goes: loopback, this host, the local subnet, or out through a gateway.

The answer comes from the routing table of the connecting process's network namespace
(pyroute2's RTM_GETROUTE), the same table the kernel used. A process in another namespace
(a container, a sandbox) is looked up in its own namespace when the aggregator may enter it
(as root, through /proc/PID/ns/net); otherwise the address ranges decide, and the result
says so (`by_range`).
"""

from __future__ import annotations

import ipaddress
import os
import time
from collections import OrderedDict
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

RTN_LOCAL = 2
CACHE_SIZE = 4096
CACHE_TTL_NS = 60 * 1_000_000_000


class Destination(StrEnum):
    LOOPBACK = "loopback"
    LOCAL = "local"  # an address of this host (or of the namespace)
    LAN = "lan"  # on a directly connected subnet
    EGRESS = "egress"  # through a gateway
    UNREACHABLE = "unreachable"
    NONE = "none"  # not an IP connection (AF_UNIX)


@dataclass(frozen=True)
class Verdict:
    destination: Destination
    allowed: bool
    by_range: bool = False  # decided from address ranges, without the routing table


def host_netns() -> int:
    try:
        return os.stat("/proc/1/ns/net").st_ino
    except OSError:
        return os.stat("/proc/self/ns/net").st_ino


# Without a routing table, these are taken for the local network; everything else leaves.
# (Not ipaddress's is_private, which also counts the documentation and benchmark ranges.)
INTERNAL_RANGES = tuple(ipaddress.ip_network(n) for n in (
    "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "169.254.0.0/16", "fc00::/7", "fe80::/10"))


def _by_range(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> Destination:
    if address.is_loopback:
        return Destination.LOOPBACK
    if any(address in net for net in INTERNAL_RANGES):
        return Destination.LAN
    return Destination.EGRESS


class EgressClassifier:
    def __init__(self, allowlist: list[str] | None = None, static: dict[str, Destination] | None = None) -> None:
        """`static` (CIDR -> destination) answers before the routing table: for replaying a
        capture from another host, and for tests that must not depend on this host's routes."""
        self.allowlist = [ipaddress.ip_network(net, strict=False) for net in allowlist or []]
        self.static = [(ipaddress.ip_network(net, strict=False), dest) for net, dest in (static or {}).items()]
        self.host_netns = host_netns()
        self._cache: OrderedDict[tuple[int, str], tuple[int, Destination, bool]] = OrderedDict()
        self._routers: dict[int, Any] = {}
        self.lookups = 0
        self.range_fallbacks = 0

    def close(self) -> None:
        for router in self._routers.values():
            router.close()
        self._routers.clear()

    def classify(self, address: str, netns: int = 0, pid: int = 0) -> Verdict:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return Verdict(Destination.NONE, True)
        allowed = any(ip in net for net in self.allowlist)
        if ip.is_loopback:
            return Verdict(Destination.LOOPBACK, allowed)
        for net, destination in self.static:
            if ip in net:
                return Verdict(destination, allowed)
        netns = netns or self.host_netns
        key = (netns, address)
        cached = self._cache.get(key)
        now = time.monotonic_ns()
        if cached is not None and now - cached[0] < CACHE_TTL_NS:
            self._cache.move_to_end(key)
            return Verdict(cached[1], allowed, cached[2])
        destination, by_range = self._route(ip, netns, pid)
        if not by_range:  # a guess is not kept: a later lookup may get into the namespace
            self._cache[key] = (now, destination, by_range)
            if len(self._cache) > CACHE_SIZE:
                self._cache.popitem(last=False)
        return Verdict(destination, allowed, by_range)

    def _route(self, ip: ipaddress.IPv4Address | ipaddress.IPv6Address, netns: int,
               pid: int) -> tuple[Destination, bool]:
        router = self._router(netns, pid)
        if router is None:
            self.range_fallbacks += 1
            return _by_range(ip), True
        self.lookups += 1
        try:
            routes = router.route("get", dst=str(ip))
        except Exception:
            return Destination.UNREACHABLE, False
        if not routes:
            return Destination.UNREACHABLE, False
        route = routes[0]
        if route["type"] == RTN_LOCAL:
            return Destination.LOCAL, False
        if route.get_attr("RTA_GATEWAY") or route.get_attr("RTA_VIA"):
            return Destination.EGRESS, False
        return Destination.LAN, False

    def _router(self, netns: int, pid: int) -> Any:
        """An IPRoute in the namespace, kept open; None when it cannot be entered."""
        if netns in self._routers:
            return self._routers[netns]
        from pyroute2 import IPRoute, NetNS

        router: Any = None
        try:
            if netns == self.host_netns:
                router = IPRoute()
            elif pid and os.stat(f"/proc/{pid}/ns/net").st_ino == netns:
                router = NetNS(f"/proc/{pid}/ns/net")
        except Exception:
            router = None
        if router is not None:
            self._routers[netns] = router
        return router
