"""Moving bytes both ways between two connections until one side ends: what every relay does."""

from __future__ import annotations

import contextlib
import socket
import threading
from typing import Protocol


class Stream(Protocol):
    """A socket, or a paramiko channel: both read, write and shut down alike."""

    def recv(self, size: int) -> bytes: ...
    def sendall(self, data: bytes) -> None: ...
    def shutdown(self, how: int) -> None: ...
    def close(self) -> None: ...


def _copy(source: Stream, sink: Stream, done: threading.Event) -> None:
    with contextlib.suppress(OSError, EOFError):
        while not done.is_set() and (data := source.recv(65536)):
            sink.sendall(data)
    done.set()


def pipe_both(first: Stream, second: Stream) -> None:
    """Until either side ends; then both are closed."""
    done = threading.Event()
    back = threading.Thread(target=_copy, args=(second, first, done), daemon=True)
    back.start()
    _copy(first, second, done)
    for end in (first, second):
        with contextlib.suppress(OSError, EOFError):
            end.shutdown(socket.SHUT_RDWR)
    back.join()
    first.close()
    second.close()
