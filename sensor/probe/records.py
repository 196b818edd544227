"""ctypes mirrors of sensor/bpf/events.h, and the decoding of each kernel record into an Event.

These classes are the only Python description of the kernel records;
tests/kernel/test_layout.py compiles events.h for BPF and checks every field's offset and
size against them. The decoders run in the ring-buffer callback: they copy what they need
out of the record at once (the buffer is reused when the callback returns).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import socket
import struct
from collections.abc import Callable
from typing import NamedTuple

from sensor import events as ev

FILENAME_LEN = 512
SOCKADDR_LEN = 112
ARGV_ENTRY_CUT = 0x8000

u16, u32, u64, s32 = ctypes.c_uint16, ctypes.c_uint32, ctypes.c_uint64, ctypes.c_int32


class RecHdr(ctypes.Structure):
    _fields_ = [("type", u16), ("flags", u16), ("size", u32), ("ts", u64), ("tgid", u32), ("tid", u32)]


class ExecRec(ctypes.Structure):
    """struct exec_rec without its variable-length argv[] (which starts at sizeof)."""

    _fields_ = [
        ("hdr", RecHdr),
        ("result", s32),
        ("ppid", u32),
        ("uid", u32),
        ("gid", u32),
        ("cgroup_id", u64),
        ("start_ns", u64),
        ("exe_ino", u64),
        ("exe_dev", u32),
        ("old_tid", u32),
        ("argc", u32),
        ("argv_count", u32),
        ("argv_size", u32),
        ("loginuid", u32),
        ("sessionid", u32),
        ("netns", u32),
        ("exe_size", u64),
        ("exe_ctime_ns", u64),
        ("comm", ctypes.c_char * 16),
        ("filename", ctypes.c_char * FILENAME_LEN),
    ]


class ForkRec(ctypes.Structure):
    _fields_ = [("hdr", RecHdr), ("child_pid", u32), ("parent_tgid", u32), ("child_start_ns", u64)]


class ExitRec(ctypes.Structure):
    _fields_ = [("hdr", RecHdr), ("exit_code", s32), ("_pad", u32), ("start_ns", u64)]


class ConnectRec(ctypes.Structure):
    _fields_ = [
        ("hdr", RecHdr),
        ("result", s32),
        ("fd", s32),
        ("addrlen", u32),
        ("netns", u32),
        ("sockaddr", ctypes.c_uint8 * SOCKADDR_LEN),
    ]


class TcpRec(ctypes.Structure):
    _fields_ = [
        ("hdr", RecHdr),
        ("family", u16),
        ("sport", u16),
        ("dport", u16),
        ("_pad", u16),
        ("netns", u32),
        ("_pad2", u32),
        ("saddr", ctypes.c_uint8 * 16),
        ("daddr", ctypes.c_uint8 * 16),
        ("sk", u64),
        ("sk_gen", u64),
    ]


class AcceptRec(ctypes.Structure):
    _fields_ = [
        ("hdr", RecHdr),
        ("fd", s32),
        ("listen_fd", s32),
        ("addrlen", u32),
        ("netns", u32),
        ("sockaddr", ctypes.c_uint8 * SOCKADDR_LEN),
        ("sk", u64),
        ("sk_gen", u64),
        ("sk_family", u16),
        ("local_port", u16),
        ("peer_port", u16),
        ("_pad", u16),
        ("local_addr", ctypes.c_uint8 * 16),
        ("peer_addr", ctypes.c_uint8 * 16),
    ]


class GpuOpenRec(ctypes.Structure):
    _fields_ = [
        ("hdr", RecHdr),
        ("fd", s32),
        ("kind", ctypes.c_uint8),
        ("by_name", ctypes.c_uint8),
        ("_pad", u16),
        ("minor", u32),
        ("_pad2", u32),
    ]


class GpuIoctlRec(ctypes.Structure):
    _fields_ = [
        ("hdr", RecHdr),
        ("kind", ctypes.c_uint8),
        ("reason", ctypes.c_uint8),
        ("_pad", u16),
        ("fd", s32),
        ("minor", u32),
        ("cmd", u32),
        ("nr", u32),
        ("size", u32),
        ("ret", s32),
        ("status", u32),
        ("h_root", u32),
        ("h_parent", u32),
        ("h_object", u32),
        ("h_class", u32),
        ("ctrl_cmd", u32),
        ("param0", u32),
        ("param1", u32),
        ("_pad2", u32),
        ("uuid", ctypes.c_uint8 * 16),
    ]


class GpuCountKey(ctypes.Structure):
    _fields_ = [("tgid", u32), ("cmd_id", u32), ("kind", ctypes.c_uint8), ("_pad", ctypes.c_uint8 * 3)]


class GpuCountValue(ctypes.Structure):
    _fields_ = [("calls", u64), ("errors", u64), ("suppressed", u64), ("last_ts", u64)]


GPU_MEM_FAMILIES = len(ev.GPU_MEM_FAMILIES)  # enum gpu_mem_family


class GpuMemValue(ctypes.Structure):
    _fields_ = [("allocated", u64 * GPU_MEM_FAMILIES), ("freed", u64 * GPU_MEM_FAMILIES),
                ("allocs", u64 * GPU_MEM_FAMILIES), ("frees", u64 * GPU_MEM_FAMILIES), ("peak_device", u64),
                ("untracked", u64), ("last_ts", u64)]


class SockBytesValue(ctypes.Structure):
    _fields_ = [("sent", u64), ("received", u64), ("sk_gen", u64), ("last_ts", u64), ("tgid", u32), ("closed", u32)]


class SockGenKey(ctypes.Structure):
    _fields_ = [("sk", u64), ("sk_gen", u64)]


# record type -> (C struct name in events.h, mirror); the layout test walks this.
MIRRORS: dict[ev.Kind, tuple[str, type[ctypes.Structure]]] = {
    ev.Kind.EXEC: ("exec_rec", ExecRec),
    ev.Kind.FORK: ("fork_rec", ForkRec),
    ev.Kind.EXIT: ("exit_rec", ExitRec),
    ev.Kind.CONNECT: ("connect_rec", ConnectRec),
    ev.Kind.TCP_ESTABLISHED: ("tcp_rec", TcpRec),
    ev.Kind.ACCEPT: ("accept_rec", AcceptRec),
    ev.Kind.GPU_OPEN: ("gpu_open_rec", GpuOpenRec),
    ev.Kind.GPU_IOCTL: ("gpu_ioctl_rec", GpuIoctlRec),
}
# map key and value structs, checked the same way
MAP_MIRRORS: dict[str, type[ctypes.Structure]] = {"gpu_count_key": GpuCountKey, "gpu_count": GpuCountValue,
                                                   "gpu_mem": GpuMemValue, "sock_bytes": SockBytesValue,
                                                   "sock_gen_key": SockGenKey}

# The key a socket's name is hashed with: made when the probe starts, never written anywhere, so
# that no frame, capture or client ever holds a kernel address (KASLR) nor can compute one.
_SOCKET_KEY = os.urandom(32)


def socket_id(sk: int, sk_gen: int) -> int:
    """A socket's name downstream: a keyed hash of its kernel address and when it was established
    (a later socket at the same address is another); 0 for none. 63 bits: a msgpack int as is."""
    if not sk:
        return 0
    digest = hashlib.blake2b(struct.pack("<QQ", sk, sk_gen), key=_SOCKET_KEY, digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1 or 1


class RecordError(ValueError):
    """A record shorter than its type's layout, or of an unknown type."""


