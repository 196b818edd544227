"""The whole agent as the README starts it: the probe, the aggregator with the API, and the live
view, each with the privileges the README documents; what each one's death leaves behind."""

from __future__ import annotations

import contextlib
import grp
import json
import os
import pwd
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from sensor import privileges
from tests.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]
AGENT_USER = pwd.getpwnam("gpusentry")


def workdir() -> Path:
    """A directory the agent's unprivileged user may use (tmp_path's parents are root's, 0700)."""
    path = Path(tempfile.mkdtemp(prefix="gs-agent-"))
    os.chown(path, AGENT_USER.pw_uid, AGENT_USER.pw_gid)
    return path


class Agent:
    """The agent as `gpusentry run --json --output events` (every event, fact, alert and incident
    as a JSON line), in its own process group, with its own API socket and journal unless given
    (so tests never meet the default /run and /var/lib paths)."""

    def __init__(self, *flags: str, json_lines: bool = True) -> None:
        self.tmp = workdir()
        if "--socket" not in flags:
            flags = (*flags, "--socket", f"{self.tmp}/api.sock", "--journal", f"{self.tmp}/journal.db")
        view = [] if "--view" in flags else ["--no-view"]
        if "--quiet" not in flags and "--output" not in flags:
            flags = (*flags, "--output", "events")
        self.proc = subprocess.Popen([sys.executable, "-m", "sensor", "run", "--json", *view, *flags],
                                     stdout=subprocess.PIPE if json_lines else subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True, cwd=ROOT, start_new_session=True)
        self.lines: list[dict[str, Any]] = []
        self.messages: list[str] = []
        assert self.proc.stderr is not None
        self.banner = ""
        for line in self.proc.stderr:  # the probe's "watching" line; the API's may come first
            if line.startswith("gpusentry: watching"):
                self.banner = line
                break
            self.messages.append(line.rstrip("\n"))
        if json_lines:
            threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=self._read_messages, daemon=True).start()

    @property
    def aggregator_pid(self) -> int:
        found = re.search(r"aggregator pid (\d+)", self.banner)
        assert found, f"no watching line: {self.messages}"
        return int(found.group(1))

    def children(self) -> dict[str, int]:
        """The probe's child processes that have become `python -m sensor COMMAND`, by command."""
        out = {}
        for pid in Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split():
            with contextlib.suppress(OSError):
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
                if argv[1:3] == [b"-m", b"sensor"] and len(argv) > 3:
                    out[argv[3].decode()] = int(pid)
        return out

    def _read_messages(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.messages.append(line.rstrip("\n"))

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(json.loads(line))

    def event(self, kind: str, pid: int | None = None, **fields: object) -> dict[str, Any] | None:
        """The first event of this kind (exec, connect, ...) by this pid whose detail has these fields."""
        for line in list(self.lines):
            event = line["event"] if line["type"] == "event" else {}
            if event.get("kind") != f"EVENT_KIND_{kind.upper()}" or pid not in (None, event["process"]["pid"]):
                continue
            if all(event[kind].get(k) == v for k, v in fields.items()):
                return dict(event[kind])
        return None

    def alerts(self, rule_id: str) -> list[dict[str, Any]]:
        return [line["alert"] for line in list(self.lines)
                if line["type"] == "alert" and line["alert"]["rule_id"] == rule_id]

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGINT)
        return self.proc.wait(timeout=30)

    def kill(self) -> None:
        """Whatever is left of it: the probe's group, and the aggregator's own session."""
        for pid in (self.proc.pid, *self._aggregator_if_known()):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)

    def _aggregator_if_known(self) -> list[int]:
        found = re.search(r"aggregator pid (\d+)", self.banner)
        return [int(found.group(1))] if found else []


def found(line: Callable[[], dict[str, Any] | None], what: str) -> dict[str, Any]:
    result = wait_until(line, what=what)
    assert result is not None
    return result


@pytest.fixture
def agent(agents: list[Agent]) -> Agent:
    agents.append(Agent())
    return agents[-1]


