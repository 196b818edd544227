"""What the probe's verdicts at the source cost on the ring-buffer path, per event.

Each exec now gets its binary judged (BinaryIdentity.identify: open /proc/PID/exe, fstat, a
cache lookup by device, inode, size and mtime) and each connection its route (Router.route:
a cache hit, or a RTM_GETROUTE round trip to the kernel on a miss). The baseline, in the
same run, is the work the probe already did for every record: decoding a kernel exec record
and encoding its frame. Reported: microseconds per call and the ratio to the baseline,
median [min-max] over --repeat runs.

    .venv/bin/python -m bench.verdicts [--calls 2000] [--repeat 7]
"""

from __future__ import annotations

import argparse
import ctypes
import ipaddress
import os
import struct
import subprocess
import time
from collections.abc import Callable

from bench.figures import spread
from sensor import events as ev
from sensor.probe import records
from sensor.probe.identity import BinaryIdentity
from sensor.probe.routes import Router

US = "{:.2f}"


def exec_record() -> ctypes.Array[ctypes.c_char]:
    rec = records.ExecRec()
    rec.hdr.type, rec.hdr.ts, rec.hdr.tgid, rec.hdr.tid = ev.Kind.EXEC, 1, 2, 2
    rec.comm, rec.filename = b"ssh", b"/usr/bin/ssh"
    blob = b"".join(struct.pack("<H", len(a)) + a for a in (b"ssh", b"-fNR", b"9000:localhost:22", b"host"))
    rec.argv_count, rec.argv_size, rec.argc = 4, len(blob), 4
    raw = bytes(rec) + blob
    return ctypes.create_string_buffer(raw, len(raw))


def per_call_us(work: Callable[[int], object], calls: int) -> float:
    start = time.perf_counter()
    for i in range(calls):
        work(i)
    return (time.perf_counter() - start) / calls * 1e6



def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    buffer = exec_record()
    sleeper = subprocess.Popen(["/usr/bin/sleep", "600"])
    st = os.stat("/usr/bin/sleep")
    identity = BinaryIdentity()
    router = Router()
    misses = [str(ipaddress.ip_address("198.51.100.0") + i) for i in range(256)]

    def baseline(_: int) -> object:
        return ev.encode(records.decode(ctypes.addressof(buffer), len(buffer)))

    def judge(_: int) -> object:
        return identity.identify(sleeper.pid, st.st_dev, st.st_ino, b"/usr/bin/sleep")

    def route_hit(_: int) -> object:
        return router.route("198.51.100.7")

    def route_miss(i: int) -> object:
        router._cache.clear()  # every call asks the kernel
        return router.route(misses[i % len(misses)])

    cases = {"decode + encode (baseline)": baseline, "binary identity (exec)": judge,
             "route, cached (connect)": route_hit, "route, asked (connect)": route_miss}
    results: dict[str, list[float]] = {name: [] for name in cases}
    try:
        for _ in range(args.repeat):
            for name, work in cases.items():
                results[name].append(per_call_us(work, args.calls))
    finally:
        sleeper.kill()
        sleeper.wait()
        router.close()
    base = results["decode + encode (baseline)"]
    print(f"per event on the probe's ring-buffer path, us per call, median [min-max] over {args.repeat} runs "
          f"of {args.calls}")
    for name, values in results.items():
        ratios = [v / b for v, b in zip(values, base, strict=True)]
        print(f"  {name:28} {spread(values, US):>22} us   x{spread(ratios, US)} the baseline")


if __name__ == "__main__":
    main()
