"""Builds, compiles and loads the BPF programs with BCC, and explains every way that fails.

The source is sensor/bpf/common.bpf.c followed by each program file, as one text (BCC
processes only its main text); the files are package data, found through importlib.resources.
Everything that varies is a -D constant built from typed values: kernel field offsets from
BTF, limits from ProbeConfig, feature probes. No user text is ever spliced into the C source.
"""

from __future__ import annotations

import contextlib
import importlib.resources
import os
import re
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from sensor.errors import GpusentryError, UsageError
from sensor.probe import features, launches, settled, uprobes
from sensor.probe.btf import BtfError, resolve_offsets


def _bpf_dir() -> Path:
    """The BPF C sources: GPUSENTRY_BPF_DIR when set (to try edited C), else the package's own."""
    override = os.environ.get("GPUSENTRY_BPF_DIR")
    if override:
        return Path(override)
    sources = importlib.resources.files("sensor") / "bpf"
    # A Path, not just a Traversable: BCC finds `#include "events.h"` through -I, which names a
    # directory on disk. pip installs a wheel unpacked, so the package's files are plain files.
    return Path(str(sources))


BPF_DIR = _bpf_dir()
PROGRAM_FILES = ("common.bpf.c", "process.bpf.c", "net.bpf.c", "gpu.bpf.c", "launch.bpf.c")


@dataclass(frozen=True)
class ProbeConfig:
    """What the probe can be told at start-up; checked before it reaches the compiler."""

    max_args: int = 64  # arguments captured per exec
    arg_len: int = 256  # bytes captured per argument
    ringbuf_pages: int = 1024  # 4 KiB pages: 4 MiB by default
    queue_size: int = 65536  # frames between the ring-buffer reader and the writer

    def validate(self) -> None:
        _in_range("--max-args", self.max_args, 1, 4096)
        _in_range("--arg-len", self.arg_len, 16, 4096)
        if self.max_args * (self.arg_len + 2) > 512 * 1024:
            raise UsageError(
                f"--max-args {self.max_args} x --arg-len {self.arg_len} needs "
                f"{self.max_args * (self.arg_len + 2)} bytes per exec record",
                "keep max-args x arg-len at or under 512 KiB",
            )
        _in_range("--ringbuf-pages", self.ringbuf_pages, 16, 1 << 18)
        if self.ringbuf_pages & (self.ringbuf_pages - 1):
            raise UsageError(f"--ringbuf-pages {self.ringbuf_pages} is not a power of two",
                             "use 256, 1024, 4096, ...")
        _in_range("--queue-size", self.queue_size, 16, 1 << 22)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _in_range(flag: str, value: int, low: int, high: int) -> None:
    if not low <= value <= high:
        raise UsageError(f"{flag} {value} is out of range", f"give a value from {low} to {high}")


class LoadError(GpusentryError):
    """The BPF programs could not be compiled, loaded or attached."""


def possible_cpus() -> int:
    """Highest possible CPU number + 1 (from /sys/devices/system/cpu/possible, e.g. "0-63")."""
    text = Path("/sys/devices/system/cpu/possible").read_text().strip()
    return max(int(part.split("-")[-1]) for part in text.split(",")) + 1


def uvm_major(devices: Path = Path("/proc/devices")) -> int:
    """The nvidia-uvm character major (dynamic), or 0 when the module is not loaded."""
    try:
        for line in devices.read_text().splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[1] == "nvidia-uvm":
                return int(parts[0])
    except OSError:
        pass
    return 0


def argv_span(config: ProbeConfig) -> int:
    need = config.max_args * (config.arg_len + 2)
    return 1 << (need - 1).bit_length()


def cflags(config: ProbeConfig, offsets: dict[str, int]) -> list[str]:
    defines: dict[str, int] = {
        **offsets,
        "MAX_ARGS": config.max_args,
        "ARG_LEN": config.arg_len,
        "ARGV_SPAN": argv_span(config),
        "RINGBUF_PAGES": config.ringbuf_pages,
        "NR_CPUS_POSSIBLE": possible_cpus(),
        "UVM_MAJOR": uvm_major(),
        "LAUNCH_WATCH_MAX": launches.WATCH_MAX,
        "LAUNCH_FUNCS_MAX": launches.FUNCS_MAX,
    }
    if features.exit_has_group_dead():
        defines["HAVE_EXIT_GROUP_DEAD"] = 1
    defines["HAVE_SOCK_LENGTH"] = int(features.has_sock_length())
    return [f"-D{name}={int(value)}" for name, value in sorted(defines.items())] + [f"-I{BPF_DIR}"]


