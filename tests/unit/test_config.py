"""Start-up values are checked before they reach the compiler."""

from __future__ import annotations

import pytest

from sensor.cli import main
from sensor.errors import UsageError
from sensor.probe.program import ProbeConfig, argv_span


@pytest.mark.parametrize(("config", "message"), [
    (ProbeConfig(max_args=0), "--max-args 0 is out of range"),
    (ProbeConfig(arg_len=8), "--arg-len 8 is out of range"),
    (ProbeConfig(max_args=4096, arg_len=4096), "needs 16785408 bytes per exec record"),
    (ProbeConfig(ringbuf_pages=1000), "--ringbuf-pages 1000 is not a power of two"),
    (ProbeConfig(queue_size=1), "--queue-size 1 is out of range"),
])
def test_bad_values(config: ProbeConfig, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        config.validate()


def test_argv_span_is_the_next_power_of_two() -> None:
    assert argv_span(ProbeConfig()) == 32768  # 64 * 258 = 16512
    assert argv_span(ProbeConfig(max_args=16, arg_len=62)) == 1024


def test_unknown_subcommand_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["frobnicate"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("gpusentry: error: gpusentry: argument COMMAND: invalid choice")
