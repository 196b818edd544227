"""A web server with an outbound database connection: it dials DB once and keeps it, listens on
PORT (all addresses), and answers each request line with what the database returns for it.
Prints "ready" once listening. A negative: it relays nothing between this host's services.

    python -m tests.scenario.workloads.web_with_db PORT DB_HOST:DB_PORT
"""

from __future__ import annotations

import socket
import sys
import threading


def main(port: int, db_at: str) -> None:
    host, _, db_port = db_at.rpartition(":")
    database = socket.create_connection((host, int(db_port)))
    rows = database.makefile("rb")
    lock = threading.Lock()
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("0.0.0.0", port))
    server.listen(16)
    print("ready", flush=True)
    while True:
        client, _ = server.accept()
        with client:
            request = client.recv(4096)
            with lock:
                database.sendall(b"SELECT " + request)
                answer = rows.readline()
            client.sendall(b"HTTP/1.0 200 OK\r\n\r\n" + answer)


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2])
