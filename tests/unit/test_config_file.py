"""The configuration file, the environment and flags: which wins, where each value came from,
and every mistake reported with its place and what is accepted, before anything starts."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import pytest
import yaml

from sensor import config
from sensor.cli import build_parser, configure, main
from tests.unit.test_cli import commands

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "sensor" / "config.example.yaml"


@pytest.fixture(autouse=True)
def no_default_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """This machine's /etc/gpusentry/config.yaml never leaks into a test."""
    monkeypatch.setattr(config, "DEFAULT_FILE", tmp_path / "no-such-dir" / "config.yaml")
    for variable in [v for v in os.environ if v.startswith(config.ENV_PREFIX)]:
        monkeypatch.delenv(variable)


def write(tmp_path: Path, text: str, name: str = "config.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def run_args(*argv: str) -> argparse.Namespace:
    """The namespace `gpusentry run ARGV...` gets, with its settings applied."""
    args = build_parser().parse_args(["run", *argv])
    configure(args, ["run", *argv])
    return args


# -- the example ------------------------------------------------------------------------------


def test_the_example_passes_config_check(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "check", str(EXAMPLE)]) == 0
    assert capsys.readouterr().out == f"ok: {EXAMPLE}\n"


def test_the_example_has_every_key_with_its_default() -> None:
    settings = config.load(EXAMPLE, environ={})
    for key in config.KEYS:
        assert settings.values[key.dotted].from_file, f"{key.dotted} is not in the example"
        assert settings[key.dotted] == key.default, key.dotted


def test_every_flag_of_run_has_a_key_in_the_example() -> None:
    example = yaml.safe_load(EXAMPLE.read_text())
    run = commands(build_parser())["run"]
    not_settings = {"-h", "--help", "-c", "--config", "--ebpf", "--quiet"}  # a command, not a setting; an alias
    flags = {flag for action in run._actions for flag in action.option_strings} - not_settings
    by_flag = {key.flag: key for key in config.KEYS}
    for flag in flags:
        key = by_flag.get(flag) or by_flag["--" + flag.removeprefix("--no-")]  # --no-json: json
        assert key.name in example[key.section], f"{flag} ({key.dotted}) is not in the example"


def test_the_defaults_agree_with_the_code_that_uses_them() -> None:
    from sensor.api.server import DEFAULT_SOCKET
    from sensor.consume import DEFAULT_JOURNAL

    assert (str(DEFAULT_SOCKET), str(DEFAULT_JOURNAL)) == (config.DEFAULT_SOCKET, config.DEFAULT_JOURNAL)


# -- precedence and sources -------------------------------------------------------------------


def test_a_flag_beats_the_environment_which_beats_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    file = write(tmp_path, "probe:\n  max_args: 32\n  arg_len: 128\napi:\n  listen: 127.0.0.1:5000\n"
                           "detection:\n  egress_allow: [10.0.0.0/8]\n")
    monkeypatch.setenv("GPUSENTRY_PROBE_ARG_LEN", "64")
    monkeypatch.setenv("GPUSENTRY_API_LISTEN", "127.0.0.1:6000")
    monkeypatch.setenv("GPUSENTRY_DETECTION_EGRESS_ALLOW", "192.168.0.0/16, 172.16.0.0/12")
    args = run_args("-c", str(file), "--listen", "127.0.0.1:7000", "--max-subscribers", "8")
    assert (args.max_args, args.arg_len, args.listen, args.max_subscribers) == (32, 64, "127.0.0.1:7000", 8)
    assert args.egress_allow == ["192.168.0.0/16", "172.16.0.0/12"]
    sources = {dotted: setting.source for dotted, setting in args.settings.values.items()}
    assert sources["probe.max_args"] == f"{file}:2"
    assert sources["probe.arg_len"] == "env GPUSENTRY_PROBE_ARG_LEN"
    assert sources["api.listen"] == "flag --listen"
    assert sources["api.max_subscribers"] == "flag --max-subscribers"
    assert sources["probe.queue_size"] == "default"


def test_flags_given_are_told_from_defaults(tmp_path: Path) -> None:
    """A flag given with its default value still beats the file."""
    file = write(tmp_path, "probe:\n  max_args: 32\noutput:\n  mode: none\n  json: true\n")
    args = run_args("-c", str(file), "--max-args", "64", "--no-json")
    assert (args.max_args, args.output, args.json) == (64, "none", False)
    assert run_args("-c", str(file), "--output", "alerts").output == "alerts"


