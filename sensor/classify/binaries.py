"""Binaries by name: the tools gpusentry identifies by what they are (sensor/probe/identity.py
decides that on the host, at exec time), and the name of an executable path."""

from __future__ import annotations

from pathlib import Path

TOOLS = ("ssh", "autossh", "chisel", "frpc", "ngrok", "cloudflared", "socat", "ncat", "bore")


def basename(path: bytes | str) -> str:
    text = path.decode("utf-8", "replace") if isinstance(path, bytes) else path
    return Path(text).name
