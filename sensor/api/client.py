"""The one place that builds a client stub (the generated gRPC module has no types)."""

from __future__ import annotations

from typing import Any

import grpc

from sensor.api.v1 import gpusentry_pb2_grpc as pb_grpc


def sensor_stub(channel: grpc.Channel) -> Any:
    return pb_grpc.SensorStub(channel)  # type: ignore[no-untyped-call]
