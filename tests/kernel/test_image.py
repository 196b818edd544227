"""Containerfile and scripts/image: what the image installs and runs, and how it is run.

No image is built here (minutes, and a registry or a Debian mirror). Instead: the Containerfile
installs exactly the lock with its hashes; its ENTRYPOINT and CMD are the systemd unit's
ExecStart, with the venv at the same place; that command, run from this clone's venv as root
with every capability (the container is privileged) and the image's configuration with its two
paths moved to a temporary directory (the image's two volumes), serves the host's CLI on its
socket and shows it a host exec; and docs/container.md shows the command `scripts/image
--print-run` prints, which mounts each volume at the host path the agent uses by default.
"""

from __future__ import annotations

import configparser
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sensor.api.server import DEFAULT_SOCKET
from sensor.consume import DEFAULT_JOURNAL
from tests.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]
CONTAINERFILE = ROOT / "Containerfile"
PREFIX = "/opt/gpusentry"  # where the image's venv is, and the unit's install prefix
IMAGE_CONFIG = "/etc/gpusentry/config.yaml"


def instructions() -> list[tuple[str, str]]:
    """The Containerfile's instructions as (KEYWORD, arguments), continuation lines joined."""
    text = re.sub(r"\\\n", " ", CONTAINERFILE.read_text())
    found = []
    for raw in text.splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            found.append((keyword.upper(), " ".join(rest.split())))
    return found


def final_stage() -> list[tuple[str, str]]:
    steps = instructions()
    last_from = max(i for i, (keyword, _) in enumerate(steps) if keyword == "FROM")
    return steps[last_from:]


def exec_form(keyword: str) -> list[str]:
    args = [json.loads(rest) for kw, rest in final_stage() if kw == keyword]
    assert len(args) == 1, (keyword, args)
    value: list[str] = args[0]
    return value


def unit_exec_start() -> list[str]:
    parser = configparser.ConfigParser(interpolation=None, delimiters=("=",), comment_prefixes=("#",))
    parser.read_string((ROOT / "deploy" / "systemd" / "gpusentry.service").read_text())
    return shlex.split(parser["Service"]["ExecStart"])


# -- what the image holds ---------------------------------------------------------------------


def test_the_image_installs_the_lock_with_every_hash_and_the_project_without_dependencies() -> None:
    stage = final_stage()
    assert ("COPY", f"requirements.lock {PREFIX}/requirements.lock") in stage
    runs = [rest for keyword, rest in stage if keyword == "RUN"]
    pip = f"{PREFIX}/.venv/bin/pip install --no-cache-dir --disable-pip-version-check"
    venv = f"python3 -m venv --system-site-packages {PREFIX}/.venv"
    cert = "if [ -s /run/secrets/pip-cert ]; then export PIP_CERT=/run/secrets/pip-cert; fi"
    assert f"--mount=type=secret,id=pip-cert,required=false {venv} && {cert} && {pip} --require-hashes -r " \
        f"{PREFIX}/requirements.lock" in runs
    assert f"{pip} --no-deps /tmp/wheels/gpusentry-*.whl && rm -rf /tmp/wheels" in runs
    # no other pip install in the image: nothing unhashed reaches it
    assert sum(run.count("pip install") for run in runs) == 2
    # BCC from the distribution, as scripts/install has it
    apt = next(run for run in runs if "apt-get install" in run)
    assert apt.split("--no-install-recommends ")[1].split(" >")[0].split() == \
        ["python3", "python3-venv", "python3-bpfcc", "libbpf1"]


def test_the_image_runs_what_the_systemd_unit_runs_with_its_two_directories_as_volumes() -> None:
    assert exec_form("ENTRYPOINT") + exec_form("CMD") == unit_exec_start()
    assert exec_form("VOLUME") == [str(DEFAULT_JOURNAL.parent), str(DEFAULT_SOCKET.parent)]
    assert ("COPY", f"sensor/config.example.yaml {IMAGE_CONFIG}") in final_stage()
    assert f"chgrp gpusentry {IMAGE_CONFIG} && chmod 0640 {IMAGE_CONFIG}" in \
        [rest for keyword, rest in final_stage() if keyword == "RUN"]


# -- how it is run ----------------------------------------------------------------------------


def print_run() -> str:
    result = subprocess.run([str(ROOT / "scripts" / "image"), "--print-run"], capture_output=True, text=True,
                            timeout=10)
    assert (result.returncode, result.stderr) == (0, "")
    return result.stdout


def test_docs_show_the_command_scripts_image_prints() -> None:
    section = (ROOT / "docs" / "container.md").read_text().split("\n## Run it\n", 1)[1]
    block = section.split("```sh\n", 1)[1].split("```", 1)[0]
    assert block == print_run()


