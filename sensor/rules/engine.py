"""The rule engine: single-fact rules and sequences over facts, joined by a scope.

Rules are indexed by fact kind, so a fact meets only the rules that can match it. A sequence
keeps partial matches: a match of its first step opens one; a later fact that matches the
next step, within the window and in the same scope (any of the rule's scope kinds), moves it
on; the last step raises the alert and closes it. Partials expire with their window and are
capped per rule (the oldest goes first, counted). A single-fact rule raises at most one
alert per process and fact summary a minute, the rest counted as suppressed.

A disabled rule is not indexed, so it costs nothing. A match that one of the rule's exceptions
covers raises no alert and is counted per rule and per exception (the first that holds); for
a single-fact rule this comes before the once-a-minute dedup, so an excepted fact does not
hide a real one that follows. A sequence's exceptions are judged when its last step matches,
on every step's fact and its process as they are then.

A reload (SIGHUP) must not open a blind window between two steps: the open partial matches of
a sequence whose steps (facts and conditions) and scopes (and lineage boundary) are unchanged
go on under the new rule and its window; those of a rule that was changed or removed are
discarded and counted. The dedup memory is kept as it is.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from sensor.aggregator.facts import Fact
from sensor.aggregator.process_table import Process
from sensor.rules.alert import Alert, AlertProcess, AlertStep
from sensor.rules.model import Rule, RuleSet, Step

MAX_PARTIALS_PER_RULE = 10_000
DEDUP_NS = 60 * 1_000_000_000


class EngineContext(Protocol):
    """What the engine needs to know about processes, from the aggregator."""

    def scope_keys(self, process: Process, scope: str, rule: Rule) -> frozenset[str]: ...

    def describe(self, process: Process) -> AlertProcess: ...

    def process_values(self, process: Process) -> dict[str, Any]: ...


@dataclass
class EngineStats:
    facts: int = 0
    evaluations: int = 0  # step checks made
    alerts: int = 0
    suppressed: int = 0  # repeats of a single-fact alert within a minute
    partials: int = 0  # open partial sequence matches now
    partials_expired: int = 0
    partials_dropped: int = 0  # at the per-rule cap
    partials_discarded: int = 0  # of rules that a reload changed or removed
    by_rule: dict[str, int] = field(default_factory=dict)  # alerts per rule
    excepted: int = 0  # matches an exception kept from alerting
    excepted_by_rule: dict[str, int] = field(default_factory=dict)
    excepted_by_exception: dict[str, dict[str, int]] = field(default_factory=dict)  # rule -> exception -> count

    def count_exception(self, rule_id: str, name: str) -> None:
        self.excepted += 1
        self.excepted_by_rule[rule_id] = self.excepted_by_rule.get(rule_id, 0) + 1
        by_name = self.excepted_by_exception.setdefault(rule_id, {})
        by_name[name] = by_name.get(name, 0) + 1


@dataclass
class _Partial:
    rule: Rule
    next_step: int
    first_ts: int
    last_ts: int
    scopes: dict[str, frozenset[str]]  # scope kind -> keys shared by every step so far
    steps: list[tuple[Fact, Process]]

    def identity(self) -> tuple[Any, ...]:
        return (self.next_step, tuple(sorted((k, tuple(sorted(v))) for k, v in self.scopes.items())))


class RuleEngine:
    def __init__(self, ruleset: RuleSet, context: EngineContext) -> None:
        self.context = context
        self.stats = EngineStats()
        self._recent: OrderedDict[tuple[str, Any, str], int] = OrderedDict()
        self.ruleset = RuleSet()
        self._partials: dict[str, OrderedDict[tuple[Any, ...], _Partial]] = {}
        self.load(ruleset)

    def load(self, ruleset: RuleSet) -> None:
        """Use these rules from now on (a reload): open partial matches of unchanged sequences go on."""
        self._single: dict[str, list[Rule]] = {}
        self._steps: dict[str, list[tuple[Rule, int]]] = {}  # fact kind -> (sequence rule, step index)
        for rule in ruleset.enabled_rules:
            if rule.sequence:
                for index, step in enumerate(rule.steps):
                    self._steps.setdefault(step.fact, []).append((rule, index))
            else:
                self._single.setdefault(rule.steps[0].fact, []).append(rule)
        self._carry_partials(ruleset)
        self.ruleset = ruleset

    def _carry_partials(self, ruleset: RuleSet) -> None:
        previous = {rule.id: rule for rule in self.ruleset.rules}
        old, self._partials = self._partials, {}
        for rule in (r for r in ruleset.enabled_rules if r.sequence):
            partials = old.pop(rule.id, OrderedDict())
            before = previous.get(rule.id)
            if before is not None and same_sequence(before, rule):
                for partial in partials.values():
                    partial.rule = rule  # its window and title from now on
                self._partials[rule.id] = partials
            else:
                self._partials[rule.id] = OrderedDict()
                self.stats.partials_discarded += len(partials)
        self.stats.partials_discarded += sum(len(partials) for partials in old.values())  # removed rules
        self.stats.partials = sum(len(partials) for partials in self._partials.values())

    def on_fact(self, fact: Fact, process: Process) -> list[Alert]:
        self.stats.facts += 1
        single = self._single.get(fact.KIND, ())
        steps = self._steps.get(fact.KIND, ())
        if not single and not steps:
            return []
        values = {**fact.fields(), **self.context.process_values(process)}
        alerts = [a for rule in single if (a := self._single_rule(rule, fact, process, values))]
        for rule, index in steps:
            alerts += self._sequence_step(rule, index, fact, process, values)
        self.stats.alerts += len(alerts)
        for alert in alerts:
            self.stats.by_rule[alert.rule_id] = self.stats.by_rule.get(alert.rule_id, 0) + 1
        return alerts

    # -- single-fact rules ----------------------------------------------------------------

    def _single_rule(self, rule: Rule, fact: Fact, process: Process, values: dict[str, Any]) -> Alert | None:
        self.stats.evaluations += 1
        if not rule.steps[0].matches(values) or self._excepted(rule, [values]):
            return None
        key = (rule.id, process.key, fact.summary())
        last = self._recent.get(key)
        if last is not None and fact.ts - last < DEDUP_NS:
            self.stats.suppressed += 1
            return None
        self._recent[key] = fact.ts
        self._recent.move_to_end(key)
        while len(self._recent) > MAX_PARTIALS_PER_RULE:
            self._recent.popitem(last=False)
        return self._alert(rule, [(fact, process)], "fact", process.exec_id)

    # -- sequences ------------------------------------------------------------------------

    def _sequence_step(self, rule: Rule, index: int, fact: Fact, process: Process,
                       values: dict[str, Any]) -> list[Alert]:
        step: Step = rule.steps[index]
        self.stats.evaluations += 1
        if not step.matches(values):
            return []
        if index == 0:
            self._open(rule, fact, process)
            return []
        alerts = []
        partials = self._partials[rule.id]
        for identity, partial in list(partials.items()):
            if partial.next_step != index:
                continue
            if fact.ts - partial.first_ts > rule.window_ns:
                self._close(rule, identity, expired=True)
                continue
            if fact.ts < partial.last_ts:
                continue  # steps happen in order
            shared = self._shared_scopes(rule, partial.scopes, process)
            if not shared:
                continue
            self._close(rule, identity)
            advanced = _Partial(rule, index + 1, partial.first_ts, fact.ts, shared, [*partial.steps, (fact, process)])
            if advanced.next_step < len(rule.steps):
                self._keep(rule, advanced)
            elif alert := self._complete(rule, advanced, values):
                alerts.append(alert)
        return alerts

    def _complete(self, rule: Rule, done: _Partial, values: dict[str, Any]) -> Alert | None:
        """The last step matched: an alert, unless one of the rule's exceptions covers the match."""
        if rule.exceptions and self._excepted(rule, [*self._step_values(done.steps[:-1]), values]):
            return None
        kind, keys = next(iter(done.scopes.items()))
        return self._alert(rule, done.steps, kind, sorted(keys)[0])

    def _open(self, rule: Rule, fact: Fact, process: Process) -> None:
        scopes = {kind: self.context.scope_keys(process, kind, rule) for kind in rule.scopes}
        scopes = {kind: keys for kind, keys in scopes.items() if keys}
        if scopes:
            self._keep(rule, _Partial(rule, 1, fact.ts, fact.ts, scopes, [(fact, process)]))

    def _shared_scopes(self, rule: Rule, scopes: dict[str, frozenset[str]],
                       process: Process) -> dict[str, frozenset[str]]:
        shared = {}
        for kind, keys in scopes.items():
            common = keys & self.context.scope_keys(process, kind, rule)
            if common:
                shared[kind] = common
        return shared

    def _keep(self, rule: Rule, partial: _Partial) -> None:
        partials = self._partials[rule.id]
        identity = partial.identity()
        if identity in partials:
            del partials[identity]  # the same step in the same scope: keep the newest
            self.stats.partials -= 1
        partials[identity] = partial
        self.stats.partials += 1
        while len(partials) > MAX_PARTIALS_PER_RULE:
            partials.popitem(last=False)
            self.stats.partials -= 1
            self.stats.partials_dropped += 1

    def _close(self, rule: Rule, identity: tuple[Any, ...], expired: bool = False) -> None:
        if self._partials[rule.id].pop(identity, None) is not None:
            self.stats.partials -= 1
            if expired:
                self.stats.partials_expired += 1

    def expire(self, now_ns: int) -> None:
        """Close partial matches whose window has passed."""
        for rule_id, partials in self._partials.items():
            rule = self.ruleset.by_id(rule_id)
            if rule is None:
                continue
            for identity, partial in list(partials.items()):
                if now_ns - partial.first_ts > rule.window_ns:
                    self._close(rule, identity, expired=True)

    def open_sequence(self, process: Process, ignoring: frozenset[str] = frozenset()) -> str | None:
        """A sequence rule with an open partial match in one of this process's scopes, or None;
        a partial whose matched steps are all facts of the `ignoring` kinds does not count."""
        for rule_id, partials in self._partials.items():
            rule = self.ruleset.by_id(rule_id) if partials else None
            if rule is None:
                continue
            keys = {kind: self.context.scope_keys(process, kind, rule) for kind in rule.scopes}
            for partial in partials.values():
                if all(fact.KIND in ignoring for fact, _ in partial.steps):
                    continue
                if any(keys.get(kind, frozenset()) & shared for kind, shared in partial.scopes.items()):
                    return rule_id
        return None

    # -- exceptions -----------------------------------------------------------------------

    def _excepted(self, rule: Rule, step_values: list[dict[str, Any]]) -> bool:
        """Whether one of the rule's exceptions covers this match (counted if so)."""
        for exemption in rule.exceptions:
            if exemption.holds(step_values):
                self.stats.count_exception(rule.id, exemption.name)
                return True
        return False

    def _step_values(self, steps: list[tuple[Fact, Process]]) -> list[dict[str, Any]]:
        return [{**fact.fields(), **self.context.process_values(process)} for fact, process in steps]

    # -- alerts ---------------------------------------------------------------------------

    def _alert(self, rule: Rule, steps: list[tuple[Fact, Process]], scope: str, scope_key: str) -> Alert:
        processes: dict[str, AlertProcess] = {}
        alert_steps = []
        for fact, process in steps:
            info = processes.get(process.exec_id) or self.context.describe(process)
            processes[info.exec_id] = info
            alert_steps.append(AlertStep(fact.KIND, fact.ts, fact.summary(), _plain_fields(fact), info.exec_id))
        return Alert(rule_id=rule.id, severity=rule.severity.label, title=rule.title, description=rule.description,
                     tags=rule.tags, ts=steps[-1][0].ts, scope=scope, scope_key=scope_key,
                     steps=tuple(alert_steps), processes=tuple(processes.values()))


def same_sequence(before: Rule, after: Rule) -> bool:
    """Whether a partial match of `before` means the same under `after`: the same steps (facts and
    conditions, whatever their lines) related by the same scopes. The window may differ."""
    return (before.sequence and after.sequence and before.scopes == after.scopes
            and before.lineage_boundary == after.lineage_boundary
            and [(s.fact, dict(s.where)) for s in before.steps] == [(s.fact, dict(s.where)) for s in after.steps])


def _plain_fields(fact: Fact) -> dict[str, Any]:
    convert: Callable[[Any], Any] = lambda v: list(v) if isinstance(v, tuple) else v  # noqa: E731
    return {k: convert(v) for k, v in fact.fields().items()}