def test_agent_shows_an_exec_and_a_connect(agent: Agent) -> None:
    assert "gpusentry: watching" in agent.banner, agent.banner
    marker = f"agent-marker-{os.getpid()}"
    true = subprocess.Popen(["/bin/true", marker])
    true.wait()
    exec_line = found(lambda: agent.event("exec", true.pid), "exec line")
    assert exec_line["argv"] == ["/bin/true", marker]
    assert exec_line["filename"] == "/bin/true" and exec_line["result"] == 0 and exec_line["argv_truncated"] is False

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = listener.getsockname()[1]
    code = "import socket,sys,os; s=socket.create_connection(('127.0.0.1', int(sys.argv[1]))); print(os.getpid())"
    helper = subprocess.run(["/usr/bin/python3", "-c", code, str(port)], capture_output=True, text=True)
    pid = int(helper.stdout)
    connect_line = found(lambda: agent.event("connect", pid), "connect line")
    assert (connect_line["address"], connect_line["port"], connect_line["result"]) == ("127.0.0.1", port, 0)
    listener.close()
    assert agent.stop() == 0
    # every line `run --json` printed is a Record of the published schema
    from tests.unit.test_schema import schema_validator

    published = schema_validator()
    invalid = [(line, error.message) for line in agent.lines for error in published.iter_errors(line)]
    assert invalid == [] and len(agent.lines) > 2


# -- privileges ------------------------------------------------------------------------------


def documented_privileges() -> dict[str, dict[str, str]]:
    """The README's privilege table, by command (`gpusentry run` ... `gpusentry record`)."""
    rows: dict[str, dict[str, str]] = {}
    section = (ROOT / "README.md").read_text().split("## Privileges", 1)[1].split("\n## ", 1)[0]
    lines = [line for line in section.splitlines() if line.startswith("|")]
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    for line in lines[2:]:
        cells = dict(zip(header, (cell.strip() for cell in line.strip("|").split("|")), strict=True))
        rows[cells["command"].strip("`")] = cells
    return rows


def observed(pid: int) -> dict[str, str]:
    """A process's privileges from /proc/PID/status, in the README table's terms."""
    status = privileges.ProcStatus.read(pid)
    assert len(set(status.uids)) == 1 and len(set(status.gids)) == 1, status  # real = effective = saved = fs
    assert status.cap_inh == 0 and status.cap_amb == 0, status
    assert status.cap_eff == status.cap_prm == status.cap_bnd, status
    caps = privileges.cap_names(status.cap_eff)
    return {"user": pwd.getpwuid(status.uids[0]).pw_name, "group": grp.getgrgid(status.gids[0]).gr_name,
            "groups": ", ".join(str(g) for g in status.groups) or "none",
            "capabilities": ", ".join(sorted(caps)) or "none", "no_new_privs": "yes" if status.no_new_privs else "no"}


def expected(row: dict[str, str]) -> dict[str, str]:
    groups = row["groups"].split(" (", 1)[0]  # the table's note on --socket-group is not a value
    return {"user": row["user"], "group": row["group"], "groups": groups, "capabilities": row["capabilities"],
            "no_new_privs": row["no_new_privs"]}


def test_every_agent_process_runs_with_exactly_the_documented_privileges(agents: list[Agent]) -> None:
    table = documented_privileges()
    agent = Agent("--view", json_lines=False)
    agents.append(agent)
    children = wait_until(lambda: (c if "watch" in (c := agent.children()) else {}), what="the live view")
    assert observed(agent.proc.pid) == expected(table["gpusentry run"])
    assert observed(children["aggregate"]) == expected(table["gpusentry aggregate"])
    assert observed(children["watch"]) == expected(table["gpusentry watch"])
    assert f"aggregator pid {children['aggregate']} as gpusentry" in agent.banner
    assert agent.stop() == 0


def test_record_keeps_exactly_the_documented_privileges(root: None, tmp_path: Path) -> None:
    capture = tmp_path / "cap.gscap"
    record = subprocess.Popen([sys.executable, "-m", "sensor", "record", "-w", str(capture)], cwd=ROOT,
                              stderr=subprocess.PIPE, text=True)
    try:
        assert record.stderr is not None
        line = record.stderr.readline()
        assert line.startswith(f"gpusentry: recording to {capture}"), line
        assert observed(record.pid) == expected(documented_privileges()["gpusentry record"])
        record.send_signal(signal.SIGINT)
        assert record.wait(timeout=30) == 0
    finally:
        if record.poll() is None:
            record.kill()


