"""Where the API listens, and the server thread.

The default endpoint is a UNIX socket (mode 0660, group configurable): only root and that
group reach it. TCP is opt-in: plain text is allowed on a loopback address only; anywhere
else it needs TLS (and mTLS with a client CA), unless --insecure-plaintext says otherwise.
The server runs grpc.aio in a thread of its own, beside the aggregator's loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import ipaddress
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from sensor.api.service import SensorService, add_sensor_service
from sensor.api.state import ApiState
from sensor.api.v1 import gpusentry_pb2 as pb
from sensor.errors import GpusentryError, RuntimeFailure, UsageError

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


class ApiServer:
    def __init__(self, state: ApiState, endpoint: Endpoint, max_subscribers: int = 64) -> None:
        endpoint.validate()
        self.state = state
        self.endpoint = endpoint
        self.max_subscribers = max_subscribers
        self.port = 0  # the TCP port bound (useful with port 0)
        self._thread: threading.Thread | None = None
        self._started = threading.Event()
        self._failure: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._grace = 1.0
        self._stopping = False

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="api", daemon=True)
        self._thread.start()
        self._started.wait(timeout=30)
        if self._failure is not None:
            raise self._failure
        if not self._started.is_set():
            raise RuntimeFailure("the API server did not start in 30 seconds")

    def failure(self) -> str | None:
        """Why the server stopped serving, if it stopped without being asked to."""
        if self._stopping or self._thread is None or self._thread.is_alive() or not self._started.is_set():
            return None
        return f"the API server stopped: {self._failure!r}" if self._failure else "the API server stopped"

    def stop(self, grace: float = 1.0) -> None:
        """Stop serving; in-flight calls get `grace` seconds (0 when the agent is failing)."""
        self._stopping = True
        self._grace = grace
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:
            self._failure = exc
            self._started.set()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self.state.broker.attach(self._loop)
        server = grpc.aio.server(options=[
            ("grpc.max_receive_message_length", MAX_REQUEST),
            ("grpc.max_send_message_length", MAX_RESPONSE),
        ])
        add_sensor_service(SensorService(self.state), server)
        checker = health.aio.HealthServicer() if hasattr(health, "aio") else health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(checker, server)
        reflection.enable_server_reflection(
            (SERVICE, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME), server)
        self._bind(server)
        await server.start()
        self._secure_socket()
        for name in ("", SERVICE):
            result = checker.set(name, health_pb2.HealthCheckResponse.SERVING)
            if asyncio.iscoroutine(result):
                await result
        self._started.set()
        await self._stop.wait()
        await server.stop(grace=self._grace)

    def _bind(self, server: grpc.aio.Server) -> None:
        endpoint = self.endpoint
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
        if endpoint.listen is not None:
            if endpoint.tls_cert is not None and endpoint.tls_key is not None:
                ca = _read(endpoint.tls_client_ca) if endpoint.tls_client_ca else None
                credentials = grpc.ssl_server_credentials([(_read(endpoint.tls_key), _read(endpoint.tls_cert))],
                                                          root_certificates=ca, require_client_auth=ca is not None)
                self.port = server.add_secure_port(endpoint.listen, credentials)
            else:
                self.port = server.add_insecure_port(endpoint.listen)
            if self.port == 0:
                raise GpusentryError(f"cannot listen on {endpoint.listen}", "is the port already in use?")

    def _secure_socket(self) -> None:
        socket = self.endpoint.socket
        if socket is None:
            return
        os.chmod(socket, 0o660)
        if self.endpoint.socket_group is not None:
            os.chown(socket, -1, grp.getgrnam(self.endpoint.socket_group).gr_gid)