def test_aliases_are_flags_of_their_key(tmp_path: Path) -> None:
    file = write(tmp_path, "output:\n  mode: events\n")
    args = run_args("-c", str(file), "--quiet")
    assert args.output == "none" and args.settings.values["output.mode"].source == "flag --output"
    analyze = build_parser().parse_args(["analyze", "x.gscap", "-c", str(file), "--events", "--incident-window", "60"])
    configure(analyze, ["analyze", "x.gscap", "-c", str(file), "--events", "--incident-window", "60"])
    assert (analyze.output, analyze.incident_window, analyze.fail_on) == ("events", 60.0, None)


def test_an_empty_flag_unsets_what_the_file_set(tmp_path: Path) -> None:
    file = write(tmp_path, "api:\n  listen: 127.0.0.1:5000\n")
    assert run_args("-c", str(file), "--listen", "").listen is None


def test_relative_paths_in_the_file_are_relative_to_it(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    file = write(tmp_path, "detection:\n  rules: [site.yaml, /abs/other.yaml]\njournal:\n  path: j.db\n"
                           "api:\n  socket: none\n  listen: 127.0.0.1:5000\n", "etc/config.yaml")
    args = run_args("-c", str(file), "--no-view")
    assert args.rules == [str(tmp_path / "etc" / "site.yaml"), "/abs/other.yaml"]
    assert (args.journal, args.socket) == (str(tmp_path / "etc" / "j.db"), "none")


def test_a_missing_default_file_means_the_defaults() -> None:
    args = run_args()
    assert not args.settings.loaded
    assert all(setting.source == "default" for setting in args.settings.values.values())
    assert (args.output, args.incident_window, args.rules, args.view) == ("alerts", 1800.0, [], None)


def test_the_default_file_is_read_when_it_exists(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(config, "DEFAULT_FILE", write(tmp_path, "output:\n  json: true\n"))
    assert run_args().json is True


def test_a_missing_file_given_with_c_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "-c", str(tmp_path / "nope.yaml")]) == 2
    assert capsys.readouterr().err == (
        f"gpusentry: error: invalid configuration: {tmp_path / 'nope.yaml'}: no such file; fix: give an existing "
        "file; sensor/config.example.yaml documents every key\n")


def test_other_gpusentry_variables_are_not_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GPUSENTRY_BPF_DIR", "/somewhere")
    monkeypatch.setenv("GPUSENTRY_OUTPUT_JSON", "yes")
    monkeypatch.setenv("GPUSENTRY_AGENT_VIEW", "auto")
    args = run_args()
    assert (args.json, args.view) == (True, None)


# -- mistakes ---------------------------------------------------------------------------------


