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


def pipe_to_lasting(first: socket.socket, lasting: socket.socket) -> None:
    """Until `first` ends; `lasting` stays open to serve again, so it is read with a short
    timeout and never past the end of this exchange."""
    done = threading.Event()
    lasting.settimeout(0.2)

    def back() -> None:
        while not done.is_set():
            try:
                data = lasting.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                break
            if not data:
                break
            with contextlib.suppress(OSError):
                first.sendall(data)
        done.set()

    reader = threading.Thread(target=back, daemon=True)
    reader.start()
    _copy(first, lasting, done)
    with contextlib.suppress(OSError):
        first.shutdown(socket.SHUT_RDWR)
    reader.join()
    first.close()
    lasting.settimeout(None)
