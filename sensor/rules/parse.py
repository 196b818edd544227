"""One rule's YAML to a Rule: each field checked where it is written, so that an error names
its line and says what is accepted.

Definitions (loader.py) and `override:` (tuning.py) share these checks: a changed severity,
window or step is held to exactly what a new rule would be."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from typing import Any

from sensor.aggregator.facts import FACT_KINDS, field_names
from sensor.rules import source
from sensor.rules.conditions import ConditionError, compile_condition
from sensor.rules.model import (
    DEFAULT_LINEAGE_BOUNDARY,
    POD_FIELDS,
    PROCESS_FIELDS,
    SCOPES,
    Conditions,
    Exemption,
    Rule,
    Severity,
    Step,
    is_process_field,
)

Lists = Mapping[str, Sequence[Any]]

RULE_ID = re.compile(r"^[a-z0-9][a-z0-9-]{0,79}$")
EXCEPTION_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,79}$")
RULE_KEYS = ("description", "enabled", "exceptions", "id", "lineage_boundary", "match", "sequence", "severity",
             "tags", "title")
SEQUENCE_KEYS = ("scope", "window", "steps")
STEP_KEYS = ("fact", "where")
EXCEPTION_KEYS = ("name", "where", "step")
EXCEPTION_FORM = "{name: ..., where: {field: condition}} (and, in a sequence, optional `step:`)"
MAX_STEPS = 8
MAX_WINDOW_S = 7 * 24 * 3600


class Invalid(Exception):
    """A mistake at one line of the file being read."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(message)
        self.line = line
        self.message = message


def require_known_keys(mapping: source.Located, allowed: Iterable[str], where: str = "") -> None:
    allowed = tuple(allowed)
    unknown = set(mapping) - set(allowed)
    if unknown:
        key = sorted(unknown, key=str)[0]
        raise Invalid(mapping.line_of(key), f"unknown key {str(key)!r}{where} (allowed: {', '.join(allowed)})")


def rule_id_of(raw: source.Located) -> str:
    rule_id = raw.get("id")
    if not isinstance(rule_id, str) or not RULE_ID.match(rule_id):
        raise Invalid(raw.line_of("id"), "`id` is required: lowercase letters, digits and dashes")
    return rule_id


def definition(file: str, raw: source.Located, lists: Lists) -> Rule:
    """A new rule, from a `rules:` entry that defines one."""
    require_known_keys(raw, RULE_KEYS)
    rule_id = rule_id_of(raw)
    title, description = text_of(raw, "title"), text_of(raw, "description")
    severity, tags = severity_of(raw), tags_of(raw)
    enabled = enabled_of(raw, default=True)
    if ("match" in raw) == ("sequence" in raw):
        raise Invalid(raw.line, "a rule has exactly one of `match` (one fact) or `sequence` (ordered facts)")
    common: dict[str, Any] = {
        "id": rule_id, "title": title, "description": description, "severity": severity, "tags": tags,
        "source": f"{file}:{raw.line}", "lineage_boundary": _boundary(raw), "enabled": enabled}
    if "match" in raw:
        rule = Rule(steps=(step_of(file, raw["match"], raw.line_of("match"), lists),), sequence=False, **common)
    else:
        rule = _sequence(file, raw["sequence"], raw.line_of("sequence"), lists, common)
    if "exceptions" in raw:
        rule = replace(rule, exceptions=exemptions_of(file, raw["exceptions"], raw.line_of("exceptions"), rule,
                                                      lists))
    return rule


def text_of(raw: source.Located, key: str) -> str:
    value = raw.get(key)
    if not isinstance(value, str) or not value.strip():
        raise Invalid(raw.line_of(key), f"`{key}` is required (a non-empty string)")
    return value.strip()


