"""A real probe in the real kernel, shared by the kernel tests of one session.

Frames go through the real encoding into a real Aggregator: a test sees what the agent
would. The probe filters out its own process (the test runner), so every workload runs in
a helper subprocess, as Tetragon's tests do.
"""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

from sensor import events as ev
from sensor.aggregator.aggregator import Aggregator, Observation
from sensor.probe.probe import Probe
from sensor.probe.program import ProbeConfig
from sensor.rules.loader import load_rules
from tests.waiting import wait_until

HELPERS = Path(__file__).parent / "helpers"


class Collector:
    """A frame sink that feeds an Aggregator and keeps every observation for assertions."""

    def __init__(self, aggregator: Aggregator | None = None) -> None:
        self.aggregator = aggregator if aggregator is not None else Aggregator()
        self.observations: list[Observation] = []
        self.payloads: list[bytes] = []
        self.lock = threading.Lock()
        self.keep_payloads = False

    def write_payloads(self, payloads: Iterable[bytes]) -> None:
        with self.lock:
            for payload in payloads:
                if self.keep_payloads:
                    self.payloads.append(payload)
                self.observations.append(self.aggregator.handle(ev.decode(payload)))

    def events(self, kind: type[ev.Event] | None = None, tgid: int | None = None) -> list[ev.Event]:
        with self.lock:
            return [o.event for o in self.observations
                    if (kind is None or isinstance(o.event, kind)) and (tgid is None or o.event.tgid == tgid)]

    def wait_for(self, predicate: Callable[[ev.Event], bool], count: int = 1, timeout: float = 10.0,
                 what: str = "event") -> list[ev.Event]:
        def found() -> list[ev.Event]:
            matches = [e for e in self.events() if predicate(e)]
            return matches if len(matches) >= count else []
        return wait_until(found, timeout, what)


class LiveProbe:
    def __init__(self, probe: Probe, collector: Collector) -> None:
        self.probe = probe
        self.collector = collector

    @property
    def aggregator(self) -> Aggregator:
        return self.collector.aggregator

    def wait_for(self, predicate: Callable[[ev.Event], bool], count: int = 1, timeout: float = 10.0,
                 what: str = "event") -> list[ev.Event]:
        return self.collector.wait_for(predicate, count, timeout, what)


@pytest.fixture(scope="session")
def live(root: None) -> Iterator[LiveProbe]:
    """The probe with the full aggregator: built-in rules, classifiers, tunnel taint."""
    collector = Collector(Aggregator(rules=load_rules([])))
    probe = Probe(ProbeConfig(), collector)
    probe.start()
    try:
        yield LiveProbe(probe, collector)
    finally:
        probe.stop()


@pytest.fixture(scope="session")
def helpers(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The C helpers, compiled once per session."""
    out = tmp_path_factory.mktemp("helpers")
    for source in HELPERS.glob("*.c"):
        subprocess.run(["gcc", "-O1", "-Wall", "-o", str(out / source.stem), str(source)], check=True)
    return out


def run_python(code: str, *args: str, **kwargs: Any) -> subprocess.CompletedProcess[bytes]:
    """A helper process running `code` with the system Python (not filtered like the runner)."""
    result: subprocess.CompletedProcess[bytes] = subprocess.run(["/usr/bin/python3", "-c", code, *args],
                                                                capture_output=True, check=False, timeout=30,
                                                                **kwargs)
    return result


def exec_of(child_pid: int) -> Callable[[ev.Event], bool]:
    return lambda e: isinstance(e, ev.Exec) and e.tgid == child_pid
