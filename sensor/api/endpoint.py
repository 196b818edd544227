"""Where the API listens, and how: the endpoint's checks, and binding it securely.

The default endpoint is a UNIX socket (mode 0660, group configurable): only root and that
group reach it. TCP is opt-in: plain text is allowed on a loopback address only; anywhere
else it needs TLS (and mTLS with a client CA), unless --insecure-plaintext says otherwise.
"""

from __future__ import annotations

import contextlib
import grp
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

import grpc

from sensor.api.v1 import gpusentry_pb2 as pb
from sensor.errors import GpusentryError, UsageError

DEFAULT_SOCKET = Path("/run/gpusentry/sensor.sock")
SERVICE = pb.DESCRIPTOR.services_by_name["Sensor"].full_name
MAX_REQUEST = 64 * 1024  # requests are small; anything bigger is refused by gRPC with RESOURCE_EXHAUSTED
MAX_RESPONSE = 16 * 1024 * 1024


@dataclass(frozen=True)
class Endpoint:
    socket: Path | None = DEFAULT_SOCKET
    socket_group: str | None = None
    listen: str | None = None  # HOST:PORT for TCP
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    insecure_plaintext: bool = False

    def validate(self) -> None:
        if self.socket is None and self.listen is None:
            raise UsageError("the API has nowhere to listen", "keep the default --socket, or give --listen")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise UsageError("--tls-cert and --tls-key go together", "give both, or neither")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise UsageError("--tls-client-ca (mTLS) needs the server's --tls-cert and --tls-key",
                             "give all three")
        if self.listen is not None:
            host = tcp_host(self.listen)
            if self.tls_cert is None and not _loopback(host) and not self.insecure_plaintext:
                raise UsageError(
                    f"refusing to serve the API in plain text on {self.listen}: anyone who reaches it would "
                    "read every alert and process",
                    "give --tls-cert and --tls-key (and --tls-client-ca for mTLS), or listen on 127.0.0.1, "
                    "or pass --insecure-plaintext")
        if self.socket_group is not None:
            try:
                grp.getgrnam(self.socket_group)
            except KeyError as exc:
                raise UsageError(f"--socket-group {self.socket_group}: no such group",
                                 "give an existing group") from exc


def tcp_host(listen: str) -> str:
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535 or not host:
        raise UsageError(f"--listen {listen!r} is not HOST:PORT", "e.g. 127.0.0.1:50051 or [::1]:50051")
    return host.strip("[]")


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def answers(path: Path) -> bool:
    """Whether something is listening on this UNIX socket path now."""
    import socket

    if not path.exists():
        return False
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except OSError:
        return False
    finally:
        probe.close()
    return True


def socket_in_use(path: Path) -> GpusentryError:
    return GpusentryError(f"another gpusentry agent is already serving the API at {path}",
                          "stop it first, or give --socket another path")


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}", "give a readable PEM file") from exc


def bind(server: grpc.aio.Server, endpoint: Endpoint) -> int:
    """Add the endpoint's ports to the server; the TCP port bound (useful with port 0), or 0."""
    if endpoint.socket is not None:
        endpoint.socket.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
        if answers(endpoint.socket):
            raise socket_in_use(endpoint.socket)
        with contextlib.suppress(FileNotFoundError):
            endpoint.socket.unlink()  # a stale socket from an earlier run
        old = os.umask(0o117)  # the socket is born 0660: no moment where others may connect
        try:
            server.add_insecure_port(f"unix:{endpoint.socket}")
        finally:
            os.umask(old)
    if endpoint.listen is None:
        return 0
    if endpoint.tls_cert is not None and endpoint.tls_key is not None:
        ca = _read(endpoint.tls_client_ca) if endpoint.tls_client_ca else None
        credentials = grpc.ssl_server_credentials([(_read(endpoint.tls_key), _read(endpoint.tls_cert))],
                                                  root_certificates=ca, require_client_auth=ca is not None)
        port: int = server.add_secure_port(endpoint.listen, credentials)
    else:
        port = server.add_insecure_port(endpoint.listen)
    if port == 0:
        raise GpusentryError(f"cannot listen on {endpoint.listen}", "is the port already in use?")
    return port


def secure_socket(endpoint: Endpoint) -> None:
    """Once bound: the socket's mode again (the umask made it so), and its group."""
    socket = endpoint.socket
    if socket is None:
        return
    os.chmod(socket, 0o660)
    if endpoint.socket_group is not None:
        os.chown(socket, -1, grp.getgrnam(endpoint.socket_group).gr_gid)


def arguments(endpoint: Endpoint) -> list[str]:
    """The endpoint as the stream process's flags (sensor/api/stream.py reads them back)."""
    flags = ["--socket", str(endpoint.socket) if endpoint.socket is not None else ""]
    for flag, value in (("--socket-group", endpoint.socket_group), ("--listen", endpoint.listen),
                        ("--tls-cert", endpoint.tls_cert), ("--tls-key", endpoint.tls_key),
                        ("--tls-client-ca", endpoint.tls_client_ca)):
        if value is not None:
            flags += [flag, str(value)]
    return flags + (["--insecure-plaintext"] if endpoint.insecure_plaintext else [])
