"""Binaries by name: the tools gpusentry identifies by what they are (sensor/probe/identity.py
decides that on the host, at exec time), and the name of an executable path."""

from __future__ import annotations

TOOLS = ("ssh", "autossh", "chisel", "frpc", "ngrok", "cloudflared", "socat", "ncat", "bore", "wstunnel", "gost",
         "rathole", "iodine", "ptunnel-ng", "dbclient", "dropbearmulti", "plink")


def basename(path: bytes | str) -> str:
    """The last component of the path, as pathlib's PurePosixPath(path).name gives it (empty and
    "." components do not count: "a/b/" and "a/b/." name "b"), without building a path object:
    this runs for every exec."""
    text = path.decode("utf-8", "replace") if isinstance(path, bytes) else path
    name = text.rpartition("/")[2]
    if name and name != ".":
        return name
    for part in reversed(text.split("/")):
        if part and part != ".":
            return part
    return ""
