"""Rule files and the engine: load errors with their place, conditions, single rules and
sequences (order, windows, scopes, expiry, caps), on constructed facts."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from sensor.aggregator.facts import GpuCompute, MinerFact, TunnelFact
from sensor.aggregator.process_table import Process, ProcKey
from sensor.rules import engine as engine_module
from sensor.rules.alert import AlertProcess
from sensor.rules.engine import RuleEngine
from sensor.rules.loader import RuleError, load_rules
from sensor.rules.model import Rule, RuleSet

SEC = 1_000_000_000
HEADER = "rules:\n"


def write(tmp_path: Path, text: str, name: str = "rules.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def problems(tmp_path: Path, text: str) -> list[str]:
    path = write(tmp_path, text)
    with pytest.raises(RuleError) as info:
        load_rules([path], builtin=False)
    return [str(p).replace(f"{path}:", "FILE:") for p in info.value.problems]


RULE = """  - id: r1
    title: T
    description: D
    severity: high
"""


@pytest.mark.parametrize(("text", "expected"), [
    (HEADER + RULE + "    match: {fact: tunel}\n",
     "FILE:6: rule r1: `fact` is one of connect, egress, exec, gpu_compute, gpu_launches, gpu_open, gpu_profile, "
     "internal_scan, miner, tunnel, not 'tunel'"),
    (HEADER + RULE + "    match: {fact: tunnel, where: {colour: red}}\n",
     "FILE:6: rule r1: a tunnel fact has no field 'colour'"),
    (HEADER + RULE + "    match: {fact: connect, where: {port: {between: [1, 2]}}}\n",
     "FILE:6: rule r1: port: unknown operator 'between'"),
    (HEADER + RULE + "    match: {fact: connect, where: {port: {in: $nope}}}\n",
     "FILE:6: rule r1: port: no list named 'nope'"),
    (HEADER + RULE + "    match: {fact: exec, where: {cmdline: {regex: '-R(?=[0-9])'}}}\n",
     "FILE:6: rule r1: cmdline: `regex` '-R(?=[0-9])' uses a construct RE2 (the linear-time engine rules use) does "
     "not support: invalid perl operator: (?=; refused: backreferences, lookahead and lookbehind, atomic groups and "
     "possessive repeats, conditionals, repeat counts over 1000"),
    (HEADER + RULE.replace("severity: high", "severity: dire") + "    match: {fact: exec}\n",
     "FILE:5: rule r1: `severity` is one of info, low, medium, high, critical"),
    (HEADER + RULE + "    match: {fact: exec}\n    sequence: {}\n",
     "FILE:2: rule r1: a rule has exactly one of `match` (one fact) or `sequence` (ordered facts)"),
    (HEADER + RULE + "    sequence:\n      scope: [lineage]\n      window: 30m\n      steps: [{fact: tunnel}]\n",
     "FILE:9: rule r1: `steps` is a list of 2 to 8 steps"),
    (HEADER + RULE + "    sequence:\n      scope: [galaxy]\n      window: 30m\n"
     "      steps: [{fact: tunnel}, {fact: gpu_compute}]\n",
     "FILE:7: rule r1: `scope` is one or more of lineage, cgroup, session, user, tunnel, host, container, pod"),
    (HEADER + RULE + "    sequence:\n      scope: lineage\n      window: soon\n"
     "      steps: [{fact: tunnel}, {fact: gpu_compute}]\n",
     "FILE:8: rule r1: `window` is a duration like 90s, 30m, 2h (or seconds)"),
    (HEADER + RULE + "    match: {fact: exec}\n    exec: /bin/sh\n",
     "FILE:7: rule r1: unknown key 'exec'"),
    (HEADER + "  - id: Bad_Id\n    title: T\n    description: D\n    severity: low\n    match: {fact: exec}\n",
     "FILE:2: rule Bad_Id: `id` is required: lowercase letters, digits and dashes"),
    (HEADER + RULE.replace("    title: T\n", "") + "    match: {fact: exec}\n",
     "FILE:2: rule r1: `title` is required (a non-empty string)"),
    ("rules:\n  - id: a\n    id: b\n", "FILE:3: not valid YAML: duplicate key 'id'"),
    ("rules: [\n", "not valid YAML"),
    ("lists: {ports: [1, {a: b}]}\n", "FILE:1: list 'ports' must be a list of strings or numbers"),
    ("rulez: []\n", "FILE:1: unknown top-level key 'rulez' (expected lists, rules)"),
    ("", "FILE: empty file: expected `lists:` and/or `rules:`"),
    ("!!python/object/apply:os.system ['true']\n", "not valid YAML: could not determine a constructor"),
])
def test_invalid_rule_files_name_the_place(tmp_path: Path, text: str, expected: str) -> None:
    found = problems(tmp_path, text)
    assert any(p.startswith(expected) or expected in p for p in found), found


def test_every_problem_is_reported_and_the_first_heads_the_error(tmp_path: Path) -> None:
    text = HEADER + RULE + "    match: {fact: nope}\n" + RULE.replace("r1", "r2") + "    match: {fact: nada}\n"
    path = write(tmp_path, text)
    with pytest.raises(RuleError) as info:
        load_rules([path], builtin=False)
    assert [p.rule_id for p in info.value.problems] == ["r1", "r2"]
    assert str(info.value).startswith(f"invalid rules: {path}:6: rule r1: `fact` is one of")
    assert str(info.value).endswith("(and 1 more); fix: correct the rule file; "
                                    "`gpusentry rules check FILE` lists every problem")


def test_duplicate_rule_id_across_files(tmp_path: Path) -> None:
    body = HEADER + RULE + "    match: {fact: exec}\n"
    first, second = write(tmp_path, body, "a.yaml"), write(tmp_path, body, "b.yaml")
    with pytest.raises(RuleError) as info:
        load_rules([first, second], builtin=False)
    assert str(info.value.problems[0]) == (f"{second}:2: rule r1: already defined at {first}:2; "
                                           "to change it use override: or enabled:")


def test_builtin_rules_load() -> None:
    ruleset = load_rules([])
    assert {r.id for r in ruleset.rules} == {
        "reverse-tunnel-opened", "tunnel-to-nonstandard-port", "miner-pool-connection", "known-miner-binary",
        "tunnel-to-public-tunnel-service", "forward-tunnel-by-behaviour", "gpu-compute-in-tunnel-scope",
        "reverse-tunnel-then-gpu-compute", "gpu-compute-then-reverse-tunnel", "reverse-tunnel-then-miner-egress",
        "gpu-compute-then-miner-egress", "internal-scan", "reverse-tunnel-then-small-long-gpu-compute"}
    sequence = ruleset.by_id("reverse-tunnel-then-gpu-compute")
    assert sequence is not None and sequence.window_ns == 1800 * SEC and sequence.scopes == ("lineage", "tunnel")


# -- the engine, with a constructed view of processes -----------------------------------------


class Context:
    """Scopes are given per process key: {"lineage": {...}, "tunnel": {...}}."""

    def __init__(self) -> None:
        self.scopes: dict[ProcKey, dict[str, frozenset[str]]] = {}

    def scope_keys(self, process: Process, scope: str, rule: Rule) -> frozenset[str]:
        return self.scopes.get(process.key, {}).get(scope, frozenset())

    def describe(self, process: Process) -> AlertProcess:
        return AlertProcess(process.exec_id, process.pid, process.ppid, process.exe.decode(), (), 0, 0, 0, (), ())

    def process_values(self, process: Process) -> dict[str, Any]:
        return {"process.tunnel_scoped": bool(process.tunnel_scopes), "process.pid": process.pid}


def proc(pid: int, ctx: Context, **scopes: set[str]) -> Process:
    p = Process(key=ProcKey(pid, pid * 1000), ppid=1, parent=None, exe=b"/bin/x")
    ctx.scopes[p.key] = {k: frozenset(v) for k, v in scopes.items()}
    return p


def tunnel(p: Process, ts: int, reverse: bool = True) -> TunnelFact:
    return TunnelFact(ts, p.key, "ssh", reverse, ("reverse",), "198.51.100.1", "", 0, ("reverse 9000 -> x:22",),
                      f"tunnel:{p.exec_id}")


def compute(p: Process, ts: int) -> GpuCompute:
    return GpuCompute(ts, p.key, 0x14, 0xCBC0, "Hopper", 0xC86F, 0)


def sequence_rules(tmp_path: Path, window: str = "30m", scope: str = "[lineage, tunnel]",
                   last_step: str = "{fact: gpu_compute}", before: str = "") -> Any:
    text = before + HEADER + RULE + (f"    sequence:\n      scope: {scope}\n      window: {window}\n      steps:\n"
                                     f"        - {{fact: tunnel, where: {{reverse: true}}}}\n        - {last_step}\n")
    return load_rules([write(tmp_path, text)], builtin=False)


def test_sequence_in_the_same_lineage(tmp_path: Path) -> None:
    ctx = Context()
    engine = RuleEngine(sequence_rules(tmp_path), ctx)
    agent, miner = proc(10, ctx, lineage={"L1"}), proc(11, ctx, lineage={"L1"})
    assert engine.on_fact(tunnel(agent, 1 * SEC), agent) == []
    (alert,) = engine.on_fact(compute(miner, 5 * SEC), miner)
    assert (alert.rule_id, alert.severity, alert.scope, alert.scope_key) == ("r1", "high", "lineage", "L1")
    assert [(s.fact, s.ts, s.exec_id) for s in alert.steps] == [("tunnel", SEC, agent.exec_id),
                                                                ("gpu_compute", 5 * SEC, miner.exec_id)]
    assert engine.stats.partials == 0  # the match is consumed


def test_sequence_through_tunnel_taint_outside_the_lineage(tmp_path: Path) -> None:
    ctx = Context()
    engine = RuleEngine(sequence_rules(tmp_path), ctx)
    agent = proc(10, ctx, lineage={"L1"}, tunnel={"tunnel:10"})
    login_shell = proc(50, ctx, lineage={"L9"}, tunnel={"tunnel:10"})
    engine.on_fact(tunnel(agent, SEC), agent)
    (alert,) = engine.on_fact(compute(login_shell, 2 * SEC), login_shell)
    assert (alert.scope, alert.scope_key) == ("tunnel", "tunnel:10")


def test_other_scope_is_silent(tmp_path: Path) -> None:
    ctx = Context()
    engine = RuleEngine(sequence_rules(tmp_path), ctx)
    agent, training = proc(10, ctx, lineage={"L1"}), proc(20, ctx, lineage={"L2"})
    engine.on_fact(tunnel(agent, SEC), agent)
    assert engine.on_fact(compute(training, 2 * SEC), training) == []
    assert engine.stats.partials == 1


def test_order_matters(tmp_path: Path) -> None:
    ctx = Context()
    engine = RuleEngine(sequence_rules(tmp_path), ctx)
    agent = proc(10, ctx, lineage={"L1"})
    assert engine.on_fact(compute(agent, SEC), agent) == []
    assert engine.on_fact(tunnel(agent, 2 * SEC), agent) == []
    assert engine.stats.alerts == 0


def test_window_expiry(tmp_path: Path) -> None:
    ctx = Context()
    engine = RuleEngine(sequence_rules(tmp_path, window="60s"), ctx)
    agent = proc(10, ctx, lineage={"L1"})
    engine.on_fact(tunnel(agent, SEC), agent)
    assert engine.on_fact(compute(agent, 62 * SEC), agent) == []
    assert engine.stats.partials == 0 and engine.stats.partials_expired == 1
    engine.on_fact(tunnel(agent, 100 * SEC), agent)
    engine.expire(200 * SEC)
    assert engine.stats.partials == 0 and engine.stats.partials_expired == 2


def test_non_reverse_tunnel_does_not_start_a_sequence(tmp_path: Path) -> None:
    ctx = Context()
    engine = RuleEngine(sequence_rules(tmp_path), ctx)
    agent = proc(10, ctx, lineage={"L1"})
    engine.on_fact(tunnel(agent, SEC, reverse=False), agent)
    assert engine.on_fact(compute(agent, 2 * SEC), agent) == [] and engine.stats.partials == 0


def test_partials_are_capped_and_counted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine_module, "MAX_PARTIALS_PER_RULE", 5)
    ctx = Context()
    engine = RuleEngine(sequence_rules(tmp_path), ctx)
    for pid in range(100, 112):
        p = proc(pid, ctx, lineage={f"L{pid}"})
        engine.on_fact(tunnel(p, pid * SEC), p)
    assert engine.stats.partials == 5 and engine.stats.partials_dropped == 7
    oldest_kept, dropped = proc(107, ctx, lineage={"L107"}), proc(106, ctx, lineage={"L106"})
    assert engine.on_fact(compute(dropped, 200 * SEC), dropped) == []
    assert len(engine.on_fact(compute(oldest_kept, 200 * SEC), oldest_kept)) == 1


def test_single_rule_with_dedup(tmp_path: Path) -> None:
    text = HEADER + RULE + ("    match:\n      fact: miner\n"
                            "      where: {reason: [pool-port], port: {range: [3333, 3340]}}\n")
    ctx = Context()
    engine = RuleEngine(load_rules([write(tmp_path, text)], builtin=False), ctx)
    p = proc(10, ctx)
    fact = MinerFact(SEC, p.key, "pool-port", "3333", "198.51.100.9", 3333)
    assert len(engine.on_fact(fact, p)) == 1
    assert engine.on_fact(MinerFact(2 * SEC, p.key, "pool-port", "3333", "198.51.100.9", 3333), p) == []
    assert engine.stats.suppressed == 1
    assert len(engine.on_fact(MinerFact(70 * SEC, p.key, "pool-port", "3333", "198.51.100.9", 3333), p)) == 1
    assert engine.on_fact(MinerFact(80 * SEC, p.key, "pool-port", "8080", "198.51.100.9", 8080), p) == []


def test_rules_meet_only_their_fact_kinds() -> None:
    ctx = Context()
    engine = RuleEngine(load_rules([]), ctx)
    p = proc(10, ctx)
    from sensor.aggregator.facts import GpuOpenFact

    engine.on_fact(GpuOpenFact(SEC, p.key, "nvidiactl", 255, False), p)
    assert engine.stats.evaluations == 0


# -- reloads: open sequences of unchanged rules go on, the others are discarded and counted -----


def opened(tmp_path: Path) -> tuple[RuleEngine, Process]:
    """An engine with the sequence's first step matched: a reverse tunnel in lineage L1."""
    ctx = Context()
    engine = RuleEngine(sequence_rules(tmp_path), ctx)
    agent = proc(10, ctx, lineage={"L1"})
    engine.on_fact(tunnel(agent, SEC), agent)
    assert engine.stats.partials == 1
    return engine, agent


