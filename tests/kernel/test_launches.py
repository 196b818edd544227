"""Launch watches in the real kernel: the libcuda uprobes attached by the probe to one process
on request, exact counts, the pid filter, the detaches (exit, hit budget, duration) and the
refusals, and end to end: a process in a tunnel's scope that uses a GPU gets its launch facts.

The real libcuda is not on these machines: a stand-in with the same entry points
(helpers/libcuda/fake_libcuda.c) is built as libcuda.so.1, and helpers/launch_client.c loads
it and launches through it as a CUDA program would.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from sensor import events as ev
from sensor.aggregator.aggregator import Aggregator
from sensor.aggregator.facts import GpuLaunches
from sensor.aggregator.launches import pipe_sender
from sensor.api.client import sensor_stub
from sensor.api.v1 import gpusentry_pb2 as pb
from sensor.probe.elfsym import function_offsets
from sensor.probe.launches import FUNCS_MAX, REQUEST, LaunchWatcher
from sensor.probe.probe import Probe
from sensor.probe.program import ProbeConfig
from sensor.rules.loader import load_rules
from tests.kernel.conftest import HELPERS, Collector
from tests.kernel.test_agent import Agent
from tests.waiting import wait_until

LIBCUDA_SOURCE = HELPERS / "libcuda" / "fake_libcuda.c"
ROOT = Path(__file__).resolve().parents[2]
INT3 = 0xCC  # the breakpoint a uprobe plants (x86_64)
RULE = """rules:
  - id: tunnel-scoped-launches
    title: Kernel launches in a tunnel's scope
    description: A process in a reverse tunnel's scope launches GPU kernels.
    severity: high
    match:
      fact: gpu_launches
      where: {process.tunnel_scoped: true, distinct_kernels: {range: [1, 16]}}
"""


def build_fake_libcuda(directory: Path) -> Path:
    """The stand-in libcuda, built as DIRECTORY/libcuda.so.1."""
    library = directory / "libcuda.so.1"
    subprocess.run(["gcc", "-O1", "-Wall", "-shared", "-fPIC", "-o", str(library), str(LIBCUDA_SOURCE)], check=True)
    return library


@dataclasses.dataclass
class Watching:
    probe: Probe
    collector: Collector
    asking: int  # the write end of the probe's request pipe (the aggregator's, in the agent)
    library: Path

    @property
    def watcher(self) -> LaunchWatcher:
        assert self.probe.launches is not None
        return self.probe.launches

    def ask(self, pid: int, start_ns: int) -> None:
        os.write(self.asking, REQUEST.pack(pid, start_ns))

    def frames(self, kind: type[ev.Event], pid: int) -> list[ev.Event]:
        return self.collector.events(kind, tgid=pid)

    def watch_state(self, pid: int, state: str, timeout: float = 10) -> ev.LaunchWatch:
        def found() -> list[ev.LaunchWatch]:
            return [e for e in self.frames(ev.LaunchWatch, pid) if isinstance(e, ev.LaunchWatch) and e.state == state]
        return wait_until(found, timeout, f"launch watch of {pid} {state}")[0]

    def counted(self, pid: int, launches: int, timeout: float = 10) -> ev.LaunchCounts:
        def found() -> list[ev.LaunchCounts]:
            return [e for e in self.frames(ev.LaunchCounts, pid)
                    if isinstance(e, ev.LaunchCounts) and e.launches + e.launches_ex >= launches]
        return wait_until(found, timeout, f"{launches} launches of {pid} counted")[0]


@pytest.fixture(scope="module")
def watching(root: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Watching]:
    """A probe that serves launch-watch requests, feeding an aggregator that asks for them on the
    same pipe, as in the agent (sensor/agent.py)."""
    library = build_fake_libcuda(tmp_path_factory.mktemp("libcuda"))
    requests, asking = os.pipe()
    collector = Collector(Aggregator(rules=load_rules([]), launch_requests=pipe_sender(os.dup(asking))))
    probe = Probe(ProbeConfig(), collector, launch_requests=requests)
    probe.start()
    try:
        yield Watching(probe, collector, asking, library)
    finally:
        probe.stop()
        os.close(asking)


class Client:
    """helpers/launch_client, driven line by line."""

    def __init__(self, command: list[str], env: dict[str, str] | None = None, executable: str | None = None) -> None:
        self.proc = subprocess.Popen(command, executable=executable, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, bufsize=1, env=env)
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.stdin, self.stdout = self.proc.stdin, self.proc.stdout
        ready = self.stdout.readline().split()
        assert ready == ["ready", str(self.proc.pid)], ready
        self.pid = self.proc.pid
        self.start_ns = start_ns(self.pid)

    def say(self, line: str) -> str:
        self.stdin.write(line + "\n")
        return self.stdout.readline().strip()

    def launch(self, n: int, k: int, ex: int = 0) -> None:
        assert self.say(f"launch {n} {k} {ex}") == f"done {n}"

    def close(self) -> None:
        self.stdin.close()
        assert self.proc.wait(timeout=10) == 0


def start_ns(pid: int) -> int:
    """The start time as the process table has it for a /proc process (to the tick)."""
    raw = Path(f"/proc/{pid}/stat").read_bytes()
    return int(raw[raw.rfind(b")") + 2:].split()[19]) * ev.NS_PER_TICK


@pytest.fixture
def client(watching: Watching, helpers: Path) -> Iterator[Client]:
    made = Client([str(helpers / "launch_client"), str(watching.library)])
    yield made
    if made.proc.poll() is None:
        made.proc.kill()
        made.proc.wait()


def new_client(watching: Watching, helpers: Path) -> Client:
    return Client([str(helpers / "launch_client"), str(watching.library)])


def file_byte(library: Path, symbol: str = "cuLaunchKernel") -> int:
    """The first byte of `symbol` in the library's file."""
    with library.open("rb") as file:
        file.seek(function_offsets(file, [symbol])[symbol])
        return file.read(1)[0]


