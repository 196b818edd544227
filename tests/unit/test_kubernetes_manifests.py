"""deploy/kubernetes: the Kustomize base and the example overlay, rendered here as kustomize
renders them (the subset they use), every object validated against Kubernetes 1.30's OpenAPI
schemas in strict mode (kubernetes-validate ships them: no cluster, no network), and the pod
checked against the agent it runs: its command is the systemd unit's, its ConfigMaps pass
`gpusentry config check` and `rules check` laid out where the pod mounts them, its probe is a
real CLI command, its ports agree, and every host path it mounts is explained in the docs."""

from __future__ import annotations

import copy
import os
import re
import shlex
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from sensor import config
from sensor.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[2]
KUBERNETES = ROOT / "deploy" / "kubernetes"
BASE = KUBERNETES / "base"
OVERLAY = KUBERNETES / "overlays" / "example"
UNIT = ROOT / "deploy" / "systemd" / "gpusentry.service"
DOCS = ROOT / "docs" / "kubernetes.md"
KUBERNETES_VERSION = "1.30"
CLUSTER_SCOPED = {"Namespace"}
HOST_IP = "192.0.2.10"  # what the downward API's status.hostIP gives the pod in these tests
SECRET_VALUE = "secret-from-a-kubernetes-secret"


# -- rendering: the kustomize features the base and the overlay use --------------------------


def render(folder: Path) -> list[dict[str, Any]]:
    """The objects `kubectl kustomize FOLDER` prints, except the ConfigMaps' name hashes
    (kustomize rewrites every reference along with the name, so plain names check the same)."""
    kustomization = yaml.safe_load((folder / "kustomization.yaml").read_text())
    assert set(kustomization) <= {"apiVersion", "kind", "namespace", "labels", "resources", "configMapGenerator",
                                  "images", "patches"}, "a kustomize feature this renderer does not know"
    objects: list[dict[str, Any]] = []
    for resource in kustomization.get("resources", []):
        path = folder / resource
        objects += render(path) if path.is_dir() else list(yaml.safe_load_all(path.read_text()))
    for generator in kustomization.get("configMapGenerator", []):
        _generate(objects, folder, generator)
    for obj in objects:
        _apply_namespace_and_labels(obj, kustomization)
    for image in kustomization.get("images", []):
        for container in _containers(objects):
            if container["image"].rsplit(":", 1)[0] == image["name"]:
                container["image"] = f"{image['newName']}:{image['newTag']}"
    for patch in kustomization.get("patches", []):
        target = _find(objects, patch["target"]["kind"], patch["target"]["name"])
        json_patch(target, yaml.safe_load((folder / patch["path"]).read_text()))
    return objects


def _generate(objects: list[dict[str, Any]], folder: Path, generator: dict[str, Any]) -> None:
    data = {Path(file).name: (folder / file).read_text() for file in generator["files"]}
    if generator.get("behavior", "create") == "replace":
        _find(objects, "ConfigMap", generator["name"])["data"] = data
    else:
        objects.append({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": generator["name"]},
                        "data": data})


def _apply_namespace_and_labels(obj: dict[str, Any], kustomization: dict[str, Any]) -> None:
    if "namespace" in kustomization and obj["kind"] not in CLUSTER_SCOPED:
        obj["metadata"]["namespace"] = kustomization["namespace"]
    for label in kustomization.get("labels", []):
        assert not label.get("includeSelectors"), "selectors are written out in the manifests"
        obj["metadata"].setdefault("labels", {}).update(label["pairs"])


def json_patch(document: dict[str, Any], operations: list[dict[str, Any]]) -> None:
    """RFC 6902's add, replace and test, which the overlay uses; a failed test fails the patch."""
    for operation in operations:
        *parents, last = [p.replace("~1", "/").replace("~0", "~") for p in operation["path"].split("/")[1:]]
        node: Any = document
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        key: Any = last if isinstance(node, dict) else (len(node) if last == "-" else int(last))
        if operation["op"] == "test":
            assert node[key] == operation["value"], f"patch test failed at {operation['path']}"
        elif operation["op"] == "replace":
            present = key in node if isinstance(node, dict) else key < len(node)
            assert present, f"nothing to replace at {operation['path']}"
            node[key] = operation["value"]
        elif operation["op"] == "add":
            if isinstance(node, list):
                node.insert(key, operation["value"])
            else:
                node[key] = operation["value"]
        else:
            raise AssertionError(f"a JSON patch operation this renderer does not know: {operation['op']}")


