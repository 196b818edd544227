"""The probe's netlink route answers, parsed from replies built as the kernel lays them out."""

from __future__ import annotations

import ipaddress
import socket
import struct

from sensor.classify.egress import Destination
from sensor.probe import routes
from sensor.probe.routes import Router, parse_reply


def reply(route_type: int, *attrs: tuple[int, bytes], seq: int = 7, kind: int = routes.RTM_NEWROUTE) -> bytes:
    body = routes._RTMSG.pack(socket.AF_INET, 32, 0, 0, 254, 0, 0, route_type, 0)
    for attr_type, value in attrs:
        attr = routes._RTATTR.pack(routes._RTATTR.size + len(value), attr_type) + value
        body += attr + b"\0" * (-len(attr) % 4)
    return routes._NLMSG.pack(routes._NLMSG.size + len(body), kind, 0, seq, 0) + body


def error(code: int, seq: int = 7) -> bytes:
    body = struct.pack("=i", -code) + routes._NLMSG.pack(16, routes.RTM_GETROUTE, 1, seq, 0)
    return routes._NLMSG.pack(routes._NLMSG.size + len(body), routes.NLMSG_ERROR, 0, seq, 0) + body


DST = (routes.RTA_DST, socket.inet_aton("198.51.100.1"))


def test_a_route_through_a_gateway_is_egress() -> None:
    assert parse_reply(reply(routes.RTN_UNICAST, DST, (routes.RTA_GATEWAY, socket.inet_aton("203.0.113.2"))),
                       7) is Destination.EGRESS
    assert parse_reply(reply(routes.RTN_UNICAST, DST, (routes.RTA_VIA, b"\x02\x00" + bytes(4))), 7) \
        is Destination.EGRESS


def test_local_direct_and_refused_routes() -> None:
    assert parse_reply(reply(routes.RTN_LOCAL, DST), 7) is Destination.LOCAL
    assert parse_reply(reply(routes.RTN_UNICAST, DST, (4, struct.pack("=I", 2))), 7) is Destination.LAN  # RTA_OIF
    assert parse_reply(reply(6, DST), 7) is Destination.UNREACHABLE  # RTN_BLACKHOLE
    assert parse_reply(error(101), 7) is Destination.UNREACHABLE  # ENETUNREACH: no route at all


def test_a_reply_to_another_question_is_not_the_answer() -> None:
    assert parse_reply(reply(routes.RTN_LOCAL, DST, seq=6), 7) is None
    stale_then_answer = reply(routes.RTN_LOCAL, DST, seq=6) + reply(routes.RTN_UNICAST, DST, seq=7)
    assert parse_reply(stale_then_answer, 7) is Destination.LAN
    assert parse_reply(b"\x01\x00", 7) is None  # shorter than a header


def test_the_request_asks_for_exactly_the_destination() -> None:
    request = routes._request(ipaddress.ip_address("198.51.100.1"), 9)
    length, kind, flags, seq, _ = routes._NLMSG.unpack_from(request)
    assert (length, kind, flags, seq) == (len(request), routes.RTM_GETROUTE, routes.NLM_F_REQUEST, 9)
    family, dst_len = routes._RTMSG.unpack_from(request, routes._NLMSG.size)[:2]
    assert (family, dst_len) == (socket.AF_INET, 32)
    assert request.endswith(socket.inet_aton("198.51.100.1"))


def test_loopback_and_non_ip_need_no_table() -> None:
    router = Router()
    try:
        assert router.route("127.0.0.1") == (Destination.LOOPBACK, False)
        assert router.route("::ffff:127.0.0.1") == (Destination.LOOPBACK, False)  # a dual-stack socket's view
        assert router.route("/run/x.sock") == (Destination.NONE, False)
        assert router.stats.lookups == 0
    finally:
        router.close()


def test_a_namespace_that_cannot_be_entered_is_judged_by_ranges_and_not_cached() -> None:
    router = Router()
    try:
        foreign = router.own + 1  # no process given to enter it through
        assert router.route("10.1.2.3", foreign) == (Destination.LAN, True)
        assert router.route("10.1.2.3", foreign) == (Destination.LAN, True)
        assert router.stats.by_range == 2
    finally:
        router.close()
