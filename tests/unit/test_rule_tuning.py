"""Tuning rules from later files (Falco-style): a built-in rule turned off and on, overridden,
given exceptions; a built-in list extended; rule directories; and every mistake named with its
file, line and fix. Facts are fed as the other rule tests feed them: through the whole
aggregator on constructed events, or straight to the engine with a constructed context."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from sensor.aggregator.aggregator import Aggregator
from sensor.aggregator.facts import MinerFact, TunnelFact
from sensor.api import convert
from sensor.api.v1 import gpusentry_pb2 as pb
from sensor.rules.alert import Alert
from sensor.rules.engine import RuleEngine
from sensor.rules.loader import BUILTIN, RuleError, load_rules
from sensor.rules.model import RuleSet, Severity
from sensor.rules.status import rule_statuses
from tests.unit.test_builtin_rules import REVERSE, Host, agent_tree, raised
from tests.unit.test_rules import SEC, Context, compute, proc, tunnel, write

EXAMPLE = Path(__file__).parents[2] / "docs" / "examples" / "rules.d"
ROME = "reverse-tunnel-then-gpu-compute"


def site(tmp_path: Path, text: str, name: str = "50-site.yaml") -> RuleSet:
    """The built-in rules and one site file."""
    return load_rules([write(tmp_path, text, name)])


def rome(host: Host, minutes_to_compute: float = 1) -> Host:
    """The agent's tree opens a reverse tunnel, then a process in it acquires GPU compute."""
    host.spawn(101, 102, *REVERSE)
    host.spawn(101, 103, "/usr/bin/python3", "hash.py")
    host.tick(minutes_to_compute * 60)
    host.gpu_compute(103)
    return host


def fired(ruleset: RuleSet, host: Host) -> list[str]:
    return raised(Aggregator(rules=ruleset), host.events)


def alerts_of(ruleset: RuleSet, host: Host) -> list[Alert]:
    aggregator = Aggregator(rules=ruleset)
    return [alert for event in host.events for alert in aggregator.handle(event).alerts]


# -- enabled: false / true ------------------------------------------------------------------------


def test_a_disabled_builtin_rule_is_loaded_but_does_not_fire(tmp_path: Path) -> None:
    assert fired(load_rules([]), rome(agent_tree())) == ["reverse-tunnel-opened", ROME]
    ruleset = site(tmp_path, f"rules:\n  - id: {ROME}\n    enabled: false\n")
    rule = ruleset.by_id(ROME)
    assert rule is not None and not rule.enabled
    assert rule.overridden_by == (f"{tmp_path / '50-site.yaml'}:2",)
    assert fired(ruleset, rome(agent_tree())) == ["reverse-tunnel-opened"]


def test_a_disabled_sequence_keeps_no_partial_matches(tmp_path: Path) -> None:
    ctx = Context()
    engine = RuleEngine(site(tmp_path, f"rules:\n  - id: {ROME}\n    enabled: false\n"), ctx)
    agent = proc(10, ctx, lineage={"L1"})
    engine.on_fact(tunnel(agent, SEC), agent)
    assert engine.stats.partials == 2  # only reverse-tunnel-then-miner-egress's and -small-long-gpu-compute's


def test_a_later_file_turns_a_disabled_rule_back_on(tmp_path: Path) -> None:
    off = write(tmp_path, f"rules:\n  - id: {ROME}\n    enabled: false\n", "10-off.yaml")
    on = write(tmp_path, f"rules:\n  - id: {ROME}\n    enabled: true\n", "20-on.yaml")
    ruleset = load_rules([off, on])
    rule = ruleset.by_id(ROME)
    assert rule is not None and rule.enabled and rule.overridden_by == (f"{off}:2", f"{on}:2")
    assert fired(ruleset, rome(agent_tree())) == ["reverse-tunnel-opened", ROME]


def test_a_new_rule_defined_disabled_is_listed_but_silent(tmp_path: Path) -> None:
    text = ("rules:\n  - id: any-tunnel\n    title: T\n    description: D\n    severity: low\n"
            "    enabled: false\n    match: {fact: tunnel}\n")
    ruleset = site(tmp_path, text)
    assert [r.id for r in ruleset.rules if not r.enabled] == ["any-tunnel"]
    assert "any-tunnel" not in fired(ruleset, rome(agent_tree()))


