"""Why a runtime's or the kubelet's API socket did not answer, in words (both gRPC clients)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import grpc


def socket_problem(api: str, socket_path: Path, absent: str) -> str | None:
    """What stops a connection before it is tried (`absent`: what a missing socket means), or None."""
    try:
        mode = os.stat(socket_path).st_mode
    except FileNotFoundError:
        return f"{api} at {socket_path}: no such socket ({absent})"
    except PermissionError:
        return f"{api} at {socket_path}: permission denied (the agent needs root to use it)"
    return None if stat.S_ISSOCK(mode) else f"{api} at {socket_path}: not a socket"


def rpc_problem(api: str, socket_path: Path, exc: grpc.RpcError, silent: str, down: str) -> str:
    """A failed call: gRPC's own words and the likely fix (`silent`: a deadline passed; `down`: else)."""
    code = exc.code() if isinstance(exc, grpc.Call) else None
    detail = exc.details() if isinstance(exc, grpc.Call) else str(exc)
    if "Permission denied" in (detail or ""):
        fix = "the agent needs root to use it"
    elif code == grpc.StatusCode.DEADLINE_EXCEEDED:
        fix = silent
    else:
        fix = down
    return f"{api} at {socket_path}: {detail} ({fix})"
