"""A reverse tunnel in plain sockets: it dials an outside control server and keeps that
connection; for each request the server sends on it ("new"), it dials the server again for the
request's bytes and dials TARGET on this host, and pipes the two. Prints "ready" once connected.

    python -m tests.scenario.workloads.plain_relay SERVER_HOST CONTROL_PORT DATA_PORT TARGET_HOST:TARGET_PORT
"""

from __future__ import annotations

import socket
import sys
import threading

from tests.scenario.workloads.pipe import pipe_both


def main(server: str, control_port: int, data_port: int, target: str) -> None:
    host, _, port = target.rpartition(":")
    control = socket.create_connection((server, control_port))
    print("ready", flush=True)
    for _request in control.makefile("rb"):
        carrier = socket.create_connection((server, data_port))
        local = socket.create_connection((host, int(port)))
        threading.Thread(target=pipe_both, args=(carrier, local), daemon=True).start()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
