"""Shared test settings.

Kernel and scenario tests need root: on the machines this project runs on, a kernel test
that cannot load its program fails, it never skips.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from sensor.sinks.metrics import MetricsServer
    from tests.kernel.test_agent import Agent
    from tests.unit.test_api import Harness


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        path = str(item.path)
        if "/kernel/" in path:
            item.add_marker(pytest.mark.kernel)
        if "/scenario/" in path:
            item.add_marker(pytest.mark.scenario)


@pytest.fixture(scope="session")
def root() -> None:
    assert os.geteuid() == 0, "kernel tests load BPF programs: run the suite as root (sudo scripts/test)"


@pytest.fixture
def agents(root: None) -> Iterator[list[Agent]]:
    """Agents a test starts (tests/kernel/test_agent.py's Agent); whatever the test's outcome,
    none outlives it."""
    started: list[Agent] = []
    yield started
    for agent in started:
        if agent.proc.poll() is None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                agent.stop()
        agent.kill()


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    """The API's real state and server on a temporary socket (tests/unit/test_api.py), with a shell."""
    from tests.unit.test_api import make_harness

    made = make_harness(tmp_path)
    made.spawn(1, 10, "/usr/bin/bash")
    yield made
    made.server.stop()
    made.state.journal.close()


@pytest.fixture
def metrics(harness: Harness) -> Iterator[MetricsServer]:
    """The metrics endpoint over that state, with two sinks (tests/unit/test_metrics.py's SINKS)."""
    from sensor.sinks.metrics import MetricsServer
    from tests.unit.test_metrics import SINKS

    server = MetricsServer("127.0.0.1:0", harness.state, sinks=lambda: list(SINKS), probe_cpu=lambda: 2.5)
    server.start()
    yield server
    server.stop()
