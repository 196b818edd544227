"""Loading rule files: every mistake is reported with its file, line, rule id and the fix.

    lists:
      miner_pool_ports: [3333, 4444, 5555]
    rules:
      - id: reverse-tunnel-opened
        title: Reverse tunnel opened
        description: A process set up a reverse tunnel: the outside can now reach in.
        severity: high
        tags: [attack.T1572]
        match: {fact: tunnel, where: {reverse: true}}
      - id: reverse-tunnel-then-gpu-compute
        ...
        sequence:
          scope: [lineage, tunnel]   # any of: lineage, cgroup, session, user, tunnel, host
          window: 30m                # s, m, h, or seconds
          steps:
            - {fact: tunnel, where: {reverse: true}}
            - {fact: gpu_compute}

A rule has `match` (one fact) or `sequence` (ordered facts within the window, related by the
scope). Conditions are in sensor/rules/conditions.py.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sensor.aggregator.facts import FACT_KINDS, field_names
from sensor.errors import GpusentryError
from sensor.rules import source
from sensor.rules.conditions import ConditionError, compile_condition
from sensor.rules.model import DEFAULT_LINEAGE_BOUNDARY, PROCESS_FIELDS, SCOPES, Rule, RuleSet, Severity, Step

BUILTIN = Path(__file__).with_name("builtin.yaml")
RULE_ID = re.compile(r"^[a-z0-9][a-z0-9-]{0,79}$")
RULE_KEYS = {"id", "title", "description", "severity", "tags", "match", "sequence", "lineage_boundary", "enabled"}
MAX_STEPS = 8
MAX_WINDOW_S = 7 * 24 * 3600


@dataclass(frozen=True)
class Problem:
    file: str
    line: int
    rule_id: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        rule = f" rule {self.rule_id}:" if self.rule_id else ""
        return f"{where}:{rule} {self.message}"


class RuleError(GpusentryError):
    """One or more rule files are invalid: every problem, each with file, line and rule."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        head = str(problems[0]) + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else "")
        super().__init__(f"invalid rules: {head}",
                         "correct the rule file; `gpusentry rules check FILE` lists every problem")


class _Invalid(Exception):
    def __init__(self, line: int, message: str) -> None:
        super().__init__(message)
        self.line = line
        self.message = message


def load_rules(paths: Iterable[Path], builtin: bool = True) -> RuleSet:
    """Every rule file, the built-in one first; RuleError lists every problem found."""
    ruleset = RuleSet()
    problems: list[Problem] = []
    files = ([BUILTIN] if builtin else []) + list(paths)
    for path in files:
        problems += _load_file(path, ruleset)
    if problems:
        raise RuleError(problems)
    return ruleset


def _load_file(path: Path, ruleset: RuleSet) -> list[Problem]:
    name = str(path)
    try:
        text = path.read_text()
    except OSError as exc:
        return [Problem(name, 0, "", f"cannot read it: {exc.strerror}")]
    try:
        document = source.load(text)
    except source.YamlError as exc:
        return [Problem(name, exc.line, "", exc.message)]
    if document is None:
        return [Problem(name, 0, "", "empty file: expected `lists:` and/or `rules:`")]
    if not isinstance(document, source.Located):
        return [Problem(name, 1, "", "a rule file is a mapping with `lists:` and/or `rules:`")]
    unknown = set(document) - {"lists", "rules"}
    if unknown:
        key = sorted(map(str, unknown))[0]
        return [Problem(name, document.line_of(key), "", f"unknown top-level key {key!r} (expected lists, rules)")]
    problems = _load_lists(name, document, ruleset)
    if problems:
        return problems
    ruleset.files.append(name)
    rules = document.get("rules", [])
    if not isinstance(rules, list):
        return [Problem(name, document.line_of("rules"), "", "`rules` is a list of rules")]
    for raw in rules:
        try:
            rule = _rule(name, raw, ruleset)
        except _Invalid as exc:
            rule_id = raw.get("id", "") if isinstance(raw, dict) else ""
            problems.append(Problem(name, exc.line, str(rule_id), exc.message))
            continue
        if rule is None:
            continue
        first = ruleset.by_id(rule.id)
        if first is not None:
            problems.append(Problem(name, raw.line, rule.id, f"duplicate id (first in {first.source})"))
            continue
        ruleset.rules.append(rule)
    return problems


def _load_lists(name: str, document: source.Located, ruleset: RuleSet) -> list[Problem]:
    lists = document.get("lists")
    if lists is None:
        return []
    if not isinstance(lists, source.Located):
        return [Problem(name, document.line_of("lists"), "", "`lists` maps names to lists of values")]
    problems = []
    for list_name, values in lists.items():
        line = lists.line_of(list_name)
        if not isinstance(list_name, str) or not re.fullmatch(r"[a-z_][a-z0-9_]*", list_name):
            problems.append(Problem(name, line, "", f"list name {list_name!r}: use lowercase letters, digits, _"))
        elif list_name in ruleset.lists:
            problems.append(Problem(name, line, "", f"list {list_name!r} is already defined"))
        elif not isinstance(values, list) or not all(isinstance(v, str | int) for v in values):
            problems.append(Problem(name, line, "", f"list {list_name!r} must be a list of strings or numbers"))
        else:
            ruleset.lists[list_name] = list(values)
    return problems


