"""Recording the real probe's stream and analysing it offline gives the live state."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from sensor import events as ev
from sensor.aggregator.aggregator import Aggregator
from sensor.capture import FrameWriter, StreamMeta, open_capture
from sensor.probe.probe import Probe
from sensor.probe.program import ProbeConfig
from tests.kernel.conftest import Collector, run_python
from tests.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]


class Tee:
    def __init__(self, *sinks: Any) -> None:
        self.sinks = sinks

    def write_payloads(self, payloads: Iterable[bytes]) -> None:
        batch = list(payloads)
        for sink in self.sinks:
            sink.write_payloads(batch)


def state(aggregator: Aggregator) -> dict[str, Any]:
    """Everything the aggregator knows, in a comparable form."""
    processes = sorted(
        (p.key, p.parent, p.exe, tuple(p.argv), p.argc, p.execs, p.inherited, p.exited_ts, p.exit_code,
         p.uid, p.cgroup_id, tuple(sorted(p.children)))
        for p in aggregator.table)
    counters = aggregator.counters
    return {"processes": processes, "events": dict(counters.events), "unknown": counters.unknown_process,
            "kernel_drops": counters.kernel_drops, "table": aggregator.table.stats.__dict__}


WORKLOAD = """
import os, socket, subprocess
subprocess.run(['/bin/true', 'recorded', b'\\xff'])
pid = os.fork()
if pid == 0:
    os._exit(5)
os.waitpid(pid, 0)
s = socket.socket()
try:
    s.connect(('127.0.0.1', 1))
except OSError:
    pass
print(os.getpid())
"""


def test_record_then_analyze_equals_live(root: None, tmp_path: Path) -> None:
    capture = tmp_path / "live.gscap"
    live = Collector(Aggregator())
    with capture.open("wb") as out:
        writer = FrameWriter(out, StreamMeta(config=ProbeConfig().to_dict()))
        probe = Probe(ProbeConfig(), Tee(live, writer))
        probe.start()
        try:
            helper = run_python(WORKLOAD)
            pid = int(helper.stdout)
            live.wait_for(lambda e: isinstance(e, ev.Exit) and e.tgid == pid)
        finally:
            probe.stop()
    src, reader = open_capture(str(capture))
    offline = Aggregator()
    with src:
        for event in reader:
            offline.handle(event)
    assert state(offline) == state(live.aggregator)
    helper_proc = offline.table.by_pid(pid)
    assert helper_proc is not None and helper_proc.exe == b"/usr/bin/python3"
    assert any(p.argv == [b"/bin/true", b"recorded", b"\xff"] for p in offline.table)


def test_record_and_analyze_commands(root: None, tmp_path: Path) -> None:
    capture = tmp_path / "cli.gscap"
    recorder = subprocess.Popen([sys.executable, "-m", "sensor", "record", "-w", str(capture)],
                                stderr=subprocess.PIPE, text=True, cwd=ROOT)
    stderr = recorder.stderr
    assert stderr is not None
    marker = "cli-capture-marker"

    def recorded() -> bool:
        result = subprocess.run([sys.executable, "-m", "sensor", "analyze", "--json", "--events", str(capture)],
                                capture_output=True, text=True, cwd=ROOT)
        return marker in result.stdout

    try:
        wait_until(lambda: "recording to" in stderr.readline(), timeout=30, what="recorder start")
        subprocess.run(["/bin/true", marker], check=True)
        wait_until(recorded, timeout=20, what="the exec in the capture")
        recorder.terminate()
        assert recorder.wait(timeout=20) == 0
    finally:
        if recorder.poll() is None:
            recorder.kill()
            recorder.wait()
    result = subprocess.run([sys.executable, "-m", "sensor", "analyze", "--json", "--events", str(capture)],
                            capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0
    records = [json.loads(line) for line in result.stdout.splitlines()]  # stdout: JSON lines only
    execs = [r["event"]["exec"] for r in records if r["type"] == "event" and r["event"]["kind"] == "EVENT_KIND_EXEC"]
    assert ["/bin/true", marker] in [e["argv"] for e in execs]
    assert {r["host"]["hostname"] for r in records} == {socket.gethostname()}
    assert "drops: none" in result.stderr
    assert "capture: complete (it ends with the probe's End)" in result.stderr  # SIGTERM is a stop on purpose

    # The same file cut short fails with the offset of the broken frame.
    data = capture.read_bytes()
    cut = tmp_path / "cut.gscap"
    cut.write_bytes(data[:-3])
    broken = subprocess.run([sys.executable, "-m", "sensor", "analyze", str(cut)],
                            capture_output=True, text=True, cwd=ROOT)
    assert broken.returncode == 2
    assert f"{cut}: truncated frame" in broken.stderr and "at byte " in broken.stderr