def entry_byte(pid: int, library: Path, symbol: str = "cuLaunchKernel") -> int:
    """The first byte of `symbol` in the process's memory: INT3 where a uprobe is planted."""
    with library.open("rb") as file:
        offset = function_offsets(file, [symbol])[symbol]
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        parts = line.split(maxsplit=5)
        if len(parts) < 6 or parts[5] != str(library):
            continue
        start, end = (int(x, 16) for x in parts[0].split("-"))
        mapped_at = int(parts[2], 16)
        if mapped_at <= offset < mapped_at + end - start:
            with open(f"/proc/{pid}/mem", "rb") as mem:
                mem.seek(start + offset - mapped_at)
                return mem.read(1)[0]
    raise AssertionError(f"{symbol} is not mapped in {pid}")


def detached(pid: int, library: Path) -> None:
    """Wait for the uprobe's breakpoint to leave the process (the probe detaches in the background)."""
    original = file_byte(library)
    wait_until(lambda: entry_byte(pid, library) == original, 10, f"the uprobe removed from {pid}")


def kernel_entry(watching: Watching, pid: int) -> bytes | None:
    return watching.watcher.counts.lookup(pid.to_bytes(4, "little"))


def test_a_watched_process_launches_are_counted_exactly(watching: Watching, client: Client) -> None:
    watching.ask(client.pid, client.start_ns)
    began = watching.watch_state(client.pid, "watching")
    assert (began.start_ns, began.library) == (client.start_ns, str(watching.library))
    client.launch(1000, 7, ex=300)
    counts = watching.counted(client.pid, 1000)
    assert (counts.launches, counts.launches_ex, counts.distinct, counts.unrecorded) == (700, 300, 7, 0)
    assert counts.since_ns == began.ts
    client.launch(500, 9)  # two functions more
    counts = watching.counted(client.pid, 1500)
    assert (counts.launches, counts.launches_ex, counts.distinct, counts.unrecorded) == (1200, 300, 9, 0)
    client.close()
    ended = watching.watch_state(client.pid, "ended")
    assert ended.reason == "exit"
    assert kernel_entry(watching, client.pid) is None
    recorded = list(watching.watcher.funcs.keys())
    assert not [key for key in recorded if int.from_bytes(key[:4], "little") == client.pid]


