"""What the API serves: the aggregator's state, the journal, the broker, the open incidents,
and the lock the aggregator holds while it changes that state."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from sensor.aggregator.aggregator import Aggregator
from sensor.api.convert import Clock
from sensor.api.handover import Handover
from sensor.capture import StreamMeta
from sensor.incidents import IncidentBook
from sensor.journal import Journal
from sensor.sinks.process import SinkProcess
from sensor.sinks.sinkset import SinkSet


@dataclass
class ApiState:
    aggregator: Aggregator
    journal: Journal
    broker: Handover  # to the API's stream process, which serves subscribers
    meta: StreamMeta
    lock: threading.Lock = field(default_factory=threading.Lock)
    started_ns: int = field(default_factory=time.time_ns)
    rule_files: list[str] = field(default_factory=list)
    load_errors: list[str] = field(default_factory=list)  # from the last reload that failed
    incidents: IncidentBook = field(default_factory=IncidentBook)  # the publisher's: alerts join them there
    config_file: str = ""  # the configuration file in effect, if one was read
    sinks: SinkProcess | SinkSet | None = None  # the configured sinks: the publisher wakes them, status reads them

    def __post_init__(self) -> None:
        # What the journal held before this API existed was never published to subscribers:
        # a subscriber without a since_cursor starts after it.
        self.broker.journaled_before(self.journal.last_cursor())

    @property
    def clock(self) -> Clock:
        return Clock(self.meta.boot_to_wall_ns)
