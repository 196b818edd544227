"""Which exec command lines set up a tunnel, and to where.

A tunnel is a process that carries traffic between this host and another one outside the plain
client pattern: ssh and autossh port forwards (-R, -L, -D and their -o spellings) and the other
ssh clients (dropbear's dbclient, PuTTY's plink), the agents that expose a local service through
a remote server (chisel, frpc, ngrok, cloudflared, bore, rathole) or carry forwards over another
protocol (wstunnel over WebSocket/HTTP2, gost through a proxy chain, iodine over DNS, ptunnel-ng
over ICMP), and relays built from socat or ncat.

Which give the far end a way in (`is_reverse`): ssh/dbclient/plink -R, wstunnel -R, gost
rtcp/rudp through a chain, chisel R:, frpc, ngrok, cloudflared, bore and rathole clients (REVERSE);
ssh -R port and wstunnel -R socks5/http (REVERSE_DYNAMIC); iodine, whose far end gets a network
interface to this host, every port of it (REVERSE_DYNAMIC); a ptunnel-ng proxy, which makes TCP
connections from this host for anyone who can ping it, and socat/ncat relays (RELAY). -L and -D,
the ptunnel-ng client and gost proxies through a chain only reach out (LOCAL, DYNAMIC).

ssh gets the most care, because its command line is where tunnels hide. It is read the way
OpenSSH 9.x's ssh.c reads it: BSD getopt without permutation, a second getopt pass over what
follows the destination, readconf.c's parse_forward() for -L/-R/-D and its process_config_line()
for -o. Every spelling ssh accepts gives the same verdict, and what ssh takes as the remote
command gives none.

Where a tool would refuse its command line (a bad forward spec, an unknown flag, a missing
value), the bad part is dropped and the rest still counts: the argv we see may have been cut
short by the capture, and a newer version may accept what we do not know, so we err toward
reporting. Options that make ssh exit before it connects (-V, -G, -Q, -1) do clear the verdict.

ssh's configuration files (-F, ~/.ssh/config, /etc/ssh/ssh_config, with Include, Host and Match)
are evaluated by the probe at exec time, through the process's own root and home
(sensor/classify/ssh_config.py, sensor/probe/ssh_files.py): what they add travels in the exec
frame as directives (`RemoteForward 2222 localhost:22`), which are applied here after the command
line, as ssh applies its files after its options. A tunnel whose forwards came from there says so
(evidence "config"); ProxyJump hops and a ProxyCommand (a tunnel inside a tunnel) are listed in `via`.

What a command line and ssh's files cannot tell us: dropbear's ~/.ssh/dropbear_config, PuTTY saved
sessions (-load, or a host argument naming one), environment variables (${VAR} in forward specs,
AUTOSSH_PORT, BORE_SERVER, wstunnel's HTTP_PROXY), and the config files of frpc, ngrok, cloudflared,
rathole (what it exposes, and where: a rathole run without --client or --server is taken for a
client) and gost (-C: no verdict from argv alone). Those leave fields unknown ("" or 0).
"""

from __future__ import annotations

import ipaddress
import re
import socket
import string
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from functools import lru_cache
from typing import NamedTuple
from urllib.parse import unquote_plus


class Direction(StrEnum):
    REVERSE = "reverse"  # the far end listens; connections come back in to us (ssh -R)
    LOCAL = "local"  # we listen; connections go out through the far end (ssh -L)
    DYNAMIC = "dynamic"  # we run a SOCKS proxy whose traffic leaves through the far end (ssh -D)
    REVERSE_DYNAMIC = "reverse-dynamic"  # the far end runs a SOCKS proxy into our network (ssh -R port)
    RELAY = "relay"  # a process splices a remote connection to a local service or shell (socat, ncat -e)


_REVERSE = frozenset({Direction.REVERSE, Direction.REVERSE_DYNAMIC, Direction.RELAY})
_DYNAMIC = frozenset({Direction.DYNAMIC, Direction.REVERSE_DYNAMIC})


@dataclass(frozen=True, slots=True)
class Forward:
    direction: Direction
    listen_host: str  # "" when not given (ssh's default bind)
    listen_port: int  # 0 when a unix socket path is used instead
    target_host: str  # "" for dynamic forwards
    target_port: int  # 0 for dynamic forwards or unix targets
    listen_path: str = ""  # unix socket listen path, if any
    target_path: str = ""  # unix socket target path, if any
    spec: str = ""  # the spec text as given (e.g. "9000:localhost:22")


@dataclass(frozen=True, slots=True)
class Tunnel:
    tool: str  # a key of _PARSERS ("ssh", "chisel", "wstunnel", ...); dropbearmulti's client is "dbclient"
    remote_host: str  # the far end: ssh destination, chisel/bore server, socat/ncat peer ("" if unknown)
    remote_user: str  # "" if not given
    remote_port: int  # 0 if not given (for ssh, 0 means its default, 22)
    forwards: tuple[Forward, ...]
    evidence: str = "argv"  # "config" when a forward came from ssh's configuration files
    via: tuple[str, ...] = ()  # ssh's ProxyJump hops, or "ProxyCommand": a tunnel inside a tunnel

    @property
    def directions(self) -> frozenset[Direction]:
        return frozenset(forward.direction for forward in self.forwards)

    @property
    def is_reverse(self) -> bool:
        return bool(self.directions & _REVERSE)


def tool_of(argv: list[bytes], exe: bytes = b"", known_tool: str | None = None) -> str | None:
    """The tunnel tool this exec runs, or None.

    `known_tool` is the caller's verdict from the binary's identity and wins over any name, both
    ways: a renamed ssh is ssh, and a binary known to be something else is not a tool. Without
    it, the name of the file executed, then argv[0]'s."""
    if known_tool is not None:
        return known_tool if known_tool in _PARSERS else None
    for path in (exe, argv[0] if argv else b""):
        name = _text(path.rpartition(b"/")[2])
        if name in _PARSERS:
            return name
    return None


def classify_tunnel(argv: list[bytes], exe: bytes = b"", known_tool: str | None = None,
                    ssh_config: Sequence[str] = ()) -> Tunnel | None:
    """The tunnel this exec sets up, or None when it forwards or relays nothing. `ssh_config`: the
    directives ssh's configuration files added for this command line, as the probe evaluated them
    (sensor/classify/ssh_config.py); only ssh and autossh read them."""
    tool = tool_of(argv, exe, known_tool)
    if tool is None:
        return None
    args = [_text(arg) for arg in argv[1:]]
    if tool == "ssh":
        tunnel: Tunnel | None = parse_ssh_args(args, ssh_config)
    elif tool == "autossh":
        tunnel = _autossh(args, ssh_config)
    else:
        tunnel = _PARSERS[tool](args)
    return tunnel if tunnel is not None and tunnel.forwards else None


def _text(arg: bytes) -> str:
    # "replace" rather than "surrogateescape": what we return ends up in JSON and protobuf strings.
    return arg.decode("utf-8", errors="replace")


# C's tolower() in ssh: ASCII letters only ("K", the Kelvin sign, must not become "k").
_ASCII_LOWER = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)


# -- ssh: getopt ---------------------------------------------------------------------------

# ssh.c's getopt string (OpenSSH 9.x); a letter followed by ':' takes a value.
_SSH_OPTSTRING = "1246ab:c:e:fgi:kl:m:no:p:qstvxAB:CD:E:F:GI:J:KL:MNO:P:Q:R:S:TVw:W:XYy"
_SSH_VALUE_LETTERS = frozenset(re.findall(r"(.):", _SSH_OPTSTRING))
# -V and -Q print and exit, -G prints the configuration and exits, -1 is fatal ("SSH protocol v.1
# is no longer supported"): with any of them ssh never connects.
_SSH_EXITS = frozenset("1GQV")


class _Getopt(NamedTuple):
    found: list[tuple[str, str | None]]  # (letter, value); the value is None for flags and missing values
    end: int  # index of the first argument not consumed
    terminated: bool  # the last consumed argument was "--" (ssh.c's opt_terminated)


def _bsd_getopt(args: list[str], start: int, value_letters: frozenset[str]) -> _Getopt:
    """BSD getopt(3), which OpenSSH uses on every platform: it stops at the first non-option (it
    does not permute), or after `--`; a letter that takes a value takes the rest of its cluster,
    or else the next argument whatever it looks like."""
    found: list[tuple[str, str | None]] = []
    index = start
    while index < len(args):
        arg = args[index]
        if arg == "--":
            index += 1
            break
        if len(arg) < 2 or not arg.startswith("-"):
            break
        index += 1
        for pos in range(1, len(arg)):
            letter = arg[pos]
            if letter not in value_letters:
                found.append((letter, None))
                continue
            value: str | None = None
            if pos + 1 < len(arg):
                value = arg[pos + 1 :]
            elif index < len(args):
                value = args[index]
                index += 1
            found.append((letter, value))
            break
    # ssh.c checks av[optind - 1] for "--", so `-l --` (a "--" consumed as a value) counts too.
    return _Getopt(found, index, index > start and args[index - 1] == "--")


# -- ssh: the command --------------------------------------------------------------------------


class SshArgs(NamedTuple):
    """ssh's command line in the order ssh reads it: options, the destination, options after it."""

    before: list[tuple[str, str | None]]  # (letter, value) as getopt found them
    destination: str | None  # None: no destination (ssh prints its usage)
    after: list[tuple[str, str | None]]


def ssh_args(args: list[str]) -> SshArgs:
    """Split ssh's arguments (argv without argv[0]) as ssh.c main() does."""
    first = _bsd_getopt(args, 0, _SSH_VALUE_LETTERS)
    if first.end >= len(args):
        return SshArgs(first.found, None, [])
    # ssh.c's "goto again": getopt runs once more over what follows the destination, up to the
    # next non-option, where the remote command starts. Not after `--`.
    after = [] if first.terminated else _bsd_getopt(args, first.end + 1, _SSH_VALUE_LETTERS).found
    return SshArgs(first.found, args[first.end], after)