def kernel_features(config: ProbeConfig) -> dict[str, str]:
    """What the probe found and uses, for the stream header and GetStatus."""
    uring_defines, uring_detail = features.io_uring_opens()
    return {
        "btf": "yes (struct offsets from /sys/kernel/btf/vmlinux)",
        "ring_buffer": f"{config.ringbuf_pages * 4} KiB",
        "exit_group_dead": "yes" if features.exit_has_group_dead() else "no (leader exit)",
        "socket_bytes": "yes" if features.has_sock_length() else f"no: {features.SOCK_BYTES_LOST}",
        "nvidia_uvm_major": str(uvm_major() or "not loaded"),
        "possible_cpus": str(possible_cpus()),
        "argv": f"{config.max_args} args x {config.arg_len} bytes",
        "io_uring_opens": "yes" if uring_defines else f"no ({uring_detail})",
        "launch_watches": _launch_watches(),
    }


def _launch_watches() -> str:
    why = uprobes.available()
    if why is not None:
        return f"unavailable: {why}"
    budget = launches.LaunchBudget()
    return (f"libcuda uprobes on suspicious processes only: at most {budget.watched} at once, "
            f"{budget.duration_s:g} s each, {budget.hits_per_s} launches/s")


def source_text() -> str:
    """The program text, with #line markers so compiler errors name the real file."""
    parts = []
    for name in PROGRAM_FILES:
        path = BPF_DIR / name
        parts.append(f'#line 1 "{path}"\n{path.read_text()}')
    return "\n".join(parts)


def preflight(load_bcc: bool = True) -> None:
    """The checks without which nothing can load, each as one clear error (`load_bcc`: see
    features.check_bcc; the agent checks early without it, its loader child with it)."""
    checks = (features.check_privileges, lambda: features.check_bcc(load_bcc), features.check_headers,
              features.check_btf, lambda: features.check_tracefs(mount=True), features.check_tracepoints)
    for run_check in checks:  # in order: a later check may need what an earlier one ensured
        check = run_check()
        if not check.ok:
            raise LoadError(f"cannot start the probe: {check.detail}", check.fix)


@contextlib.contextmanager
def _captured_stderr() -> Iterator[list[str]]:
    """BCC writes compiler errors and verifier logs straight to fd 2: collect them."""
    lines: list[str] = []
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        saved = os.dup(2)
        os.dup2(tmp.fileno(), 2)
        try:
            yield lines
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            lines.extend(tmp.read().decode("utf-8", "replace").splitlines())


def explain_failure(exc: Exception, log: list[str]) -> LoadError:
    message = str(exc)
    program = re.search(r"Failed to load BPF program b?'?([\w.]+)'?: (.*)", message)
    if program:
        # The verifier's log ends with its reason; skip the echoed C source lines.
        tail = [line for line in log if line and not line.startswith(";")][-8:]
        return LoadError(
            f"the kernel's verifier rejected BPF program {program.group(1)} ({program.group(2)}): "
            + " | ".join(tail),
            "run `gpusentry run --ebpf` for the source and report it with this log",
        )
    if "Failed to compile" in message:
        errors = [line for line in log if "error:" in line][:5]
        return LoadError("the BPF programs did not compile: " + " | ".join(errors),
                         "check the kernel headers (`gpusentry doctor`)")
    return LoadError(f"BCC failed: {message}", "run `gpusentry doctor`")


def load(config: ProbeConfig) -> Any:
    """Compile, load and attach every program; returns the bcc.BPF object."""
    config.validate()
    preflight()
    try:
        offsets = kernel_constants()
    except BtfError as exc:
        raise LoadError(f"cannot start the probe: {exc}") from exc
    return compile_text(source_text(), cflags(config, offsets))


def kernel_constants() -> dict[str, int]:
    """What the programs take from the running kernel: struct offsets, how to name a cgroup, and
    whether to follow io_uring opens."""
    return {**resolve_offsets(), **settled.kernel_defines(), **features.io_uring_opens()[0]}


def compile_text(text: str, flags: list[str]) -> Any:
    """BCC's compile, load and attach, with its failures turned into one clear LoadError."""
    from bcc import BPF  # imported late: `gpusentry analyze` and the tests of pure logic need no BCC

    with _captured_stderr() as log:
        try:
            return BPF(text=text.encode(), cflags=flags)
        except Exception as exc:  # BCC raises bare Exception for every failure
            failure = exc
    raise explain_failure(failure, log)


def final_source(config: ProbeConfig) -> str:
    """The exact C that `load` compiles, with its -D constants, for `--ebpf`."""
    config.validate()
    try:
        offsets = kernel_constants()
    except BtfError as exc:
        raise LoadError(str(exc)) from exc
    lines = []
    for flag in cflags(config, offsets):
        if flag.startswith("-D"):
            name, _, value = flag[2:].partition("=")
            lines.append(f"#define {name} {value}")
        else:
            lines.append(f"// compiled with {flag}")
    return "\n".join(lines) + "\n" + source_text()
