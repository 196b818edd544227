"""The built package runs on its own: the wheel, built from the sdist, carries the BPF C, the
built-in rules and the example config, and an installed copy finds them outside this tree.

The fresh virtualenv sees BCC through --system-site-packages and the other dependencies
through a .pth line naming this project's .venv site-packages: the dependencies are not what
is under test, the package's own files are. A plain path line adds no site directory, so the
.venv's editable-install hook (a .pth file of its own) is not run and cannot map `sensor` back
to this tree; the test checks that `sensor` is imported from the fresh virtualenv.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _run(argv: list[str | Path], cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items()
           if key not in {"PYTHONPATH", "GPUSENTRY_BPF_DIR", "VIRTUAL_ENV"}}
    return subprocess.run([str(arg) for arg in argv], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


def _checked(argv: list[str | Path], cwd: Path) -> str:
    done = _run(argv, cwd)
    assert done.returncode == 0, f"{argv}: exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done.stdout


def _build_wheel(out: Path) -> Path:
    """sdist from the tree, then the wheel from the unpacked sdist: both must carry the files."""
    _checked([sys.executable, "-c", f"from setuptools import build_meta; build_meta.build_sdist({str(out)!r})"],
             ROOT)
    (sdist,) = out.glob("gpusentry-*.tar.gz")
    with tarfile.open(sdist) as archive:
        archive.extractall(out / "src")  # our own sdist, just built
    (source,) = (out / "src").iterdir()
    _checked([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index",
              "-w", out, source], out)
    (wheel,) = out.glob("gpusentry-*.whl")
    return wheel


def _install(wheel: Path, venv: Path) -> Path:
    """A fresh virtualenv with the wheel installed; returns its site-packages."""
    _checked(["/usr/bin/python3", "-m", "venv", "--system-site-packages", "--without-pip", venv], venv.parent)
    _checked([sys.executable, "-m", "pip", "--python", venv / "bin" / "python", "install", "-q", "--no-deps",
              "--no-index", wheel], venv.parent)
    site = Path(_checked([venv / "bin" / "python", "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                         venv.parent).strip())
    (site / "project-dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    return site


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(the fresh virtualenv, its site-packages, a working directory outside the tree)."""
    base = tmp_path_factory.mktemp("package")
    (base / "dist").mkdir()
    wheel = _build_wheel(base / "dist")
    site = _install(wheel, base / "venv")
    (base / "cwd").mkdir()
    return base / "venv", site, base / "cwd"


def test_the_installed_package_is_the_one_imported(installed: tuple[Path, Path, Path]) -> None:
    venv, site, cwd = installed
    out = _checked([venv / "bin" / "python", "-c", "import sys, sensor.cli, sensor.agent; print(sensor.__file__); "
                    "print('mfusepy' in sys.modules)"], cwd)
    module, fuse_imported = out.splitlines()
    assert module == str(site / "sensor" / "__init__.py")
    assert fuse_imported == "False"  # the fake driver's FUSE library is an extra, imported late
    for name in ("bpf/events.h", "bpf/common.bpf.c", "config.example.yaml", "rules/builtin.yaml"):
        assert (site / "sensor" / name).is_file(), name


def test_run_ebpf_prints_the_packaged_c(root: None, installed: tuple[Path, Path, Path]) -> None:
    venv, site, cwd = installed
    out = _checked([venv / "bin" / "gpusentry", "run", "--ebpf"], cwd)
    assert f'#line 1 "{site}/sensor/bpf/common.bpf.c"' in out
    assert "TRACEPOINT_PROBE(sched, sched_process_exec)" in out
    assert str(ROOT) not in out


def test_the_packaged_programs_load(root: None, installed: tuple[Path, Path, Path]) -> None:
    """Compiling resolves `#include "events.h"` in the installed package, and the verifier agrees."""
    venv, _, cwd = installed
    out = _checked([venv / "bin" / "python", "-c", "from sensor.probe.program import ProbeConfig, load; "
                    "print(type(load(ProbeConfig())).__name__)"], cwd)
    assert out.strip() == "BPF"


def test_doctor_finds_the_machine_ready(root: None, installed: tuple[Path, Path, Path]) -> None:
    venv, _, cwd = installed
    out = _checked([venv / "bin" / "gpusentry", "doctor"], cwd)
    assert out.splitlines()[-1] == "ready"


def test_rules_check_reads_the_packaged_rules(installed: tuple[Path, Path, Path]) -> None:
    venv, site, cwd = installed
    out = _checked([venv / "bin" / "gpusentry", "rules", "check"], cwd)
    assert f"{site}/sensor/rules/builtin.yaml:" in out
    assert out.splitlines()[-1] == "ok: 13 rules (0 disabled) in 1 file(s)"
