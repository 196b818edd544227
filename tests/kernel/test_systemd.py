"""deploy/systemd: the unit is valid for systemd, and what it runs works with what it grants.

PID 1 here is not systemd, so the unit is never started by systemd in these tests. Instead its
ExecStart runs as systemd would run it in what can be reproduced without systemd: as root (no
User=), under its CapabilityBoundingSet and NoNewPrivileges (through setpriv), with the
install prefix rewritten to this clone as `scripts/install --systemd` does. The sandboxing
(ProtectSystem=, ProtectHome=, PrivateTmp=, ProtectKernelTunables=) is checked only by
`systemd-analyze verify`.
"""

from __future__ import annotations

import configparser
import grp
import os
import pwd
import re
import shlex
import shutil
import signal
import stat
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from sensor import privileges
from sensor.api.client import sensor_stub
from sensor.api.server import DEFAULT_SOCKET
from sensor.consume import DEFAULT_JOURNAL
from sensor.probe import features
from tests.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy" / "systemd"
UNIT = DEPLOY / "gpusentry.service"
PREFIX = "/opt/gpusentry"  # the install prefix the unit names; scripts/install --systemd rewrites it


def service() -> configparser.SectionProxy:
    parser = configparser.ConfigParser(interpolation=None, delimiters=("=",), comment_prefixes=("#",))
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # systemd's keys are case-sensitive
    parser.read_string(UNIT.read_text())
    return parser["Service"]


def installed_unit(directory: Path) -> Path:
    """The unit as scripts/install --systemd writes it for this clone."""
    path = directory / UNIT.name
    path.write_text(UNIT.read_text().replace(PREFIX, str(ROOT)))
    return path


def cap_numbers() -> dict[str, int]:
    """Capability names (as in CapabilityBoundingSet=, without CAP_) by number: setpriv lists
    them in the kernel's order."""
    names = subprocess.run(["setpriv", "--list-caps"], capture_output=True, text=True, check=True).stdout.split()
    return {name: number for number, name in enumerate(names)}


def bounding_set() -> set[int]:
    numbers = cap_numbers()
    return {numbers[name.removeprefix("CAP_").lower()] for name in service()["CapabilityBoundingSet"].split()}


# -- the unit as systemd reads it --------------------------------------------------------------


def _verify(unit: Path) -> subprocess.CompletedProcess[str]:
    assert shutil.which("systemd-analyze") is not None, \
        "no systemd-analyze: scripts/install --test installs systemd (it installs without being PID 1)"
    return subprocess.run(["systemd-analyze", "verify", "--man=no", str(unit)], capture_output=True, text=True,
                          timeout=60)


def test_systemd_analyze_verify_finds_nothing_to_say(tmp_path: Path) -> None:
    # verify exits 0 even for an unknown key or a value it cannot parse (it ignores the line):
    # only an empty stderr means the unit is read as written.
    result = _verify(installed_unit(tmp_path))
    assert (result.returncode, result.stderr) == (0, "")


def test_verify_would_catch_a_bad_line(tmp_path: Path) -> None:
    unit = installed_unit(tmp_path)
    unit.write_text(unit.read_text().replace("Nice=-5", "Nice=fast"))
    assert "Failed to parse nice priority 'fast'" in _verify(unit).stderr


def test_the_directories_the_unit_declares_are_the_agents_defaults() -> None:
    unit = service()
    assert Path("/run", unit["RuntimeDirectory"]) == DEFAULT_SOCKET.parent
    assert Path("/var/lib", unit["StateDirectory"]) == DEFAULT_JOURNAL.parent
    assert "User" not in unit  # root: the probe loads BPF and drops the other processes itself


def test_the_bounding_set_holds_what_the_agent_needs_before_and_after_dropping() -> None:
    """What the probe keeps (README's table for `gpusentry run`, and AGENT_PROBE_CAPS), what it
    loads BPF with, and what sensor.privileges drops with. CAP_SETUID, CAP_CHOWN, CAP_FOWNER and
    CAP_DAC_OVERRIDE have no constant in the code (os.setresuid, os.chown, opening the journal in
    the gpusentry user's 0700 directory): the run test below needs each of them."""
    numbers = cap_numbers()
    row = next(line for line in (ROOT / "README.md").read_text().splitlines()
               if line.startswith("| probe | `gpusentry run` |"))
    documented = {numbers[name.strip().removeprefix("cap_")] for name in row.split("|")[6].split(",")}
    assert documented == set(privileges.AGENT_PROBE_CAPS)
    loading = {features.CAP_BPF, features.CAP_PERFMON, features.CAP_SYS_ADMIN}
    dropping = {privileges.CAP_SETPCAP, privileges.CAP_SETGID}
    assert documented | loading | dropping <= bounding_set()


