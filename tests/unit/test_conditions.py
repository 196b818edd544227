"""Every condition operator through compile_condition: what holds, what does not (scalars,
list-valued fields, values of another type), what is refused at load, and when two compiled
conditions are the same (a reload keeps the open sequences of unchanged rules)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from sensor.rules.conditions import MAX_PATTERN, MAX_TEXT, ConditionError, compile_condition

LISTS: dict[str, list[Any]] = {"pool_ports": [3333, 4444], "tools": ["ssh", "autossh"],
                               "internal": ["10.0.0.0/8", "fd00::/8"], "tunnel_services": ["serveo.net", "pinggy.io"]}
ARGV = ("/usr/bin/ssh", "-fNR", "9000:localhost:22", "root@198.51.100.1")


def holds(spec: Any, value: Any) -> bool:
    return compile_condition(spec, LISTS).holds(value)


# (spec, value): each operator, on a scalar, a list-valued field and a value of another type
HOLDS = [
    ("ssh", "ssh"),  # a bare scalar: equals
    ({"equals": 22}, 22),
    ({"equals": 22}, "22"),  # a number written as text in the other place
    ({"equals": True}, True),
    ({"equals": "-R"}, ("/usr/bin/ssh", "-R", "9000:localhost:22", "h")),  # any element of a list-valued field
    ([3333, 4444], 4444),  # a bare list: in
    ({"in": "$pool_ports"}, 3333),
    ({"in": "$tools"}, ("bash", "autossh")),
    ({"prefix": "xmr"}, "xmrig-cuda"),
    ({"prefix": "-fN"}, ARGV),
    ({"suffix": "/ssh"}, "/usr/bin/ssh"),
    ({"suffix": "4"}, 3334),  # a number is matched as its text
    ({"contains": "NR"}, "ssh -fNR 9000"),
    ({"contains": "localhost"}, ARGV),
    ({"glob": "kworker*"}, "kworker/0:1"),
    ({"glob": "root@*.1"}, ARGV),
    ({"regex": r"stratum\+tcp://"}, "xmrig -o stratum+tcp://pool:3333"),
    ({"regex": r"^\d+:localhost:\d+$"}, ARGV),
    ({"regex": "(?i)XMRIG"}, "/tmp/xmrig"),
    ({"regex": r"/ssh\z"}, "/usr/bin/ssh"),  # RE2 spells Python's \Z as \z
    ({"cidr": "198.51.100.0/24"}, "198.51.100.1"),
    ({"cidr": "$internal"}, "fd00::1"),
    ({"cidr": ["192.168.0.0/16", "10.0.0.0/8"]}, ("203.0.113.9", "10.1.2.3")),
    ({"range": [3300, 3400]}, 3333),
    ({"range": [3300, 3400]}, 3400),  # inclusive
    ({"range": "3300-3400"}, 3300),
    ({"port_range": [20, 25]}, 22),
    ({"range": [3300, 3400]}, (22, 3333)),
    ({"not": {"in": "$pool_ports"}}, 443),
    ({"not": {"cidr": "$internal"}}, "203.0.113.9"),
    ({"not": {"contains": "-L"}}, ARGV),  # no element contains it
    ({"domain": "pinggy.io"}, "a.pinggy.io"),  # a name below the domain
    ({"domain": "$tunnel_services"}, "SERVEO.NET."),  # the domain itself; case and a final dot do not matter
    ({"domain": ["ngrok.io", "loca.lt"]}, ("198.51.100.1", "x.loca.lt")),
]

HOLDS_NOT = [
    ("ssh", "sshd"),
    ({"equals": 22}, 23),
    ({"equals": 22}, "22.0"),
    ({"equals": True}, 1),  # a bool is not a number
    ({"equals": 1}, True),
    ({"equals": True}, "true"),
    ({"equals": "-R"}, ARGV),  # no element is exactly -R
    ([3333, 4444], 5555),
    ({"in": "$pool_ports"}, True),
    ({"in": "$tools"}, ("bash", "sshd")),
    ({"prefix": "xmr"}, "/tmp/xmrig"),
    ({"prefix": "-L"}, ARGV),
    ({"suffix": "/ssh"}, "/usr/bin/sshd"),
    ({"suffix": "/ssh"}, None),
    ({"contains": "-L"}, "ssh -fNR 9000"),
    ({"contains": "-L"}, ARGV),
    ({"contains": "needle"}, "x" * MAX_TEXT + "needle"),  # past MAX_TEXT is not looked at
    ({"glob": "kworker*"}, "xkworker"),
    ({"glob": "kworker?"}, "kworker/0:1"),
    ({"regex": r"stratum\+tcp://"}, "xmrig -o stratum+ssl://pool:3333"),
    ({"regex": r"^\d+:localhost:\d+$"}, ("9000:localhost:22x",)),
    ({"regex": "XMRIG"}, "/tmp/xmrig"),  # case matters unless (?i)
    ({"regex": "needle"}, "x" * MAX_TEXT + "needle"),
    ({"regex": r"^\d+$"}, "\u0663\u0663"),  # RE2's \d is ASCII (Python's would take these Arabic-Indic digits)
    ({"regex": r"/ssh$"}, "/usr/bin/ssh\n"),  # $ is the end of the text, not before a last newline
    ({"cidr": "198.51.100.0/24"}, "198.51.101.1"),
    ({"cidr": "$internal"}, "fe80::1"),
    ({"cidr": "10.0.0.0/8"}, "not an address"),
    ({"cidr": "10.0.0.0/8"}, 167772161),  # 10.0.0.1 as a number is not an address field
    ({"cidr": ["192.168.0.0/16", "10.0.0.0/8"]}, ("203.0.113.9", "172.16.0.1")),
    ({"range": [3300, 3400]}, 3401),
    ({"range": [3300, 3400]}, "3333"),  # text is not a number
    ({"range": [0, 1]}, True),  # nor is a bool
    ({"port_range": "20-25"}, 19),
    ({"range": [3300, 3400]}, (22, 443)),
    ({"not": {"in": "$pool_ports"}}, 4444),
    ({"not": {"cidr": "$internal"}}, "10.9.9.9"),
    ({"not": {"contains": "NR"}}, ARGV),  # `not` negates the whole: one element has it
    ({"domain": "pinggy.io"}, "evilpinggy.io"),  # a label, not a text suffix
    ({"domain": "pinggy.io"}, "pinggy.io.example.com"),
    ({"domain": "$tunnel_services"}, "198.51.100.1"),  # an address is in no domain
]


@pytest.mark.parametrize(("spec", "value"), HOLDS)
def test_condition_holds(spec: Any, value: Any) -> None:
    assert holds(spec, value)


@pytest.mark.parametrize(("spec", "value"), HOLDS_NOT)
def test_condition_does_not_hold(spec: Any, value: Any) -> None:
    assert not holds(spec, value)


def test_every_operator_is_tested_both_ways() -> None:
    from sensor.rules.conditions import OPERATORS

    def operators(cases: list[tuple[Any, Any]]) -> set[str]:
        found = set()
        for spec, _ in cases:
            if isinstance(spec, dict):
                found.add(next(iter(spec)))
            else:
                found.add("in" if isinstance(spec, list) else "equals")
        return found

    assert operators(HOLDS) == operators(HOLDS_NOT) == set(OPERATORS)


REFUSED_BY_RE2 = "; refused: backreferences, lookahead and lookbehind, atomic groups and possessive repeats, " \
                 "conditionals, repeat counts over 1000"


def re2_refuses(pattern: str, reason: str) -> str:
    return (f"`regex` {pattern!r} uses a construct RE2 (the linear-time engine rules use) does not support: "
            f"{reason}{REFUSED_BY_RE2}")


@pytest.mark.parametrize(("spec", "message"), [
    ({"equals": {"a": 1}}, "`equals` takes a plain value, not dict"),
    ({"in": []}, "`in` needs at least one value"),
    ({"in": "$nope"}, "no list named 'nope' (lists: internal, pool_ports, tools, tunnel_services)"),
    ({"prefix": ""}, "`prefix` takes a non-empty string"),
    ({"glob": 7}, "`glob` takes a non-empty string"),
    ({"cidr": "10.0.0.0/33"}, "`cidr`: '10.0.0.0/33' is not a network ('10.0.0.0/33' does not appear to be an "
                              "IPv4 or IPv6 network)"),
    ({"range": [5, 1]}, "`range` takes two bounds, low first"),
    ({"port_range": ["a", 2]}, "`port_range` bounds must be integers"),
    ({"range": 5}, "`range` takes [low, high] or \"low-high\""),
    ({"not": {"between": 1}}, "unknown operator 'between' (operators: equals, in, prefix, suffix, contains, glob, "
                              "regex, cidr, range, port_range, not, domain)"),
    ({"in": [1], "not": 2}, "a condition has one operator, not 2 (in, not)"),
    ({"regex": "a" * (MAX_PATTERN + 1)}, f"`regex` is longer than {MAX_PATTERN} characters"),
    ({"regex": "(x"}, "`regex` '(x' does not compile: missing ): (x"),
    ({"regex": "a**"}, "`regex` 'a**' does not compile: bad repetition operator: **"),
    ({"regex": "\ud800"}, "`regex` '\\ud800' does not compile: surrogates not allowed at 0"),
    ({"regex": r"(a)\1"}, re2_refuses(r"(a)\1", r"invalid escape sequence: \1")),
    ({"regex": "-R(?=[0-9])"}, re2_refuses("-R(?=[0-9])", "invalid perl operator: (?=")),
    ({"regex": "ssh(?!d)"}, re2_refuses("ssh(?!d)", "invalid perl operator: (?!")),
    ({"regex": "(?<=-)R"}, re2_refuses("(?<=-)R", "invalid perl operator: (?<=")),
    ({"regex": "(?<!-)R"}, re2_refuses("(?<!-)R", "invalid perl operator: (?<!")),
    ({"regex": "(?>a+)b"}, re2_refuses("(?>a+)b", "invalid perl operator: (?>")),
    ({"regex": "a++b"}, re2_refuses("a++b", "bad repetition operator: ++")),
    ({"regex": "(a)?(?(1)b|c)"}, re2_refuses("(a)?(?(1)b|c)", "invalid perl operator: (?(")),
    ({"regex": "a{1001}"}, re2_refuses("a{1001}", "invalid repetition size: {1001}")),
    # RE2's own default (8 MiB) would take this one: the rules' bound is in force
    ({"regex": r"\pL{300}"}, r"`regex` '\\pL{300}' needs more than RE2's 4 MiB a pattern: "
                             "pattern too large - compile failed"),
])
def test_refused_at_load(spec: Any, message: str) -> None:
    with pytest.raises(ConditionError) as info:
        compile_condition(spec, LISTS)
    assert str(info.value) == message


@pytest.mark.parametrize(("pattern", "text"), [
    ("(a|a)*b", "-" * 30 + "aab"), ("(a+)+b", "-" * 30 + "aab"), ("(.*a){20}", "-a" * 20), ("(a|aa)*c", "aaac"),
    (r"^(\w+\s?)*$", "tunnel to host"), ("(x+x+)+y", "xxy"),
])
def test_patterns_that_backtrack_exponentially_are_accepted(pattern: str, text: str) -> None:
    # The old shape heuristic refused the nested repeats; RE2 runs them all in linear time.
    assert holds({"regex": pattern}, text)
    assert not holds({"regex": pattern}, text[:-1] + "!")


def test_hostile_text_is_searched_in_linear_time() -> None:
    # In a fresh interpreter with a deadline: a backtracking engine would not return for ages
    # (stdlib re takes seconds on 24 characters of this), so it fails by timing out, not by hanging.
    script = textwrap.dedent("""
        from sensor.rules.conditions import compile_condition
        hostile = ("a" * 4095 + "!", ("ssh", "a" * 4096))
        for pattern in ("(a|a)*b", "(a+)+b", "(.*a){20}b", "(a|aa)*c"):
            condition = compile_condition({"regex": pattern}, {})
            print(pattern, [condition.holds(text) for text in hostile])
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=30, check=True,
                          cwd=Path(__file__).resolve().parents[2])
    assert done.stdout.splitlines() == ["(a|a)*b [False, False]", "(a+)+b [False, False]",
                                        "(.*a){20}b [False, False]", "(a|aa)*c [False, False]"]