def split_argv(blob: bytes, count: int) -> list[bytes]:
    """Entries of exec_rec.argv: u16 length (ARGV_ENTRY_CUT set when cut), then the bytes."""
    args: list[bytes] = []
    off = 0
    for _ in range(count):
        if off + 2 > len(blob):
            break
        (entry,) = struct.unpack_from("<H", blob, off)
        length = entry & ~ARGV_ENTRY_CUT
        args.append(blob[off + 2 : off + 2 + length])
        off += 2 + length
    return args


def user_dev(kernel_dev: int) -> int:
    """The kernel's internal dev_t (major << 20 | minor) as user space encodes it (st_dev)."""
    return os.makedev(kernel_dev >> 20, kernel_dev & 0xFFFFF)


def _family_name(family: int) -> str:
    names = {socket.AF_INET: "inet", socket.AF_INET6: "inet6", socket.AF_UNIX: "unix", 0: "unspec"}
    return names.get(family, f"af{family}")


def decode_sockaddr(raw: bytes, addrlen: int) -> tuple[str, str, int]:
    """(family, address, port) of a raw sockaddr as the caller passed it."""
    if addrlen < 2:
        return "unspec", "", 0
    (family,) = struct.unpack_from("<H", raw, 0)
    if family == socket.AF_INET and addrlen >= 8:
        port = struct.unpack_from(">H", raw, 2)[0]
        return "inet", socket.inet_ntop(socket.AF_INET, raw[4:8]), port
    if family == socket.AF_INET6 and addrlen >= 24:
        port = struct.unpack_from(">H", raw, 2)[0]
        return "inet6", socket.inet_ntop(socket.AF_INET6, raw[8:24]), port
    if family == socket.AF_UNIX:
        path = raw[2 : min(addrlen, len(raw))]
        if path[:1] == b"\0":  # abstract namespace: no terminator, length from addrlen
            return "unix", "@" + path[1:].decode("utf-8", "backslashreplace"), 0
        return "unix", path.split(b"\0", 1)[0].decode("utf-8", "backslashreplace"), 0
    return _family_name(family), "", 0


