"""Where a connection goes, from the routing table of the connecting process's network namespace.

The probe asks the kernel the question the kernel itself answered for the connection
(RTM_GETROUTE for the destination, in the process's own namespace: a container or a
sandbox has routes of its own) at event time, and the verdict travels in the frame. So the
aggregator needs no privileges and never reads this host's routes, and a capture analysed
on another host, or after the namespace is gone, gives the verdicts the live agent gave.

One netlink socket per namespace, opened the first time the namespace is seen while a
process in it is alive (through /proc/PID/ns/net: CAP_SYS_PTRACE to open it, CAP_SYS_ADMIN to
enter it): a socket belongs to the namespace it was created in, so later lookups need
neither the process nor a capability. When a namespace cannot be entered, the address
ranges decide and the verdict says so (`by_range`); such guesses are never cached.
"""

from __future__ import annotations

import ctypes
import errno
import ipaddress
import os
import socket
import struct
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

from sensor.classify.egress import Destination, by_range
from sensor.probe.settled import SCOPE_NETNS, Settled

CLONE_NEWNET = 0x40000000
RTM_NEWROUTE, RTM_GETROUTE = 24, 26
NLMSG_ERROR = 2
NLM_F_REQUEST = 1
RTA_DST, RTA_GATEWAY, RTA_MULTIPATH, RTA_VIA = 1, 5, 9, 18
RTN_UNICAST, RTN_LOCAL = 1, 2
_NLMSG = struct.Struct("=IHHII")  # length, type, flags, seq, pid
_RTMSG = struct.Struct("=BBBBBBBBI")  # family, dst_len, src_len, tos, table, protocol, scope, type, flags
_RTATTR = struct.Struct("=HH")
CACHE_SIZE = 4096
CACHE_TTL_NS = 60 * 1_000_000_000
MAX_NAMESPACES = 256
REPLY_TIMEOUT_S = 1.0

_libc = ctypes.CDLL(None, use_errno=True)


def own_netns() -> int:
    return os.stat("/proc/self/ns/net").st_ino


def _netlink_socket() -> socket.socket:
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
    sock.settimeout(REPLY_TIMEOUT_S)
    sock.bind((0, 0))
    return sock


