"""ssh's client configuration, evaluated for one command line as OpenSSH 9.x does, without ssh.

A forward need not be on the command line: `ssh -N gw` with `RemoteForward 2222 localhost:22`
under `Host gw` in ~/.ssh/config opens the same reverse tunnel as `ssh -N -R 2222:localhost:22
gw` (THREAT-MODEL.md). So for each exec of ssh the probe evaluates the files ssh would read, as
that process sees them (sensor/probe/ssh_files.py), and the directives they add travel in the
exec frame; the aggregator applies them after the command line (sensor/classify/tunnel.py).

What is evaluated, after readconf.c and ssh.c (OpenSSH 9.2, the oracle of tests/unit/test_ssh_config.py):
- the order: -o options and the other command-line options first, then the -F file (or none
  with `-F none`), or else the user's ~/.ssh/config (home from the passwd entry, as ssh does)
  then /etc/ssh/ssh_config; the first value of a single-value keyword wins, forwards accumulate
  (duplicates dropped), ClearAllForwardings clears them all at the end;
- `Include` (relative paths under ~/.ssh for user files and /etc/ssh for the system one, `~`
  and `~user`, glob patterns, sorted; files included from an inactive block are parsed with every
  Host and Match false; depth at most 16, as ssh);
- `Host` (patterns with `*` and `?`, `!` negation, against the destination as given);
  `Match` all, host (against HostName with %h expanded), originalhost, user (the remote user,
  else the local one), localuser, canonical and final (true in the final pass, which `Match
  final` or CanonicalizeHostname requests: the files are read again with the host now its
  HostName, lowercased);
- the keywords RemoteForward, LocalForward, DynamicForward, ClearAllForwardings, ProxyJump,
  ProxyCommand (ignored once ProxyJump is set, and the other way round), HostName (%h and %%),
  User, Port, CanonicalizeHostname (only for the final pass it asks for); keywords are
  case-insensitive, with `=` or blanks before the value, quotes as ssh's argv_split().

What is not evaluated:
- `Match exec` is never run (the agent never executes what a monitored process wrote). Its
  outcome is unknown, and so is that of a criterion ssh 9.2 does not know (`localnetwork`,
  `tagged`, `version`... of later versions) or of a Match line ssh would refuse. A block whose
  outcome is unknown is taken as possibly matching: its forwards are added (a forward that may be
  set up is reported), but its ClearAllForwardings, HostName, User, Port, ProxyJump and
  ProxyCommand are not applied (taking them could hide a forward, or a value a later block sets).
  Each such block is named in a note.
- Hostname canonicalization (CanonicalizeHostname, CanonicalDomains) needs DNS: the final pass
  runs with the host not canonicalized, as when resolution fails and ssh falls back.
- Tokens other than %h and %% in HostName, environment variables (${VAR}) in forward specs.
- A file ssh would refuse to read (an unknown keyword, a bad value: ssh stops with "terminating,
  N bad configuration options") is evaluated anyway, its bad lines skipped: the tunnel may not
  start, but that is ssh's business, and a newer ssh may accept what 9.2 refuses.
- `~` in Include paths is the passwd home, or $HOME when the caller gives it (glob(3) uses $HOME).

Bounds, so that hostile files give a counted outcome and never an exception: at most
MAX_FILE_BYTES read of a file (the reader's cap), MAX_TOTAL_CHARS in all, MAX_LINE characters a
line (longer lines are skipped), MAX_LINES lines evaluated, MAX_FILES files read in all (both
passes), MAX_GLOB files from one Include pattern, MAX_LISTINGS directories listed for globs,
MAX_MATCH_WORK steps of pattern matching (past it, Host and Match are taken as possibly matching),
MAX_DEPTH nested includes, MAX_DIRECTIVES directives and MAX_NOTES notes carried.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import IntEnum
from functools import lru_cache
from typing import NamedTuple, Protocol

from sensor.classify.tunnel import (
    _ASCII_LOWER,
    ConfigLine,
    Direction,
    Forward,
    _a2port,
    _expand_hostname,
    _forward_option,
    _is_ip_address,
    _parse_ssh_uri,
    _partition_any,
    config_forward,
    config_line,
    ssh_args,
    strdelim,
)

MAX_DEPTH = 16  # readconf.c READCONF_MAX_DEPTH
MAX_FILE_BYTES = 64 * 1024
MAX_TOTAL_CHARS = 128 * 1024  # read in one evaluation, all files and both passes together
MAX_LINES = 2000  # lines that say something, evaluated in one evaluation (a few ms of the reader's time)
MAX_LINE = 4096
MAX_FILES = 64
MAX_GLOB = 64
MAX_DIRECTIVES = 32
MAX_NOTES = 8
# Pattern matching costs up to (host length x pattern length) steps; an evaluation spends at most
# this many (a few hundred ms at worst; a config of a thousand ordinary Host lines spends ~1%).
MAX_MATCH_WORK = 2_000_000
MAX_LISTINGS = 64  # directories listed for Include globs in one evaluation
MAX_PARSED_KEPT = 64 * 1024  # characters of a file whose parse is remembered (32 such files)
USER_CONFIG = ".ssh/config"
SYSTEM_CONFIG = "/etc/ssh/ssh_config"
SYSTEM_DIR = "/etc/ssh"
_FORWARD_KEYWORDS = {"remoteforward": "RemoteForward", "localforward": "LocalForward",
                     "dynamicforward": "DynamicForward"}
_FLAGS = {"yes": True, "true": True, "no": False, "false": False}
_SUBPATTERN_MAX = 1023  # match.c: a subpattern that does not fit its 1024-byte buffer matches nothing


class ConfigFile(NamedTuple):
    """One file as the reader found it: its text (None when not read), owner and mode, and why
    it was not read ("missing" when it does not exist: ssh skips those)."""

    text: str | None
    uid: int = 0
    mode: int = 0
    problem: str = ""
    cut: bool = False  # larger than the reader reads (MAX_FILE_BYTES): only its beginning


class Files(Protocol):
    """The files as the ssh process sees them (its root, its cwd for relative paths)."""

    def read(self, path: str) -> ConfigFile: ...

    def listdir(self, path: str) -> list[str] | None: ...

    def home_of(self, user: str) -> str | None: ...


@dataclass(frozen=True)
class LocalUser:
    """Who runs ssh: its passwd entry (name and home, "" when there is none) and real uid; and its
    $HOME when known (glob(3) expands `~` in Include from it)."""

    name: str
    uid: int
    home: str
    env_home: str | None = None
    cwd: str = "/"


class Tri(IntEnum):
    """A Host or Match outcome: NO and YES, or MAYBE when it hangs on what we do not evaluate."""

    NO = 0
    MAYBE = 1
    YES = 2


@dataclass
class _Forward:
    forward: Forward
    remote: bool  # in ssh's remote_forwards list (else local_forwards)
    directive: str  # as the file said it, for the aggregator; "" from the command line

    def key(self) -> tuple[object, ...]:
        f = self.forward
        socks = f.direction in (Direction.DYNAMIC, Direction.REVERSE_DYNAMIC)
        return (self.remote, socks, f.listen_host, f.listen_port, f.listen_path, f.target_host, f.target_port,
                f.target_path)


@dataclass
class _Jump:
    extra: str  # the hops before the last, as given
    user: str
    host: str
    port: int


@dataclass
class Options:
    """What ssh's options hold so far (readconf.c Options, the fields evaluated); None: unset."""

    user: str | None = None
    port: int | None = None
    hostname: str | None = None
    proxy_command: str | None = None
    jump: _Jump | None = None  # host "none" for ProxyJump none
    clear: bool | None = None
    canonicalize: bool | None = None  # CanonicalizeHostname: its final pass is all we evaluate of it
    stdio_forward: bool = False
    forwards: list[_Forward] = field(default_factory=list)
    forward_keys: set[tuple[object, ...]] = field(default_factory=set)
    from_files: dict[str, str] = field(default_factory=dict)  # keyword -> directive, single values set by files


