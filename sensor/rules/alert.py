"""An alert: which rule, how severe, the scope that joined its steps, each step's fact, and
the processes involved with their lineage."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class AlertStep:
    fact: str
    ts: int
    summary: str
    fields: dict[str, Any]
    exec_id: str


@dataclass(frozen=True)
class AlertProcess:
    exec_id: str
    pid: int
    ppid: int
    exe: str
    argv: tuple[str, ...]
    uid: int
    loginuid: int
    cgroup_id: int
    tunnel_scopes: tuple[str, ...]
    ancestors: tuple[dict[str, Any], ...]  # parent first: exec_id, pid, exe, argv
    container: dict[str, Any] = field(default_factory=dict)  # runtime, id, name, image; {} on the host
    pod: dict[str, Any] = field(default_factory=dict)  # uid, name, namespace, container, gpus; {} off Kubernetes


@dataclass(frozen=True)
class Alert:
    rule_id: str
    severity: str
    title: str
    description: str
    tags: tuple[str, ...]
    ts: int  # the last step's time
    scope: str  # the scope kind that joined the steps ("fact" for single-fact rules)
    scope_key: str
    steps: tuple[AlertStep, ...]
    processes: tuple[AlertProcess, ...]

    def to_dict(self) -> dict[str, Any]:
        plain: dict[str, Any] = _plain(dataclasses.asdict(self))
        return plain


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value
