"""A simulated Thunder Compute REST API on 127.0.0.1: `GET /v1/instances/list`.

It answers in the documented shape (Thunder's OpenAPI `thundertypes.InstanceListResponse` and
the `tnr` CLI's `pkg/types.InstanceListItem`): a JSON object keyed by instance id ("0", "1",
...), each value an object with `uuid`, `status` (upper case), `ip`, `httpPorts` (left out when
no port is forwarded), `gpuType`, `name`, `cpuCores`, `numGpus` and `memory` (strings, as the
real API sends them), `mode`, `createdAt`, `port`. Requests need `Authorization: Bearer
<token>`; without it the answer is 401 with Thunder's error body (`code`, `error`, `message`).
Other routes answer 404.

Tests set the instances (`put`, `remove`), make the next answers fail (`fail`), and read
`seen` (method, path and Authorization header of every request) to check which token went
where:

    with SimulatedThunderApi() as api:
        api.put("0", status="RUNNING", uuid="abc123", http_ports=(8000,))
        api.url, api.token          # http://127.0.0.1:PORT/v1, "sim-thunder-api-token-..."
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Sequence
from typing import Any

import attrs

from tests.sim.http_server import HttpServer, Request, Response

DEFAULT_TOKEN = "sim-thunder-api-token-7d1e0"


@attrs.frozen
class Seen:
    method: str
    path: str
    authorization: str


@attrs.frozen
class _Fault:
    status: int
    retry_after: str | None


def instance_json(
    index: str, status: str, uuid: str, http_ports: Sequence[int], gpu_type: str
) -> dict[str, Any]:
    item: dict[str, Any] = {
        "ip": "203.0.113.7",
        "name": f"instance-{index}",
        "status": status,
        "createdAt": "2026-06-01T12:00:00Z",
        "uuid": uuid,
        "storage": 100,
        "cpuCores": "8",
        "template": "base",
        "gpuType": gpu_type,
        "numGpus": "1",
        "memory": "64",
        "promoted": False,
        "mode": "prototyping",
        "port": 32022,
        "k8s": False,
    }
    if http_ports:  # `omitempty` in Thunder's types: no forwarded port, no field
        item["httpPorts"] = list(http_ports)
    return item


class SimulatedThunderApi:
    """The simulated API served from a background thread; a context manager."""

    def __init__(self, token: str = DEFAULT_TOKEN, port: int = 0) -> None:
        self.token = token
        self._port = port
        self._lock = threading.Lock()
        self._instances: dict[str, dict[str, Any]] = {}
        self._faults: list[_Fault] = []
        self.seen: list[Seen] = []
        self._server: HttpServer | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopped: asyncio.Event | None = None
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    @property
    def url(self) -> str:
        """What a target's `api_url` should be."""
        assert self._server is not None, "not started"
        return f"http://127.0.0.1:{self._server.port}/v1"

    # --- the account's instances ---

    def put(
        self,
        index: str,
        *,
        status: str = "RUNNING",
        uuid: str = "0a1b2c3d",
        http_ports: Sequence[int] = (8000,),
        gpu_type: str = "A100XL",
    ) -> None:
        with self._lock:
            self._instances[index] = instance_json(index, status, uuid, http_ports, gpu_type)

    def remove(self, index: str) -> None:
        with self._lock:
            self._instances.pop(index, None)

    def fail(self, status: int, count: int = 1, retry_after: str | None = None) -> None:
        """Answer the next `count` requests with `status` (an error body), whatever they ask."""
        with self._lock:
            self._faults += [_Fault(status, retry_after)] * count

    # --- serving ---

    async def handle(self, request: Request) -> Response:
        authorization = request.headers.get("authorization", "")
        with self._lock:
            self.seen.append(Seen(request.method, request.path, authorization))
            fault = self._faults.pop(0) if self._faults else None
            listing = json.dumps(self._instances).encode()
        if fault is not None:
            headers = {"Retry-After": fault.retry_after} if fault.retry_after else {}
            return _error(fault.status, "injected", "an injected fault", headers)
        if authorization != f"Bearer {self.token}":
            return _error(401, "unauthorized", "authentication failed: invalid token")
        if (request.method, request.path) != ("GET", "/v1/instances/list"):
            return _error(404, "not_found", f"no route {request.method} {request.path}")
        return Response(200, listing)

    def start(self, timeout_s: float = 10.0) -> SimulatedThunderApi:
        self._thread = threading.Thread(target=self._main, name="sim-thunder", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout_s):
            raise RuntimeError("the simulated Thunder API did not start in time")
        if self._error is not None:
            raise RuntimeError(f"the simulated Thunder API failed to start: {self._error}")
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        if self._loop is not None and self._stopped is not None:
            self._loop.call_soon_threadsafe(self._stopped.set)
        if self._thread is not None:
            self._thread.join(timeout_s)

    def __enter__(self) -> SimulatedThunderApi:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def _main(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # reported to start(), never lost
            self._error = exc
            self._ready.set()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopped = asyncio.Event()
        self._server = HttpServer(self.handle, self._port)
        await self._server.start()
        self._ready.set()
        try:
            await self._stopped.wait()
        finally:
            await self._server.stop()


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Response:
    body = json.dumps({"code": status, "error": code, "message": message}).encode()
    return Response(status, body, headers or {})
