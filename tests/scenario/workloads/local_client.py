"""A client on this host: sends SIZE bytes to HOST:PORT, reads as many back, COUNT times.
Prints "done".

    python -m tests.scenario.workloads.local_client HOST:PORT SIZE COUNT
"""

from __future__ import annotations

import socket
import sys


def main(target: str, size: int, count: int) -> None:
    host, _, port = target.rpartition(":")
    for _ in range(count):
        with socket.create_connection((host, int(port))) as conn:
            conn.sendall(b"q" * size)
            got = 0
            while got < size:
                data = conn.recv(65536)
                if not data:
                    break
                got += len(data)
    print("done", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