def test_socket_and_journal_belong_to_the_unprivileged_side(agents: list[Agent]) -> None:
    agent = Agent("--quiet")
    agents.append(agent)
    sock, journal = agent.tmp / "api.sock", agent.tmp / "journal.db"
    wait_until(sock.exists, what="the API socket")
    owner = (AGENT_USER.pw_uid, AGENT_USER.pw_gid)
    st = os.stat(sock)
    assert ((st.st_uid, st.st_gid), st.st_mode & 0o777) == (owner, 0o660)
    for path in (journal, Path(f"{journal}-wal"), Path(f"{journal}-shm")):
        assert (os.stat(path).st_uid, os.stat(path).st_gid) == owner, path
    # a directory the test made is used as it is: not chowned, not opened up
    st = os.stat(agent.tmp)
    assert ((st.st_uid, st.st_gid), st.st_mode & 0o777) == (owner, 0o700)
    # the unprivileged side keeps writing it: an alert journaled after the drop
    assert _safe_journaled(sock)
    assert agent.stop() == 0


def test_directories_the_agent_makes_are_the_unprivileged_users(agents: list[Agent]) -> None:
    work = workdir()
    journal, sock = work / "state" / "journal.db", work / "run" / "api.sock"
    agent = Agent("--socket", str(sock), "--journal", str(journal), "--quiet")
    agents.append(agent)
    wait_until(lambda: sock.exists() and _safe_journaled(sock), what="the API")
    owner = (AGENT_USER.pw_uid, AGENT_USER.pw_gid)
    for directory, mode in ((journal.parent, 0o700), (sock.parent, 0o755)):  # alerts are private; the
        st = os.stat(directory)  # socket's own mode (0660) guards the API
        assert ((st.st_uid, st.st_gid), st.st_mode & 0o7777) == (owner, mode), directory
    assert (os.stat(journal).st_uid, os.stat(journal).st_gid) == owner
    assert agent.stop() == 0


def test_a_directory_the_agent_user_cannot_use_is_refused_before_anything_starts(root: None,
                                                                                tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "sensor", "run", "--no-view", "--socket",
                             str(tmp_path / "api.sock"), "--journal", str(tmp_path / "journal.db")],
                            capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"gpusentry: error: the aggregator runs as gpusentry and cannot write in {tmp_path}; fix: give --journal "
        "and --socket paths in a directory gpusentry may write (the defaults are made for it), or --user root"]
    assert os.stat(tmp_path).st_uid == 0  # and nothing was chowned


# -- no half-alive agent ---------------------------------------------------------------------


def _status(sock: Path) -> Any:
    from sensor.api.v1 import gpusentry_pb2 as pb

    return _api(sock).GetStatus(pb.GetStatusRequest())  # type: ignore[attr-defined]


def _gaps(sock: Path) -> list[Any]:
    from sensor.api.v1 import gpusentry_pb2 as pb

    return list(_api(sock).ListAlerts(pb.ListAlertsRequest(page_size=1000)).sensor_gaps)  # type: ignore[attr-defined]


def test_kill_9_of_the_probe_stops_the_rest_within_a_second_and_journals_the_blind_time(
        agents: list[Agent]) -> None:
    from sensor.api.v1 import gpusentry_pb2 as pb

    agent = Agent("--view", "--quiet", json_lines=False)
    agents.append(agent)
    children = wait_until(lambda: (c if "watch" in (c := agent.children()) else {}), what="the live view")
    sock = agent.tmp / "api.sock"
    received: list[Any] = []
    stream = _api(sock).Subscribe(pb.SubscribeRequest(alerts=True))  # type: ignore[attr-defined]

    def read() -> None:
        import grpc

        with contextlib.suppress(grpc.RpcError):
            for response in stream:
                received.append(response)

    threading.Thread(target=read, daemon=True).start()
    wait_until(lambda: received, what="the subscription")
    wait_until(lambda: _status(sock).subscribers == 2, what="the live view subscribed too")
    killed = time.monotonic()
    os.kill(agent.proc.pid, signal.SIGKILL)
    aggregator = psutil_wait(children["aggregate"])  # not waiting for the probe's own end first: the
    view = psutil_wait(children["watch"])  # kernel takes its time to detach a killed probe's programs
    assert max(aggregator, view) - killed < 1.0, (aggregator - killed, view - killed)
    agent.proc.wait(timeout=10)
    cause = f"the probe (pid {agent.proc.pid}) died: its frame stream ended without the probe's final frame"
    wait_until(lambda: any(m.startswith("gpusentry: error: the probe") for m in agent.messages),
               what="the aggregator's last word")
    assert [m for m in agent.messages if m.startswith("gpusentry: error")] == [
        f"gpusentry: error: {cause}; fix: the agent stops; start it again (a supervisor restarts it)"]
    live_gaps = [r.sensor_gap for r in received if r.WhichOneof("item") == "sensor_gap"]
    assert [g.cause for g in live_gaps] == [cause]  # a subscriber saw the blind time begin
    assert live_gaps[0].end.ToNanoseconds() - live_gaps[0].start.ToNanoseconds() < 2_000_000_000
    restarted = Agent("--socket", str(sock), "--journal", str(agent.tmp / "journal.db"), "--quiet")
    agents.append(restarted)
    wait_until(lambda: sock.exists() and _safe_journaled(sock), what="the restarted API")
    assert [g.cause for g in _gaps(sock)] == [cause, f"the agent was not running: {cause}"]
    assert restarted.stop() == 0