@dataclass
class SshConfig:
    """The evaluation: the effective options, what the files added (directives), and notes on
    what could not be evaluated or read."""

    options: Options
    host: str  # the host ssh connects to (HostName expanded, lowercased); "" without a destination
    notes: list[str] = field(default_factory=list)
    notes_dropped: int = 0
    files_read: int = 0

    def note(self, text: str) -> None:
        if len(self.notes) < MAX_NOTES:
            self.notes.append(text)
        else:
            self.notes_dropped += 1

    def directives(self) -> list[str]:
        """What the files added as config lines: the single values first (each keyword once: a
        ClearAllForwardings or ProxyJump is never the line left out), then the forwards in the
        order ssh added them, then the notes as comments. At most MAX_DIRECTIVES lines: the last
        says how many were left out."""
        lines = list(self.options.from_files.values())
        lines += [fw.directive for fw in self.options.forwards if fw.directive]
        lines += [f"# {note}" for note in self.notes]
        if self.notes_dropped:
            lines.append(f"# {self.notes_dropped} more notes")
        if len(lines) > MAX_DIRECTIVES:
            kept = lines[: MAX_DIRECTIVES - 1]
            return [*kept, f"# {len(lines) - len(kept)} more directives not carried"]
        return lines

    # -- as `ssh -G` prints them (for tests against ssh itself) --------------------------------

    def dump_forwards(self) -> list[str]:
        """dynamicforward, localforward, remoteforward lines as readconf.c dump_cfg_forwards()."""
        if self.effective_clear():
            return []
        local = [fw.forward for fw in self.options.forwards if not fw.remote]
        remote = [fw.forward for fw in self.options.forwards if fw.remote]
        # ssh prints a forward to a unix socket (no connect host) as a dynamicforward too
        out = [f"dynamicforward {_dump_listen(f)}" for f in local
               if f.direction is Direction.DYNAMIC or f.target_path]
        out += [f"localforward {_dump_listen(f)} {_dump_target(f)}" for f in local
                if f.direction is not Direction.DYNAMIC]
        out += [f"remoteforward {_dump_listen(f)} {_dump_target(f)}" for f in remote]
        return out

    def effective_clear(self) -> bool:
        clear = self.options.clear
        return clear if clear is not None else self.options.stdio_forward

    def dump_proxy(self) -> str | None:
        """The proxyjump or proxycommand line, or None."""
        jump = self.options.jump
        if jump is not None and jump.host != "none":
            numeric = ":" in jump.host or jump.host.strip("0123456789.") == ""
            host = f"[{jump.host}]" if numeric else jump.host
            return ("proxyjump " + (f"{jump.extra}," if jump.extra else "") + (f"{jump.user}@" if jump.user else "")
                    + host + (f":{jump.port}" if jump.port > 0 else ""))
        command = self.options.proxy_command
        if command is not None and command.lower() != "none":
            return f"proxycommand {command}"
        return None