def _rule(name: str, raw: Any, ruleset: RuleSet) -> Rule | None:
    if not isinstance(raw, source.Located):
        raise _Invalid(getattr(raw, "line", 0), "each rule is a mapping")
    unknown = set(raw) - RULE_KEYS
    if unknown:
        key = sorted(map(str, unknown))[0]
        raise _Invalid(raw.line_of(key), f"unknown key {key!r} (allowed: {', '.join(sorted(RULE_KEYS))})")
    rule_id = raw.get("id")
    if not isinstance(rule_id, str) or not RULE_ID.match(rule_id):
        raise _Invalid(raw.line_of("id"), "`id` is required: lowercase letters, digits and dashes")
    for key in ("title", "description"):
        if not isinstance(raw.get(key), str) or not raw[key].strip():
            raise _Invalid(raw.line_of(key), f"`{key}` is required (a non-empty string)")
    severity = _severity(raw)
    tags = raw.get("tags", [])
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise _Invalid(raw.line_of("tags"), "`tags` is a list of strings")
    enabled = raw.get("enabled", True)
    if not isinstance(enabled, bool):
        raise _Invalid(raw.line_of("enabled"), "`enabled` is true or false")
    if ("match" in raw) == ("sequence" in raw):
        raise _Invalid(raw.line, "a rule has exactly one of `match` (one fact) or `sequence` (ordered facts)")
    boundary = _boundary(raw)
    common = {"id": rule_id, "title": raw["title"].strip(), "description": raw["description"].strip(),
              "severity": severity, "tags": tuple(tags), "source": f"{name}:{raw.line}",
              "lineage_boundary": boundary}
    if "match" in raw:
        rule = Rule(steps=(_step(raw["match"], raw.line_of("match"), ruleset),), sequence=False, **common)
    else:
        rule = _sequence(raw, ruleset, common)
    return rule if enabled else None


def _severity(raw: source.Located) -> Severity:
    value = raw.get("severity")
    names = [s.label for s in Severity]
    if not isinstance(value, str) or value.lower() not in names:
        raise _Invalid(raw.line_of("severity"), f"`severity` is one of {', '.join(names)}")
    return Severity[value.upper()]


def _boundary(raw: source.Located) -> frozenset[str]:
    extra = raw.get("lineage_boundary", [])
    if not isinstance(extra, list) or not all(isinstance(b, str) and b for b in extra):
        raise _Invalid(raw.line_of("lineage_boundary"), "`lineage_boundary` is a list of process names")
    return DEFAULT_LINEAGE_BOUNDARY | frozenset(extra)


def _sequence(raw: source.Located, ruleset: RuleSet, common: dict[str, Any]) -> Rule:
    seq = raw["sequence"]
    line = raw.line_of("sequence")
    if not isinstance(seq, source.Located):
        raise _Invalid(line, "`sequence` is a mapping with scope, window and steps")
    unknown = set(seq) - {"scope", "window", "steps"}
    if unknown:
        key = sorted(map(str, unknown))[0]
        raise _Invalid(seq.line_of(key), f"unknown key {key!r} in sequence (allowed: scope, window, steps)")
    scopes = seq.get("scope")
    scopes = [scopes] if isinstance(scopes, str) else scopes
    if not isinstance(scopes, list) or not scopes or not all(s in SCOPES for s in scopes):
        raise _Invalid(seq.line_of("scope"), f"`scope` is one or more of {', '.join(SCOPES)}")
    window_s = _window(seq.get("window"), seq.line_of("window"))
    steps = seq.get("steps")
    if not isinstance(steps, list) or not 2 <= len(steps) <= MAX_STEPS:
        raise _Invalid(seq.line_of("steps"), f"`steps` is a list of 2 to {MAX_STEPS} steps")
    compiled = tuple(_step(step, getattr(step, "line", seq.line_of("steps")), ruleset) for step in steps)
    return Rule(steps=compiled, sequence=True, scopes=tuple(scopes), window_ns=window_s * 1_000_000_000, **common)


def _window(value: Any, line: int) -> int:
    units = {"s": 1, "m": 60, "h": 3600}
    if isinstance(value, int) and not isinstance(value, bool):
        seconds = value
    elif isinstance(value, str) and re.fullmatch(r"\d+[smh]", value):
        seconds = int(value[:-1]) * units[value[-1]]
    else:
        raise _Invalid(line, "`window` is a duration like 90s, 30m, 2h (or seconds)")
    if not 1 <= seconds <= MAX_WINDOW_S:
        raise _Invalid(line, f"`window` is from 1 second to {MAX_WINDOW_S // 86400} days")
    return seconds


def _step(raw: Any, line: int, ruleset: RuleSet) -> Step:
    if not isinstance(raw, source.Located):
        raise _Invalid(line, "a step is a mapping with `fact` and optional `where`")
    unknown = set(raw) - {"fact", "where"}
    if unknown:
        key = sorted(map(str, unknown))[0]
        raise _Invalid(raw.line_of(key), f"unknown key {key!r} in a step (allowed: fact, where)")
    kind = raw.get("fact")
    if kind not in FACT_KINDS:
        raise _Invalid(raw.line_of("fact"), f"`fact` is one of {', '.join(sorted(FACT_KINDS))}, not {kind!r}")
    where = raw.get("where")
    if where is None:
        where = source.Located()
        where.key_lines = {}
    if not isinstance(where, source.Located):
        raise _Invalid(raw.line_of("where"), "`where` maps fields to conditions")
    known = field_names(kind)
    conditions = []
    for field_name, spec in where.items():
        field_line = where.line_of(field_name)
        name = str(field_name)
        if name not in known and not (name.startswith("process.") and name[8:] in PROCESS_FIELDS):
            fields = ", ".join(sorted(known) + [f"process.{p}" for p in PROCESS_FIELDS])
            raise _Invalid(field_line, f"a {kind} fact has no field {name!r} (fields: {fields})")
        try:
            conditions.append((name, compile_condition(spec, ruleset.lists)))
        except ConditionError as exc:
            raise _Invalid(field_line, f"{name}: {exc}") from exc
    return Step(fact=kind, where=tuple(conditions), line=raw.line)
