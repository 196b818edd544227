"""bench.cost's floor: the agent's BPF programs with a bare Python reader that only counts.

Loads the programs as the probe does (in a child, sensor/probe/loader.py), reads both rings in
place on the probe's own schedule and does nothing else with a record: what any Python reader
pays per record. Prints "ready" once attached, and the count when stopped (SIGINT).
"""

from __future__ import annotations

import os
import select
import signal
import struct
import threading

from sensor.probe import program
from sensor.probe.loader import load_in_child
from sensor.probe.probe import FLUSH_S, POLL_BATCH
from sensor.probe.ringbuf import RingReader


def main() -> None:
    loaded = load_in_child(program.ProbeConfig())
    loaded.maps["self_tgids"].update(struct.pack("<I", os.getpid()), b"\x01")
    rings = [RingReader(name, loaded.maps[name].fd, loaded.maps[name].max_entries) for name in ("decisive", "events")]
    count = 0

    def counted(_data: int, _size: int) -> None:
        nonlocal count
        count += 1

    poller = select.poll()
    for ring in rings:
        poller.register(ring.fd, select.POLLIN)
    stopped = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stopped.set())
    print("ready", flush=True)
    while not stopped.is_set():
        poller.poll(FLUSH_S * 1000)
        while sum(ring.read(counted, POLL_BATCH) for ring in rings):
            pass
    print(count, flush=True)


if __name__ == "__main__":
    main()