def parse_ssh_args(args: list[str], config: Sequence[str] = ()) -> Tunnel:
    """What ssh makes of its arguments (argv without argv[0]), as far as tunnels go (ssh.c main()),
    and then of `config`, the directives its configuration files added (see classify_tunnel).

    Like ssh, the first value given for the user, the port or HostName wins, in the order ssh
    reads them: options before the destination, then the destination (user@, ssh:// port), then
    options after it, then the files. So `-p` before the destination wins over an ssh:// URI's
    port, which wins over a `-p` after the destination."""
    ssh = _SshCommand()
    parsed = ssh_args(args)
    ssh.apply(parsed.before)
    if parsed.destination is not None:
        ssh.set_destination(parsed.destination)
        ssh.apply(parsed.after)
    for line in config:
        _apply_config_line(ssh, line, from_config=True)
    return ssh.tunnel()


@dataclass(slots=True)
class _SshCommand:
    host: str = ""
    user: str | None = None
    port: int | None = None
    hostname: str | None = None  # -o HostName, which replaces the destination's host
    clear_forwardings: bool | None = None
    stdio_forward: bool = False  # -W
    mux_command: str | None = None  # -O
    exits: bool = False
    forwards: list[Forward] = field(default_factory=list)
    configured: set[int] = field(default_factory=set)  # indexes of the forwards from config files
    jump: str | None = None  # -J / ProxyJump as given; "none" when set to none
    proxy_command: str | None = None

    def apply(self, options: list[tuple[str, str | None]]) -> None:
        for letter, value in options:
            if letter in _SSH_EXITS:
                self.exits = True
            elif value is None:
                continue  # a flag that does not matter here, or a value missing at the end
            elif letter in "LRD":
                self.add(_forward_option(letter, value))
            elif letter == "o":
                _apply_config_line(self, value)
            elif letter == "l":
                self.set_user(value)
            elif letter == "p":
                self.set_port(_a2port(value))
            elif letter == "W":
                self.stdio_forward = True
            elif letter == "J":
                self.set_jump(value)
            elif letter == "O" and self.mux_command is None:
                self.mux_command = value

    def add(self, forward: Forward | None, from_config: bool = False) -> None:
        if forward is not None:
            if from_config:
                self.configured.add(len(self.forwards))
            self.forwards.append(forward)

    def set_jump(self, jump: str) -> None:
        """ProxyJump is ignored once a ProxyCommand or ProxyJump is set (readconf.c parse_jump());
        a jump is itself a ProxyCommand, and `none` only stops a later ProxyJump."""
        if self.jump is None and (self.proxy_command is None or jump.lower() == "none"):
            self.jump = jump

    def set_proxy_command(self, command: str) -> None:
        if self.proxy_command is None and (self.jump is None or self.jump.lower() == "none"):
            self.proxy_command = command

    def set_user(self, user: str) -> None:
        if self.user is None and user:
            self.user = user

    def set_port(self, port: int) -> None:
        if self.port is None and port > 0:  # ssh refuses port 0 or a bad one ("Bad port")
            self.port = port

    def set_destination(self, arg: str) -> None:
        uri = _parse_ssh_uri(arg)
        if uri is not None:
            self.host = uri.host
            self.set_user(uri.user)
            self.set_port(uri.port)
            return
        user, _, self.host = arg.rpartition("@")  # the last '@': user names may contain one
        self.set_user(user)

    def remote_host(self) -> str:
        host = self.host if self.hostname is None else _expand_hostname(self.hostname, self.host)
        # ssh lowercases a host name, but not an address
        return host if _is_ip_address(host) else host.translate(_ASCII_LOWER)

    def live(self) -> bool:
        """Whether the forwards are set up at all."""
        if self.exits:
            return False
        # -O forward asks a running master to add these forwards; check, exit, stop, cancel... do not.
        if self.mux_command not in (None, "forward"):
            return False
        # readconf.c fill_default_options(): ClearAllForwardings defaults to yes under -W.
        clear = self.clear_forwardings if self.clear_forwardings is not None else self.stdio_forward
        return not clear

    def via(self) -> tuple[str, ...]:
        """The hops the connection goes through: ProxyJump's, or a ProxyCommand's ("none": none)."""
        if self.jump is not None and self.jump.lower() != "none":
            return tuple(hop.strip() for hop in self.jump.partition("#")[0].split(",") if hop.strip())
        if self.proxy_command is not None and self.proxy_command.lower() != "none":
            return ("ProxyCommand",)
        return ()

    def tunnel(self) -> Tunnel:
        live = self.live()
        forwards = tuple(self.forwards) if live else ()
        evidence = "config" if live and self.configured else "argv"
        return Tunnel("ssh", self.remote_host(), self.user or "", self.port or 0, forwards, evidence, self.via())


def _expand_hostname(hostname: str, destination: str) -> str:
    """HostName's %h is the destination's host (ssh.c: percent_expand(options.hostname, "h", host))."""
    return re.sub(r"%(.)", lambda m: {"h": destination, "%": "%"}.get(m[1], m[0]), hostname, flags=re.DOTALL)


class _SshUri(NamedTuple):
    host: str
    user: str
    port: int


def _parse_ssh_uri(arg: str) -> _SshUri | None:
    """`ssh://[user[;params]@]host[:port]` as misc.c's parse_uri() reads it; None if not one.

    ssh itself rejects an IPv6 literal here (valid_domain() refuses ':'); we read it anyway."""
    if not arg.startswith("ssh://"):
        return None
    rest = arg.removeprefix("ssh://")
    user = ""
    userinfo, at, after = rest.partition("@")  # the first '@', unlike user@host
    if at:
        user = unquote_plus(userinfo.partition(";")[0])
        rest = after
    if rest.startswith("["):
        host, _, rest = rest[1:].partition("]")
        delimiter, rest = rest[:1], rest[1:]
    else:
        host, delimiter, rest = _partition_any(rest, ":/")
    port = _a2port(rest.partition("/")[0]) if delimiter == ":" else 0
    return _SshUri(host, user, max(port, 0))


def _partition_any(text: str, delimiters: str) -> tuple[str, str, str]:
    match = re.search(f"[{re.escape(delimiters)}]", text)
    if match is None:
        return text, "", ""
    return text[: match.start()], match[0], text[match.end() :]


# -- ssh: forward specs (readconf.c parse_forward) ---------------------------------------------

_STREAMLOCAL = -2  # ssh's PORT_STREAMLOCAL: this end is a unix socket path
_NI_MAXHOST = 1025
_PATH_MAX_SUN = 108  # sizeof(sun_path)
_C_SPACE = " \t\n\v\f\r"


class _Field(NamedTuple):
    text: str
    is_path: bool


@dataclass(frozen=True, slots=True)
class _Ends:
    """The ends of a forward as parse_forward() fills struct Forward: a port of -1 is invalid."""

    listen_host: str = ""
    listen_port: int = 0
    listen_path: str = ""
    connect_host: str = ""
    connect_port: int = 0
    connect_path: str = ""

    def forward(self, direction: Direction, spec: str) -> Forward:
        listen_port = max(self.listen_port, 0)
        if direction in _DYNAMIC:
            return Forward(direction, self.listen_host, listen_port, "", 0, self.listen_path, "", spec)
        return Forward(direction, self.listen_host, listen_port, self.connect_host, max(self.connect_port, 0),
                       self.listen_path, self.connect_path, spec)


def _forward_option(letter: str, spec: str) -> Forward | None:
    if letter == "L":
        return _ssh_forward(spec, Direction.LOCAL, spec)
    if letter == "D":
        return _ssh_forward(spec, Direction.DYNAMIC, spec)
    # -R: ssh.c tries a plain remote forward first, then a remote dynamic one (a SOCKS proxy).
    return _ssh_forward(spec, Direction.REVERSE, spec) or _ssh_forward(spec, Direction.REVERSE_DYNAMIC, spec)


def _ssh_forward(spec: str, direction: Direction, given: str) -> Forward | None:
    ends = _parse_forward(spec, dynamic=direction in _DYNAMIC, remote=direction in _REVERSE)
    return ends.forward(direction, given) if ends is not None else None


def _parse_forward(spec: str, *, dynamic: bool, remote: bool) -> _Ends | None:
    fields = _forward_fields(spec.lstrip(_C_SPACE))
    if not fields:
        return None
    ends = _assign_fields(fields)
    return ends if _forward_valid(ends, len(fields), dynamic=dynamic, remote=remote) else None


def _forward_fields(spec: str) -> list[_Field] | None:
    """Up to four ':'-separated fields, cut as readconf.c's parse_fwd_field() does."""
    fields: list[_Field] = []
    pos = 0
    while pos < len(spec):
        if len(fields) == 4:
            return None  # trailing garbage
        cut = _bracketed_field(spec, pos) if spec[pos] == "[" else _plain_field(spec, pos)
        if cut is None:
            return None
        fields.append(cut[0])
        pos = cut[1]
    return fields


def _bracketed_field(spec: str, pos: int) -> tuple[_Field, int] | None:
    """`[...]` is taken literally (an IPv6 address, or a path holding ':'); it must end its field."""
    close = spec.find("]", pos + 1)
    if close < 0 or spec[close + 1 : close + 2] not in ("", ":"):
        return None
    text = spec[pos + 1 : close]
    return _Field(text, "/" in text), min(close + 2, len(spec))


_FIELD_STOPS = re.compile(r"[\\/:]")


def _plain_field(spec: str, pos: int) -> tuple[_Field, int] | None:
    """Up to the next ':'. A '/' makes the field a path; a backslash takes the next character as is."""
    text: list[str] = []
    is_path = False
    while True:
        stop = _FIELD_STOPS.search(spec, pos)
        if stop is None:
            text.append(spec[pos:])
            return _Field("".join(text), is_path), len(spec)
        text.append(spec[pos : stop.start()])
        if stop[0] == ":":
            return _Field("".join(text), is_path), stop.end()
        if stop[0] == "/":
            is_path = True
            text.append("/")
            pos = stop.end()
        elif stop.end() == len(spec):
            return None  # a backslash at the very end escapes nothing
        else:
            text.append(spec[stop.end()])
            pos = stop.end() + 1


