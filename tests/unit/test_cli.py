"""The command line: help that says every default and hides nothing by accident, one-line
usage errors with status 2, output modes and their aliases, and shell completion."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from sensor import cli, config
from sensor.cli import COMMANDS, EPILOG, build_parser, given_flags, main
from sensor.probe import features

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def no_default_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(config, "DEFAULT_FILE", tmp_path / "none.yaml")


def commands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """A parser's subcommands, by name (none for a parser without)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action._name_parser_map)
    return {}


def parsers(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    """The parser and every subcommand's, at any depth."""
    yield parser
    for sub in commands(parser).values():
        yield from parsers(sub)


def test_no_help_leaks_suppress_and_the_hidden_command_stays_hidden() -> None:
    top = build_parser()
    for parser in parsers(top):
        assert "SUPPRESS" not in parser.format_help(), parser.prog
    help_text = top.format_help()
    assert "aggregate" not in help_text
    assert "usage: gpusentry [-h] [--version] COMMAND ..." in help_text


def test_every_flag_has_help_and_shows_its_default() -> None:
    for parser in parsers(build_parser()):
        formatter = parser.formatter_class(prog=parser.prog)
        for action in parser._actions:
            if not action.option_strings or action.help == argparse.SUPPRESS or action.dest in ("help", "version"):
                continue
            flag = f"{parser.prog} {action.option_strings[-1]}"
            assert action.help, f"{flag} has no help"
            shown = "(default" in (formatter._get_help_string(action) or "")
            alias = action.help.startswith("the same as --output")
            assert shown or action.required or alias, f"{flag} does not show its default"


def test_the_epilog_documents_exit_codes_and_completion() -> None:
    for code in ("0  ok", "1  a runtime failure", "2  a usage or setup error", "3  the probe's stream was cut",
                 "4  analyze --fail-on"):
        assert f"\n  {code}" in EPILOG
    assert 'eval "$(register-python-argcomplete gpusentry)"' in EPILOG
    assert "GPUSENTRY_<SECTION>_<KEY>" in EPILOG
    assert Path(cli.__file__).read_text().startswith("# PYTHON_ARGCOMPLETE_OK\n")


def test_every_command_has_a_function() -> None:
    assert set(commands(build_parser())) == set(COMMANDS)


@pytest.mark.parametrize(("argv", "message"), [
    (["frobnicate"], "gpusentry: error: gpusentry: argument COMMAND: invalid choice: 'frobnicate'"),
    (["run", "--output", "loud"], "gpusentry: error: gpusentry run: argument --output: invalid choice: 'loud'"),
    (["run", "--incident-window", "soon"], "gpusentry: error: gpusentry run: argument --incident-window: invalid "
                                           "float value: 'soon'"),
    (["analyze", "x", "--fail-on", "loud"], "gpusentry: error: gpusentry analyze: argument --fail-on: invalid choice"),
    (["alerts", "--since", "yesterday"], "gpusentry: error: gpusentry alerts: argument --since: 'yesterday' is no "
                                         "time"),
    (["events", "--kind", "tunnel"], "gpusentry: error: gpusentry events: argument --kind: invalid choice: 'tunnel'"),
])
def test_usage_errors_are_one_line_and_status_2(argv: list[str], message: str,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(message), err


@pytest.mark.parametrize(("argv", "output"), [
    (["run"], "alerts"), (["run", "--quiet"], "none"), (["run", "--output", "incidents"], "incidents"),
    (["aggregate", "--quiet"], "none"), (["analyze", "x"], "alerts"), (["analyze", "x", "--events"], "events"),
    (["analyze", "x", "--quiet"], "none"), (["analyze", "x", "--output", "events"], "events"),
])
def test_output_modes_and_their_aliases(argv: list[str], output: str) -> None:
    assert build_parser().parse_args(argv).output == output


def test_detection_and_analyze_flags() -> None:
    args = build_parser().parse_args(["analyze", "cap", "--incident-window", "90", "--fail-on", "high", "--json"])
    assert (args.incident_window, args.fail_on, args.json) == (90.0, "high", True)
    assert build_parser().parse_args(["aggregate"]).incident_window == 1800.0
    assert build_parser().parse_args(["analyze", "cap"]).fail_on is None


def test_given_flags_are_only_those_on_the_command_line() -> None:
    assert given_flags(["run", "--max-args", "64", "--quiet", "--rules", "a", "--rules", "b", "--no-view"]) == \
        {"max_args": 64, "output": "none", "rules": ["a", "b"], "view": False}
    assert given_flags(["run"]) == {}
    assert given_flags(["status"]) == {}


def complete(line: str) -> list[str]:
    """What Tab offers after `line`: argcomplete, asked as bash asks it, answers on fd 8."""
    environ = {**os.environ, "_ARGCOMPLETE": "1", "COMP_LINE": line, "COMP_POINT": str(len(line)),
               "_ARGCOMPLETE_IFS": "\n"}
    result = subprocess.run(["bash", "-c", f"{sys.executable} -m sensor 8>&1 9>/dev/null"], env=environ,
                            capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout.split("\n")


def test_shell_completion() -> None:
    assert complete("gpusentry ru") == ["run", "rules"]
    assert "aggregate" not in complete("gpusentry ")
    assert complete("gpusentry run --output ") == ["alerts", "incidents", "events", "none"]
    assert complete("gpusentry events --fact-kind gpu") == ["gpu_open", "gpu_compute", "gpu_profile", "gpu_launches"]
    assert "--lifeline" not in complete("gpusentry watch --")


# -- doctor's bpf() syscall number ------------------------------------------------------------


def test_the_bpf_syscall_number_is_the_architectures() -> None:
    assert features.bpf_syscall("x86_64") == 321
    assert features.bpf_syscall("aarch64") == 280
    assert features.bpf_syscall("riscv64") is None


def test_an_unknown_architecture_skips_the_ring_buffer_check() -> None:
    check = features.check_ringbuf("riscv64")
    assert (check.ok, check.required, check.skipped) == (False, False, True)
    assert check.detail == ("unknown architecture 'riscv64': the bpf() syscall check is skipped (its number is known "
                            "for x86_64, aarch64)")


def test_a_known_architecture_runs_the_ring_buffer_check() -> None:
    check = features.check_ringbuf()
    assert not check.skipped
    assert check.ok or "cannot create a BPF ring buffer" in check.detail


def test_without_the_socket_byte_tracepoints_doctor_says_what_is_lost(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A kernel before 6.3 (sock_send_length only, here, to show both are needed): not required, and said."""
    (tmp_path / "events/sock/sock_send_length").mkdir(parents=True)
    monkeypatch.setattr(features, "TRACEFS", tmp_path)
    monkeypatch.setattr(features, "tracefs_mounted", lambda: True)
    check = features.check_sock_bytes()
    assert (check.ok, check.required, check.name) == (False, False, "socket bytes")
    assert "missing" in check.detail and "not by behaviour" in check.detail
    from sensor.probe import program

    assert "-DHAVE_SOCK_LENGTH=0" in program.cflags(program.ProbeConfig(), {})
    assert program.kernel_features(program.ProbeConfig())["socket_bytes"].startswith("no: without them")
    (tmp_path / "events/sock/sock_recv_length").mkdir()
    assert features.check_sock_bytes().ok and "-DHAVE_SOCK_LENGTH=1" in program.cflags(program.ProbeConfig(), {})
