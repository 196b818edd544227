"""The whole agent as the README starts it: probe and aggregator processes joined by a pipe."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]


class Agent:
    def __init__(self, *flags: str) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "sensor", "run", "--json", *flags],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
        self.lines: list[dict[str, object]] = []
        self.banner = ""
        threading.Thread(target=self._read, daemon=True).start()
        assert self.proc.stderr is not None
        self.banner = self.proc.stderr.readline()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(json.loads(line))

    def find(self, **fields: object) -> dict[str, object] | None:
        for line in list(self.lines):
            if all(line.get(k) == v for k, v in fields.items()):
                return line
        return None

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGINT)
        return self.proc.wait(timeout=30)


@pytest.fixture
def agent(root: None) -> Iterator[Agent]:
    running = Agent("--user", "nobody")
    yield running
    if running.proc.poll() is None:
        running.stop()


def test_agent_shows_an_exec_and_a_connect(agent: Agent) -> None:
    assert "gpusentry: watching" in agent.banner, agent.banner
    marker = f"agent-marker-{os.getpid()}"
    true = subprocess.Popen(["/bin/true", marker])
    true.wait()
    exec_line = wait_until(lambda: agent.find(kind="exec", tgid=true.pid), what="exec line")
    assert exec_line["argv"] == ["/bin/true", marker]
    assert exec_line["filename"] == "/bin/true" and exec_line["result"] == 0

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = listener.getsockname()[1]
    code = "import socket,sys,os; s=socket.create_connection(('127.0.0.1', int(sys.argv[1]))); print(os.getpid())"
    helper = subprocess.run(["/usr/bin/python3", "-c", code, str(port)], capture_output=True, text=True)
    pid = int(helper.stdout)
    connect_line = wait_until(lambda: agent.find(kind="connect", tgid=pid), what="connect line")
    assert (connect_line["address"], connect_line["port"], connect_line["result"]) == ("127.0.0.1", port, 0)
    listener.close()
    assert agent.stop() == 0


def test_aggregator_runs_as_the_unprivileged_user(agent: Agent) -> None:
    assert "gpusentry: watching" in agent.banner
    aggregator_pid = int(agent.banner.split("aggregator pid ")[1].split(")")[0])
    status = Path(f"/proc/{aggregator_pid}/status").read_text()
    uid_line = next(line for line in status.splitlines() if line.startswith("Uid:"))
    assert uid_line.split()[1:] == ["65534"] * 4
    # The probe stays root: it holds the BPF programs.
    assert os.stat(f"/proc/{agent.proc.pid}").st_uid == 0


def test_agent_stops_cleanly_when_the_aggregator_dies(agent: Agent) -> None:
    aggregator_pid = int(agent.banner.split("aggregator pid ")[1].split(")")[0])
    os.kill(aggregator_pid, signal.SIGKILL)
    assert agent.proc.wait(timeout=30) == 2
    assert agent.proc.stderr is not None
    assert agent.proc.stderr.read().splitlines() == [
        f"gpusentry: error: the aggregator (pid {aggregator_pid}) stopped: killed by signal 9 (SIGKILL); "
        "fix: see its message above, then start the agent again"]
