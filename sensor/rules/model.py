"""What a loaded rule is: single-fact rules and ordered sequences joined by a scope, the
exceptions that keep a rule quiet on named cases, and the lists rules and classifiers read."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

from sensor.rules.conditions import Condition


class Severity(IntEnum):
    INFO = 0
    LOW = 1
    MEDIUM = 2
    HIGH = 3
    CRITICAL = 4

    @property
    def label(self) -> str:
        return self.name.lower()


# How the steps of a sequence must be related (THREAT-MODEL.md: the work may be started from
# the agent's tree, a daemon that left it, or a login that came back through the tunnel).
SCOPES = ("lineage", "cgroup", "session", "user", "tunnel", "host", "container", "pod")

# Fields of the process a fact is about, usable in conditions as `process.<name>`.
PROCESS_FIELDS = ("exe", "name", "argv", "cmdline", "comm", "uid", "loginuid", "pid", "cgroup_id", "tunnel_scoped",
                  "container.id", "container.name", "container.image", "container.runtime")

# Fields of the Kubernetes pod the process runs in, usable as `pod.<name>` ("" off Kubernetes;
# gpus: the device ids the kubelet allocated to its container).
POD_FIELDS = ("uid", "name", "namespace", "gpus")


def is_process_field(name: str) -> bool:
    """`process.<field>` or `pod.<field>`: about the fact's process rather than the fact."""
    return (name.startswith("process.") and name[8:] in PROCESS_FIELDS) or \
        (name.startswith("pod.") and name[4:] in POD_FIELDS)

# Processes that bound a lineage: a lineage scope is the subtree just below the nearest one.
DEFAULT_LINEAGE_BOUNDARY = frozenset({
    "systemd", "init", "sshd", "sshd-session", "login", "cron", "crond", "atd", "containerd-shim",
    "containerd-shim-runc-v2", "runc", "conmon", "dockerd", "tmux", "screen", "agetty",
})

# The list of networks connections may reach without an egress fact, with --egress-allow.
ALLOWED_EGRESS = "allowed_egress"

Conditions = tuple[tuple[str, Condition], ...]  # field name -> condition; all must hold


def conditions_hold(where: Conditions, values: dict[str, Any]) -> bool:
    return all(name in values and condition.holds(values[name]) for name, condition in where)


@dataclass(frozen=True)
class Step:
    fact: str
    where: Conditions
    line: int
    file: str = ""  # where it is written: an override's steps are in the override's file

    def matches(self, values: dict[str, Any]) -> bool:
        return conditions_hold(self.where, values)


@dataclass(frozen=True)
class Exemption:
    """One entry of a rule's `exceptions:` (Falco's word): a named case the rule does not alert
    on. It holds when its conditions hold for the fact of one step: the given one, or any."""

    name: str
    where: Conditions
    step: int | None  # index into the rule's steps; None: any step
    source: str  # file:line

    def holds(self, step_values: list[dict[str, Any]]) -> bool:
        candidates = step_values if self.step is None else step_values[self.step:self.step + 1]
        return any(conditions_hold(self.where, values) for values in candidates)


@dataclass(frozen=True)
class Rule:
    id: str
    title: str
    description: str
    severity: Severity
    tags: tuple[str, ...]
    source: str  # file:line
    steps: tuple[Step, ...]
    sequence: bool
    scopes: tuple[str, ...] = ()  # sequences: any of these relates the steps
    window_ns: int = 0
    lineage_boundary: frozenset[str] = DEFAULT_LINEAGE_BOUNDARY
    enabled: bool = True  # a disabled rule is loaded (and listed) but not evaluated
    exceptions: tuple[Exemption, ...] = ()
    overridden_by: tuple[str, ...] = ()  # file:line of each later `override:` or `enabled:` applied

    @property
    def fact_kinds(self) -> tuple[str, ...]:
        """The kinds of fact the rule consumes, each once, in step order."""
        return tuple(dict.fromkeys(step.fact for step in self.steps))


@dataclass(frozen=True)
class ListPart:
    """Items a file gave a list: its definition, or an `append: true`."""

    source: str  # file:line
    items: int


@dataclass
class RuleSet:
    rules: list[Rule] = field(default_factory=list)
    lists: dict[str, list[Any]] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)
    list_parts: dict[str, list[ListPart]] = field(default_factory=dict)

    def by_id(self, rule_id: str) -> Rule | None:
        return next((r for r in self.rules if r.id == rule_id), None)

    @property
    def enabled_rules(self) -> list[Rule]:
        return [rule for rule in self.rules if rule.enabled]

    @property
    def allowed_egress(self) -> tuple[str, ...]:
        """The networks of the `allowed_egress` list (CIDRs, checked at load)."""
        return tuple(str(network) for network in self.lists.get(ALLOWED_EGRESS, ()))

    def egress_allowlist(self, flags: Iterable[str] = ()) -> tuple[str, ...]:
        """What the egress policy allows: the --egress-allow networks and `allowed_egress`, each once."""
        return tuple(dict.fromkeys([*flags, *self.allowed_egress]))
