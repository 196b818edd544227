"""Conditions on a fact's fields: a small, fixed set of operators, compiled once at load.

    port: 3333                          equals (a bare scalar)
    port: [3333, 4444]                  in (a bare list)
    port: {in: $miner_pool_ports}       in a named list from `lists:`
    remote_host: {not: {cidr: [10.0.0.0/8, 192.168.0.0/16]}}
    cmdline: {regex: 'stratum\\+tcp://'}
    port: {range: [3300, 3400]}         also spelled port_range
    exe: {suffix: /ssh}   name: {prefix: xmr}   argv: {contains: "-R"}   name: {glob: "kworker*"}

A condition on a list-valued field (argv, directions) holds when it holds for any element;
`not` negates the whole condition. Nothing here is evaluated as code. Regular expressions
run against strings the adversary controls, so a pattern with nested repetition (the shape of
catastrophic backtracking, like (a+)+) is refused at load, and at most MAX_TEXT characters
are searched.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import re
import re._parser as sre_parse  # the stdlib's own regex parser, to inspect a pattern's shape
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

MAX_TEXT = 4096
MAX_PATTERN = 1000
OPERATORS = ("equals", "in", "prefix", "suffix", "contains", "glob", "regex", "cidr", "range", "port_range", "not")
_REPEATS = {sre_parse.MAX_REPEAT, sre_parse.MIN_REPEAT, getattr(sre_parse, "POSSESSIVE_REPEAT", None)}


class ConditionError(ValueError):
    """A condition that cannot be compiled; the message says what is wrong."""


class Condition(Protocol):
    def holds(self, value: Any) -> bool: ...


def _scalar_test(value: Any, test: Any) -> bool:
    if isinstance(value, list | tuple | frozenset | set):
        return any(test(v) for v in value)
    return bool(test(value))


def _same(value: Any, expected: Any) -> bool:
    if isinstance(value, bool) or isinstance(expected, bool):
        return value is expected
    return value == expected or (type(value) is not type(expected) and str(value) == str(expected))


@dataclass(frozen=True)
class Equals:
    expected: Any

    def holds(self, value: Any) -> bool:
        return _scalar_test(value, lambda v: _same(v, self.expected))


@dataclass(frozen=True)
class In:
    choices: tuple[Any, ...]

    def holds(self, value: Any) -> bool:
        return _scalar_test(value, lambda v: any(_same(v, c) for c in self.choices))


@dataclass(frozen=True)
class Text:
    operator: str  # prefix, suffix, contains, glob
    operand: str

    def holds(self, value: Any) -> bool:
        return _scalar_test(value, self._one)

    def _one(self, value: Any) -> bool:
        text = str(value)[:MAX_TEXT]
        if self.operator == "prefix":
            return text.startswith(self.operand)
        if self.operator == "suffix":
            return text.endswith(self.operand)
        if self.operator == "contains":
            return self.operand in text
        return fnmatch.fnmatchcase(text, self.operand)


@dataclass(frozen=True)
class Regex:
    pattern: re.Pattern[str]

    def holds(self, value: Any) -> bool:
        return _scalar_test(value, lambda v: self.pattern.search(str(v)[:MAX_TEXT]) is not None)


@dataclass(frozen=True)
class Cidr:
    networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]

    def holds(self, value: Any) -> bool:
        return _scalar_test(value, self._one)

    def _one(self, value: Any) -> bool:
        try:
            address = ipaddress.ip_address(str(value))
        except ValueError:
            return False
        return any(address in net for net in self.networks)


@dataclass(frozen=True)
class Range:
    low: int
    high: int

    def holds(self, value: Any) -> bool:
        return _scalar_test(value, lambda v: isinstance(v, int) and not isinstance(v, bool) and
                            self.low <= v <= self.high)


@dataclass(frozen=True)
class Not:
    inner: Condition

    def holds(self, value: Any) -> bool:
        return not self.inner.holds(value)


def compile_condition(spec: Any, lists: Mapping[str, Sequence[Any]]) -> Condition:
    if isinstance(spec, Mapping):
        if len(spec) != 1:
            raise ConditionError(f"a condition has one operator, not {len(spec)} ({', '.join(map(str, spec))})")
        operator, operand = next(iter(spec.items()))
        return _operator(str(operator), operand, lists)
    if isinstance(spec, list):
        return In(tuple(_scalars(spec, "in")))
    return Equals(_scalar(spec, "equals"))


def _operator(operator: str, operand: Any, lists: Mapping[str, Sequence[Any]]) -> Condition:
    if operator == "equals":
        return Equals(_scalar(operand, operator))
    if operator == "in":
        return In(tuple(_scalars(_resolve(operand, lists), operator)))
    if operator in ("prefix", "suffix", "contains", "glob"):
        return Text(operator, _text(operand, operator))
    if operator == "regex":
        return Regex(_regex(_text(operand, operator)))
    if operator == "cidr":
        return Cidr(tuple(_network(n) for n in _scalars(_resolve(operand, lists), operator)))
    if operator in ("range", "port_range"):
        return _range(operand, operator)
    if operator == "not":
        return Not(compile_condition(operand, lists))
    raise ConditionError(f"unknown operator {operator!r} (operators: {', '.join(OPERATORS)})")


def _resolve(operand: Any, lists: Mapping[str, Sequence[Any]]) -> Any:
    if isinstance(operand, str) and operand.startswith("$"):
        name = operand[1:]
        if name not in lists:
            raise ConditionError(f"no list named {name!r} (lists: {', '.join(sorted(lists)) or 'none'})")
        return list(lists[name])
    return operand


def _scalar(value: Any, operator: str) -> Any:
    if not isinstance(value, str | int | bool | float):
        raise ConditionError(f"`{operator}` takes a plain value, not {type(value).__name__}")
    return value


def _scalars(values: Any, operator: str) -> list[Any]:
    if not isinstance(values, list):
        values = [values]
    if not values:
        raise ConditionError(f"`{operator}` needs at least one value")
    return [_scalar(v, operator) for v in values]


def _text(value: Any, operator: str) -> str:
    if not isinstance(value, str) or not value:
        raise ConditionError(f"`{operator}` takes a non-empty string")
    return value


def _network(value: Any) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        return ipaddress.ip_network(str(value), strict=False)
    except ValueError as exc:
        raise ConditionError(f"`cidr`: {value!r} is not a network ({exc})") from exc


def _range(operand: Any, operator: str) -> Range:
    if isinstance(operand, str) and "-" in operand:
        parts: list[Any] = operand.split("-", 1)
    elif isinstance(operand, list):
        parts = list(operand)
    else:
        raise ConditionError(f"`{operator}` takes [low, high] or \"low-high\"")
    try:
        low, high = (int(p) for p in parts)
    except (TypeError, ValueError) as exc:
        raise ConditionError(f"`{operator}` bounds must be integers") from exc
    if len(parts) != 2 or low > high:
        raise ConditionError(f"`{operator}` takes two bounds, low first")
    return Range(low, high)


def _regex(pattern: str) -> re.Pattern[str]:
    if len(pattern) > MAX_PATTERN:
        raise ConditionError(f"`regex` is longer than {MAX_PATTERN} characters")
    try:
        parsed = sre_parse.parse(pattern)
        compiled = re.compile(pattern)
    except re.error as exc:
        raise ConditionError(f"`regex` {pattern!r} does not compile: {exc}") from exc
    if _nested_repeat(parsed, inside=False):
        raise ConditionError(f"`regex` {pattern!r} repeats a repetition (like (a+)+), which can take exponential time")
    return compiled


def _nested_repeat(items: Any, inside: bool) -> bool:
    for op, arg in items:
        if op in _REPEATS:
            _, high, sub = arg
            if inside and high != 1:
                return True
            if _nested_repeat(sub, inside or high > 1):
                return True
        elif op == sre_parse.SUBPATTERN:
            if _nested_repeat(arg[-1], inside):
                return True
        elif op == sre_parse.BRANCH:
            if any(_nested_repeat(branch, inside) for branch in arg[1]):
                return True
        elif op in (sre_parse.ASSERT, sre_parse.ASSERT_NOT) and _nested_repeat(arg[1], inside):
            return True
    return False
