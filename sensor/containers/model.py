"""A process's container and pod, as the probe resolves them and the frames carry them.

`ContainerRef` is what the cgroup path alone says (sensor/containers/cgroups.py): the
runtime, the container id and, on Kubernetes nodes, the pod's UID and QoS class. `Metadata`
is what a runtime's API says about one container (sensor/containers/podman.py,
containerd.py). `PodGpus` is one container's devices from the kubelet's pod-resources API
(sensor/containers/kubelet.py). The resolver joins them into one `Container`.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class ContainerRef:
    runtime: str  # docker | containerd | cri-o | podman | cri (Kubernetes cgroupfs paths do not say which)
    id: str  # the full id as the runtime names it (64 hex digits for all four)
    pod_uid: str = ""  # Kubernetes pod UID (dashes, as the API shows it); "" outside Kubernetes
    qos: str = ""  # guaranteed | burstable | besteffort, from the kubepods path
    cgroup: str = ""  # the cgroup path it was parsed from

    @property
    def key(self) -> str:
        return f"{self.runtime}:{self.id}"


@dataclass(frozen=True, slots=True)
class Metadata:
    """What a runtime's API says about one container."""
    name: str = ""
    image: str = ""
    labels: dict[str, str] = field(default_factory=dict)  # io.kubernetes.* among them under CRI


@dataclass(frozen=True, slots=True)
class PodGpus:
    """One container's allocated devices, from the kubelet's pod-resources List."""
    namespace: str
    pod: str
    container: str
    devices: dict[str, tuple[str, ...]]  # resource name (nvidia.com/gpu) -> device ids (GPU UUIDs)


@dataclass(frozen=True, slots=True)
class Container:
    """Everything known about one container, carried to the aggregator in a Container frame."""
    key: str  # runtime:id
    runtime: str
    id: str
    name: str = ""
    image: str = ""
    pod_uid: str = ""
    pod_name: str = ""
    pod_namespace: str = ""
    container_name: str = ""  # the Kubernetes container name (the pod spec's), where known
    gpus: tuple[str, ...] = ()  # device ids the kubelet allocated to this container
