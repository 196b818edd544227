"""`gpusentry rules check [FILES/DIRS]`: every problem in the rule files, or what the rules will do.

For each rule: on or off, its severity, where it is defined and changed, its exceptions, the
kinds of fact it consumes and whether the aggregator produces them; then each list, with how
many items each file gave it. An enabled rule on a kind of fact nothing produces is an error
like any other: it would load, and never fire, and nobody would notice.
"""

from __future__ import annotations

from pathlib import Path
from typing import TextIO

from sensor.aggregator import facts
from sensor.rules.loader import Problem, RuleError, load_rules
from sensor.rules.model import Rule, RuleSet


def produced_fact_kinds() -> frozenset[str]:
    """The KIND of every fact class in sensor/aggregator/facts.py: what the aggregator produces."""
    kinds = set()
    pending: list[type[facts.Fact]] = [facts.Fact]
    while pending:
        cls = pending.pop()
        pending += cls.__subclasses__()
        if cls.__module__ == facts.__name__ and "KIND" in vars(cls):
            kinds.add(cls.KIND)
    return frozenset(kinds)


def run_check(paths: list[Path], out: TextIO, produced: frozenset[str] | None = None) -> int:
    """Check the built-in rules and these files (or directories): 0 when they are sound, else 1."""
    try:
        ruleset = load_rules(paths)
    except RuleError as exc:
        return _report(exc.problems, out)
    produced = produced_fact_kinds() if produced is None else produced
    problems = never_fire(ruleset, produced)
    if problems:
        return _report(problems, out)
    _print_rules(ruleset, out)
    _print_lists(ruleset, out)
    disabled = len(ruleset.rules) - len(ruleset.enabled_rules)
    print(f"ok: {len(ruleset.rules)} rules ({disabled} disabled) in {len(ruleset.files)} file(s)", file=out)
    return 0


def never_fire(ruleset: RuleSet, produced: frozenset[str]) -> list[Problem]:
    """A problem for each step of an enabled rule whose kind of fact nothing produces."""
    problems = []
    for rule in ruleset.enabled_rules:
        for step in rule.steps:
            if step.fact not in produced:
                problems.append(Problem(step.file, step.line, rule.id,
                                        f"no part of the aggregator produces {step.fact} facts (it produces "
                                        f"{', '.join(sorted(produced))}), so this rule can never fire: change "
                                        "`fact:` or turn the rule off with `enabled: false`"))
    return problems


def _report(problems: list[Problem], out: TextIO) -> int:
    for problem in problems:
        print(problem, file=out)
    print(f"{len(problems)} problem(s)", file=out)
    return 1


def describe_rule(rule: Rule) -> str:
    state = "enabled" if rule.enabled else "disabled"
    window = f", window {_duration(rule.window_ns)}" if rule.sequence else ""
    where = rule.source + "".join(f", overridden by {change}" for change in rule.overridden_by)
    fires = "can fire" if rule.enabled else "does not fire (disabled)"
    return (f"{rule.id}: {state}, {rule.severity.label}{window}, {where}; facts: {', '.join(rule.fact_kinds)}; "
            f"{fires}")


def _duration(ns: int) -> str:
    seconds = ns // 1_000_000_000
    for unit, size in (("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _print_rules(ruleset: RuleSet, out: TextIO) -> None:
    print("rules:", file=out)
    for rule in ruleset.rules:
        print(f"  {describe_rule(rule)}", file=out)
        for exemption in rule.exceptions:
            print(f"    exception {exemption.name} ({exemption.source})", file=out)


def _print_lists(ruleset: RuleSet, out: TextIO) -> None:
    print("lists:", file=out)
    for name, items in ruleset.lists.items():
        parts = ", ".join(f"{part.items} from {part.source}" for part in ruleset.list_parts.get(name, []))
        print(f"  {name}: {len(items)} items" + (f" ({parts})" if parts else ""), file=out)
