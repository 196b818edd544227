"""What the probe's verdicts at the source cost on the ring-buffer path, per event.

Each exec now gets its binary judged (BinaryIdentity.identify: open /proc/PID/exe, fstat, a
cache lookup by device, inode, size and mtime) and each connection its route (Router.route:
a cache hit, or a RTM_GETROUTE round trip to the kernel on a miss); an exec of ssh gets its
configuration files evaluated (SshConfigReader.directives: open the process's root, its passwd
entry, environ and cwd, each file through openat2, then the evaluation), measured with a user
config of 20 Host blocks that includes the system's /etc/ssh/ssh_config, files unchanged since
the last exec (the usual case: stat'ed, not read again nor parsed) and files read and parsed
afresh. The baseline, in the
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
import tempfile
import time
from collections.abc import Callable

from bench.figures import spread
from sensor import events as ev
from sensor.classify.ssh_config import MAX_FILE_BYTES, _parsed_kept
from sensor.probe import records
from sensor.probe.identity import BinaryIdentity
from sensor.probe.routes import Router
from sensor.probe.ssh_files import SshConfigReader

US = "{:.2f}"


def exec_record() -> ctypes.Array[ctypes.c_char]:
    rec = records.ExecRec()
    rec.hdr.type, rec.hdr.ts, rec.hdr.tgid, rec.hdr.tid = ev.Kind.EXEC, 1, 2, 2
    rec.comm, rec.filename = b"ssh", b"/usr/bin/ssh"
    blob = b"".join(struct.pack("<H", len(a)) + a for a in (b"ssh", b"-fNR", b"9000:localhost:22", b"host"))
    rec.argv_count, rec.argv_size, rec.argc = 4, len(blob), 4
    raw = bytes(rec) + blob
    return ctypes.create_string_buffer(raw, len(raw))


def ssh_user_config() -> str:
    """A user's ssh config as they grow: 20 hosts with a few options each, then the system's."""
    blocks = [f"Host host{i} host{i}.example.com\n  HostName 198.51.100.{i}\n  User deploy\n  Port 22\n"
              f"  IdentityFile ~/.ssh/id_host{i}\n  ServerAliveInterval 30\n" for i in range(20)]
    blocks.append("Host *\n  Include /etc/ssh/ssh_config\n")
    fd, path = tempfile.mkstemp(prefix="bench-ssh-", suffix=".conf")
    os.write(fd, "".join(blocks).encode())
    os.close(fd)
    return path


def ssh_hostile_config() -> str:
    """The most an evaluation reads (MAX_TOTAL_CHARS), as short lines that all parse into distinct
    forwards: a file that includes itself, read and parsed afresh (as if changed since the last exec)."""
    fd, path = tempfile.mkstemp(prefix="bench-ssh-hostile-", suffix=".conf")
    lines = (f"RemoteForward {port % 65535 + 1} a{port}:2\n" for port in range(MAX_FILE_BYTES // 20))
    text = (f"Include {path}\n" + "".join(lines))[:MAX_FILE_BYTES - 30]
    os.write(fd, text.encode())
    os.close(fd)
    return path


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
    ssh_configs = SshConfigReader()
    user_config = ssh_user_config()
    ssh_argv = [b"ssh", b"-F", os.fsencode(user_config), b"-N", b"host7"]
    hostile_config = ssh_hostile_config()
    hostile_argv = [b"ssh", b"-F", os.fsencode(hostile_config), b"-N", b"host7"]

    def baseline(_: int) -> object:
        return ev.encode(records.decode(ctypes.addressof(buffer), len(buffer)))

    def judge(_: int) -> object:
        return identity.identify(sleeper.pid, st.st_dev, st.st_ino, b"/usr/bin/sleep")

    def route_hit(_: int) -> object:
        return router.route("198.51.100.7")

    def route_miss(i: int) -> object:
        router._cache.clear()  # every call asks the kernel
        return router.route(misses[i % len(misses)])

    def ssh_config(_: int) -> object:
        return ssh_configs.directives(sleeper.pid, 0, ssh_argv, "ssh")

    def ssh_config_read(_: int) -> object:
        ssh_configs._cache.clear()  # every file read again
        _parsed_kept.cache_clear()  # and parsed again
        return ssh_configs.directives(sleeper.pid, 0, ssh_argv, "ssh")

    def ssh_config_hostile(_: int) -> object:
        ssh_configs._cache.clear()
        _parsed_kept.cache_clear()
        return ssh_configs.directives(sleeper.pid, 0, hostile_argv, "ssh")

    cases = {"decode + encode (baseline)": baseline, "binary identity (exec)": judge,
             "route, cached (connect)": route_hit, "route, asked (connect)": route_miss,
             "ssh config, unchanged (ssh)": ssh_config, "ssh config, read (ssh)": ssh_config_read,
             "ssh config, hostile (ssh)": ssh_config_hostile}
    results: dict[str, list[float]] = {name: [] for name in cases}
    try:
        for _ in range(args.repeat):
            for name, work in cases.items():
                results[name].append(per_call_us(work, args.calls))
    finally:
        sleeper.kill()
        sleeper.wait()
        router.close()
        os.unlink(user_config)
        os.unlink(hostile_config)
    base = results["decode + encode (baseline)"]
    print(f"per event on the probe's ring-buffer path, us per call, median [min-max] over {args.repeat} runs "
          f"of {args.calls}")
    for name, values in results.items():
        ratios = [v / b for v, b in zip(values, base, strict=True)]
        print(f"  {name:28} {spread(values, US):>22} us   x{spread(ratios, US)} the baseline")


if __name__ == "__main__":
    main()
