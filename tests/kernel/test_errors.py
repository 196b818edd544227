"""Each way the agent cannot start gives one clear line with its fix, and a non-zero exit.

Every condition is real: privileges really dropped, headers and BCC really hidden (a tmpfs
mounted over them in a private mount namespace), a program the verifier really rejects.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from sensor.probe.program import LoadError, compile_text

GPUSENTRY = [sys.executable, "-m", "sensor"]
ROOT = Path(__file__).resolve().parents[2]


def run_cli(*args: str, prefix: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*prefix, *GPUSENTRY, *args], capture_output=True, text=True, timeout=60, cwd=ROOT)


def in_private_mounts(shell: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run gpusentry after `shell` changed mounts that only this namespace sees."""
    command = f"{shell} && exec {' '.join(GPUSENTRY)} {' '.join(args)}"
    return subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", command],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("gpusentry: error: ")
    assert "; fix: " in lines[0]
    return lines[0]


def test_not_privileged(root: None) -> None:
    drop = ("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all",
            "--bounding-set=-all")
    result = run_cli("run", prefix=drop)
    assert result.returncode == 2
    line = one_error_line(result)
    assert "needs CAP_BPF and CAP_PERFMON" in line and "sudo" in line


def test_no_kernel_headers(root: None) -> None:
    result = in_private_mounts("mount -t tmpfs none /lib/modules", "run")
    assert result.returncode == 2
    line = one_error_line(result)
    assert "/build is missing: BCC compiles the BPF programs against kernel headers" in line
    assert "apt-get install linux-headers-" in line


def test_no_bcc(root: None) -> None:
    import bcc

    bcc_dir = Path(bcc.__file__).parent
    result = in_private_mounts(f"mount -t tmpfs none {bcc_dir}", "run")
    assert result.returncode == 2
    line = one_error_line(result)
    assert "BCC's Python bindings are missing" in line and "python3-bpfcc" in line


def test_no_btf(root: None) -> None:
    result = in_private_mounts("mount -t tmpfs none /sys/kernel/btf", "run")
    assert result.returncode == 2
    line = one_error_line(result)
    assert "/sys/kernel/btf/vmlinux is missing" in line and "CONFIG_DEBUG_INFO_BTF" in line


def test_tracefs_unmounted_is_mounted_by_the_agent(root: None) -> None:
    result = in_private_mounts("umount /sys/kernel/tracing", "doctor")
    assert "tracefs         /sys/kernel/tracing was not mounted; mounted it" in result.stdout
    assert result.returncode == 0, result.stdout


def test_unknown_flag(root: None) -> None:
    result = run_cli("run", "--no-such-flag")
    assert result.returncode == 2
    line = one_error_line(result)
    assert "unrecognized arguments: --no-such-flag" in line


def test_bad_limit(root: None) -> None:
    result = run_cli("run", "--arg-len", "100000")
    assert result.returncode == 2
    assert "--arg-len 100000 is out of range" in one_error_line(result)


def test_verifier_rejection_names_the_program_and_the_log_tail(root: None) -> None:
    bad = """
TRACEPOINT_PROBE(syscalls, sys_enter_getppid)
{
    char buf[8];
    u64 i = bpf_get_prandom_u32();
    buf[i] = 1;  /* unbounded index into the stack: the verifier says no */
    return buf[0];
}
"""
    with pytest.raises(LoadError) as info:
        compile_text(bad, [])
    message = str(info.value)
    assert "the kernel's verifier rejected BPF program tracepoint__syscalls__sys_enter_getppid" in message
    assert "variable stack access" in message or "invalid" in message
    assert "fix: run `gpusentry run --ebpf`" in message


def test_ebpf_prints_the_final_source(root: None) -> None:
    result = run_cli("run", "--ebpf", "--max-args", "8")
    assert result.returncode == 0
    assert "#define MAX_ARGS 8" in result.stdout
    assert "#define OFF_MM_ARG_START " in result.stdout
    assert "TRACEPOINT_PROBE(sched, sched_process_exec)" in result.stdout
