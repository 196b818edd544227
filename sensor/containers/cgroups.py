"""Which container and Kubernetes pod a process belongs to, read from its cgroup path.

Pure logic, no I/O: the caller reads /proc/PID/cgroup and hands its text to `parse`.

Layouts recognised (ids are 64 lowercase hex digits; anything else is refused):

docker      /docker/<id>                                   (cgroupfs driver)
            /system.slice/docker-<id>.scope                (systemd driver)
podman      /libpod_parent/libpod-<id>                     (cgroupfs, rootful)
            /libpod_parent/<podid>/libpod-<id>             (cgroupfs, in a podman pod)
            /machine.slice/libpod-<id>.scope               (systemd, rootful)
            /machine.slice/machine-libpod_pod_<podid>.slice/libpod-<id>.scope
            /user.slice/user-1000.slice/user@1000.service/user.slice/libpod-<id>.scope  (rootless)
            libpod-conmon-<id>[.scope] and /libpod_parent/conmon hold podman's monitor, not the
            container: not a container process.
Kubernetes  cgroupfs driver: /kubepods/pod<uid>/<id> (guaranteed),
            /kubepods/{burstable,besteffort}/pod<uid>/<id>, cri-o: .../pod<uid>/crio-<id>
            systemd driver: /kubepods.slice/kubepods-pod<uid_>.slice/<runtime>-<id>.scope,
            /kubepods.slice/kubepods-<qos>.slice/kubepods-<qos>-pod<uid_>.slice/<runtime>-<id>.scope
            with <runtime> one of cri-containerd, crio, docker; a --cgroup-root prefix is allowed
            (kind's /kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-pod<uid_>.slice).

Under the cgroupfs driver a Kubernetes container's cgroup is its bare id, whatever the runtime
(containerd, cri-o without its crio- prefix, dockershim): the runtime is then reported as "cri",
meaning "a CRI runtime, which one the path does not say". The pod's sandbox (pause) container
has a cgroup like any other container's and is reported as one; only the runtime's API can tell
it apart. The pod UID is reported as the API shows it: a UUID with dashes (the systemd driver
writes them as underscores), or 32 hex digits for a static pod (the kubelet's hash of its
manifest).

Nesting: a path can hold several container ids, e.g. a kind or k3s node, where a node container
holds the kubelet's tree (/docker/<node>/kubepods/...), or docker-in-docker. The innermost
container id is the one reported, with the innermost pod above it: that is the container the
process was started in. Paths outside the reader's cgroup namespace begin with /.. segments
(the kernel writes them so); those are skipped.

This is attribution, not proof. A root process can create and enter any cgroup, and a user with
a delegated subtree (rootless podman's) can create any name below it, so a process can claim a
container it is not in. Refusing malformed ids and odd paths (control characters such as a
newline in a cgroup name, "." or ".." segments, empty segments, repeated hierarchy lines) only
stops a process from claiming a container by a sloppy or ambiguous name.
"""

from __future__ import annotations

import re
from typing import NamedTuple

from sensor.containers.model import ContainerRef

_ID = r"[0-9a-f]{64}"
_BARE_ID = re.compile(_ID)

# A container's own cgroup under each runtime's naming; `.scope` is the systemd driver's unit.
_NAMED_CONTAINERS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(rf"docker-({_ID})\.scope"), "docker"),
    (re.compile(rf"cri-containerd-({_ID})\.scope"), "containerd"),
    (re.compile(rf"crio-({_ID})(?:\.scope)?"), "cri-o"),
    (re.compile(rf"libpod-({_ID})(?:\.scope)?"), "podman"),
)

# Pod UIDs: a UUID from the API server, or 32 hex digits (md5) that the kubelet gives static pods.
_UID_DASHED = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|[0-9a-f]{32}"
_UID_UNDERSCORED = r"[0-9a-f]{8}_[0-9a-f]{4}_[0-9a-f]{4}_[0-9a-f]{4}_[0-9a-f]{12}|[0-9a-f]{32}"
_CGROUPFS_POD = re.compile(rf"pod(?P<uid>{_UID_DASHED})")
# The systemd driver names each slice by its full path (kubelet's cgroup_manager_linux.go,
# ToSystemd): kubepods-burstable-pod<uid>.slice lives in kubepods-burstable.slice.
_SYSTEMD_POD = re.compile(
    rf"(?P<parent>(?:[a-z0-9_]+-)*kubepods(?:-(?P<qos>burstable|besteffort))?)-pod(?P<uid>{_UID_UNDERSCORED})\.slice")
_QOS_LEVELS = ("burstable", "besteffort")

# One line of /proc/PID/cgroup: hierarchy id, controllers (empty for cgroup v2), path.
_LINE = re.compile(r"(?P<hierarchy>[0-9]+):(?P<controllers>[^:]*):(?P<path>/.*)")


