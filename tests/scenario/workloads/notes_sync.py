"""A reverse port forward written with paramiko, under a name that says nothing of tunnels: it
logs in to an outside sshd, asks it to listen on 127.0.0.1:REMOTE_PORT there, and relays each
connection made to that port to TARGET on this host. Prints "ready" once the forward is set up.

    python -m tests.scenario.workloads.notes_sync SERVER KEY REMOTE_PORT TARGET_HOST:TARGET_PORT
"""

from __future__ import annotations

import socket
import sys
import threading
from typing import Any

import paramiko

from tests.scenario.workloads.pipe import pipe_both


def main(server: str, key: str, remote_port: int, target: str) -> None:
    host, _, port = target.rpartition(":")
    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(paramiko.AutoAddPolicy())  # a throwaway test host
    client.connect(server, username="root", key_filename=key, look_for_keys=False, allow_agent=False)
    transport = client.get_transport()
    assert transport is not None

    def relay(channel: paramiko.Channel, *_: Any) -> None:
        local = socket.create_connection((host, int(port)))
        threading.Thread(target=pipe_both, args=(channel, local), daemon=True).start()

    transport.request_port_forward("127.0.0.1", remote_port, handler=relay)
    print("ready", flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4])