def test_another_process_calling_the_same_library_is_not_counted(watching: Watching, helpers: Path) -> None:
    watched, other = new_client(watching, helpers), new_client(watching, helpers)
    try:
        watching.ask(watched.pid, watched.start_ns)
        watching.watch_state(watched.pid, "watching")
        other.launch(400, 3)
        watched.launch(100, 2)
        other.launch(400, 3)
        counts = watching.counted(watched.pid, 100)
        assert (counts.launches, counts.distinct) == (100, 2)
        # the breakpoint is in the watched process's copy of the library only
        assert entry_byte(watched.pid, watching.library) == INT3
        assert entry_byte(other.pid, watching.library) == file_byte(watching.library)
        watched.close()
        watching.watch_state(watched.pid, "ended")
        assert [e for e in watching.frames(ev.LaunchCounts, watched.pid)
                if isinstance(e, ev.LaunchCounts)][-1].launches == 100
        assert watching.frames(ev.LaunchCounts, other.pid) == []
        assert kernel_entry(watching, other.pid) is None
    finally:
        other.close()


def test_distinct_kernels_are_capped_per_process_and_the_rest_counted(watching: Watching, client: Client) -> None:
    watching.ask(client.pid, client.start_ns)
    watching.watch_state(client.pid, "watching")
    client.launch(600, FUNCS_MAX + 44)  # round robin: 44 functions past the cap, launched twice each
    counts = watching.counted(client.pid, 600)
    assert (counts.launches, counts.distinct, counts.unrecorded) == (600, FUNCS_MAX, 88)


def test_its_threads_are_counted_and_its_forked_children_are_not(watching: Watching, client: Client) -> None:
    """A process's threads share its memory, where the breakpoint is: counted. A child forked after
    the watch began is another process: the kernel takes the breakpoint out of its copy at its
    first hit, and nothing is counted for it."""
    watching.ask(client.pid, client.start_ns)
    watching.watch_state(client.pid, "watching")
    client.launch(100, 2)
    assert client.say("thread 300 3") == "done 300"
    assert client.say("fork 500 5") == "done 500"
    client.launch(100, 2)
    counts = watching.counted(client.pid, 500)
    assert (counts.launches, counts.distinct) == (500, 3)
    client.close()
    watching.watch_state(client.pid, "ended")
    last = [e for e in watching.frames(ev.LaunchCounts, client.pid) if isinstance(e, ev.LaunchCounts)][-1]
    assert (last.launches, last.distinct) == (500, 3)


def test_a_watch_ends_past_its_hit_budget_and_counts_no_more(watching: Watching, client: Client) -> None:
    budget = watching.watcher.budget
    watching.watcher.budget = dataclasses.replace(budget, hits_per_s=1000)
    try:
        watching.ask(client.pid, client.start_ns)
        watching.watch_state(client.pid, "watching")
        assert entry_byte(client.pid, watching.library) == INT3
        client.launch(20000, 4)
        ended = watching.watch_state(client.pid, "ended")
    finally:
        watching.watcher.budget = budget
    assert ended.reason == "hit budget"
    last = [e for e in watching.frames(ev.LaunchCounts, client.pid) if isinstance(e, ev.LaunchCounts)][-1]
    # the last read is where the budget was passed: the loop may still have been running
    assert 1000 < last.launches <= 20000 and last.distinct == 4
    assert kernel_entry(watching, client.pid) is None
    detached(client.pid, watching.library)  # its calls trap no more
    watching.ask(client.pid, client.start_ns)  # and it is never watched again
    assert watching.watch_state(client.pid, "refused").reason == "watched before"
    assert entry_byte(client.pid, watching.library) == file_byte(watching.library)  # not attached again


