"""Shared test settings.

Kernel and scenario tests need root: on the machines this project runs on, a kernel test
that cannot load its program fails, it never skips.
"""

from __future__ import annotations

import os

import pytest


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
