"""The aggregator's side of the API: journal each alert, then publish alerts, sensor gaps and events.

Runs in the aggregator's thread. An alert is committed to the journal before anyone can see
it; so is a sensor gap (its caller journals it). Events are converted only while some
subscriber wants events.
"""

from __future__ import annotations

from sensor import events as ev
from sensor.aggregator.aggregator import Observation
from sensor.aggregator.process_table import Process
from sensor.api import convert
from sensor.api.broker import Item
from sensor.api.state import ApiState
from sensor.api.v1 import gpusentry_pb2 as pb


class Publisher:
    def __init__(self, state: ApiState) -> None:
        self.state = state
        self.clock = state.clock

    def publish(self, obs: Observation) -> None:
        state = self.state
        items = []
        for alert in obs.alerts:
            message = convert.alert(alert, self.clock)
            message.cursor = state.journal.append(message)  # durable before it is published
            items.append(Item(0, 0, alert=message))
        broker = state.broker
        if broker.wants_events:
            items += self._events(obs, broker.wants_lineage)
        broker.publish(items)

    def publish_gap(self, gap: pb.SensorGap) -> None:
        """Hand a sensor gap just journaled (Journal.append_gap) to live subscribers.

        Call it from the thread that publishes alerts, right after journaling it: subscribers
        rely on journaled records arriving in cursor order."""
        self.state.broker.publish([Item(0, 0, sensor_gap=gap)])

    def _events(self, obs: Observation, lineage: bool) -> list[Item]:
        if isinstance(obs.event, ev.GpuCounters):
            with self.state.lock:
                messages = list(convert.gpu_activity(self.state.aggregator.gpu, self.state.aggregator.table,
                                                     obs.event, self.clock))
            return [Item(0, 0, event=m, exec_id=m.process.exec_id, exe=m.process.exe) for m in messages]
        if obs.process is None:
            return []
        keys = self._lineage(obs.process) if lineage else frozenset()
        return [Item(0, 0, event=message, exec_id=obs.process.exec_id, exe=message.process.exe, lineage=keys,
                     cgroup_id=obs.process.cgroup_id) for message in convert.events(obs, self.clock)]

    def _lineage(self, proc: Process) -> frozenset[str]:
        with self.state.lock:
            ancestors = self.state.aggregator.table.ancestors(proc.key)
        return frozenset(f"{p.pid}:{p.start_ns}" for p in [proc, *ancestors])
