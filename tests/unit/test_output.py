"""The printed line: hostile bytes never reach the terminal raw."""

from __future__ import annotations

import json

from sensor import events as ev
from sensor.aggregator.aggregator import Observation
from sensor.output import argv_text, describe, json_line, text


def test_control_bytes_and_invalid_utf8_are_escaped() -> None:
    assert text(b"a\x1b[2Jb\n\xff") == "a\\x1b[2Jb\\x0a\\xff"


def test_long_arguments_and_missing_ones_are_marked() -> None:
    shown = argv_text([b"x" * 200, b"two words"], argc=70)
    assert shown == "x" * 120 + "…(+80) 'two words' …(+68 args)"


def test_exec_line() -> None:
    event = ev.Exec(ts=0, tgid=5, tid=5, result=-2, ppid=1, uid=0, gid=0, cgroup_id=0, start_ns=0, comm=b"",
                    filename=b"/nope", argv=[b"/nope"], argc=1, flags=0, exe_dev=0, exe_ino=0, old_tid=5)
    assert describe(Observation(event, None)) == "exec    pid=5 ppid=1 uid=0 /nope /nope -> ENOENT"


def test_json_line_is_valid_json_with_escaped_bytes() -> None:
    event = ev.Connect(ts=1, tgid=2, tid=2, fd=3, result=0, family="inet", address="198.51.100.7", port=3333,
                       route="egress")
    assert json.loads(json_line(Observation(event, None)) or "") == {
        "kind": "connect", "ts": 1, "tgid": 2, "tid": 2, "fd": 3, "result": 0, "family": "inet",
        "address": "198.51.100.7", "port": 3333, "netns": 0, "route": "egress", "route_by_range": False}
