"""How every benchmark reports a figure: the median, and the spread over the runs."""

from __future__ import annotations

import statistics


def spread(values: list[float], fmt: str = "{:.3f}") -> str:
    """`median [min-max]`, each formatted with `fmt`."""
    return f"{fmt.format(statistics.median(values))} [{fmt.format(min(values))}-{fmt.format(max(values))}]"
