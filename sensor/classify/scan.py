"""A process reaching many distinct internal destinations in a short time: a scan.

A sliding window per process of the distinct (address, port) destinations on the local
subnet or this host (not loopback), reported at most once per window when the count reaches
the threshold. State is bounded: at most `threshold` destinations per process, and at most
MAX_PROCESSES processes (the least recently active go first).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass, field

INTERNAL = {"lan", "local"}
MAX_PROCESSES = 4096


@dataclass
class _Recent:
    seen: dict[tuple[str, int], int] = field(default_factory=dict)  # destination -> last ts
    reported_at: int | None = None


class ScanDetector:
    def __init__(self, threshold: int = 32, window_s: int = 10) -> None:
        self.threshold = threshold
        self.window_s = window_s
        self._window_ns = window_s * 1_000_000_000
        self._recent: OrderedDict[Hashable, _Recent] = OrderedDict()

    def on_connect(self, process: Hashable, address: str, port: int, destination: str, ts: int) -> int | None:
        """The number of distinct destinations when this connect makes it a scan, else None."""
        if destination not in INTERNAL:
            return None
        recent = self._recent.setdefault(process, _Recent())
        self._recent.move_to_end(process)
        if len(self._recent) > MAX_PROCESSES:
            self._recent.popitem(last=False)
        cutoff = ts - self._window_ns
        recent.seen = {d: t for d, t in recent.seen.items() if t >= cutoff}
        if len(recent.seen) < self.threshold or (address, port) in recent.seen:
            recent.seen[(address, port)] = ts
        due = recent.reported_at is None or ts - recent.reported_at > self._window_ns
        if len(recent.seen) >= self.threshold and due:
            recent.reported_at = ts
            return len(recent.seen)
        return None