# -- what the unit runs -----------------------------------------------------------------------


def tmpfiles_entries() -> dict[Path, tuple[int, str, str]]:
    """The tmpfiles snippet's directories: path -> (mode, user, group)."""
    entries = {}
    for line in (DEPLOY / "gpusentry.tmpfiles.conf").read_text().splitlines():
        if line.startswith("d "):
            _, path, mode, user, group, _age = line.split()
            entries[Path(path)] = (int(mode, 8), user, group)
    return entries


class UnitRun:
    """ExecStart, run as the unit would run it, under `root` (a stand-in for /, root's and
    0755 like /run and /var/lib): the configuration file, the one argument changed, puts the
    socket and the journal where RuntimeDirectory= and StateDirectory= put them, under `root`.
    Unlike systemd, the test does not create those directories: the agent then creates them
    and gives them to its user, as it does with its default ones that systemd created, with
    the same capabilities (CAP_CHOWN, CAP_FOWNER)."""

    def __init__(self, root: Path) -> None:
        unit = service()
        self.socket = root / DEFAULT_SOCKET.relative_to("/")
        self.journal = root / DEFAULT_JOURNAL.relative_to("/")
        config = root / "config.yaml"
        config.write_text(f"api:\n  socket: {self.socket}\njournal:\n  path: {self.journal}\n")
        config.chmod(0o644)
        command = shlex.split(unit["ExecStart"].replace(PREFIX, str(ROOT)))
        command[command.index("-c") + 1] = str(config)
        caps = ",".join(f"+{name.removeprefix('CAP_').lower()}" for name in unit["CapabilityBoundingSet"].split())
        sandbox = ["setpriv", f"--bounding-set=-all,{caps}", "--inh-caps=-all"]
        sandbox += ["--no-new-privs"] if unit["NoNewPrivileges"] == "yes" else []
        self.proc = subprocess.Popen([*sandbox, "--", *command], stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                     start_new_session=True)
        self.messages: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.messages.append(line.rstrip("\n"))

    def said(self, start: str) -> str | None:
        return next((line for line in list(self.messages) if line.startswith(start)), None)

    def reload(self) -> None:
        """ExecReload=, with $MAINPID this process."""
        reload = shlex.split(service()["ExecReload"].replace("$MAINPID", str(self.proc.pid)))
        subprocess.run(reload, check=True)


@pytest.fixture
def unit_run(root: None) -> Iterator[UnitRun]:
    directory = Path(tempfile.mkdtemp(prefix="gs-unit-"))
    directory.chmod(0o755)
    run = UnitRun(directory)
    yield run
    if run.proc.poll() is None:
        os.killpg(run.proc.pid, signal.SIGKILL)
        run.proc.wait(timeout=10)  # the aggregator follows: the pipe from the probe ends
    shutil.rmtree(directory)


def test_what_the_unit_runs_starts_answers_reloads_and_stops(unit_run: UnitRun) -> None:
    from sensor.api.v1 import gpusentry_pb2 as pb

    banner = wait_until(lambda: unit_run.said("gpusentry: watching") or unit_run.proc.poll() is not None,
                        timeout=60, what="the agent's watching line")
    assert isinstance(banner, str), unit_run.messages
    kept = ", ".join(sorted(privileges.CAP_NAMES[cap] for cap in privileges.AGENT_PROBE_CAPS))
    assert f"with {kept};" in banner  # nothing it keeps was missing from the bounding set
    assert "as gpusentry)" in banner

    for directory, (mode, user, group) in tmpfiles_entries().items():  # as the tmpfiles snippet says
        made = (unit_run.socket if directory == DEFAULT_SOCKET.parent else unit_run.journal).parent.stat()
        owner = (pwd.getpwuid(made.st_uid).pw_name, grp.getgrgid(made.st_gid).gr_name)
        assert (stat.S_IMODE(made.st_mode), *owner) == (mode, user, group), directory

    import grpc

    with grpc.insecure_channel(f"unix:{unit_run.socket}") as channel:
        status = sensor_stub(channel).GetStatus(pb.GetStatusRequest(), timeout=10)
    assert status.ListFields()

    unit_run.reload()
    wait_until(lambda: unit_run.said("gpusentry: rules reloaded"), what="the reload line")
    unit_run.proc.send_signal(signal.SIGINT)
    assert unit_run.proc.wait(timeout=30) == 0, unit_run.messages
    assert not [line for line in unit_run.messages if re.search(r"error|Traceback", line)]
