"""A flood cannot hide what detection turns on: while one process floods connects as fast as it
can (far more than the probe reads, so records are dropped, and counted), other processes'
`ssh -R` execs, GPU compute allocations and pool connects all reach the capture, because they
go on the decisive ring and lane (sensor/bpf/common.bpf.c, sensor/probe/lanes.py). The flood
and the acts are bench/flood.py's, run here once with small rings so that the flood surely
overflows them."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.flood import DECISIVE_KINDS, POOL_PORT, ROUNDS, flooded_round
from bench.pipeline import build_helper
from sensor.fakegpu.session import fake_driver

FLOODS = 4_000_000  # connects: several seconds of flood on these machines, whatever the probe does


@pytest.fixture(scope="module")
def flooder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_helper(tmp_path_factory.mktemp("flood"))


def test_decisive_records_get_through_a_connect_flood(root: None, flooder: Path, tmp_path: Path) -> None:
    with fake_driver("hopper") as driver:
        _, got = flooded_round(flooder, driver, tmp_path / "flood.cap", FLOODS, "--ringbuf-pages", "64")
    lost = got.kernel_drops.get("connect", 0) + got.probe_drops.get("connect", 0)
    assert lost > 0 and got.flooded + lost >= FLOODS // 2, (got.flooded, lost)  # the flood did overflow
    # nothing of the decisive ring was lost: every exec, fork, exit and GPU record arrived
    assert {kind: got.kernel_drops[kind] for kind in DECISIVE_KINDS} == dict.fromkeys(DECISIVE_KINDS, 0)
    assert [kind for kind in DECISIVE_KINDS if got.probe_drops.get(kind)] == []
    assert got.ssh == [f"{9000 + n}:localhost:22".encode() for n in range(ROUNDS)]
    assert got.pool == [POOL_PORT + n for n in range(ROUNDS)]
    assert got.compute >= 1
