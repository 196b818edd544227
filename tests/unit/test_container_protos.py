"""The generated code for the kubelet's and containerd's APIs (sensor/containers/v1) is what
scripts/gen-container-protos makes of the committed protos, byte for byte, and it keeps the
publishers' wire names."""

from __future__ import annotations

import subprocess
from pathlib import Path

from sensor.containers.v1 import containerd_containers_pb2 as cd
from sensor.containers.v1 import podresources_pb2 as pr

ROOT = Path(__file__).resolve().parents[2]
GENERATED = ROOT / "sensor/containers/v1"


def test_the_committed_generated_code_is_what_the_protos_generate(tmp_path: Path) -> None:
    subprocess.run([str(ROOT / "scripts/gen-container-protos"), str(tmp_path)], check=True, cwd=ROOT)
    fresh = {p.name: p.read_bytes() for p in (tmp_path / "sensor/containers/v1").iterdir()}
    committed = {p.name: p.read_bytes() for p in GENERATED.iterdir() if p.name != "__init__.py" and p.is_file()}
    assert sorted(fresh) == sorted(committed)
    stale = [name for name in sorted(fresh) if fresh[name] != committed[name]]
    assert stale == [], "stale generated code: run scripts/gen-container-protos"


def test_the_methods_keep_the_kubelets_and_containerds_wire_names() -> None:
    lister = pr.DESCRIPTOR.services_by_name["PodResourcesLister"]
    containers = cd.DESCRIPTOR.services_by_name["Containers"]
    assert f"/{lister.full_name}/{lister.methods_by_name['List'].name}" == "/v1.PodResourcesLister/List"
    assert f"/{containers.full_name}/{containers.methods_by_name['Get'].name}" == \
        "/containerd.services.containers.v1.Containers/Get"
