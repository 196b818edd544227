"""bench.efficacy end to end on a few variants: the real agent (`gpusentry run` and its API), real
OpenSSH in network namespaces, the fake GPU driver; each variant judged only by the alerts about
its own processes."""

from __future__ import annotations

from bench.efficacy import rates, run_corpus
from bench.efficacy_corpus import VARIANTS, gpuhost, negative

CORPUS = {v.name: v for v in VARIANTS}
# labelled wrongly on purpose: a reverse tunnel is what a false positive looks like
MISLABELLED = negative("reverse-tunnel-labelled-benign", gpuhost("{ssh} -f -o ExitOnForwardFailure=yes "
                                                                 "-NR {port}:localhost:22 root@{outside}"))
NOT_INSTALLED = negative("needs-a-missing-program", gpuhost("true"), needs=("gs-no-such-program",))


def test_a_positive_a_negative_a_false_positive_and_a_skip(root: None) -> None:
    variants = [CORPUS["rome-ssh-fNR"], CORPUS["ssh-L-then-compute"], MISLABELLED, NOT_INSTALLED]
    run = run_corpus(variants, window=1.0, timeout=10.0)
    caught, control, flagged, skipped = run.results

    assert (caught.name, caught.verdict, caught.detected, caught.severity, caught.decisive) == (
        "rome-ssh-fNR", "TP", True, "critical", "gpu_compute")
    assert caught.rules == ["reverse-tunnel-opened", "reverse-tunnel-then-gpu-compute"]
    assert caught.latency_ms is not None and 0 < caught.latency_ms < 10_000

    # the tunnel of the variant before it is gone, and taints nothing here
    assert (control.name, control.verdict, control.detected, control.severity, control.rules,
            control.latency_ms) == ("ssh-L-then-compute", "TN", False, "", [], None)

    assert (flagged.verdict, flagged.detected, flagged.severity, flagged.rules) == (
        "FP", True, "high", ["reverse-tunnel-opened"])
    assert (skipped.verdict, skipped.reason) == ("skipped", "not installed: gs-no-such-program")

    summary = rates(run.results)
    assert (summary["true_positive_rate"], summary["false_positive_rate"], summary["skipped"]) == (1.0, 0.5, 1)
    assert run.gaps == 0