def _dump_listen(f: Forward) -> str:
    if f.listen_path:
        return f.listen_path
    return f"[{f.listen_host}]:{f.listen_port}" if f.listen_host else str(f.listen_port)


def _dump_target(f: Forward) -> str:
    if f.target_path:
        return f.target_path
    if f.direction is Direction.REVERSE_DYNAMIC:
        return "[socks]:0"
    return f"[{f.target_host}]:{f.target_port}"


# -- the evaluation --------------------------------------------------------------------------


def evaluate(args: list[str], files: Files, user: LocalUser) -> SshConfig:
    """ssh's configuration for the arguments `args` (argv without argv[0])."""
    parsed = ssh_args(args)
    options = Options()
    config_path: str | None = None
    for letter, value in parsed.before:
        config_path = _command_option(options, letter, value, config_path)
    if parsed.destination is None:
        return SshConfig(options, "")  # ssh prints its usage
    host = _destination(options, parsed.destination)
    for letter, value in parsed.after:
        config_path = _command_option(options, letter, value, config_path)
    result = SshConfig(options, host)
    _Evaluation(result, files, user, config_path, host).run()
    return result


def _command_option(options: Options, letter: str, value: str | None, config_path: str | None) -> str | None:
    """One command-line option (ssh.c main()'s getopt switch); returns the -F file so far (the last wins)."""
    if value is None:
        return config_path
    if letter == "F":
        return value
    if letter == "o":
        words = config_line(value)
        if words is not None:
            _apply(options, words.keyword, words.args, words.rest, "")
    elif letter == "l" and options.user is None:
        options.user = value
    elif letter == "p" and options.port is None and _a2port(value) > 0:
        options.port = _a2port(value)
    elif letter in "LRD":
        _add_forward(options, _forward_option(letter, value), letter == "R", "")
    elif letter == "J":
        _set_jump(options, value, "")
    elif letter == "W":
        options.stdio_forward = True
    return config_path


