"""The API's two servers, and their threads.

The public endpoint (sensor/api/endpoint.py) is served by the API's stream process
(sensor/api/stream.py), which this starts: subscribers never cost the aggregator's interpreter
more than the hand-over (sensor/api/handover.py). The unary methods read the aggregator's
state: the stream process forwards them to a gRPC server here, grpc.aio in a thread of its own
beside the aggregator's loop, on a UNIX socket in a directory only this user may enter.
"""

from __future__ import annotations

import asyncio
import contextlib
import select
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

import grpc

from sensor.api import wire
from sensor.api.endpoint import DEFAULT_SOCKET, MAX_REQUEST, MAX_RESPONSE, Endpoint, answers, arguments, socket_in_use
from sensor.api.service import SensorService, add_sensor_service
from sensor.api.state import ApiState
from sensor.errors import GpusentryError, RuntimeFailure

# the endpoint's names, where the agent and the configuration have always found them
__all__ = ["DEFAULT_SOCKET", "MAX_REQUEST", "ApiServer", "Endpoint", "answers", "socket_in_use"]
START_TIMEOUT_S = 30


class ApiServer:
    def __init__(self, state: ApiState, endpoint: Endpoint, max_subscribers: int = 64) -> None:
        endpoint.validate()
        self.state = state
        self.endpoint = endpoint
        self.max_subscribers = max_subscribers
        self.port = 0  # the TCP port bound (useful with port 0)
        self.stream: subprocess.Popen[bytes] | None = None  # the API's stream process
        self._private = Path(tempfile.mkdtemp(prefix="gpusentry-api-"))  # 0700: this user's only
        self._thread: threading.Thread | None = None
        self._started = threading.Event()
        self._failure: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._grace = 1.0
        self._stopping = False
        self._attached = False

    @property
    def upstream(self) -> Path:
        return self._private / "upstream.sock"

    def start(self) -> None:
        try:
            self._start_upstream()
            self._start_stream()
        except BaseException:
            self.stop(0)
            raise

    def _start_upstream(self) -> None:
        self._thread = threading.Thread(target=self._run, name="api", daemon=True)
        self._thread.start()
        self._started.wait(timeout=START_TIMEOUT_S)
        if self._failure is not None:
            raise self._failure
        if not self._started.is_set():
            raise RuntimeFailure(f"the API server did not start in {START_TIMEOUT_S} seconds")

    def _start_stream(self) -> None:
        broker = self.state.broker
        command = [sys.executable, "-m", "sensor.api.stream", "--journal", str(self.state.journal.path.absolute()),
                   "--upstream", str(self.upstream), "--capacity", str(broker.capacity),
                   "--max-subscribers", str(self.max_subscribers), *arguments(self.endpoint)]
        # a session of its own: a Ctrl-C on the agent's terminal is the probe's to act on
        self.stream = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, start_new_session=True)
        assert self.stream.stdin is not None and self.stream.stdout is not None
        self.stream.stdin.write(broker.init_frame(self._rule_ids()))
        self.stream.stdin.flush()
        kind, body = self._first_word(self.stream.stdout)
        if kind == wire.FAILED:
            raise GpusentryError(body["problem"], body["fix"])
        self.port = int(body["port"])
        broker.attach(self.stream.stdin)
        self._attached = True
        threading.Thread(target=self._statuses, args=(self.stream.stdout,), name="api status", daemon=True).start()

    def _first_word(self, out: Any) -> tuple[int, Any]:
        ready, _, _ = select.select([out], [], [], START_TIMEOUT_S)
        got = wire.read_frame(out) if ready else None
        if got is None or got[0] not in (wire.READY, wire.FAILED):
            raise RuntimeFailure(f"the API's stream process did not start: {self._stream_state()}",
                                 "see its message above")
        return got

    def _statuses(self, out: Any) -> None:
        while (got := wire.read_frame(out)) is not None:
            if got[0] == wire.STATUS:
                self.state.broker.status(got[1])

    def _rule_ids(self) -> list[str]:
        detector = self.state.aggregator.detector
        return [r.id for r in detector.engine.ruleset.rules] if detector is not None else []

    def _stream_state(self) -> str:
        stream = self.stream
        if stream is None:
            return "not started"
        if stream.poll() is None:
            return f"pid {stream.pid} still running"
        code = stream.returncode
        return f"pid {stream.pid}, " + (f"killed by signal {-code}" if code < 0 else f"exit status {code}")

    def failure(self) -> str | None:
        """Why the API stopped serving, if it stopped without being asked to."""
        if self._stopping or not self._started.is_set():
            return None
        if self.stream is not None and self.stream.poll() is not None:
            return f"the API's stream process stopped ({self._stream_state()})"
        if self._thread is not None and not self._thread.is_alive():
            return f"the API server stopped: {self._failure!r}" if self._failure else "the API server stopped"
        return None

    def stop(self, grace: float = 1.0) -> None:
        """Stop serving; in-flight calls get `grace` seconds (0 when the agent is failing)."""
        self._stopping = True
        self._grace = grace
        if self._attached:  # a server that failed to start never fed the handover (another may)
            self.state.broker.detach(grace)
        if self.stream is not None:
            self._stop_stream(self.stream, grace)
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(timeout=10)
        shutil.rmtree(self._private, ignore_errors=True)

    def _stop_stream(self, stream: subprocess.Popen[bytes], grace: float) -> None:
        """Its stdin ends (after STOP): it stops serving, with the same grace."""
        if stream.stdin is not None:
            with contextlib.suppress(OSError):
                stream.stdin.close()
        try:
            stream.wait(timeout=grace + 0.5)
        except subprocess.TimeoutExpired:
            stream.kill()
            stream.wait()
        if stream.stdout is not None:
            stream.stdout.close()

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:
            self._failure = exc
            self._started.set()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        server = grpc.aio.server(options=[
            ("grpc.max_receive_message_length", MAX_REQUEST),
            ("grpc.max_send_message_length", MAX_RESPONSE),
        ])
        add_sensor_service(SensorService(self.state), server)
        server.add_insecure_port(f"unix:{self.upstream}")
        await server.start()
        self._started.set()
        await self._stop.wait()
        await server.stop(grace=self._grace)