# -- override --------------------------------------------------------------------------------------


def test_override_changes_severity_and_window_and_the_alert_shows_it(tmp_path: Path) -> None:
    ruleset = site(tmp_path, f"rules:\n  - id: {ROME}\n    override:\n      severity: high\n      window: 5m\n")
    rule = ruleset.by_id(ROME)
    assert rule is not None and (rule.severity, rule.window_ns) == (Severity.HIGH, 300 * SEC)
    (_, alert) = alerts_of(ruleset, rome(agent_tree(), minutes_to_compute=4))
    assert (alert.rule_id, alert.severity) == (ROME, "high")
    assert fired(ruleset, rome(agent_tree(), minutes_to_compute=6)) == ["reverse-tunnel-opened"]
    assert fired(load_rules([]), rome(agent_tree(), minutes_to_compute=6)) == ["reverse-tunnel-opened", ROME]


def test_override_replaces_title_description_tags_and_keeps_the_rest(tmp_path: Path) -> None:
    text = ("rules:\n  - id: reverse-tunnel-opened\n    override:\n      title: Site tunnel\n"
            "      description: Tunnels are reviewed weekly.\n      tags: [site.reviewed]\n")
    ruleset = site(tmp_path, text)
    host = agent_tree()
    host.spawn(101, 102, *REVERSE)
    (alert,) = alerts_of(ruleset, host)
    assert (alert.title, alert.description, alert.tags, alert.severity) == (
        "Site tunnel", "Tunnels are reviewed weekly.", ("site.reviewed",), "high")


def test_override_replaces_a_single_rules_match(tmp_path: Path) -> None:
    text = ("rules:\n  - id: tunnel-to-nonstandard-port\n    override:\n"
            "      match: {fact: tunnel, where: {remote_port: 2222}}\n")
    ruleset = site(tmp_path, text)
    for port, expected in (("2222", ["tunnel-to-nonstandard-port"]), ("2200", [])):
        host = agent_tree()
        host.spawn(101, 102, "/usr/bin/ssh", "-p", port, "-L", "8080:db:5432", "u@198.51.100.1")
        assert fired(ruleset, host) == expected
    rule = ruleset.by_id("tunnel-to-nonstandard-port")
    assert rule is not None and rule.steps[0].file == str(tmp_path / "50-site.yaml")


def test_override_replaces_a_sequences_steps(tmp_path: Path) -> None:
    text = (ROME_OVERRIDE + "      steps:\n        - fact: tunnel\n"
            "          where: {reverse: true}\n        - fact: gpu_compute\n          where: {architecture: Ampere}\n")
    ruleset = site(tmp_path, text)
    assert fired(ruleset, rome(agent_tree())) == ["reverse-tunnel-opened"]  # the host's GPU is a Hopper


def test_an_overridden_window_keeps_open_sequences_across_a_reload(tmp_path: Path) -> None:
    ctx = Context()
    engine = RuleEngine(load_rules([]), ctx)
    agent = proc(10, ctx, lineage={"L1"})
    engine.on_fact(tunnel(agent, SEC), agent)
    engine.load(site(tmp_path, f"rules:\n  - id: {ROME}\n    override: {{window: 5m}}\n"))
    assert engine.stats.partials_discarded == 0
    assert [a.rule_id for a in engine.on_fact(compute(agent, 200 * SEC), agent)] == [ROME]


# -- lists: append ---------------------------------------------------------------------------------


def test_append_extends_a_builtin_list_and_the_new_item_matches(tmp_path: Path) -> None:
    def pool_traffic() -> Host:
        host = agent_tree()
        host.spawn(101, 102, "/usr/bin/python3", "worker.py")
        host.connect(102, "203.0.113.9", 8008)
        return host

    assert fired(load_rules([]), pool_traffic()) == []
    ruleset = site(tmp_path, "lists:\n  miner_pool_ports:\n    items: [8008]\n    append: true\n")
    assert ruleset.lists["miner_pool_ports"][-1] == 8008 and 3333 in ruleset.lists["miner_pool_ports"]
    assert fired(ruleset, pool_traffic()) == ["miner-pool-connection"]


