"""Facts: what the aggregator concluded from events, for rules and subscribers.

An event says what the kernel saw; a fact says what it means ("this process opened a reverse
tunnel", "this connection leaves the host", "this process acquired GPU compute"). Every fact
names the process it is about. Rules match facts by kind (`KIND`) and by their fields; the
fields are plain values (str, int, bool, lists of str) so that rule conditions stay simple.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

from sensor.aggregator.process_table import ProcKey


@dataclass(slots=True, frozen=True)
class Fact:
    KIND: ClassVar[str]
    ts: int
    process: ProcKey

    def fields(self) -> dict[str, Any]:
        """The fact's own fields, for rules and output (not ts and process)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in ("ts", "process")}

    def summary(self) -> str:
        return self.KIND


@dataclass(slots=True, frozen=True)
class ExecFact(Fact):
    KIND = "exec"
    exe: str
    name: str  # basename of the executable
    argv: tuple[str, ...]
    cmdline: str  # argv joined by spaces
    uid: int
    loginuid: int
    known_tool: str  # what the binary is by identity ("ssh" for a renamed ssh), or ""

    def summary(self) -> str:
        return f"exec {self.cmdline[:200]}"


@dataclass(slots=True, frozen=True)
class ConnectFact(Fact):
    KIND = "connect"
    family: str
    address: str
    port: int
    result: int
    destination: str  # loopback, local (this host), lan (direct route), egress (via a gateway), unreachable
    allowed: bool  # in the configured egress allowlist

    def summary(self) -> str:
        return f"connect {self.address}:{self.port} ({self.destination})"


@dataclass(slots=True, frozen=True)
class EgressFact(Fact):
    """A connection that leaves the host through a gateway, to a destination not allowed."""

    KIND = "egress"
    address: str
    port: int
    result: int
    allowed: bool

    def summary(self) -> str:
        return f"egress {self.address}:{self.port}"


@dataclass(slots=True, frozen=True)
class TunnelFact(Fact):
    KIND = "tunnel"
    tool: str
    reverse: bool
    directions: tuple[str, ...]
    remote_host: str
    remote_user: str
    remote_port: int
    forwards: tuple[str, ...]  # each "direction listen -> target", as given
    scope: str  # the tunnel scope label its process and what comes back through it carry
    evidence: str = "argv"  # what showed it: argv, config (ssh's files) or behaviour (bytes relayed)
    via: tuple[str, ...] = ()  # ssh's ProxyJump hops, or "ProxyCommand": a tunnel inside a tunnel
    # evidence "behaviour" (sensor/aggregator/relay.py): the local services the relay reached (or,
    # for a forward tunnel, where it took local clients), and the bytes it moved to and from them
    local_services: tuple[str, ...] = ()
    relayed_bytes: int = 0

    def summary(self) -> str:
        spec = ", ".join(self.forwards)
        return f"{self.tool} tunnel ({'/'.join(self.directions)}) to {self.remote_host or '?'}: {spec}"


@dataclass(slots=True, frozen=True)
class MinerFact(Fact):
    KIND = "miner"
    reason: str  # pool-port, stratum-url, pool-host, miner-binary, miner-flag
    detail: str  # the port, URL, host, binary or flag that matched
    address: str = ""
    port: int = 0

    def summary(self) -> str:
        return f"miner signal: {self.reason} {self.detail}"


@dataclass(slots=True, frozen=True)
class InternalScanFact(Fact):
    KIND = "internal_scan"
    destinations: int  # distinct internal destinations in the window
    window_s: int

    def summary(self) -> str:
        return f"{self.destinations} internal destinations in {self.window_s}s"


@dataclass(slots=True, frozen=True)
class GpuOpenFact(Fact):
    KIND = "gpu_open"
    device: str
    minor: int
    by_name: bool

    def summary(self) -> str:
        return f"opened {self.device}"