def severity_of(raw: source.Located) -> Severity:
    value = raw.get("severity")
    names = [s.label for s in Severity]
    if not isinstance(value, str) or value.lower() not in names:
        raise Invalid(raw.line_of("severity"), f"`severity` is one of {', '.join(names)}")
    return Severity[value.upper()]


def tags_of(raw: source.Located) -> tuple[str, ...]:
    tags = raw.get("tags", [])
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise Invalid(raw.line_of("tags"), "`tags` is a list of strings")
    return tuple(tags)


def enabled_of(raw: source.Located, default: bool) -> bool:
    enabled = raw.get("enabled", default)
    if not isinstance(enabled, bool):
        raise Invalid(raw.line_of("enabled"), "`enabled` is true or false")
    return enabled


def _boundary(raw: source.Located) -> frozenset[str]:
    extra = raw.get("lineage_boundary", [])
    if not isinstance(extra, list) or not all(isinstance(b, str) and b for b in extra):
        raise Invalid(raw.line_of("lineage_boundary"), "`lineage_boundary` is a list of process names")
    return DEFAULT_LINEAGE_BOUNDARY | frozenset(extra)


def _sequence(file: str, seq: Any, line: int, lists: Lists, common: dict[str, Any]) -> Rule:
    if not isinstance(seq, source.Located):
        raise Invalid(line, "`sequence` is a mapping with scope, window and steps")
    require_known_keys(seq, SEQUENCE_KEYS, " in sequence")
    scopes = scopes_of(seq.get("scope"), seq.line_of("scope"))
    window_s = window_of(seq.get("window"), seq.line_of("window"))
    steps = steps_of(file, seq.get("steps"), seq.line_of("steps"), lists)
    return Rule(steps=steps, sequence=True, scopes=scopes, window_ns=window_s * 1_000_000_000, **common)


def scopes_of(value: Any, line: int) -> tuple[str, ...]:
    scopes = [value] if isinstance(value, str) else value
    if not isinstance(scopes, list) or not scopes or not all(s in SCOPES for s in scopes):
        raise Invalid(line, f"`scope` is one or more of {', '.join(SCOPES)}")
    return tuple(scopes)


def window_of(value: Any, line: int) -> int:
    """Seconds, from a duration like 90s, 30m, 2h or a number of seconds."""
    units = {"s": 1, "m": 60, "h": 3600}
    if isinstance(value, int) and not isinstance(value, bool):
        seconds = value
    elif isinstance(value, str) and re.fullmatch(r"\d+[smh]", value):
        seconds = int(value[:-1]) * units[value[-1]]
    else:
        raise Invalid(line, "`window` is a duration like 90s, 30m, 2h (or seconds)")
    if not 1 <= seconds <= MAX_WINDOW_S:
        raise Invalid(line, f"`window` is from 1 second to {MAX_WINDOW_S // 86400} days")
    return seconds


def steps_of(file: str, steps: Any, line: int, lists: Lists) -> tuple[Step, ...]:
    if not isinstance(steps, list) or not 2 <= len(steps) <= MAX_STEPS:
        raise Invalid(line, f"`steps` is a list of 2 to {MAX_STEPS} steps")
    return tuple(step_of(file, step, getattr(step, "line", line), lists) for step in steps)


def step_of(file: str, raw: Any, line: int, lists: Lists) -> Step:
    if not isinstance(raw, source.Located):
        raise Invalid(line, "a step is a mapping with `fact` and optional `where`")
    require_known_keys(raw, STEP_KEYS, " in a step")
    kind = raw.get("fact")
    if kind not in FACT_KINDS:
        raise Invalid(raw.line_of("fact"), f"`fact` is one of {', '.join(sorted(FACT_KINDS))}, not {kind!r}")
    where = where_of(raw.get("where"), raw.line_of("where"), (kind,), lists)
    return Step(fact=kind, where=where, line=raw.line, file=file)


