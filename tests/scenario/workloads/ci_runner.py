"""A CI runner: it long-polls an outside job server on one lasting connection and, for each of
JOBS jobs, runs a test as a child process (ssh to this host's sshd, which talks to localhost)
and streams the child's output back over that connection. Prints "ready" when connected and
"done" after the last job. A negative: the local traffic is its children's, not its own.

    python -m tests.scenario.workloads.ci_runner SERVER:PORT JOBS SSH_OPTION...
"""

from __future__ import annotations

import socket
import subprocess
import sys


def main(server: str, jobs: int, ssh_options: list[str]) -> None:
    host, _, port = server.rpartition(":")
    poll = socket.create_connection((host, int(port)))
    answers = poll.makefile("rb")
    print("ready", flush=True)
    for _ in range(jobs):
        poll.sendall(b"poll\n")
        answers.readline()
        test = subprocess.run(["ssh", *ssh_options, "root@127.0.0.1", "echo test passed; head -c 3000 /dev/zero"],
                              capture_output=True, check=True)
        poll.sendall(test.stdout + b"\n")
        answers.readline()
    print("done", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3:])