def _assign_fields(fields: list[_Field]) -> _Ends:
    """Which field is which, by count and by which ones are paths (parse_forward()'s switch)."""
    f = fields
    if len(f) == 1:
        if f[0].is_path:
            return _Ends(listen_path=f[0].text, listen_port=_STREAMLOCAL, connect_host="socks")
        return _Ends(listen_port=_a2port(f[0].text), connect_host="socks")
    if len(f) == 2:
        if f[0].is_path and f[1].is_path:
            return _Ends(listen_path=f[0].text, listen_port=_STREAMLOCAL, connect_path=f[1].text,
                         connect_port=_STREAMLOCAL)
        if f[1].is_path:
            return _Ends(listen_port=_a2port(f[0].text), connect_path=f[1].text, connect_port=_STREAMLOCAL)
        return _Ends(listen_host=f[0].text, listen_port=_a2port(f[1].text), connect_host="socks")
    if len(f) == 3:
        if f[0].is_path:
            return _Ends(listen_path=f[0].text, listen_port=_STREAMLOCAL, connect_host=f[1].text,
                         connect_port=_a2port(f[2].text))
        if f[2].is_path:
            return _Ends(listen_host=f[0].text, listen_port=_a2port(f[1].text), connect_path=f[2].text,
                         connect_port=_STREAMLOCAL)
        return _Ends(listen_port=_a2port(f[0].text), connect_host=f[1].text, connect_port=_a2port(f[2].text))
    return _Ends(listen_host=f[0].text, listen_port=_a2port(f[1].text), connect_host=f[2].text,
                 connect_port=_a2port(f[3].text))


def _forward_valid(ends: _Ends, count: int, *, dynamic: bool, remote: bool) -> bool:
    """parse_forward()'s checks. A remote forward may listen on port 0 (the server picks one)."""
    if dynamic:
        if count not in (1, 2):
            return False
    else:
        if count not in (3, 4) and not (ends.connect_path or ends.listen_path):
            return False
        if ends.connect_port <= 0 and not ends.connect_path:
            return False
    if (ends.listen_port < 0 and not ends.listen_path) or (not remote and ends.listen_port == 0):
        return False
    return (len(ends.listen_host) < _NI_MAXHOST and len(ends.connect_host) < _NI_MAXHOST
            and len(ends.listen_path) < _PATH_MAX_SUN and len(ends.connect_path) < _PATH_MAX_SUN)


_STRTONUM = re.compile(r"[ \t\n\v\f\r]*([+-]?)([0-9]+)")
_SERVICE_NAME = re.compile(r"[A-Za-z][A-Za-z0-9._+-]{0,63}")


def _a2port(text: str) -> int:
    """A port as misc.c's a2port(): a number 0..65535 (strtonum: leading blanks and a sign allowed),
    else a service name from /etc/services, so `-R 9000:localhost:ssh` is port 22. -1 if neither."""
    number = _STRTONUM.fullmatch(text)
    if number:
        digits = number[2].lstrip("0") or "0"
        value = int(digits) if len(digits) <= 5 else 65536
        if value == 0 or (number[1] != "-" and value <= 65535):
            return value
    return _service_port(text)


@lru_cache(maxsize=256)
def _service_port(name: str) -> int:
    if not _SERVICE_NAME.fullmatch(name):
        return -1
    try:
        return socket.getservbyname(name, "tcp")
    except OSError:
        return -1


# -- ssh: -o (readconf.c process_config_line) --------------------------------------------------

_CONFIG_SPACE = " \t\r\n"
_CONFIG_DELIMITERS = re.compile(r'[ \t\r\n"=]')
_CONFIG_FLAGS = {"yes": True, "true": True, "no": False, "false": False}
_CONFIG_FORWARDS = frozenset({"localforward", "remoteforward", "dynamicforward"})
_CONFIG_FORWARD_MAX = 255  # readconf.c joins listen and target into a char fwdarg[256]


def _apply_config_line(ssh: _SshCommand, line: str, from_config: bool = False) -> None:
    words = config_line(line)
    if words is None:
        return
    keyword, args, rest = words
    if not args or not args[0]:
        return  # ssh: "Missing argument"
    if keyword in _CONFIG_FORWARDS:
        ssh.add(config_forward(keyword, args), from_config)
    elif keyword == "proxyjump":
        ssh.set_jump(rest)
    elif keyword == "proxycommand":
        ssh.set_proxy_command(rest)
    elif keyword == "port":
        ssh.set_port(_a2port(args[0]))
    elif keyword == "user":
        ssh.set_user(args[0])
    elif keyword == "hostname" and ssh.hostname is None:
        ssh.hostname = args[0]
    elif keyword == "clearallforwardings" and ssh.clear_forwardings is None:
        ssh.clear_forwardings = _CONFIG_FLAGS.get(args[0].translate(_ASCII_LOWER))


def config_forward(keyword: str, args: list[str]) -> Forward | None:
    """LocalForward/RemoteForward take `listen target` as two words, DynamicForward one; a
    RemoteForward without a target is a remote SOCKS proxy."""
    listen, target = args[0], args[1] if len(args) > 1 else ""
    if keyword == "dynamicforward":
        return _ssh_forward(listen[:_CONFIG_FORWARD_MAX], Direction.DYNAMIC, listen)
    if not target:
        if keyword == "localforward":
            return None  # ssh: "Missing target argument"
        return _ssh_forward(listen[:_CONFIG_FORWARD_MAX], Direction.REVERSE_DYNAMIC, listen)
    direction = Direction.REVERSE if keyword == "remoteforward" else Direction.LOCAL
    return _ssh_forward(f"{listen}:{target}"[:_CONFIG_FORWARD_MAX], direction, f"{listen} {target}")


class ConfigLine(NamedTuple):
    keyword: str  # lowercased
    args: list[str]  # split as argv_split() does
    rest: str  # what follows the keyword, unsplit (ProxyCommand, ProxyJump and Match read that)


def config_line(line: str) -> ConfigLine | None:
    """A config line as process_config_line() splits it: `Keyword value`, `Keyword=value`,
    `Keyword = value`, quotes and escapes in the arguments. None for a blank or comment line, or
    one ssh refuses (unmatched quotes)."""
    line = line[:1] + line[1:].rstrip(_CONFIG_SPACE + "\f")  # trailing blanks, never the first character
    token = _strdelim(line)
    if token is not None and token[0] == "" and token[1] is not None:
        token = _strdelim(token[1])  # leading whitespace gives one empty token first
    if token is None or not token[0] or token[0].startswith("#") or not token[0].isascii():
        return None
    keyword, rest = token
    rest = (rest or "").lstrip(_CONFIG_SPACE)
    args = _argv_split(rest)
    return ConfigLine(keyword.translate(_ASCII_LOWER), args, rest) if args is not None else None


def strdelim(text: str) -> tuple[str, str | None] | None:
    """misc.c strdelim() (see _strdelim), for the Match criteria that readconf.c splits with it."""
    return _strdelim(text)


def _strdelim(text: str) -> tuple[str, str | None] | None:
    """misc.c strdelim(): the next token and the rest, split at whitespace or a single '=' (with
    whitespace around it); a double-quoted token may hold either. None on an unmatched quote."""
    delimiter = _CONFIG_DELIMITERS.search(text)
    if delimiter is None:
        return text, None
    at = delimiter.start()
    if delimiter[0] == '"':
        text = text[:at] + text[at + 1 :]
        close = text.find('"', at)
        if close < 0:
            return None
        return text[:close], text[close + 1 :].lstrip(_CONFIG_SPACE)
    rest = text[at + 1 :].lstrip(_CONFIG_SPACE)
    if delimiter[0] != "=" and rest.startswith("="):
        rest = rest[1:].lstrip(_CONFIG_SPACE)
    return text[:at], rest


def _argv_split(text: str) -> list[str] | None:
    """misc.c argv_split(): words split at blanks, with '' and "" quotes and backslash escapes of
    quotes, backslash and (outside quotes) space; '#' at a word's start begins a comment."""
    words: list[str] = []
    pos = 0
    while pos < len(text):
        if text[pos] in " \t":
            pos += 1
            continue
        if text[pos] == "#":
            break
        word: list[str] = []
        quote = ""
        while pos < len(text):
            char, following = text[pos], text[pos + 1 : pos + 2]
            if char == "\\" and following and (following in "'\"\\" or (not quote and following == " ")):
                word.append(following)
                pos += 2
                continue
            if not quote and char in " \t":
                break
            if not quote and char in "'\"":
                quote = char
            elif quote and char == quote:
                quote = ""
            else:
                word.append(char)
            pos += 1
        if quote:
            return None  # ssh: "invalid quotes"
        words.append("".join(word))
    return words


# -- autossh -----------------------------------------------------------------------------------

_AUTOSSH_VALUE_LETTERS = _SSH_VALUE_LETTERS | {"M"}


def _autossh(args: list[str], ssh_config: Sequence[str] = ()) -> Tunnel | None:
    found, _ = _gnu_getopt(args, _AUTOSSH_VALUE_LETTERS)
    if any(letter == "V" for letter, _ in found):
        return None  # autossh -V prints its version and exits
    return replace(parse_ssh_args(autossh_child_args(args), ssh_config), tool="autossh")


def autossh_child_args(args: list[str]) -> list[str]:
    """The arguments autossh gives its ssh child (autossh.c main()): its own -M and -f taken out,
    the first argument starting with `--` dropped, everything else passed on in order.

    autossh also adds -L/-R for its monitor port (-M); the child ssh's own exec shows those, so
    they are not counted against autossh here."""
    child: list[str] = []
    seen_double_dash = False
    index = 0
    while index < len(args):
        arg = args[index]
        index += 1
        if arg.startswith("--") and not seen_double_dash:
            seen_double_dash = True
        elif arg.startswith("-M") and not seen_double_dash:
            if arg == "-M":
                index += 1  # the monitor port is the next argument
        elif stripped := _strip_fork_flag(arg):
            child.append(stripped)  # add_arg() drops empty strings
    return child


def _strip_fork_flag(arg: str) -> str:
    """autossh's strip_arg(arg, 'f'): 'f' taken out of a flag cluster up to the first letter that
    takes a value. Its memmove loop then steps over the character that slid into place, unchecked;
    we do the same, since what matters is what ssh receives."""
    if not arg.startswith("-") or arg == "-":
        return arg
    kept: list[str] = []
    pos = 0
    while pos < len(arg):
        if arg[pos] in _AUTOSSH_VALUE_LETTERS:
            kept.append(arg[pos:])
            break
        if arg[pos] == "f":
            kept.append(arg[pos + 1 : pos + 2])  # the character stepped over
            pos += 2
        else:
            kept.append(arg[pos])
            pos += 1
    stripped = "".join(kept)
    return "" if stripped == "-" else stripped


