"""What a binary is, by its identity rather than its name (THREAT-MODEL.md: names are the
adversary's). The tools gpusentry cares about are found on this host at start; an exec whose
file is one of them (same device and inode: a hard link, a symlink, a renamed path) is that
tool. A copy elsewhere has a new inode: when its size equals a known tool's, its content is
hashed once and compared. Verdicts are cached per (device, inode).
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

TOOLS = ("ssh", "autossh", "chisel", "frpc", "ngrok", "cloudflared", "socat", "ncat", "bore")
MAX_HASHED = 256 * 1024 * 1024


def _sha256(path: str) -> str | None:
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as binary:
            while chunk := binary.read(1 << 20):
                digest.update(chunk)
    except OSError:
        return None
    return digest.hexdigest()


class BinaryIdentity:
    def __init__(self, tools: tuple[str, ...] = TOOLS, search_path: str | None = None) -> None:
        self._by_inode: dict[tuple[int, int], str] = {}  # (dev, ino) -> tool, or "" for not a tool
        self._by_size: dict[int, list[tuple[str, str]]] = {}  # size -> [(tool, path)]
        self._hashes: dict[str, str] = {}  # path of a known tool -> sha256
        self.hashed = 0
        for tool in tools:
            found = shutil.which(tool, path=search_path)
            if found is None:
                continue
            st = os.stat(found)
            self._by_inode[(st.st_dev, st.st_ino)] = tool
            self._by_size.setdefault(st.st_size, []).append((tool, os.path.realpath(found)))

    def known(self) -> dict[tuple[int, int], str]:
        return {k: v for k, v in self._by_inode.items() if v}

    def identify(self, dev: int, ino: int, pid: int = 0) -> str:
        """The tool this executable is, or ""; `pid` lets a copy be read through /proc."""
        if not dev and not ino:
            return ""
        cached = self._by_inode.get((dev, ino))
        if cached is not None:
            return cached
        verdict = self._by_content(pid) if pid else ""
        self._by_inode[(dev, ino)] = verdict
        return verdict

    def _by_content(self, pid: int) -> str:
        exe = f"/proc/{pid}/exe"
        try:
            size = os.stat(exe).st_size
        except OSError:
            return ""
        candidates = self._by_size.get(size)
        if not candidates or size > MAX_HASHED:
            return ""
        digest = _sha256(exe)
        self.hashed += 1
        for tool, path in candidates:
            if path not in self._hashes:
                self._hashes[path] = _sha256(path) or ""
            if digest and digest == self._hashes[path]:
                return tool
        return ""


def basename(path: bytes | str) -> str:
    text = path.decode("utf-8", "replace") if isinstance(path, bytes) else path
    return Path(text).name