def test_reload_of_the_same_rules_keeps_open_sequences(tmp_path: Path) -> None:
    engine, agent = opened(tmp_path)
    engine.load(sequence_rules(tmp_path))
    assert (engine.stats.partials, engine.stats.partials_discarded) == (1, 0)
    (alert,) = engine.on_fact(compute(agent, 5 * SEC), agent)
    assert [(s.fact, s.ts) for s in alert.steps] == [("tunnel", SEC), ("gpu_compute", 5 * SEC)]
    assert engine.stats.partials == 0


def test_reload_that_only_moves_or_retitles_a_rule_keeps_it_and_uses_the_new_one(tmp_path: Path) -> None:
    engine, agent = opened(tmp_path)
    moved = sequence_rules(tmp_path, before="# a comment above moves every line\n\n")
    retitled = replace(moved.rules[0], title="Tunnel then compute")
    engine.load(RuleSet([retitled], moved.lists, moved.files))
    (alert,) = engine.on_fact(compute(agent, 5 * SEC), agent)
    assert (alert.rule_id, alert.title, engine.stats.partials_discarded) == ("r1", "Tunnel then compute", 0)


def test_reload_applies_the_new_window_to_open_sequences(tmp_path: Path) -> None:
    engine, agent = opened(tmp_path)
    engine.load(sequence_rules(tmp_path, window="60s"))
    assert engine.on_fact(compute(agent, 62 * SEC), agent) == []
    assert (engine.stats.partials, engine.stats.partials_expired, engine.stats.partials_discarded) == (0, 1, 0)


