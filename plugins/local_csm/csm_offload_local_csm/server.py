"""The worker HTTP server (`csm-offload serve`): the CSM engine behind a small job API.

Routes (wire format v1; types in `csm_offload.worker_client`):
  POST   /v1/jobs            a `BatchRequest`; 202 with the `WorkerJob`, 429 when the queue is full
  GET    /v1/jobs/{id}       the `WorkerJob`; `?wait=S` holds the answer until it finishes
  DELETE /v1/jobs/{id}       cancels a queued or running job
  GET    /healthz            `WorkerHealth`

One job runs at a time (one GPU); the rest wait in a bounded queue. Finished jobs are kept for
`result_ttl_s` and then forgotten (a later poll answers 404, which clients treat as lost).

The server faces the internet, so nobody may hold it without the token (docs/worker-server.md,
"Limits and timeouts"): the port is bound before the model loads (`listener`); at most
`max_connections` are open, and when a new one needs room the connection that has waited
longest for its request is dropped; request headers must arrive within `header_timeout_s`, of
the connection or of their first byte on a kept-alive one (`connections`); the token is checked
on the headers, before a byte of the body is read, and a body must arrive within
`body_timeout_s` (`guard`). The settings and their checks are in `settings`; this module holds
the job queue, the routes and `serve`, which wires them all together.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import attrs
import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp

from csm_offload import JobState, wire
from csm_offload.errors import WireError
from csm_offload.wire import WireLimits
from csm_offload.worker_client import WorkerHealth, WorkerJob

from .connections import MAX_HEADER_BYTES, guarded_protocol
from .guard import HeaderGate, check_headers, json_error, read_body
from .listener import open_listener, raise_fd_limit
from .settings import (
    DEFAULT_BODY_TIMEOUT_S,
    DEFAULT_HEADER_TIMEOUT_S,
    DEFAULT_KEEP_ALIVE_S,
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_SERVER_LIMITS,
    ServerSettings,
    check_settings,
    is_loopback,
)
from .speed import SpeedMeter
from .worker import Engine, ParsedBatch, parse_batch, run_batch

# Re-exported: `command` and the tests import these from here.
__all__ = [
    "DEFAULT_BODY_TIMEOUT_S",
    "DEFAULT_HEADER_TIMEOUT_S",
    "DEFAULT_KEEP_ALIVE_S",
    "DEFAULT_MAX_CONNECTIONS",
    "DEFAULT_SERVER_LIMITS",
    "JobQueue",
    "ServerSettings",
    "check_settings",
    "create_app",
    "is_loopback",
    "make_server",
    "open_listener",
    "serve",
]

_ROUTES = "POST /v1/jobs, GET or DELETE /v1/jobs/{id}, GET /healthz"

log = logging.getLogger("uvicorn.error")


# --- jobs ---------------------------------------------------------------------------------


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


# --- the HTTP application -------------------------------------------------------------------


def _wire(obj: Any, status: int = 200) -> Response:
    return Response(wire.dumps(obj), status_code=status, media_type="application/json")


def _parse_body(body: bytes, limits: WireLimits) -> ParsedBatch:
    return parse_batch(wire.parse_json(body, limits), limits)


class _Routes:
    def __init__(self, queue: JobQueue, settings: ServerSettings) -> None:
        self.queue = queue
        self.settings = settings

    async def submit(self, request: Request) -> Response:
        limits = self.settings.limits
        refusal = check_headers(request, limits.max_body_bytes)
        if refusal is not None:
            return refusal
        body = await read_body(request, limits.max_body_bytes, self.settings.body_timeout_s)
        if isinstance(body, Response):
            return body
        try:
            # Parsing JSON and decoding context audio is CPU work: keep it off the event loop.
            batch = await asyncio.to_thread(_parse_body, body, self.settings.limits)
        except WireError as exc:
            return json_error(400, str(exc))
        job = self.queue.add(batch)
        if job is None:
            wait = str(self.queue.retry_after())
            return json_error(429, "queue is full; retry later", {"Retry-After": wait})
        return _wire(job.view(), 202)

    def find(self, request: Request) -> _Job | Response:
        self.queue.expire()
        job = self.queue.jobs.get(request.path_params["job_id"])
        if job is None:
            return json_error(404, "no such job (finished jobs are kept for result_ttl_s)")
        return job

    async def get(self, request: Request) -> Response:
        job = self.find(request)
        if isinstance(job, Response):
            return job
        wait = _wait_seconds(request.query_params.get("wait"), self.settings.max_wait_s)
        if wait is None:
            return json_error(400, "wait must be a number of seconds")
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


async def _http_error(request: Request, exc: Exception) -> Response:
    if not isinstance(exc, HTTPException):
        return await _internal_error(request, exc)
    if exc.status_code == 404:
        message = f"no route {request.method} {request.url.path}: the routes are {_ROUTES}"
    elif exc.status_code == 405:
        message = f"{request.method} is not allowed on {request.url.path}: the routes are {_ROUTES}"
    else:
        message = str(exc.detail)
    return json_error(exc.status_code, message, exc.headers)


async def _internal_error(_request: Request, exc: Exception) -> Response:
    # The traceback goes to the server's log (Starlette re-raises); the client gets a sentence.
    return json_error(
        500, f"internal error ({type(exc).__name__}); the server's log has the details"
    )


def create_app(engine_factory: Callable[[], Engine], settings: ServerSettings) -> ASGIApp:
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

    app = Starlette(
        routes=[
            Route("/v1/jobs", route("submit"), methods=["POST"]),
            Route("/v1/jobs/{job_id}", route("get"), methods=["GET"]),
            Route("/v1/jobs/{job_id}", route("delete"), methods=["DELETE"]),
            Route("/healthz", route("healthz"), methods=["GET"]),
        ],
        lifespan=lifespan,
        exception_handlers={HTTPException: _http_error, Exception: _internal_error},
    )
    return HeaderGate(app, settings.token)


# --- serving --------------------------------------------------------------------------------


def make_server(app: ASGIApp, settings: ServerSettings, log_level: str = "info") -> uvicorn.Server:
    """uvicorn, configured for a server that faces the internet; run it on `open_listener`."""
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        http=guarded_protocol(
            settings.max_connections, settings.header_timeout_s, settings.keep_alive_s
        ),
        ws="none",
        lifespan="on",
        log_level=log_level,
        # The guard closes idle keep-alive connections itself; uvicorn's timer is a backstop.
        timeout_keep_alive=math.ceil(settings.keep_alive_s) + 1,
        # A long poll may hold a connection this long; shutting down waits no longer.
        timeout_graceful_shutdown=5,
        h11_max_incomplete_event_size=MAX_HEADER_BYTES,
        server_header=False,
        proxy_headers=False,
    )
    return uvicorn.Server(config)


def serve(engine_factory: Callable[[], Engine], settings: ServerSettings) -> None:
    """Bind the port, load the engine, then serve in the foreground until interrupted.

    Both checks come before the weights: a busy port or a model that cannot load is one clear
    error (exit 2), not minutes of loading followed by a traceback.
    """
    check_settings(settings)
    raise_fd_limit(settings.max_connections)
    listener = open_listener(settings)
    try:
        engine = engine_factory()
        app = create_app(lambda: engine, settings)
        server = make_server(app, settings)
        host = f"[{settings.host}]" if ":" in settings.host else settings.host
        log.info("csm-offload worker on http://%s:%d (Press CTRL+C to quit)", host, settings.port)
        server.run(sockets=[listener])
    finally:
        listener.close()
