"""The tunnel tools read by their own grammars beyond ssh: wstunnel, gost, rathole, iodine (DNS),
ptunnel-ng (ICMP), dropbear's dbclient and PuTTY's plink. Command lines from the tools' own
documentation, their spellings as each parser accepts them, renamed binaries, hostile argv."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sensor.classify.binaries import TOOLS
from sensor.classify.tunnel import Direction, Forward, Tunnel, classify_tunnel, tool_of
from sensor.probe.identity import BinaryIdentity, How, Identity

R, L, D, RD, RELAY = (Direction.REVERSE, Direction.LOCAL, Direction.DYNAMIC, Direction.REVERSE_DYNAMIC,
                      Direction.RELAY)
NEW_TOOLS = ["wstunnel", "gost", "rathole", "iodine", "ptunnel-ng", "dbclient", "dropbearmulti", "plink"]


def fwd(direction: Direction, listen: str = "", port: int = 0, target: str = "", target_port: int = 0, *,
        spec: str, listen_path: str = "") -> Forward:
    return Forward(direction, listen, port, target, target_port, listen_path, "", spec)


def classify(*args: str, known_tool: str | None = None) -> Tunnel | None:
    return classify_tunnel([arg.encode() for arg in args], b"", known_tool)


CASES = [
    # wstunnel 7+: -L/-R `scheme://[BIND:]PORT:HOST:PORT`, the server as ws[s]/http[s]/wts URL
    (["wstunnel", "client", "-R", "tcp://2222:localhost:22", "wss://tunnel.example.com"],
     Tunnel("wstunnel", "tunnel.example.com", "", 443, (
         fwd(R, "127.0.0.1", 2222, "localhost", 22, spec="tcp://2222:localhost:22"),))),
    (["wstunnel", "client", "-L", "socks5://127.0.0.1:8888", "--connection-min-idle", "5", "wss://203.0.113.5:8443"],
     Tunnel("wstunnel", "203.0.113.5", "", 8443, (fwd(D, "127.0.0.1", 8888, spec="socks5://127.0.0.1:8888"),))),
    (["wstunnel", "client", "-L", "udp://51820:localhost:51820?timeout_sec=0", "wss://vpn.example.com:443"],
     Tunnel("wstunnel", "vpn.example.com", "", 443, (
         fwd(L, "127.0.0.1", 51820, "localhost", 51820, spec="udp://51820:localhost:51820?timeout_sec=0"),))),
    (["wstunnel", "client", "wss://203.0.113.5", "--remote-to-local=socks5://[::1]:1212",
      "-R", "unix:///tmp/w.sock:localhost:22", "-R", "stdio://h:22", "-R", "tproxy+tcp://1:2"],
     Tunnel("wstunnel", "203.0.113.5", "", 443, (
         fwd(RD, "::1", 1212, spec="socks5://[::1]:1212"),
         fwd(R, "", 0, "localhost", 22, listen_path="/tmp/w.sock", spec="unix:///tmp/w.sock:localhost:22")))),
    (["wstunnel", "--log-lvl", "INFO", "client", "-R", "tcp://0.0.0.0:9000:[::1]:22", "wts://198.51.100.4"],
     Tunnel("wstunnel", "198.51.100.4", "", 443, (
         fwd(R, "0.0.0.0", 9000, "::1", 22, spec="tcp://0.0.0.0:9000:[::1]:22"),))),
    # the Haskell versions: no subcommand, -L without a scheme, -D for SOCKS
    (["wstunnel", "-L", "1080:localhost:22", "-D", "8888", "wss://old.example"],
     Tunnel("wstunnel", "old.example", "", 443, (fwd(L, "127.0.0.1", 1080, "localhost", 22, spec="1080:localhost:22"),
                                                 fwd(D, "127.0.0.1", 8888, spec="8888")))),
    # gost: -L services and -F hops (Go flags: -L x, -L=x, --L x); rtcp/rudp through a chain
    (["gost", "-L=rtcp://:2222/192.168.1.1:22", "-F=socks5://203.0.113.5:1080"],
     Tunnel("gost", "203.0.113.5", "", 1080, (fwd(R, "", 2222, "192.168.1.1", 22, spec="rtcp://:2222/192.168.1.1:22"),))),
    (["gost", "-L", "rudp://:5353/192.168.1.1:53", "-F", "relay+wss://alice:pw@203.0.113.5:443", "-F", "socks5://h2:1"],
     Tunnel("gost", "203.0.113.5", "alice", 443, (
         fwd(R, "", 5353, "192.168.1.1", 53, spec="rudp://:5353/192.168.1.1:53"),))),
    (["gost", "--L", "tcp://:8080/10.0.0.5:80,10.0.0.6:80", "-F", "http2://203.0.113.5:443"],
     Tunnel("gost", "203.0.113.5", "", 443, (fwd(L, "", 8080, "10.0.0.5", 80, spec="tcp://:8080/10.0.0.5:80,10.0.0.6:80"),))),
    (["gost", "-L", ":8080", "-L", "socks5://127.0.0.1:1080", "-F", "quic://203.0.113.5:6121"],
     Tunnel("gost", "203.0.113.5", "", 6121, (fwd(D, "", 8080, spec=":8080"),
                                              fwd(D, "127.0.0.1", 1080, spec="socks5://127.0.0.1:1080")))),
    (["gost", "-L", "rtcp://:2222/:22"],  # no chain: rtcp listens here, as tcp does
     Tunnel("gost", "", "", 0, (fwd(L, "", 2222, "", 22, spec="rtcp://:2222/:22"),))),
    # rathole: config-file driven; a client (or a config whose section decides) exposes services
    (["rathole", "--client", "client.toml"], Tunnel("rathole", "", "", 0, (fwd(R, spec="client.toml"),))),
    (["rathole", "-c", "/etc/rathole/c.toml"], Tunnel("rathole", "", "", 0, (fwd(R, spec="/etc/rathole/c.toml"),))),
    (["rathole", "config.toml"], Tunnel("rathole", "", "", 0, (fwd(R, spec="config.toml"),))),
    # iodine: an IP tunnel over DNS; the far end reaches every port of this host
    (["iodine", "-f", "-P", "secretpassword", "t1.example.com"],
     Tunnel("iodine", "t1.example.com", "", 0, (fwd(RD, spec="t1.example.com"),))),
    (["iodine", "-f", "198.51.100.53", "t1.example.com", "-r"],  # glibc getopt permutes
     Tunnel("iodine", "t1.example.com", "", 0, (fwd(RD, spec="198.51.100.53 t1.example.com"),))),
    # ptunnel-ng: the client (-p) is a LOCAL forward through the ICMP proxy; the proxy a RELAY in
    (["ptunnel-ng", "-p203.0.113.5", "-l4000", "-r10.0.0.5", "-R2222"],
     Tunnel("ptunnel-ng", "203.0.113.5", "", 0, (fwd(L, "", 4000, "10.0.0.5", 2222, spec="4000 via 203.0.113.5"),))),
    # -r and -R take optional values: only joined; a separate one is an operand, and the defaults stay
    (["ptunnel-ng", "-p", "203.0.113.5", "-l", "4000", "-r", "10.0.0.5", "-R", "2222"],
     Tunnel("ptunnel-ng", "203.0.113.5", "", 0, (fwd(L, "", 4000, "127.0.0.1", 22, spec="4000 via 203.0.113.5"),))),
    (["ptunnel-ng", "--proxy=203.0.113.5", "--remote-adr=10.9.9.9", "--remote-p=2200", "--udp"],
     Tunnel("ptunnel-ng", "203.0.113.5", "", 0, (fwd(L, "", 2222, "10.9.9.9", 2200, spec="2222 via 203.0.113.5"),))),
    (["ptunnel-ng"], Tunnel("ptunnel-ng", "", "", 0, (fwd(RELAY, spec="proxy"),))),
    (["ptunnel-ng", "-r127.0.0.1", "-R22", "-v", "4"],
     Tunnel("ptunnel-ng", "", "", 0, (fwd(RELAY, "", 0, "127.0.0.1", 22, spec="proxy"),))),
    # dbclient: clustered letters, a value joined or next; options until the remote command
    (["dbclient", "-fNR", "9000:localhost:22", "alice@203.0.113.7/2222"],
     Tunnel("dbclient", "203.0.113.7", "alice", 2222, (fwd(R, "", 9000, "localhost", 22, spec="9000:localhost:22"),))),
    (["dbclient", "-N", "-R2222:localhost:22", "-p", "2200", "-l", "bob", "203.0.113.7"],
     Tunnel("dbclient", "203.0.113.7", "bob", 2200, (fwd(R, "", 2222, "localhost", 22, spec="2222:localhost:22"),))),
    (["dbclient", "-L8080:db:5432", "h", "-yR", "0.0.0.0:1:h:2", "uptime", "-R", "3:h:4"],
     Tunnel("dbclient", "h", "", 0, (fwd(L, "", 8080, "db", 5432, spec="8080:db:5432"),
                                     fwd(R, "0.0.0.0", 1, "h", 2, spec="0.0.0.0:1:h:2")))),
    (["dbclient", "-o", "Port=2022", "-R", "9000:localhost:22", "-R", "9001:h:99999", "-R", "x:h:2",
      "u1@hop1,u2@203.0.113.9^2200"],
     Tunnel("dbclient", "203.0.113.9", "u2", 2200, (fwd(R, "", 9000, "localhost", 22, spec="9000:localhost:22"),))),
    (["dbclient", "-o", "port 2022", "-R", "9000:localhost:22", "h"],
     Tunnel("dbclient", "h", "", 2022, (fwd(R, "", 9000, "localhost", 22, spec="9000:localhost:22"),))),
    (["dropbearmulti", "dbclient", "-NR", "9000:localhost:22", "h"],
     Tunnel("dbclient", "h", "", 0, (fwd(R, "", 9000, "localhost", 22, spec="9000:localhost:22"),))),
    # plink: whole-word options, -P port, -l user, SSH only
    (["plink", "-ssh", "-N", "-R", "9000:localhost:22", "-P", "2222", "-l", "alice", "203.0.113.7"],
     Tunnel("plink", "203.0.113.7", "alice", 2222, (fwd(R, "", 9000, "localhost", 22, spec="9000:localhost:22"),))),
    (["plink", "-L", "127.0.0.1:5110:popserver.example.com:110", "-D", "1080", "-batch", "bob@host"],
     Tunnel("plink", "host", "bob", 0, (fwd(L, "127.0.0.1", 5110, "popserver.example.com", 110,
                                            spec="127.0.0.1:5110:popserver.example.com:110"),
                                        fwd(D, "", 1080, spec="1080")))),
    (["plink", "-R", "[::1]:9000:[::1]:22", "-D", "[::]:1080", "ssh,h"],
     Tunnel("plink", "h", "", 0, (fwd(R, "::1", 9000, "::1", 22, spec="[::1]:9000:[::1]:22"),
                                  fwd(D, "::", 1080, spec="[::]:1080")))),
    (["plink", "host", "-R", "9000:localhost:22", "uptime", "-R", "1:h:2"],
     Tunnel("plink", "host", "", 0, (fwd(R, "", 9000, "localhost", 22, spec="9000:localhost:22"),))),
]

NOT_TUNNELS = [
    ["wstunnel", "server", "wss://0.0.0.0:443"],
    ["wstunnel", "--server", "ws://0.0.0.0:80"],
    ["wstunnel", "client", "-L", "stdio://%h:%p", "wss://203.0.113.5"],  # an ssh ProxyCommand: no listener
    ["wstunnel", "client", "-R", "stdio://h:22", "wss://203.0.113.5"],
    ["wstunnel", "--version"],
    ["wstunnel", "client", "-h", "-R", "tcp://1:h:2", "wss://x"],
    ["gost", "-L", ":8080"],  # a proxy with no chain: no far end
    ["gost", "-L", "relay+wss://:8443"],
    ["gost", "-V", "-L", "rtcp://:2222/:22", "-F", "socks5://203.0.113.5:1080"],
    ["gost", "-C", "gost.yaml"],
    ["rathole", "--server", "server.toml"],
    ["rathole", "--genkey"],
    ["rathole", "-V"],
    ["iodine", "-v"],
    ["iodine", "-h", "t1.example.com"],
    ["iodine"],
    ["iodine", "a", "b", "c"],
    ["iodine", "-p", "3000"],  # Ruby's iodine web server: "3000" is no topdomain (no dot)
    ["iodine", "t1..example.com"],
    ["iodine", "t1.example.com."],
    ["iodine", "t1.ex_ample.com"],
    ["iodine", "a" * 64 + ".example.com"],
    ["iodine", "t." + "a" * 127],
    ["plink", "--bfile", "mydata", "--assoc", "--out", "results"],  # the genetics PLINK, by name
    ["ptunnel-ng", "-h"],
    ["dbclient", "-D", "1080", "host"],  # -D prints the version: no dynamic forwarding in dropbear
    ["dbclient", "-R", "9000:localhost:22", "-V", "host"],
    ["dbclient", "-NhR", "9000:localhost:22", "host"],
    ["dbclient", "host", "uptime"],
    ["dbclient", "-B", "10.0.0.5:22", "jump"],  # netcat mode, like ssh -W
    ["dropbearmulti", "dropbearkey", "-t", "ed25519"],
    ["plink", "-raw", "-R", "9000:localhost:22", "host"],
    ["plink", "-telnet", "-L", "1:h:2", "host"],
    ["plink", "-R", "9000", "host"],  # needs two colons
    ["plink", "-V"],
    ["plink", "host", "uptime", "-R", "9000:localhost:22"],
]


@pytest.mark.parametrize(("argv", "expected"), CASES, ids=lambda v: " ".join(v)[:80] if isinstance(v, list) else None)
def test_tunnel_fields(argv: list[str], expected: Tunnel) -> None:
    assert classify(*argv) == expected


@pytest.mark.parametrize("argv", NOT_TUNNELS, ids=lambda v: " ".join(v)[:80])
def test_not_a_tunnel(argv: list[str]) -> None:
    assert classify(*argv) is None


@pytest.mark.parametrize(("argv", "reverse"), [
    (["wstunnel", "client", "-R", "tcp://1:h:2", "wss://x"], True),
    (["wstunnel", "client", "-L", "tcp://1:h:2", "wss://x"], False),
    (["gost", "-L", "rtcp://:1/h:2", "-F", "socks5://x:1"], True),
    (["gost", "-L", "tcp://:1/h:2", "-F", "socks5://x:1"], False),
    (["rathole", "c.toml"], True),
    (["iodine", "t.example.com"], True),
    (["ptunnel-ng"], True),
    (["ptunnel-ng", "-px"], False),
    (["dbclient", "-R", "1:h:2", "x"], True),
    (["dbclient", "-L", "1:h:2", "x"], False),
    (["plink", "-R", "1:h:2", "x"], True),
    (["plink", "-D", "1", "x"], False),
])
def test_which_give_the_far_end_a_way_in(argv: list[str], reverse: bool) -> None:
    tunnel = classify(*argv)
    assert tunnel is not None and tunnel.is_reverse is reverse


@pytest.mark.parametrize("tool", NEW_TOOLS)
def test_each_tool_is_recognised_by_name_and_by_identity(tool: str) -> None:
    assert tool in TOOLS
    assert tool_of([tool.encode()], b"") == tool
    assert tool_of([b"kworker"], b"/tmp/kworker", known_tool=tool) == tool


def test_a_renamed_tool_is_read_with_its_grammar_by_identity() -> None:
    argv = [b"[kworker/0:1]", b"-N", b"-R", b"9000:localhost:22", b"-P", b"2222", b"203.0.113.7"]
    assert classify_tunnel(argv, b"/tmp/.x/kworker") is None
    assert classify_tunnel(argv, b"/tmp/.x/kworker", known_tool="plink") == Tunnel(
        "plink", "203.0.113.7", "", 2222, (fwd(R, "", 9000, "localhost", 22, spec="9000:localhost:22"),))
    assert classify_tunnel(argv, b"/usr/bin/plink", known_tool="git") is None  # identity wins both ways


def test_identity_knows_a_copy_of_each_new_tool_by_its_content(tmp_path: Path) -> None:
    """The tools are found on the host's PATH at start (here: stand-ins, one content each); a
    renamed copy of one is that tool by content, whatever its name."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for tool in NEW_TOOLS:
        (bindir / tool).write_bytes(f"#!/bin/sh\n# stand-in for {tool}\n".encode())
        (bindir / tool).chmod(0o755)
    identity = BinaryIdentity(tools=TOOLS, search_path=str(bindir))
    for tool in NEW_TOOLS:
        copy = tmp_path / f"cache-{len(tool)}-{tool[::-1]}"
        shutil.copy(bindir / tool, copy)
        st_ = copy.stat()
        assert identity.identify(0, st_.st_dev, st_.st_ino, os.fsencode(copy)) == Identity(tool, How.CONTENT)