def _destination(options: Options, arg: str) -> str:
    """The destination's host; its user and port fill what the options left unset."""
    uri = _parse_ssh_uri(arg)
    if uri is not None:
        if options.user is None and uri.user:
            options.user = uri.user
        if options.port is None and uri.port > 0:
            options.port = uri.port
        return uri.host
    user, at, host = arg.rpartition("@")
    if at and options.user is None and user:
        options.user = user
    return host


def _add_forward(options: Options, forward: Forward | None, remote: bool, directive: str) -> None:
    """readconf.c add_local_forward()/add_remote_forward(): a forward already there is not added again."""
    if forward is None:
        return
    new = _Forward(forward, remote, directive)
    key = new.key()
    if key not in options.forward_keys:
        options.forward_keys.add(key)
        options.forwards.append(new)


def _apply(options: Options, keyword: str, args: list[str], rest: str, directive: str,
           certain: bool = True) -> bool:
    """One directive of an active block (or a -o option: `directive` ""); `certain` False when the
    block only may apply (forwards only). Returns False when ssh would refuse the line."""
    if not args or not args[0]:
        return False
    if keyword in _FORWARD_KEYWORDS:
        forward = config_forward(keyword, args)
        _add_forward(options, forward, keyword == "remoteforward", directive)
        return forward is not None
    if not certain:
        return True
    if keyword == "proxyjump":
        return _set_jump(options, rest.lstrip(_BLANKS_EQUALS), directive)
    value = _single_value(keyword, args, rest)
    if value is None:
        return keyword not in _SINGLE_VALUES  # a bad value of one of ours; any other keyword: not ours
    if getattr(options, _SINGLE_VALUES[keyword]) is None:  # the first value wins
        setattr(options, _SINGLE_VALUES[keyword], value)
        if directive and keyword != "canonicalizehostname":
            options.from_files[keyword] = directive
    return True


# keyword -> the Options field it sets (the first value wins)
_SINGLE_VALUES = {"user": "user", "port": "port", "hostname": "hostname", "clearallforwardings": "clear",
                  "proxycommand": "proxy_command", "canonicalizehostname": "canonicalize"}


def _single_value(keyword: str, args: list[str], rest: str) -> str | int | bool | None:
    """The value a single-value keyword gives, or None (not one of ours, or a value ssh refuses)."""
    word = args[0].translate(_ASCII_LOWER)
    if keyword in ("user", "hostname"):
        return args[0]
    if keyword == "port":
        port = _a2port(args[0])
        return port if port > 0 else None
    if keyword == "clearallforwardings":
        return _FLAGS.get(word)
    if keyword == "proxycommand":
        return rest.lstrip(_BLANKS_EQUALS)
    if keyword == "canonicalizehostname":
        return word not in ("no", "false")
    return None


def _set_jump(options: Options, text: str, directive: str) -> bool:
    """readconf.c parse_jump(): every hop checked, the last one parsed; a jump sets ProxyCommand to
    none, and is ignored once a ProxyCommand or ProxyJump is set. `none` only blocks a later
    ProxyJump (as the OpenSSH 9.2 of Debian 12 does, with upstream's later fix)."""
    if text.lower() == "none":
        jump = _Jump("", "", "none", 0)
        applies = options.jump is None
    else:
        spec = text.partition("#")[0].rstrip(" \t\r\n")
        parsed = [_jump_hop(hop) for hop in spec.split(",")]
        last = parsed[-1]
        if last is None or None in parsed:
            return False
        jump = _Jump(spec[: spec.rfind(",")] if "," in spec else "", *last)
        applies = options.proxy_command is None and options.jump is None
    if applies:
        options.jump = jump
        if jump.host != "none":
            options.proxy_command = "none"
        if directive:
            options.from_files.setdefault("proxyjump", directive)
    return True


def _jump_hop(hop: str) -> tuple[str, str, int] | None:
    """(user, host, port) of one ProxyJump hop: ssh://user@host:port or user@host:port
    (misc.c parse_user_host_port(): the last '@', then hpdelim()); None if ssh refuses it."""
    uri = _parse_ssh_uri(hop)
    if uri is not None:
        return (uri.user, uri.host, uri.port) if uri.host else None
    user, at, rest = hop.rpartition("@")
    if at and not user:
        return None
    if rest.startswith("["):
        host, close, after = rest[1:].partition("]")
        if not close or after[:1] not in ("", ":"):
            return None
        port_text = after[1:]
    else:
        host, _, port_text = _partition_any(rest, ":/")
    if not host:
        return None
    port = _a2port(port_text) if port_text else -1
    if port_text and port <= 0:
        return None
    return user, host, port