def _find(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def _containers(objects: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for obj in objects:
        if obj["kind"] == "DaemonSet":
            yield from obj["spec"]["template"]["spec"]["containers"]


@dataclass
class Rendered:
    objects: list[dict[str, Any]]
    metrics_port: int = 9464  # what the folder sets: the base's port, or the overlay's

    def get(self, kind: str, name: str) -> dict[str, Any]:
        return _find(self.objects, kind, name)

    @property
    def daemonset(self) -> dict[str, Any]:
        return self.get("DaemonSet", "gpusentry")

    @property
    def pod(self) -> dict[str, Any]:
        pod: dict[str, Any] = self.daemonset["spec"]["template"]["spec"]
        return pod

    @property
    def agent(self) -> dict[str, Any]:
        (container,) = self.pod["containers"]
        assert container["name"] == "agent"
        agent: dict[str, Any] = container
        return agent


@pytest.fixture(params=[(BASE, 9464), (OVERLAY, 9465)], ids=["base", "overlay"])
def rendered(request: pytest.FixtureRequest) -> Rendered:
    folder, metrics_port = request.param
    return Rendered(render(folder), metrics_port)


# -- the schemas ------------------------------------------------------------------------------


def test_every_object_is_valid_against_the_kubernetes_schemas(rendered: Rendered) -> None:
    assert sorted((o["kind"], o["metadata"]["name"]) for o in rendered.objects) == [
        ("ConfigMap", "gpusentry-config"), ("ConfigMap", "gpusentry-rules"), ("DaemonSet", "gpusentry"),
        ("Namespace", "gpusentry"), ("Service", "gpusentry-metrics"), ("ServiceAccount", "gpusentry")]
    for obj in rendered.objects:
        assert kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True) == KUBERNETES_VERSION


@pytest.mark.parametrize(("path", "value", "message"), [
    (("spec", "template", "spec", "hostPid"), True, "Additional properties are not allowed ('hostPid' was unexpected)"),
    (("spec", "template", "spec", "hostPID"), "true", "'true' is not of type 'boolean', 'null'"),
    (("spec", "updateStrategy", "rollingUpdate", "maxUnavailabe"), 1,
     "Additional properties are not allowed ('maxUnavailabe' was unexpected)"),
])
def test_the_validation_refuses_a_misspelled_field_and_a_wrong_type(path: tuple[str, ...], value: Any,
                                                                      message: str) -> None:
    daemonset = copy.deepcopy(Rendered(render(BASE)).daemonset)
    node = daemonset
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value
    with pytest.raises(kubernetes_validate.ValidationError) as caught:
        kubernetes_validate.validate(daemonset, KUBERNETES_VERSION, strict=True)
    assert caught.value.message == message


def test_every_object_is_in_the_agents_namespace(rendered: Rendered) -> None:
    namespace = rendered.get("Namespace", "gpusentry")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "privileged"
    assert {o["metadata"].get("namespace") for o in rendered.objects if o["kind"] != "Namespace"} == {"gpusentry"}
    assert all(o["metadata"]["labels"]["app.kubernetes.io/name"] == "gpusentry" for o in rendered.objects)


# -- the pod ----------------------------------------------------------------------------------


def test_the_pod_runs_on_gpu_nodes_in_the_hosts_namespaces(rendered: Rendered) -> None:
    pod = rendered.pod
    assert (pod["hostPID"], pod["hostNetwork"], pod["dnsPolicy"]) == (True, True, "ClusterFirstWithHostNet")
    assert pod["priorityClassName"] == "system-node-critical"
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert (pod["serviceAccountName"], pod["automountServiceAccountToken"]) == ("gpusentry", False)
    assert rendered.get("ServiceAccount", "gpusentry")["automountServiceAccountToken"] is False
    assert rendered.agent["securityContext"] == {"privileged": True}
    selector = rendered.daemonset["spec"]["selector"]["matchLabels"]
    assert selector == {"app.kubernetes.io/name": "gpusentry", "app.kubernetes.io/component": "agent"}
    assert rendered.daemonset["spec"]["template"]["metadata"]["labels"] == selector


def test_the_container_runs_what_the_systemd_unit_runs(rendered: Rendered) -> None:
    (exec_start,) = [line.removeprefix("ExecStart=") for line in UNIT.read_text().splitlines()
                     if line.startswith("ExecStart=")]
    assert rendered.agent["command"] + rendered.agent["args"] == shlex.split(exec_start)
    assert rendered.agent["args"] == ["run", "--no-view", "-c", "/etc/gpusentry/config.yaml"]


def test_the_resources_are_the_measured_ones() -> None:
    assert Rendered(render(BASE)).agent["resources"] == {"requests": {"cpu": "100m", "memory": "320Mi"},
                                                         "limits": {"cpu": "1", "memory": "768Mi"}}


HOST_PATHS = {  # volume: (host path, hostPath type, mounted read-only)
    "tracefs": ("/sys/kernel/tracing", "Directory", False),
    "bpffs": ("/sys/fs/bpf", "Directory", False),
    "cgroup": ("/sys/fs/cgroup", "Directory", True),
    "modules": ("/lib/modules", "Directory", True),
    "usr-src": ("/usr/src", "Directory", True),
    "state": ("/var/lib/gpusentry", "DirectoryOrCreate", False),
    "run": ("/run/gpusentry", "DirectoryOrCreate", False),
    "pod-resources": ("/var/lib/kubelet/pod-resources", "Directory", True),
    "pod-logs": ("/var/log/pods", "Directory", True),
    "containerd-socket": ("/run/containerd/containerd.sock", "Socket", True),
}


def host_paths(rendered: Rendered) -> dict[str, tuple[str, str, bool]]:
    mounts = {m["name"]: m for m in rendered.agent["volumeMounts"]}
    found = {}
    for volume in rendered.pod["volumes"]:
        if "hostPath" in volume:
            mount = mounts[volume["name"]]
            assert mount["mountPath"] == volume["hostPath"]["path"], "a host path is mounted where the host has it"
            found[volume["name"]] = (volume["hostPath"]["path"], volume["hostPath"]["type"],
                                     mount.get("readOnly", False))
    return found


def test_the_host_paths_are_mounted_where_the_host_has_them(rendered: Rendered) -> None:
    assert host_paths(rendered) == HOST_PATHS
    assert {m["name"] for m in rendered.agent["volumeMounts"]} == {v["name"] for v in rendered.pod["volumes"]}


def test_every_host_path_and_capability_is_explained_in_the_docs() -> None:
    docs = DOCS.read_text()
    rows = {m.group(1) for m in re.finditer(r"^\| `([^`]+)`", docs, re.MULTILINE)}
    assert {path for path, _, _ in HOST_PATHS.values()} <= rows
    (bounding,) = [line.split("=", 1)[1].split() for line in UNIT.read_text().splitlines()
                   if line.startswith("CapabilityBoundingSet=")]
    assert [cap for cap in bounding if cap not in docs] == []


def test_the_config_maps_are_mounted_read_only() -> None:
    rendered = Rendered(render(BASE))
    mounts = {m["name"]: (m["mountPath"], m.get("readOnly", False)) for m in rendered.agent["volumeMounts"]}
    volumes = {v["name"]: v["configMap"]["name"] for v in rendered.pod["volumes"] if "configMap" in v}
    assert volumes == {"config": "gpusentry-config", "rules": "gpusentry-rules"}
    assert (mounts["config"], mounts["rules"]) == (("/etc/gpusentry", True), ("/etc/gpusentry-rules", True))


# -- the agent's configuration, as the pod sees it --------------------------------------------


@pytest.fixture
def pod_root(rendered: Rendered, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The pod's ConfigMaps written where it mounts them, under tmp_path, and its environment
    (and only that of gpusentry's) in this process's."""
    mounts = {m["name"]: m["mountPath"] for m in rendered.agent["volumeMounts"]}
    for volume in rendered.pod["volumes"]:
        if "configMap" in volume:
            folder = tmp_path / mounts[volume["name"]].lstrip("/")
            folder.mkdir(parents=True)
            for key, text in rendered.get("ConfigMap", volume["configMap"]["name"])["data"].items():
                (folder / key).write_text(text)
    for variable in [v for v in os.environ if v.startswith(config.ENV_PREFIX)]:
        monkeypatch.delenv(variable)
    monkeypatch.setattr(config, "DEFAULT_FILE", tmp_path / "etc" / "gpusentry" / "config.yaml")
    for name, value in pod_environment(rendered.agent["env"]).items():
        monkeypatch.setenv(name, value)
    return tmp_path


def pod_environment(env: list[dict[str, Any]]) -> dict[str, str]:
    """The container's variables as the kubelet sets them: $(NAME) expanded from the ones
    before it, status.hostIP and Secrets given test values."""
    values: dict[str, str] = {}
    for variable in env:
        if "value" in variable:
            values[variable["name"]] = re.sub(r"\$\((\w+)\)", lambda m: values[m.group(1)], variable["value"])
        elif variable["valueFrom"] == {"fieldRef": {"fieldPath": "status.hostIP"}}:
            values[variable["name"]] = HOST_IP
        else:
            assert set(variable["valueFrom"]) == {"secretKeyRef"}
            values[variable["name"]] = SECRET_VALUE
    return values


def test_the_config_map_passes_config_check(pod_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    file = pod_root / "etc" / "gpusentry" / "config.yaml"
    assert main(["config", "check", str(file)]) == 0
    assert capsys.readouterr().out == f"ok: {file}\n"


def test_the_rules_config_map_passes_rules_check(pod_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rules = pod_root / "etc" / "gpusentry-rules"
    assert main(["rules", "check", str(rules)]) == 0
    out = capsys.readouterr().out
    assert f"overridden by {rules / 'rules.yaml'}:10" in out
    assert f"exception cluster-monitoring ({rules / 'rules.yaml'}:13)" in out
    assert out.splitlines()[-1].endswith(" in 2 file(s)")


def test_the_settings_in_effect_in_the_pod(rendered: Rendered, pod_root: Path) -> None:
    settings = config.load(pod_root / "etc" / "gpusentry" / "config.yaml")
    # detection.rules names the rules ConfigMap's mount, relative to the config file's.
    assert [Path(os.path.normpath(p)) for p in settings["detection.rules"]] == [pod_root / "etc" / "gpusentry-rules"]
    assert settings["metrics.listen"] == f"{HOST_IP}:{rendered.metrics_port}"
    assert (settings["output.mode"], settings["output.json"]) == ("alerts", True)
    # The socket and the journal are in the host paths mounted for them.
    assert Path(settings["api.socket"]).parent == Path(HOST_PATHS["run"][0])
    assert Path(settings["journal.path"]).parent == Path(HOST_PATHS["state"][0])
    assert settings["containers.kubelet_socket"] == HOST_PATHS["pod-resources"][0] + "/kubelet.sock"
    assert settings["containers.pod_logs"] == HOST_PATHS["pod-logs"][0]
    assert settings["containers.containerd_socket"] == HOST_PATHS["containerd-socket"][0]


def sinks(rendered: Rendered) -> Any:
    return yaml.safe_load(rendered.get("ConfigMap", "gpusentry-config")["data"]["config.yaml"])["sinks"]


def test_the_overlay_adds_a_webhook_sink_with_its_token_from_a_secret() -> None:
    base, overlay = Rendered(render(BASE)), Rendered(render(OVERLAY))
    assert sinks(base) == []
    assert [v["name"] for v in overlay.agent["env"]] == [v["name"] for v in base.agent["env"]] + ["WEBHOOK_TOKEN"]
    assert overlay.agent["env"][-1] == {"name": "WEBHOOK_TOKEN",
                                        "valueFrom": {"secretKeyRef": {"name": "gpusentry-webhook", "key": "token"}}}
    assert overlay.agent["image"] == "registry.example.com/security/gpusentry:0.1.0"
    assert base.agent["image"] == "localhost/gpusentry:latest"
    assert sinks(overlay) == [{"type": "webhook", "url": "http://falcosidekick.falco.svc.cluster.local:2801/",
                      "secret_headers": {"Authorization": {"env": "WEBHOOK_TOKEN"}}}]


# -- probes and ports -------------------------------------------------------------------------


def test_the_probes_run_gpusentry_status(rendered: Rendered, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    agent = rendered.agent
    probes = [agent["startupProbe"], agent["readinessProbe"], agent["livenessProbe"]]
    commands = {tuple(p["exec"]["command"]) for p in probes}
    assert commands == {(agent["command"][0], "status", "-o", "json")}
    assert [(p["periodSeconds"], p["timeoutSeconds"], p["failureThreshold"]) for p in probes] == [
        (5, 10, 60), (30, 10, 2), (60, 10, 3)]
    (command,) = commands
    args = build_parser().parse_args(list(command[1:]))
    assert (args.command, args.format) == ("status", "json")
    # With no agent the probe fails: exit status 2 and what to do.
    socket = tmp_path / "sensor.sock"
    assert main([*command[1:], "--socket", str(socket)]) == 2
    assert capsys.readouterr().err == (f"gpusentry: error: no agent API at {socket}; "
                                       "fix: start the agent (scripts/agent), or give --socket\n")


def test_the_metrics_ports_agree(rendered: Rendered) -> None:
    listen = pod_environment(rendered.agent["env"])["GPUSENTRY_METRICS_LISTEN"]
    host, port = listen.rsplit(":", 1)
    assert host == HOST_IP
    assert rendered.agent["ports"] == [{"name": "metrics", "containerPort": int(port), "protocol": "TCP"}]
    service = rendered.get("Service", "gpusentry-metrics")
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["ports"] == [{"name": "metrics", "port": int(port), "targetPort": "metrics",
                                         "protocol": "TCP"}]
    assert service["metadata"]["annotations"] == {"prometheus.io/scrape": "true", "prometheus.io/port": port,
                                                  "prometheus.io/path": "/metrics"}
    assert service["spec"]["selector"] == rendered.daemonset["spec"]["selector"]["matchLabels"]
    assert port == str(rendered.metrics_port)


def test_a_json_patch_test_that_fails_fails_the_render() -> None:
    document = {"env": [{"name": "HOST_IP"}]}
    with pytest.raises(AssertionError, match="patch test failed at /env/0/name"):
        json_patch(document, [{"op": "test", "path": "/env/0/name", "value": "GPUSENTRY_METRICS_LISTEN"}])
