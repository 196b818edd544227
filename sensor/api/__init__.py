"""The gRPC API: generated messages and service (v1/), conversion, broker, server."""