def test_the_run_command_mounts_what_the_agent_uses_at_the_hosts_own_paths() -> None:
    lines = print_run().splitlines()
    assert lines[0] == f"mkdir -p {DEFAULT_JOURNAL.parent} {DEFAULT_SOCKET.parent}"
    words = shlex.split(" ".join(lines[1:]).replace(" \\ ", " "))
    assert words[:5] == ["podman", "run", "--detach", "--name", "gpusentry"]
    assert words[-1] == "localhost/gpusentry:latest"
    options = words[5:-1]
    volumes = [option.removeprefix("--volume=").split(":") for option in options if option.startswith("--volume=")]
    assert [option for option in options if not option.startswith("--volume=")] == \
        ["--privileged", "--pid=host", "--network=host", "--cgroupns=host"]
    assert volumes == [
        ["/sys/kernel/tracing", "/sys/kernel/tracing"], ["/sys/fs/bpf", "/sys/fs/bpf"],
        ["/sys/fs/cgroup", "/sys/fs/cgroup", "ro"],
        ["/lib/modules", "/lib/modules", "ro"], ["/usr/src", "/usr/src", "ro"],
        [str(DEFAULT_JOURNAL.parent)] * 2, [str(DEFAULT_SOCKET.parent)] * 2,
    ]
    # the image's volumes are the two read-write mounts
    assert [volume[0] for volume in volumes if len(volume) == 2 and not volume[0].startswith("/sys/")] == \
        exec_form("VOLUME")
    # BCC's headers: this host's build link resolves inside what is mounted
    build = Path("/lib/modules", os.uname().release, "build").resolve()
    assert build.is_relative_to("/usr/src") or build.is_relative_to("/lib/modules"), build


# -- the image's command, here --------------------------------------------------------------


class ImageCommand:
    """ENTRYPOINT + CMD as the container runs it: as root with every capability, the venv's
    prefix this clone, the image's configuration (the example's) with its socket and journal
    moved under `directory`, which stands for the volumes, and the image's PATH."""

    def __init__(self, directory: Path) -> None:
        self.socket = directory / DEFAULT_SOCKET.relative_to("/")
        self.journal = directory / DEFAULT_JOURNAL.relative_to("/")
        config = directory / "config.yaml"
        example = (ROOT / "sensor" / "config.example.yaml").read_text()
        for default, moved in ((DEFAULT_SOCKET, self.socket), (DEFAULT_JOURNAL, self.journal)):
            assert example.count(f": {default}\n") == 1, default
            example = example.replace(f": {default}\n", f": {moved}\n")
        config.write_text(example)
        config.chmod(0o644)
        command = [word.replace(PREFIX, str(ROOT)) for word in exec_form("ENTRYPOINT") + exec_form("CMD")]
        command[command.index("-c") + 1] = str(config)
        env = {**os.environ, "PATH": f"{ROOT}/.venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
        self.proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)
        self.messages: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.messages.append(line.rstrip("\n"))

    def said(self, start: str) -> str | None:
        return next((line for line in list(self.messages) if line.startswith(start)), None)


@pytest.fixture
def image_command(root: None) -> Iterator[ImageCommand]:
    directory = Path(tempfile.mkdtemp(prefix="gs-image-"))
    directory.chmod(0o755)
    run = ImageCommand(directory)
    yield run
    if run.proc.poll() is None:
        os.killpg(run.proc.pid, signal.SIGKILL)
        run.proc.wait(timeout=10)
    shutil.rmtree(directory)


class HostEvents:
    """`gpusentry events --kind exec --binary PATH` from this clone's venv, as on the host."""

    def __init__(self, socket: Path, binary: str) -> None:
        self.proc = subprocess.Popen([str(ROOT / ".venv" / "bin" / "gpusentry"), "events", "--socket", str(socket),
                                      "--kind", "exec", "--binary", binary],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines: list[dict[str, Any]] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(json.loads(line))


def test_the_images_command_serves_the_hosts_cli_and_sees_a_host_exec(image_command: ImageCommand,
                                                                       tmp_path: Path) -> None:
    banner = wait_until(lambda: image_command.said("gpusentry: watching") or image_command.proc.poll() is not None,
                        timeout=60, what="the agent's watching line")
    assert isinstance(banner, str), image_command.messages
    assert "as gpusentry)" in banner  # the image has the user, and the agent drops to it

    helper = tmp_path / "image-exec-helper"
    shutil.copy("/bin/true", helper)
    events = HostEvents(image_command.socket, str(helper))
    marker = f"image-marker-{os.getpid()}"
    pids: list[int] = []

    def seen() -> list[dict[str, Any]]:
        # the stream starts when the CLI has subscribed: exec again until one arrives
        if not any(line["type"] == "event" for line in list(events.lines)):
            pids.append(subprocess.Popen([str(helper), marker]).pid)
        return [line for line in list(events.lines) if line["type"] == "event"]

    try:
        line = wait_until(seen, timeout=20, what="a host exec through the socket")[0]
    finally:
        events.proc.terminate()
        events.proc.wait(timeout=10)
    assert line["type"] == "event"
    event = line["event"]
    assert event["kind"] == "EVENT_KIND_EXEC"
    assert event["process"]["pid"] in pids
    exec_ = event["exec"]
    assert (exec_["filename"], exec_["argv"], exec_["result"], exec_["argv_truncated"]) == \
        (str(helper), [str(helper), marker], 0, False)

    image_command.proc.send_signal(signal.SIGTERM)  # podman stop
    assert image_command.proc.wait(timeout=30) == 0, image_command.messages
    assert not [line for line in image_command.messages if re.search(r"error|Traceback", line)]


def test_print_run_needs_no_root_and_the_rest_says_it_needs_root(root: None) -> None:
    """As nobody (setpriv, from the suite's root)."""
    nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--"]
    script = str(ROOT / "scripts" / "image")
    printed = subprocess.run([*nobody, script, "--print-run"], capture_output=True, text=True, timeout=10)
    assert (printed.returncode, printed.stdout) == (0, print_run())
    refused = subprocess.run([*nobody, script, "--debootstrap"], capture_output=True, text=True, timeout=10)
    assert refused.returncode == 2
    assert refused.stderr == ("scripts/image: needs root (rootful podman; the agent loads BPF programs); "
                              f"fix: sudo {script} --debootstrap\n")