def _hdr(rec: ctypes.Structure) -> tuple[int, int, int]:
    return rec.hdr.ts, rec.hdr.tgid, rec.hdr.tid


def _as(cls: type[ctypes.Structure], data: int, size: int) -> ctypes.Structure:
    if size < ctypes.sizeof(cls):
        raise RecordError(f"{cls.__name__} record of {size} bytes, expected at least {ctypes.sizeof(cls)}")
    return cls.from_address(data)


def decode_exec(data: int, size: int) -> ev.Exec:
    rec = _as(ExecRec, data, size)
    blob_size = min(rec.argv_size, size - ctypes.sizeof(ExecRec))
    blob = ctypes.string_at(data + ctypes.sizeof(ExecRec), max(blob_size, 0))
    return ev.Exec(
        *_hdr(rec),
        result=rec.result,
        ppid=rec.ppid,
        uid=rec.uid,
        gid=rec.gid,
        cgroup_id=rec.cgroup_id,
        start_ns=rec.start_ns,
        comm=rec.comm,
        filename=rec.filename,
        argv=split_argv(blob, rec.argv_count),
        argc=rec.argc,
        flags=rec.hdr.flags,
        exe_dev=user_dev(rec.exe_dev),
        exe_ino=rec.exe_ino,
        old_tid=rec.old_tid,
        loginuid=rec.loginuid,
        sessionid=rec.sessionid,
        netns=rec.netns,
    )


class ExecFacts(NamedTuple):
    """What the kernel read at an exec that the frame does not carry: the probe's cache key."""

    exe_size: int
    exe_ctime_ns: int


_EXEC_FACTS = struct.Struct("<QQ")
_EXEC_FACTS_AT = ExecRec.exe_size.offset


def exec_facts(data: int) -> ExecFacts:
    """Of an exec record already decoded (so known to be whole)."""
    return ExecFacts(*_EXEC_FACTS.unpack(ctypes.string_at(data + _EXEC_FACTS_AT, _EXEC_FACTS.size)))


# The records that come by the thousand are unpacked in one call from one copy, not field by
# field through ctypes (several times faster); the formats are checked against the ctypes
# mirrors (and so against events.h, by tests/kernel/test_layout.py) below.
_FORK = struct.Struct("<8xQIIIIQ")  # hdr's ts, tgid, tid; child_pid, parent_tgid, child_start_ns
_EXIT = struct.Struct("<8xQIIi4xQ")  # ts, tgid, tid; exit_code, start_ns
_CONNECT = struct.Struct("<8xQIIiiII")  # ts, tgid, tid; result, fd, addrlen, netns; sockaddr follows
_SOCKADDR_AT = _CONNECT.size


def decode_fork(data: int, size: int) -> ev.Fork:
    _at_least(ForkRec, size)
    return ev.Fork(*_FORK.unpack(ctypes.string_at(data, _FORK.size)))


def decode_exit(data: int, size: int) -> ev.Exit:
    _at_least(ExitRec, size)
    return ev.Exit(*_EXIT.unpack(ctypes.string_at(data, _EXIT.size)))


def decode_connect(data: int, size: int) -> ev.Connect:
    _at_least(ConnectRec, size)
    raw = ctypes.string_at(data, _SOCKADDR_AT + SOCKADDR_LEN)
    ts, tgid, tid, result, fd, addrlen, netns = _CONNECT.unpack_from(raw)
    family, address, port = decode_sockaddr(raw[_SOCKADDR_AT:], min(addrlen, SOCKADDR_LEN))
    return ev.Connect(ts, tgid, tid, fd, result, family, address, port, netns)