def where_of(where: Any, line: int, kinds: Sequence[str], lists: Lists) -> Conditions:
    """Conditions on fields of a fact of one of these kinds (or of its process)."""
    if where is None:
        return ()
    if not isinstance(where, source.Located):
        raise Invalid(line, "`where` maps fields to conditions")
    known = set().union(*(field_names(kind) for kind in kinds))
    conditions = []
    for field_name, spec in where.items():
        field_line = where.line_of(field_name)
        name = str(field_name)
        if name not in known and not is_process_field(name):
            raise Invalid(field_line, _no_such_field(name, kinds, known))
        try:
            conditions.append((name, compile_condition(spec, lists)))
        except ConditionError as exc:
            raise Invalid(field_line, f"{name}: {exc}") from exc
    return tuple(conditions)


def _no_such_field(name: str, kinds: Sequence[str], known: set[str]) -> str:
    fields = ", ".join(sorted(known) + [f"process.{p}" for p in PROCESS_FIELDS] + [f"pod.{p}" for p in POD_FIELDS])
    if len(kinds) == 1:
        return f"a {kinds[0]} fact has no field {name!r} (fields: {fields})"
    return f"none of the steps' facts ({', '.join(kinds)}) has a field {name!r} (fields: {fields})"


# -- exceptions ---------------------------------------------------------------------------------


def exemptions_of(file: str, raw: Any, line: int, rule: Rule, lists: Lists) -> tuple[Exemption, ...]:
    """The rule's exceptions followed by these (from a definition, or appended by an override)."""
    if not isinstance(raw, source.LocatedList) or not raw:
        raise Invalid(line, f"`exceptions` is a list of {EXCEPTION_FORM}")
    out = list(rule.exceptions)
    for index, entry in enumerate(raw):
        exemption = _exemption(file, entry, raw.line_of_item(index), rule, lists)
        earlier = next((e for e in out if e.name == exemption.name), None)
        if earlier is not None:
            raise Invalid(entry.line_of("name"), f"exception {exemption.name!r} is already defined at "
                                                 f"{earlier.source}: give this one another name")
        out.append(exemption)
    return tuple(out)


def _exemption(file: str, entry: Any, line: int, rule: Rule, lists: Lists) -> Exemption:
    if not isinstance(entry, source.Located):
        raise Invalid(line, f"an exception is a mapping: {EXCEPTION_FORM}")
    require_known_keys(entry, EXCEPTION_KEYS, " in an exception")
    name = entry.get("name")
    if not isinstance(name, str) or not EXCEPTION_NAME.match(name):
        raise Invalid(entry.line_of("name"), "an exception's `name` is required: lowercase letters, digits, - and _")
    step = _exemption_step(entry, rule)
    kinds = rule.fact_kinds if step is None else (rule.steps[step].fact,)
    where = where_of(entry.get("where"), entry.line_of("where"), kinds, lists)
    if not where:
        raise Invalid(entry.line_of("where"), f"exception {name!r} has no `where:` conditions, so it would suppress "
                                              "every alert: give it conditions, or turn the rule off with "
                                              "`enabled: false`")
    return Exemption(name, where, step, f"{file}:{entry.line}")


def _exemption_step(entry: source.Located, rule: Rule) -> int | None:
    """The index of the step an exception looks at: given by number (1 first) or by its fact."""
    if "step" not in entry:
        return None
    value, line = entry["step"], entry.line_of("step")
    if not rule.sequence:
        raise Invalid(line, "`step` picks a step of a sequence; this rule matches one fact: leave `step` out")
    kinds = [step.fact for step in rule.steps]
    if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= len(kinds):
        return value - 1
    if isinstance(value, str) and kinds.count(value) == 1:
        return kinds.index(value)
    unique = [kind for kind in kinds if kinds.count(kind) == 1]
    raise Invalid(line, f"`step` is a step's number (1 to {len(kinds)}) or the fact of a step no other step "
                        f"shares ({', '.join(unique) or 'none here'}), not {value!r}")
