"""What an exec's binary and command line say, whichever process ran it: remembered per exact
command line, because hosts run the same ones over and over.

Reading an exec (the text of its argv, the name of its binary, the tunnel parser, the miner
lists) is the larger part of what the aggregator pays for one, and its answer depends on the
exec's file name, argv, the probe's identity verdict and, for ssh, what its configuration files
added (and on the miner lists, which a reload replaces: with them, the readings). The adversary
controls all four (THREAT-MODEL.md), so a reading is looked up by exactly them, never by a part
of them, and what is remembered is
bounded: at most MAX_READINGS command lines of at most MAX_ARGS arguments and MAX_CMDLINE
characters each, the oldest forgotten first. A command line that does not fit is read every
time, as every one was before.
"""

from __future__ import annotations

from dataclasses import dataclass

from sensor.classify.binaries import basename
from sensor.classify.miner import MinerClassifier, MinerSignal
from sensor.classify.tunnel import Forward, Tunnel, classify_tunnel
from sensor.events import text

MAX_READINGS = 1024
MAX_ARGS = 32
MAX_CMDLINE = 512  # characters; with MAX_ARGS and MAX_READINGS: a few MiB at the very most


@dataclass(frozen=True, slots=True)
class TunnelReading:
    """A tunnel's fields as its fact carries them."""

    tunnel: Tunnel
    directions: tuple[str, ...]  # sorted
    forwards: tuple[str, ...]  # each "direction listen -> target"


@dataclass(frozen=True, slots=True)
class ExecReading:
    exe: str
    name: str  # basename of the executable
    argv: tuple[str, ...]
    cmdline: str
    tunnel: TunnelReading | None
    miner: tuple[MinerSignal, ...]


# file name, argv, the probe's tool verdict, ssh's configuration directives
ReadingKey = tuple[bytes, tuple[bytes, ...], str, tuple[str, ...]]


class ExecReadings:
    def __init__(self, miner: MinerClassifier) -> None:
        self.miner = miner
        self._known: dict[ReadingKey, ExecReading] = {}  # insertion order: the oldest first

    def read(self, filename: bytes, argv: list[bytes], known_tool: str, ssh_config: list[str] | None = None,
             ) -> ExecReading:
        key = (filename, tuple(argv), known_tool, tuple(ssh_config or ()))
        reading = self._known.get(key)
        if reading is None:
            reading = self._read(filename, argv, known_tool, key[3])
            if len(argv) <= MAX_ARGS and len(reading.cmdline) <= MAX_CMDLINE:
                if len(self._known) >= MAX_READINGS:
                    del self._known[next(iter(self._known))]
                self._known[key] = reading
        return reading

    def __len__(self) -> int:
        return len(self._known)

    def _read(self, filename: bytes, argv: list[bytes], known_tool: str, ssh_config: tuple[str, ...] = (),
              ) -> ExecReading:
        args = tuple(text(a) for a in argv)
        exe = text(filename)
        name = basename(exe)
        tunnel = classify_tunnel(list(argv), filename, known_tool or None, ssh_config)
        tunnel_reading = None if tunnel is None else TunnelReading(
            tunnel, tuple(sorted(d.value for d in tunnel.directions)),
            tuple(_forward_text(fw) for fw in tunnel.forwards))
        return ExecReading(exe, name, args, " ".join(args), tunnel_reading, tuple(self.miner.on_exec(name, args)))


def _forward_text(forward: Forward) -> str:
    listen = forward.listen_path or f"{forward.listen_host}:{forward.listen_port}".lstrip(":")
    target = forward.target_path or (f"{forward.target_host}:{forward.target_port}" if forward.target_host else "")
    return f"{forward.direction.value} {listen}" + (f" -> {target}" if target else "")
