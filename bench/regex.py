"""What a rule regex costs on the worst text a monitored process can hand it.

Each pattern is one that makes a backtracking engine take exponential time, compiled as a
rule's condition (`{regex: ...}`, so RE2 with the rules' options) and evaluated through
Condition.holds on a 4096-character argv string (MAX_TEXT) built to be its worst case: one
character short of a match, so the whole text is searched. The baseline, in the same run and
on the same text, is a plain `contains` condition. Reported: microseconds per evaluation and
the ratio to the baseline, median [min-max] over --repeat runs. For contrast, stdlib `re`
on (a|a)*b over a few short inputs (each character doubles its time, so they stay short).

    .venv/bin/python -m bench.regex [--calls 200] [--repeat 7]
"""

from __future__ import annotations

import argparse
import re
import time
from collections.abc import Callable
from functools import partial
from typing import Any

from bench.figures import spread
from sensor.rules.conditions import MAX_TEXT, Condition, compile_condition

# pattern -> its worst case: a text of MAX_TEXT characters that it searches to the end and does not match
HOSTILE: dict[str, str] = {
    "(a|a)*b": "a" * (MAX_TEXT - 1) + "!",
    "(a+)+b": "a" * (MAX_TEXT - 1) + "!",
    "(a|aa)*c": "a" * (MAX_TEXT - 1) + "!",
    "(x+x+)+y": "x" * (MAX_TEXT - 1) + "!",
    "(.*a){20}": "a" * 19 + "-" * (MAX_TEXT - 19),  # one `a` short
    "(.*a){20}b": "a" * (MAX_TEXT - 1) + "!",
    r"^(\w+\s?)*$": ("word " * MAX_TEXT)[:MAX_TEXT - 1] + "!",
    r"stratum\+tcp://": "stratum+tcp:/" * (MAX_TEXT // 13) + "-" * (MAX_TEXT % 13),  # an ordinary rule
}
BASELINE = {"contains": "stratum+tcp://"}
SHORT = (20, 21, 22)  # characters of `a` before the `!` for stdlib re


def per_call_us(condition: Condition, text: str, calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        condition.holds(text)
    return (time.perf_counter() - start) / calls * 1e6



def measure(calls: int, repeat: int) -> dict[str, tuple[list[float], list[float], list[float]]]:
    """pattern -> (us per call, the baseline's us per call on the same text, their ratio), one each per repeat."""
    conditions = {pattern: compile_condition({"regex": pattern}, {}) for pattern in HOSTILE}
    baseline = compile_condition(BASELINE, {})
    results: dict[str, tuple[list[float], list[float], list[float]]] = {p: ([], [], []) for p in HOSTILE}
    for _ in range(repeat):
        for pattern, text in HOSTILE.items():
            assert len(text) == MAX_TEXT and not conditions[pattern].holds(text), pattern
            base = per_call_us(baseline, text, calls)
            took = per_call_us(conditions[pattern], text, calls)
            for values, value in zip(results[pattern], (took, base, took / base), strict=True):
                values.append(value)
    return results


def seconds(run: Callable[[], Any]) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def stdlib_contrast(calls: int) -> list[str]:
    backtracking = re.compile("(a|a)*b")
    linear = compile_condition({"regex": "(a|a)*b"}, {})
    lines, previous = [], 0.0
    for length in SHORT:
        text = "a" * length + "!"
        took = seconds(partial(backtracking.search, text))
        growth = f" (x{took / previous:.1f} for one more character)" if previous else ""
        lines.append(f"  {len(text)} characters: stdlib re {took * 1e3:,.0f} ms{growth}; "
                     f"RE2 condition {per_call_us(linear, text, calls):.2f} us")
        previous = took
    return lines


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    results = measure(args.calls, args.repeat)
    print(f"rule regex conditions (RE2) on a {MAX_TEXT}-character hostile argv string: us per evaluation, "
          f"median [min-max] over {args.repeat} runs of {args.calls}, against `contains` on the same text")
    print(f"  {'pattern':<18} {'regex us':>20} {'contains us':>18}   ratio")
    for pattern, (times, base, ratios) in results.items():
        us = "{:.1f}"
        print(f"  {pattern:<18} {spread(times, us):>20} {spread(base, us):>18}   x{spread(ratios, '{:.2f}')}")
    print("stdlib re (backtracking) on (a|a)*b over a's then '!', one run each:")
    for line in stdlib_contrast(args.calls):
        print(line)


if __name__ == "__main__":
    main()
