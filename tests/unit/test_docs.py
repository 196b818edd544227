"""The docs say what the code does: docs/rules.md's facts table is the aggregator's facts, its
YAML examples load (the definitions on their own, the tuning on top of the built-in rules), and
docs/output.md is generated from the current JSON Schema."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from sensor.aggregator import facts as f
from sensor.rules.loader import load_rules
from sensor.rules.model import POD_FIELDS, PROCESS_FIELDS

DOC = Path(__file__).resolve().parents[2] / "docs" / "rules.md"


def documented_fields() -> dict[str, list[str]]:
    rows = re.findall(r"^\| `([a-z_.]+)`[^|]* \| ([a-z_., ]+) \|$", DOC.read_text(), flags=re.M)
    return {kind: fields.split(", ") for kind, fields in rows}


def yaml_blocks() -> list[str]:
    return [b for b in re.findall(r"```yaml\n(.*?)```", DOC.read_text(), flags=re.S)
            if b.startswith(("rules:", "lists:"))]


def test_the_facts_table_is_the_aggregators_facts() -> None:
    facts = {cls.KIND: [x.name for x in dataclasses.fields(cls) if x.name not in ("ts", "process")]
             for cls in vars(f).values() if isinstance(cls, type) and issubclass(cls, f.Fact) and cls is not f.Fact}
    assert documented_fields() == {**facts, "process.": list(PROCESS_FIELDS), "pod.": list(POD_FIELDS)}


def test_the_examples_load(tmp_path: Path) -> None:
    definitions, tuning, site_rule = yaml_blocks()
    (tmp_path / "definitions.yaml").write_text(definitions)
    assert [r.id for r in load_rules([tmp_path / "definitions.yaml"], builtin=False).rules] == [
        "reverse-tunnel-opened", "reverse-tunnel-then-gpu-compute"]
    (tmp_path / "tuning.yaml").write_text(tuning)
    (tmp_path / "site.yaml").write_text(site_rule)
    ruleset = load_rules([tmp_path / "tuning.yaml", tmp_path / "site.yaml"])
    rules = {r.id: r for r in ruleset.rules}
    assert rules["tunnel-to-nonstandard-port"].enabled is False
    assert rules["gpu-compute-then-miner-egress"].severity.label == "high"
    assert [e.name for e in rules["reverse-tunnel-opened"].exceptions] == ["backup-bastion"]
    assert rules["gpu-compute-outside-the-training-account"].enabled is True
    assert "192.0.2.0/24" in ruleset.allowed_egress


def test_the_output_reference_is_generated_from_the_current_schema(tmp_path: Path) -> None:
    import subprocess
    import sys

    root = DOC.parents[1]
    fresh = tmp_path / "output.md"
    subprocess.run([sys.executable, str(root / "scripts" / "gen-output-doc"), str(fresh)], check=True)
    assert fresh.read_text() == (root / "docs" / "output.md").read_text(), \
        "docs/output.md is stale: run scripts/gen-output-doc (after scripts/gen-schema)"
