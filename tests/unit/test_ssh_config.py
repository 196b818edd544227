"""ssh's configuration evaluated as ssh does: each keyword and Match criterion, the file order,
Include, the bounds; and generated configurations checked against the real `ssh -G` (OpenSSH's
own evaluation, printed without connecting) as the oracle."""

from __future__ import annotations

import fnmatch
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sensor.classify.ssh_config import (
    MAX_DEPTH,
    MAX_DIRECTIVES,
    MAX_LINES,
    MAX_TOTAL_CHARS,
    ConfigFile,
    LocalUser,
    SshConfig,
    evaluate,
    pattern_list_match,
    wildcard_match,
)
from sensor.classify.tunnel import classify_tunnel

SSH = shutil.which("ssh")
ROOT = LocalUser("root", 0, "/root", cwd="/")
FIELDS = ("hostname", "user", "port", "dynamicforward", "localforward", "remoteforward", "proxyjump", "proxycommand")


@dataclass
class TreeFiles:
    """Files under a directory that stands for the process's root."""

    root: Path
    homes: dict[str, str] = field(default_factory=dict)
    reads: list[str] = field(default_factory=list)

    def read(self, path: str) -> ConfigFile:
        self.reads.append(path)
        real = self.root / path.lstrip("/")
        try:
            st_ = real.stat()
            return ConfigFile(real.read_bytes().decode(errors="replace"), st_.st_uid, st_.st_mode)
        except FileNotFoundError:
            return ConfigFile(None, problem="missing")
        except OSError as exc:
            return ConfigFile(None, problem=exc.strerror or "unreadable")

    def listdir(self, path: str) -> list[str] | None:
        try:
            return os.listdir(self.root / path.lstrip("/"))
        except OSError:
            return None

    def home_of(self, user: str) -> str | None:
        return self.homes.get(user)


def write(path: Path, text: str, mode: int = 0o644) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)
    return path


def ours(args: list[str], files: TreeFiles, user: LocalUser = ROOT) -> dict[str, list[str]]:
    return dump(evaluate(args, files, user), user)


def dump(result: SshConfig, user: LocalUser) -> dict[str, list[str]]:
    """The evaluation as `ssh -G` prints the fields compared."""
    options = result.options
    lines = [f"hostname {result.host}", f"user {options.user or user.name}", f"port {options.port or 22}",
             *result.dump_forwards()]
    proxy = result.dump_proxy()
    if proxy is not None:
        lines.append(proxy)
    return by_field(lines)


