"""The probe's container lookups: which container a process runs in, and what it is.

At each exec (and for each process of the start-up snapshot) the probe reads the process's
/proc/PID/cgroup and parses it (sensor/containers/cgroups.py); the frame carries the
container's key. The first time a key is seen, the resolver asks the runtime's API for the
container's name, image and labels (podman, containerd; docker's containers live in
containerd's `moby` namespace), and on Kubernetes nodes the kubelet for the pod's names and
allocated GPUs, and sends a Container frame ahead of the exec that named it.

The BPF cgroup id (v2) keys a cache where it tells cgroups apart: a process in a v2 cgroup
other than the root is placed by it, and its /proc file read once per cgroup. On cgroup v1
and hybrid hosts (these machines, and many GPU fleets still) the v2 id is the root's for most
processes, so those are read at each exec: one small file, about 13 us here, its parse cached
by the file's text. There the kernel says whether the process's cgroups are its parent's (the
same css_set); such an exec does not wake the probe at once (sensor/probe/settled.py), and if
the process is gone before its file is read, it keeps its parent's container, which is its own.

Lookups block the ring-buffer thread (a new container's first exec waits for its name, so
that the alert it raises carries it), so each has a short timeout and there is a budget of
lookups per second; past it, or when an API fails, the container goes out with what its
cgroup path says, is counted (`container_unnamed`), and is looked up again the next time
one of its processes execs.
"""

from __future__ import annotations

import os
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from sensor import events as ev
from sensor.containers import cgroups
from sensor.containers.containerd import ContainerdClient, ContainerdError
from sensor.containers.kubelet import PodResourcesClient, PodResourcesError, pod_names
from sensor.containers.model import Container, ContainerRef, Metadata, PodGpus
from sensor.containers.podman import PodmanClient, PodmanError
from sensor.probe import settled

MAX_CONTAINERS = 4096
MAX_CGROUP_TEXTS = 8192
LOOKUPS_PER_S = 20.0  # API lookups: a burst of new containers cannot stall the probe long
RETRY_AFTER_S = 1.0  # a container whose lookup failed is tried again no sooner than this
GPU_RESOURCE_PREFIX = "nvidia.com/"  # nvidia.com/gpu, and MIG slices such as nvidia.com/mig-1g.10gb

# Labels the CRI plugin (containerd, cri-o) and the kubelet set on every Kubernetes container.
POD_NAME = "io.kubernetes.pod.name"
POD_NAMESPACE = "io.kubernetes.pod.namespace"
CONTAINER_NAME = "io.kubernetes.container.name"


Where = ContainerRef | tuple[str, str] | None  # a container, a pod (uid, qos), or the host


@dataclass(frozen=True)
class ContainerConfig:
    """Where the runtimes' and the kubelet's APIs are; a socket that is absent is not used."""

    podman_socket: Path = Path("/run/podman/podman.sock")
    containerd_socket: Path = Path("/run/containerd/containerd.sock")
    kubelet_socket: Path = Path("/var/lib/kubelet/pod-resources/kubelet.sock")
    pod_logs: Path = Path("/var/log/pods")
    proc: Path = Path("/proc")


@dataclass
class ResolverStats:
    containers: int = 0  # distinct containers seen
    unnamed: int = 0  # lookups that failed or were over budget: name and image unknown
    cgroup_unread: int = 0  # execs whose cgroup could not be read (the process was gone)
    cgroup_inherited: int = 0  # ... whose cgroups the kernel found to be their parent's: not a miss
    cgroup_read: int = 0  # /proc/PID/cgroup reads
    by_cgroup_id: int = 0  # execs placed by their v2 cgroup id alone, without a read
    gpus_unread: int = 0  # pod-resources calls that failed: those containers' GPUs unknown


