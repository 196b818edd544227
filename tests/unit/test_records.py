"""Decoding of raw kernel records, built byte by byte as the BPF programs lay them out."""

from __future__ import annotations

import ctypes
import os
import socket
import struct
from pathlib import Path

from sensor import events as ev
from sensor.probe import records
from tests.waiting import wait_until


def argv_blob(args: list[tuple[bytes, bool]]) -> bytes:
    out = b""
    for arg, cut in args:
        out += struct.pack("<H", len(arg) | (records.ARGV_ENTRY_CUT if cut else 0)) + arg
    return out


def test_split_argv_keeps_empty_and_binary_arguments() -> None:
    blob = argv_blob([(b"ssh", False), (b"", False), (b"\xff\xfe", False), (b"a" * 256, True)])
    assert records.split_argv(blob, 4) == [b"ssh", b"", b"\xff\xfe", b"a" * 256]


def test_split_argv_stops_at_a_short_blob() -> None:
    blob = argv_blob([(b"one", False), (b"two", False)])
    assert records.split_argv(blob[:-2], 2) == [b"one", b"t"]
    assert records.split_argv(blob, 5) == [b"one", b"two"]


def test_exec_record_decodes() -> None:
    rec = records.ExecRec()
    rec.hdr.type, rec.hdr.flags, rec.hdr.ts, rec.hdr.tgid, rec.hdr.tid = ev.Kind.EXEC, 0x3, 77, 9, 9
    rec.result, rec.ppid, rec.uid, rec.gid, rec.argc = 0, 1, 1000, 100, 70
    rec.exe_dev = (8 << 20) | 1
    rec.comm = b"ssh"
    rec.filename = b"/usr/bin/ssh"
    blob = argv_blob([(b"ssh", False), (b"-R", False)])
    rec.argv_count, rec.argv_size = 2, len(blob)
    raw = bytes(rec) + blob
    rec.hdr.size = len(raw)
    buf = ctypes.create_string_buffer(raw, len(raw))
    event = records.decode(ctypes.addressof(buf), len(raw))
    assert isinstance(event, ev.Exec)
    assert (event.ts, event.tgid, event.filename, event.argv, event.argc, event.flags) == (
        77, 9, b"/usr/bin/ssh", [b"ssh", b"-R"], 70, 0x3)
    assert event.exe_dev == os.makedev(8, 1)


def test_short_record_is_rejected() -> None:
    raw = bytes(records.ForkRec())[:20]
    buf = ctypes.create_string_buffer(raw, len(raw))
    try:
        records.decode(ctypes.addressof(buf), len(raw))
    except records.RecordError as exc:
        assert "shorter than its header" in str(exc)
    else:
        raise AssertionError("no error")


def sockaddr_in(ip: str, port: int) -> bytes:
    return struct.pack("<H", socket.AF_INET) + struct.pack(">H", port) + socket.inet_aton(ip) + bytes(8)


def test_decode_sockaddr_families() -> None:
    assert records.decode_sockaddr(sockaddr_in("203.0.113.5", 3333), 16) == ("inet", "203.0.113.5", 3333)
    six = struct.pack("<H", socket.AF_INET6) + struct.pack(">H", 443) + bytes(4) + \
        socket.inet_pton(socket.AF_INET6, "2001:db8::1") + bytes(4)
    assert records.decode_sockaddr(six, 28) == ("inet6", "2001:db8::1", 443)
    unix = struct.pack("<H", socket.AF_UNIX) + b"/run/x.sock\0junk"
    assert records.decode_sockaddr(unix, len(unix)) == ("unix", "/run/x.sock", 0)
    abstract = struct.pack("<H", socket.AF_UNIX) + b"\0hidden"
    assert records.decode_sockaddr(abstract, len(abstract)) == ("unix", "@hidden", 0)
    assert records.decode_sockaddr(b"\x00", 1) == ("unspec", "", 0)
    assert records.decode_sockaddr(struct.pack("<H", 17) + bytes(14), 16) == ("af17", "", 0)
    # a short address for its family is not read past its length
    assert records.decode_sockaddr(sockaddr_in("192.0.2.1", 1)[:6], 6) == ("inet", "", 0)


def test_argv_from_procfs_is_held_to_the_same_limits(tmp_path: Path) -> None:
    import subprocess

    from sensor.probe.probe import _fill_argv_from_procfs
    from sensor.probe.procfs import read_cmdline
    from sensor.probe.program import ProbeConfig

    argv = ["/bin/sleep", "30", *[f"a{i}" * 20 for i in range(10)]]
    # sleep itself rejects the extra arguments and exits at once, racing the read. A shell under
    # exactly this argv stays: it runs its argv[1], a script named "30", which waits on stdin.
    (tmp_path / "30").write_text("read -r _\n")
    with subprocess.Popen(argv, executable="/bin/sh", cwd=tmp_path, stdin=subprocess.PIPE) as holder:
        try:
            wait_until(lambda: read_cmdline(holder.pid) == [a.encode() for a in argv], what="the new image's argv")
            event = ev.Exec(ts=0, tgid=holder.pid, tid=holder.pid, result=0, ppid=1, uid=0, gid=0, cgroup_id=0,
                            start_ns=0, comm=b"sleep", filename=b"/bin/sleep", argv=[], argc=0,
                            flags=ev.ARGV_UNREAD, exe_dev=0, exe_ino=0, old_tid=holder.pid)
            _fill_argv_from_procfs(event, ProbeConfig(max_args=4, arg_len=16))
            assert holder.poll() is None  # still there when its argv was read
        finally:
            holder.kill()
    assert event.argv == [b"/bin/sleep", b"30", b"a0" * 8, b"a1" * 8]
    assert event.argc == 12
    assert event.flags == ev.ARGV_UNREAD | ev.ARGV_TRUNCATED | ev.ARG_CUT | ev.ARGV_FROM_PROCFS


def test_gpu_ioctl_flags_match_the_header() -> None:
    """The gpu_ioctl_rec flag bits in sensor/bpf/events.h and their Python names agree."""
    import re

    from sensor.probe.program import BPF_DIR

    header = (BPF_DIR / "events.h").read_text()
    defined = {name: int(value, 16) for name, value in re.findall(r"^#define (GPU_\w+) (0x[0-9A-Fa-f]+)", header, re.M)}
    assert defined == {"GPU_XFER": 0x1, "GPU_STATUS_READ": 0x2, "GPU_BY_NAME": 0x4}
    assert {name: getattr(ev, name) for name in defined} == defined
