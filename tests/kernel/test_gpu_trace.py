"""The ioctl recorder (tests/gpu_trace): recording the replay client under the fake driver with
the recorder preloaded, the log format, fixtures made from logs and replayed again (a round
trip), the recorder's edge cases (bad pointers, syscall(), dup, fork, threads), corrupt logs,
and the script prepared for the GPU machine, run end to end against the fake driver."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sensor.fakegpu import abi
from sensor.fakegpu.fixtures import load
from sensor.fakegpu.session import fake_driver, replay
from tests.gpu_trace import trace as tr

REPO = Path(__file__).resolve().parents[2]
HERE = REPO / "tests" / "gpu_trace"
FIXTURES = REPO / "tests" / "fixtures" / "gpu"
CFLAGS = ["-O2", "-Wall", "-Wextra", "-Werror"]


@pytest.fixture(scope="module")
def recorder(root: None, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("recorder")
    subprocess.run([str(HERE / "build.sh"), str(out / "librecorder.so")], check=True)
    return out / "librecorder.so"


@pytest.fixture(scope="module")
def drivers(root: None) -> Iterator[dict[str, Path]]:
    with fake_driver("hopper") as hopper, fake_driver("ampere") as ampere:
        yield {"hopper": hopper, "ampere": ampere}


def record(driver: Path, recorder: Path, fixture: Path, logs: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The replay client on `fixture` under the fake driver, with the recorder preloaded into it
    (and only into it: `env` sets LD_PRELOAD for the client alone). Its report, its children's."""
    logs.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "sensor.fakegpu.isolate", str(driver), "--",
               "env", f"LD_PRELOAD={recorder}", f"GPUSENTRY_TRACE={logs}/t.%p",
               sys.executable, "-m", "sensor.fakegpu.client", str(fixture)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=REPO)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    return json.loads(lines[-1]), [json.loads(line) for line in lines[:-1] if line.startswith("{")]


def trace_of(logs: Path, pid: int) -> tr.Trace:
    return tr.read_trace(logs / f"t.{pid}")


def sequence(report: dict[str, Any]) -> list[tuple[str, int, int, int]]:
    return [(c["op"], c["klass"], c["ret"], c["status"]) for c in report["calls"]]


def rm_calls(trace: tr.Trace, nr: int) -> list[tuple[tr.Record, tr.RmCall]]:
    calls = [(r, tr.rm_call(r)) for r in trace.ioctls()]
    return [(r, c) for r, c in calls if c is not None and c.nr == nr]


# -- the replay client, recorded --------------------------------------------------------------


