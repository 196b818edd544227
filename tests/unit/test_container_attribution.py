"""Container and pod attribution without root: the resolver on a /proc made in a temp dir, and
the aggregator on constructed frames (Container frames, execs naming them), through rules
that scope and match on container and pod, to the alert, its outward form and its text."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from sensor import events as ev
from sensor.aggregator.aggregator import Aggregator
from sensor.api import convert
from sensor.api.v1 import gpusentry_pb2 as pb
from sensor.containers.resolve import ContainerConfig, ContainerResolver
from sensor.output import alert_lines
from sensor.probe import settled
from sensor.rules.loader import RuleError, load_rules
from sensor.sinks.webhook import _container_fields
from sensor.where import place

SEC = 1_000_000_000
PODMAN_ID = "1d094814082ee64d248ffcdfb4ab19b8526f0180fa6ca7024bd3d802f9dd8819"
CRI_ID = "8f3a1c0b5e2d4a6978c1b2d3e4f5061728394a5b6c7d8e9f0a1b2c3d4e5f6a7b"
POD_UID = "0f5c8d52-6b8c-4d27-9a5e-3c1c0b6f2a11"


# -- the resolver --------------------------------------------------------------------------------


def fake_proc(tmp_path: Path, processes: dict[int, str]) -> ContainerConfig:
    """A /proc with one cgroup file per process, and API sockets that do not exist."""
    for pid, cgroup in processes.items():
        (tmp_path / "proc" / str(pid)).mkdir(parents=True)
        (tmp_path / "proc" / str(pid) / "cgroup").write_text(cgroup)
    absent = tmp_path / "absent"
    return ContainerConfig(podman_socket=absent, containerd_socket=absent, kubelet_socket=absent,
                           pod_logs=tmp_path / "pods", proc=tmp_path / "proc")


def v1_cgroup(path: str) -> str:
    """/proc/PID/cgroup on a hybrid host like this one: every v1 hierarchy, then the v2 line."""
    lines = [f"{n}:{c}:{path}" for n, c in enumerate(("cpu", "cpuacct", "cpuset", "memory", "pids"), start=1)]
    return "\n".join([*lines, "9:name=systemd:/", "0::/"]) + "\n"


def test_a_host_process_has_no_container(tmp_path: Path) -> None:
    resolver = ContainerResolver(fake_proc(tmp_path, {10: v1_cgroup("/user.slice/session-1.scope")}))
    assert resolver.of_process(10) == ("", [])


def test_a_container_is_described_once_then_named_by_key(tmp_path: Path) -> None:
    path = f"/libpod_parent/libpod-{PODMAN_ID}"
    resolver = ContainerResolver(fake_proc(tmp_path, {10: v1_cgroup(path), 11: v1_cgroup(path)}))
    key, described = resolver.of_process(10)
    assert key == f"podman:{PODMAN_ID}"
    assert [(c.key, c.runtime, c.id, c.name, c.image) for c in described] == [(key, "podman", PODMAN_ID, "", "")]
    assert resolver.of_process(11) == (key, [])
    assert resolver.stats.containers == 1


def test_a_v2_cgroup_id_places_later_processes_without_reading_proc(tmp_path: Path) -> None:
    path = f"/libpod_parent/libpod-{PODMAN_ID}"
    resolver = ContainerResolver(fake_proc(tmp_path, {10: v1_cgroup(path), 12: v1_cgroup("/")}))
    assert resolver.of_process(10, cgroup_id=4242)[0] == f"podman:{PODMAN_ID}"
    # pid 11 has no /proc entry: only the cache on its cgroup id can place it
    assert resolver.of_process(11, cgroup_id=4242) == (f"podman:{PODMAN_ID}", [])
    # the v2 root's id tells nothing (a cgroup v1 or hybrid host): every exec is read
    root = resolver._root_id
    assert resolver.of_process(12, cgroup_id=root) == ("", [])
    assert resolver.of_process(11, cgroup_id=root) == (ev.CONTAINER_UNREAD, [])
    assert (resolver.stats.cgroup_read, resolver.stats.by_cgroup_id, resolver.stats.cgroup_unread) == (2, 1, 1)


def test_a_process_gone_before_its_cgroup_was_read_is_unread_and_counted(tmp_path: Path) -> None:
    resolver = ContainerResolver(fake_proc(tmp_path, {}))
    assert resolver.of_process(4242) == (ev.CONTAINER_UNREAD, [])
    assert resolver.stats.cgroup_unread == 1


def test_a_kubepods_container_gets_its_pod_name_from_the_kubelet_log_directory(tmp_path: Path) -> None:
    path = f"/kubepods/burstable/pod{POD_UID}/{CRI_ID}"
    config = fake_proc(tmp_path, {20: v1_cgroup(path)})
    (config.pod_logs / f"ml_trainer-0_{POD_UID}" / "trainer").mkdir(parents=True)
    [container] = ContainerResolver(config).of_process(20)[1]
    assert (container.pod_uid, container.pod_namespace, container.pod_name, container.gpus) == \
        (POD_UID, "ml", "trainer-0", ())


# -- the aggregator, rules and outputs ---------------------------------------------------------

RULES = """rules:
  - id: miner-image-runs
    title: a container from the miners' registry runs
    description: D
    severity: high
    match: {fact: exec, where: {process.container.image: {prefix: "registry.example/miners/"}}}
  - id: pod-tunnel-then-exec
    title: a tunnel in a pod, then another process of the same pod
    description: D
    severity: critical
    sequence:
      scope: [pod]
      window: 10m
      steps:
        - {fact: tunnel, where: {reverse: true, pod.namespace: ml}}
        - {fact: exec, where: {name: xmrig}}
