"""Each rule's state for the API's status: on or off, where it is defined and changed, the
alerts it raised and the matches its exceptions kept quiet (in all, and by exception)."""

from __future__ import annotations

from sensor.api.v1 import gpusentry_pb2 as pb
from sensor.rules.engine import RuleEngine
from sensor.rules.model import Rule


def rule_statuses(engine: RuleEngine) -> list[pb.RuleStatus]:
    """One RuleStatus per loaded rule, disabled ones included, in load order."""
    return [_status(rule, engine) for rule in engine.ruleset.rules]


def _status(rule: Rule, engine: RuleEngine) -> pb.RuleStatus:
    # `suppressed` is what exceptions kept quiet, not EngineStats.suppressed (a minute's repeats).
    stats = engine.stats
    return pb.RuleStatus(
        id=rule.id, severity=pb.Severity.Value(f"SEVERITY_{rule.severity.name}"),
        alerts=stats.by_rule.get(rule.id, 0), enabled=rule.enabled, source=rule.source,
        overridden_by=list(rule.overridden_by), suppressed=stats.excepted_by_rule.get(rule.id, 0),
        suppressed_by_exception=dict(stats.excepted_by_exception.get(rule.id, {})))