@pytest.mark.parametrize("name", ["hopper-bringup", "decoder-edges"])
def test_records_what_the_client_did_and_the_driver_answered(
        drivers: dict[str, Path], recorder: Path, tmp_path: Path, name: str) -> None:
    fixture = load(FIXTURES / f"{name}.yaml")
    report, _ = record(drivers[fixture.arch], recorder, fixture.path, tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == [f"t.{report['pid']}"]
    trace = trace_of(tmp_path, report["pid"])
    assert trace.header["pid"] == report["pid"]
    assert trace.header["argv"][-1] == str(fixture.path)
    assert trace.header["uname"]["release"] == os.uname().release

    # the opens, in order, each recognised by its name
    opens = [r for r in trace.records if r.kind == tr.OPEN]
    expected = [("/dev/" + step["open"]["dev"]) for step in fixture.steps if "open" in step]
    assert [r.path for r in opens] == expected
    kinds = {"/dev/nvidiactl": 1, "/dev/nvidia0": 2, "/dev/nvidia-uvm": 3}
    assert [r.cmd for r in opens] == [kinds[p] for p in expected]
    assert all(r.ret >= 0 and not r.flags & tr.F_DISCOVERED for r in opens)

    # every ioctl the client made, no other
    assert len(trace.ioctls()) == report["ioctls"]
    assert all(r.device != "?" for r in trace.ioctls())

    # RM_ALLOC: the class sent, the handle and status the fake driver wrote back (after bytes)
    allocs = [c for c in report["calls"] if c["op"] == "alloc"]
    recorded = rm_calls(trace, tr.NR_ALLOC)
    assert len(recorded) == len(allocs)
    for (rec, call), sent in zip(recorded, allocs, strict=True):
        assert call.u32(12) == sent["klass"]
        assert (rec.ret if rec.ret == 0 else -rec.errno) == sent["ret"]
        if sent["ret"] == 0:
            assert call.u32(8, after=True) == sent["handle"]
            assert call.status() == sent["status"]
        if sent["klass"] == 0x5:  # NV01_EVENT: its own class is in the params
            assert call.params is not None and struct.unpack_from("<I", call.params.before, 8)[0] == 0x79
    client = next(c for c in allocs if c["klass"] == 0x41)
    first = next(call for _, call in recorded if call.u32(12) == 0x41)
    assert first.u32(8) == 0 and first.u32(8, after=True) == client["handle"] == report["handles"]["client"]

    # RM_CONTROL and RM_FREE statuses, UVM commands
    controls = [c for c in report["calls"] if c["op"] == "control"]
    assert [(c.u32(8), c.status()) for _, c in rm_calls(trace, tr.NR_CONTROL)] == \
           [(c["cmd"], c["status"]) for c in controls]
    frees = [c for c in report["calls"] if c["op"] == "free"]
    assert [c.status() for _, c in rm_calls(trace, tr.NR_FREE)] == [c["status"] for c in frees]
    uvm = [c["cmd"] for c in report["calls"] if c["op"] == "uvm"]
    assert [r.cmd for r in trace.ioctls() if r.device_kind == 3] == uvm

    if name == "hopper-bringup":
        boost = [c for _, c in rm_calls(trace, tr.NR_CONTROL) if c.u32(8) == tr.PERF_BOOST]
        assert boost and boost[0].params is not None
        assert abi.PERF_BOOST_PARAMS.unpack_from(boost[0].params.before) == (0x10, 0xFFFFFFFF)
    else:
        # failures the fake wrote back: an invalid parent, EINVAL for the 40-byte form, a
        # duplicate handle, a class the GPU lacks; and the XFER-wrapped allocations
        assert [c["status"] for c in allocs if c["status"]] == [abi.NV_ERR_INVALID_OBJECT_PARENT,
                                                                abi.NV_ERR_INSERT_DUPLICATE_NAME,
                                                                abi.NV_ERR_INVALID_CLASS]
        assert [(r.ret, r.errno, c.size) for r, c in recorded if r.ret] == [(-1, 22, 40)]
        xfers = [(r, c) for r, c in recorded if c.via_xfer]
        assert [c.u32(12) for _, c in xfers] == [0xC86F, 0xCBC0]
        assert all(r.flags & tr.F_XFER_INNER and abi.ioc_nr(r.cmd) == 0xD3 for r, _ in xfers)

    s = tr.summary(trace)
    assert s["calls"]["nvidiactl"]["RM_ALLOC"] + s["calls"]["nvidiactl"].get("IOCTL_XFER_CMD", 0) == len(allocs)
    assert s["sizes"]["RM_ALLOC"] == sorted({48, *(c.size for _, c in recorded if not c.via_xfer)})


@pytest.mark.parametrize("name", ["hopper-bringup", "ampere-bringup", "decoder-edges", "query-only"])
def test_round_trip_through_a_fixture(drivers: dict[str, Path], recorder: Path, tmp_path: Path, name: str) -> None:
    """A log converted to a fixture replays to the same calls, results and statuses."""
    fixture = load(FIXTURES / f"{name}.yaml")
    first, _ = record(drivers[fixture.arch], recorder, fixture.path, tmp_path / "logs")
    converted = tr.to_fixture([trace_of(tmp_path / "logs", first["pid"])], f"{name}-recorded", fixture.arch,
                              fixture.driver, "the replay client under the fake driver")
    path = tmp_path / f"{name}-recorded.yaml"
    tr.write_fixture(converted, path)
    loaded = load(path)
    assert loaded.name == f"{name}-recorded" and loaded.arch == fixture.arch
    assert "not replayed" not in loaded.models
    second = replay(drivers[fixture.arch], path)
    assert second.returncode == 0, second.stderr
    assert sequence(second.report) == sequence(first)
    assert second.report["ioctls"] == first["ioctls"]


def test_fork_child_writes_its_own_log(drivers: dict[str, Path], recorder: Path, tmp_path: Path) -> None:
    report, children = record(drivers["hopper"], recorder, FIXTURES / "fd-inheritance.yaml", tmp_path)
    assert len(children) == 1
    parent, child = trace_of(tmp_path, report["pid"]), trace_of(tmp_path, children[0]["pid"])
    assert len(parent.ioctls()) == report["ioctls"] and len(child.ioctls()) == children[0]["ioctls"] == 4
    assert child.header["ppid"] == report["pid"]
    # the dup in the parent and the inherited fd in the child: first seen in a call
    assert [r.flags & tr.F_DISCOVERED for r in parent.records if r.kind == tr.OPEN] == [0, tr.F_DISCOVERED]
    assert child.records[0].kind == tr.OPEN and child.records[0].flags & tr.F_DISCOVERED
    assert child.records[0].path == "/dev/nvidiactl"
    assert [c.u32(12) for _, c in rm_calls(child, tr.NR_ALLOC)] == [0x2080, 0xA06C, 0xC86F, 0xCBC0]


# -- the recorder's edge cases ----------------------------------------------------------------


@pytest.fixture(scope="module")
def selftest(root: None, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("selftest") / "selftest"
    subprocess.run(["gcc", *CFLAGS, "-o", str(out), str(HERE / "selftest.c"), "-lpthread"], check=True)
    return out


@pytest.mark.parametrize("copy", ["process_vm_readv", "pipe"])
def test_recorder_edge_cases(recorder: Path, selftest: Path, tmp_path: Path, copy: str) -> None:
    env = dict(os.environ, LD_PRELOAD=str(recorder), GPUSENTRY_TRACE=str(tmp_path / "t.%p"),
               GPUSENTRY_TRACE_COPY=copy)
    done = subprocess.run([str(selftest), str(tmp_path)], capture_output=True, text=True, timeout=30, env=env)
    assert done.returncode == 0, done.stderr  # every wrapped call kept its result and errno
    result = json.loads(done.stdout)
    trace = trace_of(tmp_path, result["pid"])
    ioctls = trace.ioctls()
    assert len(ioctls) == result["ioctls"] == 2007
    assert all(r.ret == -1 and r.errno == 25 for r in ioctls)  # ENOTTY from a plain file, as the caller saw
    # the bad pointer and the argument at the end of a page: shortened copies, no fault
    bad, edge = ioctls[1], ioctls[2]
    assert bad.arg == 8 and bad.before == b"" and bad.flags & tr.F_PARTIAL
    assert edge.before == b"\xab" * 8 and edge.after == b"\xab" * 8 and edge.flags & tr.F_PARTIAL
    assert [r.flags & tr.F_VIA_SYSCALL for r in ioctls[:5]] == [0, 0, 0, tr.F_VIA_SYSCALL, 0]
    # XFER: the inner NVOS54 (block 1) and its params (block 3)
    xfer = ioctls[4]
    assert xfer.flags & tr.F_XFER_INNER and xfer.flags & tr.F_PARAMS
    assert [(b.kind, b.requested, len(b.before), len(b.after)) for b in xfer.blocks] == [(1, 32, 32, 32), (3, 8, 8, 8)]
    call = tr.rm_call(xfer)
    assert call is not None and call.via_xfer and call.nr == tr.NR_CONTROL and call.u32(8) == tr.PERF_BOOST
    assert call.params is not None and abi.PERF_BOOST_PARAMS.unpack_from(call.params.before) == (0x10, 0xFFFFFFFF)
    # UVM: the fixed 64-byte window
    uvm = ioctls[5]
    assert uvm.cmd == 0x30000001 and uvm.device.endswith("/nvidia-uvm") and len(uvm.before) == 64
    assert uvm.call_name() == "INITIALIZE"
    # opens: ctl (O_CREAT), uvm (openat), the dup (discovered at its ioctl), the missing nvidia7
    opens = [(Path(r.path).name, r.ret >= 0, r.flags & tr.F_DISCOVERED, r.errno) for r in trace.records
             if r.kind == tr.OPEN]
    assert opens == [("nvidiactl", True, 0, 0), ("nvidia-uvm", True, 0, 0), ("nvidiactl", True, tr.F_DISCOVERED, 0),
                     ("nvidia7", False, 0, 2)]
    (mmap,) = [r for r in trace.records if r.kind == tr.MMAP]
    assert mmap.arg == 4096 and struct.unpack_from("<QQ", mmap.before) == (4096, 4096)
    assert len([r for r in trace.records if r.kind == tr.CLOSE]) == 3  # dup, uvm, ctl; not the plain file
    assert not any("plain" in r.device for r in trace.records)


def test_recorder_off_without_the_variable(recorder: Path, selftest: Path, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "GPUSENTRY_TRACE"} | {"LD_PRELOAD": str(recorder)}
    done = subprocess.run([str(selftest), str(tmp_path)], capture_output=True, text=True, timeout=30, env=env)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nvidia-uvm", "nvidiactl", "plain"]


@pytest.mark.parametrize("defines", [[], ["-D_FORTIFY_SOURCE=2", "-D_FILE_OFFSET_BITS=64", "-D_TIME_BITS=64"]])
def test_recorder_builds_with_the_required_flags(root: None, tmp_path: Path, defines: list[str]) -> None:
    """As the brief asks, and as Ubuntu's gcc builds by default (fortified, 64-bit off_t)."""
    subprocess.run(["gcc", *CFLAGS, *defines, "-shared", "-fPIC", "-o", str(tmp_path / "r.so"),
                    str(HERE / "recorder.c"), "-ldl", "-lpthread"], check=True)
    subprocess.run(["gcc", *CFLAGS, "-o", str(tmp_path / "bpf_check"), str(HERE / "bpf_check.c")], check=True)


# -- corrupt logs -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def good_log(drivers: dict[str, Path], recorder: Path, tmp_path_factory: pytest.TempPathFactory) -> bytes:
    logs = tmp_path_factory.mktemp("good")
    report, _ = record(drivers["hopper"], recorder, FIXTURES / "hopper-bringup.yaml", logs)
    return (logs / f"t.{report['pid']}").read_bytes()


def test_corrupt_and_truncated_logs_name_the_byte_offset(good_log: bytes, tmp_path: Path) -> None:
    path = tmp_path / "log"
    path.write_bytes(good_log)
    whole = tr.read_trace(path)
    last = whole.records[-1]

    def error(data: bytes) -> str:
        path.write_bytes(data)
        with pytest.raises(tr.TraceError) as caught:
            tr.read_trace(path)
        return str(caught.value)

    assert f"byte offset {last.offset}: truncated record: record_len" in error(good_log[:last.offset + 50])
    assert f"byte offset {last.offset}: truncated record header (20 of 48" in error(good_log[:last.offset + 20])
    assert "byte offset 0: bad magic" in error(b"GSTRACE2" + good_log[8:])
    assert "byte offset 0: truncated file header" in error(good_log[:10])
    assert "byte offset 8: version 2" in error(good_log[:8] + struct.pack("<I", 2) + good_log[12:])
    assert "byte offset 12: truncated header" in error(good_log[:40])
    second = whole.records[1].offset
    short_len = good_log[:second] + struct.pack("<I", 12) + good_log[second + 4:]
    assert f"byte offset {second}: record_len 12 is shorter" in error(short_len)
    bad_kind = good_log[:second + 4] + struct.pack("<H", 9) + good_log[second + 6:]
    assert f"byte offset {second + 4}: unknown record kind 9" in error(bad_kind)
    assert str(path) in error(good_log[:last.offset + 50])  # the file is named too

    path.write_bytes(good_log[:last.offset + 50])
    cut = tr.read_trace(path, allow_truncated=True)
    assert cut.truncated_at == last.offset and len(cut.records) == len(whole.records) - 1


# -- the command line, the workloads and the GPU script -----------------------------------------


def test_command_line(good_log: bytes, tmp_path: Path) -> None:
    log = tmp_path / "t.1"
    log.write_bytes(good_log)
    run = [sys.executable, "-m", "tests.gpu_trace.trace"]
    summary = subprocess.run([*run, "summary", str(log)], capture_output=True, text=True, cwd=REPO, check=True)
    s = json.loads(summary.stdout)
    assert s["classes_allocated"]["0xCBC0"] == 1 and s["statuses"]["RM_ALLOC"] == {"0x0": 11}
    assert s["order"][:3] == ["open /dev/nvidiactl", "nvidiactl CHECK_VERSION_STR", "nvidiactl SYS_PARAMS"]
    out = tmp_path / "f.yaml"
    converted = subprocess.run([*run, "convert", str(log), "--name", "n", "--arch", "hopper", "--driver", "580.x",
                                "--out", str(out), "--max-steps", "10"], capture_output=True, text=True, cwd=REPO)
    assert converted.returncode == 0, converted.stderr
    fixture = load(out)
    assert len(fixture.steps) == 10 and "TRUNCATED: the first 10 steps only" in fixture.models
    log.write_bytes(good_log[:-3])
    failed = subprocess.run([*run, "summary", str(log)], capture_output=True, text=True, cwd=REPO)
    assert failed.returncode == 2 and "truncated record" in failed.stderr


def test_workloads_are_valid_python(tmp_path: Path) -> None:
    for path in sorted((HERE / "workloads").glob("*.py")):
        compile(path.read_text(), str(path), "exec")
    done = subprocess.run([sys.executable, str(HERE / "workloads" / "cuda_init.py")], capture_output=True, text=True,
                          timeout=30)
    assert done.returncode in (0, 3)
    assert json.loads(done.stdout)["workload"] == "cuda_init"


def test_run_on_gpu_script_against_the_fake_driver(drivers: dict[str, Path], tmp_path: Path) -> None:
    """The script for the GPU machine, end to end, each workload replaced by a fixture replay."""
    out = tmp_path / "out"
    env = dict(os.environ, OUT=str(out), PYTHON=sys.executable, LOOP_SECONDS="1",
               GPUSENTRY_TRACE_FAKE_DRIVER=str(drivers["hopper"]))
    done = subprocess.run([str(HERE / "run_on_gpu.sh")], capture_output=True, text=True, timeout=240, env=env,
                          cwd=REPO)
    assert done.returncode == 0, done.stdout + done.stderr
    assert sorted(p.name for p in out.iterdir()) == ["env.txt", "run.log", "summaries.json", "traces.tar.gz"]
    assert "] done: traces.tar.gz" in (out / "run.log").read_text().splitlines()[-1]
    env_txt = (out / "env.txt").read_text()
    assert "== uname -r" in env_txt and "prog socket_filter: " in env_txt
    assert "init: exit 0, 1 trace files" in env_txt
    assert len(json.loads((out / "summaries.json").read_text())) == 4
    with tarfile.open(out / "traces.tar.gz") as tar:
        names = tar.getnames()
        member = tar.extractfile("fixtures/h100-init.yaml")
        assert member is not None
        (tmp_path / "h100-init.yaml").write_bytes(member.read())
    assert {f"fixtures/h100-{n}.yaml" for n in ("init", "smi", "cupy", "torch")} <= set(names)
    assert sum(name.startswith("logs/init/trace.") for name in names) == 1
    init = load(tmp_path / "h100-init.yaml")
    assert init.steps[0] == {"open": {"dev": "nvidiactl", "as": "ctl"}}
