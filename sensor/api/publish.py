"""The aggregator's side of the API: group alerts into incidents, journal them, then publish
alerts, incident versions, sensor gaps, events and facts.

Runs in the aggregator's thread. An alert is committed to the journal before anyone can see
it; so is each incident version, right after the alerts that changed it, and a sensor gap (its
caller journals it). Events and facts are converted only while some subscriber wants them.
"""

from __future__ import annotations

from collections.abc import Callable

from sensor import events as ev
from sensor.aggregator.aggregator import Observation
from sensor.aggregator.process_table import Process
from sensor.api import convert
from sensor.api.handover import Item
from sensor.api.state import ApiState
from sensor.api.v1 import gpusentry_pb2 as pb
from sensor.incidents import IncidentBook
from sensor.rules.model import RuleSet


class Publisher:
    def __init__(self, state: ApiState) -> None:
        self.state = state
        self.clock = state.clock
        self._ruleset = self._rules()  # what the API's stream process checks subscriptions against

    def publish(self, obs: Observation, alerts: list[pb.Alert], book: IncidentBook) -> list[pb.Incident]:
        """Journal and publish one observation's alerts (converted: convert.alert) and the
        incidents they join; the incidents' new versions, one per incident touched.

        The alerts join their incidents before anything is journaled, so that an alert another
        alert of the same observation merged elsewhere is journaled with the incident it ends
        up in, and an incident that lived only for a moment is never journaled."""
        if not alerts and not self._wanted():  # most observations: nothing to journal, nobody to tell
            self._rules_changed()
            return []
        touched = book.add_all(alerts)
        journal = self.state.journal
        items = []
        for alert in alerts:
            alert.cursor = journal.append(alert)  # durable before it is published
            items.append(Item(alert=_copy(alert)))
        versions = []
        for incident_id in touched:
            version = book.render(incident_id)  # after its alerts got their cursors
            version.cursor = journal.append_incident(version, book.take_absorbed(incident_id))
            versions.append(version)
            items.append(Item(incident=version))
        broker, sinks = self.state.broker, self.state.sinks
        if alerts and sinks is not None:
            sinks.journaled()  # each sink reads the new records from the journal, after its own cursor
        items += self._live(obs, "event", broker.wants_events, self._events)
        items += self._live(obs, "fact", broker.wants_facts, self._facts)
        broker.publish(items)
        self._rules_changed()
        return versions

    def _wanted(self) -> bool:
        """Whether a subscriber or a sink takes events or facts."""
        broker, sinks = self.state.broker, self.state.sinks
        return broker.wants_events or broker.wants_facts or \
            (sinks is not None and (sinks.wants_events or sinks.wants_facts))

    def _rules_changed(self) -> None:
        """After a reload, subscriptions are checked against the new rules (in another process)."""
        ruleset = self._rules()
        if ruleset is not self._ruleset:
            self._ruleset = ruleset
            self.state.broker.rules([r.id for r in ruleset.rules] if ruleset is not None else [])

    def _rules(self) -> RuleSet | None:
        detector = self.state.aggregator.detector
        return detector.engine.ruleset if detector is not None else None

    def _live(self, obs: Observation, kind: str, subscribed: bool,
              convert: Callable[[Observation, bool], list[Item]]) -> list[Item]:
        """Events or facts (never journaled), converted once for the subscribers and the sinks that
        take them; the items for the subscribers."""
        sinks = self.state.sinks
        to_sinks = sinks is not None and (sinks.wants_events if kind == "event" else sinks.wants_facts)
        if not (subscribed or to_sinks):
            return []
        items = convert(obs, self.state.broker.wants_lineage)
        if to_sinks and sinks is not None:
            sinks.offer([item for i in items if (item := getattr(i, kind)) is not None], kind)
        return items if subscribed else []

    def publish_gap(self, gap: pb.SensorGap) -> None:
        """Hand a sensor gap just journaled (Journal.append_gap) to live subscribers and sinks.

        Call it from the thread that publishes alerts, right after journaling it: subscribers
        rely on journaled records arriving in cursor order."""
        self.state.broker.publish([Item(sensor_gap=gap)])
        if self.state.sinks is not None:
            self.state.sinks.journaled()

    def _events(self, obs: Observation, lineage: bool) -> list[Item]:
        if isinstance(obs.event, ev.GpuCounters):
            with self.state.lock:
                messages = list(convert.gpu_activity(self.state.aggregator.gpu, self.state.aggregator.table,
                                                     obs.event, self.clock))
            return [Item(event=m, exec_id=m.process.exec_id, exe=m.process.exe) for m in messages]
        if obs.process is None:
            return []
        keys = self._lineage(obs.process) if lineage else frozenset()
        return [Item(event=message, exec_id=obs.process.exec_id, exe=message.process.exe, lineage=keys,
                     cgroup_id=obs.process.cgroup_id) for message in convert.events(obs, self.clock)]

    def _facts(self, obs: Observation, lineage: bool) -> list[Item]:
        proc = obs.process
        keys = self._lineage(proc) if lineage and proc is not None else frozenset()
        cgroup_id = proc.cgroup_id if proc is not None else 0
        return [Item(fact=message, exec_id=message.process.exec_id, exe=message.process.exe, lineage=keys,
                     cgroup_id=cgroup_id) for message in convert.facts(obs, self.clock)]

    def _lineage(self, proc: Process) -> frozenset[str]:
        with self.state.lock:
            ancestors = self.state.aggregator.table.ancestors(proc.key)
        return frozenset(f"{p.pid}:{p.start_ns}" for p in [proc, *ancestors])


def _copy(alert: pb.Alert) -> pb.Alert:
    """The alert as journaled, for subscribers: the incident book keeps the original and may
    change its incident_id later (a merge), which must not reach a message another thread is
    sending."""
    copy = pb.Alert()
    copy.CopyFrom(alert)
    return copy