def test_a_watch_ends_when_its_time_is_up(watching: Watching, client: Client) -> None:
    budget = watching.watcher.budget
    watching.watcher.budget = dataclasses.replace(budget, duration_s=1.5)
    try:
        watching.ask(client.pid, client.start_ns)
        began = watching.watch_state(client.pid, "watching")
        client.launch(10, 1)
        ended = watching.watch_state(client.pid, "ended")
    finally:
        watching.watcher.budget = budget
    assert ended.reason == "duration"
    assert ended.ts - began.ts >= 1_500_000_000
    assert kernel_entry(watching, client.pid) is None


def test_requests_that_cannot_be_watched_are_refused_with_the_reason(watching: Watching, client: Client) -> None:
    watching.ask(client.pid, client.start_ns + 5 * ev.NS_PER_TICK)  # the PID, another start: not that process
    assert watching.watch_state(client.pid, "refused").reason == "not running"
    plain = subprocess.Popen(["sleep", "30"])
    try:
        wait_until(lambda: Path(f"/proc/{plain.pid}/stat").exists(), 5, "sleep started")
        watching.ask(plain.pid, start_ns(plain.pid))
        assert watching.watch_state(plain.pid, "refused").reason == "no libcuda"
    finally:
        plain.kill()
        plain.wait()
    budget = watching.watcher.budget
    watching.watcher.budget = dataclasses.replace(budget, watched=0)
    try:
        watching.ask(client.pid, client.start_ns)
        refusals = wait_until(lambda: [e for e in watching.frames(ev.LaunchWatch, client.pid)
                                       if isinstance(e, ev.LaunchWatch) and e.reason == "at capacity"], 10,
                              "at capacity")
    finally:
        watching.watcher.budget = budget
    assert refusals[0].state == "refused"
    assert kernel_entry(watching, client.pid) is None


@pytest.fixture
def library_on_fuse(watching: Watching, tmp_path: Path) -> Iterator[Path]:
    """The stand-in libcuda, served by a FUSE filesystem (as a process that wants to stall us would)."""
    mountpoint = tmp_path / "fuse"
    mountpoint.mkdir()
    server = subprocess.Popen([sys.executable, "-m", "tests.kernel.one_file_fuse", str(watching.library),
                               str(mountpoint)], cwd=ROOT, stderr=subprocess.PIPE)
    try:
        wait_until(lambda: os.path.ismount(mountpoint) or server.poll() is not None, 15, "the FUSE mount")
        assert server.poll() is None, server.stderr.read() if server.stderr else ""
        yield mountpoint / watching.library.name
    finally:
        subprocess.run(["fusermount3", "-u", str(mountpoint)], capture_output=True, check=False)
        server.terminate()
        server.wait(timeout=10)


def test_a_library_on_fuse_is_refused(watching: Watching, helpers: Path, library_on_fuse: Path) -> None:
    """Reading it (and the kernel reading its first instruction to plant a breakpoint) would wait
    on whoever serves it: the probe never does."""
    client = Client([str(helpers / "launch_client"), str(library_on_fuse)])
    try:
        watching.ask(client.pid, client.start_ns)
        refused = watching.watch_state(client.pid, "refused")
        assert refused.reason == "library on a stalling filesystem"
        assert kernel_entry(watching, client.pid) is None
    finally:
        client.close()


