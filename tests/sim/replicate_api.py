"""A simulated Replicate predictions API on 127.0.0.1, with a file host on another port.

API routes (Bearer token checked): `POST /v1/predictions` (`{"version", "input"}`),
`POST /v1/deployments/{owner}/{name}/predictions` (`{"input"}`), `GET /v1/predictions/{id}`,
`POST /v1/predictions/{id}/cancel`, `GET /v1/deployments/{owner}/{name}`,
`GET /v1/models/{owner}/{name}/versions/{id}` and `GET /v1/account`.

A prediction goes `starting` (waiting for an instance; the first one after a cold start waits
`cold_start_s` for setup) → `processing` (`run()`: `overhead_s + seconds_per_char` × characters)
→ `succeeded` | `failed` | `canceled` | `aborted`, with `metrics.predict_time`,
`created_at`/`started_at`/`completed_at`, `urls.get`/`urls.cancel`, and its input echoed on every
read, as Replicate's are. `Prefer: wait=N` (1 to 60; bare `wait` is 60) holds the create call
until the prediction is over or N seconds pass, then answers it as it stands: during a cold
start, still `starting`. `retention_s` after completion its output and files are removed
(`data_removed: true`), as an API prediction's are after an hour.

The output is the wire response as a file: on the file host (`output="file"`, a URL on another
loopback port, which must never see the token: the host records every request's headers) or
inline (`output="data"`, a `data:` URL). The file host also takes PUT uploads
(`/uploads/<name>`, answered 201 with a `Location`), as a real Cog server started with
`--upload-url` hands over its files. By default a tone generator makes the audio (real FLAC,
its length following the text); `backend=` replaces it with an async callable that is given
the prediction's input and returns an `Outcome` (tests/peers runs a real Cog server this way).

Faults: `inject(route, kind)` for the next requests to `create`, `get`, `cancel`, `health` or
`*`: "http" (a status; a 429 with `Retry-After` in seconds or HTTP-date form, or with none and
only the throttle message Replicate puts in its body), "reset", "malformed".
`inject_prediction(kind)` for the next predictions: "failed", "canceled" (by Replicate, while
running), "aborted" (its deadline passed before it started), "bad_output" (not a csm-offload
response), "file_gone" (its file answers 404), "data_removed".
`rate_limits=True` enforces the published limits (create 600 a minute, other routes 3000 a
minute; `rate_scale` scales counts and windows alike) with Replicate's 429 body and a
`Retry-After` in `retry_after_form` ("seconds", "http-date", "alternate", "none").

    with SimulatedReplicate(cold_start_s=0.5, output="file") as sim:
        sim.url, sim.token, sim.version, sim.deployment, sim.files_url
        sim.inject("create", "http", status=429, retry_after="3")
        sim.stats()["requests"]["create"], sim.file_requests()
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import email.utils
import functools
import json
import math
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import attrs
import numpy as np

from csm_offload import Audio, BatchRequest, WireError, wire

from .http_server import RESET, HttpServer, Request, Response

ROUTES = ("create", "get", "cancel", "health")
HTTP_FAULTS = ("http", "reset", "malformed")
PREDICTION_FAULTS = ("failed", "canceled", "aborted", "bad_output", "file_gone", "data_removed")
RETRY_AFTER_FORMS = ("seconds", "http-date", "alternate", "none")
SAMPLE_RATE = 24_000
VERSION_ID = "5c7d5dc6dd8bf75c1acaa8565735e7986bc5b66206b55cca93cb72c9bf15ccaa"
#: Replicate's published limits: (requests, window in seconds).
RATE_LIMITS = {"create": (600, 60.0), "other": (3000, 60.0)}


@attrs.frozen
class Outcome:
    """What a backend's run gave: `succeeded` with an output, or `failed` with an error."""

    status: str
    output: Any = None
    error: str | None = None
    predict_time: float | None = None


Backend = Callable[[dict[str, Any]], Awaitable[Outcome]]