# -- GNU getopt_long (autossh's own options, ncat) ---------------------------------------------


class _LongOption(NamedTuple):
    takes_value: bool
    # getopt_long's `val`: a short letter, "" for 0, or "*name" for a flag pointer. Options whose
    # takes_value and val agree are one option to its ambiguity check.
    val: str
    optional: bool = False  # optional_argument: a value only as --name=VALUE


def _gnu_getopt(
    args: list[str], value_letters: frozenset[str], long_options: Mapping[str, _LongOption] | None = None,
    optional_letters: frozenset[str] = frozenset(),
) -> tuple[list[tuple[str, str | None]], list[str]]:
    """glibc getopt()/getopt_long(): options anywhere (it permutes) until `--`; `--name=value` or
    `--name value`; a long name may be cut to a prefix that leaves no doubt; an optional value
    (`x::`) only joined (`-xvalue`). Returns (options, operands); a long option is named by its
    short letter when it has one."""
    found: list[tuple[str, str | None]] = []
    operands: list[str] = []
    index = 0
    while index < len(args):
        arg = args[index]
        index += 1
        if arg == "--":
            operands.extend(args[index:])
            break
        if len(arg) < 2 or not arg.startswith("-"):
            operands.append(arg)
        elif arg.startswith("--") and long_options is not None:
            index = _gnu_long_option(arg, args, index, long_options, found)
        else:
            index = _gnu_short_options(arg, args, index, value_letters, found, optional_letters)
    return found, operands


def _gnu_long_option(
    arg: str, args: list[str], index: int, options: Mapping[str, _LongOption], found: list[tuple[str, str | None]],
) -> int:
    given, equals, value = arg[2:].partition("=")
    name = _match_long_option(given, options)
    if name is None:
        return index  # unknown or ambiguous: getopt_long would fail
    option = options[name]
    if option.optional:
        found.append((option.val if len(option.val) == 1 else name, value if equals else None))
        return index
    if option.takes_value and not equals:
        value = args[index] if index < len(args) else ""
        index += 1
    found.append((option.val if len(option.val) == 1 else name, value if option.takes_value else None))
    return index


def _match_long_option(given: str, options: Mapping[str, _LongOption]) -> str | None:
    if given in options:
        return given
    candidates = [name for name in options if given and name.startswith(given)]
    if candidates and all(options[name] == options[candidates[0]] for name in candidates):
        return candidates[0]
    return None


def _gnu_short_options(
    arg: str, args: list[str], index: int, value_letters: frozenset[str], found: list[tuple[str, str | None]],
    optional_letters: frozenset[str] = frozenset(),
) -> int:
    for pos in range(1, len(arg)):
        letter = arg[pos]
        if letter in optional_letters:
            found.append((letter, arg[pos + 1 :] or None))
            break
        if letter not in value_letters:
            found.append((letter, None))
            continue
        if pos + 1 < len(arg):
            found.append((letter, arg[pos + 1 :]))
        else:
            found.append((letter, args[index] if index < len(args) else None))
            index += 1
        break
    return index


# -- Go (flag, pflag/cobra, urfave/cli) and Rust (clap) command lines --------------------------


class _Cli(NamedTuple):
    flags: dict[str, str]  # canonical name -> last value given ("" for a switch)
    operands: list[str]
    given: list[tuple[str, str]]  # every (name, value) in order: flags that may repeat (-L, -F)


def _read_flags(
    args: list[str], value_flags: frozenset[str], *, shorthands: Mapping[str, str] | None = None,
    interspersed: bool = True,
) -> _Cli:
    """`--name value`, `--name=value` and `-name` (Go's flag package) or, given `shorthands`,
    pflag/clap short flags (`-x value`, `-xvalue`, `-x=value`, clusters). Go's flag package stops
    at the first operand; cobra and clap do not (`interspersed`). frp's `local_port` spellings are
    normalised to `local-port`. Unknown flags are taken as switches."""
    cli = _Cli({}, [], [])
    index = 0
    while index < len(args):
        arg = args[index]
        index += 1
        if arg == "--":
            cli.operands.extend(args[index:])
            break
        if len(arg) < 2 or not arg.startswith("-"):
            cli.operands.append(arg)
            if not interspersed:
                cli.operands.extend(args[index:])
                break
            continue
        for name, joined in _flag_items(arg, value_flags, shorthands):
            if joined is None:  # the value is the next argument
                cli.flags[name] = args[index] if index < len(args) else ""
                index += 1
            else:
                cli.flags[name] = joined
            cli.given.append((name, cli.flags[name]))
    return cli


def _flag_items(
    arg: str, value_flags: frozenset[str], shorthands: Mapping[str, str] | None,
) -> list[tuple[str, str | None]]:
    if arg.startswith("--") or shorthands is None:
        name, equals, value = arg.lstrip("-").partition("=")
        name = name.replace("_", "-")
        if equals:
            return [(name, value)]
        return [(name, None if name in value_flags else "")]
    items: list[tuple[str, str | None]] = []
    for pos in range(1, len(arg)):
        name = shorthands.get(arg[pos], arg[pos])
        if name in value_flags:
            rest = arg[pos + 1 :]
            items.append((name, rest.removeprefix("=") if rest else None))
            break
        items.append((name, ""))
    return items


# -- chisel ------------------------------------------------------------------------------------

_CHISEL_VALUE_FLAGS = frozenset({
    "fingerprint", "auth", "keepalive", "max-retry-count", "max-retry-interval", "proxy", "header", "hostname",
    "sni", "tls-ca", "tls-key", "tls-cert",
})
# chisel's share/settings/remote.go: fields are bracketed IPv6 or anything up to ':'.
_CHISEL_PART = re.compile(r"(\[[^\[\]]+\]|[^\[\]:]+):?")
_L4_PROTO = re.compile(r"/(tcp|udp)$", re.IGNORECASE)


def _chisel(args: list[str]) -> Tunnel | None:
    top = _read_flags(args, frozenset(), interspersed=False)
    if "v" in top.flags or "version" in top.flags or top.operands[:1] != ["client"]:
        return None  # `chisel server` is the other end; -v prints the version
    client = _read_flags(top.operands[1:], _CHISEL_VALUE_FLAGS, interspersed=False)
    if not client.operands:
        return None
    server, *remotes = client.operands
    host, port = _url_host_port(server)
    forwards = tuple(forward for forward in map(_chisel_remote, remotes) if forward is not None)
    return Tunnel("chisel", host, client.flags.get("auth", "").partition(":")[0], port, forwards)


class _ChiselRemote(NamedTuple):
    local_host: str
    local_port: int
    remote_host: str
    remote_port: int
    socks: bool
    stdio: bool


def _chisel_remote(text: str) -> Forward | None:
    """`[R:][local_host:][local_port:]remote_host:remote_port`, `[R:][...:]socks`, `stdio:host:port`.
    With R: the chisel server listens ("local") and connects back to us ("remote")."""
    reverse = text.startswith("R:")
    remote = _decode_chisel_remote(text.removeprefix("R:") if reverse else text)
    if remote is None or remote.stdio:
        return None  # stdio: plumbing for an ssh ProxyCommand, no listener (as ssh -W)
    if remote.socks:
        direction = Direction.REVERSE_DYNAMIC if reverse else Direction.DYNAMIC
        return Forward(direction, remote.local_host, remote.local_port or 1080, "", 0, spec=text)
    direction = Direction.REVERSE if reverse else Direction.LOCAL
    return Forward(direction, remote.local_host, remote.local_port, remote.remote_host or "127.0.0.1",
                   remote.remote_port, spec=text)


def _decode_chisel_remote(text: str) -> _ChiselRemote | None:
    """remote.go DecodeRemote(): read back to front, so that the remote side takes ports and
    hosts first and the local side gets the rest. Hosts come back without brackets."""
    parts = _CHISEL_PART.findall(text)
    if not 0 < len(parts) < 5:
        return None
    local_host = remote_host = ""
    local_port = remote_port = 0
    socks = stdio = False
    for i in reversed(range(len(parts))):
        part = parts[i]
        if i == len(parts) - 1 and part == "socks":
            socks = True
            continue
        if i == 0 and part == "stdio":
            stdio = True
            continue
        if _L4_PROTO.search(part):
            part = part[:-4].lower()
        port = _go_port(part)
        if port:
            remote_port = remote_port or (0 if socks else port)
            local_port = port
            continue
        if not socks and not remote_port and not local_port:
            return None  # "Missing ports"
        if not socks and not remote_host:
            remote_host = part.strip("[]")
        else:
            local_host = part.strip("[]")
    return _ChiselRemote(local_host, local_port, remote_host, remote_port, socks, stdio)


def _go_port(text: str) -> int:
    """strconv.Atoi() within 1..65535, else 0."""
    number = re.fullmatch(r"[+-]?([0-9]+)", text)
    if number is None or text.startswith("-"):
        return 0
    digits = number[1].lstrip("0")
    return int(digits) if 0 < len(digits) <= 5 and int(digits) <= 65535 else 0


# -- frpc --------------------------------------------------------------------------------------

_FRPC_SHORTHANDS = {
    "c": "config", "v": "version", "h": "help", "i": "local-ip", "l": "local-port", "r": "remote-port",
    "s": "server-addr", "P": "server-port", "p": "protocol", "u": "user", "t": "token", "n": "proxy-name",
    "d": "custom-domain",
}
_FRPC_VALUE_FLAGS = frozenset({
    "config", "config-dir", "allow-unsafe", "local-ip", "local-port", "remote-port", "server-addr", "server-port",
    "protocol", "user", "token", "proxy-name", "visitor-name", "custom-domain", "sd", "locations", "http-user",
    "http-pwd", "host-header-rewrite", "mux", "sk", "allow-users", "server-name", "server-user", "bind-addr",
    "bind-port", "log-level", "log-file", "log-max-days", "tls-server-name", "dns-server", "client-id",
    "metadatas", "annotations", "bandwidth-limit", "bandwidth-limit-mode",
})
# frpc <type> runs a single proxy: a service here exposed on the frps server.
_FRPC_PROXY_TYPES = frozenset({"tcp", "udp", "http", "https", "stcp", "sudp", "xtcp", "tcpmux"})