@dataclass
class _Pass:
    host: str  # what Host patterns are matched against
    final: bool
    files_read: int = 0


class _Evaluation:
    """Both passes over the files (ssh.c process_config_files())."""

    def __init__(self, result: SshConfig, files: Files, user: LocalUser, config_path: str | None,
                 destination: str) -> None:
        self.result = result
        self.files = files
        self.user = user
        self.config_path = config_path
        self.original = destination
        self.want_final = False
        self.reads = 0
        self.chars = 0
        self.lines = 0
        self.budget = Budget()

    def run(self) -> None:
        self._pass(_Pass(self.original, final=False))
        options = self.result.options
        host = _expand_hostname(options.hostname, self.original) if options.hostname is not None else self.original
        if not _is_ip_address(host):
            host = host.translate(_ASCII_LOWER)
        self.result.host = host
        if self.want_final or options.canonicalize:
            options.hostname = host  # ssh.c: the final pass matches the host it now has
            self._pass(_Pass(host, final=True))
        self.result.files_read = self.reads

    def _pass(self, state: _Pass) -> None:
        path = self.config_path
        if path is not None:
            if path.lower() != "none":
                self.config_path = self._absolute(path)
                self._file(self.config_path, state, user_file=True, check_owner=False, depth=0, cap=Tri.YES)
            return
        if self.user.home:
            self._file(f"{self.user.home.rstrip('/')}/{USER_CONFIG}", state, user_file=True, check_owner=True,
                       depth=0, cap=Tri.YES)
        elif not state.final:
            self.result.note(f"no passwd entry for uid {self.user.uid}: ~/.ssh/config not read")
        self._file(SYSTEM_CONFIG, state, user_file=False, check_owner=False, depth=0, cap=Tri.YES)

    def _absolute(self, path: str) -> str:
        return path if path.startswith("/") else f"{self.user.cwd.rstrip('/')}/{path}"

    # -- one file ------------------------------------------------------------------------

    def _file(self, path: str, state: _Pass, *, user_file: bool, check_owner: bool, depth: int, cap: Tri,
              active: list[Tri] | None = None) -> None:
        """read_config_file_depth(): `active` is the includer's block state, shared as ssh shares it."""
        if depth > MAX_DEPTH:
            self.result.note(f"{path}: more than {MAX_DEPTH} nested includes (ssh stops there)")
            return
        if self.reads >= MAX_FILES:
            self.result.note(f"{path}: not read, over {MAX_FILES} files")
            return
        self.reads += 1
        found = self.files.read(path)
        if found.text is None:
            if found.problem != "missing":
                self.result.note(f"{path}: not read ({found.problem})")
            elif path == self.config_path and not state.final:
                self.result.note(f"{path}: no such file (ssh stops)")  # -F: ssh cannot do without it
            return
        if check_owner and ((found.uid not in (0, self.user.uid)) or found.mode & 0o022):
            self.result.note(f"{path}: bad owner or permissions (ssh refuses it and stops)")
            return
        if found.cut:
            self.result.note(f"{path}: over {MAX_FILE_BYTES} bytes, the rest not read")
        self.chars += len(found.text)
        if self.chars > MAX_TOTAL_CHARS:
            self.result.note(f"{path}: not read, over {MAX_TOTAL_CHARS} characters in all")
            return
        state_box = active if active is not None else [Tri.YES]
        context = _FileContext(path, user_file, depth, cap)
        for number, words in _parsed(found.text):
            self.lines += 1
            if self.lines > MAX_LINES:
                self.result.note(f"{path} line {number}: over {MAX_LINES} lines in all, the rest not evaluated")
                return
            if words is None:
                self.result.note(f"{path} line {number}: over {MAX_LINE} characters, skipped")
                continue
            self._line(words, number, context, state, state_box)

    def _line(self, words: ConfigLine, number: int, context: _FileContext, state: _Pass, active: list[Tri]) -> None:
        keyword, args, rest = words
        where = f"{context.path} line {number}"
        if keyword == "host":
            active[0] = _and(context.cap, self._host(args, state))
        elif keyword == "match":
            outcome = self._match(rest, state, where)
            active[0] = _and(context.cap, outcome)
            if outcome is Tri.MAYBE and context.cap is not Tri.NO:
                self.result.note(f"{where}: Match not evaluated ({_short(rest)}): taken as possibly matching")
        elif keyword == "include":
            self._include(args, context, state, active)
        elif active[0] is not Tri.NO:
            directive = _directive(keyword, args, rest)
            _apply(self.result.options, keyword, args, rest, directive, certain=active[0] is Tri.YES)

    def _host(self, patterns: list[str], state: _Pass) -> Tri:
        """readconf.c oHost: any pattern matching activates, a negated one matching deactivates."""
        matched = Tri.NO
        try:
            for pattern in patterns:
                negated = pattern.startswith("!")
                if wildcard_match(state.host, pattern[1:] if negated else pattern, self.budget):
                    if negated:
                        return Tri.NO
                    matched = Tri.YES
        except OverBudget as spent:
            if not self.budget.noted:  # once: every Host line after it is the same story
                self.budget.noted = True
                self.result.note(f"Host {_short(' '.join(patterns))}: not evaluated, {spent}")
            return Tri.MAYBE
        return matched

    def _match(self, rest: str, state: _Pass, where: str) -> Tri:
        """readconf.c match_cfg_line(): criteria ANDed; exec and unknown criteria are MAYBE."""
        criteria = _Criteria(self, state)
        try:
            outcome = criteria.evaluate(rest)
        except OverBudget:
            outcome = Tri.MAYBE
        if criteria.final_requested:
            self.want_final = True
        return outcome

    def _include(self, patterns: list[str], context: _FileContext, state: _Pass, active: list[Tri]) -> None:
        outer = active[0]
        for given in patterns:
            if not given:
                continue
            if given.startswith("~") and not context.user_file:
                self.result.note(f"{context.path}: Include {_short(given)}: ~ in a system file (ssh refuses it)")
                continue
            anchored = given
            if not given.startswith(("/", "~")):
                anchored = f"~/.ssh/{given}" if context.user_file else f"{SYSTEM_DIR}/{given}"
            for path in self._glob(anchored, context.path):
                self._file(path, state, user_file=context.user_file, check_owner=True, depth=context.depth + 1,
                           cap=outer, active=active)
                active[0] = outer  # ssh: a Match in an included file does not change its includer's state

    def _glob(self, pattern: str, where: str) -> list[str]:
        expanded = self._tilde(pattern)
        if expanded is None:
            self.result.note(f"{where}: Include {_short(pattern)}: no such user home")
            return []
        try:
            found = list(_glob(self.files, expanded, self.budget))
        except OverBudget as spent:
            self.result.note(f"{where}: Include {_short(pattern)}: not read, {spent}")
            return []
        if len(found) > MAX_GLOB:
            self.result.note(f"{where}: Include {_short(pattern)}: {len(found)} files, the first {MAX_GLOB} read")
        return found[:MAX_GLOB]

    def _tilde(self, pattern: str) -> str | None:
        """glob(3) GLOB_TILDE: `~` is $HOME (else the passwd home), `~user` that user's home."""
        if not pattern.startswith("~"):
            return pattern
        name, slash, tail = pattern[1:].partition("/")
        home = (self.user.env_home or self.user.home) if not name else self.files.home_of(name)
        if not home:
            return None
        return home.rstrip("/") + (slash + tail if slash else "") or "/"