def test_regex_on_undecodable_and_surrogate_text() -> None:
    assert holds({"regex": "x.y"}, "x\udcffy")  # a lone surrogate is one character to RE2 as well
    assert holds({"regex": r"\\xff"}, b"\xff".decode("utf-8", "backslashreplace"))


# -- sameness: a reload keeps a sequence's partial matches only when its conditions are the same --


@pytest.mark.parametrize(("a", "b"), [
    ({"regex": "(a|a)*b"}, {"regex": "(a|a)*b"}),
    ({"not": {"regex": "x+"}}, {"not": {"regex": "x+"}}),
    (22, {"equals": 22}),
    ([1, 2], {"in": [1, 2]}),
    ([1, 2], [2, 1, 2]),  # the same set of choices
    ({"in": "$pool_ports"}, [3333, 4444]),
    ({"cidr": "10.1.2.3/8"}, {"cidr": "10.0.0.0/8"}),
    ({"range": "1-2"}, {"port_range": [1, 2]}),
])
def test_same_conditions_are_equal(a: Any, b: Any) -> None:
    first, second = compile_condition(a, LISTS), compile_condition(b, LISTS)
    assert first == second and hash(first) == hash(second)


@pytest.mark.parametrize(("a", "b"), [
    ({"regex": "(a|a)*b"}, {"regex": "(a|a)*c"}),
    ({"equals": 1}, {"equals": True}),
    ({"equals": 1}, {"equals": 1.0}),
    ({"equals": 1}, {"equals": "1"}),
    ([1, 2], [True, 2]),
    ({"prefix": "a"}, {"suffix": "a"}),
    ({"not": {"regex": "x+"}}, {"regex": "x+"}),
    ({"range": [1, 2]}, {"range": [1, 3]}),
])
def test_different_conditions_are_not_equal(a: Any, b: Any) -> None:
    assert compile_condition(a, LISTS) != compile_condition(b, LISTS)
