"""Later rule files changing earlier rules (Falco-style tuning), each change checked exactly as
a definition would be.

    rules:
      - id: reverse-tunnel-then-gpu-compute   # off (and back on with `enabled: true`)
        enabled: false
      - id: tunnel-to-nonstandard-port
        override:                             # replaces what it gives, keeps the rest
          severity: low
          tags: [attack.T1572, site.noisy]
          exceptions:                         # appended to the rule's own exceptions
            - name: bastion
              where: {remote_host: {cidr: [10.20.0.0/16]}}

An override replaces title, description, severity, tags, and a single-fact rule's `match` or
a sequence's `window`, `scope` and `steps`. Its `exceptions` are appended instead of replacing:
a site that adds its own case to a built-in rule should not have to copy (and then keep up to
date) the exceptions gpusentry ships; a name already there is an error. Redefining an id
without `override:` or `enabled:` is an error too, so that a pasted copy of a rule never
silently shadows the original.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from sensor.aggregator.facts import field_names
from sensor.rules import source
from sensor.rules.model import Exemption, Rule, is_process_field
from sensor.rules.parse import (
    Invalid,
    Lists,
    enabled_of,
    exemptions_of,
    require_known_keys,
    rule_id_of,
    scopes_of,
    severity_of,
    step_of,
    steps_of,
    tags_of,
    text_of,
    window_of,
)

TUNING_KEYS = ("id", "enabled", "override")
OVERRIDE_KEYS = ("title", "description", "severity", "tags", "match", "window", "scope", "steps", "exceptions")
SEQUENCE_ONLY = ("window", "scope", "steps")


def is_tuning(raw: source.Located) -> bool:
    """Whether a `rules:` entry changes an existing rule rather than defining one."""
    return "override" in raw or set(raw) <= {"id", "enabled"}


def tune(file: str, raw: source.Located, rule: Rule | None, lists: Lists) -> Rule:
    """The rule as this entry leaves it: `enabled:` and `override:` applied, the entry recorded."""
    rule_id = rule_id_of(raw)
    if rule is None:
        raise Invalid(raw.line_of("id"), f"no rule {rule_id!r} is defined before this entry, so there is nothing to "
                                         "enable or override (rules are read in order: built-in first, then each "
                                         "file as given); a new rule needs title, description, severity and "
                                         "match or sequence")
    for key in raw:
        if key not in TUNING_KEYS:
            raise Invalid(raw.line_of(key), f"{str(key)!r} next to `override:`: put what to change under "
                                            f"`override:` (allowed there: {', '.join(OVERRIDE_KEYS)})")
    if set(raw) == {"id"}:
        raise Invalid(raw.line, f"nothing to change in rule {rule_id!r}: give `enabled:` or `override:`")
    changed = replace(rule, enabled=enabled_of(raw, default=rule.enabled))
    if "override" in raw:
        changed = _override(file, raw["override"], raw.line_of("override"), changed, lists)
    return replace(changed, overridden_by=(*rule.overridden_by, f"{file}:{raw.line}"))


def _override(file: str, raw: Any, line: int, rule: Rule, lists: Lists) -> Rule:
    if not isinstance(raw, source.Located) or not raw:
        raise Invalid(line, f"`override` maps what to change to its new value ({', '.join(OVERRIDE_KEYS)})")
    require_known_keys(raw, OVERRIDE_KEYS, " in override")
    changes: dict[str, Any] = {key: text_of(raw, key) for key in ("title", "description") if key in raw}
    if "severity" in raw:
        changes["severity"] = severity_of(raw)
    if "tags" in raw:
        changes["tags"] = tags_of(raw)
    changes |= (_sequence_changes if rule.sequence else _match_change)(file, raw, rule, lists)
    changed = replace(rule, **changes)
    if "steps" in changes:
        _check_exemptions_still_apply(changed, raw.line_of("steps" if changed.sequence else "match"))
    if "exceptions" in raw:
        exemptions = exemptions_of(file, raw["exceptions"], raw.line_of("exceptions"), changed, lists)
        changed = replace(changed, exceptions=exemptions)
    return changed


def _match_change(file: str, raw: source.Located, rule: Rule, lists: Lists) -> dict[str, Any]:
    misplaced = [key for key in SEQUENCE_ONLY if key in raw]
    if misplaced:
        raise Invalid(raw.line_of(misplaced[0]), f"`{misplaced[0]}` is for sequences; {rule.id} matches one fact: "
                                                 "override its `match`")
    if "match" not in raw:
        return {}
    return {"steps": (step_of(file, raw["match"], raw.line_of("match"), lists),)}


def _sequence_changes(file: str, raw: source.Located, rule: Rule, lists: Lists) -> dict[str, Any]:
    if "match" in raw:
        raise Invalid(raw.line_of("match"), f"{rule.id} is a sequence: override its `steps` (or `window`, "
                                            "`scope`), not `match`")
    changes: dict[str, Any] = {}
    if "window" in raw:
        changes["window_ns"] = window_of(raw["window"], raw.line_of("window")) * 1_000_000_000
    if "scope" in raw:
        changes["scopes"] = scopes_of(raw["scope"], raw.line_of("scope"))
    if "steps" in raw:
        changes["steps"] = steps_of(file, raw["steps"], raw.line_of("steps"), lists)
    return changes


def _check_exemptions_still_apply(rule: Rule, line: int) -> None:
    """New steps must still have the step and the fields each existing exception looks at."""
    for exemption in rule.exceptions:
        if exemption.step is not None and exemption.step >= len(rule.steps):
            raise Invalid(line, f"the new steps have no step {exemption.step + 1}, which exception "
                                f"{exemption.name!r} ({exemption.source}) looks at")
        missing = _missing_fields(rule, exemption)
        if missing:
            raise Invalid(line, f"exception {exemption.name!r} ({exemption.source}) looks at {missing!r}, which "
                                "the new steps' facts do not have: keep a step with that field")


def _missing_fields(rule: Rule, exemption: Exemption) -> str:
    steps = rule.steps if exemption.step is None else rule.steps[exemption.step:exemption.step + 1]
    known = set().union(*(field_names(step.fact) for step in steps))
    for name, _ in exemption.where:
        if name not in known and not is_process_field(name):
            return name
    return ""
