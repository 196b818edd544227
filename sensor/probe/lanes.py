"""The probe's queue between its ring-buffer reader and its writer: two bounded lanes.

The decisive lane carries what the kernel put on the decisive ring (sensor/bpf/common.bpf.c)
and the probe's own frames; the bulk lane the rest. Each lane has its own bound, so a flood
that fills the bulk lane (its frames dropped and counted) leaves the decisive lane its room:
the kernel's separation holds through user space. The writer takes both lanes at once and
merges them by time, so that without a flood the stream is in the order things happened.
"""

from __future__ import annotations

import heapq
import threading
from collections import deque

Item = tuple[int, bytes | None]  # (boot-clock ns, frame); None: the writer stops
LAST = 1 << 63  # the time of the writer's stop: after everything


class Lanes:
    def __init__(self, size: int) -> None:
        self.size = size
        self._lanes: tuple[deque[Item], deque[Item]] = (deque(), deque())  # decisive, bulk
        self._ready = threading.Condition()

    def put(self, item: Item, decisive: bool, timeout: float | None = None, wake: bool = True) -> bool:
        """Add to a lane; False when it stayed full (no wait without a timeout). Without `wake`,
        the writer sees it at the next `wake` (a batch: one wake-up for all of it)."""
        lane = self._lanes[0 if decisive else 1]
        with self._ready:
            if len(lane) >= self.size and not (timeout and self._ready.wait_for(
                    lambda: len(lane) < self.size, timeout)):
                return False
            lane.append(item)
            if wake:
                self._ready.notify_all()
        return True

    def wake(self) -> None:
        """Let the writer take what was put without a wake-up."""
        with self._ready:
            self._ready.notify_all()

    def take(self, most: int) -> list[bytes | None]:
        """Wait for frames; then up to `most` from each lane, merged oldest first (each lane is
        in time order already)."""
        with self._ready:
            self._ready.wait_for(lambda: bool(self._lanes[0] or self._lanes[1]))
            decisive, bulk = ([lane.popleft() for _ in range(min(len(lane), most))] for lane in self._lanes)
            self._ready.notify_all()  # room again, for a blocked put
        return [frame for _, frame in heapq.merge(decisive, bulk, key=_time)]


def _time(item: Item) -> int:
    return item[0]
