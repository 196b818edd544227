"""`gpusentry simulate WHAT`: subscribe to the running agent, act in two fresh namespaces, report.

Exit 0 when every expected alert (and incident, or fact) arrived, 1 when one is missing, 2
when the run would touch the host's own network (or is not root), 130 when interrupted.
Everything made (namespaces, sshds, the fake driver's mount, a temporary directory) is removed
however the run ends: SIGTERM is turned into KeyboardInterrupt so the same cleanup runs.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sensor.api.client import client_channel
from sensor.errors import RuntimeFailure, UsageError
from sensor.fakegpu.session import fake_driver
from sensor.simulate import steps
from sensor.simulate.check import Outcome, Subscription
from sensor.simulate.network import network, refusal

NAMESPACES = ("gs-sim-gpuhost", "gs-sim-outside")
LINKS = ("gs-sim-g", "gs-sim-o")
ROOT = Path(__file__).resolve().parents[2]
# this process forks (sshd, ssh, the fake client) while its subscription's threads run: gRPC's
# fork handlers would only log that they skip themselves, once a fork
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")


def cmd_simulate(args: argparse.Namespace) -> int:
    reason = refusal(NAMESPACES)
    if reason is not None:
        raise UsageError(f"simulate refuses to run: {reason}")
    expected = steps.EXPECTED[args.what]
    channel, endpoint = client_channel(args.socket)
    with _interruptible(), contextlib.closing(channel):
        subscription = Subscription(channel, expected)
        try:
            subscription.wait_subscribed(timeout=10)
            print(f"simulate {args.what}: subscribed to the agent at {endpoint}", flush=True)
            started = time.monotonic()
            _act(args.what)
            outcome = subscription.wait(max(args.timeout - (time.monotonic() - started), 0))
        finally:
            subscription.close()
    return _report(args.what, outcome)


def _act(what: str) -> None:
    """Perform `what` in fresh namespaces, which are gone when this returns."""
    workdir = Path(tempfile.mkdtemp(prefix="gpusentry-simulate-"))
    try:
        with _driver(what) as driver_dir, network(workdir, *NAMESPACES, LINKS) as net:
            done = net.gpuhost.run("sh", "-c", steps.script(what, net, driver_dir), cwd=ROOT)
            if done.returncode != 0:
                raise RuntimeFailure(f"simulate {what}: the step failed on gpuhost: {done.stderr.strip()}")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


@contextlib.contextmanager
def _driver(what: str) -> Iterator[Path | None]:
    if what not in steps.NEEDS_GPU:
        yield None
        return
    with fake_driver("hopper") as driver_dir:
        yield driver_dir


def _report(what: str, outcome: Outcome) -> int:
    for line in outcome.lines():
        print(line)
    if outcome.ok:
        print(f"simulate {what}: ok, everything expected arrived")
        return 0
    missing = [*outcome.missing_rules, *outcome.missing_facts]
    if not missing:
        missing = ["one incident joining every alert"]
    print(f"simulate {what}: FAILED, missing: {', '.join(missing)}")
    return 1


@contextlib.contextmanager
def _interruptible() -> Iterator[None]:
    """SIGINT and SIGTERM raise KeyboardInterrupt once; a second one during cleanup is ignored."""
    raised = False

    def interrupt(_signum: int, _frame: Any) -> None:
        nonlocal raised
        if not raised:
            raised = True
            raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
