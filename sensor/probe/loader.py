"""Compile, load and attach in a short-lived child; the probe keeps only file descriptors.

BCC's compiler (clang and LLVM) leaves well over 100 MiB in the process that used it, for as
long as that process lives. So the probe starts this module as a child: it compiles and
attaches everything (sensor/probe/program.py), hands the probe, over a UNIX socket, the file
descriptors of the maps the probe reads and of every attachment (the tracepoints' perf events
and the raw tracepoints' links: a program stays attached while one of them is open), and exits
without detaching anything. The probe then reads the rings in place (sensor/probe/ringbuf.py)
and the maps through bpf(2) (sensor/probe/bpfsys.py). A failure to load comes back as the
same LoadError, message and fix, that loading in-process would raise.

    python -m sensor.probe.loader SOCKET_FD CONFIG_JSON     (started by `load_in_child` only)
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Any

from sensor.errors import GpusentryError
from sensor.probe import program
from sensor.probe.bpfsys import BpfMap

# The maps the long-lived probe reads or writes; the programs' other maps live on with them.
PROBE_MAPS = ("events", "decisive", "self_tgids", "ringbuf_drops", "gpu_counts", "gpu_count_overflow",
              "known_exes", "known_scopes", "gpu_mem", "gpu_mem_overflow", "sock_bytes", "sock_bytes_closed",
              "sock_bytes_overflow", "launch_counts", "launch_funcs")
# Programs loaded but not attached: the probe attaches them itself, to chosen processes only
# (the libcuda launch uprobes, sensor/probe/launches.py).
PROBE_PROGRAMS = ("launch_kernel", "launch_kernel_ex")
_PERCPU_TYPES = {5, 6, 10}  # BPF_MAP_TYPE_PERCPU_HASH, _PERCPU_ARRAY, _LRU_PERCPU_HASH
_MESSAGE_MAX = 64 * 1024
_FDS_MAX = 250  # SCM_RIGHTS takes at most 253 descriptors per message


@dataclass
class Loaded:
    """What the child handed over: maps by name, the attachments to keep open, and the programs
    the probe attaches itself, by name."""

    maps: dict[str, BpfMap]
    links: list[int] = field(default_factory=list)
    programs: dict[str, int] = field(default_factory=dict)

    def close_maps(self) -> None:
        for bpf_map in self.maps.values():
            bpf_map.close()
        for name, fd in list(self.programs.items()):
            os.close(fd)
            del self.programs[name]


def load_in_child(config: program.ProbeConfig) -> Loaded:
    """Load the programs in a child process; raises LoadError as `program.load` would."""
    config.validate()
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with ours:
        try:
            child = subprocess.Popen([sys.executable, "-m", "sensor.probe.loader", str(theirs.fileno()),
                                      json.dumps(config.to_dict())], pass_fds=(theirs.fileno(),))
        finally:
            theirs.close()
        try:
            message, fds, _, _ = socket.recv_fds(ours, _MESSAGE_MAX, _FDS_MAX)
        finally:
            child.wait()
    if not message:
        raise program.LoadError(f"the BPF loader (pid {child.pid}) ended without an answer "
                                f"(exit status {child.returncode})", "run `gpusentry doctor`")
    return _received(json.loads(message), fds)


def _received(answer: dict[str, Any], fds: list[int]) -> Loaded:
    if "error" in answer:
        for fd in fds:
            os.close(fd)
        raise program.LoadError(answer["error"], answer.get("fix") or "run `gpusentry doctor`")
    maps = {name: BpfMap(name, fds[m["fd"]], m["key_size"], m["value_size"], m["max_entries"], m["cpus"])
            for name, m in answer["maps"].items()}
    programs = {name: fds[i] for name, i in answer.get("programs", {}).items()}
    return Loaded(maps, [fds[i] for i in answer["links"]], programs)


# -- the child -------------------------------------------------------------------------------

def _describe(bpf: Any) -> tuple[dict[str, Any], list[int]]:
    """The answer (map shapes, fd indexes) and the descriptors it refers to."""
    import ctypes

    fds: list[int] = []
    maps = {}
    for name in PROBE_MAPS:
        table = bpf[name.encode()]
        ring = table.ttype == 27  # BPF_MAP_TYPE_RINGBUF: no key or value, only a size
        maps[name] = {"fd": len(fds), "max_entries": table.max_entries,
                      "key_size": 0 if ring else ctypes.sizeof(table.Key),
                      # a per-CPU table's Leaf is BCC's array of one value per CPU; sLeaf is one
                      "value_size": 0 if ring else ctypes.sizeof(getattr(table, "sLeaf", table.Leaf)),
                      "cpus": program.possible_cpus() if table.ttype in _PERCPU_TYPES else 0}
        fds.append(table.map_fd)
    links = list(bpf.tracepoint_fds.values()) + list(bpf.raw_tracepoint_fds.values())
    answer: dict[str, Any] = {"maps": maps, "links": list(range(len(fds), len(fds) + len(links)))}
    fds += links
    programs = {}
    for name in PROBE_PROGRAMS:
        programs[name] = len(fds)
        fds.append(bpf.load_func(name.encode(), bpf.KPROBE).fd)  # a uprobe program is of the kprobe type
    answer["programs"] = programs
    return answer, fds


def _child(sock: socket.socket, config: program.ProbeConfig) -> int:
    try:
        bpf = program.load(config)
        answer, fds = _describe(bpf)  # loads the probe's own programs: a verifier failure is said here too
    except GpusentryError as exc:
        sock.send(json.dumps({"error": exc.problem, "fix": exc.fix}).encode())
        return 1
    except Exception as exc:  # anything else: still one answer, not a hung probe
        sock.send(json.dumps({"error": f"the BPF loader failed: {type(exc).__name__}: {exc}"}).encode())
        return 1
    socket.send_fds(sock, [json.dumps(answer).encode()], fds)
    return 0


def main(argv: list[str]) -> None:
    sock = socket.socket(fileno=int(argv[0]))
    config = program.ProbeConfig(**json.loads(argv[1]))
    status = _child(sock, config)
    sys.stdout.flush()
    sys.stderr.flush()
    # Exit without BCC's clean-up, which would detach what the probe now holds: the kernel
    # drops only this process's references.
    os._exit(status)


if __name__ == "__main__":
    main(sys.argv[1:])