@attrs.frozen
class Fault:
    route: str
    kind: str
    status: int = 503
    retry_after: str | None = None
    detail: str = "injected failure"


@attrs.define
class SimPrediction:
    id: str
    input: dict[str, Any]
    fault: str | None
    created: float
    status: str = "starting"
    started: float | None = None
    completed: float | None = None
    output: Any = None
    error: str | None = None
    predict_time: float | None = None
    data_removed: bool = False
    file: str | None = None
    done: asyncio.Event = attrs.field(factory=asyncio.Event)
    cancel: asyncio.Event = attrs.field(factory=asyncio.Event)


def iso(when: float | None) -> str | None:
    if when is None:
        return None
    return datetime.fromtimestamp(when, UTC).isoformat().replace("+00:00", "Z")


def _json(data: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    body = json.dumps(data, separators=(",", ":")).encode()
    return Response(status=status, body=body, headers=dict(headers or {}))


@functools.lru_cache(maxsize=256)
def _flac_tone(frames: int) -> bytes:
    t = np.arange(frames, dtype=np.float32) / SAMPLE_RATE
    return Audio(0.1 * np.sin(2 * np.pi * 220.0 * t), SAMPLE_RATE).encode("flac")


class FileHost:
    """Serves output files (`GET /files/<name>`) and takes uploads (`PUT /uploads/<name>`);
    records the method, path and headers of every request it gets."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.seen: list[dict[str, Any]] = []
        self.url = ""

    def put(self, name: str, data: bytes) -> str:
        self.files[name] = data
        return f"{self.url}/files/{name}"

    async def handle(self, request: Request) -> Response:
        self.seen.append({"method": request.method, "path": request.path, **request.headers})
        parts = [p for p in request.path.split("/") if p]
        if len(parts) == 2 and parts[0] == "files" and request.method == "GET":
            found = self.files.get(parts[1])
            if found is None:
                return _json({"detail": "Not found."}, 404)
            return Response(200, found, content_type="application/json")
        if len(parts) == 2 and parts[0] == "uploads" and request.method == "PUT":
            url = self.put(parts[1], request.body)
            return Response(201, b"", {"Location": url})
        return _json({"detail": "Not found."}, 404)


class ReplicateCloud:
    """The simulated API's state and behaviour; runs inside one asyncio loop."""

    def __init__(
        self,
        *,
        token: str = "r8_sim_token_5f2c9e",
        owner: str = "sim-owner",
        name: str = "csm",
        deployment: str = "csm-deploy",
        hardware: str = "gpu-l40s",
        workers: int = 2,
        cold_start_s: float = 0.0,
        seconds_per_char: float = 0.001,
        overhead_s: float = 0.0,
        audio_seconds_per_char: float = 0.06,
        output: str = "file",
        retention_s: float = 3600.0,
        backend: Backend | None = None,
        rate_limits: bool = False,
        rate_scale: float = 1.0,
        retry_after_form: str = "seconds",
    ) -> None:
        if output not in ("file", "data"):
            raise ValueError("output must be 'file' or 'data'")
        if retry_after_form not in RETRY_AFTER_FORMS:
            raise ValueError(f"retry_after_form must be one of {RETRY_AFTER_FORMS}")
        self.token, self.owner, self.name = token, owner, name
        self.deployment, self.hardware, self.workers = deployment, hardware, workers
        self.cold_start_s = cold_start_s
        self.seconds_per_char = seconds_per_char
        self.overhead_s = overhead_s
        self.audio_seconds_per_char = audio_seconds_per_char
        self.output = output
        self.retention_s = retention_s
        self.backend = backend
        self.rate_limits = rate_limits
        self.retry_after_form = retry_after_form
        self.limits = {
            key: (max(1, round(count * rate_scale)), window * rate_scale)
            for key, (count, window) in RATE_LIMITS.items()
        }
        self._windows: dict[str, collections.deque[float]] = {
            key: collections.deque() for key in RATE_LIMITS
        }
        self._forms = 0
        self.files = FileHost()
        self.url = ""
        self.lock = threading.Lock()
        self.faults: list[list[Any]] = []
        self.prediction_faults: collections.deque[str] = collections.deque()
        self.predictions: dict[str, SimPrediction] = {}
        self.warm = False
        self.requests: collections.Counter[str] = collections.Counter()
        self.statuses: collections.Counter[str] = collections.Counter()
        self.submissions: collections.Counter[str] = collections.Counter()
        self.prefer: list[str | None] = []
        self.billed_s = 0.0
        self._slots: asyncio.Semaphore | None = None
        self._boot: asyncio.Lock | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def version(self) -> str:
        return f"{self.owner}/{self.name}:{VERSION_ID}"

    async def start(self) -> None:
        self._slots = asyncio.Semaphore(self.workers)
        self._boot = asyncio.Lock()

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # --- control (any thread) ---------------------------------------------------------------

    def inject(self, fault: Fault, count: int) -> None:
        if fault.kind not in HTTP_FAULTS or fault.route not in (*ROUTES, "*"):
            raise ValueError(f"fault kinds are {HTTP_FAULTS}, routes {ROUTES} or '*'")
        with self.lock:
            self.faults.append([fault, count])

    def inject_prediction(self, kind: str, count: int) -> None:
        if kind not in PREDICTION_FAULTS:
            raise ValueError(f"unknown prediction fault {kind!r}; one of {PREDICTION_FAULTS}")
        with self.lock:
            self.prediction_faults.extend([kind] * count)

    def stats(self) -> dict[str, Any]:
        with self.lock:
            states = collections.Counter(p.status for p in self.predictions.values())
            return {
                "requests": dict(self.requests),
                "responses": dict(self.statuses),
                "submissions": dict(self.submissions),
                "predictions": dict(states),
                "prefer": list(self.prefer),
                "billed_s": self.billed_s,
            }

    # --- HTTP -------------------------------------------------------------------------------

    async def handle(self, request: Request) -> Response:
        parts = [p for p in request.path.split("/") if p]
        route = _route_of(request.method, parts)
        with self.lock:
            self.requests[route] += 1
        response = await self._answer(request, parts, route)
        with self.lock:
            self.statuses[f"{route} {response.status or 'reset'}"] += 1
        return response

    async def _answer(self, request: Request, parts: list[str], route: str) -> Response:
        fault = self._take_fault(route)
        if fault is not None:
            return self._faulted(fault)
        if request.headers.get("authorization") != f"Bearer {self.token}":
            detail = "You did not pass a valid authentication token"
            return _json({"title": "Unauthenticated", "detail": detail, "status": 401}, 401)
        if self.rate_limits and (limited := self._over_limit(route)) is not None:
            return limited
        if route == "create":
            return await self._create(request, parts)
        if route in ("get", "cancel"):
            return self._read(parts[2], cancel=route == "cancel")
        if route == "health":
            return self._health(parts)
        return _json({"detail": "Not found."}, 404)

    def _take_fault(self, route: str) -> Fault | None:
        with self.lock:
            for entry in self.faults:
                fault, remaining = entry
                if remaining > 0 and fault.route in ("*", route):
                    entry[1] -= 1
                    if entry[1] == 0:
                        self.faults.remove(entry)
                    return fault
        return None

    def _faulted(self, fault: Fault) -> Response:
        if fault.kind == "reset":
            return RESET
        if fault.kind == "malformed":
            return Response(200, b'{"id": "oops", "status": ')
        headers = {"Retry-After": fault.retry_after} if fault.retry_after is not None else {}
        return _json({"detail": fault.detail, "status": fault.status}, fault.status, headers)

    def _over_limit(self, route: str) -> Response | None:
        key = "create" if route == "create" else "other"
        count, window = self.limits[key]
        stamps, now = self._windows[key], time.monotonic()
        while stamps and stamps[0] <= now - window:
            stamps.popleft()
        if len(stamps) < count:
            stamps.append(now)
            return None
        wait_s = max(1, math.ceil(stamps[0] + window - now))
        detail = f"Request was throttled. Expected available in {wait_s} seconds."
        return _json({"detail": detail, "status": 429}, 429, self._retry_after(wait_s))

    def _retry_after(self, wait_s: int) -> dict[str, str]:
        form = self.retry_after_form
        if form == "alternate":
            form = ("seconds", "http-date")[self._forms % 2]
            self._forms += 1
        if form == "seconds":
            return {"Retry-After": str(wait_s)}
        if form == "http-date":
            return {"Retry-After": email.utils.formatdate(time.time() + wait_s, usegmt=True)}
        return {}

    # --- predictions ------------------------------------------------------------------------

    async def _create(self, request: Request, parts: list[str]) -> Response:
        try:
            body = json.loads(request.body)
        except ValueError:
            return _json({"detail": "the body is not JSON", "status": 400}, 400)
        problem = self._refused(body, parts)
        if problem is not None:
            return problem
        wait_s, bad = _prefer_wait(request.headers.get("prefer"))
        if bad:
            return _json({"detail": "Prefer: wait must be 1 to 60 seconds", "status": 400}, 400)
        with self.lock:
            self.prefer.append(request.headers.get("prefer"))
        prediction = self._new(body["input"])
        if wait_s:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(prediction.done.wait(), wait_s)
        return _json(self.view(prediction), 201)

    def _refused(self, body: Any, parts: list[str]) -> Response | None:
        if not isinstance(body, dict) or not isinstance(body.get("input"), dict):
            return _json({"detail": "input: expected an object", "status": 422}, 422)
        if parts[1] == "deployments":
            if parts[2:4] != [self.owner, self.deployment]:
                return _json({"detail": "Not found."}, 404)
        elif body.get("version") not in (VERSION_ID, self.version):
            return _json({"detail": "Invalid version or not permitted", "status": 422}, 422)
        batch = body["input"].get("batch")
        if not isinstance(batch, str):
            return _json({"detail": "input.batch: expected a string", "status": 422}, 422)
        return None

    def _new(self, data: dict[str, Any]) -> SimPrediction:
        with self.lock:
            fault = self.prediction_faults.popleft() if self.prediction_faults else None
            prediction = SimPrediction(_prediction_id(), data, fault, time.time())
            self.predictions[prediction.id] = prediction
            for request_id in _request_ids(data):
                self.submissions[request_id] += 1
        task = asyncio.ensure_future(self._lifecycle(prediction))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return prediction

    async def _lifecycle(self, p: SimPrediction) -> None:
        assert self._slots is not None and self._boot is not None
        if p.fault == "aborted":
            await asyncio.sleep(0.02)  # its deadline passes while it waits for an instance
            self._finish(p, "aborted")
            return
        async with self._slots:
            async with self._boot:
                if not self.warm and not p.cancel.is_set():
                    await _until(p.cancel, self.cold_start_s)
                    self.warm = True
            if p.cancel.is_set():
                self._finish(p, "canceled")
                return
            p.status, p.started = "processing", time.time()
            run = asyncio.ensure_future(self._run(p))
            stop = asyncio.ensure_future(p.cancel.wait())
            await asyncio.wait({run, stop}, return_when=asyncio.FIRST_COMPLETED)
            stop.cancel()
            if not run.done():
                run.cancel()
                self._finish(p, "canceled")
                return
            outcome = run.result()
        p.output, p.error, p.predict_time = outcome.output, outcome.error, outcome.predict_time
        self._finish(p, outcome.status)

    async def _run(self, p: SimPrediction) -> Outcome:
        if self.backend is not None:
            return await self.backend(p.input)
        batch = wire.loads(p.input["batch"], BatchRequest)
        chars = sum(len(r.text) for r in batch.requests)
        await asyncio.sleep(self.overhead_s + self.seconds_per_char * chars)
        if p.fault == "failed":
            return Outcome("failed", error="Traceback (most recent call last): RuntimeError: boom")
        if p.fault == "canceled":
            return Outcome("canceled")
        body = self._tone_response(batch) if p.fault != "bad_output" else b'{"not": "it"}'
        return Outcome("succeeded", self._output_of(p, body))

    def _tone_response(self, batch: BatchRequest) -> bytes:
        results = []
        for request in batch.requests:
            seconds = max(0.08, self.audio_seconds_per_char * len(request.text))
            frames = max(1, round(min(seconds, request.max_audio_length_ms / 1000) * SAMPLE_RATE))
            audio = {"format": "flac", "sample_rate": SAMPLE_RATE, "data": _flac_tone(frames)}
            duration_ms = round(1000 * frames / SAMPLE_RATE)
            results.append({"id": request.id, "audio": audio, "duration_ms": duration_ms})
        worker = {"gpu": "SIM", "model": "sim-tone", "engine_version": "sim-1"}
        response = {"schema": 1, "results": results, "worker": worker}
        return json.dumps(response, default=_b64).encode()

    def _output_of(self, p: SimPrediction, body: bytes) -> str:
        if self.output == "data":
            return "data:application/json;base64," + base64.b64encode(body).decode()
        p.file = f"{p.id}.json"
        url = self.files.put(p.file, body)
        if p.fault == "file_gone":
            del self.files.files[p.file]
        return url

    def _finish(self, p: SimPrediction, status: str) -> None:
        p.status, p.completed = status, time.time()
        if p.predict_time is None and p.started is not None:
            p.predict_time = p.completed - p.started
        with self.lock:
            self.billed_s += p.predict_time or 0.0
        if p.fault == "data_removed":
            self._remove_data(p)
        p.done.set()

    def _remove_data(self, p: SimPrediction) -> None:
        p.output, p.input, p.data_removed = None, {}, True
        if p.file is not None:
            self.files.files.pop(p.file, None)

    def _read(self, prediction_id: str, cancel: bool) -> Response:
        p = self.predictions.get(prediction_id)
        if p is None:
            return _json({"detail": "Not found."}, 404)
        if cancel and p.status in ("starting", "processing"):
            p.cancel.set()
        if p.completed is not None and time.time() - p.completed > self.retention_s:
            self._remove_data(p)
        return _json(self.view(p))

    def view(self, p: SimPrediction) -> dict[str, Any]:
        get = f"{self.url}/v1/predictions/{p.id}"
        found: dict[str, Any] = {
            "id": p.id,
            "model": f"{self.owner}/{self.name}",
            "version": VERSION_ID,
            "input": p.input,
            "logs": "",
            "output": p.output,
            "data_removed": p.data_removed,
            "error": p.error,
            "status": p.status,
            "created_at": iso(p.created),
            "started_at": iso(p.started),
            "completed_at": iso(p.completed),
            "urls": {"get": get, "cancel": f"{get}/cancel"},
        }
        if p.completed is not None:
            total = p.completed - p.created
            found["metrics"] = {"predict_time": p.predict_time, "total_time": total}
        return found

    def _health(self, parts: list[str]) -> Response:
        if parts[1] == "account":
            return _json({"type": "user", "username": self.owner, "name": "Sim Owner"})
        if parts[1] == "deployments" and parts[2:4] == [self.owner, self.deployment]:
            config = {"hardware": self.hardware, "min_instances": 0, "max_instances": 2}
            release = {"number": 1, "model": f"{self.owner}/{self.name}", "version": VERSION_ID}
            release["configuration"] = config
            return _json({"owner": self.owner, "name": self.deployment, "current_release": release})
        if (
            parts[1] == "models"
            and parts[2:4] == [self.owner, self.name]
            and parts[5] == VERSION_ID
        ):
            return _json(
                {"id": VERSION_ID, "created_at": iso(time.time()), "cog_version": "0.23.1"}
            )
        return _json({"detail": "Not found."}, 404)


def _route_of(method: str, parts: list[str]) -> str:
    match parts:
        case ["v1", "predictions"] | ["v1", "deployments", _, _, "predictions"] if method == "POST":
            return "create"
        case ["v1", "predictions", _] if method == "GET":
            return "get"
        case ["v1", "predictions", _, "cancel"] if method == "POST":
            return "cancel"
        case (
            ["v1", "deployments", _, _] | ["v1", "models", _, _, "versions", _] | ["v1", "account"]
        ) if method == "GET":
            return "health"
    return "other"


def _prefer_wait(value: str | None) -> tuple[float | None, bool]:
    """(seconds to wait or None, whether the header is malformed)."""
    if value is None or not value.strip().startswith("wait"):
        return None, False
    _, eq, seconds = value.strip().partition("=")
    if not eq:
        return 60.0, False
    if not seconds.isdigit() or not 1 <= int(seconds) <= 60:
        return None, True
    return float(seconds), False


async def _until(event: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), seconds)


