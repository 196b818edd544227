"""A reverse tunnel in plain sockets: it dials an outside control server and keeps that
connection; whenever bytes arrive on it, it dials TARGET on this host and pipes the two until
the local side ends, then waits for the next request. Prints "ready" once connected.

    python -m tests.scenario.workloads.plain_relay CONTROL_HOST:PORT TARGET_HOST:TARGET_PORT
"""

from __future__ import annotations

import select
import socket
import sys

from tests.scenario.workloads.pipe import pipe_to_lasting


def address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


def main(control_at: str, target: str) -> None:
    control = socket.create_connection(address(control_at))
    print("ready", flush=True)
    while True:
        select.select([control], [], [])
        first = control.recv(65536)
        if not first:
            return
        local = socket.create_connection(address(target))
        local.sendall(first)
        pipe_to_lasting(local, control)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