def _at_least(cls: type[ctypes.Structure], size: int) -> None:
    if size < ctypes.sizeof(cls):
        raise RecordError(f"{cls.__name__} record of {size} bytes, expected at least {ctypes.sizeof(cls)}")


def _ip(family: int, raw: bytes) -> str:
    if family == socket.AF_INET6:
        return socket.inet_ntop(socket.AF_INET6, raw)
    return socket.inet_ntop(socket.AF_INET, raw[:4])


def decode_tcp(data: int, size: int) -> ev.TcpEstablished:
    rec = _as(TcpRec, data, size)
    return ev.TcpEstablished(
        *_hdr(rec),
        _family_name(rec.family),
        _ip(rec.family, bytes(rec.saddr)),
        rec.sport,
        _ip(rec.family, bytes(rec.daddr)),
        rec.dport,
        rec.netns,
        sock=socket_id(rec.sk, rec.sk_gen),
    )


def decode_accept(data: int, size: int) -> ev.Accept:
    rec = _as(AcceptRec, data, size)
    family, address, port = decode_sockaddr(bytes(rec.sockaddr), rec.addrlen)
    event = ev.Accept(*_hdr(rec), rec.fd, rec.listen_fd, family, address, port, rec.netns,
                      sock=socket_id(rec.sk, rec.sk_gen))
    if rec.sk_family in (socket.AF_INET, socket.AF_INET6):
        event.local_address, event.local_port = _ip(rec.sk_family, bytes(rec.local_addr)), rec.local_port
        if not rec.addrlen:  # accept(fd, NULL, NULL): the peer as the socket has it
            event.family, event.port = _family_name(rec.sk_family), rec.peer_port
            event.address, event.peer_from_socket = _ip(rec.sk_family, bytes(rec.peer_addr)), True
    return event


def decode_gpu_open(data: int, size: int) -> ev.GpuOpen:
    rec = _as(GpuOpenRec, data, size)
    return ev.GpuOpen(*_hdr(rec), rec.fd, rec.kind, rec.minor, bool(rec.by_name))


def decode_gpu_ioctl(data: int, size: int) -> ev.GpuIoctl:
    rec = _as(GpuIoctlRec, data, size)
    return ev.GpuIoctl(
        *_hdr(rec), reason=rec.reason, kind=rec.kind, fd=rec.fd, minor=rec.minor, cmd=rec.cmd, nr=rec.nr,
        size=rec.size, ret=rec.ret, status=rec.status, h_root=rec.h_root, h_parent=rec.h_parent,
        h_object=rec.h_object, h_class=rec.h_class, ctrl_cmd=rec.ctrl_cmd, param0=rec.param0,
        param1=rec.param1, uuid=bytes(rec.uuid), flags=rec.hdr.flags,
    )


Decoder = Callable[[int, int], ev.Event]

DECODERS: dict[int, Decoder] = {
    ev.Kind.EXEC: decode_exec,
    ev.Kind.FORK: decode_fork,
    ev.Kind.EXIT: decode_exit,
    ev.Kind.CONNECT: decode_connect,
    ev.Kind.TCP_ESTABLISHED: decode_tcp,
    ev.Kind.ACCEPT: decode_accept,
    ev.Kind.GPU_OPEN: decode_gpu_open,
    ev.Kind.GPU_IOCTL: decode_gpu_ioctl,
}


def record_type(data: int, size: int) -> int:
    if size < ctypes.sizeof(RecHdr):
        raise RecordError(f"record of {size} bytes is shorter than its header")
    return int(RecHdr.from_address(data).type)


def decode(data: int, size: int) -> ev.Event:
    kind = record_type(data, size)
    decoder = DECODERS.get(kind)
    if decoder is None:
        raise RecordError(f"unknown record type {kind}")
    return decoder(data, size)


def _check_formats() -> None:
    """The struct formats above describe the same bytes as the ctypes mirrors."""
    for fmt, cls, end in ((_FORK, ForkRec, ctypes.sizeof(ForkRec)), (_EXIT, ExitRec, ctypes.sizeof(ExitRec)),
                          (_CONNECT, ConnectRec, ConnectRec.sockaddr.offset)):
        if fmt.size != end:
            raise AssertionError(f"{cls.__name__}: struct format of {fmt.size} bytes, record layout {end}")


_check_formats()
