"""Which container and pod a process runs in: parsed from its cgroup path, named by the
container runtime's API and the kubelet's (sensor/containers/resolve.py joins them)."""
