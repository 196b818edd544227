"""bench.efficacy's judgement, on constructed alerts: what counts as detection and as a false
positive, which event is decisive, and the rates over a corpus."""

from __future__ import annotations

import string

from bench.efficacy import Result, judge, per_variant, rates, row, variant_row
from bench.efficacy_corpus import SEVERITIES, VARIANTS, gpuhost, negative, positive
from sensor.api.v1 import gpusentry_pb2 as pb

ROME = positive("rome", gpuhost("{ssh} -fNR {port}:localhost:22 root@{outside} && {gpu}"),
                rules=("reverse-tunnel-then-gpu-compute",))
CONTROL = negative("control", gpuhost("{training}"))


def alert(rule_id: str, severity: str, *step_ts: int) -> pb.Alert:
    steps = [pb.AlertStep(fact=f"fact{n}", detail=pb.Fact(ts=ts)) for n, ts in enumerate(step_ts)]
    return pb.Alert(rule_id=rule_id, severity=pb.Severity.Value(f"SEVERITY_{severity.upper()}"), steps=steps)


def test_a_positive_is_caught_by_a_counting_rule_and_timed_from_its_last_event() -> None:
    # the steps' order in the message is not their time order: the latest fact is the decisive one
    alerts = [(5_000_000_000, alert("reverse-tunnel-opened", "high", 1_000_000_000)),
              (5_100_000_000, alert("reverse-tunnel-then-gpu-compute", "critical", 4_000_000_000, 1_000_000_000))]
    result = judge(ROME, alerts)
    assert (result.verdict, result.detected, result.severity, result.decisive) == ("TP", True, "critical", "fact0")
    assert result.rules == ["reverse-tunnel-opened", "reverse-tunnel-then-gpu-compute"]
    assert result.latency_ms == 1100.0
    assert result.expected == "reverse-tunnel-then-gpu-compute >= critical"


def test_other_rules_and_lower_severities_do_not_count_for_a_positive() -> None:
    below = positive("low", gpuhost("true"), rules=("reverse-tunnel-opened",), severity="critical")
    result = judge(below, [(2, alert("reverse-tunnel-opened", "high", 1)), (3, alert("miner-pool-connection",
                                                                                     "critical", 1))])
    assert (result.verdict, result.detected, result.severity, result.latency_ms, result.decisive) == (
        "FN", False, "critical", None, "")
    assert judge(ROME, []) == Result("rome", "positive", "reverse-tunnel-then-gpu-compute >= critical", "FN")


def test_a_negative_is_a_false_positive_only_at_its_severity() -> None:
    medium = [(2, alert("tunnel-to-nonstandard-port", "medium", 1))]
    quiet = judge(CONTROL, medium)
    assert (quiet.verdict, quiet.detected, quiet.severity, quiet.rules, quiet.expected) == (
        "TN", False, "medium", ["tunnel-to-nonstandard-port"], "< high")
    loud = judge(CONTROL, [*medium, (3, alert("reverse-tunnel-opened", "high", 1))])
    assert (loud.verdict, loud.detected, loud.severity, loud.latency_ms) == ("FP", True, "high", None)
    strict = negative("strict", gpuhost("true"), severity="medium")
    assert judge(strict, medium).verdict == "FP"


def test_rates_leave_out_skipped_and_failed_variants() -> None:
    verdicts = ["TP", "TP", "FN", "TN", "FP", "TN", "TN", "skipped", "error"]
    summary = rates([Result(f"v{n}", "", "", v) for n, v in enumerate(verdicts)])
    assert (summary["TP"], summary["FN"], summary["TN"], summary["FP"], summary["skipped"], summary["error"]) == (
        2, 1, 3, 1, 1, 1)
    assert summary["true_positive_rate"] == 2 / 3 and summary["false_positive_rate"] == 1 / 4
    assert rates([])["true_positive_rate"] is None


def test_rounds_of_a_variant_are_summed_up() -> None:
    results = [Result("rome", "positive", "x", "TP", True, "critical", ["a"], 40.0),
               Result("scp", "negative", "y", "TN"),
               Result("rome", "positive", "x", "FN", False, "high", ["b"]),
               Result("scp", "negative", "y", "TN"),
               Result("rome", "positive", "x", "TP", True, "critical", ["a"], 20.0)]
    rome, scp = per_variant(results)
    assert rome == {"name": "rome", "label": "positive", "expected": "x", "rounds": 3, "verdicts": {"TP": 2, "FN": 1},
                    "severity": "critical", "rules": ["a", "b"], "latency_ms": [40.0, 20.0]}
    assert (scp["verdicts"], scp["severity"], scp["rules"], scp["latency_ms"]) == ({"TN": 2}, "", [], [])
    assert variant_row(rome).split() == ["rome", "positive", "TP", "2/3,", "FN", "1/3", "critical", "30", "[20-40]",
                                         "a,b"]


def test_a_row_shows_the_verdict_severity_time_and_rules() -> None:
    result = Result("rome", "positive", "", "TP", True, "critical", ["a", "b"], 41.6, "gpu_compute")
    assert row(result).split() == ["rome", "positive", "TP", "critical", "42", "gpu_compute", "a,b"]
    skipped = Result("autossh", "positive", "", "skipped", reason="not installed: autossh")
    assert row(skipped).endswith("-  (not installed: autossh)")


def test_the_corpus_is_well_formed() -> None:
    names = [v.name for v in VARIANTS]
    assert len(names) == len(set(names))
    known = {"ssh", "scp", "ssh_options", "outside", "outside_ns", "key", "port", "dir", "gpu", "training", "pool",
             "python", "root", "enter"}
    for variant in VARIANTS:
        assert variant.label in ("positive", "negative") and variant.severity in SEVERITIES
        assert (variant.label == "positive") == bool(variant.rules), variant.name
        for step in variant.steps:
            assert step.host in ("gpuhost", "outside")
            fields = {name for _, name, _, _ in string.Formatter().parse(step.script) if name is not None}
            assert fields <= known, (variant.name, fields - known)
    assert {v.label for v in VARIANTS} == {"positive", "negative"}