# -- hostile input -----------------------------------------------------------------------------

MIB = b"A" * (1 << 20)


@pytest.mark.parametrize("tool", NEW_TOOLS)
@pytest.mark.parametrize("rest", [
    [],
    [b"\xff\xfe\x80", b"-R\xff", b"tcp://\xff:1:\xc3(:22", b"h\x00st", b"-F", b"\xff", b"-p\xff", b"client"],
    [b"client", b"-R"],
    [b"-L"],
    [b"-o"],
    [b"host", b"-R"],
    [b"-R", b"[", b"-D", b"]:", b"-L", b"rtcp://[::1", b"x"],
    [b"-R", MIB, b"host"],
    [b"x"] * 5000,
    [b"-R", b"1:h:2"] * 2500,
], ids=lambda rest: f"{len(rest)} args, {sum(map(len, rest))} bytes")
def test_hostile_argv_never_raises(tool: str, rest: list[bytes]) -> None:
    result = classify_tunnel([tool.encode(), *rest])
    assert result is None or result.forwards


@pytest.mark.parametrize("argv", [
    [b"wstunnel", b"client", b"-R", b"tcp://" + b"[" * (1 << 20), b"wss://" + MIB],
    [b"wstunnel", b"client", b"-L", b"unix://" + b":" * (1 << 20), b"wss://x"],
    [b"gost", b"-L", b"rtcp://" + b"/" * (1 << 20), b"-F", b"socks5://" + b"@" * (1 << 20)],
    [b"iodine", b"-" + b"f" * (1 << 20), b"t.example.com"],
    [b"ptunnel-ng", b"-p" + MIB, b"-R" + b"9" * (1 << 20)],
    [b"dbclient", b"-" + b"y" * (1 << 20) + b"R", b"9:h:" + b"0" * (1 << 20) + b"1", b"h"],
    [b"dbclient", b"-o", b"port" + b" " * (1 << 20) + b"=", b"h"],
    [b"plink", b"-R", b"[" * (1 << 19) + b":" * (1 << 19), b"h"],
    [b"plink", b"-R", b":" * (1 << 20), b"h"],
], ids=lambda argv: f"{argv[0].decode()} {argv[1][:12]!r}...")
def test_a_mib_argument_is_read_in_linear_time(argv: list[bytes]) -> None:
    started = time.monotonic()
    result = classify_tunnel(argv)
    assert result is None or result.forwards
    assert time.monotonic() - started < 5


