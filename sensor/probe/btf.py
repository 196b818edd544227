"""Kernel struct offsets from the running kernel's BTF.

The BPF programs never take a struct layout from the headers BCC compiles with: those headers
need not match the running kernel (on the development machines they are 6.1 headers for a 6.18
kernel). Every struct field the programs read is named in `KERNEL_FIELDS`, resolved here from
/sys/kernel/btf/vmlinux through libbpf's BTF API, and handed to the compiler as a -D constant.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
from dataclasses import dataclass
from pathlib import Path

VMLINUX_BTF = Path("/sys/kernel/btf/vmlinux")

# BTF kinds (include/uapi/linux/btf.h).
_KIND_INT, _KIND_PTR, _KIND_ARRAY, _KIND_STRUCT, _KIND_UNION = 1, 2, 3, 4, 5
_KIND_TYPEDEF, _KIND_VOLATILE, _KIND_CONST, _KIND_RESTRICT = 8, 9, 10, 11
_KIND_TYPE_TAG = 18
_MODIFIERS = {_KIND_TYPEDEF, _KIND_VOLATILE, _KIND_CONST, _KIND_RESTRICT, _KIND_TYPE_TAG}


@dataclass(frozen=True)
class KernelField:
    """One kernel struct field the BPF programs read: `struct.path` gives `-D<macro>=<offset>`."""

    macro: str
    struct: str
    path: str  # dotted member path, through nested and anonymous members; "a|b": the first found
    why: str


# The complete list of kernel struct fields gpusentry reads (DESIGN.md: keep them few, in one place).
KERNEL_FIELDS: tuple[KernelField, ...] = (
    KernelField("OFF_TASK_MM", "task_struct", "mm", "argv and the executable of the new image"),
    KernelField("OFF_TASK_TGID", "task_struct", "tgid", "thread or process, at fork"),
    KernelField("OFF_TASK_PID", "task_struct", "pid", "the child's id, at fork"),
    KernelField("OFF_TASK_REAL_PARENT", "task_struct", "real_parent", "lineage"),
    KernelField("OFF_TASK_EXIT_CODE", "task_struct", "exit_code", "exit status"),
    KernelField("OFF_TASK_START_BOOTTIME", "task_struct", "start_boottime", "identity across PID reuse"),
    KernelField("OFF_TASK_FILES", "task_struct", "files", "fd -> struct file for GPU devices"),
    KernelField("OFF_TASK_LOGINUID", "task_struct", "loginuid", "the login user, kept across su and sudo"),
    KernelField("OFF_TASK_SESSIONID", "task_struct", "sessionid", "login session scope (audit)"),
    KernelField("OFF_TASK_NSPROXY", "task_struct", "nsproxy", "network namespace of a connection"),
    KernelField("OFF_NSPROXY_NET_NS", "nsproxy", "net_ns", "network namespace of a connection"),
    KernelField("OFF_NET_INUM", "net", "ns.inum", "network namespace identity"),
    KernelField("OFF_MM_ARG_START", "mm_struct", "arg_start", "argv of the new image"),
    KernelField("OFF_MM_ARG_END", "mm_struct", "arg_end", "argv of the new image"),
    KernelField("OFF_MM_START_STACK", "mm_struct", "start_stack", "argc and the argv pointers"),
    KernelField("OFF_MM_EXE_FILE", "mm_struct", "exe_file", "what the executable is"),
    KernelField("OFF_FILES_FDT", "files_struct", "fdt", "fd table"),
    KernelField("OFF_FDT_MAX_FDS", "fdtable", "max_fds", "fd bounds check"),
    KernelField("OFF_FDT_FD", "fdtable", "fd", "fd array"),
    KernelField("OFF_FILE_INODE", "file", "f_inode", "device number of an fd"),
    KernelField("OFF_FILE_DENTRY", "file", "f_path.dentry", "name of an fd's file"),
    KernelField("OFF_INODE_RDEV", "inode", "i_rdev", "device major and minor"),
    KernelField("OFF_INODE_INO", "inode", "i_ino", "executable identity"),
    KernelField("OFF_INODE_SB", "inode", "i_sb", "executable identity"),
    KernelField("OFF_INODE_SIZE", "inode", "i_size", "an executable the probe has judged: unchanged?"),
    # ctime, not mtime: an owner can set mtime back after rewriting a file, never ctime. Its
    # name moved twice (i_ctime; __i_ctime in 6.6; i_ctime_sec/_nsec in 6.11).
    KernelField("OFF_INODE_CTIME_SEC", "inode", "i_ctime_sec|__i_ctime.tv_sec|i_ctime.tv_sec",
                "an executable the probe has judged: unchanged?"),
    KernelField("OFF_INODE_CTIME_NSEC", "inode", "i_ctime_nsec|__i_ctime.tv_nsec|i_ctime.tv_nsec",
                "an executable the probe has judged: unchanged?"),
    KernelField("OFF_TASK_CGROUPS", "task_struct", "cgroups", "cgroup v1: are its cgroups its parent's?"),
    KernelField("OFF_SB_DEV", "super_block", "s_dev", "executable identity"),
    KernelField("OFF_DENTRY_NAME", "dentry", "d_name.name", "name of an fd's file"),
    KernelField("OFF_FILE_PRIVATE_DATA", "file", "private_data", "an accepted fd's struct socket"),
    KernelField("OFF_SOCKET_SK", "socket", "sk", "an accepted socket's struct sock"),
    KernelField("OFF_SK_FAMILY", "sock", "__sk_common.skc_family", "an accepted socket's addresses"),
    KernelField("OFF_SK_NUM", "sock", "__sk_common.skc_num", "an accepted socket's local port"),
    KernelField("OFF_SK_DPORT", "sock", "__sk_common.skc_dport", "an accepted socket's peer port"),
    KernelField("OFF_SK_RCV_SADDR", "sock", "__sk_common.skc_rcv_saddr", "an accepted socket's local address"),
    KernelField("OFF_SK_DADDR", "sock", "__sk_common.skc_daddr", "an accepted socket's peer (NULL-address accept)"),
    KernelField("OFF_SK_V6_RCV_SADDR", "sock", "__sk_common.skc_v6_rcv_saddr", "the same, IPv6"),
    KernelField("OFF_SK_V6_DADDR", "sock", "__sk_common.skc_v6_daddr", "the same, IPv6"),
)

# Read only where io_uring opens are followed (features.io_uring_opens): a kernel without them
# still loads everything else. struct io_open lies in the request's cmd area.
IO_URING_FIELDS: tuple[KernelField, ...] = (
    KernelField("OFF_IO_KIOCB_CMD", "io_kiocb", "cmd", "an io_uring request's per-opcode data"),
    KernelField("OFF_IO_OPEN_FILE_SLOT", "io_open", "file_slot", "an io_uring open into a direct descriptor"),
)


class BtfError(RuntimeError):
    """BTF is missing or does not describe a field we need."""


class _BtfType(ctypes.Structure):
    _fields_ = [("name_off", ctypes.c_uint32), ("info", ctypes.c_uint32), ("size_or_type", ctypes.c_uint32)]


class _BtfMember(ctypes.Structure):
    _fields_ = [("name_off", ctypes.c_uint32), ("type", ctypes.c_uint32), ("offset", ctypes.c_uint32)]


class _BtfArray(ctypes.Structure):
    _fields_ = [("type", ctypes.c_uint32), ("index_type", ctypes.c_uint32), ("nelems", ctypes.c_uint32)]


def _load_libbpf() -> ctypes.CDLL:
    name = ctypes.util.find_library("bpf") or "libbpf.so.1"
    try:
        lib = ctypes.CDLL(name)
    except OSError as exc:
        raise BtfError(f"libbpf is not installed ({exc}); fix: apt-get install libbpf1") from exc
    lib.btf__parse.restype = ctypes.c_void_p
    lib.btf__parse.argtypes = [ctypes.c_char_p, ctypes.c_void_p]
    lib.btf__find_by_name_kind.restype = ctypes.c_int32
    lib.btf__find_by_name_kind.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_uint32]
    lib.btf__type_by_id.restype = ctypes.POINTER(_BtfType)
    lib.btf__type_by_id.argtypes = [ctypes.c_void_p, ctypes.c_uint32]
    lib.btf__name_by_offset.restype = ctypes.c_char_p
    lib.btf__name_by_offset.argtypes = [ctypes.c_void_p, ctypes.c_uint32]
    lib.btf__free.restype = None
    lib.btf__free.argtypes = [ctypes.c_void_p]
    return lib


class KernelBtf:
    """The running kernel's type information, for member offsets."""

    def __init__(self, path: Path = VMLINUX_BTF) -> None:
        if not path.exists():
            raise BtfError(
                f"{path} is missing: this kernel was built without BTF (CONFIG_DEBUG_INFO_BTF=y); "
                "fix: boot a kernel with BTF"
            )
        self._lib = _load_libbpf()
        self._btf = self._lib.btf__parse(str(path).encode(), None)
        if not self._btf:
            raise BtfError(f"libbpf could not parse {path}")

    def close(self) -> None:
        if self._btf:
            self._lib.btf__free(self._btf)
            self._btf = None

    def __enter__(self) -> KernelBtf:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _type(self, type_id: int) -> _BtfType:
        found: _BtfType = self._lib.btf__type_by_id(self._btf, type_id).contents
        return found

    def _name(self, offset: int) -> str:
        raw = self._lib.btf__name_by_offset(self._btf, offset)
        return raw.decode() if raw else ""

    def _skip_modifiers(self, type_id: int) -> int:
        while (self._type(type_id).info >> 24) & 0x1F in _MODIFIERS:
            type_id = self._type(type_id).size_or_type
        return type_id

    def _members(self, type_id: int) -> list[tuple[str, int, int]]:
        """(name, type id, bit offset) of each member of a struct or union."""
        t = self._type(type_id)
        kind_flag = t.info >> 31
        count = t.info & 0xFFFF
        base = ctypes.addressof(t) + ctypes.sizeof(_BtfType)
        members = (_BtfMember * count).from_address(base)
        return [
            (self._name(m.name_off), m.type, m.offset & 0xFFFFFF if kind_flag else m.offset)
            for m in members
        ]

    def _find_member(self, type_id: int, name: str) -> tuple[int, int] | None:
        """(type id, bit offset) of `name` in a struct or union, looking inside anonymous members."""
        for member_name, member_type, bit_offset in self._members(type_id):
            if member_name == name:
                return member_type, bit_offset
            if member_name == "":
                inner = self._skip_modifiers(member_type)
                if (self._type(inner).info >> 24) & 0x1F in (_KIND_STRUCT, _KIND_UNION):
                    found = self._find_member(inner, name)
                    if found is not None:
                        return found[0], bit_offset + found[1]
        return None

    def struct_id(self, struct: str) -> int:
        type_id: int = self._lib.btf__find_by_name_kind(self._btf, struct.encode(), _KIND_STRUCT)
        if type_id < 0:
            raise BtfError(f"struct {struct} is not in this kernel's BTF")
        return type_id

    def offsetof(self, struct: str, path: str) -> int:
        """Byte offset of a dotted member path in `struct <struct>`."""
        type_id = self.struct_id(struct)
        total_bits = 0
        for name in path.split("."):
            type_id = self._skip_modifiers(type_id)
            kind = (self._type(type_id).info >> 24) & 0x1F
            if kind not in (_KIND_STRUCT, _KIND_UNION):
                raise BtfError(f"{struct}.{path}: {name!r} is inside a non-struct member")
            found = self._find_member(type_id, name)
            if found is None:
                raise BtfError(f"struct {struct} has no member {path!r} in this kernel's BTF")
            type_id, bits = found
            total_bits += bits
        if total_bits % 8:
            raise BtfError(f"{struct}.{path} is a bit field; gpusentry reads only whole fields")
        return total_bits // 8

    def field_offset(self, struct: str, paths: str) -> int:
        """offsetof for the first of "a|b|c" this kernel has (a field renamed across versions)."""
        *earlier, last = paths.split("|")
        for path in earlier:
            with contextlib.suppress(BtfError):
                return self.offsetof(struct, path)
        return self.offsetof(struct, last)

    def has_struct(self, struct: str) -> bool:
        return int(self._lib.btf__find_by_name_kind(self._btf, struct.encode(), _KIND_STRUCT)) >= 0


def resolve_offsets(fields: tuple[KernelField, ...] = KERNEL_FIELDS, path: Path = VMLINUX_BTF) -> dict[str, int]:
    """Macro name -> byte offset, for each kernel field the BPF programs read."""
    with KernelBtf(path) as btf:
        return {f.macro: btf.field_offset(f.struct, f.path) for f in fields}
