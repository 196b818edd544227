"""kubectl port-forward's shape: it listens on 127.0.0.1:LOCAL_PORT and relays each local client
through a connection of its own to REMOTE (an outside service). Prints "ready" once listening.

    python -m tests.scenario.workloads.port_forward LOCAL_PORT REMOTE_HOST:REMOTE_PORT
"""

from __future__ import annotations

import socket
import sys
import threading

from tests.scenario.workloads.pipe import pipe_both


def main(local_port: int, remote: str) -> None:
    host, _, port = remote.rpartition(":")
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", local_port))
    server.listen(8)
    print("ready", flush=True)
    while True:
        client, _ = server.accept()
        upstream = socket.create_connection((host, int(port)))
        threading.Thread(target=pipe_both, args=(client, upstream), daemon=True).start()


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2])