def _frpc(args: list[str]) -> Tunnel | None:
    cli = _read_flags(args, _FRPC_VALUE_FLAGS, shorthands=_FRPC_SHORTHANDS)
    if "version" in cli.flags or "help" in cli.flags:
        return None
    if not cli.operands:
        # frpc with no command runs the proxies of its config file (-c, default ./frpc.ini)
        config = cli.flags.get("config-dir") or cli.flags.get("config", "")
        return Tunnel("frpc", "", "", 0, (Forward(Direction.REVERSE, "", 0, "", 0, spec=config),))
    proxy_type = cli.operands[0]
    if proxy_type not in _FRPC_PROXY_TYPES:
        return None  # verify, reload, status, stop, nathole...
    host, port = _split_host_port(cli.flags.get("server-addr", ""))  # older frpc took host:port here
    port = _go_port(cli.flags.get("server-port", "")) or port
    user = cli.flags.get("user", "")
    if cli.operands[1:2] == ["visitor"]:
        # a visitor is the consuming side of stcp/sudp/xtcp: it listens here, like ssh -L
        forward = Forward(Direction.LOCAL, cli.flags.get("bind-addr", ""), _go_port(cli.flags.get("bind-port", "")),
                          "", 0, spec=f"{proxy_type} visitor")
    else:
        forward = Forward(Direction.REVERSE, "", _go_port(cli.flags.get("remote-port", "")),
                          cli.flags.get("local-ip") or "127.0.0.1", _go_port(cli.flags.get("local-port", "")),
                          spec=proxy_type)
    return Tunnel("frpc", host, user, port, (forward,))


# -- ngrok -------------------------------------------------------------------------------------

_NGROK_VALUE_FLAGS = frozenset({
    "authtoken", "config", "region", "log", "log-format", "log-level", "url", "domain", "hostname", "subdomain",
    "remote-addr", "basic-auth", "auth", "host-header", "proxy-proto", "bind-tls", "scheme", "binding",
    "upstream-protocol", "app-protocol", "metadata", "description", "label", "crt", "key", "client-cas",
    "cidr-allow", "cidr-deny", "circuit-breaker", "oauth", "oauth-allow-domain", "oauth-allow-email",
    "oauth-client-id", "oauth-client-secret", "oauth-scope", "oidc", "oidc-client-id", "oidc-client-secret",
    "oidc-scope", "request-header-add", "request-header-remove", "response-header-add", "response-header-remove",
    "traffic-policy-file", "traffic-policy-url", "ua-filter-allow", "ua-filter-deny", "verify-webhook",
    "verify-webhook-secret", "mutual-tls-cas", "terminate-at", "inspect", "pooling-enabled",
})
_NGROK_TUNNEL_COMMANDS = frozenset({"http", "tcp", "tls", "tunnel"})


def _ngrok(args: list[str]) -> Tunnel | None:
    cli = _read_flags(args, _NGROK_VALUE_FLAGS)
    command = cli.operands[:1]
    if command == ["start"]:
        # tunnels named in the config file (or --all): what they expose is not on the command line
        forward = Forward(Direction.REVERSE, "", 0, "", 0, spec=" ".join(cli.operands))
    elif command and command[0] in _NGROK_TUNNEL_COMMANDS:
        address = cli.operands[1] if len(cli.operands) > 1 else ""
        public = cli.flags.get("url") or cli.flags.get("domain") or cli.flags.get("hostname") or ""
        public_host, public_port = _url_host_port(public or cli.flags.get("remote-addr", ""))
        forward = _exposed_service(address, public_host, public_port, f"{command[0]} {address}".strip())
    else:
        return None  # version, config, authtoken, api, service...
    return Tunnel("ngrok", "", "", 0, (forward,))


def _exposed_service(address: str, listen_host: str, listen_port: int, spec: str) -> Forward:
    """A REVERSE forward to the local service `address`: a bare port (on localhost), host:port, a
    URL, file:///path or unix:/path."""
    if address.startswith(("file://", "unix:")):
        path = address.removeprefix("file://").removeprefix("unix:")
        return Forward(Direction.REVERSE, listen_host, listen_port, "", 0, target_path=path, spec=spec)
    if _go_port(address):
        host, port = "localhost", _go_port(address)
    else:
        host, port = _url_host_port(address)
    return Forward(Direction.REVERSE, listen_host, listen_port, host, port, spec=spec)


# -- cloudflared -------------------------------------------------------------------------------

_CLOUDFLARED_VALUE_FLAGS = frozenset({
    "url", "hostname", "token", "token-file", "config", "credentials-file", "credentials-contents", "origincert",
    "loglevel", "transport-loglevel", "logfile", "log-directory", "metrics", "edge-ip-version",
    "edge-bind-address", "protocol", "region", "label", "name", "pidfile", "tag", "edge", "grace-period",
    "retries", "ha-connections", "lb-pool", "unix-socket", "http-host-header", "origin-server-name",
    "origin-ca-pool", "proxy-connect-timeout", "proxy-tls-timeout", "proxy-keepalive-connections",
    "proxy-keepalive-timeout", "proxy-address", "proxy-port", "service-op-ip", "icmpv4-src", "icmpv6-src",
    "management-hostname", "max-active-flows", "autoupdate-freq", "output", "features", "post-quantum",
})
# `cloudflared tunnel <these>` manage tunnels; everything else under `tunnel` runs one.
_CLOUDFLARED_MANAGEMENT = frozenset({
    "list", "create", "delete", "login", "info", "route", "cleanup", "token", "vnet", "ingress", "diag", "help",
})


def _cloudflared(args: list[str]) -> Tunnel | None:
    cli = _read_flags(args, _CLOUDFLARED_VALUE_FLAGS)
    command = cli.operands[:2]
    if command[:1] == ["tunnel"]:
        if command[1:] and command[1] in _CLOUDFLARED_MANAGEMENT:
            return None
    elif command or "url" not in cli.flags:
        return None  # access (a client), service install, update, version... `cloudflared --url` is the old form
    url = cli.flags.get("url", "")
    listen_host = cli.flags.get("hostname", "")
    spec = url or " ".join(cli.operands)
    if url:
        forward = _exposed_service(url, listen_host, 0, spec)
    else:
        forward = Forward(Direction.REVERSE, listen_host, 0, "", 0, target_path=cli.flags.get("unix-socket", ""),
                          spec=spec)
    return Tunnel("cloudflared", "", "", 0, (forward,))


# -- bore --------------------------------------------------------------------------------------

_BORE_SHORTHANDS = {"t": "to", "l": "local-host", "p": "port", "s": "secret", "h": "help", "V": "version"}
_BORE_VALUE_FLAGS = frozenset({"to", "local-host", "port", "secret", "min-port", "max-port", "bind-addr",
                               "bind-tunnels"})


def _bore(args: list[str]) -> Tunnel | None:
    """`bore local <port> --to <server> [--local-host h] [--port p]`: the server listens on p."""
    cli = _read_flags(args, _BORE_VALUE_FLAGS, shorthands=_BORE_SHORTHANDS)
    if cli.operands[:1] != ["local"] or "help" in cli.flags or "version" in cli.flags:
        return None
    local_port = _go_port(cli.operands[1]) if len(cli.operands) > 1 else 0
    forward = Forward(Direction.REVERSE, "", _go_port(cli.flags.get("port", "")),
                      cli.flags.get("local-host") or "localhost", local_port, spec=" ".join(cli.operands[:2]))
    return Tunnel("bore", cli.flags.get("to", ""), "", 0, (forward,))


# -- socat -------------------------------------------------------------------------------------

# socat options whose value may be the next argument (it may also be joined: -T10, -lf/tmp/log).
_SOCAT_VALUE_OPTIONS = frozenset({"-b", "-t", "-T", "-lf", "-lp", "-L", "-W", "-r", "-R", "-S"})
_SOCAT_CONNECT = frozenset({
    "TCP", "TCP4", "TCP6", "TCP-CONNECT", "TCP4-CONNECT", "TCP6-CONNECT", "OPENSSL", "OPENSSL-CONNECT", "SSL",
    "UDP", "UDP4", "UDP6", "UDP-CONNECT", "UDP4-CONNECT", "UDP6-CONNECT", "UDP-SENDTO", "UDP4-SENDTO",
    "UDP6-SENDTO", "SCTP", "SCTP-CONNECT", "SCTP4-CONNECT", "SCTP6-CONNECT", "DCCP-CONNECT", "DCCP4-CONNECT",
    "DCCP6-CONNECT", "OPENSSL-DTLS-CLIENT", "VSOCK-CONNECT",
})
# SOCKS4:proxy:host:port and PROXY:proxy:host:port go out to the proxy.
_SOCAT_PROXIED = frozenset({"SOCKS", "SOCKS4", "SOCKS4A", "SOCKS5", "SOCKS5-CONNECT", "PROXY", "PROXY-CONNECT"})
_SOCAT_LISTEN = frozenset({
    "TCP-LISTEN", "TCP4-LISTEN", "TCP6-LISTEN", "TCP-L", "TCP4-L", "TCP6-L", "OPENSSL-LISTEN", "SSL-L",
    "UDP-LISTEN", "UDP4-LISTEN", "UDP6-LISTEN", "UDP-L", "UDP4-L", "UDP6-L", "SCTP-LISTEN", "SCTP4-LISTEN",
    "SCTP6-LISTEN", "DCCP-LISTEN", "UNIX-LISTEN", "UNIX-L", "ABSTRACT-LISTEN", "OPENSSL-DTLS-SERVER",
    "VSOCK-LISTEN",
})
_SOCAT_LOCAL_SOCKETS = frozenset({"UNIX-CONNECT", "UNIX", "UNIX-CLIENT", "UNIX-SENDTO", "ABSTRACT-CONNECT",
                                  "ABSTRACT-CLIENT"})
_SOCAT_SHELLS = frozenset({"EXEC", "SYSTEM", "SHELL"})