@dataclass(frozen=True)
class _FileContext:
    path: str
    user_file: bool  # SSHCONF_USERCONF: relative includes under ~/.ssh, `~` allowed
    depth: int
    cap: Tri  # NO under SSHCONF_NEVERMATCH, MAYBE under an unevaluated Match


class _Criteria:
    def __init__(self, evaluation: _Evaluation, state: _Pass) -> None:
        options = evaluation.result.options
        self.state = state
        self.original = evaluation.original
        self.local_user = evaluation.user.name
        self.remote_user = options.user if options.user is not None else evaluation.user.name
        if state.final and options.hostname is not None:
            self.host = options.hostname
        elif options.hostname is not None:
            self.host = _expand_hostname(options.hostname, state.host)
        else:
            self.host = state.host
        self.final_requested = False
        self.budget = evaluation.budget

    def evaluate(self, rest: str) -> Tri:
        tokens = _tokens(rest)
        if tokens is None:
            return Tri.MAYBE  # unmatched quotes: ssh refuses the line
        result = Tri.YES
        attributes = 0
        position = 0
        while position < len(tokens):
            attribute = tokens[position]
            position += 1
            if attribute.startswith("#"):
                break
            negate = attribute.startswith("!")
            name = attribute[1:].translate(_ASCII_LOWER) if negate else attribute.translate(_ASCII_LOWER)
            if name == "all":
                following = tokens[position] if position < len(tokens) else ""
                if attributes > 1 or (following and not following.startswith("#")):
                    return Tri.MAYBE  # ssh: "cannot be combined with other Match attributes"
                return _and(result, Tri.NO if negate else Tri.YES)
            attributes += 1
            if name in ("canonical", "final"):
                self.final_requested = self.final_requested or name == "final"
                result = _and(result, _negate(Tri.YES if self.state.final else Tri.NO, negate))
                continue
            if position >= len(tokens) or not tokens[position] or tokens[position].startswith("#"):
                return Tri.MAYBE  # ssh: "Missing Match criteria"
            argument = tokens[position]
            position += 1
            result = _and(result, _negate(self._criterion(name, argument), negate))
        return result if attributes else Tri.MAYBE

    def _criterion(self, name: str, argument: str) -> Tri:
        if name == "host":
            return _tri(pattern_list_match(self.host.translate(_ASCII_LOWER), argument, True, self.budget) == 1)
        if name == "originalhost":
            return _tri(pattern_list_match(self.original.translate(_ASCII_LOWER), argument, True, self.budget) == 1)
        if name == "user":
            return _tri(pattern_list_match(self.remote_user, argument, False, self.budget) == 1)
        if name == "localuser":
            return _tri(pattern_list_match(self.local_user, argument, False, self.budget) == 1)
        return Tri.MAYBE  # exec (never run), or a criterion this version does not know