def test_thousands_of_forwards_are_all_kept() -> None:
    many = classify_tunnel([b"plink", *([b"-R", b"9000:localhost:22"] * 2500), b"host"])
    assert many is not None and len(many.forwards) == 2500
    many = classify_tunnel([b"gost", *([b"-L", b"rtcp://:1/h:2"] * 2500), b"-F", b"socks5://x:1"])
    assert many is not None and len(many.forwards) == 2500


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(NEW_TOOLS), st.lists(st.binary(max_size=40), max_size=12))
def test_random_argv_never_raises(tool: str, rest: list[bytes]) -> None:
    result = classify_tunnel([tool.encode(), *rest])
    assert result is None or result.forwards


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(NEW_TOOLS), st.lists(st.sampled_from([
    "-R", "-L", "-D", "-F", "-p", "-P", "-r", "-l", "client", "server", "tcp://", "rtcp://", "socks5://", ":", "[",
    "]", "/", "@", ",", "^", "?", "9000", "h", "wss://x", "--", "-", "=", "--proxy", "-o", "port"]), max_size=14)
    .map(lambda words: ["".join(words[i:i + 2]) for i in range(0, len(words), 2)]))
def test_grammar_shaped_argv_never_raises(tool: str, args: list[str]) -> None:
    result = classify(tool, *args)
    assert result is None or result.forwards


