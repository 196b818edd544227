"""`gpusentry rules check`: what it prints for sound rules (tuned ones included), every problem
with its place and a count for unsound ones, and its exit code; a rule on a kind of fact that
nothing produces is one of those problems."""

from __future__ import annotations

import io
from pathlib import Path

from sensor.aggregator.facts import FACT_KINDS, Fact
from sensor.rules.check import produced_fact_kinds, run_check
from sensor.rules.loader import BUILTIN
from tests.unit.test_rule_tuning import EXAMPLE
from tests.unit.test_rules import write


def check(paths: list[Path], produced: frozenset[str] | None = None) -> tuple[int, list[str]]:
    out = io.StringIO()
    code = run_check(paths, out, produced)
    return code, out.getvalue().replace(f"{BUILTIN}:", "BUILTIN:").splitlines()


def line_of(lines: list[str], start: str) -> str:
    return next(line for line in lines if line.strip().startswith(start))


def test_the_builtin_rules_alone() -> None:
    code, lines = check([])
    assert code == 0
    assert lines[0] == "rules:" and lines[-1] == "ok: 13 rules (0 disabled) in 1 file(s)"
    assert line_of(lines, "reverse-tunnel-opened:") == (
        "  reverse-tunnel-opened: enabled, high, BUILTIN:35; facts: tunnel; can fire")
    assert line_of(lines, "reverse-tunnel-then-gpu-compute:") == (
        "  reverse-tunnel-then-gpu-compute: enabled, critical, window 30m, BUILTIN:87; facts: tunnel, gpu_compute; "
        "can fire")
    assert line_of(lines, "allowed_egress:") == "  allowed_egress: 0 items (0 from BUILTIN:24)"


def test_a_tuned_configuration() -> None:
    code, lines = check([EXAMPLE])
    site = EXAMPLE / "50-site.yaml"
    assert code == 0
    assert lines[-1] == "ok: 13 rules (1 disabled) in 2 file(s)"
    assert line_of(lines, "tunnel-to-nonstandard-port:") == (
        f"  tunnel-to-nonstandard-port: disabled, medium, BUILTIN:47, overridden by {site}:25; facts: tunnel; "
        "does not fire (disabled)")
    assert line_of(lines, "gpu-compute-then-miner-egress:") == (
        f"  gpu-compute-then-miner-egress: enabled, high, window 10m, BUILTIN:133, overridden by {site}:30; "
        "facts: gpu_compute, miner; can fire")
    opened = lines.index(line_of(lines, "reverse-tunnel-opened:"))
    assert lines[opened + 1] == f"    exception backup-bastion ({site}:42)"
    assert line_of(lines, "miner_pool_ports:") == f"  miner_pool_ports: 20 items (18 from BUILTIN:10, 2 from {site}:11)"
    assert line_of(lines, "allowed_egress:") == f"  allowed_egress: 2 items (0 from BUILTIN:24, 2 from {site}:17)"


def test_every_problem_and_a_count(tmp_path: Path) -> None:
    bad = write(tmp_path, "lists:\n  miner_flags: [--coin]\n  allowed_egress: {items: [nowhere], append: true}\n")
    code, lines = check([bad, tmp_path / "missing.d"])
    assert code == 1
    assert lines == [
        f"{tmp_path / 'missing.d'}: no such file or directory: give a rule file, or a directory of *.yaml rule files",
        f"{bad}:2: list 'miner_flags' is already defined at BUILTIN:19; to add items write "
        "`miner_flags: {items: [...], append: true}`",
        f"{bad}:3: list 'allowed_egress': 'nowhere' is not a network: write a CIDR like 10.0.0.0/8 or 2001:db8::/32",
        "3 problem(s)"]


def test_a_rule_on_a_fact_kind_nothing_produces_is_an_error(tmp_path: Path) -> None:
    produced = produced_fact_kinds() - {"internal_scan"}
    code, lines = check([], produced)
    assert code == 1
    assert lines[0].startswith("BUILTIN:") and lines[0].split(": ", 1)[1].startswith(
        "rule internal-scan: no part of the aggregator produces internal_scan facts (it produces connect, egress, ")
    assert lines[0].endswith("so this rule can never fire: change `fact:` or turn the rule off with `enabled: false`")
    assert lines[-1] == "1 problem(s)"


def test_the_problem_points_at_an_overriding_step(tmp_path: Path) -> None:
    site = write(tmp_path, "rules:\n  - id: internal-scan\n    override:\n      match: {fact: gpu_open}\n")
    code, lines = check([site], produced_fact_kinds() - {"gpu_open"})
    assert code == 1 and lines[0].startswith(f"{site}:4: rule internal-scan: no part of the aggregator produces")


def test_a_disabled_rule_on_such_a_kind_is_not_an_error(tmp_path: Path) -> None:
    site = write(tmp_path, "rules:\n  - id: internal-scan\n    enabled: false\n")
    code, lines = check([site], produced_fact_kinds() - {"internal_scan"})
    assert code == 0 and lines[-1] == "ok: 13 rules (1 disabled) in 2 file(s)"


def test_the_produced_kinds_are_the_fact_classes_of_the_aggregator() -> None:
    class TestOnlyFact(Fact):  # defined elsewhere than sensor/aggregator/facts.py: not produced
        KIND = "test_only"

    assert TestOnlyFact.KIND not in produced_fact_kinds()
    assert produced_fact_kinds() == frozenset(FACT_KINDS)


def test_directories_are_checked_file_by_file_in_name_order(tmp_path: Path) -> None:
    write(tmp_path, "rules:\n  - id: internal-scan\n    enabled: false\n", "10-off.yaml")
    write(tmp_path, "rules:\n  - id: internal-scan\n    enabled: true\n", "20-on.yml")
    code, lines = check([tmp_path])
    assert code == 0
    assert line_of(lines, "internal-scan:").endswith(
        f"overridden by {tmp_path / '10-off.yaml'}:2, overridden by {tmp_path / '20-on.yml'}:2; facts: internal_scan; "
        "can fire")
