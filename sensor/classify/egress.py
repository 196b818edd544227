"""Where a connection goes, and whether it is allowed to.

The probe decides where a connection goes from the routing table of the connecting process's
own network namespace, at event time, and carries the verdict in the frame
(sensor/probe/routes.py): the aggregator never asks this host's routes, so a capture
analysed anywhere gives what the live agent gave where it was recorded. Here the verdict
meets the operator's policy (the egress allowlist). A frame without a verdict (one made
by hand, in tests) is judged by address ranges, which says so (`by_range`).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from enum import StrEnum


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


# Without a routing table, these are taken for the local network; everything else leaves.
# (Not ipaddress's is_private, which also counts the documentation and benchmark ranges.)
INTERNAL_RANGES = tuple(ipaddress.ip_network(n) for n in (
    "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "169.254.0.0/16", "fc00::/7", "fe80::/10"))


def by_range(address: str) -> Destination:
    """The destination from the address alone: loopback, internal ranges, or out."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return Destination.NONE
    if ip.is_loopback:
        return Destination.LOOPBACK
    if any(ip in net for net in INTERNAL_RANGES):
        return Destination.LAN
    return Destination.EGRESS


ALLOWED_CACHE = 4096  # addresses whose answer is remembered (a host talks to few; a scan is cleared)


class EgressPolicy:
    def __init__(self, allowlist: list[str] | None = None) -> None:
        self.allowlist = [ipaddress.ip_network(net, strict=False) for net in allowlist or []]
        self._allowed: dict[str, bool] = {}  # parsing an address costs more than the rest of a connect

    def allowed(self, address: str) -> bool:
        answer = self._allowed.get(address)
        if answer is None:
            if len(self._allowed) >= ALLOWED_CACHE:
                self._allowed.clear()
            answer = self._allowed[address] = self._allowed_now(address)
        return answer

    def _allowed_now(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return True
        return any(ip in net for net in self.allowlist)

    def judge(self, address: str, route: str, route_by_range: bool) -> Verdict:
        """The probe's routing verdict (or the address ranges, without one) under the allowlist."""
        if route in _DESTINATIONS:
            if type(route_by_range) is bool:  # nearly always: one of the few verdicts there are, made once
                return _VERDICTS[route, self.allowed(address), route_by_range]
            return Verdict(Destination(route), self.allowed(address), route_by_range)
        return Verdict(by_range(address), self.allowed(address), True)


_DESTINATIONS = frozenset(d.value for d in Destination)
_VERDICTS = {(d.value, allowed, ranged): Verdict(d, allowed, ranged)
             for d in Destination for allowed in (False, True) for ranged in (False, True)}
# A destination as the plain text facts carry (Destination.value is a property: slower to read).
DESTINATION_TEXT: dict[Destination, str] = {d: d.value for d in Destination}