@pytest.mark.parametrize("change", [
    {"last_step": "{fact: gpu_compute, where: {architecture: Ampere}}"},  # a condition added
    {"last_step": "{fact: miner}"},  # another fact
    {"scope": "[lineage]"},
    {"scope": "[tunnel, lineage]"},  # the first shared scope names the alert's scope
])
def test_reload_of_a_changed_sequence_discards_its_open_matches(tmp_path: Path, change: dict[str, str]) -> None:
    engine, agent = opened(tmp_path)
    engine.load(sequence_rules(tmp_path, **change))
    assert (engine.stats.partials, engine.stats.partials_discarded) == (0, 1)
    assert engine.on_fact(compute(agent, 5 * SEC), agent) == []


def test_reload_with_a_changed_condition_value_discards(tmp_path: Path) -> None:
    ctx = Context()
    engine = RuleEngine(sequence_rules(tmp_path, last_step="{fact: gpu_compute, where: {process.pid: 10}}"), ctx)
    agent = proc(10, ctx, lineage={"L1"})
    engine.on_fact(tunnel(agent, SEC), agent)
    engine.load(sequence_rules(tmp_path, last_step="{fact: gpu_compute, where: {process.pid: '10'}}"))
    assert engine.stats.partials_discarded == 1  # 10 and '10' are different conditions


