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

A tunnel found by behaviour (sensor/aggregator/relay.py) is known only once bytes have gone
through it: by then the session its first connection brought in is running. So the local
connections of every relay candidate (a process holding an outward connection) are joined the
same way, untainted, and the sessions they brought in are remembered per candidate; when the
candidate turns out to be a tunnel, `taint_late` gives those sessions, and all they started,
the tunnel's scope.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict
from dataclasses import dataclass
from typing import TypeVar

from sensor import events as ev
from sensor.aggregator.process_table import Process, ProcessTable, ProcKey

Endpoint = tuple[int, str, int]  # (netns, address, port)
V = TypeVar("V")
MAX_PENDING = 4096
MAX_HANDOVERS = 64  # per listener: accepted connections waiting for their child
MAX_SESSIONS = 64  # per relay candidate: the sessions its local connections brought in
Link = tuple[frozenset[str], ProcKey | None]  # the scopes a connection carries, and the candidate that made it


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
    linked: int = 0  # sessions brought in by a relay candidate's local connection, remembered
    handed_over_late: int = 0  # processes given a tunnel's scope when the tunnel was found after them


class TunnelTaint:
    def __init__(self, ttl_ns: int = 60 * 1_000_000_000) -> None:
        self.ttl_ns = ttl_ns
        self._connections: OrderedDict[Endpoint, tuple[Link, int]] = OrderedDict()  # tunnels' own
        self._candidates: OrderedDict[Endpoint, tuple[Link, int]] = OrderedDict()  # relay candidates'
        self._accepts: OrderedDict[Endpoint, tuple[int, int]] = OrderedDict()  # -> (listener pid, ts)
        # listener pid -> what each accepted connection brings to its next children, in order
        self._handover: dict[int, list[tuple[Link, int]]] = {}
        self._sessions: OrderedDict[ProcKey, list[ProcKey]] = OrderedDict()  # candidate -> sessions
        self.stats = TaintStats()

    def on_tcp(self, process: Process, event: ev.TcpEstablished, destination: str,
               candidate: ProcKey | None = None) -> None:
        """A connection to this host made by a tunnel's process, or by a relay candidate
        (`candidate`: its relay group, which a later taint_late names)."""
        if destination not in ("loopback", "local") or not (process.tunnel_scopes or candidate):
            return
        if process.tunnel_scopes:
            self.stats.connections += 1
        source = (event.netns, _normal(event.saddr), event.sport)
        link: Link = (process.tunnel_scopes, candidate)
        accepted = self._accepts.pop(source, None)
        if accepted is not None:
            self._hand_over(accepted[0], link, event.ts)
            return
        self._put(self._connections if process.tunnel_scopes else self._candidates, source, (link, event.ts))

    def on_accept(self, listener: Process, event: ev.Accept) -> frozenset[str] | None:
        """An accepted connection; the tunnel scopes it brings in, if it came from a tunnel."""
        if event.fd < 0 or event.family not in ("inet", "inet6"):
            return None
        peer = (event.netns, _normal(event.address), event.port)
        found = self._connections.pop(peer, None) or self._candidates.pop(peer, None)
        if found is None:
            self._put(self._accepts, peer, (listener.pid, event.ts))
            return None
        self._hand_over(listener.pid, found[0], event.ts)
        return found[0][0] or None

    def on_fork(self, parent_pid: int, child: Process) -> None:
        """The listener's next child serves the tunnelled connection."""
        waiting = self._handover.get(parent_pid)
        if not waiting:
            return
        (scopes, candidate), ts = waiting.pop(0)
        if not waiting:
            del self._handover[parent_pid]
        if not 0 <= child.start_ns - ts <= self.ttl_ns:
            return
        if scopes:
            child.tunnel_scopes = child.tunnel_scopes | scopes
            self.stats.handed_over += 1
        if candidate is not None:
            sessions = self._sessions.setdefault(candidate, [])
            sessions.append(child.key)
            del sessions[:-MAX_SESSIONS]
            self._sessions.move_to_end(candidate)
            self.stats.linked += 1
            while len(self._sessions) > MAX_PENDING:
                self._sessions.popitem(last=False)
                self.stats.dropped += 1

    def taint_late(self, candidate: ProcKey, scopes: frozenset[str], table: ProcessTable) -> list[Process]:
        """A relay candidate is a tunnel after all: the sessions its connections brought in, and
        everything they started, get its scopes, as do its connections still waiting for their
        accept or their child. Returns the processes that got them."""
        given: list[Process] = []
        for session in self._sessions.pop(candidate, []):
            proc = table.get(session)
            if proc is None:
                continue
            for p in (proc, *table.descendants(session)):
                if not scopes <= p.tunnel_scopes:
                    p.tunnel_scopes = p.tunnel_scopes | scopes
                    given.append(p)
        for endpoint, ((old, who), ts) in list(self._candidates.items()):
            if who == candidate:
                del self._candidates[endpoint]
                self._connections[endpoint] = ((old | scopes, who), ts)
        for waiting in self._handover.values():
            for n, ((old, who), ts) in enumerate(waiting):
                if who == candidate:
                    waiting[n] = ((old | scopes, who), ts)
        self.stats.handed_over_late += len(given)
        return given

    def _hand_over(self, listener_pid: int, link: Link, ts: int) -> None:
        if link[0]:
            self.stats.matched += 1
        waiting = self._handover.setdefault(listener_pid, [])
        waiting.append((link, ts))
        if len(waiting) > MAX_HANDOVERS:
            waiting.pop(0)
            self.stats.dropped += 1

    def _put(self, table: OrderedDict[Endpoint, tuple[V, int]], key: Endpoint, value: tuple[V, int]) -> None:
        table[key] = value
        self.expire(value[1])
        while len(table) > MAX_PENDING:
            table.popitem(last=False)
            self.stats.dropped += 1

    def expire(self, now: int) -> None:
        for table in (self._connections, self._candidates, self._accepts):
            while table:
                key, (_, ts) = next(iter(table.items()))
                if now - ts <= self.ttl_ns:
                    break
                del table[key]
                self.stats.expired += 1
        for pid, waiting in list(self._handover.items()):
            fresh = [(link, ts) for link, ts in waiting if now - ts <= self.ttl_ns]
            self.stats.expired += len(waiting) - len(fresh)
            if fresh:
                self._handover[pid] = fresh
            else:
                del self._handover[pid]
