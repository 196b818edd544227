"""Every example in docs/api.md, run against a real agent.

Python examples run as written (with GPUSENTRY_SOCKET pointing at this test's agent). grpcurl
is not packaged for this machine's distribution (nor on PyPI), so each grpcurl line is read
the way grpcurl reads it (-d as the request in proto3 JSON, the method's full name) and the
same call is made over the same socket with the generated stubs: the request JSON, the
method name and the socket are what is tested, not grpcurl itself.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import json_format

from sensor.api.v1 import gpusentry_pb2 as pb
from tests.kernel.test_agent import MARKER_RULE, Agent, workdir
from tests.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]
API_DOC = ROOT / "docs" / "api.md"
DEFAULT_SOCKET = "/run/gpusentry/sensor.sock"
SERVICE = pb.DESCRIPTOR.services_by_name["Sensor"]


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", API_DOC.read_text(), flags=re.S)


@dataclass
class Grpcurl:
    """One grpcurl command line, as grpcurl reads it."""

    socket: str
    method: str
    request_json: str

    @classmethod
    def parse(cls, line: str) -> Grpcurl:
        words = shlex.split(line)
        assert words[0] == "grpcurl" and "-plaintext" in words and "-unix" in words, line
        request = words[words.index("-d") + 1] if "-d" in words else "{}"
        service, _, method = words[-1].rpartition("/")
        assert service == SERVICE.full_name, line
        return cls(socket=words[-2], method=method, request_json=request)

    def call(self, socket: str) -> list[Any]:
        method = SERVICE.methods_by_name[self.method]
        request_type = getattr(pb, method.input_type.name)
        response_type = getattr(pb, method.output_type.name)
        request = json_format.Parse(self.request_json, request_type())  # grpcurl's own parse of -d
        path = f"/{SERVICE.full_name}/{self.method}"
        with grpc.insecure_channel(f"unix:{socket}") as channel:
            if method.server_streaming:
                stream = channel.unary_stream(path, request_serializer=request_type.SerializeToString,
                                              response_deserializer=response_type.FromString)(request, timeout=10)
                return [next(stream)]  # the first message: a stream never ends by itself
            call = channel.unary_unary(path, request_serializer=request_type.SerializeToString,
                                       response_deserializer=response_type.FromString)
            return [call(request, timeout=10)]


@pytest.fixture(scope="module")
def documented_agent(root: None) -> Iterator[Agent]:
    """An agent with one alert (and so one incident) journaled."""
    rules = workdir() / "site.yaml"
    rules.write_text(MARKER_RULE.format(rule_id="docs-marker", marker="gs-docs-marker"))
    agent = Agent("--rules", str(rules), "--quiet")
    try:
        sock = agent.tmp / "api.sock"
        wait_until(sock.exists, what="the API socket")
        subprocess.run(["/bin/true", "gs-docs-marker"], check=True)
        stub_call = Grpcurl(str(sock), "ListIncidents", "{}")
        wait_until(lambda: stub_call.call(str(sock))[0].incidents, what="the incident")
        yield agent
    finally:
        if agent.proc.poll() is None:
            agent.stop()
        agent.kill()


def test_the_doc_has_examples_of_each_kind() -> None:
    methods = {Grpcurl.parse(b.strip()).method for b in blocks("sh")}
    assert methods == {"GetStatus", "ListIncidents", "ListAlerts", "Subscribe", "GetProcess"}
    assert len(blocks("python")) == 3


@pytest.mark.parametrize("line", [b.strip() for b in blocks("sh")])
def test_grpcurl_examples(documented_agent: Agent, line: str) -> None:
    command = Grpcurl.parse(line)
    assert command.socket == DEFAULT_SOCKET
    (response,) = command.call(str(documented_agent.tmp / "api.sock"))
    match command.method:
        case "GetStatus":
            assert response.host.hostname == os.uname().nodename and response.incidents >= 1
        case "ListIncidents":
            assert response.incidents == []  # the only incident is a low one; the example asks for high+
        case "ListAlerts":
            assert list(response.alerts) == []  # no such alert on this host
        case "Subscribe":
            assert response.WhichOneof("item") == "subscribed"
        case "GetProcess":
            assert response.process.pid == 1


@pytest.mark.parametrize("number", range(3))
def test_python_examples(documented_agent: Agent, number: int, tmp_path: Path) -> None:
    script = tmp_path / f"example{number}.py"
    script.write_text(blocks("python")[number])
    env = {**os.environ, "GPUSENTRY_SOCKET": str(documented_agent.tmp / "api.sock")}
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, cwd=ROOT, env=env,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    if number == 0:
        assert lines[0].startswith(f"{os.uname().nodename}: up ") and lines[0].endswith(" 1 incidents, 1 alerts")
    elif number == 1:
        import json

        records = [json.loads(line) for line in lines]
        assert [(r["type"], r["incident"]["rule_ids"]) for r in records] == [("incident", ["docs-marker"])]
    else:  # the journal replayed: the alert, then the incident it opened
        incident_id = lines[1].split()[1].rstrip(":")
        assert lines == [f"alert docs-marker (incident {incident_id})", lines[1]]
        assert lines[1].startswith(f"incident {incident_id}: ")
