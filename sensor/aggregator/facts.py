"""Facts: what the aggregator concluded from events, for rules and subscribers.

An event says what the kernel saw; a fact says what it means ("this process acquired GPU
compute", "this exec opened a reverse tunnel"). Each fact names the process it is about.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from sensor.aggregator.process_table import ProcKey


@dataclass(slots=True, frozen=True)
class Fact:
    KIND: ClassVar[str]
    ts: int
    process: ProcKey


@dataclass(slots=True, frozen=True)
class GpuCompute(Fact):
    """A process allocated a compute-class object successfully: it can run GPU kernels."""

    KIND = "gpu_compute"
    handle: int
    klass: int
    architecture: str
    channel_class: int  # the GPFIFO channel it was allocated under; 0 when that channel was not seen
    device_id: int  # the GPU (deviceId of the device object above it); -1 when not seen