def _prediction_id() -> str:
    return base64.b32encode(uuid.uuid4().bytes).decode().lower().rstrip("=")


def _request_ids(data: dict[str, Any]) -> list[str]:
    try:
        return [r.id for r in wire.loads(data["batch"], BatchRequest).requests]
    except (WireError, KeyError, TypeError):
        return []


def _b64(value: Any) -> str:
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    raise TypeError(f"cannot encode {type(value).__name__}")


class SimulatedReplicate:
    """The simulated API and file host served from a background thread; a context manager.
    Keyword arguments are those of `ReplicateCloud`."""

    def __init__(self, **options: Any) -> None:
        self.cloud = ReplicateCloud(**options)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._servers: list[HttpServer] = []
        self._ready = threading.Event()
        self._stopped: asyncio.Event | None = None
        self._error: BaseException | None = None

    @property
    def url(self) -> str:
        """The API's base URL (`base_url` of a replicate target)."""
        return self.cloud.url

    @property
    def files_url(self) -> str:
        return self.cloud.files.url

    @property
    def upload_url(self) -> str:
        """What a Cog server's `--upload-url` should be."""
        return f"{self.files_url}/uploads/"

    @property
    def token(self) -> str:
        return self.cloud.token

    @property
    def version(self) -> str:
        return self.cloud.version

    @property
    def deployment(self) -> str:
        return f"{self.cloud.owner}/{self.cloud.deployment}"

    def start(self, timeout_s: float = 10.0) -> SimulatedReplicate:
        self._thread = threading.Thread(target=self._main, name="sim-replicate", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout_s) or self._error is not None:
            raise RuntimeError(f"the simulated Replicate did not start: {self._error}")
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        if self._loop is not None and self._stopped is not None:
            self._loop.call_soon_threadsafe(self._stopped.set)
        if self._thread is not None:
            self._thread.join(timeout_s)

    def __enter__(self) -> SimulatedReplicate:
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
        await self.cloud.start()
        api, files = HttpServer(self.cloud.handle), HttpServer(self.cloud.files.handle)
        self._servers = [api, files]
        for server in self._servers:
            await server.start()
        self.cloud.url = f"http://127.0.0.1:{api.port}"
        self.cloud.files.url = f"http://127.0.0.1:{files.port}"
        self._ready.set()
        try:
            await self._stopped.wait()
        finally:
            for server in self._servers:
                await server.stop()
            await self.cloud.stop()

    # --- control ---

    def inject(
        self,
        route: str,
        kind: str,
        *,
        count: int = 1,
        status: int = 503,
        retry_after: str | None = None,
        detail: str = "injected failure",
    ) -> None:
        """Misbehave on the next `count` requests to `route` (see the module docstring)."""
        self.cloud.inject(Fault(route, kind, status, retry_after, detail), count)

    def inject_prediction(self, kind: str, count: int = 1) -> None:
        self.cloud.inject_prediction(kind, count)

    def go_cold(self) -> None:
        """The instance scales to zero: the next prediction waits `cold_start_s` again."""
        self.cloud.warm = False

    def stats(self) -> dict[str, Any]:
        return self.cloud.stats()

    def file_requests(self) -> list[dict[str, Any]]:
        """Every request the file host got: method, path and headers (lower-case names)."""
        return list(self.cloud.files.seen)