def psutil_wait(pid: int, timeout: float = 10.0) -> float:
    """When process `pid` (not our child) is gone."""
    wait_until(lambda: not Path(f"/proc/{pid}").exists() or
               Path(f"/proc/{pid}/stat").read_text().split(")")[1].split()[0] == "Z", timeout, f"pid {pid} to end")
    return time.monotonic()


@pytest.mark.parametrize("victim", ["aggregate", "watch"])
def test_kill_9_of_the_aggregator_or_the_view_stops_the_probe_within_a_second(agents: list[Agent],
                                                                               victim: str) -> None:
    agent = Agent("--view", "--quiet", json_lines=False)
    agents.append(agent)
    children = wait_until(lambda: (c if "watch" in (c := agent.children()) else {}), what="the live view")
    wait_until(lambda: (agent.tmp / "api.sock").exists() and _status(agent.tmp / "api.sock").subscribers == 1,
               what="the live view subscribed")
    killed = time.monotonic()
    os.kill(children[victim], signal.SIGKILL)
    assert agent.proc.wait(timeout=10) == 1  # a runtime failure
    assert time.monotonic() - killed < 1.0
    wait_until(lambda: any(m.startswith("gpusentry: error") for m in agent.messages), what="the agent's last word")
    what = "the aggregator" if victim == "aggregate" else "the live view"
    assert [m for m in agent.messages if m.startswith("gpusentry: error")] == [
        f"gpusentry: error: {what} (pid {children[victim]}) stopped: killed by signal 9 (SIGKILL); fix: "
        + ("see its message above, then start the agent again" if victim == "aggregate" else "start the agent again")]
    for pid in children.values():
        psutil_wait(pid)  # nothing of it is left running blind
    sock = agent.tmp / "api.sock"
    restarted = Agent("--socket", str(sock), "--journal", str(agent.tmp / "journal.db"), "--quiet")
    agents.append(restarted)
    wait_until(lambda: sock.exists() and _safe_journaled(sock), what="the restarted API")
    (gap,) = _gaps(sock)
    if victim == "aggregate":  # it could record nothing: its last heartbeat says when it was last watching
        assert gap.cause.startswith("the agent was not running: it stopped without recording why (killed, or "
                                    "crashed); last seen watching at "), gap.cause
    else:
        assert gap.cause == (f"the agent was not running: the live view (pid {children[victim]}) stopped: "
                             "killed by signal 9 (SIGKILL)")
    assert gap.start.ToNanoseconds() < gap.end.ToNanoseconds() <= time.time_ns()
    assert restarted.stop() == 0


def test_kill_9_of_the_apis_stream_process_stops_the_agent_naming_it(agents: list[Agent]) -> None:
    agent = Agent("--quiet", json_lines=False)
    agents.append(agent)
    sock = agent.tmp / "api.sock"
    wait_until(lambda: sock.exists() and _status(sock).subscribers == 0, what="the API")
    aggregator = agent.aggregator_pid
    (stream,) = [int(pid) for task in Path(f"/proc/{aggregator}/task").iterdir()
                 for pid in (task / "children").read_text().split()
                 if b"sensor.api.stream" in Path(f"/proc/{pid}/cmdline").read_bytes()]
    os.kill(stream, signal.SIGKILL)
    assert agent.proc.wait(timeout=10) == 1  # noticed at the aggregator's next heartbeat
    wait_until(lambda: sum(m.startswith("gpusentry: error") for m in agent.messages) == 2,
               what="the aggregator's and the agent's last words")
    errors = [m for m in agent.messages if m.startswith("gpusentry: error")]
    # the aggregator names it; the agent then says that the aggregator stopped (or that the probe
    # could not write to it, whichever it notices first)
    assert errors[0] == (f"gpusentry: error: the API's stream process stopped (pid {stream}, killed by signal 9); "
                         "fix: the agent stops; start it again (a supervisor restarts it)"), errors
    psutil_wait(aggregator)


