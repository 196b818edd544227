"""Watching the running agent's API for what a simulation expects, and saying what arrived.

The subscription is open (the agent has said "subscribed") before the simulation acts, so
nothing it raises can be missed; each outcome is read from what arrived by a deadline.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import grpc

from sensor.api.client import sensor_stub
from sensor.api.v1 import gpusentry_pb2 as pb
from sensor.errors import RuntimeFailure
from sensor.simulate.steps import Expectation


@dataclass
class Outcome:
    expected: Expectation
    alerts: dict[str, pb.Alert] = field(default_factory=dict)  # the first of each expected rule
    facts: set[str] = field(default_factory=set)
    incidents: dict[str, pb.Incident] = field(default_factory=dict)  # each incident's latest version

    @property
    def missing_rules(self) -> list[str]:
        return [rule for rule in self.expected.rules if rule not in self.alerts]

    @property
    def missing_facts(self) -> list[str]:
        return [kind for kind in self.expected.facts if kind not in self.facts]

    def joined(self) -> pb.Incident | None:
        """The one incident holding every expected alert, when there is one."""
        ids = {alert.incident_id for alert in self.alerts.values()}
        if self.missing_rules or len(ids) != 1:
            return None
        incident = self.incidents.get(ids.pop())
        return incident if incident is not None and set(self.expected.rules) <= set(incident.rule_ids) else None

    @property
    def ok(self) -> bool:
        return not self.missing_rules and not self.missing_facts and (
            not self.expected.one_incident or self.joined() is not None)

    def lines(self) -> list[str]:
        out = [f"alert     {rule:36} {'arrived' if rule in self.alerts else 'MISSING'}" for rule in self.expected.rules]
        out += [f"fact      {kind:36} {'arrived' if kind in self.facts else 'MISSING'}" for kind in self.expected.facts]
        if self.expected.one_incident:
            incident = self.joined()
            shown = f"arrived: {incident.id} ({incident.alerts_total} alerts)" if incident else "MISSING"
            out.append(f"incident  {'one, with all ' + str(len(self.expected.rules)) + ' alerts':36} {shown}")
        return out


class Subscription:
    """A subscription to alerts, incidents and (when expected) facts, read on a thread."""

    def __init__(self, channel: grpc.Channel, expected: Expectation) -> None:
        kinds = [pb.FactKind.Value(kind) for kind in expected.facts]
        request = pb.SubscribeRequest(alerts=True, incidents=True, facts=bool(kinds), fact_kinds=kinds)
        self.outcome = Outcome(expected)
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self._changed = threading.Event()
        self._error: grpc.RpcError | None = None
        self._stream = sensor_stub(channel).Subscribe(request)
        threading.Thread(target=self._read, daemon=True).start()

    def wait_subscribed(self, timeout: float) -> None:
        if not self._subscribed.wait(timeout) or self._error is not None:
            detail = self._error.details() if self._error is not None else f"no answer in {timeout:g}s"
            raise RuntimeFailure(f"could not subscribe to the agent's alerts: {detail}")

    def wait(self, timeout: float) -> Outcome:
        """The outcome, as soon as it is complete or when `timeout` runs out."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                if self.outcome.ok:
                    return self.outcome
            left = deadline - time.monotonic()
            if left <= 0 or self._error is not None:
                return self.outcome
            self._changed.wait(min(left, 0.5))
            self._changed.clear()

    def close(self) -> None:
        self._stream.cancel()

    def _read(self) -> None:
        try:
            for response in self._stream:
                with self._lock:
                    self._take(response)
                self._changed.set()
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.CANCELLED:
                self._error = exc
        finally:
            self._subscribed.set()
            self._changed.set()

    def _take(self, response: pb.SubscribeResponse) -> None:
        item, outcome = response.WhichOneof("item"), self.outcome
        if item == "subscribed":
            self._subscribed.set()
        elif item == "alert" and response.alert.rule_id in outcome.expected.rules:
            outcome.alerts.setdefault(response.alert.rule_id, response.alert)
        elif item == "incident":
            outcome.incidents[response.incident.id] = response.incident
        elif item == "facts":
            outcome.facts.update(pb.FactKind.Name(fact.kind) for fact in response.facts.facts)
