"""The probe process imports only what it runs: the agent's checks run in forked children."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from sensor import agent, config
from sensor.errors import GpusentryError, RuntimeFailure
from sensor.rules.loader import RuleError, rule_files

ROOT = Path(__file__).resolve().parents[2]


def test_the_probe_process_does_not_import_what_only_the_checks_and_the_aggregator_use() -> None:
    """The run command's modules, and its configuration (which checks the API's settings)."""
    code = ("import sys, sensor.agent; from sensor import cli; argv = ['run', '--no-view']; "
            "args = cli.build_parser().parse_args(argv); cli.configure(args, argv); "
            "print(' '.join(m for m in sys.modules if m.startswith(('sensor.', 'sqlite3'))))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            cwd=ROOT).stdout.split()
    for heavy in ("sensor.consume", "sensor.aggregator", "sensor.api.server", "sensor.journal",
                  "sensor.rules.loader", "sensor.rules.engine", "sqlite3"):
        assert not [m for m in loaded if m == heavy or m.startswith(heavy + ".")], heavy


def test_a_check_apart_returns_its_result() -> None:
    assert agent._apart(lambda: ["/x", 2]) == ["/x", 2]


def test_a_check_apart_raises_its_error_with_the_same_line_and_status() -> None:
    def invalid() -> None:
        raise RuleError([rule_files([Path("/nonexistent/rules.yaml")])[1][0]])

    with pytest.raises(GpusentryError) as raised:
        agent._apart(invalid)
    assert str(raised.value).startswith("invalid rules: /nonexistent/rules.yaml")
    assert raised.value.exit_code == 2


def test_a_bug_in_a_check_apart_is_a_runtime_failure(capfd: pytest.CaptureFixture[str]) -> None:
    def broken() -> None:
        raise ZeroDivisionError("division by zero")

    with pytest.raises(GpusentryError) as raised:
        agent._apart(broken)
    assert raised.value.exit_code == RuntimeFailure.exit_code
    assert "ZeroDivisionError: division by zero" in str(raised.value)
    assert "Traceback" in capfd.readouterr().err


def test_the_default_directories_are_the_aggregators() -> None:
    from sensor.api.endpoint import DEFAULT_SOCKET
    from sensor.consume import DEFAULT_JOURNAL

    assert Path(config.DEFAULT_SOCKET) == DEFAULT_SOCKET and Path(config.DEFAULT_JOURNAL) == DEFAULT_JOURNAL