def test_what_the_aggregator_starts_is_the_agent_s_own_and_never_reported(agents: list[Agent]) -> None:
    """The API's stream process, started by the aggregator after the probe attached, makes no
    events: the kernel excludes the aggregator with all it starts. A process of the test's own
    is seen, so the table is up to date when the stream process is looked up."""
    agent = Agent("--quiet", json_lines=False)
    agents.append(agent)
    sock = agent.tmp / "api.sock"
    wait_until(lambda: sock.exists() and _status(sock).subscribers == 0, what="the API")
    (stream,) = [int(pid) for task in Path(f"/proc/{agent.aggregator_pid}/task").iterdir()
                 for pid in (task / "children").read_text().split()
                 if b"sensor.api.stream" in Path(f"/proc/{pid}/cmdline").read_bytes()]
    stub = _api(sock)
    with subprocess.Popen(["sleep", "30"]) as ours:
        try:
            wait_until(lambda: _known(stub, ours.pid), what="the test's own process in the agent's table")
        finally:
            ours.kill()
    assert not _known(stub, stream)
    assert not _known(stub, agent.aggregator_pid)


def _known(stub: Any, pid: int) -> bool:
    import grpc

    from sensor.api.v1 import gpusentry_pb2 as pb

    try:
        stub.GetProcess(pb.GetProcessRequest(pid=pid))
    except grpc.RpcError as exc:
        if exc.code() == grpc.StatusCode.NOT_FOUND:
            return False
        raise
    return True


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


def test_sighup_reloads_rules_and_keeps_them_when_the_new_file_is_invalid(agents: list[Agent]) -> None:
    rules = workdir() / "site.yaml"
    rules.write_text(MARKER_RULE.format(rule_id="marker-one", marker="gs-marker-1"))
    agent = Agent("--rules", str(rules))
    agents.append(agent)
    subprocess.run(["/bin/true", "gs-marker-1"], check=True)
    wait_until(lambda: agent.alerts("marker-one"), what="the site rule's alert")

    rules.write_text("rules: [broken\n")
    agent.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: any("rules not reloaded" in m for m in agent.messages), what="the refused reload")
    assert any(f"keeping the current 14 rules: invalid rules: {rules}:2: not valid YAML" in m
               for m in agent.messages), agent.messages
    subprocess.run(["/bin/true", "gs-marker-1"], check=True)
    wait_until(lambda: len(agent.alerts("marker-one")) == 2, what="the kept rule still firing")

    rules.write_text(MARKER_RULE.format(rule_id="marker-two", marker="gs-marker-2"))
    agent.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: any(m.startswith("gpusentry: rules reloaded: 14 rules") for m in agent.messages),
               what="the reload")
    subprocess.run(["/bin/true", "gs-marker-2"], check=True)
    wait_until(lambda: agent.alerts("marker-two"), what="the new rule's alert")
    assert agent.stop() == 0


SEQUENCE_RULE = """rules:
  - id: marker-sequence
    title: Two markers in order
    description: An exec with the first marker, then one with the second, in the same lineage.
    severity: high
    sequence:
      scope: host
      window: 10m
      steps:
        - {fact: exec, where: {argv: gs-first-marker}}
        - {fact: exec, where: {argv: gs-second-marker}}
"""


def test_a_sequence_split_across_a_reload_still_raises_its_alert(agents: list[Agent]) -> None:
    """The first step, a SIGHUP reload of the very same rules, the second step: the open partial
    match survives the reload (it used to be thrown away, uncounted)."""
    rules = workdir() / "site.yaml"
    rules.write_text(SEQUENCE_RULE)
    agent = Agent("--rules", str(rules))
    agents.append(agent)
    subprocess.run(["/bin/true", "gs-first-marker"], check=True)
    wait_until(lambda: agent.event("exec", argv=["/bin/true", "gs-first-marker"]), what="the first step")
    agent.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: any(m.startswith("gpusentry: rules reloaded") for m in agent.messages), what="the reload")
    subprocess.run(["/bin/true", "gs-second-marker"], check=True)
    (alert,) = wait_until(lambda: agent.alerts("marker-sequence"), what="the sequence's alert")
    steps: list[dict[str, Any]] = alert["steps"]
    assert [step["fact"] for step in steps] == ["exec", "exec"]
    assert agent.stop() == 0


