"""Conditions on a fact's fields: a small, fixed set of operators, compiled once at load.

    port: 3333                          equals (a bare scalar)
    port: [3333, 4444]                  in (a bare list)
    port: {in: $miner_pool_ports}       in a named list from `lists:`
    remote_host: {not: {cidr: [10.0.0.0/8, 192.168.0.0/16]}}
    cmdline: {regex: 'stratum\\+tcp://'}
    port: {range: [3300, 3400]}         also spelled port_range
    exe: {suffix: /ssh}   name: {prefix: xmr}   argv: {contains: "-R"}   name: {glob: "kworker*"}

A condition on a list-valued field (argv, directions) holds when it holds for any element;
`not` negates the whole condition. Nothing here is evaluated as code.

Regular expressions run against text the adversary controls (argv, names, up to MAX_TEXT
characters each), so they run on RE2, whose search time is linear in the text whatever the
pattern: there is no pattern shape to guess at and refuse. RE2's syntax is close to Python's,
without the constructs that need backtracking (backreferences, lookahead and lookbehind,
atomic groups and possessive repeats, conditionals) and with repeat counts up to 1000; a
pattern that uses one is refused at load, naming it. `\\d \\w \\s \\b` are ASCII, `\\z` is
Python's `\\Z`, and `$` is the end of the text. Each pattern's memory (program and search
caches) is bounded by RE2_MAX_MEM; a pattern too large for it is refused at load too.

Conditions compare equal when they test the same thing (a reload keeps the open sequences of
rules whose steps are unchanged): a regex by its pattern text, a value with its type.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import re2

MAX_TEXT = 4096
MAX_PATTERN = 1000
# RE2's default is 8 MiB per pattern; half of it still takes \pL{200} or .{1000} (the longest repeat),
# and keeps a few dozen rule patterns (and their search caches) in bounded memory.
RE2_MAX_MEM = 4 << 20
OPERATORS = ("equals", "in", "prefix", "suffix", "contains", "glob", "regex", "cidr", "range", "port_range", "not",
             "domain")
RE2_REFUSES = ("backreferences, lookahead and lookbehind, atomic groups and possessive repeats, conditionals, "
               "repeat counts over 1000")


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


def _typed(value: Any) -> tuple[str, Any]:
    """A scalar with its type: 1, 1.0, "1" and true test different things, and 1 == True in Python."""
    return type(value).__name__, value


@dataclass(frozen=True, eq=False)
class Equals:
    expected: Any

    def holds(self, value: Any) -> bool:
        return _scalar_test(value, lambda v: _same(v, self.expected))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Equals) and _typed(self.expected) == _typed(other.expected)

    def __hash__(self) -> int:
        return hash(_typed(self.expected))


@dataclass(frozen=True, eq=False)
class In:
    choices: tuple[Any, ...]

    def holds(self, value: Any) -> bool:
        return _scalar_test(value, lambda v: any(_same(v, c) for c in self.choices))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, In) and self._typed_set() == other._typed_set()

    def __hash__(self) -> int:
        return hash(self._typed_set())

    def _typed_set(self) -> frozenset[tuple[str, Any]]:
        return frozenset(_typed(c) for c in self.choices)


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


class _Searcher(Protocol):
    def search(self, text: bytes) -> object | None: ...


@dataclass(frozen=True)
class Regex:
    """Compiled with RE2 on creation (ConditionError if RE2 cannot run it); equal by pattern text."""

    pattern: str
    _compiled: _Searcher = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_compiled", _compile_re2(self.pattern))

    def holds(self, value: Any) -> bool:
        return _scalar_test(value, self._one)

    def _one(self, value: Any) -> bool:
        # Bytes, so that RE2 need not map offsets back to characters; surrogatepass because str()
        # of a field may hold a lone surrogate, which UTF-8 cannot encode (RE2 skips it as invalid).
        text = str(value)[:MAX_TEXT].encode("utf-8", "surrogatepass")
        return self._compiled.search(text) is not None


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
class Domain:
    """A host name that is one of the domains or below one (`a.pinggy.io` is in `pinggy.io`);
    letter case and a final dot do not matter. An IP address is in none."""

    domains: frozenset[str]

    def holds(self, value: Any) -> bool:
        return _scalar_test(value, self._one)

    def _one(self, value: Any) -> bool:
        labels = str(value)[:MAX_TEXT].lower().rstrip(".").split(".")
        return any(".".join(labels[i:]) in self.domains for i in range(len(labels)))


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
        return Regex(_text(operand, operator))
    if operator == "cidr":
        return Cidr(tuple(_network(n) for n in _scalars(_resolve(operand, lists), operator)))
    if operator in ("range", "port_range"):
        return _range(operand, operator)
    if operator == "domain":
        return Domain(frozenset(str(d).lower().rstrip(".") for d in _scalars(_resolve(operand, lists), operator)))
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


def _options() -> Any:
    options = re2.Options()
    options.max_mem = RE2_MAX_MEM
    options.never_capture = True  # a condition only asks whether it matches: no submatch work
    options.log_errors = False  # a refused pattern is reported once, by the loader, not on stderr
    return options


def _compile_re2(pattern: str) -> _Searcher:
    if len(pattern) > MAX_PATTERN:
        raise ConditionError(f"`regex` is longer than {MAX_PATTERN} characters")
    try:
        pattern.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ConditionError(f"`regex` {pattern!r} does not compile: {exc.reason} at {exc.start}") from exc
    try:
        compiled: _Searcher = re2.compile(pattern, _options())
    except re2.error as exc:
        raise ConditionError(_refusal(pattern, _reason(exc))) from exc
    return compiled


def _reason(exc: Exception) -> str:
    reason = exc.args[0] if exc.args else ""
    return reason.decode("utf-8", "backslashreplace") if isinstance(reason, bytes) else str(reason)


def _refusal(pattern: str, reason: str) -> str:
    if reason.startswith("pattern too large"):
        return f"`regex` {pattern!r} needs more than RE2's {RE2_MAX_MEM >> 20} MiB a pattern: {reason}"
    if not _python_accepts(pattern):
        return f"`regex` {pattern!r} does not compile: {reason}"
    return (f"`regex` {pattern!r} uses a construct RE2 (the linear-time engine rules use) does not support: "
            f"{reason}; refused: {RE2_REFUSES}")


def _python_accepts(pattern: str) -> bool:
    """Whether the pattern is valid in Python's dialect: tells a typo from a construct RE2 refuses.
    Only compiled, never searched."""
    try:
        re.compile(pattern)
    except (re.error, RecursionError, OverflowError):
        return False
    return True