# -- through the built-in rules ----------------------------------------------------------------


@pytest.mark.parametrize(("argv", "expected"), [
    (("/usr/bin/wstunnel", "client", "-R", "tcp://2222:localhost:22", "wss://203.0.113.5"), ["reverse-tunnel-opened"]),
    (("/usr/local/bin/gost", "-L", "rtcp://:2222/:22", "-F", "socks5://203.0.113.5:1080"),
     ["reverse-tunnel-opened", "tunnel-to-nonstandard-port"]),
    (("/opt/rathole", "client.toml"), ["reverse-tunnel-opened"]),
    (("/usr/sbin/iodine", "-f", "t1.example.com"), ["reverse-tunnel-opened"]),
    (("/usr/bin/ptunnel-ng",), ["reverse-tunnel-opened"]),
    (("/usr/bin/dbclient", "-NR", "9000:localhost:22", "root@203.0.113.5"), ["reverse-tunnel-opened"]),
    (("/usr/bin/plink", "-N", "-R", "9000:localhost:22", "root@203.0.113.5"), ["reverse-tunnel-opened"]),
    (("/usr/bin/plink", "-N", "-L", "8080:db:5432", "root@203.0.113.5"), []),
    (("/usr/bin/ptunnel-ng", "-p203.0.113.5", "-l2222"), []),
    (("/usr/bin/wstunnel", "client", "-L", "socks5://127.0.0.1:1080", "wss://203.0.113.5"), []),
], ids=lambda v: " ".join(v)[:60] if isinstance(v, tuple) else None)
def test_the_reverse_tunnel_rule_sees_the_new_tools(argv: tuple[str, ...], expected: list[str]) -> None:
    from tests.unit.test_builtin_rules import agent_tree, alerts

    host = agent_tree()
    host.spawn(101, 102, *argv)
    assert alerts(host.events) == expected