def test_rules_check_lists_every_problem(tmp_path: Path) -> None:
    good, bad = tmp_path / "good.yaml", tmp_path / "bad.yaml"
    good.write_text(MARKER_RULE.format(rule_id="fine", marker="x"))
    bad.write_text("rules:\n  - id: one\n    title: T\n    description: D\n    severity: loud\n"
                   "    match: {fact: exec}\n  - id: two\n    title: T\n    description: D\n    severity: low\n"
                   "    match: {fact: exec, where: {cmdline: {regex: 'x(?=y)'}}}\n")
    ok = subprocess.run([sys.executable, "-m", "sensor", "rules", "check", str(good)], capture_output=True,
                        text=True, cwd=ROOT)
    assert (ok.returncode, ok.stdout.splitlines()[-1]) == (0, "ok: 14 rules (0 disabled) in 2 file(s)")
    assert f"  fine: enabled, low, {good}:2; facts: exec; can fire" in ok.stdout.splitlines()
    checked = subprocess.run([sys.executable, "-m", "sensor", "rules", "check", str(good), str(bad)],
                             capture_output=True, text=True, cwd=ROOT)
    assert checked.returncode == 1
    assert checked.stdout.splitlines() == [
        f"{bad}:5: rule one: `severity` is one of info, low, medium, high, critical",
        f"{bad}:11: rule two: cmdline: `regex` 'x(?=y)' uses a construct RE2 (the linear-time engine rules use) "
        "does not support: invalid perl operator: (?=; refused: backreferences, lookahead and lookbehind, atomic "
        "groups and possessive repeats, conditionals, repeat counts over 1000",
        "2 problem(s)",
    ]


def _api(socket: Path) -> object:
    import grpc

    from sensor.api.client import sensor_stub

    return sensor_stub(grpc.insecure_channel(f"unix:{socket}"))


def _journaled(socket: Path) -> list[int]:
    from sensor.api.v1 import gpusentry_pb2 as pb

    return [a.cursor for a in _api(socket).ListAlerts(pb.ListAlertsRequest(page_size=1000)).alerts]  # type: ignore[attr-defined]


def test_kill_9_of_the_journal_writer_mid_stream_loses_no_alert_it_published(agents: list[Agent]) -> None:
    """The aggregator (which writes the journal) is killed while alerts stream out, not after a
    clean end of input: every alert a subscriber received is in the journal, whole."""
    import sqlite3

    from sensor.api.v1 import gpusentry_pb2 as pb

    work = workdir()
    rules, socket, journal = work / "site.yaml", work / "api.sock", work / "journal.db"
    rules.write_text(MARKER_RULE.format(rule_id="marker", marker="gs-kill-marker"))
    flags = ("--rules", str(rules), "--socket", str(socket), "--journal", str(journal), "--quiet")
    agent = Agent(*flags)
    agents.append(agent)
    wait_until(socket.exists, what="the API socket")
    seen: list[int] = []
    stream = _api(socket).Subscribe(pb.SubscribeRequest(alerts=True))  # type: ignore[attr-defined]

    def read() -> None:
        import grpc

        with contextlib.suppress(grpc.RpcError):  # the stream ends when the aggregator is killed
            for response in stream:
                if response.WhichOneof("item") == "alert":
                    seen.append(response.alert.cursor)

    threading.Thread(target=read, daemon=True).start()
    storm = subprocess.Popen(["/bin/sh", "-c", "while true; do /bin/true gs-kill-marker; done"])
    try:
        wait_until(lambda: len(seen) >= 20, timeout=30, what="alerts streaming")
        os.kill(agent.aggregator_pid, signal.SIGKILL)  # the journal writer, mid-stream
        assert agent.proc.wait(timeout=10) == 1  # and the probe notices and stops: a runtime failure
    finally:
        storm.kill()
        storm.wait()
    received = list(seen)
    check = sqlite3.connect(journal)
    assert check.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    check.close()
    restarted = Agent(*flags)
    agents.append(restarted)
    wait_until(lambda: socket.exists() and _safe_journaled(socket), what="the restarted API")
    alerts = _alerts(socket)
    journaled = [a.cursor for a in alerts]
    assert set(received) <= set(journaled)  # every alert a client saw was committed first
    assert journaled == sorted(journaled) and len(journaled) == len(set(journaled))
    # whole rows only: each one a complete alert of the rule, with its step and process
    assert {(a.rule_id, len(a.steps), a.steps[0].fact, len(a.processes)) for a in alerts} == {("marker", 1, "exec", 1)}
    (gap,) = _gaps(socket)  # the blind time since the kill, recorded at the restart
    assert gap.cursor > max(journaled)
    subprocess.run(["/bin/true", "gs-kill-marker"], check=True)
    wait_until(lambda: max(_journaled(socket)) > gap.cursor, what="a new alert")
    assert max(_journaled(socket)) == gap.cursor + 1  # cursors continue, never reused
    assert restarted.stop() == 0