def test_an_appended_item_reaches_rules_that_name_the_list(tmp_path: Path) -> None:
    ruleset = site(tmp_path, "lists:\n  standard_tunnel_ports: {items: [2222], append: true}\n")
    host = agent_tree()
    host.spawn(101, 102, "/usr/bin/ssh", "-p", "2222", "-L", "8080:db:5432", "u@198.51.100.1")
    assert fired(ruleset, host) == []  # `$standard_tunnel_ports` in the built-in rule holds 2222 now


def test_allowed_egress_is_empty_by_default_and_joins_the_flags(tmp_path: Path) -> None:
    assert load_rules([]).allowed_egress == ()
    text = "lists:\n  allowed_egress:\n    items:\n      - 192.0.2.0/24\n      - 2001:db8::/32\n    append: true\n"
    ruleset = site(tmp_path, text)
    assert ruleset.allowed_egress == ("192.0.2.0/24", "2001:db8::/32")
    assert ruleset.egress_allowlist(["10.0.0.0/8", "192.0.2.0/24"]) == ("10.0.0.0/8", "192.0.2.0/24", "2001:db8::/32")


def test_each_file_gives_its_count_of_a_lists_items(tmp_path: Path) -> None:
    ruleset = site(tmp_path, "lists:\n  miner_flags: {items: [--algo=rx/0, --coin], append: true}\n")
    parts = ruleset.list_parts["miner_flags"]
    assert [(p.source.rsplit("/", 1)[-1], p.items) for p in parts] == [("builtin.yaml:19", 6),
                                                                        ("50-site.yaml:2", 2)]


# -- exceptions ------------------------------------------------------------------------------------


BASTION = ("rules:\n  - id: reverse-tunnel-opened\n    override:\n      exceptions:\n"
           "        - name: backup-bastion\n          where: {remote_host: 198.51.100.7, process.name: ssh}\n")


def reverse_tunnel_to(address: str) -> Host:
    host = agent_tree()
    host.spawn(101, 102, "/usr/bin/ssh", "-fNR", "9000:localhost:22", f"root@{address}")
    return host


def test_an_exception_suppresses_exactly_its_case_and_counts_it(tmp_path: Path) -> None:
    aggregator = Aggregator(rules=site(tmp_path, BASTION))
    assert raised(aggregator, reverse_tunnel_to("198.51.100.7").events) == []
    assert raised(aggregator, reverse_tunnel_to("198.51.100.1").events) == ["reverse-tunnel-opened"]
    assert aggregator.detector is not None
    stats = aggregator.detector.engine.stats
    assert (stats.excepted, stats.excepted_by_rule, stats.excepted_by_exception) == (
        1, {"reverse-tunnel-opened": 1}, {"reverse-tunnel-opened": {"backup-bastion": 1}})
    assert stats.by_rule == {"reverse-tunnel-opened": 1}


def test_every_condition_of_an_exception_must_hold(tmp_path: Path) -> None:
    host = agent_tree()
    host.spawn(101, 102, "/usr/bin/autossh", "-M", "0", "-fNR", "9000:localhost:22", "root@198.51.100.7")
    assert fired(site(tmp_path, BASTION), host) == ["reverse-tunnel-opened"]  # the host, not the process


def test_an_excepted_fact_does_not_hide_a_real_one_behind_the_dedup(tmp_path: Path) -> None:
    text = ("rules:\n  - id: only-port-3333\n    title: T\n    description: D\n    severity: low\n"
            "    match: {fact: miner}\n    exceptions:\n      - name: lab-pool\n"
            "        where: {address: 192.0.2.10}\n")
    ctx = Context()
    engine = RuleEngine(load_rules([write(tmp_path, text)], builtin=False), ctx)
    p = proc(10, ctx)
    assert engine.on_fact(MinerFact(SEC, p.key, "pool-port", "3333", "192.0.2.10", 3333), p) == []
    assert len(engine.on_fact(MinerFact(2 * SEC, p.key, "pool-port", "3333", "198.51.100.9", 3333), p)) == 1
    assert (engine.stats.excepted, engine.stats.suppressed) == (1, 0)


def to(fact: TunnelFact, remote_host: str) -> TunnelFact:
    return replace(fact, remote_host=remote_host)


