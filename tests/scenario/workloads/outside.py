"""The outside end of the behaviour workloads: small TCP servers (and one client), run in the
outside namespace. Each prints "ready" once it listens.

    outside.py control RELAY_PORT DATA_PORT USER_PORT   a relay dials RELAY_PORT and keeps it;
                                             for each user on USER_PORT it is told "new", dials
                                             DATA_PORT, and the user is piped to that connection
    outside.py echo PORT                      echoes what it is sent (a forwarded service)
    outside.py sink PORT                      reads metric lines, answers "ok\\n" to each
    outside.py db PORT                        answers each query line with 2,000 bytes of rows
    outside.py poll PORT                      a job server: answers each "poll" line after 0.2 s
    outside.py web HOST PORT COUNT            a web client: COUNT requests to HOST:PORT
"""

from __future__ import annotations

import socket
import sys
import threading
import time

from tests.scenario.workloads.pipe import pipe_both


def listen(port: int, host: str = "0.0.0.0") -> socket.socket:
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind((host, port))
    server.listen(16)
    return server


def serve(server: socket.socket, handle: object) -> None:
    print("ready", flush=True)
    while True:
        conn, _ = server.accept()
        threading.Thread(target=handle, args=(conn,), daemon=True).start()  # type: ignore[arg-type]


def lines(conn: socket.socket, answer: object) -> None:
    with conn, conn.makefile("rb") as reader:
        for line in reader:
            conn.sendall(answer(line))  # type: ignore[operator]


def control(relay_port: int, data_port: int, user_port: int) -> None:
    relays, data, users = listen(relay_port), listen(data_port), listen(user_port)
    print("ready", flush=True)
    relay, _ = relays.accept()
    while True:
        user, _ = users.accept()
        relay.sendall(b"new\n")
        carrier, _ = data.accept()
        threading.Thread(target=pipe_both, args=(user, carrier), daemon=True).start()


def echo(conn: socket.socket) -> None:
    with conn:
        while data := conn.recv(65536):
            conn.sendall(data)


def poll_answer(_line: bytes) -> bytes:
    time.sleep(0.2)  # a long poll: the server holds the request until it has something
    return b'{"jobs": []}\n'


def web(host: str, port: int, count: int) -> None:
    for n in range(count):
        with socket.create_connection((host, port)) as conn:
            conn.sendall(f"GET /items/{n}\n".encode())
            while conn.recv(65536):
                pass
    print("done", flush=True)


def main(argv: list[str]) -> None:
    mode, args = argv[0], argv[1:]
    if mode == "control":
        control(int(args[0]), int(args[1]), int(args[2]))
    elif mode == "echo":
        serve(listen(int(args[0])), echo)
    elif mode == "sink":
        serve(listen(int(args[0])), lambda conn: lines(conn, lambda _line: b"ok\n"))
    elif mode == "db":
        serve(listen(int(args[0])), lambda conn: lines(conn, lambda _line: b"r" * 1999 + b"\n"))
    elif mode == "poll":
        serve(listen(int(args[0])), lambda conn: lines(conn, poll_answer))
    elif mode == "web":
        web(args[0], int(args[1]), int(args[2]))
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
