"""The live view the agent starts ends with the agent: through its lifeline pipe."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def watch(lifeline: int, socket: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sensor", "watch", "--socket", str(socket), "--lifeline",
                           str(lifeline)], pass_fds=(lifeline,), capture_output=True, text=True, cwd=ROOT,
                          timeout=60)


def test_a_view_whose_agent_is_gone_before_it_connects_ends_quietly(tmp_path: Path) -> None:
    lifeline, agent_end = os.pipe()
    os.close(agent_end)  # the agent died while its view was starting
    try:
        result = watch(lifeline, tmp_path / "gone.sock")
    finally:
        os.close(lifeline)
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


def test_a_view_whose_agent_lives_says_what_is_missing(tmp_path: Path) -> None:
    lifeline, agent_end = os.pipe()
    try:
        result = watch(lifeline, tmp_path / "missing.sock")
    finally:
        os.close(lifeline)
        os.close(agent_end)
    assert result.returncode == 2
    assert result.stderr == (f"gpusentry: error: no agent API at {tmp_path / 'missing.sock'}; fix: start the agent "
                             "(scripts/agent), or give --socket\n")