def sequence_engine(tmp_path: Path, exception: str) -> tuple[RuleEngine, Context]:
    text = (ROME_OVERRIDE + "      exceptions:\n        - name: ci\n"
            + "".join(f"          {line}\n" for line in exception.splitlines()))
    ctx = Context()
    return RuleEngine(site(tmp_path, text), ctx), ctx


def rome_alerts(engine: RuleEngine, ctx: Context, pid: int, remote_host: str,
                architecture: str = "Hopper") -> list[str]:
    agent, worker = proc(pid, ctx, lineage={f"L{pid}"}), proc(pid + 1, ctx, lineage={f"L{pid}"})
    engine.on_fact(to(tunnel(agent, pid * SEC), remote_host), agent)
    gpu = replace(compute(worker, pid * SEC + SEC), architecture=architecture)
    return [a.rule_id for a in engine.on_fact(gpu, worker) if a.rule_id == ROME]


@pytest.mark.parametrize("step", ["step: 1", "step: tunnel", ""])
def test_a_sequence_exception_on_the_tunnel_step(tmp_path: Path, step: str) -> None:
    engine, ctx = sequence_engine(tmp_path, f"{step}\nwhere: {{remote_host: {{cidr: [198.51.100.0/28]}}}}")
    assert rome_alerts(engine, ctx, 10, "198.51.100.7") == []
    assert rome_alerts(engine, ctx, 20, "198.51.100.77") == [ROME]
    assert engine.stats.excepted_by_exception == {ROME: {"ci": 1}}


def test_a_sequence_exception_on_a_later_step(tmp_path: Path) -> None:
    engine, ctx = sequence_engine(tmp_path, "step: gpu_compute\nwhere: {architecture: Ampere}")
    assert rome_alerts(engine, ctx, 10, "198.51.100.1", architecture="Ampere") == []
    assert rome_alerts(engine, ctx, 20, "198.51.100.1", architecture="Hopper") == [ROME]
    assert engine.stats.excepted_by_rule == {ROME: 1}


def test_a_step_exception_looks_only_at_its_step(tmp_path: Path) -> None:
    engine, ctx = sequence_engine(tmp_path, "step: 2\nwhere: {process.pid: 10}")  # the tunnel's process
    assert rome_alerts(engine, ctx, 10, "198.51.100.1") == [ROME]
    assert engine.stats.excepted == 0


def test_exceptions_of_a_definition_and_of_an_override_add_up(tmp_path: Path) -> None:
    definition = ("rules:\n  - id: tunnels\n    title: T\n    description: D\n    severity: low\n"
                  "    match: {fact: tunnel}\n    exceptions:\n      - {name: one, where: {remote_host: 192.0.2.1}}\n")
    override = ("rules:\n  - id: tunnels\n    override:\n      exceptions:\n"
                "        - {name: two, where: {remote_port: 2222}}\n")
    ruleset = load_rules([write(tmp_path, definition, "a.yaml"), write(tmp_path, override, "b.yaml")], builtin=False)
    rule = ruleset.by_id("tunnels")
    assert rule is not None
    assert [(e.name, e.source) for e in rule.exceptions] == [("one", f"{tmp_path / 'a.yaml'}:8"),
                                                             ("two", f"{tmp_path / 'b.yaml'}:5")]


# -- directories ----------------------------------------------------------------------------------


def test_a_directory_is_its_yaml_files_in_name_order(tmp_path: Path) -> None:
    rules_d = tmp_path / "rules.d"
    (rules_d / "sub").mkdir(parents=True)
    write(rules_d, f"rules:\n  - id: {ROME}\n    enabled: true\n    override: {{severity: low}}\n", "20-on.yaml")
    write(rules_d, f"rules:\n  - id: {ROME}\n    enabled: false\n", "10-off.yml")
    write(rules_d, "not yaml: [", "notes.txt")
    write(rules_d / "sub", "rules: [", "99-not-read.yaml")
    ruleset = load_rules([rules_d])
    assert ruleset.files == [str(BUILTIN), str(rules_d / "10-off.yml"), str(rules_d / "20-on.yaml")]
    rule = ruleset.by_id(ROME)
    assert rule is not None and rule.enabled and rule.severity is Severity.LOW


