"""The client side: a channel to the agent's API, and the one place that builds a stub (the
generated gRPC module has no types)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc

from sensor.api.v1 import gpusentry_pb2_grpc as pb_grpc
from sensor.errors import UsageError


def sensor_stub(channel: grpc.Channel) -> Any:
    return pb_grpc.SensorStub(channel)  # type: ignore[no-untyped-call]


def client_channel(socket: str, connect: str | None = None, tls_ca: str | None = None,
                   tls_cert: str | None = None, tls_key: str | None = None) -> tuple[grpc.Channel, str]:
    """A channel to the agent: its UNIX socket, or TCP to `connect` (TLS with `tls_ca`, mTLS
    with a client certificate and key too), and how to name where it goes."""
    if connect is None:
        if not Path(socket).exists():
            raise UsageError(f"no agent API at {socket}", "start the agent (scripts/agent), or give --socket")
        return grpc.insecure_channel(f"unix:{socket}"), f"unix:{socket}"
    if (tls_cert is None) != (tls_key is None):
        raise UsageError("--tls-cert and --tls-key go together", "give both, or neither")
    if tls_ca is None:
        if tls_cert is not None:
            raise UsageError("a client certificate (--tls-cert) is for TLS", "give the agent's CA with --tls-ca")
        return grpc.insecure_channel(connect), connect
    credentials = grpc.ssl_channel_credentials(_read(tls_ca), _read(tls_key), _read(tls_cert))
    return grpc.secure_channel(connect, credentials), f"{connect} (TLS)"


def _read(path: str | None) -> bytes | None:
    if path is None:
        return None
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}", "check the --tls-* paths") from exc
