"""Loading rule files: every mistake is reported with its file, line, rule id and the fix.

    lists:
      miner_pool_ports: [3333, 4444, 5555]
      allowed_egress: [203.0.113.0/24]      # networks the egress check lets through
    rules:
      - id: reverse-tunnel-opened
        title: Reverse tunnel opened
        description: A process set up a reverse tunnel: the outside can now reach in.
        severity: high
        tags: [attack.T1572]
        match: {fact: tunnel, where: {reverse: true}}
        exceptions:                          # named cases it does not alert on
          - name: backup-bastion
            where: {remote_host: 198.51.100.7}
      - id: reverse-tunnel-then-gpu-compute
        ...
        sequence:
          scope: [lineage, tunnel]   # any of: lineage, cgroup, session, user, tunnel, host, container, pod
          window: 30m                # s, m, h, or seconds
          steps:
            - {fact: tunnel, where: {reverse: true}}
            - {fact: gpu_compute}

A rule has `match` (one fact) or `sequence` (ordered facts within the window, related by the
scope). Conditions are in sensor/rules/conditions.py; a later file can turn a rule off, change
it or add exceptions to it (sensor/rules/tuning.py), and add items to a list:

    lists:
      miner_pool_ports: {items: [7777], append: true}

Files are read in the order given, the built-in one first; a directory stands for its *.yaml
and *.yml files in name order (not its subdirectories). The lists of every file are read
before any rule, so a rule's `$list` holds the items later files append.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sensor.errors import GpusentryError
from sensor.rules import source
from sensor.rules.model import ALLOWED_EGRESS, ListPart, Rule, RuleSet
from sensor.rules.parse import Invalid, definition, require_known_keys, rule_id_of
from sensor.rules.tuning import is_tuning, tune

BUILTIN = Path(__file__).with_name("builtin.yaml")
RULE_FILE_SUFFIXES = (".yaml", ".yml")
LIST_NAME = re.compile(r"[a-z_][a-z0-9_]*")
FALCO_KEYS = frozenset({"rule", "list", "macro"})


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


@dataclass(frozen=True)
class _Document:
    file: str
    body: source.Located


def load_rules(paths: Iterable[Path], builtin: bool = True) -> RuleSet:
    """Every rule file (or directory of them), the built-in one first; RuleError lists every problem found."""
    files, problems = rule_files(([BUILTIN] if builtin else []) + list(paths))
    documents = []
    for path in files:
        document, unreadable = _read(path)
        problems += unreadable
        if document is not None:
            documents.append(document)
    ruleset = RuleSet()
    listed = []
    for document in documents:
        list_problems = _load_lists(document, ruleset)
        problems += list_problems
        if not list_problems:  # its rules would only add "no list named" noise
            listed.append(document)
    for document in listed:
        ruleset.files.append(document.file)
        problems += _load_rules(document, ruleset)
    if problems:
        raise RuleError(problems)
    return ruleset


def rule_files(paths: Iterable[Path]) -> tuple[list[Path], list[Problem]]:
    """Each file as given, each directory as its *.yaml and *.yml files in name order."""
    files: list[Path] = []
    problems = []
    for path in paths:
        if path.is_dir():
            try:
                found = [p for p in path.iterdir() if p.suffix in RULE_FILE_SUFFIXES and p.is_file()]
            except OSError as exc:
                problems.append(Problem(str(path), 0, "", f"cannot list the directory: {exc.strerror}"))
                continue
            files += sorted(found, key=lambda p: p.name)
        elif path.exists():
            files.append(path)
        else:
            problems.append(Problem(str(path), 0, "", "no such file or directory: give a rule file, or a "
                                                      "directory of *.yaml rule files"))
    return files, problems


def _read(path: Path) -> tuple[_Document | None, list[Problem]]:
    name = str(path)
    try:
        text = path.read_text()
    except OSError as exc:
        return None, [Problem(name, 0, "", f"cannot read it: {exc.strerror}")]
    try:
        body = source.load(text)
    except source.YamlError as exc:
        return None, [Problem(name, exc.line, "", exc.message)]
    if body is None:
        return None, [Problem(name, 0, "", "empty file: expected `lists:` and/or `rules:`")]
    if not isinstance(body, source.Located):
        return None, [Problem(name, getattr(body, "line", 1), "", _not_a_mapping(body))]
    unknown = set(body) - {"lists", "rules"}
    if unknown:
        key = sorted(map(str, unknown))[0]
        return None, [Problem(name, body.line_of(key), "", f"unknown top-level key {key!r} (expected lists, rules)")]
    return _Document(name, body), []


def _not_a_mapping(body: Any) -> str:
    message = "a rule file is a mapping with `lists:` and/or `rules:`"
    if isinstance(body, list) and any(isinstance(item, dict) and FALCO_KEYS & set(item) for item in body):
        message += (" (this looks like Falco's layout: here `lists:` maps each name to its items and `rules:` "
                    "is a list of rules named by `id:`)")
    return message


# -- lists -------------------------------------------------------------------------------------


def _load_lists(document: _Document, ruleset: RuleSet) -> list[Problem]:
    lists = document.body.get("lists")
    if lists is None:
        return []
    if not isinstance(lists, source.Located):
        return [Problem(document.file, document.body.line_of("lists"), "", "`lists` maps names to lists of values")]
    problems = []
    for list_name, value in lists.items():
        try:
            _load_list(document.file, list_name, value, lists.line_of(list_name), ruleset)
        except Invalid as exc:
            problems.append(Problem(document.file, exc.line, "", exc.message))
    return problems


def _load_list(file: str, list_name: Any, value: Any, line: int, ruleset: RuleSet) -> None:
    if not isinstance(list_name, str) or not LIST_NAME.fullmatch(list_name):
        raise Invalid(line, f"list name {list_name!r}: use lowercase letters, digits, _")
    items, append = _list_value(list_name, value, line)
    _check_items(list_name, items)
    if append and list_name not in ruleset.lists:
        raise Invalid(line, f"no list {list_name!r} to append to (lists: {', '.join(sorted(ruleset.lists))}); "
                            f"to define it, write `{list_name}: [...]`")
    if not append and list_name in ruleset.lists:
        first = ruleset.list_parts.get(list_name, [ListPart("an earlier file", 0)])[0].source
        raise Invalid(line, f"list {list_name!r} is already defined at {first}; to add items write "
                            f"`{list_name}: {{items: [...], append: true}}`")
    ruleset.lists.setdefault(list_name, []).extend(items)
    ruleset.list_parts.setdefault(list_name, []).append(ListPart(f"{file}:{line}", len(items)))


def _list_value(list_name: str, value: Any, line: int) -> tuple[list[Any], bool]:
    """The items and whether they extend an existing list: `[...]`, or `{items: [...], append: true}`."""
    append = False
    if isinstance(value, source.Located):
        require_known_keys(value, ("items", "append"), f" in list {list_name!r}")
        if "items" not in value:
            raise Invalid(value.line, f"list {list_name!r}: `items` is required ({{items: [...], append: true}})")
        append = value.get("append", False)
        if not isinstance(append, bool):
            raise Invalid(value.line_of("append"), "`append` is true or false")
        line, value = value.line_of("items"), value["items"]
    if not isinstance(value, list) or not all(isinstance(v, str | int) for v in value):
        raise Invalid(line, f"list {list_name!r} must be a list of strings or numbers")
    return value, append


def _port_problem(item: Any) -> str:
    if isinstance(item, int) and not isinstance(item, bool) and 0 <= item <= 65535:
        return ""
    return f"{item!r} is not a port: a number from 0 to 65535"


def _network_problem(item: Any) -> str:
    try:
        ipaddress.ip_network(item if isinstance(item, str) else "-", strict=False)
    except ValueError:
        return f"{item!r} is not a network: write a CIDR like 10.0.0.0/8 or 2001:db8::/32"
    return ""


# Lists whose items code reads as one type: a wrong item would otherwise be skipped in silence.
ITEM_CHECKS: dict[str, Callable[[Any], str]] = {
    ALLOWED_EGRESS: _network_problem, "miner_pool_ports": _port_problem, "standard_tunnel_ports": _port_problem}


def _check_items(list_name: str, items: list[Any]) -> None:
    check = ITEM_CHECKS.get(list_name)
    if check is None:
        return
    for index, item in enumerate(items):
        problem = check(item)
        if problem:
            line = items.line_of_item(index) if isinstance(items, source.LocatedList) else 0
            raise Invalid(line, f"list {list_name!r}: {problem}")


# -- rules -------------------------------------------------------------------------------------


def _load_rules(document: _Document, ruleset: RuleSet) -> list[Problem]:
    rules = document.body.get("rules", source.LocatedList())
    if not isinstance(rules, source.LocatedList):
        return [Problem(document.file, document.body.line_of("rules"), "", "`rules` is a list of rules")]
    problems = []
    for index, raw in enumerate(rules):
        try:
            _apply(document.file, raw, rules.line_of_item(index), ruleset)
        except Invalid as exc:
            rule_id = raw.get("id", "") if isinstance(raw, dict) else ""
            problems.append(Problem(document.file, exc.line, str(rule_id), exc.message))
    return problems


def _apply(file: str, raw: Any, line: int, ruleset: RuleSet) -> None:
    """One `rules:` entry: a new rule, or a change to one defined before it."""
    if not isinstance(raw, source.Located):
        raise Invalid(line, "each rule is a mapping")
    if "rule" in raw and "id" not in raw:
        raise Invalid(raw.line_of("rule"), "a rule is named by `id:` here, not `rule:` (Falco's)")
    if is_tuning(raw):
        _replace(ruleset, tune(file, raw, ruleset.by_id(rule_id_of(raw)), ruleset.lists))
        return
    existing = ruleset.by_id(raw["id"]) if isinstance(raw.get("id"), str) else None
    if existing is not None:
        raise Invalid(raw.line, f"already defined at {existing.source}; to change it use override: or enabled:")
    ruleset.rules.append(definition(file, raw, ruleset.lists))


def _replace(ruleset: RuleSet, rule: Rule) -> None:
    index = next(i for i, r in enumerate(ruleset.rules) if r.id == rule.id)
    ruleset.rules[index] = rule