def _tokens(rest: str) -> list[str] | None:
    """The Match line's words as strdelim() cuts them, one after another."""
    tokens: list[str] = []
    text: str | None = rest
    while text:
        cut = strdelim(text)
        if cut is None:
            return None
        token, text = cut
        if token == "" and text is None:
            break
        if token:
            tokens.append(token)
    return tokens


def _and(a: Tri, b: Tri) -> Tri:
    return Tri(min(a, b))


def _negate(value: Tri, negate: bool) -> Tri:
    return Tri(2 - value) if negate else value


def _tri(value: bool) -> Tri:
    return Tri.YES if value else Tri.NO


def _directive(keyword: str, args: list[str], rest: str) -> str:
    """The directive as the aggregator reads it again: forwards by their words (quoted where a
    word needs it), ProxyCommand and ProxyJump by their text."""
    name = _FORWARD_KEYWORDS.get(keyword) or {
        "user": "User", "port": "Port", "hostname": "HostName", "clearallforwardings": "ClearAllForwardings",
        "proxycommand": "ProxyCommand", "proxyjump": "ProxyJump"}.get(keyword, keyword)
    if keyword in ("proxycommand", "proxyjump"):
        return f"{name} {rest.lstrip(_BLANKS_EQUALS)}"
    return " ".join([name, *(_quote(arg) for arg in args[:2])])


_BLANKS_EQUALS = " \t="
_NEEDS_QUOTES = re.compile(r"""[\s"'\\#=]""")