@dataclass
class _Budget:
    """A token bucket: `rate` lookups a second, bursts up to `rate`."""

    rate: float
    clock: Callable[[], float] = time.monotonic
    tokens: float = 0.0
    at: float = field(default=0.0)

    def __post_init__(self) -> None:
        self.tokens, self.at = self.rate, self.clock()

    def take(self) -> bool:
        now = self.clock()
        self.tokens = min(self.rate, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


class ContainerResolver:
    def __init__(self, config: ContainerConfig | None = None, *, lookups_per_s: float = LOOKUPS_PER_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config or ContainerConfig()
        self.stats = ResolverStats()
        self._clock = clock
        self._budget = _Budget(lookups_per_s, clock)
        self._parsed: OrderedDict[str, Where] = OrderedDict()  # by the text of /proc/PID/cgroup
        self._by_cgroup_id: OrderedDict[int, Where] = OrderedDict()  # by the v2 cgroup id, where it tells
        self.settled = settled.Settled()  # the kernel's copy of which cgroups are placed (the probe's maps)
        self._root_id = settled.cgroup2_root_id()
        self._known: OrderedDict[str, Container] = OrderedDict()
        self._retry_at: dict[str, float] = {}  # keys whose lookup failed: when to try again
        self._pods: dict[str, tuple[str, str]] = {}  # pod UID -> (namespace, name), from the log dir

    def of_process(self, pid: int, cgroup_id: int = 0, inherited: bool = False) -> tuple[str, list[Container]]:
        """The container key of a process ("" on the host, ev.CONTAINER_UNREAD when its cgroup
        was not read: it stays in the container it was in), and the containers to describe
        before it (new, or learnt more of). `cgroup_id` is the v2 cgroup id BPF reported (0 when
        unknown); `inherited`, that the kernel found its cgroups to be its parent's."""
        keyed = cgroup_id not in (0, self._root_id)
        if keyed and cgroup_id in self._by_cgroup_id:
            self.stats.by_cgroup_id += 1
            where = self._by_cgroup_id[cgroup_id]
            self._by_cgroup_id.move_to_end(cgroup_id)
        else:
            try:
                text = _read_small(f"{self.config.proc}/{pid}/cgroup")
            except OSError:
                if inherited:  # gone, and its container is its parent's: the aggregator keeps that
                    self.stats.cgroup_inherited += 1
                else:
                    self.stats.cgroup_unread += 1
                return ev.CONTAINER_UNREAD, []
            self.stats.cgroup_read += 1
            where = self._parse(text)
            if keyed:
                self._place(cgroup_id, where)
        if where is None:
            return "", []
        ref = where if isinstance(where, ContainerRef) else None
        key = ref.key if ref is not None else f"pod:{where[0]}"  # type: ignore[index]
        known = self._known.get(key)
        if known is not None and key not in self._retry_at:
            self._known.move_to_end(key)
            return key, []
        if known is not None and self._clock() < self._retry_at[key]:
            return key, []
        found = self._describe(key, where)
        if found == known:
            return key, []
        self._remember(found)
        return key, [found]

    def _place(self, cgroup_id: int, where: Where) -> None:
        self._by_cgroup_id[cgroup_id] = where
        self.settled.scope(settled.SCOPE_CGROUP2, cgroup_id)
        if len(self._by_cgroup_id) > MAX_CGROUP_TEXTS:
            gone, _ = self._by_cgroup_id.popitem(last=False)
            self.settled.forget_scope(settled.SCOPE_CGROUP2, gone)

    def _parse(self, text: str) -> Where:
        if text in self._parsed:
            self._parsed.move_to_end(text)
            return self._parsed[text]
        where: Where = cgroups.parse(text)
        if where is None:
            where = cgroups.pod_of(text)
        self._parsed[text] = where
        if len(self._parsed) > MAX_CGROUP_TEXTS:
            self._parsed.popitem(last=False)
        return where

    def _remember(self, found: Container) -> None:
        if found.key not in self._known:
            self.stats.containers += 1
        self._known[found.key] = found
        self._known.move_to_end(found.key)
        if len(self._known) > MAX_CONTAINERS:
            gone, _ = self._known.popitem(last=False)
            self._retry_at.pop(gone, None)

    # -- what the APIs say -------------------------------------------------------------------

    def _describe(self, key: str, where: ContainerRef | tuple[str, str]) -> Container:
        if not isinstance(where, ContainerRef):
            pod_uid = where[0]
            namespace, pod = self._pod_name(pod_uid)
            return Container(key=key, runtime="", id="", pod_uid=pod_uid, pod_name=pod, pod_namespace=namespace,
                             gpus=self._gpus(namespace, pod, ""))
        container = Container(key=key, runtime=where.runtime, id=where.id, pod_uid=where.pod_uid)
        metadata = self._metadata(key, where)
        if metadata is not None:
            container = replace(container, name=metadata.name, image=metadata.image,
                                container_name=metadata.labels.get(CONTAINER_NAME, ""))
        if where.pod_uid:
            container = self._with_pod(container, metadata)
        return container

    def _metadata(self, key: str, ref: ContainerRef) -> Metadata | None:
        """The runtime's view of the container, within the lookup budget; None when unknown."""
        lookup = self._lookup_for(ref.runtime)
        if lookup is None:
            return None
        if not self._budget.take():
            self._failed(key)  # over the lookup budget
            return None
        try:
            metadata = lookup(ref.id)
        except (PodmanError, ContainerdError):
            self._failed(key)
            return None
        self._retry_at.pop(key, None)
        return metadata

    def _failed(self, key: str) -> None:
        self.stats.unnamed += 1
        self._retry_at[key] = self._clock() + RETRY_AFTER_S

    def _lookup_for(self, runtime: str) -> Callable[[str], Metadata | None] | None:
        if runtime == "podman" and self.config.podman_socket.exists():
            podman: Callable[[str], Metadata | None] = PodmanClient(self.config.podman_socket).inspect
            return podman
        if runtime != "podman" and self.config.containerd_socket.exists():
            # docker's containers are containerd's too (namespace moby); cri-o has no client yet
            containerd: Callable[[str], Metadata | None] = ContainerdClient(self.config.containerd_socket).get
            return containerd
        return None

    def _with_pod(self, container: Container, metadata: Metadata | None) -> Container:
        labels = metadata.labels if metadata is not None else {}
        namespace, pod = labels.get(POD_NAMESPACE, ""), labels.get(POD_NAME, "")
        if not pod:
            namespace, pod = self._pod_name(container.pod_uid)
        return replace(container, pod_name=pod, pod_namespace=namespace,
                       gpus=self._gpus(namespace, pod, container.container_name))

    def _pod_name(self, pod_uid: str) -> tuple[str, str]:
        """(namespace, name) from the kubelet's log directory, read again for a pod not yet in it."""
        if pod_uid not in self._pods and self.config.pod_logs.is_dir():
            self._pods = pod_names(self.config.pod_logs)
        return self._pods.get(pod_uid, ("", ""))

    def _gpus(self, namespace: str, pod: str, container: str) -> tuple[str, ...]:
        """The GPUs the kubelet allocated to the container (to the whole pod when the container's
        name is unknown), from the pod-resources API."""
        if not pod or not self.config.kubelet_socket.exists():
            return ()
        try:
            allocations = PodResourcesClient(self.config.kubelet_socket).list()
        except PodResourcesError:
            self.stats.gpus_unread += 1
            return ()
        return _gpus_of(allocations, namespace, pod, container)


def _read_small(path: str) -> str:
    """A small /proc file in one read: half the cost of Path.read_text, on the exec path."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return os.read(fd, 65536).decode("utf-8", "surrogateescape")
    finally:
        os.close(fd)


def _gpus_of(allocations: list[PodGpus], namespace: str, pod: str, container: str) -> tuple[str, ...]:
    ids: list[str] = []
    for entry in allocations:
        if (entry.namespace, entry.pod) != (namespace, pod) or (container and entry.container != container):
            continue
        for resource, devices in sorted(entry.devices.items()):
            if resource.startswith(GPU_RESOURCE_PREFIX):
                ids += devices
    return tuple(dict.fromkeys(ids))