class Pod(NamedTuple):
    uid: str  # as the Kubernetes API shows it
    qos: str  # guaranteed | burstable | besteffort


def parse(proc_cgroup: str) -> ContainerRef | None:
    """The container named by the text of /proc/PID/cgroup: the first line whose path names one.

    v1 hosts list one line per hierarchy, hybrid hosts add a `0::path` line, pure v2 hosts have
    only that one; for a process in a container they agree. A text that the kernel would not
    write (a malformed line, a hierarchy twice) is refused whole: it means a cgroup name with a
    newline in it, made to forge a line.
    """
    paths = _paths(proc_cgroup)
    if paths is None:
        return None
    for path in paths:
        found = parse_path(path)
        if found is not None:
            return found
    return None


def pod_of(proc_cgroup: str) -> Pod | None:
    """The pod a process outside any container of it sits in (a pod-level cgroup), refusing a
    forged text as `parse` does."""
    paths = _paths(proc_cgroup)
    return next((pod for path in paths or () if (pod := parse_pod(path)) is not None), None)


def parse_path(path: str) -> ContainerRef | None:
    """The innermost container named by one cgroup path, with the pod above it if any."""
    segments = _segments(path)
    if segments is None:
        return None
    for i in reversed(range(len(segments))):
        container = _container_at(segments, i)
        if container is not None:
            runtime, container_id = container
            pod = _innermost_pod(segments[:i])
            return ContainerRef(runtime=runtime, id=container_id, pod_uid=pod.uid if pod else "",
                                qos=pod.qos if pod else "", cgroup=path)
    return None


def parse_pod(path: str) -> Pod | None:
    """The innermost Kubernetes pod a cgroup path lies in, with or without a container below it,
    so that a process in the pod's own cgroup can still be attributed to the pod."""
    segments = _segments(path)
    return None if segments is None else _innermost_pod(segments)


def _paths(proc_cgroup: str) -> list[str] | None:
    paths: list[str] = []
    hierarchies: set[str] = set()
    for line in proc_cgroup.splitlines():
        match = _LINE.fullmatch(line)
        if match is None or match["hierarchy"] in hierarchies:
            return None
        hierarchies.add(match["hierarchy"])
        paths.append(match["path"])
    return paths


def _segments(path: str) -> list[str] | None:
    """The path's names below the root, or None for a path the kernel would not write."""
    if not path.startswith("/") or any(ord(c) < 0x20 or c == "\x7f" for c in path):
        return None
    if path == "/":
        return []
    names = path[1:].split("/")
    # /.. segments lead a path outside the reader's cgroup namespace (kernel cgroup_path_ns);
    # a directory cannot be named "." or "..", so anywhere else they mean a forged text.
    start = 0
    while start < len(names) and names[start] == "..":
        start += 1
    names = names[start:]
    if any(name in ("", ".", "..") for name in names):
        return None
    return names


def _container_at(segments: list[str], i: int) -> tuple[str, str] | None:
    name = segments[i]
    for pattern, runtime in _NAMED_CONTAINERS:
        match = pattern.fullmatch(name)
        if match is not None:
            return runtime, match[1]
    if i == 0 or _BARE_ID.fullmatch(name) is None:
        return None
    if segments[i - 1] == "docker":
        return "docker", name
    # Under the kubelet's cgroupfs driver the container's cgroup is its bare id: any CRI runtime.
    if _cgroupfs_pod_at(segments, i - 1) is not None:
        return "cri", name
    return None


def _innermost_pod(segments: list[str]) -> Pod | None:
    for i in reversed(range(len(segments))):
        pod = _systemd_pod_at(segments, i) or _cgroupfs_pod_at(segments, i)
        if pod is not None:
            return pod
    return None


def _systemd_pod_at(segments: list[str], i: int) -> Pod | None:
    match = _SYSTEMD_POD.fullmatch(segments[i])
    # A pod slice first in the path is one seen from inside a cgroup namespace rooted below its parent.
    if match is None or (i > 0 and segments[i - 1] != match["parent"] + ".slice"):
        return None
    return Pod(uid=match["uid"].replace("_", "-"), qos=match["qos"] or "guaranteed")


def _cgroupfs_pod_at(segments: list[str], i: int) -> Pod | None:
    match = _CGROUPFS_POD.fullmatch(segments[i])
    if match is None or i == 0:
        return None
    # Guaranteed pods sit directly in kubepods; the others in its burstable/besteffort level.
    if segments[i - 1] == "kubepods":
        return Pod(uid=match["uid"], qos="guaranteed")
    if segments[i - 1] in _QOS_LEVELS and i >= 2 and segments[i - 2] == "kubepods":
        return Pod(uid=match["uid"], qos=segments[i - 1])
    return None
