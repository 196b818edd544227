"""How many facts per second the rule engine evaluates with the built-in rules loaded.

A fact mix like a busy host's (mostly exec and connect, some GPU, a few tunnels and miner
signals, many distinct processes so sequences keep partial matches open) goes through
RuleEngine.on_fact. The baseline, in the same run, is the same engine with no rules (only
the per-kind index lookups). Also the whole aggregator on constructed events: classifiers,
taint and rules together.

    .venv/bin/python -m bench.rules [--facts 200000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from typing import Any

from bench.figures import spread
from sensor import events as ev
from sensor.aggregator import facts as f
from sensor.aggregator.aggregator import Aggregator
from sensor.aggregator.detector import Detector, DetectorConfig
from sensor.aggregator.process_table import Process, ProcessTable, ProcKey
from sensor.rules.loader import load_rules
from sensor.rules.model import RuleSet

SEC = 1_000_000_000
RATE = "{:,.0f}"  # facts or events per second


def fact_stream(count: int, processes: list[Process], seed: int = 7) -> list[tuple[f.Fact, Process]]:
    rng = random.Random(seed)
    out: list[tuple[f.Fact, Process]] = []
    for i in range(count):
        proc = rng.choice(processes)
        ts = SEC + i * 100_000
        roll = rng.random()
        fact: f.Fact
        if roll < 0.55:
            argv = ("/usr/bin/python3", f"job{i % 50}.py", "--lr", "0.1")
            fact = f.ExecFact(ts, proc.key, argv[0], "python3", argv, " ".join(argv), 1000, 1000, "")
        elif roll < 0.90:
            fact = f.ConnectFact(ts, proc.key, "inet", f"203.0.113.{i % 200}", rng.choice([443, 80, 5432, 3333]), 0,
                                 "egress", False)
        elif roll < 0.96:
            fact = f.GpuCompute(ts, proc.key, i, 0xCBC0, "Hopper", 0xC86F, 0)
        elif roll < 0.99:
            fact = f.MinerFact(ts, proc.key, "pool-port", "3333", "203.0.113.9", 3333)
        else:
            fact = f.TunnelFact(ts, proc.key, "ssh", True, ("reverse",), "198.51.100.1", "root", 0,
                                ("reverse 9000 -> localhost:22",), f"tunnel:{proc.exec_id}")
        out.append((fact, proc))
    return out


def population(table: ProcessTable, count: int) -> list[Process]:
    init = table.add(Process(key=ProcKey(1, 0), ppid=0, parent=None, exe=b"/sbin/init"))
    procs = []
    for i in range(count):
        launcher = table.add(Process(key=ProcKey(1000 + i, i), ppid=1, parent=init.key, exe=b"/usr/bin/python3"))
        procs.append(table.add(Process(key=ProcKey(50000 + i, i), ppid=launcher.pid, parent=launcher.key,
                                       exe=b"/bin/bash", tunnel_scopes=frozenset({f"tunnel:{i % 7}"}))))
    return procs


def engine_rate(ruleset: RuleSet, stream_size: int) -> tuple[float, Any]:
    table = ProcessTable()
    procs = population(table, 2000)
    detector = Detector(table, ruleset, DetectorConfig())
    stream = fact_stream(stream_size, procs)
    start = time.perf_counter()
    for fact, proc in stream:
        detector.engine.on_fact(fact, proc)
    return stream_size / (time.perf_counter() - start), detector.engine.stats


def event_stream(count: int) -> list[ev.Event]:
    rng = random.Random(11)
    events: list[ev.Event] = []
    started: dict[int, int] = {}
    ts = SEC
    for pid in range(2, 2002):
        ts += 1000
        started[pid] = ts
        events.append(ev.Fork(ts, 1, 1, pid, 1, ts))
    for i in range(count):
        ts += 100_000
        pid = rng.randrange(2, 2002)
        if i % 3 == 0:
            argv = [b"/usr/bin/python3", f"job{i % 40}.py".encode()]
            events.append(ev.Exec(ts, pid, pid, 0, 1, 1000, 1000, 7, started[pid], b"python3", argv[0], argv, 2, 0, 0,
                                  0, pid))
        else:
            events.append(ev.Connect(ts, pid, pid, 3, 0, "inet", f"203.0.113.{i % 250}", rng.choice([443, 3333, 80])))
    return events


def aggregator_rate(events: list[ev.Event]) -> float:
    aggregator = Aggregator(rules=load_rules([]), config=DetectorConfig())
    start = time.perf_counter()
    for event in events:
        aggregator.handle(event)
    return len(events) / (time.perf_counter() - start)



def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--facts", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    builtin, empty = load_rules([]), RuleSet()
    with_rules, baseline, ratios = [], [], []
    stats = None
    for _ in range(args.repeat):
        base, _ = engine_rate(empty, args.facts)
        rate, stats = engine_rate(builtin, args.facts)
        baseline.append(base)
        with_rules.append(rate)
        ratios.append(base / rate)
    events = event_stream(args.facts)
    aggregated = [aggregator_rate(events) for _ in range(args.repeat)]
    print(f"rule engine, {len(builtin.rules)} built-in rules: {spread(with_rules, RATE)} facts/s")
    print(f"  baseline without rules: {spread(baseline, RATE)} facts/s; cost ratio "
          f"{statistics.median(ratios):.2f} [{min(ratios):.2f}-{max(ratios):.2f}]")
    assert stats is not None
    print(f"  last run: {stats.alerts} alerts, {stats.partials} partial matches open, "
          f"{stats.suppressed} repeats suppressed")
    print(f"whole aggregator (classifiers, taint, rules) on exec/connect events: {spread(aggregated, RATE)} events/s")


if __name__ == "__main__":
    main()