def _quote(word: str) -> str:
    if word and not _NEEDS_QUOTES.search(word):
        return word
    return '"' + word.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _short(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _parsed(text: str) -> tuple[tuple[int, ConfigLine | None], ...]:
    """The lines that say something, with their numbers (None: too long to read); a file that
    has not changed since the last exec of ssh (the reader gives the same text) is not parsed
    again. Only small files are remembered: what a hostile file costs is its own parse."""
    if len(text) <= MAX_PARSED_KEPT:
        return _parsed_kept(text)
    return _parse(text)


@lru_cache(maxsize=32)
def _parsed_kept(text: str) -> tuple[tuple[int, ConfigLine | None], ...]:
    return _parse(text)


def _parse(text: str) -> tuple[tuple[int, ConfigLine | None], ...]:
    """At most MAX_LINES + 1 lines (an evaluation reads no more): a hostile file costs a bounded parse."""
    out: list[tuple[int, ConfigLine | None]] = []
    for number, raw in enumerate(text.split("\n"), 1):
        line = raw.partition("\0")[0]  # getline() lines; C stops a line at a NUL
        start = line.lstrip(" \t\r")
        if not start or start[0] == "#":
            continue  # blank or comment, known without the full split
        words = config_line(line) if len(line) <= MAX_LINE else None
        if words is not None or len(line) > MAX_LINE:
            out.append((number, words))
            if len(out) > MAX_LINES:
                break
    return tuple(out)


# -- patterns (match.c) ----------------------------------------------------------------------


class OverBudget(Exception):
    """An evaluation spent its budget of pattern matching or directory listing."""


@dataclass
class Budget:
    """What one evaluation may spend on work whose cost the files choose."""

    match_work: int = MAX_MATCH_WORK
    listings: int = MAX_LISTINGS
    noted: bool = False  # the spent matching budget has been said

    def match(self, text: str, pattern: str) -> None:
        self.match_work -= (len(text) + 1) * (len(pattern) + 1) if "*" in pattern else len(pattern) + 1
        if self.match_work < 0:
            raise OverBudget(f"over {MAX_MATCH_WORK} steps of pattern matching")

    def listing(self) -> None:
        self.listings -= 1
        if self.listings < 0:
            raise OverBudget(f"over {MAX_LISTINGS} directories listed")


def wildcard_match(text: str, pattern: str, budget: Budget | None = None) -> bool:
    """match.c match_pattern(): `*` any run, `?` one character, everything else itself.

    As segments between stars: the first must start the text, the last end it, and each one
    between is taken at its leftmost place after the one before (which is right for glob
    patterns, and never backtracks: a hostile pattern costs at worst len(text) x len(pattern)
    character comparisons, in C; `budget` counts them)."""
    if budget is not None:
        budget.match(text, pattern)
    first, *middle = pattern.split("*")
    if not middle:
        return len(text) == len(first) and _segment_at(text, 0, first)
    last = middle.pop()
    end = len(text) - len(last)
    if end < len(first) or not _segment_at(text, 0, first) or not _segment_at(text, end, last):
        return False
    position = len(first)
    for segment in middle:
        if segment:
            found = _find_segment(text, segment, position, end)
            if found < 0:
                return False
            position = found + len(segment)
    return True


def _segment_at(text: str, at: int, segment: str) -> bool:
    if "?" not in segment:
        return text.startswith(segment, at)
    return len(text) - at >= len(segment) and _segment_regex(segment).match(text, at) is not None


def _find_segment(text: str, segment: str, start: int, end: int) -> int:
    """Where `segment` first lies whole within text[start:end], or -1."""
    if "?" not in segment:
        return text.find(segment, start, end)
    found = _segment_regex(segment).search(text, start, end)
    return found.start() if found is not None else -1


@lru_cache(maxsize=256)
def _segment_regex(segment: str) -> re.Pattern[str]:
    """A segment with `?` as a regular expression with no repetition (no backtracking)."""
    return re.compile("".join("." if char == "?" else re.escape(char) for char in segment), re.DOTALL)


def pattern_list_match(text: str, patterns: str, lower: bool, budget: Budget | None = None) -> int:
    """match.c match_pattern_list(): comma-separated subpatterns, `!` negating: -1 if a negated one
    matches, 1 if another does, else 0. With `lower`, the patterns are lowercased (ASCII)."""
    positive = 0
    for given in patterns.split(","):
        negated = given.startswith("!")
        sub = given[1:] if negated else given
        if len(sub) >= _SUBPATTERN_MAX:
            return 0
        if wildcard_match(text, sub.translate(_ASCII_LOWER) if lower else sub, budget):
            if negated:
                return -1
            positive = 1
    return positive


def _glob(files: Files, pattern: str, budget: Budget) -> Iterator[str]:
    """glob(3) through the reader: each component with `*`, `?` or `[` matched against the
    directory's names (a leading dot only by a leading dot), sorted; others taken as they are."""
    parts = [part for part in pattern.split("/") if part]
    candidates = ["/"]
    for part in parts:
        following: list[str] = []
        for base in candidates:
            prefix = base.rstrip("/") + "/"
            if not re.search(r"[*?\[]", part):
                following.append(prefix + part)
                continue
            budget.listing()
            names = files.listdir(base) or []
            for name in sorted(names):
                if name.startswith(".") and not part.startswith("."):
                    continue
                if fnmatch.fnmatchcase(name, part):
                    following.append(prefix + name)
            if len(following) > MAX_GLOB * 4:
                break
        candidates = following
        if not candidates:
            return
    yield from candidates
