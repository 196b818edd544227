"""What a loaded rule is: single-fact rules and ordered sequences joined by a scope."""

from __future__ import annotations

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
SCOPES = ("lineage", "cgroup", "session", "user", "tunnel", "host")

# Fields of the process a fact is about, usable in conditions as `process.<name>`.
PROCESS_FIELDS = ("exe", "name", "argv", "cmdline", "comm", "uid", "loginuid", "pid", "cgroup_id", "tunnel_scoped")

# Processes that bound a lineage: a lineage scope is the subtree just below the nearest one.
DEFAULT_LINEAGE_BOUNDARY = frozenset({
    "systemd", "init", "sshd", "sshd-session", "login", "cron", "crond", "atd", "containerd-shim",
    "containerd-shim-runc-v2", "runc", "conmon", "dockerd", "tmux", "screen", "agetty",
})


@dataclass(frozen=True)
class Step:
    fact: str
    where: tuple[tuple[str, Condition], ...]  # all must hold
    line: int

    def matches(self, values: dict[str, Any]) -> bool:
        return all(name in values and condition.holds(values[name]) for name, condition in self.where)


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


@dataclass
class RuleSet:
    rules: list[Rule] = field(default_factory=list)
    lists: dict[str, list[Any]] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)

    def by_id(self, rule_id: str) -> Rule | None:
        return next((r for r in self.rules if r.id == rule_id), None)