class _SocatEnd(NamedTuple):
    role: str  # "remote", "service" (this host), "shell", "listen" or "other" (stdio, files...)
    host: str = ""
    port: int = 0
    path: str = ""


def _socat(args: list[str]) -> Tunnel | None:
    index = 0
    while index < len(args) and len(args[index]) > 1 and args[index].startswith("-"):
        index += 2 if args[index] in _SOCAT_VALUE_OPTIONS else 1
    if len(args) - index < 2:
        return None
    first, second = args[index], args[index + 1]
    spec = f"{first} {second}"
    a, b = _socat_end(first), _socat_end(second)
    return _socat_tunnel(a, b, spec) or _socat_tunnel(b, a, spec)


def _socat_end(address: str) -> _SocatEnd:
    """What one socat address is: `TYPE:params[,options]`, types case-insensitive; `-` is stdio."""
    kind, _, params = address.partition(":")
    kind = kind.partition(",")[0].upper()
    params = params.partition(",")[0]
    if kind in _SOCAT_CONNECT or kind in _SOCAT_PROXIED:
        if kind in _SOCAT_PROXIED:
            host, port = _split_host_port(params.partition(":")[0])
        else:
            host, port = _split_host_port(params)
        return _SocatEnd("service" if _is_local_host(host) else "remote", host, port)
    if kind in _SOCAT_LISTEN:
        if kind.startswith(("UNIX", "ABSTRACT")):
            return _SocatEnd("listen", path=params)
        return _SocatEnd("listen", port=_go_port(params))
    if kind in _SOCAT_LOCAL_SOCKETS:
        return _SocatEnd("service", path=params)
    if kind in _SOCAT_SHELLS:
        return _SocatEnd("shell")
    return _SocatEnd("other")


def _socat_tunnel(a: _SocatEnd, b: _SocatEnd, spec: str) -> Tunnel | None:
    """`a` to `b` as a relay or a forward, or None if this ordering is neither:
    - a remote peer spliced to a service or shell here: RELAY (a reverse shell, a reverse
      port forward); spliced to a second remote peer: RELAY too, this host is a pivot;
    - a listener to anything it connects to: LOCAL, like ssh -L;
    - a listener to a shell: RELAY, a bind shell, with no far end known."""
    if a.role == "remote" and b.role in ("service", "shell", "remote"):
        forward = Forward(Direction.RELAY, "", 0, b.host, b.port, target_path=b.path, spec=spec)
        return Tunnel("socat", a.host, "", a.port, (forward,))
    if a.role == "listen" and b.role in ("service", "remote"):
        forward = Forward(Direction.LOCAL, "", a.port, b.host, b.port, a.path, b.path, spec)
        remote = b if b.role == "remote" else _SocatEnd("other")
        return Tunnel("socat", remote.host, "", remote.port, (forward,))
    if a.role == "listen" and b.role == "shell":
        return Tunnel("socat", "", "", 0, (Forward(Direction.RELAY, "", a.port, "", 0, a.path, spec=spec),))
    return None


# -- ncat --------------------------------------------------------------------------------------

_NCAT_VALUE_LETTERS = frozenset(re.findall(r"(.):", "46UCc:e:g:G:i:km:hp:d:lo:x:ts:uvw:nz"))
# ncat_main.c's long options, in its order (getopt_long takes the first of equal candidates).
_NCAT_LONG = {
    "4": _LongOption(False, "4"), "6": _LongOption(False, "6"), "unixsock": _LongOption(False, "U"),
    "vsock": _LongOption(False, ""), "crlf": _LongOption(False, "C"), "g": _LongOption(True, "g"),
    "G": _LongOption(True, "G"), "exec": _LongOption(True, "e"), "sh-exec": _LongOption(True, "c"),
    "lua-exec": _LongOption(True, ""), "lua-exec-internal": _LongOption(True, ""),
    "max-conns": _LongOption(True, "m"), "help": _LongOption(False, "h"), "delay": _LongOption(True, "d"),
    "listen": _LongOption(False, "l"), "output": _LongOption(True, "o"), "hex-dump": _LongOption(True, "x"),
    "append-output": _LongOption(False, ""), "idle-timeout": _LongOption(True, "i"),
    "keep-open": _LongOption(False, "k"), "recv-only": _LongOption(False, "*recvonly"),
    "source-port": _LongOption(True, "p"), "source": _LongOption(True, "s"),
    "send-only": _LongOption(False, "*sendonly"), "no-shutdown": _LongOption(False, "*noshutdown"),
    "broker": _LongOption(False, ""), "chat": _LongOption(False, ""), "talk": _LongOption(False, ""),
    "deny": _LongOption(True, ""), "denyfile": _LongOption(True, ""), "allow": _LongOption(True, ""),
    "allowfile": _LongOption(True, ""), "telnet": _LongOption(False, "t"), "udp": _LongOption(False, "u"),
    "sctp": _LongOption(False, ""), "version": _LongOption(False, ""), "verbose": _LongOption(False, "v"),
    "wait": _LongOption(True, "w"), "nodns": _LongOption(False, "n"), "proxy": _LongOption(True, ""),
    "proxy-type": _LongOption(True, ""), "proxy-auth": _LongOption(True, ""), "proxy-dns": _LongOption(True, ""),
    "nsock-engine": _LongOption(True, ""), "test": _LongOption(False, ""), "ssl": _LongOption(False, "*ssl"),
    "ssl-cert": _LongOption(True, ""), "ssl-key": _LongOption(True, ""), "ssl-verify": _LongOption(False, ""),
    "ssl-trustfile": _LongOption(True, ""), "ssl-ciphers": _LongOption(True, ""),
    "ssl-servername": _LongOption(True, ""), "ssl-alpn": _LongOption(True, ""),
}
_NCAT_EXEC = frozenset({"e", "c", "lua-exec", "lua-exec-internal"})
_NCAT_LISTEN = frozenset({"l", "broker", "chat", "talk"})  # --broker and --chat imply --listen


def _ncat(args: list[str]) -> Tunnel | None:
    """`ncat host port -e cmd` joins a shell or program to a remote peer: RELAY. In listen mode
    (-l) the same is a bind shell: RELAY too, with the listener but no far end."""
    found, operands = _gnu_getopt(args, _NCAT_VALUE_LETTERS, _NCAT_LONG)
    command = next((value for name, value in found if name in _NCAT_EXEC and value is not None), None)
    if command is None:
        return None
    if any(name in _NCAT_LISTEN for name, _ in found):
        source_port = next((value for name, value in found if name == "p" and value is not None), "")
        host, port = _ncat_listen_address(operands, _go_port(source_port))
        return Tunnel("ncat", "", "", 0, (Forward(Direction.RELAY, host, port, "", 0, spec=command),))
    host = operands[0] if operands else ""
    port = _go_port(operands[1]) if len(operands) > 1 else 0
    return Tunnel("ncat", host, "", port, (Forward(Direction.RELAY, "", 0, "", 0, spec=command),))


def _ncat_listen_address(operands: list[str], source_port: int) -> tuple[str, int]:
    """`ncat -l [host] [port]`: a lone operand is the port when it is a number; -p also gives it."""
    if len(operands) >= 2:
        return operands[0], _go_port(operands[1])
    if operands and _go_port(operands[0]):
        return "", _go_port(operands[0])
    return (operands[0] if operands else ""), source_port


# -- wstunnel ----------------------------------------------------------------------------------

# wstunnel 7+ (clap): `wstunnel client [-L spec]... [-R spec]... ws[s]|http[s]|wts://server`. The
# Haskell versions before it had no subcommand and took `-L [BIND:]PORT:HOST:PORT` and `-D [BIND:]PORT`.
_WSTUNNEL_SHORTHANDS = {
    "L": "local-to-remote", "R": "remote-to-local", "D": "dynamicToRemote", "c": "connection-min-idle",
    "p": "http-proxy", "P": "http-upgrade-path-prefix", "H": "http-headers", "h": "help", "V": "version",
}
_WSTUNNEL_VALUE_FLAGS = frozenset({
    "local-to-remote", "remote-to-local", "socket-so-mark", "connection-min-idle", "connection-retry-max-backoff",
    "connection-retry-max-backoff-sec", "reverse-tunnel-connection-retry-max-backoff",
    "reverse-tunnel-connection-retry-max-backoff-sec", "tls-sni-override", "http-proxy", "http-proxy-login",
    "http-proxy-password", "http-upgrade-path-prefix", "http-upgrade-credentials", "websocket-ping-frequency",
    "websocket-ping-frequency-sec", "http-headers", "http-headers-file", "tls-certificate", "tls-private-key",
    "dns-resolver", "log-lvl", "nb-worker-threads",
    # the Haskell versions
    "localToRemote", "dynamicToRemote", "restrictTo", "upgradePathPrefix", "httpProxy", "hostHeader", "tlsSNI",
    "websocketPingFrequencySec", "upgradeCredentials", "udpTimeoutSec", "customHeaders",
})
_WSTUNNEL_LOCAL = frozenset({"local-to-remote", "localToRemote"})
_WSTUNNEL_DYNAMIC_SCHEMES = frozenset({"socks5", "http", "tproxy+tcp", "tproxy+udp"})


def _wstunnel(args: list[str]) -> Tunnel | None:
    cli = _read_flags(args, _WSTUNNEL_VALUE_FLAGS, shorthands=_WSTUNNEL_SHORTHANDS)
    if {"help", "version", "server"} & cli.flags.keys():
        return None  # `--server`: the Haskell versions' server
    command = cli.operands[:1]
    if command == ["server"] or (command and command != ["client"] and "://" not in command[0]):
        return None
    server = next((operand for operand in cli.operands if "://" in operand), "")
    forwards = [forward for name, value in cli.given if (forward := _wstunnel_forward(name, value)) is not None]
    host, port = _url_host_port(server)
    return Tunnel("wstunnel", host, "", port, tuple(forwards))


