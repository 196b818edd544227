"""One thing the probe does after attaching, tried with a given set of capabilities.

    python -m tests.kernel.privilege_checks CAPS CHECK ARGS...

CAPS is a comma-separated list of capability numbers ("" for none): the process keeps only
those (as the probe does, uid 0), then runs CHECK and prints its result as one JSON line.
Run in a process of its own: dropping capabilities cannot be undone.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sensor import events as ev
from sensor import privileges
from sensor.probe.identity import BinaryIdentity
from sensor.probe.routes import Router


def check_exe(pid: str) -> dict[str, Any]:
    """Open /proc/PID/exe, as binary identity does."""
    try:
        os.close(os.open(f"/proc/{pid}/exe", os.O_RDONLY))
    except OSError as exc:
        return {"ok": False, "error": exc.errno}
    return {"ok": True}


def check_content(pid: str, dev: str, ino: str, tool_dir: str) -> dict[str, Any]:
    """Identify the binary process PID runs, with `tool_dir` as the place tools are found."""
    identity = BinaryIdentity(tools=("sleep",), search_path=tool_dir)
    verdict = identity.identify(int(pid), int(dev), int(ino), b"")
    return {"ok": verdict.tool == "sleep", "tool": verdict.tool, "how": verdict.how.value}


def check_netns(pid: str, netns: str, address: str) -> dict[str, Any]:
    """Ask the routing table of process PID's namespace where `address` is."""
    router = Router()
    destination, by_range = router.route(address, int(netns), int(pid))
    router.close()
    return {"ok": not by_range, "destination": destination.value, "by_range": by_range}


def check_kill(pid: str) -> dict[str, Any]:
    try:
        os.kill(int(pid), 0)
    except OSError as exc:
        return {"ok": False, "error": exc.errno}
    return {"ok": True}


class _Sink:
    def __init__(self) -> None:
        self.events: list[ev.Event] = []

    def write_payloads(self, payloads: Any) -> None:
        self.events += [ev.decode(p) for p in payloads]


def check_probe_loop(caps: set[int]) -> dict[str, Any]:
    """The real probe: attached with full privileges, then narrowed to `caps`; its polling
    loop, map reads and deletes, filter updates and final cleanup must all still work."""
    from sensor.probe.probe import Probe
    from sensor.probe.program import ProbeConfig

    sink = _Sink()
    probe = Probe(ProbeConfig(), sink)
    probe.start()
    privileges.keep_only(caps)
    marker = f"gs-priv-{os.getpid()}"
    child = subprocess.run(["/bin/true", marker], check=True)
    assert child.returncode == 0
    probe.exclude([os.getppid()])  # a map update, after the drop
    deadline = time.monotonic() + 10
    seen: list[ev.Exec] = []
    while time.monotonic() < deadline and not seen:
        seen = [e for e in list(sink.events) if isinstance(e, ev.Exec) and marker.encode() in e.argv]
        time.sleep(0.02)
    drops = probe.kernel_drops()  # per-CPU array reads
    counters = probe.gpu_counters()  # per-CPU hash walk
    probe.stop("check done")
    ends = [e for e in sink.events if isinstance(e, ev.End)]
    return {"ok": bool(seen) and len(ends) == 1, "exec_seen": bool(seen),
            "identity": seen[0].identity if seen else "", "drops_read": sorted(drops) != [],
            "gpu_overflow": counters.overflow, "end": ends[0].reason if ends else ""}


def main(argv: list[str]) -> int:
    caps = {int(c) for c in argv[0].split(",") if c}
    check, args = argv[1], argv[2:]
    if check == "probe":
        result = check_probe_loop(caps)
    else:
        privileges.keep_only(caps)
        checks: dict[str, Callable[..., dict[str, Any]]] = {
            "exe": check_exe, "content": check_content, "netns": check_netns, "kill": check_kill}
        result = checks[check](*args)
    status = privileges.ProcStatus.read("self")
    result["cap_eff"] = status.cap_eff
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    sys.exit(main(sys.argv[1:]))
