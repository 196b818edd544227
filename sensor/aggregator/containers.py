"""The containers the probe has described, by key: what a process's `container` names.

Bounded like every table here: past `max_containers` the least recently described go first
(counted), and a process whose container was forgotten keeps its key, shown without names.
"""

from __future__ import annotations

from collections import OrderedDict

from sensor import events as ev


class ContainerTable:
    def __init__(self, max_containers: int = 4096) -> None:
        self.max_containers = max_containers
        self._by_key: OrderedDict[str, ev.Container] = OrderedDict()
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._by_key)

    def on_frame(self, frame: ev.Container) -> None:
        self._by_key[frame.key] = frame
        self._by_key.move_to_end(frame.key)
        while len(self._by_key) > self.max_containers:
            self._by_key.popitem(last=False)
            self.evicted += 1

    def get(self, key: str) -> ev.Container | None:
        return self._by_key.get(key) if key else None