def test_reload_without_the_rule_discards_its_open_matches(tmp_path: Path) -> None:
    engine, _ = opened(tmp_path)
    engine.load(RuleSet())
    assert (engine.stats.partials, engine.stats.partials_discarded) == (0, 1)
    engine.load(sequence_rules(tmp_path))  # back again: it starts over
    assert (engine.stats.partials, engine.stats.partials_discarded) == (0, 1)


def test_reload_of_a_lineage_boundary_discards(tmp_path: Path) -> None:
    engine, _ = opened(tmp_path)
    ruleset = sequence_rules(tmp_path)
    rule = ruleset.rules[0]
    engine.load(RuleSet([replace(rule, lineage_boundary=rule.lineage_boundary | {"bash"})], ruleset.lists))
    assert engine.stats.partials_discarded == 1  # lineage keys were computed with the old boundary


def test_reload_keeps_the_single_rule_dedup_memory(tmp_path: Path) -> None:
    text = HEADER + RULE + "    match: {fact: miner, where: {reason: pool-port}}\n"
    ctx = Context()
    engine = RuleEngine(load_rules([write(tmp_path, text)], builtin=False), ctx)
    p = proc(10, ctx)
    assert len(engine.on_fact(MinerFact(SEC, p.key, "pool-port", "3333", "198.51.100.9", 3333), p)) == 1
    engine.load(load_rules([write(tmp_path, text)], builtin=False))
    assert engine.on_fact(MinerFact(2 * SEC, p.key, "pool-port", "3333", "198.51.100.9", 3333), p) == []
    assert engine.stats.suppressed == 1


def test_a_file_of_lists_alone_loads(tmp_path: Path) -> None:
    ruleset = load_rules([write(tmp_path, "lists:\n  ports: [1, 2]\n")], builtin=False)
    assert (ruleset.rules, ruleset.lists) == ([], {"ports": [1, 2]})


def test_list_items_keep_their_lines() -> None:
    from sensor.rules import source

    document = source.load("lists:\n  a: [1, 2]\n  b:\n    - x\n\n    - y\n")
    assert [document["lists"]["a"].line_of_item(i) for i in (0, 1)] == [2, 2]
    assert [document["lists"]["b"].line_of_item(i) for i in (0, 1, 2)] == [4, 6, 4]  # past the end: the list's
