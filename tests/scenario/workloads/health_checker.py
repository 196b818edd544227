"""A health checker: it holds an outbound connection to a metrics server, and every 0.1 s, ROUNDS
times, probes this host's services: sshd's banner on 127.0.0.1:22, and an HTTP GET of a local web
service (which it starts, as a child, on 127.0.0.1:WEB_PORT); one metrics line per round. Prints
"ready" when its service answers and "done" after the last round. A negative: it talks to local
services and to the outside, but passes nothing from one to the other.

    python -m tests.scenario.workloads.health_checker METRICS_HOST:PORT WEB_PORT ROUNDS
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time


def probe(port: int, request: bytes) -> int:
    """Bytes the service answered."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        if request:
            conn.sendall(request)
        else:
            return len(conn.recv(256))  # a banner: read it and hang up
        total = 0
        while data := conn.recv(65536):
            total += len(data)
        return total


def main(metrics_at: str, web_port: int, rounds: int) -> None:
    web = subprocess.Popen([sys.executable, "-m", "http.server", "--bind", "127.0.0.1", str(web_port)],
                           cwd="/usr/share/doc", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            try:
                probe(web_port, b"HEAD / HTTP/1.0\r\n\r\n")
                break
            except OSError:
                time.sleep(0.1)  # the service is starting
        host, _, port = metrics_at.rpartition(":")
        metrics = socket.create_connection((host, int(port)))
        answers = metrics.makefile("rb")
        print("ready", flush=True)
        for n in range(rounds):
            started = time.monotonic()
            ssh = probe(22, b"")
            page = probe(web_port, b"GET / HTTP/1.0\r\nUser-Agent: health-checker/1.0\r\nAccept: */*\r\n\r\n")
            ms = (time.monotonic() - started) * 1000
            metrics.sendall(f"round={n} sshd={ssh > 0:d} web={page > 0:d} ms={ms:.1f}\n".encode())
            answers.readline()
            time.sleep(0.1)  # the checker's period
        print("done", flush=True)
    finally:
        web.kill()
        web.wait()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
