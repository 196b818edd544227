"""The programs are compiled and attached by a short-lived child (sensor/probe/loader.py): the
long-lived probe holds file descriptors, never BCC's compiler; its maps work through bpf(2)
(sensor/probe/bpfsys.py); a failure in the child is still one clear error."""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

from sensor.probe.program import BPF_DIR, possible_cpus
from tests.kernel.conftest import LiveProbe
from tests.kernel.test_errors import one_error_line
from tests.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]
COMPILER_LIBRARIES = ("libbcc", "libLLVM", "libclang")


def test_the_running_probe_maps_no_compiler_and_no_bcc(root: None, tmp_path: Path) -> None:
    recorder = subprocess.Popen([sys.executable, "-m", "sensor", "record", "-w", str(tmp_path / "cap")],
                                stderr=subprocess.PIPE, text=True, cwd=ROOT)
    stderr = recorder.stderr
    assert stderr is not None
    try:
        wait_until(lambda: "recording to" in stderr.readline(), timeout=60, what="the recorder's start")
        maps = Path(f"/proc/{recorder.pid}/maps").read_text()
        assert [lib for lib in COMPILER_LIBRARIES if lib in maps] == []
        # what it holds instead: the two rings, mapped in place
        assert maps.count("anon_inode:bpf-map") >= 4  # each ring: its consumer page and its data
    finally:
        recorder.terminate()
        assert recorder.wait(timeout=20) == 0


def test_the_probe_s_maps_through_bpf_syscalls(live: LiveProbe) -> None:
    assert live.probe.bpf is not None
    table = live.probe.bpf.maps["self_tgids"]
    assert (table.key_size, table.value_size, table.cpus) == (4, 1, 0)
    key = struct.pack("<I", 4_000_000)  # above any pid: no process of ours is hidden by it
    table.update(key, b"\x01")
    try:
        assert table.lookup(key) == b"\x01"
        assert key in list(table.keys())
        assert struct.pack("<I", os.getpid()) in list(table.keys())  # the probe excluded itself
    finally:
        table.delete(key)
    assert table.lookup(key) is None
    drops = live.probe.bpf.maps["ringbuf_drops"]
    assert drops.cpus == possible_cpus()
    assert len(drops.per_cpu(struct.pack("<I", 1))) == drops.cpus  # one counter per possible CPU


def test_a_compile_failure_in_the_loader_child_is_one_clear_error(root: None, tmp_path: Path) -> None:
    broken = tmp_path / "bpf"
    shutil.copytree(BPF_DIR, broken)
    process = broken / "process.bpf.c"
    process.write_text(process.read_text() + "\nthis is not C;\n")
    result = subprocess.run([sys.executable, "-m", "sensor", "record", "-w", str(tmp_path / "cap")],
                            capture_output=True, text=True, cwd=ROOT, timeout=120,
                            env={**os.environ, "GPUSENTRY_BPF_DIR": str(broken)})
    assert result.returncode == 2
    line = one_error_line(result)
    assert "the BPF programs did not compile" in line
    assert "check the kernel headers (`gpusentry doctor`)" in line