def test_an_empty_directory_adds_nothing(tmp_path: Path) -> None:
    assert load_rules([tmp_path]).files == [str(BUILTIN)]


def test_a_missing_path_is_named(tmp_path: Path) -> None:
    with pytest.raises(RuleError) as info:
        load_rules([tmp_path / "rules.d"])
    assert [str(p) for p in info.value.problems] == [
        f"{tmp_path / 'rules.d'}: no such file or directory: give a rule file, or a directory of *.yaml rule files"]


def test_the_example_site_directory_applies_each_form() -> None:
    ruleset = load_rules([EXAMPLE])
    off, changed = ruleset.by_id("tunnel-to-nonstandard-port"), ruleset.by_id("gpu-compute-then-miner-egress")
    bastion, ci = ruleset.by_id("reverse-tunnel-opened"), ruleset.by_id(ROME)
    assert off is not None and not off.enabled
    assert changed is not None and (changed.severity, changed.window_ns) == (Severity.HIGH, 600 * SEC)
    assert bastion is not None and [e.name for e in bastion.exceptions] == ["backup-bastion"]
    assert ci is not None and [(e.name, e.step) for e in ci.exceptions] == [("ci-runner-tunnel", 0)]
    assert 8008 in ruleset.lists["miner_pool_ports"] and "xmrig-proxy" in ruleset.lists["miner_binaries"]
    assert ruleset.allowed_egress == ("192.0.2.0/24", "2001:db8:42::/48")


# -- the API's view --------------------------------------------------------------------------------


def test_rule_statuses_show_tuning_and_exception_counts(tmp_path: Path) -> None:
    text = BASTION + "  - id: internal-scan\n    enabled: false\n"
    aggregator = Aggregator(rules=site(tmp_path, text))
    raised(aggregator, reverse_tunnel_to("198.51.100.7").events)
    raised(aggregator, reverse_tunnel_to("198.51.100.1").events)
    assert aggregator.detector is not None
    statuses = {s.id: s for s in rule_statuses(aggregator.detector.engine)}
    assert len(statuses) == 13
    opened, scan = statuses["reverse-tunnel-opened"], statuses["internal-scan"]
    site_file = tmp_path / "50-site.yaml"
    assert (opened.enabled, opened.alerts, opened.suppressed, dict(opened.suppressed_by_exception)) == (
        True, 1, 1, {"backup-bastion": 1})
    assert (list(opened.overridden_by), scan.enabled, list(scan.overridden_by)) == (
        [f"{site_file}:2"], False, [f"{site_file}:7"])
    assert opened.source == f"{BUILTIN}:{int(opened.source.rsplit(':', 1)[1])}"
    assert opened.severity == pb.SEVERITY_HIGH


def test_rule_status_severities_are_the_apis() -> None:
    for severity in Severity:
        ruleset = load_rules([])
        ruleset.rules = [replace(ruleset.rules[0], severity=severity)]
        (status,) = rule_statuses(RuleEngine(ruleset, Context()))
        assert status.severity == convert.SEVERITY[severity.label]


# -- mistakes: each with its file, line and what to write instead ---------------------------------


def site_problems(tmp_path: Path, text: str) -> list[str]:
    path = write(tmp_path, text, "site.yaml")
    with pytest.raises(RuleError) as info:
        load_rules([path])
    return [str(p).replace(str(path), "SITE").replace(str(BUILTIN), "BUILTIN") for p in info.value.problems]


OPENED = "rules:\n  - id: reverse-tunnel-opened\n"
ROME_OVERRIDE = f"rules:\n  - id: {ROME}\n    override:\n"


