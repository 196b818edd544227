"""The API's stream process, over real gRPC and real processes: the bytes it builds, a full
hand-over (counted, and a Gap to every subscriber with the missed alerts replayed), and its
death (the aggregator's watchdog names it)."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from sensor.aggregator.aggregator import Aggregator
from sensor.aggregator.detector import DetectorConfig
from sensor.api import wire
from sensor.api.client import sensor_stub
from sensor.api.handover import Handover
from sensor.api.publish import Publisher
from sensor.api.server import ApiServer, Endpoint
from sensor.api.state import ApiState
from sensor.api.v1 import gpusentry_pb2 as pb
from sensor.capture import StreamMeta
from sensor.journal import Journal
from sensor.rules.loader import load_rules
from tests.unit.test_api import SEC, SEQUENCE_RULE, SITE_RULES, Harness, Reader, _status, wait_subscribers
from tests.waiting import wait_until

HANDOVER_DROPS = "items not handed to the API's stream process"


def harness(tmp_path: Path, handover: Handover) -> Harness:
    rules_file = tmp_path / "site.yaml"
    rules_file.write_text(SITE_RULES + SEQUENCE_RULE)
    state = ApiState(Aggregator(rules=load_rules([rules_file]), config=DetectorConfig()),
                     Journal(tmp_path / "journal.db"), handover, StreamMeta(boot_to_wall_ns=1_700_000_000 * SEC))
    server = ApiServer(state, Endpoint(socket=tmp_path / "sensor.sock"))
    server.start()
    return Harness(state, server, Publisher(state), tmp_path / "sensor.sock")


@pytest.fixture
def tiny(tmp_path: Path) -> Iterator[Harness]:
    """A hand-over that holds next to nothing: a page of pipe, no bytes pending."""
    api = harness(tmp_path, Handover(pipe_bytes=4096, pending_bytes=0))
    api.spawn(1, 10, "/usr/bin/bash")
    yield api
    api.server.stop()
    api.state.journal.close()


def test_responses_made_of_bytes_are_the_messages_protobuf_makes() -> None:
    events = [pb.Event(kind=pb.EVENT_KIND_CONNECT, connect=pb.Connect(port=p)) for p in (1, 443, 65535)]
    elements = [wire.field(wire.ELEMENT_FIELD, e.SerializeToString()) for e in events]
    assert pb.SubscribeResponse.FromString(wire.batch(wire.EVENTS_FIELD, elements)) == \
        pb.SubscribeResponse(events=pb.Events(events=events))
    facts = [pb.Fact(kind=pb.FACT_KIND_EXEC)] * 300  # a length over one varint byte
    elements = [wire.field(wire.ELEMENT_FIELD, f.SerializeToString()) for f in facts]
    assert pb.SubscribeResponse.FromString(wire.batch(wire.FACTS_FIELD, elements)) == \
        pb.SubscribeResponse(facts=pb.Facts(facts=facts))
    alert = pb.Alert(rule_id="r", cursor=300)
    assert pb.SubscribeResponse.FromString(wire.field(wire.ALERT_FIELD, alert.SerializeToString())) == \
        pb.SubscribeResponse(alert=alert)


def test_a_full_handover_is_counted_and_every_subscriber_gets_a_gap_then_the_alerts(tiny: Harness) -> None:
    api = tiny
    stub = sensor_stub(api.channel())
    readers = [Reader(stub, pb.SubscribeRequest(events=True, alerts=True)) for _ in range(2)]
    wait_subscribers(api, 2)
    wait_until(lambda: api.state.broker.wants_events, what="the aggregator told that events are wanted")
    stream = api.server.stream
    assert stream is not None
    os.kill(stream.pid, signal.SIGSTOP)  # the stream process takes nothing: the pipe fills
    try:
        for i in range(2000):
            api.connect(10, 1000 + i % 50)
        api.spawn(10, 40, "/bin/marker", "lost")  # an alert the hand-over drops too
    finally:
        os.kill(stream.pid, signal.SIGCONT)
    dropped = sum(api.state.broker.stats.dropped)
    assert dropped > 0 and api.state.broker.stats.dropped.alerts == 1
    api.spawn(10, 41, "/bin/marker", "fence")
    for reader in readers:
        items = reader.until(lambda i: i.kind == "alert" and i.alert.processes[0].process.pid == 41)
        gaps = [i.gap for i in items if i.kind == "gap"]
        assert len(gaps) == 1 and gaps[0].reason.startswith("the sensor handed items over faster than the API")
        assert gaps[0].missed_alerts == 1 and gaps[0].missed_events > 0
        # the dropped alert, from the journal, then the fence: each once, in order
        assert [i.alert.cursor for i in items if i.kind == "alert"] == [1, 3]
        reader.close()
    counted = {d.what: d.count for d in _status(api.channel()).drops}
    assert [n for what, n in counted.items() if what.startswith(HANDOVER_DROPS)] == [dropped]


def test_the_stream_process_dying_is_a_failure_that_names_it(tmp_path: Path) -> None:
    api = harness(tmp_path, Handover())
    try:
        assert api.server.failure() is None
        stream = api.server.stream
        assert stream is not None
        os.kill(stream.pid, signal.SIGKILL)
        failure = wait_until(api.server.failure, what="the failure noticed")
        assert failure == f"the API's stream process stopped (pid {stream.pid}, killed by signal 9)"
    finally:
        api.server.stop()
        api.state.journal.close()
