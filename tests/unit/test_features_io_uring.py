"""Whether io_uring opens can be followed: the tracepoints' formats and the kernel's BTF decide,
and a kernel without them is told apart in `doctor` (pure logic on constructed tracefs trees)."""

from __future__ import annotations

from pathlib import Path

from sensor.probe import features
from sensor.probe.btf import VMLINUX_BTF

# The formats of kernel 6.18 (the fields gpu.bpf.c reads, and others around them).
SUBMIT_REQ = """name: io_uring_submit_req
ID: 2140
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:void * ctx;\toffset:8;\tsize:8;\tsigned:0;
\tfield:void * req;\toffset:16;\tsize:8;\tsigned:0;
\tfield:unsigned long long user_data;\toffset:24;\tsize:8;\tsigned:0;
\tfield:u8 opcode;\toffset:32;\tsize:1;\tsigned:0;
\tfield:unsigned long long flags;\toffset:40;\tsize:8;\tsigned:0;
\tfield:bool sq_thread;\toffset:48;\tsize:1;\tsigned:0;
\tfield:__data_loc char[] op_str;\toffset:52;\tsize:4;\tsigned:0;

print fmt: "ring %p, req %p", REC->ctx, REC->req
"""
COMPLETE = """name: io_uring_complete
format:
\tfield:void * ctx;\toffset:8;\tsize:8;\tsigned:0;
\tfield:void * req;\toffset:16;\tsize:8;\tsigned:0;
\tfield:u64 user_data;\toffset:24;\tsize:8;\tsigned:0;
\tfield:int res;\toffset:32;\tsize:4;\tsigned:1;
"""
# Before 5.18 the completion named no request: it cannot be matched to its submission.
COMPLETE_5_10 = """name: io_uring_complete
format:
\tfield:void * ctx;\toffset:8;\tsize:8;\tsigned:0;
\tfield:u64 user_data;\toffset:16;\tsize:8;\tsigned:0;
\tfield:long res;\toffset:24;\tsize:8;\tsigned:1;
"""


def tracefs(root: Path, formats: dict[str, str]) -> Path:
    for name, text in formats.items():
        directory = root / "events" / "io_uring" / name
        directory.mkdir(parents=True)
        (directory / "format").write_text(text)
    return root


def test_fields_are_read_from_the_format() -> None:
    assert features.tracepoint_fields("io_uring/io_uring_submit_req", Path("/nonexistent")) == set()


def test_fields_of_a_format(tmp_path: Path) -> None:
    root = tracefs(tmp_path, {"io_uring_submit_req": SUBMIT_REQ})
    assert features.tracepoint_fields("io_uring/io_uring_submit_req", root) == {
        "common_type", "ctx", "req", "user_data", "opcode", "flags", "sq_thread", "op_str"}


def test_followed_where_the_tracepoints_and_btf_have_what_it_reads(tmp_path: Path) -> None:
    root = tracefs(tmp_path, {"io_uring_submit_req": SUBMIT_REQ, "io_uring_complete": COMPLETE})
    defines, detail = features.io_uring_opens(root, VMLINUX_BTF)
    assert defines["HAVE_IO_URING_OPENS"] == 1
    assert set(defines) == {"HAVE_IO_URING_OPENS", "OFF_IO_KIOCB_CMD", "OFF_IO_OPEN_FILE_SLOT"}
    assert detail == "IORING_OP_OPENAT, OPENAT2 and FIXED_FD_INSTALL followed"
    assert features.check_io_uring(root, VMLINUX_BTF).ok


def test_a_kernel_without_io_uring_tracepoints(tmp_path: Path) -> None:
    defines, detail = features.io_uring_opens(tmp_path, VMLINUX_BTF)
    assert (defines, detail) == ({}, "tracepoint io_uring/io_uring_submit_req is missing")
    check = features.check_io_uring(tmp_path, VMLINUX_BTF)
    assert (check.ok, check.required) == (False, False)
    assert check.detail == ("tracepoint io_uring/io_uring_submit_req is missing: GPU devices opened through "
                            "io_uring give no gpu_open record (their ioctls are still seen)")


def test_a_completion_that_names_no_request(tmp_path: Path) -> None:
    root = tracefs(tmp_path, {"io_uring_submit_req": SUBMIT_REQ, "io_uring_complete": COMPLETE_5_10})
    assert features.io_uring_opens(root, VMLINUX_BTF) == ({}, "tracepoint io_uring/io_uring_complete has no field req")


def test_a_kernel_without_btf(tmp_path: Path) -> None:
    root = tracefs(tmp_path, {"io_uring_submit_req": SUBMIT_REQ, "io_uring_complete": COMPLETE})
    defines, detail = features.io_uring_opens(root, tmp_path / "vmlinux")
    assert defines == {} and detail.startswith(f"{tmp_path / 'vmlinux'} is missing")