def test_a_process_in_a_tunnels_scope_using_a_gpu_gets_its_launch_facts(
        watching: Watching, helpers: Path, tmp_path: Path) -> None:
    """End to end: the process's own command line is a reverse tunnel (ssh -R), it opens a file
    named like a GPU device (a GPU session), the aggregator asks, the probe attaches, and its
    launches become gpu_launches facts, which a rule can match."""
    detector = watching.collector.aggregator.detector
    assert detector is not None
    detector.reload(load_rules([_rule_file(tmp_path)]))  # the built-in rules and one on gpu_launches
    ssh = tmp_path / "ssh"
    shutil.copy(helpers / "launch_client", ssh)
    env = {**os.environ, "LAUNCH_LIBRARY": str(watching.library)}
    tunnel = Client(["ssh", "-R", "9000:localhost:22", "root@198.51.100.1"], env=env, executable=str(ssh))
    try:
        (tmp_path / "nvidiactl").write_bytes(b"")
        assert tunnel.say(f"open {tmp_path / 'nvidiactl'}").startswith("opened ")
        began = watching.watch_state(tunnel.pid, "watching")
        assert began.library == str(watching.library)
        tunnel.launch(600, 5, ex=100)
        watching.counted(tunnel.pid, 600)
        tunnel.close()
        watching.watch_state(tunnel.pid, "ended")
    finally:
        if tunnel.proc.poll() is None:
            tunnel.proc.kill()
    observations = wait_until(lambda: [o for o in watching.collector.observations
                                       if any(isinstance(f, GpuLaunches) and f.watch != "watching" for f in o.facts)
                                       and o.event.tgid == tunnel.pid], 10, "the last gpu_launches fact")
    with watching.collector.lock:
        facts = [f for o in watching.collector.observations for f in o.facts
                 if isinstance(f, GpuLaunches) and f.process.pid == tunnel.pid]
        alerts = [a for o in watching.collector.observations for a in o.alerts
                  if a.rule_id == "tunnel-scoped-launches" and a.processes[0].pid == tunnel.pid]
    last = facts[-1]
    assert (last.total_launches, last.distinct_kernels, last.watch) == (600, 5, "exit")
    assert sum(f.launches for f in facts) == 600 and all(f.launches_per_s > 0 for f in facts)
    assert alerts and alerts[0].steps[0].fact == "gpu_launches"
    session = watching.collector.aggregator.launches.sessions[last.process]
    assert (session.reason, session.state, session.why, session.launches) == ("tunnel", "ended", "exit", 600)
    assert observations


def _rule_file(tmp_path: Path) -> Path:
    path = tmp_path / "launches.yaml"
    path.write_text(RULE)
    return path


def test_the_agent_asks_through_its_pipe_and_prints_the_launch_facts(agents: list[Agent], helpers: Path,
                                                                      tmp_path: Path) -> None:
    """`gpusentry run` as the README starts it: the aggregator, as gpusentry, asks on its pipe
    (started through the privilege wrapper), the probe, narrowed to its capabilities, attaches,
    GetProcess shows the watch on the process's GPU session, and the facts are printed."""
    agent = Agent()
    agents.append(agent)
    library = build_fake_libcuda(tmp_path)
    ssh = tmp_path / "ssh"
    shutil.copy(helpers / "launch_client", ssh)
    tunnel = Client(["ssh", "-R", "9000:localhost:22", "root@198.51.100.1"],
                    env={**os.environ, "LAUNCH_LIBRARY": str(library)}, executable=str(ssh))
    try:
        (tmp_path / "nvidiactl").write_bytes(b"")
        assert tunnel.say(f"open {tmp_path / 'nvidiactl'}").startswith("opened ")
        with grpc.insecure_channel(f"unix:{agent.tmp / 'api.sock'}") as channel:
            stub = sensor_stub(channel)

            def watch_state() -> str:
                return str(stub.GetProcess(pb.GetProcessRequest(pid=tunnel.pid)).gpu.launch_watch)
            wait_until(lambda: watch_state() == "watching", 15, "the watch on the agent's GPU session")
            assert entry_byte(tunnel.pid, library) == INT3
            tunnel.launch(300, 3)
    finally:
        tunnel.close()

    def last_fact() -> list[dict[str, object]]:
        return [line["fact"]["gpu_launches"] for line in list(agent.lines) if line["type"] == "fact"
                and line["fact"]["kind"] == "FACT_KIND_GPU_LAUNCHES" and line["fact"]["process"]["pid"] == tunnel.pid
                and line["fact"]["gpu_launches"]["watch"] != "watching"]
    fact = wait_until(last_fact, 15, "the agent's last gpu_launches fact")[0]
    assert (fact["total_launches"], fact["distinct_kernels"], fact["watch"]) == ("300", 3, "exit")
    assert agent.stop() == 0