def _wstunnel_forward(flag: str, spec: str) -> Forward | None:
    """One -L or -R: `scheme://[BIND:]PORT:HOST:PORT[?options]` (7+), or the Haskell versions'
    `[BIND:]PORT:HOST:PORT` (-L) and `[BIND:]PORT` (-D). wstunnel binds to 127.0.0.1 by default."""
    if flag == "dynamicToRemote":
        bind, port, _ = _wstunnel_bind(spec)
        return Forward(Direction.DYNAMIC, bind, port, "", 0, spec=spec) if port else None
    if flag not in _WSTUNNEL_LOCAL and flag != "remote-to-local":
        return None
    reverse = flag == "remote-to-local"
    scheme, separator, rest = spec.partition("://")
    if not separator:  # the Haskell versions' -L: always TCP
        scheme, rest = ("tcp", spec) if flag in _WSTUNNEL_LOCAL else ("", "")
    if scheme in _WSTUNNEL_DYNAMIC_SCHEMES:
        if reverse and scheme.startswith("tproxy"):
            return None  # refused: a transparent proxy listens here only
        bind, port, _ = _wstunnel_bind(rest)
        direction = Direction.REVERSE_DYNAMIC if reverse else Direction.DYNAMIC
        return Forward(direction, bind, port, "", 0, spec=spec) if port else None
    direction = Direction.REVERSE if reverse else Direction.LOCAL
    if scheme == "unix":
        path, _, target = rest.partition(":")
        host, port = _split_host_port(target.partition("?")[0])
        return Forward(direction, "", 0, host, port, listen_path=path, spec=spec)
    if scheme not in ("tcp", "udp"):
        return None  # stdio (plumbing for an ssh ProxyCommand, no listener) or unknown: refused
    bind, listen_port, target = _wstunnel_bind(rest)
    host, port = _split_host_port(target.partition("?")[0])
    return Forward(direction, bind, listen_port, host, port, spec=spec) if listen_port and port else None


def _wstunnel_bind(text: str) -> tuple[str, int, str]:
    """parse_local_bind(): `[v6]:PORT`, `v4:PORT` or `PORT`, then what follows (after ':' or '?')."""
    if text.startswith("["):
        bind, _, rest = text[1:].partition("]")
    else:
        head, _, tail = text.partition(":")
        bind, rest = (head, tail) if _is_ipv4(head) else ("127.0.0.1", text)
    port_text, _, remaining = _partition_any(rest.lstrip(":"), ":?")
    return bind, _go_port(port_text), remaining


def _is_ipv4(text: str) -> bool:
    try:
        ipaddress.IPv4Address(text)
    except ValueError:
        return False
    return True


# -- gost --------------------------------------------------------------------------------------

# gost v2 and v3 read their flags with Go's flag package: -L (a service) and -F (a hop of the
# chain its traffic goes through) repeat. A node is `[scheme://][user:pass@][host]:port[/targets][?query]`,
# the scheme `protocol+transport`; with no scheme, an auto (HTTP/SOCKS) proxy.
_GOST_VALUE_FLAGS = frozenset({"L", "F", "C", "api", "metrics", "O"})
_GOST_REVERSE = frozenset({"rtcp", "rudp"})  # the last hop of the chain listens and connects back here
_GOST_FORWARD = frozenset({"tcp", "udp"})  # this host listens and connects to the target through the chain


class _GostNode(NamedTuple):
    protocol: str
    user: str
    host: str
    port: int
    targets: list[str]


def _gost(args: list[str]) -> Tunnel | None:
    cli = _read_flags(args, _GOST_VALUE_FLAGS, interspersed=False)
    if "V" in cli.flags:
        return None  # prints the version
    chain = [_gost_node(value) for name, value in cli.given if name == "F"]
    forwards = [forward for name, value in cli.given
                if name == "L" and (forward := _gost_service(value, bool(chain))) is not None]
    first = chain[0] if chain else _GostNode("", "", "", 0, [])
    return Tunnel("gost", first.host, first.user, first.port, tuple(forwards))


def _gost_service(spec: str, chained: bool) -> Forward | None:
    """rtcp/rudp through a chain: REVERSE (without one they listen here, as tcp/udp do); tcp/udp
    with a target: LOCAL; a proxy service with a chain: DYNAMIC. A proxy with no chain serves this
    host's own network to whoever reaches it, and has no far end: not counted here."""
    node = _gost_node(spec)
    target_host, target_port = _split_host_port(node.targets[0]) if node.targets else ("", 0)
    if node.protocol in _GOST_REVERSE | _GOST_FORWARD:
        if not node.targets:
            return None
        direction = Direction.REVERSE if node.protocol in _GOST_REVERSE and chained else Direction.LOCAL
        return Forward(direction, node.host, node.port, target_host, target_port, spec=spec)
    if chained and node.protocol not in ("tun", "tap"):
        return Forward(Direction.DYNAMIC, node.host, node.port, "", 0, spec=spec)
    return None


def _gost_node(text: str) -> _GostNode:
    scheme, separator, rest = text.partition("://")
    if not separator:
        scheme, rest = "auto", text
    authority, _, path = rest.partition("/")
    authority, path = authority.partition("?")[0], path.partition("?")[0]
    userinfo, _, host_port = authority.rpartition("@")
    host, port = _split_host_port(host_port)
    return _GostNode(scheme.partition("+")[0].lower(), userinfo.partition(":")[0], host, port,
                     [target for target in path.split(",") if target])


# -- rathole -----------------------------------------------------------------------------------

_RATHOLE_SHORTHANDS = {"c": "client", "s": "server", "h": "help", "V": "version"}


def _rathole(args: list[str]) -> Tunnel | None:
    """`rathole [--client|--server] CONFIG`: a client exposes the services its config names on the
    server (like frpc). Without --client or --server, the config's own section decides: counted as
    a client, since the command line cannot tell."""
    cli = _read_flags(args, frozenset(), shorthands=_RATHOLE_SHORTHANDS)
    if {"help", "version", "server", "genkey"} & cli.flags.keys():
        return None
    config = cli.operands[0] if cli.operands else ""
    return Tunnel("rathole", "", "", 0, (Forward(Direction.REVERSE, "", 0, "", 0, spec=config),))


# -- iodine ------------------------------------------------------------------------------------

_IODINE_VALUE_LETTERS = frozenset(re.findall(r"(.):", "46vfhru:t:d:R:P:m:M:F:T:O:L:I:z:"))
# common.c check_topdomain(): 3 to 128 characters, labels of [a-zA-Z0-9-] up to 63, at least one dot.
_IODINE_TOPDOMAIN = re.compile(r"(?=.{3,128}\Z)[A-Za-z0-9-]{1,63}(?:\.[A-Za-z0-9-]{1,63})+", re.DOTALL)


def _iodine(args: list[str]) -> Tunnel | None:
    """`iodine [options] [nameserver] topdomain`: an IP tunnel over DNS to the iodined server that
    answers for topdomain. The far end gets a network interface to this host, every port of it:
    REVERSE_DYNAMIC."""
    found, operands = _gnu_getopt(args, _IODINE_VALUE_LETTERS)
    if any(letter in ("v", "h") for letter, _ in found) or not 1 <= len(operands) <= 2:
        return None  # version, help, or a usage error
    if not _IODINE_TOPDOMAIN.fullmatch(operands[-1]):
        return None  # check_topdomain() refuses it: iodine exits
    forward = Forward(Direction.REVERSE_DYNAMIC, "", 0, "", 0, spec=" ".join(operands))
    return Tunnel("iodine", operands[-1], "", 0, (forward,))


# -- ptunnel-ng --------------------------------------------------------------------------------

_PTUNNEL_VALUE_LETTERS = frozenset("mplcvP")
_PTUNNEL_OPTIONAL_LETTERS = frozenset("rRLoduCge")  # getopt's `x::`: -r127.0.0.1, never -r 127.0.0.1
_PTUNNEL_LONG = {
    "magic": _LongOption(True, "m"), "proxy": _LongOption(True, "p"), "listen": _LongOption(True, "l"),
    "remote-adr": _LongOption(True, "r", optional=True), "remote-port": _LongOption(True, "R", optional=True),
    "connections": _LongOption(True, "c"), "verbosity": _LongOption(True, "v"),
    "libpcap": _LongOption(True, "L", optional=True), "logfile": _LongOption(True, "o", optional=True),
    "statistics": _LongOption(False, "s"), "passwd": _LongOption(True, "P"), "udp": _LongOption(False, "*udp"),
    "unprivileged": _LongOption(False, "*unprivileged"), "daemon": _LongOption(True, "d", optional=True),
    "syslog": _LongOption(False, "S"), "user": _LongOption(True, "u", optional=True),
    "group": _LongOption(True, "g", optional=True), "chroot": _LongOption(True, "C", optional=True),
    "setcon": _LongOption(True, "e", optional=True), "help": _LongOption(False, "h"),
}


def _ptunnel_ng(args: list[str]) -> Tunnel | None:
    """TCP over ICMP echo (or UDP). With -p it is the client: it listens on -l (2222) and reaches
    -r:-R (127.0.0.1:22) from the proxy: LOCAL. Without -p it is the proxy: anyone who can ping
    this host gets TCP connections made from it, to -r:-R when given: RELAY, a way in."""
    found, _ = _gnu_getopt(args, _PTUNNEL_VALUE_LETTERS, _PTUNNEL_LONG, _PTUNNEL_OPTIONAL_LETTERS)
    values = {letter: value for letter, value in found if value is not None}
    if any(letter == "h" for letter, _ in found):
        return None
    proxy = values.get("p")
    if proxy is None:
        forward = Forward(Direction.RELAY, "", 0, values.get("r", ""), _c_port(values.get("R", "")), spec="proxy")
        return Tunnel("ptunnel-ng", "", "", 0, (forward,))
    listen_port = _c_port(values["l"]) if "l" in values else 2222
    target_port = _c_port(values["R"]) if "R" in values else 22
    forward = Forward(Direction.LOCAL, "", listen_port, values.get("r", "127.0.0.1"), target_port,
                      spec=f"{listen_port} via {proxy}")
    return Tunnel("ptunnel-ng", proxy, "", 0, (forward,))


_C_UNSIGNED = re.compile(r"[ \t\n\v\f\r]*\+?([0-9]+)")


def _c_port(text: str) -> int:
    """A port as strtoul() or atoi() reads it (leading digits, after spaces), 0 outside 1..65535."""
    number = _C_UNSIGNED.match(text)
    if number is None:
        return 0
    digits = number[1].lstrip("0")[:6]
    return int(digits) if digits and int(digits) <= 65535 else 0