@dataclass(slots=True, frozen=True)
class GpuCompute(Fact):
    """A process allocated a compute-class object successfully: it can run GPU kernels."""

    KIND = "gpu_compute"
    handle: int
    klass: int
    architecture: str
    channel_class: int  # the GPFIFO channel it was allocated under; 0 when that channel was not seen
    device_id: int  # the GPU (deviceId of the device object above it); -1 when not seen
    # Allocated on a file recognised only by its name (a FUSE or plain file named like nvidiactl),
    # not by its device number: not a real NVIDIA device. False when not told (hand-built facts).
    by_name: bool = False
    held_bytes: int = 0  # device memory the process held then (as of the last counter read, each second)

    def summary(self) -> str:
        how = " (by name)" if self.by_name else ""
        return f"GPU compute class {self.klass:#x} ({self.architecture}) on GPU {self.device_id}{how}"


@dataclass(slots=True, frozen=True)
class GpuProfile(Fact):
    """What a process with GPU compute holds and does, from the driver's ioctls (sensor/aggregator/
    gpu.py): emitted periodically while its compute lives, and at once on a notable change."""

    KIND = "gpu_profile"
    held_bytes: int  # device memory held now (allocations less the frees matched by handle)
    peak_bytes: int  # most device memory held at once
    allocated_bytes: int  # device memory allocated since the process began
    system_bytes: int  # host memory the driver allocated for the GPU, held now
    registered_bytes: int  # host memory the process registered with the driver, held now
    virtual_bytes: int  # GPU virtual address space reserved, held now
    uvm_mapped_bytes: int  # bytes mapped into the UVM address space, since the process began
    allocations: int  # memory allocations (every family but UVM mappings) since the process began
    frees: int
    alloc_rate: int  # memory allocations per minute, since the previous profile
    ioctl_rate: int  # driver ioctls per second, since the previous profile
    compute_objects: int  # live compute objects
    channels: int  # live GPFIFO channels
    compute_age_s: int  # seconds since its first compute object
    devices: int  # GPUs (nvidiaN) it opened
    uvm_gpus: int  # GPUs it registered with UVM
    peer_objects: int  # peer-to-peer objects (NV50_P2P) and fabric (NVLink) exports allocated
    untracked: int  # allocations whose free cannot be matched (the kernel's handle map was full)

    def summary(self) -> str:
        return (f"GPU profile: {_gib(self.held_bytes)} held (peak {_gib(self.peak_bytes)}), "
                f"{self.compute_objects} compute, {self.channels} channels, compute for {self.compute_age_s}s, "
                f"{self.alloc_rate} allocations/min")


def _gib(size: int) -> str:
    return f"{size / (1 << 30):.2f} GiB"


@dataclass(slots=True, frozen=True)
class GpuLaunches(Fact):
    """Kernel launches of a watched process, counted in libcuda's launch entry points over one
    window (sensor/aggregator/launches.py). Only processes already suspicious are watched."""

    KIND = "gpu_launches"
    launches_per_s: int  # over the window
    distinct_kernels: int  # distinct kernel functions launched since the watch began (capped: 256)
    window_s: int
    launches: int  # in the window
    total_launches: int  # since the watch began
    watch: str  # "watching", or why the watch ended: exit, duration, hit budget, stopped

    def summary(self) -> str:
        ended = "" if self.watch == "watching" else f"; watch ended: {self.watch}"
        return f"{self.launches_per_s} kernel launches/s, {self.distinct_kernels} distinct kernels{ended}"


FACT_KINDS: dict[str, type[Fact]] = {
    cls.KIND: cls
    for cls in (ExecFact, ConnectFact, EgressFact, TunnelFact, MinerFact, InternalScanFact, GpuOpenFact, GpuCompute,
                GpuProfile, GpuLaunches)
}


def field_names(kind: str) -> set[str]:
    return {f.name for f in dataclasses.fields(FACT_KINDS[kind])} - {"ts", "process"}
