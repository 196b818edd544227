"""Network namespaces and real OpenSSH servers, made by each scenario and removed after: a thin
fixture over sensor.simulate.network (the machinery `gpusentry simulate` uses too)."""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from sensor.simulate.network import OUTSIDE_IP, SSH, SSHD, Host, Network
from sensor.simulate.network import network as make_network

__all__ = ["OUTSIDE_IP", "SSH", "Host", "Network", "network"]


@pytest.fixture
def network(root: None, tmp_path: Path) -> Iterator[Network]:
    assert shutil.which("ip") and os.path.exists(SSHD), "scenario tests need iproute2 and openssh-server"
    tag = secrets.token_hex(3)
    with make_network(tmp_path, f"gs-gpu-{tag}", f"gs-out-{tag}", (f"gsg{tag}", f"gso{tag}")) as net:
        yield net