"""


def container_frame(**fields: Any) -> ev.Container:
    return ev.Container(ts=SEC, tgid=1, tid=1, **fields)


def exec_frame(pid: int, argv: list[bytes], container: str, ts: int) -> ev.Exec:
    return ev.Exec(ts=ts, tgid=pid, tid=pid, result=0, ppid=1, uid=0, gid=0, cgroup_id=1, start_ns=pid * SEC,
                   comm=argv[0], filename=b"/usr/bin/" + argv[0], argv=argv, argc=len(argv), flags=0, exe_dev=0,
                   exe_ino=0, old_tid=pid, container=container)


@pytest.fixture
def aggregator(tmp_path: Path) -> Aggregator:
    path = tmp_path / "rules.yaml"
    path.write_text(RULES)
    return Aggregator(rules=load_rules([path], builtin=False))


def pod_container(key: str, container_id: str, name: str) -> ev.Container:
    return container_frame(key=key, runtime="cri", id=container_id, name=name, image="registry.example/miners/x:1",
                           pod_uid=POD_UID, pod_name="trainer-0", pod_namespace="ml", container_name=name,
                           gpus=["GPU-5a1c"])


def test_rules_scope_and_match_on_pod_and_image(aggregator: Aggregator) -> None:
    other = CRI_ID[::-1]
    aggregator.handle(pod_container(f"cri:{CRI_ID}", CRI_ID, "trainer"))
    aggregator.handle(pod_container(f"cri:{other}", other, "sidecar"))
    tunnel = aggregator.handle(exec_frame(30, [b"ssh", b"-R", b"9000:localhost:22", b"x@203.0.113.5"],
                                          f"cri:{CRI_ID}", 2 * SEC))
    # a process of another container of the same pod: the pod scope joins them
    miner = aggregator.handle(exec_frame(31, [b"xmrig"], f"cri:{other}", 3 * SEC))
    assert [a.rule_id for a in tunnel.alerts] == ["miner-image-runs"]
    assert [(a.rule_id, a.scope, a.scope_key) for a in miner.alerts] == [
        ("miner-image-runs", "fact", miner.process.exec_id if miner.process else ""),
        ("pod-tunnel-then-exec", "pod", f"pod:{POD_UID}")]
    sequence = miner.alerts[1]
    assert [(p.pid, p.container, p.pod) for p in sequence.processes] == [
        (30, {"runtime": "cri", "id": CRI_ID, "name": "trainer", "image": "registry.example/miners/x:1"},
         {"uid": POD_UID, "name": "trainer-0", "namespace": "ml", "container": "trainer", "gpus": ["GPU-5a1c"]}),
        (31, {"runtime": "cri", "id": other, "name": "sidecar", "image": "registry.example/miners/x:1"},
         {"uid": POD_UID, "name": "trainer-0", "namespace": "ml", "container": "sidecar", "gpus": ["GPU-5a1c"]})]
    outward = convert.alert(sequence, convert.Clock(0))
    assert outward.processes[0].process.pod.gpus == ["GPU-5a1c"]
    assert outward.processes[0].process.container.image == "registry.example/miners/x:1"
    assert place(outward.processes[0].process) == \
        "pod ml/trainer-0 container trainer, GPUs GPU-5a1c; cri container trainer (registry.example/miners/x:1)"
    assert any(line.endswith("[pod ml/trainer-0 container trainer, GPUs GPU-5a1c; cri container trainer "
                             "(registry.example/miners/x:1)]") for line in alert_lines(outward))


def test_a_host_process_has_no_container_fields_and_no_pod_scope(aggregator: Aggregator) -> None:
    tunnel = aggregator.handle(exec_frame(40, [b"ssh", b"-R", b"9000:localhost:22", b"x@203.0.113.5"], "", SEC))
    miner = aggregator.handle(exec_frame(41, [b"xmrig"], "", 2 * SEC))
    assert tunnel.alerts == miner.alerts == []
    assert tunnel.process is not None and aggregator.detector is not None
    values = aggregator.detector.process_values(tunnel.process)
    assert {k: v for k, v in values.items() if k.startswith(("process.container", "pod."))} == {
        "process.container.id": "", "process.container.name": "", "process.container.image": "",
        "process.container.runtime": "", "pod.uid": "", "pod.name": "", "pod.namespace": "", "pod.gpus": ()}
    assert place(convert.process(tunnel.process, convert.Clock(0), aggregator.containers)) == ""


def test_a_forked_child_stays_in_its_parents_container_and_an_unread_exec_keeps_it(aggregator: Aggregator) -> None:
    aggregator.handle(pod_container(f"cri:{CRI_ID}", CRI_ID, "trainer"))
    aggregator.handle(exec_frame(50, [b"python3"], f"cri:{CRI_ID}", SEC))
    child = aggregator.handle(ev.Fork(ts=2 * SEC, tgid=50, tid=50, child_pid=51, parent_tgid=50,
                                      child_start_ns=51 * SEC)).process
    assert child is not None and child.container == f"cri:{CRI_ID}"
    unread = dataclasses.replace(exec_frame(51, [b"sh"], ev.CONTAINER_UNREAD, 3 * SEC))
    assert aggregator.handle(unread).process is child
    assert child.container == f"cri:{CRI_ID}"


def test_container_and_pod_fields_are_checked_when_rules_load(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(RULES.replace("pod.namespace", "pod.colour"))
    with pytest.raises(RuleError) as info:
        load_rules([path], builtin=False)
    [problem] = info.value.problems
    assert "a tunnel fact has no field 'pod.colour'" in str(problem) and "pod.namespace" in str(problem)


def test_an_older_exec_frame_without_the_container_field_still_decodes() -> None:
    frame = ev.to_list(exec_frame(60, [b"ls"], "", SEC))[:-1]  # as written before the field existed
    decoded = ev.from_list(frame)
    assert isinstance(decoded, ev.Exec) and decoded.container == "" and decoded.argv == [b"ls"]


def test_the_webhook_names_container_and_pod_with_falcos_fields() -> None:
    process = pb.Process(pid=7, container=pb.Container(runtime="cri", id=CRI_ID, name="trainer", image="img:1"),
                         pod=pb.Pod(uid=POD_UID, name="trainer-0", namespace="ml", container="trainer",
                                    gpus=["GPU-a", "GPU-b"]))
    assert _container_fields(process) == {
        "container.id": CRI_ID[:12], "container.full_id": CRI_ID, "container.name": "trainer",
        "container.image": "img:1", "container.type": "cri", "k8s.pod.uid": POD_UID, "k8s.pod.name": "trainer-0",
        "k8s.ns.name": "ml", "gpusentry.k8s.container.name": "trainer", "gpusentry.k8s.pod.gpus": "GPU-a, GPU-b"}
    assert _container_fields(pb.Process(pid=8)) == {"container.id": "host"}


def test_a_process_gone_whose_cgroups_were_its_parent_s_keeps_its_container_and_is_no_miss(tmp_path: Path) -> None:
    resolver = ContainerResolver(fake_proc(tmp_path, {}))
    root = resolver._root_id
    assert resolver.of_process(4242, cgroup_id=root, inherited=True) == (ev.CONTAINER_UNREAD, [])
    assert (resolver.stats.cgroup_inherited, resolver.stats.cgroup_unread) == (1, 0)


def test_a_v2_cgroup_placed_is_settled_in_the_kernel_and_taken_back_when_the_cache_lets_go(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sensor.containers.resolve.MAX_CGROUP_TEXTS", 1)
    resolver = ContainerResolver(fake_proc(tmp_path, {10: v1_cgroup("/"), 11: v1_cgroup("/")}))
    calls: list[tuple[str, int, int]] = []
    resolver.settled.scope = lambda kind, ident: calls.append(("scope", kind, ident))  # type: ignore[method-assign]
    resolver.settled.forget_scope = lambda kind, ident: calls.append(("forget", kind, ident))  # type: ignore[method-assign]
    resolver.of_process(10, cgroup_id=4242)
    resolver.of_process(11, cgroup_id=4343)
    assert calls == [("scope", settled.SCOPE_CGROUP2, 4242), ("scope", settled.SCOPE_CGROUP2, 4343),
                     ("forget", settled.SCOPE_CGROUP2, 4242)]
