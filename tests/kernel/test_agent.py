"""The whole agent as the README starts it: probe and aggregator processes joined by a pipe."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]


class Agent:
    """The agent as `gpusentry run --json`, in its own process group, with its own API socket and
    journal unless given (so tests never meet the default /run and /var/lib paths)."""

    def __init__(self, *flags: str) -> None:
        if "--socket" not in flags:
            self.tmp = tempfile.mkdtemp(prefix="gs-agent-")
            flags = (*flags, "--socket", f"{self.tmp}/api.sock", "--journal", f"{self.tmp}/journal.db")
        self.proc = subprocess.Popen([sys.executable, "-m", "sensor", "run", "--json", "--no-view", *flags],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                                     start_new_session=True)
        self.lines: list[dict[str, object]] = []
        self.messages: list[str] = []
        assert self.proc.stderr is not None
        self.banner = ""
        for line in self.proc.stderr:  # the probe's "watching" line; the API's may come first
            if line.startswith("gpusentry: watching"):
                self.banner = line
                break
            self.messages.append(line.rstrip("\n"))
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=self._read_messages, daemon=True).start()

    def _read_messages(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.messages.append(line.rstrip("\n"))

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(json.loads(line))

    def find(self, **fields: object) -> dict[str, object] | None:
        for line in list(self.lines):
            if all(line.get(k) == v for k, v in fields.items()):
                return line
        return None

    def alerts(self, rule_id: str) -> list[dict[str, object]]:
        return [line for line in list(self.lines) if line.get("kind") == "alert" and line.get("rule_id") == rule_id]

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
    wait_until(lambda: [m for m in agent.messages if m.startswith("gpusentry: error")], what="the agent's last word")
    assert [m for m in agent.messages if not m.startswith("gpusentry: API on")] == [
        f"gpusentry: error: the aggregator (pid {aggregator_pid}) stopped: killed by signal 9 (SIGKILL); "
        "fix: see its message above, then start the agent again"]


MARKER_RULE = """rules:
  - id: {rule_id}
    title: Marker seen
    description: An exec with the test's marker argument.
    severity: low
    match:
      fact: exec
      where: {{argv: {marker}}}