# -- dbclient (dropbear) -----------------------------------------------------------------------

# cli-runopts.c cli_getopts(): its own loop, not getopt. Letters cluster until one that takes a
# value, whose value is the rest of the argument or the next one; options are read up to the
# second operand (the first is the host), where the command starts. -F, -e, -D and -V print the
# version and exit: dbclient has no dynamic forwarding. Unknown letters are ignored.
_DBCLIENT_VALUE_LETTERS = frozenset("pilWKIcmJboLRB")
_DBCLIENT_EXITS = frozenset("hFeDV")
_DBCLIENT_PORT_OPTION = re.compile(r"\s*port(?:\s*=\s*|\s+)(.*)", re.IGNORECASE | re.DOTALL)


def _dbclient(args: list[str]) -> Tunnel | None:
    host_arg = ""
    options: list[tuple[str, str]] = []
    index = 0
    while index < len(args):
        arg = args[index]
        index += 1
        if not arg.startswith("-"):
            if host_arg:
                break  # the remote command
            host_arg = arg
            continue
        letters, value_letter = _dbclient_letters(arg)
        if _DBCLIENT_EXITS & set(letters):
            return None
        if value_letter:
            value = arg[len(letters) + 1 :]
            if not value:
                value = args[index] if index < len(args) else ""
                index += 1
            options.append((value_letter, value))
    return _dbclient_tunnel(host_arg, options)


def _dbclient_letters(arg: str) -> tuple[str, str]:
    """The letters read from one argument, and the letter that takes a value ("" if none)."""
    for pos in range(1, len(arg)):
        if arg[pos] in _DBCLIENT_VALUE_LETTERS:
            return arg[1 : pos + 1], arg[pos]
    return arg[1:], ""


def _dbclient_tunnel(host_arg: str, options: list[tuple[str, str]]) -> Tunnel:
    user = port = ""
    forwards: list[Forward] = []
    for letter, value in options:
        if letter == "l":
            user = value
        elif letter == "p":
            port = value
        elif letter == "o" and (match := _DBCLIENT_PORT_OPTION.fullmatch(value)):
            port = match[1]
        elif letter in "LR" and (forward := _dbclient_forward(letter, value)) is not None:
            forwards.append(forward)
    # [user@]host[^port or /port]; "a,b,c" hops through a and b to c
    last_hop = host_arg.rpartition(",")[2]
    at_user, at, host_port = last_hop.partition("@")
    if not at:
        at_user, host_port = "", last_hop
    host, separator, hop_port = _partition_any(host_port, "^") if "^" in host_port else host_port.partition("/")
    return Tunnel("dbclient", host, at_user or user, _c_port(hop_port if separator else port), tuple(forwards))


def _dbclient_forward(letter: str, spec: str) -> Forward | None:
    """addforward(): `[listenaddr:]listenport:connectaddr:connectport`, split at the first three
    colons (no brackets: no IPv6 addresses)."""
    parts = spec.split(":", 3)
    if len(parts) == 3:
        parts.insert(0, "")
    if len(parts) != 4:
        return None  # "Bad TCP forward"
    listen_port, target_port = _dropbear_port(parts[1]), _dropbear_port(parts[3])
    if listen_port is None or target_port is None:
        return None  # "Bad TCP forward" or "Bad TCP port"
    direction = Direction.REVERSE if letter == "R" else Direction.LOCAL
    return Forward(direction, parts[0], listen_port, parts[2], target_port, spec=spec)


def _dropbear_port(text: str) -> int | None:
    """m_str_to_uint(): strtoul() that must read the whole text, then at most 65535."""
    number = _C_UNSIGNED.fullmatch(text)
    if number is None:
        return None
    digits = number[1].lstrip("0")[:6] or "0"
    return int(digits) if int(digits) <= 65535 else None


def _dropbearmulti(args: list[str]) -> Tunnel | None:
    """The multi-call binary run by its own name takes the program's name first."""
    if args[:1] in (["dbclient"], ["ssh"]):
        return _dbclient(args[1:])
    return None


# -- plink (PuTTY) -----------------------------------------------------------------------------

# cmdline.c and plink's main(): each option a whole word; those below take the next argument.
# The first operand is the host ([proto,][user@]host), the next one starts the remote command.
_PLINK_VALUE_OPTIONS = frozenset({
    "-load", "-l", "-loghost", "-hostkey", "-L", "-R", "-D", "-nc", "-m", "-P", "-pw", "-pwfile", "-i",
    "-sercfg", "-sessionlog", "-sshlog", "-sshrawlog", "-proxycmd",
})
_PLINK_EXITS = frozenset({"-V", "--version", "-pgpfp", "-h", "-?", "--help"})
# Forwards work only over SSH; the last protocol option wins.
_PLINK_PROTOCOLS = {"ssh": True, "ssh-connection": True, "telnet": False, "rlogin": False, "raw": False,
                    "serial": False, "supdup": False}


def _plink(args: list[str]) -> Tunnel | None:
    host_arg = ""
    ssh = True
    options: list[tuple[str, str]] = []
    index = 0
    while index < len(args):
        arg = args[index]
        index += 1
        if not arg.startswith("-"):
            if host_arg:
                break  # the remote command
            host_arg, ssh = _plink_host(arg, ssh)
        elif arg in _PLINK_EXITS:
            return None
        elif arg[1:] in _PLINK_PROTOCOLS:
            ssh = _PLINK_PROTOCOLS[arg[1:]]
        elif arg in _PLINK_VALUE_OPTIONS:
            options.append((arg, args[index] if index < len(args) else ""))
            index += 1
    user, at, host = host_arg.rpartition("@")
    user = user if at else next((value for name, value in reversed(options) if name == "-l"), "")
    port = next((_c_port(value) for name, value in reversed(options) if name == "-P"), 0)
    forwards = [forward for name, value in options if ssh and (forward := _plink_forward(name, value)) is not None]
    return Tunnel("plink", host, user, port, tuple(forwards))


def _plink_host(arg: str, ssh: bool) -> tuple[str, bool]:
    """A `proto,` prefix naming a protocol sets it."""
    prefix, comma, rest = arg.partition(",")
    if comma and prefix in _PLINK_PROTOCOLS:
        return rest, _PLINK_PROTOCOLS[prefix]
    return arg, ssh


def _plink_forward(option: str, spec: str) -> Forward | None:
    """-L/-R `[srcaddr:]srcport:desthost:destport`, split at the second-to-last colon outside
    brackets; -D `[srcaddr:]srcport`."""
    colons = _colons_outside_brackets(spec)
    if option == "-D":
        listen_host, listen_port = _plink_end(spec, colons)
        return Forward(Direction.DYNAMIC, listen_host, listen_port, "", 0, spec=spec) if listen_port else None
    if option not in ("-L", "-R") or len(colons) < 2:
        return None  # "expects at least two colons"
    split = colons[-2]
    listen_host, listen_port = _plink_end(spec[:split], [c for c in colons if c < split])
    target_host, target_port = _plink_end(spec[split + 1 :], [colons[-1] - split - 1])
    direction = Direction.REVERSE if option == "-R" else Direction.LOCAL
    return Forward(direction, listen_host, listen_port, target_host, target_port, spec=spec)


def _plink_end(text: str, colons: list[int]) -> tuple[str, int]:
    """`[host:]port`, the host in brackets or not."""
    if not colons:
        return "", _c_port(text)
    return text[: colons[-1]].strip("[]"), _c_port(text[colons[-1] + 1 :])


def _colons_outside_brackets(text: str) -> list[int]:
    colons, depth = [], 0
    for pos, char in enumerate(text):
        if char == "[":
            depth += 1
        elif char == "]":
            depth = max(depth - 1, 0)
        elif char == ":" and not depth:
            colons.append(pos)
    return colons


# -- addresses ---------------------------------------------------------------------------------

_SCHEME_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443, "wts": 443, "ssh": 22, "rdp": 3389,
                 "smb": 445}
_LOCAL_NAMES = frozenset({"localhost", "ip6-localhost", "ip6-loopback"})


def _split_host_port(text: str) -> tuple[str, int]:
    """`host:port`, `[v6]:port`, `host` or a bare IPv6 address; port 0 when missing or not a number."""
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        return host, _go_port(rest.removeprefix(":"))
    if text.count(":") == 1:
        host, _, port = text.partition(":")
        return host, _go_port(port)
    return text, 0


def _url_host_port(text: str) -> tuple[str, int]:
    """Host and port of `[scheme://][user@]host[:port][/path]`; with no port, the scheme's."""
    scheme, separator, rest = text.partition("://")
    if not separator:
        scheme, rest = "", text
    authority = re.split(r"[/?#]", rest, maxsplit=1)[0].rpartition("@")[2]
    host, port = _split_host_port(authority)
    return host, port or _SCHEME_PORTS.get(scheme.lower(), 0)


def _is_ip_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _is_local_host(host: str) -> bool:
    """Whether connecting to `host` stays on this host: localhost names, 127.0.0.0/8, ::1 and
    the any-addresses 0.0.0.0 and ::, including shorthands inet_aton() accepts (127.1)."""
    name = host.strip("[]").translate(_ASCII_LOWER).rstrip(".")
    if name in _LOCAL_NAMES:
        return True
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        return _is_local_ipv4_shorthand(name)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback or address.is_unspecified


def _is_local_ipv4_shorthand(name: str) -> bool:
    if not re.fullmatch(r"[0-9a-fx.]{1,32}", name):
        return False
    try:
        packed = socket.inet_aton(name)
    except OSError:
        return False
    return packed[0] == 127 or packed == b"\0\0\0\0"


_PARSERS: dict[str, Callable[[list[str]], Tunnel | None]] = {
    "ssh": parse_ssh_args,
    "autossh": _autossh,
    "chisel": _chisel,
    "frpc": _frpc,
    "ngrok": _ngrok,
    "cloudflared": _cloudflared,
    "bore": _bore,
    "socat": _socat,
    "ncat": _ncat,
    "wstunnel": _wstunnel,
    "gost": _gost,
    "rathole": _rathole,
    "iodine": _iodine,
    "ptunnel-ng": _ptunnel_ng,
    "dbclient": _dbclient,
    "dropbearmulti": _dropbearmulti,
    "plink": _plink,
}
