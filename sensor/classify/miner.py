"""Signs of cryptocurrency mining: pool ports, stratum URLs and pool hosts in command lines,
known miner binaries and their characteristic flags.

Every list is data (the `lists:` of the rule files: miner_pool_ports, miner_pool_hosts,
miner_binaries, miner_flags). Each is easy to evade on its own (THREAT-MODEL.md): they are
signals that rules combine with tunnels, GPU compute and lineage, never the only one.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

# stratum+tcp://, stratum+ssl://, stratum+tls://, stratum2+tcp://, ... then host[:port]
STRATUM_URL = re.compile(r"\bstratum2?\+(?:tcp|ssl|tls|ws|wss)://([^\s/:'\"]+)(?::(\d+))?", re.IGNORECASE)


@dataclass(frozen=True)
class MinerSignal:
    reason: str  # pool-port, stratum-url, pool-host, miner-binary, miner-flag
    detail: str
    address: str = ""
    port: int = 0


class MinerClassifier:
    def __init__(self, lists: Mapping[str, Sequence[object]]) -> None:
        self.pool_ports = {int(p) for p in lists.get("miner_pool_ports", []) if isinstance(p, int)}
        self.pool_hosts = tuple(str(h).lower() for h in lists.get("miner_pool_hosts", []))
        self.binaries = {str(b).lower() for b in lists.get("miner_binaries", [])}
        self.flags = tuple(str(f) for f in lists.get("miner_flags", []))

    def on_exec(self, name: str, argv: Sequence[str]) -> list[MinerSignal]:
        signals = []
        argv0 = argv[0].rsplit("/", 1)[-1] if argv else ""
        for candidate in {name.lower(), argv0.lower()}:
            if candidate in self.binaries:
                signals.append(MinerSignal("miner-binary", candidate))
        cmdline = " ".join(argv)
        for match in STRATUM_URL.finditer(cmdline):
            port = int(match.group(2)) if match.group(2) else 0
            signals.append(MinerSignal("stratum-url", match.group(0), match.group(1), port))
        lowered = cmdline.lower()
        for host in self.pool_hosts:
            if host in lowered:
                signals.append(MinerSignal("pool-host", host))
        for flag in self.flags:
            if any(arg == flag or arg.startswith(flag + "=") for arg in argv[1:]):
                signals.append(MinerSignal("miner-flag", flag))
        return signals

    def on_connect(self, address: str, port: int, destination: str) -> list[MinerSignal]:
        """A connection to a pool port that leaves the host (or goes through a local forward)."""
        if port in self.pool_ports and destination != "none":
            return [MinerSignal("pool-port", str(port), address, port)]
        return []