def by_field(lines: list[str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in lines:
        name, _, value = line.partition(" ")
        if name in FIELDS:
            out.setdefault(name, []).append(value)
    return out


def ssh_g(args: list[str], home: Path | None = None) -> dict[str, list[str]] | None:
    """What ssh itself makes of it; None when ssh refuses the configuration."""
    assert SSH is not None, "the OpenSSH client is needed (scripts/install installs it)"
    env = {"PATH": "/usr/bin:/bin", "HOME": str(home or "/nonexistent"), "LC_ALL": "C"}
    done = subprocess.run([SSH, "-G", *args], capture_output=True, text=True, env=env, timeout=10,
                          stdin=subprocess.DEVNULL, check=False)
    return by_field(done.stdout.splitlines()) if done.returncode == 0 else None


@pytest.fixture
def tree(tmp_path: Path) -> TreeFiles:
    return TreeFiles(tmp_path)


def config(tree: TreeFiles, text: str, name: str = "cfg") -> str:
    """A -F file: its path as the process sees it and as this host does (the same: root /)."""
    return str(write(tree.root / name, text))


def agree(tree: TreeFiles, args: list[str], home: Path | None = None) -> dict[str, list[str]]:
    user = LocalUser("root", 0, "/root", env_home=str(home) if home else None, cwd=str(tree.root))
    expected = ssh_g(args, home)
    assert expected is not None, f"ssh refused {args}"
    got = ours(args, TreeFiles(Path("/")), user)
    assert got == expected
    return got


# -- each keyword, against ssh -G --------------------------------------------------------------


def test_forwards_of_every_kind_accumulate_in_ssh_order(tree: TreeFiles) -> None:
    cfg = config(tree, "Host gw\n  RemoteForward 2222 localhost:22\n  localforward=127.0.0.1:8080 [::1]:80\n"
                       "  DYNAMICFORWARD 1080\n  RemoteForward 9999\n  RemoteForward /tmp/a.sock /tmp/b.sock\n"
                       "Host *\n  RemoteForward 2222 localhost:22\n  RemoteForward = 3333 localhost:ssh\n")
    got = agree(tree, ["-F", cfg, "gw"])
    assert got["remoteforward"] == ["2222 [localhost]:22", "9999 [socks]:0", "/tmp/a.sock /tmp/b.sock",
                                    "3333 [localhost]:22"]
    assert got["localforward"] == ["[127.0.0.1]:8080 [::1]:80"]
    assert got["dynamicforward"] == ["1080"]


def test_command_line_comes_first_and_duplicates_are_dropped(tree: TreeFiles) -> None:
    cfg = config(tree, "Host *\n  RemoteForward 2222 localhost:22\n  User fromfile\n  Port 2200\n"
                       "  HostName real.example.com\n")
    args = ["-F", cfg, "-R", "2222:localhost:22", "-l", "cli", "-o", "Port=2022", "gw"]
    got = agree(tree, args)
    assert got["remoteforward"] == ["2222 [localhost]:22"]
    assert (got["user"], got["port"], got["hostname"]) == (["cli"], ["2022"], ["real.example.com"])
    # what the file added, for the aggregator: only what the command line had not set
    assert evaluate(args, TreeFiles(Path("/")), ROOT).directives() == ["HostName real.example.com"]


def test_clear_all_forwardings_clears_the_command_lines_too(tree: TreeFiles) -> None:
    cfg = config(tree, "Host gw\n  ClearAllForwardings yes\n  RemoteForward 2222 localhost:22\n")
    assert "remoteforward" not in agree(tree, ["-F", cfg, "-R", "9:localhost:22", "gw"])
    # the first value wins: -o says no
    assert agree(tree, ["-F", cfg, "-o", "ClearAllForwardings=no", "gw"])["remoteforward"] == [
        "2222 [localhost]:22"]


def test_hostname_expands_percent_h_and_match_host_tests_it(tree: TreeFiles) -> None:
    cfg = config(tree, "Host gw\n  HostName %h.Example.COM\nMatch host gw.example.com\n  User matched\n"
                       "Match originalhost GW\n  Port 2201\n")
    got = agree(tree, ["-F", cfg, "gw"])
    assert (got["hostname"], got["user"], got["port"]) == (["gw.example.com"], ["matched"], ["2201"])


def test_host_patterns_negation_and_lists(tree: TreeFiles) -> None:
    cfg = config(tree, "Host *.example.com !db.example.com\n  RemoteForward 1 localhost:22\n"
                       "Host g? x,y\n  RemoteForward 2 localhost:22\n")
    assert agree(tree, ["-F", cfg, "db.example.com"]).get("remoteforward") is None
    assert agree(tree, ["-F", cfg, "web.example.com"])["remoteforward"] == ["1 [localhost]:22"]
    assert agree(tree, ["-F", cfg, "gw"])["remoteforward"] == ["2 [localhost]:22"]
    assert agree(tree, ["-F", cfg, "x"]).get("remoteforward") is None  # "x,y" is one pattern to Host


def test_host_is_matched_case_sensitively_and_match_host_is_not(tree: TreeFiles) -> None:
    cfg = config(tree, "Host gw\n  RemoteForward 1 localhost:22\nMatch host GW\n  LocalForward 2 localhost:22\n")
    got = agree(tree, ["-F", cfg, "GW"])
    assert got.get("remoteforward") is None and got["localforward"] == ["2 [localhost]:22"]


def test_match_user_localuser_and_all(tree: TreeFiles) -> None:
    cfg = config(tree, "Match user bob,!eve localuser root\n  RemoteForward 1 localhost:22\n"
                       "Match !localuser root\n  RemoteForward 2 localhost:22\nMatch all\n  Port 2222\n")
    assert agree(tree, ["-F", cfg, "bob@gw"])["remoteforward"] == ["1 [localhost]:22"]
    assert agree(tree, ["-F", cfg, "eve@gw"]).get("remoteforward") is None
    assert agree(tree, ["-F", cfg, "gw"])["port"] == ["2222"]


def test_match_final_reads_the_files_again_with_the_new_host(tree: TreeFiles) -> None:
    cfg = config(tree, "Host gw\n  HostName Jump.Example.com\nHost jump.example.com\n  RemoteForward 3 localhost:22\n"
                       "Match final host jump.example.com\n  LocalForward 4 localhost:22\n"
                       "Match canonical\n  User canon\n")
    got = agree(tree, ["-F", cfg, "gw"])
    assert got["remoteforward"] == ["3 [localhost]:22"]
    assert got["localforward"] == ["4 [localhost]:22"]
    assert got["user"] == ["canon"]


def test_without_match_final_canonical_is_false(tree: TreeFiles) -> None:
    cfg = config(tree, "Match canonical\n  RemoteForward 3 localhost:22\n")
    assert agree(tree, ["-F", cfg, "gw"]).get("remoteforward") is None


def test_proxy_jump_and_proxy_command_whichever_comes_first(tree: TreeFiles) -> None:
    cfg = config(tree, "Host gw\n  ProxyJump alice@hop1:2022,ssh://bob@hop2:2200\n  ProxyCommand nc %h %p\n")
    assert agree(tree, ["-F", cfg, "gw"])["proxyjump"] == ["alice@hop1:2022,bob@hop2:2200"]
    got = agree(tree, ["-F", cfg, "-o", "ProxyCommand=socat - TCP:%h:%p", "gw"])
    assert got["proxycommand"] == ["socat - TCP:%h:%p"] and "proxyjump" not in got
    assert "proxyjump" not in agree(tree, ["-F", cfg, "-J", "none", "gw"])
    assert agree(tree, ["-F", cfg, "-J", "10.0.0.1", "gw"])["proxyjump"] == ["[10.0.0.1]"]


def test_proxy_jump_none_does_not_stop_a_later_proxy_command(tree: TreeFiles) -> None:
    """Found by the oracle: in this OpenSSH, `-J none` (or ProxyJump none) only stops a later
    ProxyJump; a ProxyCommand after it still applies, and is the hop a tunnel goes through."""
    cfg = config(tree, "Host gw\n  ProxyJump hop1\n  ProxyCommand nc %h %p\n")
    assert agree(tree, ["-F", cfg, "-o", "ProxyJump=none", "gw"])["proxycommand"] == ["nc %h %p"]
    tunnel = classify_tunnel([b"ssh", b"-J", b"none", b"-R", b"1:localhost:22", b"gw"], b"", "ssh",
                             ["ProxyJump hop1", "ProxyCommand nc %h %p"])
    assert tunnel is not None and tunnel.via == ("ProxyCommand",)


def test_a_forward_to_a_unix_socket_is_printed_twice_by_ssh(tree: TreeFiles) -> None:
    """Found by the oracle: ssh -G prints a LocalForward to a socket path as a dynamicforward too
    (dump_cfg_forwards() tests the connect host, which a path has not); one forward all the same."""
    cfg = config(tree, "LocalForward /tmp/l.sock /tmp/t.sock\n")
    got = agree(tree, ["-F", cfg, "gw"])
    assert (got["localforward"], got["dynamicforward"]) == (["/tmp/l.sock /tmp/t.sock"], ["/tmp/l.sock"])
    assert evaluate(["-F", cfg, "gw"], TreeFiles(Path("/")), ROOT).directives() == [
        "LocalForward /tmp/l.sock /tmp/t.sock"]


def test_ssh_uri_destination_gives_user_and_port(tree: TreeFiles) -> None:
    cfg = config(tree, "Host db1\n  User fromfile\n  Port 2200\n")
    got = agree(tree, ["-F", cfg, "ssh://bob@db1:2022"])
    assert (got["user"], got["port"]) == (["bob"], ["2022"])


def test_quotes_and_equals(tree: TreeFiles) -> None:
    cfg = config(tree, 'Host "gw"\n  RemoteForward "2222" "localhost:22"\n  User = "bob"\n')
    got = agree(tree, ["-F", cfg, "gw"])
    assert (got["remoteforward"], got["user"]) == (["2222 [localhost]:22"], ["bob"])


def test_include_relative_glob_and_nevermatch(tree: TreeFiles) -> None:
    home = tree.root / "home"
    write(home / ".ssh/conf.d/a.conf", "RemoteForward 1 localhost:22\nHost *\n  LocalForward 7 localhost:22\n")
    write(home / ".ssh/conf.d/b.conf", "Match all\n  RemoteForward 2 localhost:22\n")
    write(home / ".ssh/conf.d/.hidden", "RemoteForward 3 localhost:22\n")
    write(home / ".ssh/other", "Host *\n  RemoteForward 5 localhost:22\n")
    cfg = config(tree, "Host gw\n  Include conf.d/*.conf\n  DynamicForward 9\nHost other\n  Include other\n")
    got = agree(tree, ["-F", cfg, "gw"], home)
    # from the files in order, not the hidden one; not from `other`, included from an inactive
    # block: every Host and Match in it is false
    assert got["remoteforward"] == ["1 [localhost]:22", "2 [localhost]:22"]
    # after the include the block is gw's again (a Match inside does not change it)
    assert got["dynamicforward"] == ["9"]
    assert got["localforward"] == ["7 [localhost]:22"]
    assert agree(tree, ["-F", cfg, "other"], home)["remoteforward"] == ["5 [localhost]:22"]


def test_user_config_then_system_config_through_the_reader(tree: TreeFiles) -> None:
    write(tree.root / "home/u/.ssh/config", "Host gw\n  RemoteForward 2222 localhost:22\n  Port 2200\n"
                                            "  Include extra\n")
    write(tree.root / "home/u/.ssh/extra", "LocalForward 8080 localhost:80\n")
    write(tree.root / "etc/ssh/ssh_config", "Host *\n  Port 22\n  User sys\n  Include ssh_config.d/*.conf\n")
    write(tree.root / "etc/ssh/ssh_config.d/x.conf", "DynamicForward 1080\n")
    user = LocalUser("u", os.getuid(), "/home/u")
    result = evaluate(["-N", "gw"], tree, user)
    assert dump(result, user) == {"hostname": ["gw"], "user": ["sys"], "port": ["2200"],
                                  "dynamicforward": ["1080"], "localforward": ["8080 [localhost]:80"],
                                  "remoteforward": ["2222 [localhost]:22"]}
    assert tree.reads == ["/home/u/.ssh/config", "/home/u/.ssh/extra", "/etc/ssh/ssh_config",
                          "/etc/ssh/ssh_config.d/x.conf"]
    assert result.directives() == ["Port 2200", "User sys", "RemoteForward 2222 localhost:22",
                                   "LocalForward 8080 localhost:80", "DynamicForward 1080"]


def test_minus_f_replaces_both_files_and_none_reads_nothing(tree: TreeFiles) -> None:
    write(tree.root / "home/u/.ssh/config", "RemoteForward 1 localhost:22\n")
    write(tree.root / "w/my.conf", "RemoteForward 2 localhost:22\n")
    user = LocalUser("u", 1000, "/home/u", cwd="/w")
    assert dump(evaluate(["-F", "my.conf", "gw"], tree, user), user)["remoteforward"] == ["2 [localhost]:22"]
    assert "remoteforward" not in dump(evaluate(["-F", "none", "gw"], tree, user), user)
    assert evaluate(["-F", "nothere", "gw"], tree, user).notes == ["/w/nothere: no such file (ssh stops)"]


def test_a_user_config_ssh_would_refuse_is_not_read(tree: TreeFiles) -> None:
    write(tree.root / "home/u/.ssh/config", "RemoteForward 1 localhost:22\n", mode=0o666)
    user = LocalUser("u", 1000, "/home/u")
    result = evaluate(["gw"], tree, user)
    assert result.options.forwards == []
    assert result.notes == ["/home/u/.ssh/config: bad owner or permissions (ssh refuses it and stops)"]


def test_no_passwd_entry_reads_the_system_file_only(tree: TreeFiles) -> None:
    write(tree.root / "etc/ssh/ssh_config", "RemoteForward 1 localhost:22\n")
    result = evaluate(["gw"], tree, LocalUser("", 4242, ""))
    assert [fw.directive for fw in result.options.forwards] == ["RemoteForward 1 localhost:22"]
    assert result.notes == ["no passwd entry for uid 4242: ~/.ssh/config not read"]


def test_tilde_user_include(tree: TreeFiles) -> None:
    write(tree.root / "home/other/inc", "RemoteForward 5 localhost:22\n")
    cfg = config(tree, "Include ~other/inc\n")
    files = TreeFiles(tree.root, homes={"other": "/home/other"})
    result = evaluate(["-F", "/cfg", "gw"], files, ROOT)
    assert cfg and [fw.directive for fw in result.options.forwards] == ["RemoteForward 5 localhost:22"]


# -- Match exec and what is not evaluated -------------------------------------------------------


def test_match_exec_is_never_run_and_its_forwards_count(tree: TreeFiles) -> None:
    marker = tree.root / "ran"
    cfg = config(tree, f"Match exec \"touch {marker}\"\n  RemoteForward 2222 localhost:22\n  User exec\n"
                       "  ClearAllForwardings yes\nHost *\n  User plain\n")
    result = evaluate(["-F", cfg, "gw"], TreeFiles(Path("/")), ROOT)
    assert not marker.exists()
    assert [fw.directive for fw in result.options.forwards] == ["RemoteForward 2222 localhost:22"]
    assert result.options.user == "plain" and result.options.clear is None
    assert result.notes == [f'{cfg} line 1: Match not evaluated (exec "touch {marker}"): taken as possibly matching']


def test_match_exec_after_a_false_criterion_is_false(tree: TreeFiles) -> None:
    cfg = config(tree, "Match host nothere exec true\n  RemoteForward 2222 localhost:22\n")
    result = evaluate(["-F", cfg, "gw"], TreeFiles(Path("/")), ROOT)
    assert result.options.forwards == [] and result.notes == []


def test_unknown_match_criterion_is_possibly_matching(tree: TreeFiles) -> None:
    cfg = config(tree, "Match localnetwork 192.0.2.0/24\n  RemoteForward 2222 localhost:22\n")
    result = evaluate(["-F", cfg, "gw"], TreeFiles(Path("/")), ROOT)
    assert len(result.options.forwards) == 1 and "Match not evaluated" in result.notes[0]


# -- hostile input: bounded, counted, never an exception ----------------------------------------


def test_include_loop_stops_at_ssh_depth(tree: TreeFiles) -> None:
    cfg = config(tree, f"RemoteForward 1 localhost:22\nInclude {tree.root}/cfg\n")
    result = evaluate(["-F", cfg, "gw"], TreeFiles(Path("/")), ROOT)
    assert len(result.options.forwards) == 1
    assert result.files_read == MAX_DEPTH + 1
    assert result.notes == [f"{cfg}: more than {MAX_DEPTH} nested includes (ssh stops there)"]


def test_binary_and_long_lines_are_skipped(tree: TreeFiles) -> None:
    junk = "".join(chr(code) for code in range(256) if chr(code) != "\n") * 4
    cfg = config(tree, f"{junk}\nRemoteForward 1 localhost:22\0junk\n{'x' * 5000}\nRemoteForward 2 localhost:22\n")
    result = evaluate(["-F", cfg, "gw"], TreeFiles(Path("/")), ROOT)
    assert [fw.directive for fw in result.options.forwards] == ["RemoteForward 1 localhost:22",
                                                               "RemoteForward 2 localhost:22"]
    assert result.notes == [f"{cfg} line 3: over 4096 characters, skipped"]


def test_directives_carried_are_bounded(tree: TreeFiles) -> None:
    cfg = config(tree, "".join(f"RemoteForward {port} localhost:22\n" for port in range(1, 101)))
    lines = evaluate(["-F", cfg, "gw"], TreeFiles(Path("/")), ROOT).directives()
    assert len(lines) == MAX_DIRECTIVES
    assert lines[-1] == f"# {100 - MAX_DIRECTIVES + 1} more directives not carried"


def test_lines_and_characters_read_are_bounded(tree: TreeFiles) -> None:
    many = config(tree, "".join(f"RemoteForward {port} localhost:22\n" for port in range(1, MAX_LINES + 501)))
    result = evaluate(["-F", many, "gw"], TreeFiles(Path("/")), ROOT)
    assert len(result.options.forwards) == MAX_LINES
    assert result.notes == [f"{many} line {MAX_LINES + 1}: over {MAX_LINES} lines in all, the rest not evaluated"]
    filler = "# " + "x" * 1000 + "\n"
    for name in ("a", "b", "c"):
        config(tree, f"LocalForward {ord(name)} localhost:22\n" + filler * (MAX_TOTAL_CHARS // len(filler) // 3 + 1),
               name)
    main = config(tree, f"Include {tree.root}/a {tree.root}/b {tree.root}/c\n", "main")
    result = evaluate(["-F", main, "gw"], TreeFiles(Path("/")), ROOT)
    assert [fw.directive for fw in result.options.forwards] == ["LocalForward 97 localhost:22",
                                                               "LocalForward 98 localhost:22"]
    assert result.notes == [f"{tree.root}/c: not read, over {MAX_TOTAL_CHARS} characters in all"]


def test_pattern_matching_and_glob_listing_are_budgeted(tree: TreeFiles) -> None:
    """Long patterns against a long destination: past the budget, Host lines are possibly
    matching (their forwards count, their single values do not), and no glob lists more."""
    host_line = "Host " + "*a" * 1000 + "\n  RemoteForward {port} localhost:22\n  User u{port}\n"
    for first in range(10):
        for second in range(10):
            (tree.root / f"d{first}" / f"d{second}").mkdir(parents=True)
    cfg = config(tree, "".join(host_line.format(port=port) for port in range(1, 31))
                 + f"Include {tree.root}/*/*/*/x\n")
    destination = "a" * 1000
    result = evaluate(["-F", cfg, destination], TreeFiles(Path("/")), ROOT)
    assert result.options.user is None and len(result.options.forwards) == 30
    assert result.notes == [f"Host {('*a' * 39)[:77]}...: not evaluated, over 2000000 steps of pattern matching",
                            f"{cfg}: Include {tree.root}/*/*/*/x: not read, over 64 directories listed"]


@given(st.text("ab.-", max_size=10), st.text("ab.-*?", max_size=8))
def test_wildcards_match_as_glob_does(text: str, pattern: str) -> None:
    """match_pattern()'s `*` and `?` are glob's (no brackets in ssh's patterns)."""
    assert wildcard_match(text, pattern) == fnmatch.fnmatchcase(text, pattern)


def test_a_hostile_pattern_is_not_exponential() -> None:
    assert not wildcard_match("a" * 200, "*a" * 100 + "b")
    assert pattern_list_match("a" * 10, "!x," + "*" * 2000, lower=True) == 0  # too long: matches nothing


# -- the classifier takes the directives -----------------------------------------------------


def test_config_forwards_make_a_tunnel_with_config_evidence() -> None:
    tunnel = classify_tunnel([b"ssh", b"-N", b"gw"], b"/usr/bin/ssh", "ssh",
                             ["RemoteForward 2222 localhost:22", "ProxyJump a,b@c:2022", "User bob",
                              "# a note"])
    assert tunnel is not None
    assert (tunnel.evidence, tunnel.via, tunnel.remote_user, tunnel.is_reverse) == ("config", ("a", "b@c:2022"),
                                                                                 "bob", True)


def test_argv_forwards_keep_argv_evidence_and_proxy_command_is_a_hop() -> None:
    tunnel = classify_tunnel([b"ssh", b"-R", b"1:localhost:22", b"gw"], b"/usr/bin/ssh", "ssh",
                             ["ProxyCommand ssh -W %h:%p hop", "LocalForward 2 localhost:22"])
    assert tunnel is not None and tunnel.evidence == "config" and tunnel.via == ("ProxyCommand",)
    plain = classify_tunnel([b"ssh", b"-R", b"1:localhost:22", b"-J", b"h1,h2", b"gw"], b"/usr/bin/ssh", "ssh")
    assert plain is not None and plain.evidence == "argv" and plain.via == ("h1", "h2")


def test_config_clear_all_forwardings_clears_argv_forwards() -> None:
    assert classify_tunnel([b"ssh", b"-R", b"1:localhost:22", b"gw"], b"", "ssh", ["ClearAllForwardings yes"]) is None


# -- generated configurations against ssh -G ------------------------------------------------

DESTINATIONS = ["gw", "GW", "gw.example.com", "db1", "192.0.2.7", "bob@gw", "ssh://carol@db1:2200",
                "alice@Db1.Example.com"]
PATTERNS = ["gw", "g?", "*.example.com", "*", "db*", "!db1", "!*.example.com", "GW", "192.0.2.*", "jump*",
            "!gw", "?b1"]
FORWARDS = {
    "RemoteForward": ["2222 localhost:22", "0 localhost:22", "127.0.0.1:9000 [::1]:80", "9999",
                      "/tmp/r.sock localhost:22", "8022 ssh.example.com:ssh"],
    "LocalForward": ["8080 localhost:80", "localhost:8081 192.0.2.1:443", "/tmp/l.sock /tmp/t.sock"],
    "DynamicForward": ["1080", "127.0.0.1:1081"],
}
SINGLES = {
    "HostName": ["%h.example.com", "jump.example.com", "192.0.2.9", "Mixed.Example.COM", "%h"],
    "User": ["bob", "carol"],
    "Port": ["2200", "22", "2222"],
    "ProxyJump": ["j1", "u@j2:2022,j3", "none"],
    "ProxyCommand": ["nc %h %p", "none"],
    "ClearAllForwardings": ["yes", "no"],
}
KEYWORD = st.sampled_from([str.lower, str.upper, lambda k: k])
SEPARATOR = st.sampled_from([" ", "=", " = ", "\t", "  "])


@st.composite
def keyword_value(draw: st.DrawFn) -> tuple[str, str]:
    name = draw(st.sampled_from([*FORWARDS, *FORWARDS, *SINGLES]))
    return draw(KEYWORD)(name), draw(st.sampled_from(FORWARDS.get(name) or SINGLES[name]))


@st.composite
def directive(draw: st.DrawFn) -> str:
    keyword, value = draw(keyword_value())
    return f"  {keyword}{draw(SEPARATOR)}{value}"


ARGV_OPTIONS = [["-R", "2222:localhost:22"], ["-R9999"], ["-L", "8080:localhost:80"], ["-D", "1080"],
                ["-p", "2022"], ["-l", "dave"], ["-J", "j9"], ["-J", "none"], ["-W", "localhost:22"]]


@st.composite
def option(draw: st.DrawFn) -> list[str]:
    if draw(st.booleans()):
        return draw(st.sampled_from(ARGV_OPTIONS))
    keyword, value = draw(keyword_value())
    return draw(st.sampled_from([[f"-o{keyword}={value}"], ["-o", f"{keyword} {value}"]]))


@st.composite
def match_line(draw: st.DrawFn) -> str:
    if draw(st.booleans()):
        return "Match all"
    criteria = []
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["host", "originalhost", "user", "localuser", "canonical", "final"]))
        negate = "!" if draw(st.booleans()) else ""
        if kind in ("canonical", "final"):
            criteria.append(f"{negate}{kind}")
            continue
        pool = PATTERNS if kind in ("host", "originalhost") else ["bob", "root", "carol", "!eve", "*", "nobody"]
        patterns = draw(st.lists(st.sampled_from(pool), min_size=1, max_size=3))
        criteria.append(f"{negate}{kind} {','.join(patterns)}")
    return "Match " + " ".join(criteria)


@st.composite
def block(draw: st.DrawFn, includes: list[str]) -> str:
    kind = draw(st.sampled_from(["host", "match", "none"]))
    head = []
    if kind == "host":
        head = ["Host " + " ".join(draw(st.lists(st.sampled_from(PATTERNS), min_size=1, max_size=3)))]
    elif kind == "match":
        head = [draw(match_line())]
    body: list[str] = draw(st.lists(directive(), max_size=4))
    include: str | None = draw(st.none() | st.sampled_from(includes)) if includes else None
    if include is not None:
        body.insert(draw(st.integers(0, len(body))), f"  Include {include}")
    return "\n".join(head + body)


@st.composite
def configuration(draw: st.DrawFn) -> tuple[str, list[str], list[str], str]:
    """(main file, included files, -o options, destination)."""
    included = [draw(st.lists(block([]), max_size=2).map("\n".join)) for _ in range(draw(st.integers(0, 2)))]
    names = [f"inc{i}" for i in range(len(included))] + (["inc*"] if included else [])
    main = "\n".join(draw(st.lists(block(names), min_size=1, max_size=4)))
    options = [arg for given in draw(st.lists(option(), max_size=3)) for arg in given]
    return main, included, options, draw(st.sampled_from(DESTINATIONS))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(configuration())
def test_generated_configurations_agree_with_ssh_minus_g(generated: tuple[str, list[str], list[str], str]) -> None:
    main, included, options, destination = generated
    with tempfile.TemporaryDirectory(prefix="sshconf-") as tmp:
        home = Path(tmp)
        for index, text in enumerate(included):
            write(home / f".ssh/inc{index}", text + "\n")
        cfg = write(home / "main", main + "\n")
        args = ["-F", str(cfg), *options, destination]
        expected = ssh_g(args, home)
        if expected is None:
            return  # ssh refuses it (e.g. "-oProxyJump=none" with a ProxyCommand); nothing to compare
        user = LocalUser("root", 0, "/root", env_home=str(home))
        assert ours(args, TreeFiles(Path("/")), user) == expected, f"{main}\n---\n{included}\n{args}"
