"""The worker HTTP server (`csm-offload serve`): the CSM engine behind a small job API.

Routes (wire format v1; types in `csm_offload.worker_client`):
  POST   /v1/jobs            a `BatchRequest`; 202 with the `WorkerJob`, 429 when the queue is full
  GET    /v1/jobs/{id}       the `WorkerJob`; `?wait=S` holds the answer until it finishes
  DELETE /v1/jobs/{id}       cancels a queued or running job
  GET    /healthz            `WorkerHealth`

One job runs at a time (one GPU); the rest wait in a bounded queue. Finished jobs are kept for
`result_ttl_s` and then forgotten (a later poll answers 404, which clients treat as lost).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import math
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import attrs
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from csm_offload import JobState, UserError, wire
from csm_offload.errors import WireError
from csm_offload.secret import Secret
from csm_offload.wire import WireLimits
from csm_offload.worker_client import WorkerHealth, WorkerJob

from .speed import SpeedMeter
from .worker import Engine, ParsedBatch, parse_batch, run_batch

#: Server defaults: a text limit a little above what a long paragraph needs.
DEFAULT_SERVER_LIMITS = WireLimits(
    max_body_bytes=32 * 1024 * 1024, max_requests=16, max_text_chars=2_000
)


@attrs.frozen
class ServerSettings:
    host: str = "127.0.0.1"
    port: int = 8000
    token: Secret | None = None
    max_queue: int = 8
    result_ttl_s: float = 600.0
    max_wait_s: float = 60.0
    limits: WireLimits = DEFAULT_SERVER_LIMITS


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_settings(settings: ServerSettings) -> None:
    """Refuse to serve without a token anywhere but loopback: the GPU would be open to all."""
    if not settings.token and not is_loopback(settings.host):
        raise UserError(
            f"binding {settings.host} needs a token: set CSM_OFFLOAD_WORKER_TOKEN "
            "(or --token) to a long random string, or bind 127.0.0.1"
        )
    if settings.max_queue < 1:
        raise UserError("max_queue must be 1 or more")


@attrs.define
class _Job:
    id: str
    batch: ParsedBatch
    created: float = attrs.field(factory=time.monotonic)
    state: JobState = JobState.QUEUED
    started: float | None = None
    finished: float | None = None
    response: Any = None
    error: str | None = None
    done: asyncio.Event = attrs.field(factory=asyncio.Event)
    cancel: threading.Event = attrs.field(factory=threading.Event)

    def view(self) -> WorkerJob:
        queue_end = self.started or self.finished or time.monotonic()
        queue_ms = round((queue_end - self.created) * 1000)
        exec_ms = None
        if self.started is not None:
            exec_ms = round(((self.finished or time.monotonic()) - self.started) * 1000)
        return WorkerJob(self.id, self.state, self.response, self.error, queue_ms, exec_ms)

    def finish(self, state: JobState, response: Any = None, error: str | None = None) -> None:
        self.state, self.response, self.error = state, response, error
        self.finished = time.monotonic()
        self.done.set()


class JobQueue:
    """Accepted jobs, the queue of those waiting, and the one consumer that runs them."""

    def __init__(self, engine: Engine, settings: ServerSettings, meter: SpeedMeter) -> None:
        self.engine = engine
        self.settings = settings
        self.meter = meter
        self.jobs: dict[str, _Job] = {}
        self.waiting: asyncio.Queue[_Job] = asyncio.Queue()
        self.running: _Job | None = None

    @property
    def queued(self) -> int:
        return sum(1 for job in self.jobs.values() if job.state is JobState.QUEUED)

    def retry_after(self) -> int:
        """When a queue slot frees: the running job's text at this machine's measured speed."""
        rate = self.meter.seconds_per_char or 0.0
        chars = self.running.batch.text_chars if self.running is not None else 0
        return max(1, math.ceil(rate * chars))

    def add(self, batch: ParsedBatch) -> _Job | None:
        self.expire()
        if self.queued >= self.settings.max_queue:
            return None
        job = _Job(uuid.uuid4().hex, batch)
        self.jobs[job.id] = job
        self.waiting.put_nowait(job)
        return job

    def cancel(self, job: _Job) -> None:
        if job.state is JobState.QUEUED:
            job.finish(JobState.CANCELLED, error="cancelled before it started")
        elif job.state is JobState.RUNNING:
            job.cancel.set()  # the engine stops at the next frame

    def expire(self) -> None:
        now = time.monotonic()
        ttl = self.settings.result_ttl_s
        old = [j.id for j in self.jobs.values() if j.finished and now - j.finished > ttl]
        for job_id in old:
            del self.jobs[job_id]

    async def consume(self) -> None:
        while True:
            job = await self.waiting.get()
            if job.state is not JobState.QUEUED:
                continue
            await self._run(job)

    async def _run(self, job: _Job) -> None:
        job.state, job.started, self.running = JobState.RUNNING, time.monotonic(), job
        try:
            response = await asyncio.to_thread(run_batch, self.engine, job.batch, job.cancel)
        except Exception as exc:  # the engine broke: fail this job, keep serving
            job.finish(JobState.FAILED, error=f"engine failed: {type(exc).__name__}: {exc}")
        else:
            if job.cancel.is_set():
                job.finish(JobState.CANCELLED, error="cancelled while running")
            else:
                self.meter.record(job.batch.text_chars, time.monotonic() - job.started)
                job.finish(JobState.COMPLETED, response)
        finally:
            self.running = None


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _wire(obj: Any, status: int = 200) -> Response:
    return Response(wire.dumps(obj), status_code=status, media_type="application/json")


class _Routes:
    def __init__(self, queue: JobQueue, settings: ServerSettings) -> None:
        self.queue = queue
        self.settings = settings

    def authorised(self, request: Request) -> bool:
        if not self.settings.token:
            return True
        given = request.headers.get("authorization", "")
        expected = f"Bearer {self.settings.token.reveal()}"
        return hmac.compare_digest(given.encode(), expected.encode())

    async def read_body(self, request: Request) -> bytes | Response:
        limit = self.settings.limits.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            return _error(413, f"body is over the limit of {limit} bytes (max_body_bytes)")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                return _error(413, f"body is over the limit of {limit} bytes (max_body_bytes)")
        return bytes(body)

    async def submit(self, request: Request) -> Response:
        if not self.authorised(request):
            return _error(401, "missing or wrong bearer token")
        body = await self.read_body(request)
        if isinstance(body, Response):
            return body
        try:
            data = wire.parse_json(body, self.settings.limits)
            # Decoding context audio is CPU work: keep it off the event loop.
            batch = await asyncio.to_thread(parse_batch, data, self.settings.limits)
        except WireError as exc:
            return _error(400, str(exc))
        job = self.queue.add(batch)
        if job is None:
            wait = str(self.queue.retry_after())
            return _error(429, "queue is full; retry later", {"Retry-After": wait})
        return _wire(job.view(), 202)

    def find(self, request: Request) -> _Job | Response:
        if not self.authorised(request):
            return _error(401, "missing or wrong bearer token")
        self.queue.expire()
        job = self.queue.jobs.get(request.path_params["job_id"])
        if job is None:
            return _error(404, "no such job (finished jobs are kept for result_ttl_s)")
        return job

    async def get(self, request: Request) -> Response:
        job = self.find(request)
        if isinstance(job, Response):
            return job
        wait = _wait_seconds(request.query_params.get("wait"), self.settings.max_wait_s)
        if wait is None:
            return _error(400, "wait must be a number of seconds")
        if wait > 0 and not job.state.finished:
            # Not finished in time: answer with the current state.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(job.done.wait(), wait)
        return _wire(job.view())

    async def delete(self, request: Request) -> Response:
        job = self.find(request)
        if isinstance(job, Response):
            return job
        self.queue.cancel(job)
        return _wire(job.view())

    async def healthz(self, request: Request) -> Response:
        if not self.authorised(request):
            return _error(401, "missing or wrong bearer token")
        health = WorkerHealth(
            ok=True,
            detail="engine loaded",
            queued=self.queue.queued,
            running=int(self.queue.running is not None),
            max_queue=self.settings.max_queue,
            worker=self.queue.engine.info(),
            seconds_per_char=self.queue.meter.seconds_per_char,
        )
        return _wire(health)


def _wait_seconds(raw: str | None, cap: float) -> float | None:
    if raw is None:
        return 0.0
    try:
        value = float(raw)
    except ValueError:
        return None
    if not math.isfinite(value) or value < 0:
        return None
    return min(value, cap)


def create_app(engine_factory: Callable[[], Engine], settings: ServerSettings) -> Starlette:
    """The app. The engine is built at startup (off the event loop), once."""
    check_settings(settings)
    state: dict[str, Any] = {}

    @asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        engine = await asyncio.to_thread(engine_factory)
        queue = JobQueue(engine, settings, SpeedMeter())
        state["routes"] = _Routes(queue, settings)
        consumer = asyncio.create_task(queue.consume())
        try:
            yield
        finally:
            consumer.cancel()
            if queue.running is not None:  # stop the GPU at its next frame, not at the end
                queue.running.cancel.set()

    def route(name: str) -> Callable[[Request], Any]:
        async def endpoint(request: Request) -> Response:
            return await getattr(state["routes"], name)(request)

        return endpoint

    return Starlette(
        routes=[
            Route("/v1/jobs", route("submit"), methods=["POST"]),
            Route("/v1/jobs/{job_id}", route("get"), methods=["GET"]),
            Route("/v1/jobs/{job_id}", route("delete"), methods=["DELETE"]),
            Route("/healthz", route("healthz"), methods=["GET"]),
        ],
        lifespan=lifespan,
    )


def serve(engine_factory: Callable[[], Engine], settings: ServerSettings) -> None:
    """Load the engine, then run the server in the foreground until interrupted.

    Loading first means a model that cannot load is one clear error, not a startup traceback.
    """
    import uvicorn

    check_settings(settings)
    engine = engine_factory()
    app = create_app(lambda: engine, settings)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level="info")