@pytest.mark.parametrize(("text", "expected"), [
    (OPENED + "    override: {severty: low}\n",
     "SITE:3: rule reverse-tunnel-opened: unknown key 'severty' in override (allowed: title, description, severity, "
     "tags, match, window, scope, steps, exceptions)"),
    (OPENED + "    override:\n      severity: dire\n",
     "SITE:4: rule reverse-tunnel-opened: `severity` is one of info, low, medium, high, critical"),
    (OPENED + "    override: {}\n",
     "SITE:3: rule reverse-tunnel-opened: `override` maps what to change to its new value (title, description, "),
    ("rules:\n  - id: no-such-rule\n    enabled: false\n",
     "SITE:2: rule no-such-rule: no rule 'no-such-rule' is defined before this entry, so there is nothing to enable "
     "or override (rules are read in order: built-in first, then each file as given); a new rule needs title, "
     "description, severity and match or sequence"),
    (OPENED + "    override:\n      window: 5m\n",
     "SITE:4: rule reverse-tunnel-opened: `window` is for sequences; reverse-tunnel-opened matches one fact: "
     "override its `match`"),
    (ROME_OVERRIDE + "      match: {fact: tunnel}\n",
     f"SITE:4: rule {ROME}: {ROME} is a sequence: override its `steps` (or `window`, `scope`), not `match`"),
    (ROME_OVERRIDE + "      window: soon\n",
     f"SITE:4: rule {ROME}: `window` is a duration like 90s, 30m, 2h (or seconds)"),
    (ROME_OVERRIDE + "      steps: [{fact: tunnel}, {fact: gpu_compte}]\n",
     f"SITE:4: rule {ROME}: `fact` is one of connect, egress, exec, gpu_compute, gpu_launches, gpu_open, "
     "gpu_profile, "
     "internal_scan, miner, tunnel, not 'gpu_compte'"),
    (OPENED + "    enabled: maybe\n", "SITE:3: rule reverse-tunnel-opened: `enabled` is true or false"),
    (OPENED + "    severity: low\n    override: {tags: []}\n",
     "SITE:3: rule reverse-tunnel-opened: 'severity' next to `override:`: put what to change under `override:` "
     "(allowed there: title, description, severity, tags, match, window, scope, steps, exceptions)"),
    (OPENED, "SITE:2: rule reverse-tunnel-opened: nothing to change in rule 'reverse-tunnel-opened': give "
             "`enabled:` or `override:`"),
    ("rules:\n  - rule: reverse-tunnel-opened\n    enabled: false\n",
     "SITE:2: a rule is named by `id:` here, not `rule:` (Falco's)"),
    ("- rule: reverse-tunnel-opened\n  enabled: false\n",
     "SITE:1: a rule file is a mapping with `lists:` and/or `rules:` (this looks like Falco's layout: here `lists:` "
     "maps each name to its items and `rules:` is a list of rules named by `id:`)"),
    # lists
    ("lists:\n  miner_pool_portz: {items: [1], append: true}\n",
     "SITE:2: no list 'miner_pool_portz' to append to (lists: allowed_egress, miner_binaries, miner_flags, "
     "miner_pool_hosts, miner_pool_ports, public_tunnel_services, standard_tunnel_ports); to define it, "
     "write `miner_pool_portz: [...]`"),
    ("lists:\n  miner_flags: [--coin]\n",
     "SITE:2: list 'miner_flags' is already defined at BUILTIN:19; to add items write "
     "`miner_flags: {items: [...], append: true}`"),
    ("lists:\n  miner_flags: {items: [--coin], append: yes please}\n", "SITE:2: `append` is true or false"),
    ("lists:\n  miner_flags: {append: true}\n",
     "SITE:2: list 'miner_flags': `items` is required ({items: [...], append: true})"),
    ("lists:\n  miner_flags: {items: [--coin], extend: true}\n",
     "SITE:2: unknown key 'extend' in list 'miner_flags' (allowed: items, append)"),
    ("lists:\n  allowed_egress:\n    items:\n      - 192.0.2.0/24\n      - 10.0.0/8\n    append: true\n",
     "SITE:5: list 'allowed_egress': '10.0.0/8' is not a network: write a CIDR like 10.0.0.0/8 or 2001:db8::/32"),
    ("lists:\n  allowed_egress: {items: [10], append: true}\n",
     "SITE:2: list 'allowed_egress': 10 is not a network: write a CIDR like 10.0.0.0/8 or 2001:db8::/32"),
    ("lists:\n  miner_pool_ports: {items: ['8008'], append: true}\n",
     "SITE:2: list 'miner_pool_ports': '8008' is not a port: a number from 0 to 65535"),
    # exceptions
    (OPENED + "    override:\n      exceptions:\n        - name: all\n",
     "SITE:5: rule reverse-tunnel-opened: exception 'all' has no `where:` conditions, so it would suppress every "
     "alert: give it conditions, or turn the rule off with `enabled: false`"),
    (OPENED + "    override:\n      exceptions:\n        - name: x\n          where: {remote_hots: a}\n",
     "SITE:6: rule reverse-tunnel-opened: a tunnel fact has no field 'remote_hots' (fields: "),
    (OPENED + "    override:\n      exceptions:\n        - {name: x, where: {remote_port: {between: 1}}}\n",
     "SITE:5: rule reverse-tunnel-opened: remote_port: unknown operator 'between'"),
    (OPENED + "    override:\n      exceptions:\n        - {name: x, step: 1, where: {remote_port: 1}}\n",
     "SITE:5: rule reverse-tunnel-opened: `step` picks a step of a sequence; this rule matches one fact: leave "
     "`step` out"),
    (ROME_OVERRIDE + "      exceptions:\n        - {name: x, step: 3, where: {reverse: true}}\n",
     f"SITE:5: rule {ROME}: `step` is a step's number (1 to 2) or the fact of a step no other step shares (tunnel, "
     "gpu_compute), not 3"),
    (ROME_OVERRIDE + "      exceptions:\n        - {name: x, where: {colour: red}}\n",
     f"SITE:5: rule {ROME}: none of the steps' facts (tunnel, gpu_compute) has a field 'colour' (fields: "),
    (OPENED + "    override:\n      exceptions:\n        - {name: x, where: {remote_port: 1}}\n"
     "  - id: reverse-tunnel-opened\n    override:\n      exceptions:\n        - {name: x, where: {remote_port: 2}}\n",
     "SITE:9: rule reverse-tunnel-opened: exception 'x' is already defined at SITE:5: give this one another name"),
    (OPENED + "    override:\n      exceptions:\n        - {where: {remote_port: 1}}\n",
     "SITE:5: rule reverse-tunnel-opened: an exception's `name` is required: lowercase letters, digits, - and _"),
    (OPENED + "    override:\n      exceptions: {name: x}\n",
     "SITE:4: rule reverse-tunnel-opened: `exceptions` is a list of {name: ..., where: {field: condition}}"),
    (OPENED + "    override:\n      exceptions:\n        - {name: x, where: {remote_port: 1}, when: now}\n",
     "SITE:5: rule reverse-tunnel-opened: unknown key 'when' in an exception (allowed: name, where, step)"),
    (ROME_OVERRIDE + f"      exceptions:\n        - {{name: x, step: 2, where: {{klass: 1}}}}\n"
     f"  - id: {ROME}\n    override:\n      steps: [{{fact: tunnel}}, {{fact: miner}}]\n",
     f"SITE:8: rule {ROME}: exception 'x' (SITE:5) looks at 'klass', which the new steps' facts do not have: keep "
     "a step with that field"),
])
def test_tuning_mistakes_name_the_place_and_the_fix(tmp_path: Path, text: str, expected: str) -> None:
    found = site_problems(tmp_path, text)
    assert any(p.startswith(expected) for p in found), found


def test_redefining_a_builtin_rule_points_at_both_definitions(tmp_path: Path) -> None:
    text = (OPENED + "    title: T\n    description: D\n    severity: low\n    match: {fact: tunnel}\n")
    first = load_rules([]).by_id("reverse-tunnel-opened")
    assert first is not None
    assert site_problems(tmp_path, text) == [
        f"SITE:2: rule reverse-tunnel-opened: already defined at {first.source.replace(str(BUILTIN), 'BUILTIN')}; "
        "to change it use override: or enabled:"]


def test_every_tuning_mistake_in_a_file_is_reported(tmp_path: Path) -> None:
    text = ("lists:\n  nope: {items: [1], append: true}\n  fine: [1]\n"
            "rules:\n  - id: ghost\n    enabled: false\n")
    assert len(site_problems(tmp_path, text)) == 1  # the list's problem; the file's rules are not read
    text = OPENED + "    override: {severity: dire}\n  - id: ghost\n    enabled: false\n"
    assert [p.split(": ")[0] for p in site_problems(tmp_path, text)] == ["SITE:3", "SITE:4"]
