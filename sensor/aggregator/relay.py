"""Tunnels by behaviour: a process that relays bytes between an outward connection and this host.

Whatever its name and argv, a reverse tunnel does one thing the kernel sees: it holds a
connection out of the host, and, within the same process, opens connections to local listening
services (loopback or this host's own addresses) and moves bytes between the two: what comes in
from outside goes to the local service, and what the service answers goes out. A forward tunnel
(kubectl port-forward, ssh -L's own process) is the mirror image: it accepts local clients and
moves their bytes through an outward connection.

Per relay group (a process that exec'd, with its forked children that did not: DESIGN.md,
identity follows fork), this keeps its outward connections, its connections to local services,
the local clients it accepted, and each socket's byte counts (SockBytes frames, every second).
A group relays when, since its first local connection, its outward connections carried at least
what went to and came from the local side (within RATIO_MIN..RATIO_MAX, plus a protocol slack),
and each direction on the local side moved at least FLOOR_BYTES. Processes whose *children* make
the local connections (a CI runner and its tests) are separate groups: no relay.

What it cannot see (docs/threat-model.md): a relay that pads or delays bytes beyond the ratios, UDP
and QUIC tunnels (only TCP is counted), and a relay split across two processes that pass the bytes
through a pipe or a UNIX socket.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from sensor import events as ev
from sensor.aggregator.process_table import Process, ProcKey

FLOOR_BYTES = 1024  # each way on the local side, before a relay is called one
RATIO_MIN, RATIO_MAX = 0.5, 4.0  # outward bytes per local byte (encryption and framing add, never halve)
SLACK_BYTES = 16 * 1024  # outward bytes the relay's own protocol may add (keep-alives, channel set-up)
MAX_SOCKETS = 65536  # sockets followed at once; the oldest go first, counted
READINGS_KEPT = 16  # per outward socket: 16 s of readings
MAX_LOCAL_PER_GROUP = 256  # local connections kept per group (the sum goes on; only the list is capped)
# Byte counts of a socket not (yet) followed: the probe reads the counts on a timer and the
# connection's record comes through a ring, so a socket's first row may arrive first. Kept this
# long (in the rows' own time), at most this many, for the record to catch up.
EARLY_TTL_NS = 30 * 1_000_000_000
MAX_EARLY = 4096
OUTWARD = ("egress", "lan")
LOCAL = ("loopback", "local")


@dataclass(slots=True)
class Socket:
    """One TCP connection of a relay group, and its byte totals as the last SockBytes row gave them."""

    group: ProcKey
    # "outward" (it connected out), "service" (it connected to a local service), "client" (it
    # accepted a client on this host)
    role: str
    address: str
    port: int
    destination: str  # the route verdict of the far end: egress, lan, loopback, local
    opened_ts: int
    sent: int = 0
    received: int = 0
    closed: bool = False
    # an outward socket's last readings (read time, sent, received): its totals as they were when a
    # local connection opened, whichever came first downstream
    readings: list[tuple[int, int, int]] = field(default_factory=list)


@dataclass(slots=True)
class Group:
    """A relay group's connections; `baseline`: an outward socket's totals when the first local
    connection opened (what it carried before is the tunnel's own set-up, not relayed bytes)."""

    key: ProcKey
    outward: list[int] = field(default_factory=list)
    local: list[int] = field(default_factory=list)  # service and client sockets, oldest first
    baseline: dict[int, tuple[int, int]] = field(default_factory=dict)
    reported: bool = False


@dataclass(frozen=True, slots=True)
class Relay:
    """A relay found: what the TunnelFact says."""

    group: ProcKey
    reverse: bool  # it connected to local services (a reverse tunnel); else it accepted local clients
    outward_address: str
    outward_port: int
    destination: str
    local_services: tuple[str, ...]  # "127.0.0.1:22", or the local clients' listening address
    to_local: int  # bytes sent to the local side
    from_local: int  # bytes received from it
    outward_sent: int  # outward bytes since the first local connection
    outward_received: int


@dataclass
class RelayStats:
    sockets: int = 0  # sockets followed
    evicted: int = 0  # followed sockets forgotten at the cap
    unknown_rows: int = 0  # rows never matched to a followed socket (opened before the agent, not relayable, evicted)
    early_rows: int = 0  # rows that came before their socket's record, and were matched when it came
    relays: int = 0
    not_counted: int = 0  # the kernel's own: sends and receives its map had no room for
    closed_lost: int = 0


def is_local_peer(address: str, local_address: str) -> bool:
    """An accepted client on this host: a loopback peer, or one from the service's own address."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback or (bool(local_address) and address == local_address)


class RelayDetector:
    """Follows the sockets of every relay group; `on_bytes` says which groups now relay."""

    def __init__(self, group_of: Callable[[Process], ProcKey]) -> None:
        self._group_of = group_of
        self._sockets: OrderedDict[int, Socket] = OrderedDict()
        self._groups: dict[ProcKey, Group] = {}
        self._early: OrderedDict[int, tuple[int, int, bool, int]] = OrderedDict()  # sock -> sent, received, closed, ts
        self.stats = RelayStats()

    def on_tcp(self, process: Process, event: ev.TcpEstablished, destination: str) -> Relay | None:
        """An outbound connection: outward, or to a local service. A relay, when the counts that came
        ahead of this record complete one."""
        if not event.sock:
            return None
        if destination in OUTWARD:
            return self._follow(process, event.sock, "outward", event.daddr, event.dport, destination, event.ts)
        if destination in LOCAL:
            return self._follow(process, event.sock, "service", event.daddr, event.dport, destination, event.ts)
        return None

    def on_accept(self, process: Process, event: ev.Accept) -> Relay | None:
        """An accepted connection from a client on this host (a forward tunnel's listener takes them)."""
        if event.sock and event.fd >= 0 and is_local_peer(event.address, event.local_address):
            return self._follow(process, event.sock, "client", event.local_address, event.local_port, "loopback",
                                event.ts)
        return None

    def _follow(self, process: Process, sock: int, role: str, address: str, port: int, destination: str,
                ts: int) -> Relay | None:
        key = self._group_of(process)
        group = self._groups.get(key)
        if group is None:
            group = self._groups[key] = Group(key)
        self._sockets[sock] = Socket(key, role, address, port, destination, ts)
        self.stats.sockets += 1
        if role == "outward":
            group.outward.append(sock)
        else:
            if not group.local:  # the first local connection: what the outward ones carried so far is set-up
                group.baseline = {s: self._totals_at(s, ts) for s in group.outward}
            group.local.append(sock)
            del group.local[:-MAX_LOCAL_PER_GROUP]
        while len(self._sockets) > MAX_SOCKETS:
            old, gone = self._sockets.popitem(last=False)
            self._forget(old, gone)
            self.stats.evicted += 1
        early = self._early.pop(sock, None)
        if early is None:
            return None
        self.stats.early_rows += 1
        followed = self._sockets[sock]
        followed.sent, followed.received, followed.closed = early[0], early[1], early[2]
        return self._report(group)

    def _totals_at(self, sock: int, ts: int) -> tuple[int, int]:
        """An outward socket's totals at the last reading before `ts`."""
        s = self._sockets.get(sock)
        before = [(sent, received) for read_ts, sent, received in (s.readings if s else []) if read_ts <= ts]
        return before[-1] if before else (0, 0)

    def on_bytes(self, event: ev.SockBytes) -> list[Relay]:
        """New totals; the relays found now (each group once)."""
        self.stats.not_counted, self.stats.closed_lost = event.not_counted, event.closed_lost
        touched: dict[ProcKey, None] = {}
        for sock, _tgid, sent, received, _last_ts, closed in event.rows:
            s = self._sockets.get(sock)
            if s is None:
                self._keep_early(sock, (sent, received, bool(closed), event.ts))
                continue
            s.sent, s.received, s.closed = sent, received, bool(closed)
            if s.role == "outward":
                s.readings.append((event.ts, sent, received))
                del s.readings[:-READINGS_KEPT]
            touched[s.group] = None
        self._expire_early(event.ts)
        found = []
        for key in touched:
            group = self._groups.get(key)
            relay = self._report(group) if group is not None else None
            if relay is not None:
                found.append(relay)
        return found

    def _report(self, group: Group) -> Relay | None:
        """The group's relay, the first time it is one."""
        if group.reported:
            return None
        relay = self._judge(group)
        if relay is not None:
            group.reported = True
            self.stats.relays += 1
        return relay

    def _keep_early(self, sock: int, row: tuple[int, int, bool, int]) -> None:
        self._early[sock] = row
        self._early.move_to_end(sock)
        while len(self._early) > MAX_EARLY:
            self._early.popitem(last=False)
            self.stats.unknown_rows += 1

    def _expire_early(self, now: int) -> None:
        while self._early:
            sock, row = next(iter(self._early.items()))
            if now - row[3] <= EARLY_TTL_NS:
                return
            del self._early[sock]
            self.stats.unknown_rows += 1

    def _judge(self, group: Group) -> Relay | None:
        """Whether the group's outward connections together carry what its local side moved: the
        services it connected to after its first outward connection opened (reverse), or else the
        local clients it accepted (forward). Together: a relay may open an outward connection per
        request, or carry many requests on one."""
        outward = [(sock, self._sockets[sock]) for sock in group.outward if sock in self._sockets]
        if not outward:
            return None
        local = [self._sockets[s] for s in group.local if s in self._sockets]
        first_out = min(out.opened_ts for _, out in outward)
        services = [s for s in local if s.role == "service" and s.opened_ts >= first_out]
        clients = [s for s in local if s.role == "client"]
        carried = {sock: (out.sent - group.baseline.get(sock, (0, 0))[0],
                          out.received - group.baseline.get(sock, (0, 0))[1]) for sock, out in outward}
        out_sent = sum(sent for sent, _ in carried.values())
        out_received = sum(received for _, received in carried.values())
        for reverse, side in ((True, services), (False, clients)):
            to_local = sum(s.sent for s in side)
            from_local = sum(s.received for s in side)
            if to_local < FLOOR_BYTES or from_local < FLOOR_BYTES:
                continue
            if _carries(out_received, to_local) and _carries(out_sent, from_local):
                busiest = self._sockets[max(carried, key=lambda sock: sum(carried[sock]))]
                return Relay(group.key, reverse, busiest.address, busiest.port, busiest.destination, _services(side),
                             to_local, from_local, out_sent, out_received)
        return None

    def is_candidate(self, key: ProcKey) -> bool:
        """The group holds an outward connection: its local connections may turn out to be relayed."""
        group = self._groups.get(key)
        return group is not None and bool(group.outward)

    def forget(self, key: ProcKey) -> None:
        """A process gone from the table: its group and sockets go too."""
        group = self._groups.pop(key, None)
        if group is not None:
            for sock in (*group.outward, *group.local):
                self._sockets.pop(sock, None)

    def _forget(self, sock: int, gone: Socket) -> None:
        group = self._groups.get(gone.group)
        if group is None:
            return
        for held in (group.outward, group.local):
            if sock in held:
                held.remove(sock)
        if not group.outward and not group.local:
            del self._groups[gone.group]


def _carries(outward: int, local: int) -> bool:
    """The outward connection carried the local side's bytes: no fewer than RATIO_MIN of them, no
    more than RATIO_MAX of them plus the protocol's slack."""
    return RATIO_MIN * local <= outward <= RATIO_MAX * local + SLACK_BYTES


def _services(local: list[Socket]) -> tuple[str, ...]:
    seen: dict[str, None] = {}
    for s in local:
        seen[f"[{s.address}]:{s.port}" if ":" in s.address else f"{s.address}:{s.port}"] = None
    return tuple(seen)
