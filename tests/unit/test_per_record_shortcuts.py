"""The aggregator's per-record shortcuts give what the long way gave: the name of a path without
pathlib, exec readings remembered per exact command line (and bounded), verdicts made once,
and the events skipped for facts that can give none."""

from __future__ import annotations

import dataclasses
import itertools
from pathlib import PurePosixPath
from typing import Any, get_type_hints

import pytest

from sensor import events as ev
from sensor.aggregator import exec_reading
from sensor.aggregator.aggregator import Aggregator
from sensor.aggregator.detector import FACT_EVENTS
from sensor.aggregator.exec_reading import ExecReadings
from sensor.aggregator.process_table import Process, ProcKey
from sensor.classify.binaries import basename
from sensor.classify.egress import Destination, EgressPolicy, Verdict
from sensor.classify.miner import MinerClassifier
from sensor.rules.loader import load_rules

SEC = 1_000_000_000


def exec_event(pid: int, start_ns: int, ts: int, argv: list[bytes]) -> ev.Exec:
    return ev.Exec(ts=ts, tgid=pid, tid=pid, result=0, ppid=1, uid=0, gid=0, cgroup_id=1, start_ns=start_ns,
                   comm=b"x", filename=argv[0], argv=argv, argc=len(argv), flags=0, exe_dev=0, exe_ino=0,
                   old_tid=pid)


def test_basename_is_pathlibs_name() -> None:
    parts = ["/", "//", ".", "..", "a", "bin", "", "é", " x"]
    paths = ["".join(combo) for n in range(5) for combo in itertools.product(parts, repeat=n)]
    for path in paths:
        assert basename(path) == PurePosixPath(path).name, path
    for raw in (b"/usr/bin/\xff\xfe", b"\xff/.", b"/opt/x/", b""):
        assert basename(raw) == PurePosixPath(raw.decode("utf-8", "replace")).name


def readings() -> ExecReadings:
    return ExecReadings(MinerClassifier(load_rules([]).lists))


COMMAND_LINES = [
    (b"/usr/bin/ssh", [b"ssh", b"-fNR", b"9000:localhost:22", b"user@203.0.113.9"], ""),
    (b"/tmp/kworker", [b"kworker", b"-o", b"stratum+tcp://pool.supportxmr.com:3333", b"--donate-level=1"], ""),
    (b"/tmp/renamed", [b"renamed", b"-R", b"2222:localhost:22", b"h"], "ssh"),
    (b"/bin/true", [b"/bin/true", b"\xff\xfe"], ""),
    (b"/usr/bin/ssh", [b"ssh", b"-R", b"9000:localhost:22", b"h"], "socat"),  # the probe says it is not ssh
]


@pytest.mark.parametrize(("filename", "argv", "tool"), COMMAND_LINES)
def test_a_remembered_reading_is_the_reading(filename: bytes, argv: list[bytes], tool: str) -> None:
    cache = readings()
    first = cache.read(filename, argv, tool)
    assert cache.read(filename, list(argv), tool) is first  # remembered
    assert readings()._read(filename, argv, tool) == first  # what reading it afresh gives


def test_readings_are_told_apart_by_every_input() -> None:
    cache = readings()
    ssh = cache.read(b"/usr/bin/ssh", [b"ssh", b"-R", b"9000:localhost:22", b"h"], "")
    assert ssh.tunnel is not None
    assert cache.read(b"/usr/bin/ssh", [b"ssh", b"-R", b"9000:localhost:22", b"h"], "socat").tunnel is None
    assert cache.read(b"/usr/bin/ssh", [b"ssh", b"-L", b"9000:localhost:22", b"h"], "").tunnel != ssh.tunnel
    assert cache.read(b"/usr/bin/xmrig", [b"ssh", b"-R", b"9000:localhost:22", b"h"], "").miner
    # what ssh's configuration files added (the probe's evaluation) is part of the key
    plain = cache.read(b"/usr/bin/ssh", [b"ssh", b"-N", b"h"], "ssh")
    configured = cache.read(b"/usr/bin/ssh", [b"ssh", b"-N", b"h"], "ssh", ["RemoteForward 9000 localhost:22"])
    assert plain.tunnel is None
    assert configured.tunnel is not None and configured.tunnel.tunnel.evidence == "config"
    assert cache.read(b"/usr/bin/ssh", [b"ssh", b"-N", b"h"], "ssh", ["# a note"]).tunnel is None


def test_readings_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(exec_reading, "MAX_READINGS", 4)
    cache = readings()
    for n in range(10):
        cache.read(b"/bin/echo", [b"echo", str(n).encode()], "")
    assert len(cache) == 4
    assert cache.read(b"/bin/echo", [b"echo", b"9"], "") is cache.read(b"/bin/echo", [b"echo", b"9"], "")
    long_line = [b"echo", b"x" * (exec_reading.MAX_CMDLINE + 1)]
    many_args = [b"echo"] * (exec_reading.MAX_ARGS + 1)
    for argv in (long_line, many_args):
        first = cache.read(b"/bin/echo", argv, "")
        assert cache.read(b"/bin/echo", argv, "") is not first  # not remembered: read each time
        assert cache.read(b"/bin/echo", argv, "") == first


def test_a_reload_forgets_readings_made_with_the_old_lists() -> None:
    agg = Aggregator(rules=load_rules([]))
    assert agg.detector is not None
    argv = [b"/opt/hasher", b"--go"]
    agg.handle(exec_event(100, SEC, SEC, argv))
    ruleset = load_rules([])
    ruleset.lists["miner_binaries"] = [*ruleset.lists.get("miner_binaries", []), "hasher"]
    agg.detector.reload(ruleset)
    obs = agg.handle(exec_event(101, 2 * SEC, 2 * SEC, argv))
    assert [fact.KIND for fact in obs.facts] == ["exec", "miner"]


def test_verdicts_made_once_equal_verdicts_made_now() -> None:
    policy = EgressPolicy(allowlist=["203.0.113.0/24"])
    for destination, address, ranged in itertools.product(Destination, ("203.0.113.5", "198.51.100.1"),
                                                           (False, True)):
        verdict = policy.judge(address, destination.value, ranged)
        assert verdict == Verdict(destination, address.startswith("203."), ranged)
        assert type(verdict.destination) is Destination
    assert policy.judge("198.51.100.1", "egress", 1).by_range == 1  # type: ignore[arg-type]  # as given


def _blank(cls: type[ev.Event]) -> ev.Event:
    """An event of this kind with every field empty."""
    empty = {int: 0, str: "", bytes: b"", bool: False}
    hints = get_type_hints(cls)
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        values[f.name] = empty[hint] if hint in empty else hint.__origin__()
    return cls(**values)


@pytest.mark.parametrize("cls", [c for c in ev.EVENT_TYPES.values() if not issubclass(c, FACT_EVENTS)],
                         ids=lambda c: c.__name__)
def test_events_outside_fact_events_give_no_facts(cls: type[ev.Event]) -> None:
    agg = Aggregator(rules=load_rules([]))
    assert agg.detector is not None
    process = Process(key=ProcKey(5, SEC), ppid=1, parent=None)
    assert agg.detector.facts_of(_blank(cls), process) == []