def _alerts(socket: Path) -> list[Any]:
    from sensor.api.v1 import gpusentry_pb2 as pb

    return list(_api(socket).ListAlerts(pb.ListAlertsRequest(page_size=1000)).alerts)  # type: ignore[attr-defined]


def _safe_journaled(socket: Path) -> bool:
    try:
        _journaled(socket)
    except Exception:
        return False
    return True


def test_graceful_restart_keeps_the_journal_and_the_socket_group(agents: list[Agent]) -> None:
    import grp

    work = workdir()
    rules, socket, journal = work / "site.yaml", work / "api.sock", work / "journal.db"
    rules.write_text(MARKER_RULE.format(rule_id="marker", marker="gs-restart-marker"))
    flags = ("--rules", str(rules), "--socket", str(socket), "--journal", str(journal), "--quiet",
             "--socket-group", "daemon")
    first = Agent(*flags)
    agents.append(first)
    wait_until(socket.exists, what="the API socket")
    assert (os.stat(socket).st_mode & 0o777, os.stat(socket).st_gid) == (0o660, grp.getgrnam("daemon").gr_gid)
    subprocess.run(["/bin/true", "gs-restart-marker"], check=True)
    wait_until(lambda: _journaled(socket) == [1], what="the first alert")
    assert first.stop() == 0
    second = Agent(*flags)
    agents.append(second)
    wait_until(lambda: socket.exists() and _safe_journaled(socket) and _journaled(socket) == [1],
               what="the journal after a restart")
    (gap,) = _gaps(socket)  # the time between the runs was blind, and the journal says why
    assert (gap.cursor, gap.cause) == (3, "the agent was not running: stopped by SIGINT")  # after alert 1, incident 2
    subprocess.run(["/bin/true", "gs-restart-marker"], check=True)
    wait_until(lambda: _journaled(socket) == [1, 4], what="the next cursor")  # after the gap (3)
    assert second.stop() == 0


def test_a_damaged_journal_stops_the_agent_and_is_left_as_it_was(root: None) -> None:
    work = workdir()
    journal = work / "journal.db"
    journal.write_bytes(b"this is not a SQLite database " * 200)
    before = journal.read_bytes()
    result = subprocess.run([sys.executable, "-m", "sensor", "run", "--journal", str(journal), "--socket",
                             str(work / "s.sock")], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"gpusentry: error: cannot use {journal} as the alert journal: file is not a database; fix: move the file "
        "aside (it is left untouched) and start again; a new journal is created"]
    assert journal.read_bytes() == before
    assert os.stat(journal).st_uid == 0  # not even chowned


def test_a_second_agent_on_the_same_socket_stops_before_starting(agents: list[Agent]) -> None:
    work = workdir()
    socket = work / "api.sock"
    first = Agent("--socket", str(socket), "--journal", str(work / "one.db"), "--quiet")
    agents.append(first)
    wait_until(socket.exists, what="the first agent's socket")
    second = subprocess.run([sys.executable, "-m", "sensor", "run", "--no-view", "--socket", str(socket),
                             "--journal", str(work / "two.db")], capture_output=True, text=True, cwd=ROOT,
                            timeout=60)
    assert second.returncode == 2
    assert second.stderr.splitlines() == [
        f"gpusentry: error: another gpusentry agent is already serving the API at {socket}; fix: stop it "
        "first, or give --socket another path"]
    assert first.proc.poll() is None and _safe_journaled(socket)  # the first one still serves
    assert first.stop() == 0
