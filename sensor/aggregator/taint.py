"""Tunnel taint: what comes back into the host through a tunnel belongs to the tunnel's scope.

In the ROME chain the miner is often started from a shell that came back in through the
reverse tunnel: outside the agent's process tree and cgroup. The kernel sees the join:
1. the tunnel's process (ssh -R, which carries the tunnel's scope label) connects to a local
   listener, say 127.0.0.1:22; TCP establishment gives its source port;
2. the listener (sshd) accepts a connection whose peer is that address and port;
3. the listener's next child (sshd's per-connection process) serves it: it, and everything
   it starts, gets the tunnel's scope.
Steps 1 and 2 usually arrive in that order but may not, so both sides wait for the other.
Everything pending expires after `ttl_ns` and is capped in size, with counters.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict
from dataclasses import dataclass
from typing import TypeVar

from sensor import events as ev
from sensor.aggregator.process_table import Process

Endpoint = tuple[int, str, int]  # (netns, address, port)
V = TypeVar("V")
MAX_PENDING = 4096


def _normal(address: str) -> str:
    """::ffff:127.0.0.1 (a dual-stack listener's view) is 127.0.0.1."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


@dataclass
class TaintStats:
    connections: int = 0  # tunnel connections to a local listener seen
    matched: int = 0  # of those, matched to the process that accepted them
    handed_over: int = 0  # sessions that got a tunnel's scope
    expired: int = 0
    dropped: int = 0  # pending entries dropped at the cap


class TunnelTaint:
    def __init__(self, ttl_ns: int = 60 * 1_000_000_000) -> None:
        self.ttl_ns = ttl_ns
        self._connections: OrderedDict[Endpoint, tuple[frozenset[str], int]] = OrderedDict()
        self._accepts: OrderedDict[Endpoint, tuple[int, int]] = OrderedDict()  # -> (listener pid, ts)
        self._handover: dict[int, tuple[frozenset[str], int]] = {}  # listener pid -> scopes for its next child
        self.stats = TaintStats()

    def on_tcp(self, process: Process, event: ev.TcpEstablished, destination: str) -> None:
        """A connection made by a tunnel's process to this host."""
        if not process.tunnel_scopes or destination not in ("loopback", "local"):
            return
        self.stats.connections += 1
        source = (event.netns, _normal(event.saddr), event.sport)
        accepted = self._accepts.pop(source, None)
        if accepted is not None:
            self._hand_over(accepted[0], process.tunnel_scopes, event.ts)
            return
        self._put(self._connections, source, (process.tunnel_scopes, event.ts))

    def on_accept(self, listener: Process, event: ev.Accept) -> frozenset[str] | None:
        """An accepted connection; the tunnel scopes it brings in, if it came from a tunnel."""
        if event.fd < 0 or event.family not in ("inet", "inet6"):
            return None
        peer = (event.netns, _normal(event.address), event.port)
        found = self._connections.pop(peer, None)
        if found is None:
            self._put(self._accepts, peer, (listener.pid, event.ts))
            return None
        self._hand_over(listener.pid, found[0], event.ts)
        return found[0]

    def on_fork(self, parent_pid: int, child: Process) -> None:
        """The listener's next child serves the tunnelled connection."""
        handover = self._handover.pop(parent_pid, None)
        if handover is not None and 0 <= child.start_ns - handover[1] <= self.ttl_ns:
            child.tunnel_scopes = child.tunnel_scopes | handover[0]
            self.stats.handed_over += 1

    def _hand_over(self, listener_pid: int, scopes: frozenset[str], ts: int) -> None:
        self.stats.matched += 1
        self._handover[listener_pid] = (scopes, ts)

    def _put(self, table: OrderedDict[Endpoint, tuple[V, int]], key: Endpoint, value: tuple[V, int]) -> None:
        table[key] = value
        self.expire(value[1])
        while len(table) > MAX_PENDING:
            table.popitem(last=False)
            self.stats.dropped += 1

    def expire(self, now: int) -> None:
        for table in (self._connections, self._accepts):
            while table:
                key, (_, ts) = next(iter(table.items()))
                if now - ts <= self.ttl_ns:
                    break
                del table[key]
                self.stats.expired += 1
        for pid, (_, ts) in list(self._handover.items()):
            if now - ts > self.ttl_ns:
                del self._handover[pid]
                self.stats.expired += 1
