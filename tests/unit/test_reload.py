"""SIGHUP: the configuration file and the rule files read again; the rules and the egress
allowlist applied, other changes named as waiting for a restart, anything invalid changing
nothing and saying why."""

from __future__ import annotations

import argparse
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from sensor import config
from sensor.aggregator.aggregator import Aggregator
from sensor.aggregator.detector import DetectorConfig
from sensor.api.handover import Handover
from sensor.api.state import ApiState
from sensor.capture import StreamMeta
from sensor.cli import build_parser, configure
from sensor.journal import Journal
from sensor.reload import Reloader
from sensor.rules.loader import load_rules

RULE = """rules:
  - id: {rule_id}
    title: Marker
    description: an exec of a marker
    severity: low
    match: {{fact: exec, where: {{name: marker}}}}
"""
BUILTIN = len(load_rules([]).rules)


@pytest.fixture(autouse=True)
def no_default_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(config, "DEFAULT_FILE", tmp_path / "none.yaml")
    for variable in [v for v in os.environ if v.startswith(config.ENV_PREFIX)]:
        monkeypatch.delenv(variable)


@pytest.fixture
def state(tmp_path: Path) -> Iterator[ApiState]:
    journal = Journal(tmp_path / "journal.db")
    yield ApiState(Aggregator(rules=load_rules([])), journal, Handover(), StreamMeta())
    journal.close()


def aggregate_args(*argv: str) -> argparse.Namespace:
    """The aggregator's namespace, its settings applied, as `gpusentry aggregate ARGV...` gets it."""
    args = build_parser().parse_args(["aggregate", *argv])
    configure(args, ["aggregate", *argv])
    return args


def aggregator_for(args: argparse.Namespace) -> Aggregator:
    return Aggregator(rules=load_rules(Path(p) for p in args.rules),
                      config=DetectorConfig(egress_allowlist=tuple(args.egress_allow)))


def rule_ids(aggregator: Aggregator) -> set[str]:
    assert aggregator.detector is not None
    return {r.id for r in aggregator.detector.engine.ruleset.rules}


def allowed(aggregator: Aggregator, address: str) -> bool:
    assert aggregator.detector is not None
    return aggregator.detector.egress.allowed(address)


def test_the_file_is_read_again_and_what_can_change_is_applied(tmp_path: Path, state: ApiState) -> None:
    (tmp_path / "one.yaml").write_text(RULE.format(rule_id="one"))
    (tmp_path / "two.yaml").write_text(RULE.format(rule_id="two"))
    file = tmp_path / "config.yaml"
    file.write_text("detection:\n  rules: [one.yaml]\n")
    args = aggregate_args("-c", str(file))
    aggregator = aggregator_for(args)
    reloader = Reloader(args, aggregator, state)
    assert "one" in rule_ids(aggregator) and not allowed(aggregator, "10.1.2.3")

    file.write_text("detection:\n  rules: [two.yaml]\n  egress_allow: [10.0.0.0/8]\n")
    assert reloader.reload() == (f"gpusentry: rules reloaded: {BUILTIN + 1} rules from 2 file(s); egress allowlist: "
                                 f"1 network; configuration: {file}")
    assert "two" in rule_ids(aggregator) and "one" not in rule_ids(aggregator)
    assert allowed(aggregator, "10.1.2.3")
    assert state.rule_files[-1] == str(tmp_path / "two.yaml") and state.load_errors == []


def test_changes_that_need_a_restart_are_named_until_it_comes(tmp_path: Path) -> None:
    file = tmp_path / "config.yaml"
    file.write_text("api:\n  max_subscribers: 8\n")
    args = aggregate_args("-c", str(file))
    reloader = Reloader(args, aggregator_for(args))
    file.write_text("api:\n  max_subscribers: 9\n  listen: 127.0.0.1:5000\nprobe:\n  max_args: 32\n"
                    "detection:\n  egress_allow: [10.0.0.0/8, 192.168.0.0/16]\n")
    waiting = "; changed, waiting for a restart: probe.max_args, api.listen, api.max_subscribers"
    expected = (f"gpusentry: rules reloaded: {BUILTIN} rules from 1 file(s); egress allowlist: 2 networks; "
                f"configuration: {file}{waiting}")
    assert reloader.reload() == expected
    assert reloader.reload() == expected  # still not in effect
    assert reloader.settings is not None and reloader.settings["api.max_subscribers"] == 8
    assert reloader.settings["detection.egress_allow"] == ("10.0.0.0/8", "192.168.0.0/16")