"""


def test_an_invalid_rule_file_stops_the_agent_before_it_starts(root: None, tmp_path: Path) -> None:
    rules = tmp_path / "bad.yaml"
    rules.write_text("rules:\n  - id: broken\n    title: T\n    description: D\n    severity: high\n"
                     "    match: {fact: tunnel, where: {colour: red}}\n")
    result = subprocess.run([sys.executable, "-m", "sensor", "run", "--rules", str(rules)], capture_output=True,
                            text=True, cwd=ROOT, timeout=60)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"gpusentry: error: invalid rules: {rules}:6: rule broken: a tunnel fact has no field 'colour' (fields: "
        + result.stderr.split("(fields: ", 1)[1].split(")")[0] + "); fix: correct the rule file; "
        "`gpusentry rules check FILE` lists every problem"]


def test_sighup_reloads_rules_and_keeps_them_when_the_new_file_is_invalid(root: None, tmp_path: Path) -> None:
    rules = tmp_path / "site.yaml"
    rules.write_text(MARKER_RULE.format(rule_id="marker-one", marker="gs-marker-1"))
    agent = Agent("--rules", str(rules))
    try:
        subprocess.run(["/bin/true", "gs-marker-1"], check=True)
        wait_until(lambda: agent.alerts("marker-one"), what="the site rule's alert")

        rules.write_text("rules: [broken\n")
        agent.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: any("rules not reloaded" in m for m in agent.messages), what="the refused reload")
        assert any(f"keeping the current 10 rules: invalid rules: {rules}:2: not valid YAML" in m
                   for m in agent.messages), agent.messages
        subprocess.run(["/bin/true", "gs-marker-1"], check=True)
        wait_until(lambda: len(agent.alerts("marker-one")) == 2, what="the kept rule still firing")

        rules.write_text(MARKER_RULE.format(rule_id="marker-two", marker="gs-marker-2"))
        agent.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: "gpusentry: rules reloaded: 10 rules" in agent.messages, what="the reload")
        subprocess.run(["/bin/true", "gs-marker-2"], check=True)
        wait_until(lambda: agent.alerts("marker-two"), what="the new rule's alert")
        assert agent.stop() == 0
    finally:
        if agent.proc.poll() is None:
            agent.proc.kill()


def test_rules_check_lists_every_problem(tmp_path: Path) -> None:
    good, bad = tmp_path / "good.yaml", tmp_path / "bad.yaml"
    good.write_text(MARKER_RULE.format(rule_id="fine", marker="x"))
    bad.write_text("rules:\n  - id: one\n    title: T\n    description: D\n    severity: loud\n"
                   "    match: {fact: exec}\n  - id: two\n    title: T\n    description: D\n    severity: low\n"
                   "    match: {fact: exec, where: {cmdline: {regex: '(x+)+'}}}\n")
    ok = subprocess.run([sys.executable, "-m", "sensor", "rules", "check", str(good)], capture_output=True,
                        text=True, cwd=ROOT)
    assert (ok.returncode, ok.stdout) == (0, "ok: 10 rules in 2 file(s)\n")
    checked = subprocess.run([sys.executable, "-m", "sensor", "rules", "check", str(good), str(bad)],
                             capture_output=True, text=True, cwd=ROOT)
    assert checked.returncode == 1
    assert checked.stdout.splitlines() == [
        f"{bad}:5: rule one: `severity` is one of info, low, medium, high, critical",
        f"{bad}:11: rule two: cmdline: `regex` '(x+)+' repeats a repetition (like (a+)+), which can take "
        "exponential time",
        "2 problem(s)",
    ]


def _api(socket: Path) -> object:
    import grpc

    from sensor.api.client import sensor_stub

    return sensor_stub(grpc.insecure_channel(f"unix:{socket}"))


def _journaled(socket: Path) -> list[int]:
    from sensor.api.v1 import gpusentry_pb2 as pb

    return [a.cursor for a in _api(socket).ListAlerts(pb.ListAlertsRequest(page_size=1000)).alerts]  # type: ignore[attr-defined]


def test_kill_9_loses_no_committed_alert_and_leaves_the_journal_intact(root: None, tmp_path: Path) -> None:
    import sqlite3

    from sensor.api.v1 import gpusentry_pb2 as pb

    rules, socket, journal = tmp_path / "site.yaml", tmp_path / "api.sock", tmp_path / "journal.db"
    rules.write_text(MARKER_RULE.format(rule_id="marker", marker="gs-kill-marker"))
    flags = ("--rules", str(rules), "--socket", str(socket), "--journal", str(journal), "--quiet")
    agent = Agent(*flags)
    wait_until(socket.exists, what="the API socket")
    seen: list[int] = []
    stream = _api(socket).Subscribe(pb.SubscribeRequest(alerts=True))  # type: ignore[attr-defined]

    def read() -> None:
        import grpc

        with contextlib.suppress(grpc.RpcError):  # the stream ends when the agent is killed
            for response in stream:
                seen.append(response.alert.cursor)

    threading.Thread(target=read, daemon=True).start()
    storm = subprocess.Popen(["/bin/sh", "-c", "while true; do /bin/true gs-kill-marker; done"])
    try:
        wait_until(lambda: len(seen) >= 20, timeout=30, what="alerts streaming")
        os.killpg(agent.proc.pid, signal.SIGKILL)  # the probe and the aggregator, mid-stream
        os.kill(agent.proc.pid, signal.SIGKILL)
        agent.proc.wait(timeout=10)
        aggregator_pid = int(agent.banner.split("aggregator pid ")[1].split(")")[0])
        with contextlib.suppress(ProcessLookupError):  # it runs in a session of its own
            os.kill(aggregator_pid, signal.SIGKILL)
    finally:
        storm.kill()
        storm.wait()
    received = list(seen)
    check = sqlite3.connect(journal)
    assert check.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    check.close()
    restarted = Agent(*flags)
    try:
        wait_until(lambda: socket.exists() and _safe_journaled(socket), what="the restarted API")
        journaled = _journaled(socket)
        assert set(received) <= set(journaled)  # every alert a client saw was committed first
        assert journaled == sorted(journaled) and len(journaled) == len(set(journaled))
        subprocess.run(["/bin/true", "gs-kill-marker"], check=True)
        wait_until(lambda: max(_journaled(socket)) > max(journaled), what="a new alert")
        assert max(_journaled(socket)) == max(journaled) + 1  # cursors continue, never reused
        assert restarted.stop() == 0
    finally:
        if restarted.proc.poll() is None:
            restarted.proc.kill()


def _safe_journaled(socket: Path) -> bool:
    try:
        _journaled(socket)
    except Exception:
        return False
    return True


def test_graceful_restart_keeps_the_journal_and_the_socket_group(root: None, tmp_path: Path) -> None:
    import grp

    rules, socket, journal = tmp_path / "site.yaml", tmp_path / "api.sock", tmp_path / "journal.db"
    rules.write_text(MARKER_RULE.format(rule_id="marker", marker="gs-restart-marker"))
    flags = ("--rules", str(rules), "--socket", str(socket), "--journal", str(journal), "--quiet",
             "--socket-group", "daemon")
    first = Agent(*flags)
    wait_until(socket.exists, what="the API socket")
    assert (os.stat(socket).st_mode & 0o777, os.stat(socket).st_gid) == (0o660, grp.getgrnam("daemon").gr_gid)
    subprocess.run(["/bin/true", "gs-restart-marker"], check=True)
    wait_until(lambda: _journaled(socket) == [1], what="the first alert")
    assert first.stop() == 0
    second = Agent(*flags)
    try:
        wait_until(lambda: socket.exists() and _safe_journaled(socket) and _journaled(socket) == [1],
                   what="the journal after a restart")
        subprocess.run(["/bin/true", "gs-restart-marker"], check=True)
        wait_until(lambda: _journaled(socket) == [1, 2], what="the next cursor")
        assert second.stop() == 0
    finally:
        if second.proc.poll() is None:
            second.proc.kill()


def test_a_damaged_journal_stops_the_agent_and_is_left_as_it_was(root: None, tmp_path: Path) -> None:
    journal = tmp_path / "journal.db"
    journal.write_bytes(b"this is not a SQLite database " * 200)
    before = journal.read_bytes()
    result = subprocess.run([sys.executable, "-m", "sensor", "run", "--journal", str(journal), "--socket",
                             str(tmp_path / "s.sock")], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"gpusentry: error: cannot use {journal} as the alert journal: file is not a database; fix: move the file "
        "aside (it is left untouched) and start again; a new journal is created"]
    assert journal.read_bytes() == before


def test_a_second_agent_on_the_same_socket_stops_before_starting(root: None, tmp_path: Path) -> None:
    socket = tmp_path / "api.sock"
    first = Agent("--socket", str(socket), "--journal", str(tmp_path / "one.db"), "--quiet")
    try:
        wait_until(socket.exists, what="the first agent's socket")
        second = subprocess.run([sys.executable, "-m", "sensor", "run", "--no-view", "--socket", str(socket),
                                 "--journal", str(tmp_path / "two.db")], capture_output=True, text=True, cwd=ROOT,
                                timeout=60)
        assert second.returncode == 2
        assert second.stderr.splitlines() == [
            f"gpusentry: error: another gpusentry agent is already serving the API at {socket}; fix: stop it "
            "first, or give --socket another path"]
        assert first.proc.poll() is None and _safe_journaled(socket)  # the first one still serves
        assert first.stop() == 0
    finally:
        if first.proc.poll() is None:
            first.proc.kill()
