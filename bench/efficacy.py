"""Detection measured like performance: a labelled corpus of attacks and benign controls, run end
to end against the real agent; per variant, whether it was caught, how severely, by which rules
and how fast, and the true and false positive rates over the corpus.

The agent is `gpusentry run` (probe, aggregator, API: the README's command), started once; an
API subscriber takes every alert and notes when it arrived. The variants (bench/efficacy_corpus.py)
act one after another in one pair of network namespaces with real OpenSSH (sensor/simulate/network.py)
and the fake GPU driver. Each variant has a scope of its own, so that it is judged only by the
alerts about it (other work on the host raises its own): a cgroup, which every process it starts
enters, and killed whole when it ends (ssh -f included); an alert is the variant's when one of
its processes is in that cgroup. Its gpuhost steps run in fresh logins through gpuhost's sshd,
each its own lineage, as an AI agent's shell would be.

Timing: the time from the decisive event (the kernel timestamp, CLOCK_BOOTTIME, of the last fact
in the alert's chain: the one that completed it) to the alert's arrival at the subscriber, read
on the same clock. Waiting: after a variant's last step, an exec of a marker in its scope, seen
coming back from the agent, says the agent has read everything before it; then a positive waits
for a counting alert (--timeout), and a negative is watched for a fixed window (--window): "no
alert" means none in that window.

    .venv/bin/python -m bench.efficacy [--only NAME ...] [--rounds 1] [--window 3] [--timeout 5] [--json]

With --rounds N the corpus runs N times over (round after round, same agent and network), and
each variant's verdicts and times are summed up: median [min-max].

Needs root.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pwd
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import grpc

from bench.efficacy_corpus import SEVERITIES, VARIANTS, Step, Variant
from bench.figures import spread
from sensor.api.client import sensor_stub
from sensor.api.v1 import gpusentry_pb2 as pb
from sensor.fakegpu.session import fake_driver
from sensor.simulate.network import OUTSIDE_IP, SSH, Network, network

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures" / "gpu"
PYTHON = sys.executable
FIRST_PORT = 9100  # each variant forwards its own port: 9100, 9101, ...
STEP_TIMEOUT = 90.0
# this process forks (ssh, sshd's children, the agent) while its subscription's threads run
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

# Shell functions every step has (see bench/efficacy_corpus.py).
PRELUDE = """set -e
wait_for() {
  tries=0
  until "$@" >/dev/null 2>&1; do
    tries=$((tries + 1)); [ $tries -le 400 ] || { echo "wait_for: $* never succeeded" >&2; return 1; }
    sleep 0.05
  done
}
ready() {
  out=$(mktemp); "$@" >"$out" 2>&1 &
  wait_for grep -qx ready "$out" || { echo "ready: $* never said ready: $(tail -n 3 "$out")" >&2; return 1; }
}
"""

T = TypeVar("T")


def poll_until(found: Callable[[], T], timeout: float, what: str) -> T:
    """`found()` once it is true, checked every 50 ms; RuntimeError naming `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while not (value := found()):
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:g} s waiting for {what}")
        threading.Event().wait(0.05)
    return value


def boot_ns() -> int:
    """Now on the kernel's event clock (bpf_ktime_get_boot_ns)."""
    return time.clock_gettime_ns(time.CLOCK_BOOTTIME)


# -- the result of one variant --------------------------------------------------------------


@dataclass
class Result:
    name: str
    label: str
    expected: str  # what counts: "rule-a|rule-b >= critical" (positives), "< high" (negatives)
    verdict: str  # TP, FN (positives), TN, FP (negatives), skipped, error
    detected: bool = False  # positives: a counting alert arrived; negatives: an alert at the FP severity
    severity: str = ""  # the highest severity raised in the variant's scope ("" for none)
    rules: list[str] = field(default_factory=list)  # every rule raised in its scope, sorted
    latency_ms: float | None = None  # decisive event -> the first counting alert at the subscriber
    decisive: str = ""  # the fact that completed the counting alert's chain
    reason: str = ""  # why skipped or errored
    note: str = ""


def expected(variant: Variant) -> str:
    if variant.label == "negative":
        return f"< {variant.severity}"
    return f"{'|'.join(variant.rules)} >= {variant.severity}"


def judge(variant: Variant, alerts: list[tuple[int, pb.Alert]]) -> Result:
    """The verdict from the alerts in the variant's scope, each with its arrival (boot ns)."""
    names = [pb.Severity.Name(a.severity).removeprefix("SEVERITY_").lower() for _, a in alerts]
    highest = max(names, key=SEVERITIES.index, default="")
    at_least = SEVERITIES.index(variant.severity)
    rules = sorted({a.rule_id for _, a in alerts})
    if variant.label == "negative":
        flagged = any(SEVERITIES.index(n) >= at_least for n in names)
        return Result(variant.name, variant.label, expected(variant), "FP" if flagged else "TN", flagged,
                      highest, rules, note=variant.note)
    counting = [(arrived, a) for (arrived, a), n in zip(alerts, names, strict=True)
                if a.rule_id in variant.rules and SEVERITIES.index(n) >= at_least]
    result = Result(variant.name, variant.label, expected(variant), "TP" if counting else "FN", bool(counting),
                    highest, rules, note=variant.note)
    if counting:
        arrived, first = counting[0]
        last = max(first.steps, key=lambda s: s.detail.ts)
        result.latency_ms = (arrived - last.detail.ts) / 1e6
        result.decisive = last.fact
    return result


# -- the agent and its subscriber ------------------------------------------------------------


class Agent:
    """`gpusentry run` with the built-in rules only, its socket and journal in `workdir`."""

    def __init__(self, workdir: Path) -> None:
        self.socket = workdir / "api.sock"
        config = workdir / "config.yaml"
        config.write_text("{}\n")  # never the host's /etc/gpusentry/config.yaml
        self.proc = subprocess.Popen([PYTHON, "-m", "sensor", "run", "-c", str(config), "--quiet", "--no-view",
                                      "--socket", str(self.socket), "--journal", str(workdir / "journal.db")],
                                     cwd=ROOT, stderr=subprocess.PIPE, text=True, start_new_session=True)
        self.messages: list[str] = []

    def wait_watching(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.messages.append(line.rstrip("\n"))
            if line.startswith("gpusentry: watching"):
                threading.Thread(target=self._drain, daemon=True).start()
                poll_until(self.socket.exists, 30, "the agent's API socket")
                return
        raise RuntimeError("the agent stopped before watching: " + " | ".join(self.messages[-5:]))

    def _drain(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.messages.append(line.rstrip("\n"))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


class Subscriber:
    """Every alert the agent publishes, with the boot-clock time it arrived here."""

    def __init__(self, channel: grpc.Channel) -> None:
        self.alerts: list[tuple[int, pb.Alert]] = []
        self.changed = threading.Condition()
        self.error: grpc.RpcError | None = None
        self.gaps = 0  # times this subscriber fell behind, and windows the sensor was blind
        self._subscribed = threading.Event()
        self._stream = sensor_stub(channel).Subscribe(pb.SubscribeRequest(alerts=True))
        threading.Thread(target=self._read, daemon=True).start()
        if not self._subscribed.wait(30) or self.error is not None:
            raise RuntimeError(f"could not subscribe to the agent's alerts: {self.error}")

    def _read(self) -> None:
        try:
            for response in self._stream:
                arrived = boot_ns()
                item = response.WhichOneof("item")
                if item == "subscribed":
                    self._subscribed.set()
                elif item == "alert":
                    with self.changed:
                        self.alerts.append((arrived, response.alert))
                        self.changed.notify_all()
                elif item in ("gap", "sensor_gap"):
                    self.gaps += 1
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.CANCELLED:
                self.error = exc
        finally:
            self._subscribed.set()

    def in_scope(self, cgroup_id: int) -> list[tuple[int, pb.Alert]]:
        with self.changed:
            return [(t, a) for t, a in self.alerts if any(p.process.cgroup_id == cgroup_id for p in a.processes)]

    def wait(self, done: Callable[[], bool], timeout: float) -> None:
        """Until `done()` (checked whenever an alert arrives) or `timeout` seconds."""
        deadline = time.monotonic() + timeout
        with self.changed:
            while not done() and (left := deadline - time.monotonic()) > 0:
                self.changed.wait(left)

    def close(self) -> None:
        self._stream.cancel()


def wait_seen(channel: grpc.Channel, cgroup_id: int, act: Callable[[], None], marker: str, timeout: float) -> None:
    """Subscribe to the execs of one cgroup, `act()`, and return once the agent has published the
    exec whose argv holds `marker`: it has read every record before it."""
    request = pb.SubscribeRequest(events=True, event_kinds=[pb.EVENT_KIND_EXEC], cgroup_ids=[cgroup_id])
    stream = sensor_stub(channel).Subscribe(request, timeout=timeout)
    try:
        for response in stream:
            item = response.WhichOneof("item")
            if item == "subscribed":
                act()
            elif item == "events" and any(marker in e.exec.argv for e in response.events.events):
                return
    except grpc.RpcError as exc:
        raise RuntimeError(f"the agent never showed the marker exec {marker}: {exc.details()}") from exc
    finally:
        stream.cancel()


# -- scopes: a cgroup per variant -------------------------------------------------------------


class Cgroups:
    """cgroup v2, mounted at a path of our own: `ip netns exec` remounts /sys, where the host's
    mount is, so the namespaces' processes could not reach it there."""

    def __init__(self, workdir: Path, tag: str) -> None:
        self.mount = workdir / "cgroup"
        self.mount.mkdir()
        subprocess.run(["mount", "-t", "cgroup2", "none", str(self.mount)], check=True, capture_output=True)
        self.parent = self.mount / f"gs-efficacy-{tag}"
        self.parent.mkdir()

    def make(self, name: str) -> Path:
        path = self.parent / name
        path.mkdir()
        return path

    def remove(self, path: Path) -> None:
        """Kill everything in it (daemons too), then remove it."""
        (path / "cgroup.kill").write_text("1")
        poll_until(lambda: "populated 0" in (path / "cgroup.events").read_text(), 20, f"{path.name} to empty")
        path.rmdir()

    def close(self) -> None:
        for child in self.parent.iterdir():
            if child.is_dir():
                with contextlib.suppress(OSError, RuntimeError):
                    self.remove(child)
        with contextlib.suppress(OSError):
            self.parent.rmdir()
        subprocess.run(["umount", str(self.mount)], capture_output=True)


# -- running a variant -------------------------------------------------------------------------


@dataclass
class Bench:
    agent: Agent
    net: Network
    drivers: dict[str, Path]  # fake driver mount by architecture
    cgroups: Cgroups
    channel: grpc.Channel
    subscriber: Subscriber
    workdir: Path
    window: float
    timeout: float

    def run(self, variant: Variant, number: int) -> Result:
        if self.agent.proc.poll() is not None:
            raise RuntimeError("the agent stopped: " + " | ".join(self.agent.messages[-5:]))
        missing = [p for p in variant.needs if shutil.which(p) is None]
        if missing:
            return Result(variant.name, variant.label, expected(variant), "skipped",
                          reason=f"not installed: {', '.join(missing)}", note=variant.note)
        scope = self.cgroups.make(f"{variant.name}-{number}")
        cgroup_id = scope.stat().st_ino  # the kernel's cgroup id, as bpf_get_current_cgroup_id gives it
        try:
            self._act(variant, number, scope, cgroup_id)
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            return Result(variant.name, variant.label, expected(variant), "error", reason=str(exc), note=variant.note)
        finally:
            self.cgroups.remove(scope)
        return judge(variant, self.subscriber.in_scope(cgroup_id))

    def _act(self, variant: Variant, number: int, scope: Path, cgroup_id: int) -> None:
        scratch = self.workdir / f"{variant.name}-{number}"
        scratch.mkdir()
        values = self._placeholders(variant, number, scope, scratch)
        for step in variant.steps:
            self._step(step, values, scope)
        marker = f"gs-efficacy-done-{variant.name}"
        wait_seen(self.channel, cgroup_id, lambda: self._marker(scope, marker), marker, timeout=30)
        if variant.label == "negative":
            threading.Event().wait(self.window)  # the observation window itself, not a wait for a result
        else:
            self.subscriber.wait(lambda: judge(variant, self.subscriber.in_scope(cgroup_id)).detected, self.timeout)

    def _placeholders(self, variant: Variant, number: int, scope: Path, scratch: Path) -> dict[str, str]:
        options = shlex.join(self.net.ssh_options)
        return {"ssh": f"{SSH} {options}", "scp": f"scp {options}", "ssh_options": options, "outside": OUTSIDE_IP,
                "key": str(self.net.key),
                "outside_ns": self.net.outside.name, "port": str(FIRST_PORT + number), "dir": str(scratch),
                "gpu": replay(self.drivers["hopper"], "hopper-bringup.yaml"),
                "training": replay(self.drivers["ampere"], "training-job.yaml"),
                "pool": f"bash -c 'exec 3<>/dev/tcp/{OUTSIDE_IP}/3333' 2>/dev/null || true",
                "python": PYTHON, "root": str(ROOT), "enter": f"echo $$ >{procs(scope)};"}

    def _step(self, step: Step, values: dict[str, str], scope: Path) -> None:
        script = PRELUDE + step.script.format(**values)
        inner = f"echo $$ >{procs(scope)} && cd {shlex.quote(str(ROOT))} && exec sh -c {shlex.quote(script)}"
        if step.host == "gpuhost":  # a login, as an agent's shell: the lineage starts below sshd
            argv = self.net.gpuhost.command(SSH, *self.net.ssh_options, "root@127.0.0.1", inner)
        else:
            argv = self.net.outside.command("sh", "-c", inner)
        done = subprocess.run(argv, capture_output=True, text=True, timeout=STEP_TIMEOUT, stdin=subprocess.DEVNULL)
        if done.returncode != 0:
            raise RuntimeError(f"{step.host} step failed ({done.returncode}): {done.stderr.strip()[-300:]}")

    def _marker(self, scope: Path, marker: str) -> None:
        subprocess.run(["sh", "-c", f'echo $$ >"$0"/cgroup.procs && exec /usr/bin/true {marker}', str(scope)],
                       check=True)


def procs(scope: Path) -> str:
    """The scope's cgroup.procs, quoted for a shell: a shell writing its $$ there enters it."""
    return shlex.quote(str(scope / "cgroup.procs"))


def replay(driver: Path, fixture: str) -> str:
    """A shell command: the fake CUDA client replaying `fixture` on the fake driver."""
    return shlex.join([PYTHON, "-m", "sensor.fakegpu.isolate", str(driver), "--", PYTHON, "-m",
                       "sensor.fakegpu.client", str(FIXTURES / fixture)]) + " >/dev/null"


@contextlib.contextmanager
def bench(window: float, timeout: float) -> Iterator[Bench]:
    """The agent (started first: it loads while the rest is made), the fake drivers (before the
    sshds, whose mount namespaces copy the host's), the cgroups and the network."""
    tag = secrets.token_hex(3)
    workdir = Path(tempfile.mkdtemp(prefix="gs-efficacy-"))
    agent_user = pwd.getpwnam("gpusentry")
    os.chown(workdir, agent_user.pw_uid, agent_user.pw_gid)
    workdir.chmod(0o755)
    agent = Agent(workdir)
    with contextlib.ExitStack() as stack:
        stack.callback(shutil.rmtree, workdir, ignore_errors=True)
        stack.callback(agent.stop)
        drivers = {arch: stack.enter_context(fake_driver(arch)) for arch in ("hopper", "ampere")}
        cgroups = Cgroups(workdir, tag)
        stack.callback(cgroups.close)
        net = stack.enter_context(network(workdir / "net", f"gs-eff-g-{tag}", f"gs-eff-o-{tag}",
                                          (f"gseg{tag}", f"gseo{tag}")))
        agent.wait_watching()
        channel = stack.enter_context(contextlib.closing(grpc.insecure_channel(f"unix:{agent.socket}")))
        subscriber = Subscriber(channel)
        stack.callback(subscriber.close)
        yield Bench(agent, net, drivers, cgroups, channel, subscriber, workdir, window, timeout)


@dataclass
class Run:
    results: list[Result]  # every variant's, round after round
    gaps: int  # the subscriber fell behind, or the sensor was blind: results may be short
    drops: dict[str, int]  # the agent's drop counters at the end ("hop: what"), host-wide


def run_corpus(variants: list[Variant], window: float, timeout: float, rounds: int = 1,
               progress: Callable[[Result], None] = lambda _: None) -> Run:
    """Every variant, `rounds` times over (round after round), with one agent and one network."""
    results = []
    with bench(window, timeout) as b:
        for number in range(rounds * len(variants)):
            results.append(b.run(variants[number % len(variants)], number))
            progress(results[-1])
        status = sensor_stub(b.channel).GetStatus(pb.GetStatusRequest(), timeout=30)
        drops = {f"{d.hop}: {d.what}": d.count for d in status.drops if d.count}
        return Run(results, b.subscriber.gaps, drops)


# -- the report --------------------------------------------------------------------------------


def rates(results: list[Result]) -> dict[str, Any]:
    count = {v: sum(r.verdict == v for r in results) for v in ("TP", "FN", "TN", "FP", "skipped", "error")}
    positives, negatives = count["TP"] + count["FN"], count["TN"] + count["FP"]
    return {**count, "true_positive_rate": count["TP"] / positives if positives else None,
            "false_positive_rate": count["FP"] / negatives if negatives else None}


def per_variant(results: list[Result]) -> list[dict[str, Any]]:
    """Each variant over its rounds: how often each verdict, the highest severity, every rule
    raised, and the times to alert."""
    names = list(dict.fromkeys(r.name for r in results))
    out = []
    for name in names:
        runs = [r for r in results if r.name == name]
        verdicts = dict(Counter(r.verdict for r in runs))
        severity = max((r.severity for r in runs), key=lambda x: SEVERITIES.index(x) if x else -1)
        out.append({"name": name, "label": runs[0].label, "expected": runs[0].expected, "rounds": len(runs),
                    "verdicts": verdicts, "severity": severity, "rules": sorted({x for r in runs for x in r.rules}),
                    "latency_ms": [r.latency_ms for r in runs if r.latency_ms is not None]})
    return out


def row(r: Result) -> str:
    latency = f"{r.latency_ms:.0f}" if r.latency_ms is not None else "-"
    rules = ",".join(r.rules) or "-"
    return (f"{r.name:26} {r.label:8} {r.verdict:7} {r.severity or '-':8} {latency:>7} {r.decisive or '-':11} "
            f"{rules}{'  (' + r.reason + ')' if r.reason else ''}")


def header() -> str:
    return f"{'variant':26} {'label':8} {'verdict':7} {'highest':8} {'ms':>7} {'decisive':11} rules raised"


def variant_row(v: dict[str, Any]) -> str:
    verdicts = ", ".join(f"{k} {n}/{v['rounds']}" for k, n in v["verdicts"].items())
    latency = spread(v["latency_ms"], "{:.0f}") if v["latency_ms"] else "-"
    return f"{v['name']:26} {v['label']:8} {verdicts:16} {v['severity'] or '-':8} {latency:>14} " + (
        ",".join(v["rules"]) or "-")


def print_summary(run: Run, rounds: int, window: float, timeout: float, seconds: float) -> None:
    if rounds > 1:
        print(f"\nover {rounds} rounds (ms: median [min-max])")
        print(f"{'variant':26} {'label':8} {'verdicts':16} {'highest':8} {'ms':>14} rules raised")
        for v in per_variant(run.results):
            print(variant_row(v))
    summary = rates(run.results)

    def pct(x: float | None) -> str:
        return "-" if x is None else f"{100 * x:.0f}%"

    print(f"true positive rate {pct(summary['true_positive_rate'])} ({summary['TP']} of "
          f"{summary['TP'] + summary['FN']}), false positive rate {pct(summary['false_positive_rate'])} "
          f"({summary['FP']} of {summary['TN'] + summary['FP']}); skipped {summary['skipped']}, "
          f"errors {summary['error']}")
    print(f"ms: decisive event (kernel time, CLOCK_BOOTTIME) to the alert at the API subscriber; negatives: "
          f"no alert at their severity in a {window:g} s window after the agent had read their last step; "
          f"positives waited {timeout:g} s at most. Whole run {seconds:.0f} s.")
    drops = ", ".join(f"{k} {n}" for k, n in run.drops.items()) or "none"
    print(f"subscriber and sensor gaps: {run.gaps}; the agent's drops (host-wide): {drops}")


def main() -> None:
    parser = argparse.ArgumentParser(description="detection efficacy over a labelled corpus, against the real agent")
    parser.add_argument("--only", action="append", default=[], metavar="NAME", help="only this variant (repeatable)")
    parser.add_argument("--rounds", type=int, default=1, help="run the corpus this many times over (default 1)")
    parser.add_argument("--window", type=float, default=3.0, help="seconds a negative is watched (default 3)")
    parser.add_argument("--timeout", type=float, default=5.0,
                        help="seconds a positive is waited for, once the agent has read its last step (default 5)")
    parser.add_argument("--json", action="store_true", help="one JSON object: results, rates, settings")
    parser.add_argument("--list", action="store_true", help="list the variants and exit")
    args = parser.parse_args()
    if args.list:
        for v in VARIANTS:
            print(f"{v.name:26} {v.label:8} {v.note}")
        return
    unknown = set(args.only) - {v.name for v in VARIANTS}
    if unknown:
        raise SystemExit(f"no variant {', '.join(sorted(unknown))}; --list names them")
    if args.rounds < 1:
        raise SystemExit("--rounds: at least 1")
    if os.geteuid() != 0:
        raise SystemExit("bench.efficacy needs root (network namespaces, the agent, cgroups)")
    variants = [v for v in VARIANTS if not args.only or v.name in args.only]
    started = time.monotonic()
    if not args.json:
        print(header(), flush=True)
    run = run_corpus(variants, args.window, args.timeout, args.rounds,
                     progress=(lambda r: None) if args.json else (lambda r: print(row(r), flush=True)))
    seconds = time.monotonic() - started
    if args.json:
        print(json.dumps({"results": [asdict(r) for r in run.results], "variants": per_variant(run.results),
                          "summary": rates(run.results), "gaps": run.gaps, "drops": run.drops,
                          "rounds": args.rounds, "window_s": args.window, "timeout_s": args.timeout,
                          "run_s": round(seconds, 1)}, indent=1))
    else:
        print_summary(run, args.rounds, args.window, args.timeout, seconds)


if __name__ == "__main__":
    main()