def test_every_problem_has_its_line_and_what_is_accepted(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    file = write(tmp_path, "probe:\n  max_args: many\n  arg_len: 8\napi:\n  lisen: 0.0.0.0:1\n  max_subscribers: 0\n"
                           "detection:\n  egress_allow: [10.0.0.0/8, nope]\n  incident_window: -1\noutptu: {}\n"
                           "output:\n  mode: loud\n  json: 1\nagent:\n  view: maybe\n")
    assert main(["config", "check", str(file)]) == 2
    assert capsys.readouterr().out.splitlines() == [
        f"{file}:2: probe.max_args: 'many' is not an integer",
        f"{file}:5: unknown key api.lisen (did you mean 'listen'?); the api keys are socket, socket_group, listen, "
        "tls_cert, tls_key, tls_client_ca, insecure_plaintext, max_subscribers",
        f"{file}:6: api.max_subscribers: 0 is out of range: give an integer from 1 to 4096",
        f"{file}:8: detection.egress_allow: item 1: 'nope' is not a network; give a CIDR like 10.0.0.0/8",
        f"{file}:9: detection.incident_window: -1 is not a number of seconds above 0",
        f"{file}:10: unknown section 'outptu' (did you mean 'output'?); the sections are probe, detection, output, "
        "api, journal, agent, metrics, containers, sinks",
        f"{file}:12: output.mode: 'loud' is not one of alerts, incidents, events, none",
        f"{file}:13: output.json: 1 is not true or false",
        f"{file}:15: agent.view: 'maybe' is not true, false or null (decided at start)",
        f"{file}:3: probe.arg_len: --arg-len 8 is out of range; give a value from 16 to 4096",
        "10 problem(s)",
    ]


def test_values_are_checked_together_as_their_users_check_them(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    file = write(tmp_path, "probe:\n  max_args: 4096\n  arg_len: 512\napi:\n  tls_cert: cert.pem\n")
    assert main(["config", "check", str(file)]) == 2
    assert capsys.readouterr().out.splitlines() == [
        f"{file}:2: probe.max_args: --max-args 4096 x --arg-len 512 needs 2105344 bytes per exec record; keep "
        "max-args x arg-len at or under 512 KiB",
        f"{file}:5: api.tls_cert: --tls-cert and --tls-key go together; give both, or neither",
        "2 problem(s)",
    ]


def test_a_problem_that_names_no_setting_is_placed_at_its_section(tmp_path: Path) -> None:
    file = write(tmp_path, "api:\n  max_subscribers: 8\n  socket: none\n")
    with pytest.raises(config.ConfigError) as info:
        config.load(file, environ={})
    assert info.value.problems == [
        f"{file}:3: api.socket: the API has nowhere to listen; keep the default --socket, or give --listen"]


def test_a_problem_only_flags_cause_is_the_flags_own_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--arg-len", "100000"]) == 2
    assert capsys.readouterr().err == \
        "gpusentry: error: --arg-len 100000 is out of range; fix: give a value from 16 to 4096\n"


def test_a_bad_file_stops_run_before_anything_starts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    file = write(tmp_path, "probe:\n  ringbuf_pages: 1000\n")
    assert main(["run", "-c", str(file)]) == 2
    assert capsys.readouterr().err == (
        f"gpusentry: error: invalid configuration: {file}:2: probe.ringbuf_pages: --ringbuf-pages 1000 is not a "
        "power of two; use 256, 1024, 4096, ...; fix: correct it; `gpusentry config show` (or `config check FILE`) "
        "lists every problem\n")


def test_analyze_checks_only_the_sections_it_uses(tmp_path: Path) -> None:
    """A capture is analysed anywhere: the API's settings of the host it came from (a group this
    machine lacks) are no reason to refuse, as long as they are well-formed."""
    file = write(tmp_path, "api:\n  socket_group: no-such-group-here\ndetection:\n  incident_window: 5\n")
    args = build_parser().parse_args(["analyze", "x.gscap", "-c", str(file)])
    configure(args, ["analyze", "x.gscap", "-c", str(file)])
    assert args.incident_window == 5.0
    with pytest.raises(config.ConfigError, match="--socket-group no-such-group-here: no such group"):
        run_args("-c", str(file))


def test_environment_mistakes_name_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GPUSENTRY_PROBE_MAX_ARGS", "lots")
    monkeypatch.setenv("GPUSENTRY_API_LISTN", "127.0.0.1:1")
    monkeypatch.setenv("GPUSENTRY_OUTPUT_JSON", "perhaps")
    with pytest.raises(config.ConfigError) as info:
        config.load()
    assert info.value.problems == [
        "env GPUSENTRY_API_LISTN: unknown setting (did you mean 'GPUSENTRY_API_LISTEN'?); the api variables are "
        "GPUSENTRY_API_SOCKET, GPUSENTRY_API_SOCKET_GROUP, GPUSENTRY_API_LISTEN, GPUSENTRY_API_TLS_CERT, "
        "GPUSENTRY_API_TLS_KEY, GPUSENTRY_API_TLS_CLIENT_CA, GPUSENTRY_API_INSECURE_PLAINTEXT, "
        "GPUSENTRY_API_MAX_SUBSCRIBERS",
        "env GPUSENTRY_OUTPUT_JSON: output.json: 'perhaps' is not true or false (in the environment: true, yes, on, "
        "1, false, no, off, 0)",
        "env GPUSENTRY_PROBE_MAX_ARGS: probe.max_args: 'lots' is not an integer",
    ]


@pytest.mark.parametrize(("text", "problem"), [
    ("probe: [\n", "2: not valid YAML: expected the node content, but found '<stream end>'"),
    ("- a\n", "1: a configuration file is a mapping of sections (probe, detection, output, api, journal, agent, "
              "metrics, containers, sinks)"),
    ("probe: 3\n", "1: probe: a section is a mapping of keys (max_args, arg_len, ringbuf_pages, queue_size)"),
    ("probe:\n  max_args: 1\n  max_args: 2\n", "3: not valid YAML: duplicate key 'max_args'"),
])
def test_a_file_that_is_no_configuration(tmp_path: Path, text: str, problem: str) -> None:
    file = write(tmp_path, text)
    with pytest.raises(config.ConfigError) as info:
        config.load(file, environ={})
    assert info.value.problems == [f"{file}:{problem}"]


def test_an_empty_file_means_the_defaults(tmp_path: Path) -> None:
    settings = config.load(write(tmp_path, "# nothing yet\n"), environ={})
    assert settings.loaded and all(s.source == "default" for s in settings.values.values())


def test_config_check_checks_the_rule_files_it_names(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(tmp_path, "rules:\n  - id: x\n", "site.yaml")
    file = write(tmp_path, "detection:\n  rules: [site.yaml]\n")
    assert main(["config", "check", str(file)]) == 2
    out = capsys.readouterr().out
    assert out.startswith(f"{tmp_path / 'site.yaml'}:2: rule x: ") and out.endswith("problem(s)\n")


# -- config show ------------------------------------------------------------------------------


def test_config_show_says_where_every_value_came_from(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    file = write(tmp_path, "api:\n  listen: 127.0.0.1:5000\ndetection:\n  egress_allow: [10.0.0.0/8]\n")
    monkeypatch.setenv("GPUSENTRY_JOURNAL_RETENTION_DAYS", "7")
    assert main(["config", "show", "-c", str(file)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"# configuration file: {file}"
    assert len(lines) == 1 + len(config.KEYS)
    rows = {line.split()[0]: line for line in lines[1:]}
    # three columns, each as wide as its widest entry (containers.kubelet_socket's default, here)
    width = max(len(k.dotted) for k in config.KEYS) + 2
    value_width = len(str(config.KEY["containers.kubelet_socket"].default)) + 2
    assert rows["api.listen"] == f"{'api.listen':{width}}{'127.0.0.1:5000':{value_width}}{file}:2"
    assert rows["detection.egress_allow"] == f"{'detection.egress_allow':{width}}{'[10.0.0.0/8]':{value_width}}{file}:4"
    assert rows["journal.retention_days"] == \
        f"{'journal.retention_days':{width}}{'7':{value_width}}env GPUSENTRY_JOURNAL_RETENTION_DAYS"
    assert rows["probe.max_args"] == f"{'probe.max_args':{width}}{'64':{value_width}}default"
    assert rows["agent.view"] == f"{'agent.view':{width}}{'null':{value_width}}default"


def test_config_show_without_a_file(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "show"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == \
        f"# configuration file: {config.DEFAULT_FILE} (not found: every value is the default)"


def test_config_show_lists_every_problem(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    file = write(tmp_path, "probe:\n  max_args: x\n  arg_len: y\n")
    assert main(["config", "show", "-c", str(file)]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"{file}:2: probe.max_args: 'x' is not an integer", f"{file}:3: probe.arg_len: 'y' is not an integer",
        "2 problem(s)"]


# -- the agent's aggregator reads the file itself -----------------------------------------------


def test_the_aggregator_gets_the_file_and_only_the_flags_given(tmp_path: Path) -> None:
    """Settings from the file are not repeated as flags: a flag beats the file, so a SIGHUP
    could never change them. Parsed back, the aggregator's settings are the agent's."""
    from sensor.agent import _aggregate_command

    file = write(tmp_path, "detection:\n  egress_allow: [10.0.0.0/8]\napi:\n  listen: 127.0.0.1:5000\n")
    args = run_args("-c", str(file), "--json", "--rules", "site.yaml", "--listen", "", "--max-args", "32",
                    "--output", "events", "--socket", "api.sock")
    command = _aggregate_command(args, view=False)
    assert command == [sys.executable, "-m", "sensor", "aggregate", "--config", str(file),
                       "--rules", os.path.abspath("site.yaml"), "--output", "events", "--json",
                       "--socket", os.path.abspath("api.sock"), "--listen", ""]
    assert _aggregate_command(args, view=True)[-2:] == ["--output", "none"]  # the view has the terminal
    aggregate = build_parser().parse_args(command[3:])
    configure(aggregate, command[3:])
    def absolute(value: object) -> object:  # the paths the agent gave on its command line, relative
        if isinstance(value, tuple):
            return tuple(absolute(v) for v in value)
        return os.path.abspath(value) if isinstance(value, str) and value.endswith((".yaml", ".sock")) else value

    for key in config.KEYS:
        if key.section in config.SECTIONS_READ["aggregate"]:
            assert aggregate.settings[key.dotted] == absolute(args.settings[key.dotted]), key.dotted


def test_the_aggregators_user_must_be_able_to_read_the_file(tmp_path: Path) -> None:
    from sensor.agent import RunAs, _check_config_readable
    from sensor.errors import UsageError
    from sensor.privileges import Account

    file = write(tmp_path, "output:\n  json: true\n")
    file.chmod(0o600)
    nobody = RunAs("nobody", Account(65534, 65534, ()))
    with pytest.raises(UsageError) as info:
        _check_config_readable(config.load(file, environ={}), nobody)
    assert str(info.value) == (
        f"the aggregator runs as nobody and cannot read the configuration file {file} (it reads it at start and "
        f"again on SIGHUP); fix: make it readable by nobody (e.g. chgrp nobody {file}; chmod 0640 {file}), or "
        "--user root")
    _check_config_readable(config.load(file, environ={}), RunAs(None, None))  # root reads anything
    _check_config_readable(config.load(environ={}), nobody)  # no file: nothing to read