def socket_in_namespace(ns_path: str, expect_inode: int) -> socket.socket:
    """A netlink socket created inside the namespace at `ns_path` (if it is `expect_inode`).

    setns(CLONE_NEWNET) moves only the calling thread, so a short-lived thread enters the
    namespace, makes the socket there and ends; the probe's own threads never move."""
    fd = os.open(ns_path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if os.fstat(fd).st_ino != expect_inode:
            raise OSError(errno.ESRCH, "the process left that namespace")
        made: list[socket.socket | OSError] = []

        def enter() -> None:
            if _libc.setns(fd, CLONE_NEWNET) != 0:
                made.append(OSError(ctypes.get_errno(), "setns"))
                return
            try:
                made.append(_netlink_socket())
            except OSError as exc:
                made.append(exc)

        thread = threading.Thread(target=enter, name="probe-netns")
        thread.start()
        thread.join()
    finally:
        os.close(fd)
    result = made[0]
    if isinstance(result, OSError):
        raise result
    return result


def _request(ip: ipaddress.IPv4Address | ipaddress.IPv6Address, seq: int) -> bytes:
    family = socket.AF_INET if ip.version == 4 else socket.AF_INET6
    dst = ip.packed
    attr = _RTATTR.pack(_RTATTR.size + len(dst), RTA_DST) + dst
    body = _RTMSG.pack(family, len(dst) * 8, 0, 0, 0, 0, 0, 0, 0) + attr
    return _NLMSG.pack(_NLMSG.size + len(body), RTM_GETROUTE, NLM_F_REQUEST, seq, 0) + body


def parse_reply(data: bytes, seq: int) -> Destination | None:
    """The destination a RTM_GETROUTE reply says; None when it is not the reply to `seq`."""
    offset = 0
    while offset + _NLMSG.size <= len(data):
        length, kind, _, got_seq, _ = _NLMSG.unpack_from(data, offset)
        if length < _NLMSG.size:
            return None
        if got_seq == seq:
            body = data[offset + _NLMSG.size : offset + length]
            if kind == NLMSG_ERROR:
                return Destination.UNREACHABLE  # ENETUNREACH, EHOSTUNREACH, EACCES (prohibit)...
            if kind == RTM_NEWROUTE and len(body) >= _RTMSG.size:
                return _destination(body)
        offset += (length + 3) & ~3
    return None


def _destination(body: bytes) -> Destination:
    route_type = _RTMSG.unpack_from(body, 0)[7]
    if route_type == RTN_LOCAL:
        return Destination.LOCAL
    if route_type != RTN_UNICAST:
        return Destination.UNREACHABLE  # blackhole, unreachable, prohibit, throw
    offset = _RTMSG.size
    while offset + _RTATTR.size <= len(body):
        length, kind = _RTATTR.unpack_from(body, offset)
        if length < _RTATTR.size:
            break
        if kind in (RTA_GATEWAY, RTA_VIA, RTA_MULTIPATH):
            return Destination.EGRESS
        offset += (length + 3) & ~3
    return Destination.LAN


@dataclass
class RouteStats:
    lookups: int = 0  # questions put to a routing table
    by_range: int = 0  # namespaces that could not be entered: decided by address ranges
    namespaces: int = 0  # namespaces with a socket open now


class Router:
    """Route verdicts per (namespace, address), answered by that namespace's own table."""

    def __init__(self) -> None:
        self.own = own_netns()
        self._sockets: OrderedDict[int, socket.socket] = OrderedDict()
        self._cache: OrderedDict[tuple[int, str], tuple[int, Destination]] = OrderedDict()
        self._seq = 0
        self.stats = RouteStats()
        self.settled = Settled()  # the kernel's copy of which namespaces have a socket (the probe's maps)

    def close(self) -> None:
        for sock in self._sockets.values():
            sock.close()
        self._sockets.clear()
        self.stats.namespaces = 0

    def prepare(self, netns: int, pid: int) -> None:
        """Open the namespace's socket while a process in it is alive (its first sighting)."""
        if netns and netns not in self._sockets and self._socket(netns, pid) is not None:
            self.settled.scope(SCOPE_NETNS, netns)

    def route(self, address: str, netns: int = 0, pid: int = 0) -> tuple[Destination, bool]:
        """(destination, decided by address ranges) for a connection to `address`; remembered by
        the address as given, so a repeated one costs neither a lookup nor a parse."""
        key = (netns or self.own, address)
        now = time.monotonic_ns()
        cached = self._cache.get(key)
        if cached is not None and now - cached[0] < CACHE_TTL_NS:
            self._cache.move_to_end(key)
            return cached[1], False
        destination, by_range = self._route(address, key[0], pid)
        if not by_range:
            self._cache[key] = (now, destination)
            if len(self._cache) > CACHE_SIZE:
                self._cache.popitem(last=False)
        return destination, by_range

    def _route(self, address: str, netns: int, pid: int) -> tuple[Destination, bool]:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return Destination.NONE, False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped  # a dual-stack socket's view of an IPv4 peer
        if ip.is_loopback:
            return Destination.LOOPBACK, False
        sock = self._socket(netns, pid)
        if sock is None:
            self.stats.by_range += 1
            return by_range(str(ip)), True
        return self._ask(sock, ip), False

    def _ask(self, sock: socket.socket, ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> Destination:
        self.stats.lookups += 1
        self._seq = (self._seq + 1) & 0xFFFFFFFF
        try:
            sock.send(_request(ip, self._seq))
            while True:
                answer = parse_reply(sock.recv(65536), self._seq)
                if answer is not None:
                    return answer
        except OSError:  # includes the reply timeout
            return Destination.UNREACHABLE

    def _socket(self, netns: int, pid: int) -> socket.socket | None:
        sock = self._sockets.get(netns)
        if sock is not None:
            self._sockets.move_to_end(netns)
            return sock
        try:
            if netns == self.own:
                sock = _netlink_socket()
            elif pid:
                sock = socket_in_namespace(f"/proc/{pid}/ns/net", netns)
        except OSError:
            sock = None
        if sock is None:
            return None
        self._sockets[netns] = sock
        if len(self._sockets) > MAX_NAMESPACES:
            gone, gone_sock = self._sockets.popitem(last=False)
            gone_sock.close()
            self.settled.forget_scope(SCOPE_NETNS, gone)
        self.stats.namespaces = len(self._sockets)
        return sock