def test_an_invalid_configuration_changes_nothing(tmp_path: Path, state: ApiState) -> None:
    file = tmp_path / "config.yaml"
    file.write_text("detection:\n  egress_allow: [10.0.0.0/8]\n")
    args = aggregate_args("-c", str(file))
    aggregator = aggregator_for(args)
    reloader = Reloader(args, aggregator, state)
    file.write_text("detection:\n  egress_allow: []\n  rulez: []\n")
    assert reloader.reload() == (
        f"gpusentry: configuration not reloaded, keeping the current configuration and {BUILTIN} rules: invalid "
        f"configuration: {file}:3: unknown key detection.rulez (did you mean 'rules'?); the detection keys are "
        "rules, egress_allow, incident_window; fix: correct it; `gpusentry config show` (or `config check FILE`) "
        "lists every problem")
    assert allowed(aggregator, "10.1.2.3")
    assert state.load_errors == [f"{file}:3: unknown key detection.rulez (did you mean 'rules'?); the detection keys "
                                 "are rules, egress_allow, incident_window"]


def test_invalid_rules_change_nothing(tmp_path: Path, state: ApiState) -> None:
    rules = tmp_path / "site.yaml"
    rules.write_text(RULE.format(rule_id="one"))
    file = tmp_path / "config.yaml"
    file.write_text(f"detection:\n  rules: [{rules}]\n")
    args = aggregate_args("-c", str(file))
    aggregator = aggregator_for(args)
    reloader = Reloader(args, aggregator, state)
    rules.write_text("rules: [broken\n")
    file.write_text(f"detection:\n  rules: [{rules}]\n  egress_allow: [10.0.0.0/8]\n")
    line = reloader.reload()
    assert line.startswith(f"gpusentry: rules not reloaded, keeping the current {BUILTIN + 1} rules: invalid rules: "
                           f"{rules}:2: not valid YAML")
    assert "one" in rule_ids(aggregator) and not allowed(aggregator, "10.1.2.3")
    assert len(state.load_errors) == 1 and state.load_errors[0].startswith(f"{rules}:2: not valid YAML")


def test_a_flag_given_keeps_its_value_whatever_the_file_says(tmp_path: Path) -> None:
    file = tmp_path / "config.yaml"
    file.write_text("detection:\n  egress_allow: [10.0.0.0/8]\n")
    args = aggregate_args("-c", str(file), "--egress-allow", "172.16.0.0/12")
    aggregator = aggregator_for(args)
    reloader = Reloader(args, aggregator)
    file.write_text("detection:\n  egress_allow: [192.168.0.0/16]\n")
    assert reloader.reload().startswith(f"gpusentry: rules reloaded: {BUILTIN} rules from 1 file(s); egress "
                                        "allowlist: 1 network; configuration:")
    assert allowed(aggregator, "172.16.1.1") and not allowed(aggregator, "192.168.1.1")


def test_without_settings_only_the_rule_files_are_read_again(tmp_path: Path) -> None:
    """A namespace built by hand (no sensor/config.py settings): the rule files it names."""
    rules = tmp_path / "site.yaml"
    rules.write_text(RULE.format(rule_id="one"))
    args = argparse.Namespace(rules=[str(rules)], egress_allow=["10.0.0.0/8"])
    aggregator = aggregator_for(args)
    reloader = Reloader(args, aggregator)
    rules.write_text(RULE.format(rule_id="two"))
    assert reloader.reload() == (f"gpusentry: rules reloaded: {BUILTIN + 1} rules from 2 file(s); egress allowlist: "
                                 "1 network")
    assert "two" in rule_ids(aggregator) and allowed(aggregator, "10.1.2.3")


def test_sighup_asks_and_the_loop_reloads(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = aggregate_args()
    reloader = Reloader(args, aggregator_for(args))
    previous = signal.getsignal(signal.SIGHUP)
    try:
        reloader.install()
        reloader.reload_if_requested()
        assert capsys.readouterr().err == ""
        os.kill(os.getpid(), signal.SIGHUP)
        assert reloader.requested
        reloader.reload_if_requested()
    finally:
        signal.signal(signal.SIGHUP, previous)
    assert capsys.readouterr().err == f"gpusentry: rules reloaded: {BUILTIN} rules from 1 file(s); egress " \
                                      "allowlist: 0 networks\n"
    assert not reloader.requested
