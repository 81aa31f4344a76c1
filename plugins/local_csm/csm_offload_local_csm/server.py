"""The worker HTTP server (`csm-offload serve`): the CSM engine behind a small job API.

Routes (wire format v1; types in `csm_offload.worker_client`):
  POST   /v1/jobs            a `BatchRequest`; 202 with the `WorkerJob`, 429 when the queue is full
  GET    /v1/jobs/{id}       the `WorkerJob`; `?wait=S` holds the answer until it finishes
  DELETE /v1/jobs/{id}       cancels a queued or running job
  GET    /healthz            `WorkerHealth`

One job runs at a time (one GPU); the rest wait in a bounded queue. Finished jobs are kept for
`result_ttl_s` and then forgotten (a later poll answers 404, which clients treat as lost).

The server faces the internet, so nobody may hold it without the token (docs/worker-server.md,
"Limits and timeouts"): the port is bound before the model loads; at most `max_connections`
are open, and when a new one needs room the connection that has waited longest for its request
is dropped; request headers must arrive within `header_timeout_s` (of the connection, or of
their first byte on a kept-alive one) and a body within `body_timeout_s`; the token is checked
on the headers, before a byte of the body is read.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hmac
import ipaddress
import json
import logging
import math
import os
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from http import HTTPStatus
from typing import Any, ClassVar, cast

import attrs
import h11
import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

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
#: Open connections, each a file descriptor: far above what the job queue can use, far below
#: the usual descriptor limits.
DEFAULT_MAX_CONNECTIONS = 256
#: A request line and headers are a few hundred bytes: any client sends them in well under this.
DEFAULT_HEADER_TIMEOUT_S = 5.0
#: Longer than clients keep idle connections (httpx: 5 s), so that a client never sends a
#: request on a connection the server is closing at that moment.
DEFAULT_KEEP_ALIVE_S = 15.0
#: The body's base allowance; `BODY_SECONDS_PER_BYTE` adds time for large bodies.
DEFAULT_BODY_TIMEOUT_S = 10.0
#: Four seconds per MiB: a body may arrive as slowly as 256 KiB/s and no slower.
BODY_SECONDS_PER_BYTE = 4.0 / 2**20
#: The request line plus headers (h11's own default, named so the docs and errors can say it).
MAX_HEADER_BYTES = 16 * 1024
#: How long a connection answered early stays open to swallow what its client is still sending.
LINGER_S = 2.0
#: Descriptors beyond the connections: the listener, the weights, logs, torch's own.
_SPARE_FDS = 64
_TOKEN_ERROR = (
    "missing or wrong bearer token: send Authorization: Bearer <token>, the server's "
    "CSM_OFFLOAD_WORKER_TOKEN"
)
_HEADERS_TOO_LARGE = (
    f"the request headers are over {MAX_HEADER_BYTES} bytes: send fewer or shorter ones"
)
_ROUTES = "POST /v1/jobs, GET or DELETE /v1/jobs/{id}, GET /healthz"

log = logging.getLogger("uvicorn.error")


@attrs.frozen
class ServerSettings:
    host: str = "127.0.0.1"
    port: int = 8000
    token: Secret | None = None
    max_queue: int = 8
    result_ttl_s: float = 600.0
    max_wait_s: float = 60.0
    limits: WireLimits = DEFAULT_SERVER_LIMITS
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    header_timeout_s: float = DEFAULT_HEADER_TIMEOUT_S
    keep_alive_s: float = DEFAULT_KEEP_ALIVE_S
    body_timeout_s: float = DEFAULT_BODY_TIMEOUT_S


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
    if settings.max_connections < 1:
        raise UserError("max_connections must be 1 or more")
    for name in ("header_timeout_s", "keep_alive_s", "body_timeout_s"):
        value = getattr(settings, name)
        if not (math.isfinite(value) and value > 0):
            raise UserError(f"{name} must be a positive number of seconds, got {value}")


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


def _error(
    status: int, message: str, headers: Mapping[str, str] | None = None, *, close: bool = False
) -> JSONResponse:
    """`{"error": message}`; `close` for answers given before the body was read, so the
    connection cannot be reused with the rest of that body still on it."""
    all_headers = dict(headers or {})
    if close:
        all_headers["Connection"] = "close"
    return JSONResponse({"error": message}, status_code=status, headers=all_headers)


def _wire(obj: Any, status: int = 200) -> Response:
    return Response(wire.dumps(obj), status_code=status, media_type="application/json")


def _is_json(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    )


def _parse_body(body: bytes, limits: WireLimits) -> ParsedBatch:
    return parse_batch(wire.parse_json(body, limits), limits)


class _Routes:
    def __init__(self, queue: JobQueue, settings: ServerSettings) -> None:
        self.queue = queue
        self.settings = settings

    def check_headers(self, request: Request) -> Response | None:
        """What the headers alone can refuse, so no byte of a hopeless body is read."""
        content_type = request.headers.get("content-type")
        if content_type is not None and not _is_json(content_type):
            shown = content_type[:80]
            return _error(415, f"Content-Type must be application/json, not {shown!r}", close=True)
        limit = self.settings.limits.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            return _error(413, _over_limit(limit), close=True)
        return None

    async def read_body(self, request: Request) -> bytes | Response:
        """The body, within `max_body_bytes` and `body_timeout_s` (plus time per byte)."""
        limit = self.settings.limits.max_body_bytes
        body = bytearray()
        try:
            async with asyncio.timeout(self.settings.body_timeout_s) as window:
                async for chunk in request.stream():
                    body += chunk
                    if len(body) > limit:
                        return _error(413, _over_limit(limit), close=True)
                    # Large bodies get time in proportion; a drip gains next to nothing.
                    window.reschedule(_later(window.when(), len(chunk) * BODY_SECONDS_PER_BYTE))
        except TimeoutError:
            timeout = self.settings.body_timeout_s
            return _error(
                408,
                f"the body did not arrive within {timeout:g} s (body_timeout_s): send it at once, "
                "with a Content-Length that matches it",
                close=True,
            )
        except ClientDisconnect:  # nobody is left to read this; it keeps the log quiet
            return _error(400, "the connection closed before the body was complete", close=True)
        return bytes(body)

    async def submit(self, request: Request) -> Response:
        refusal = self.check_headers(request)
        if refusal is not None:
            return refusal
        body = await self.read_body(request)
        if isinstance(body, Response):
            return body
        try:
            # Parsing JSON and decoding context audio is CPU work: keep it off the event loop.
            batch = await asyncio.to_thread(_parse_body, body, self.settings.limits)
        except WireError as exc:
            return _error(400, str(exc))
        job = self.queue.add(batch)
        if job is None:
            wait = str(self.queue.retry_after())
            return _error(429, "queue is full; retry later", {"Retry-After": wait})
        return _wire(job.view(), 202)

    def find(self, request: Request) -> _Job | Response:
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


def _over_limit(limit: int) -> str:
    return f"body is over the limit of {limit} bytes (max_body_bytes): send fewer requests per job"


def _later(when: float | None, seconds: float) -> float | None:
    return None if when is None else when + seconds


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


class _HeaderGate:
    """What every request's headers alone decide, before routing and before any of the body is
    read: their size, and the bearer token (a client without it learns nothing, and costs
    nothing more)."""

    def __init__(self, app: ASGIApp, token: Secret | None) -> None:
        self.app = app
        self.expected = f"Bearer {token.reveal()}".encode() if token else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refusal = self.refusal(scope["headers"])
        if refusal is None:
            await self.app(scope, receive, send)
        else:
            await refusal(scope, receive, send)

    def refusal(self, headers: list[tuple[bytes, bytes]]) -> Response | None:
        # h11 bounds only headers that arrive in pieces; one packet of them is counted here.
        if sum(len(name) + len(value) + 4 for name, value in headers) > MAX_HEADER_BYTES:
            return _error(431, _HEADERS_TOO_LARGE, close=True)
        if self.expected is None:
            return None
        given = next((value for name, value in headers if name == b"authorization"), b"")
        if hmac.compare_digest(given, self.expected):
            return None
        return _error(401, _TOKEN_ERROR, {"WWW-Authenticate": "Bearer"}, close=True)


async def _http_error(request: Request, exc: Exception) -> Response:
    if not isinstance(exc, HTTPException):
        return await _internal_error(request, exc)
    if exc.status_code == 404:
        message = f"no route {request.method} {request.url.path}: the routes are {_ROUTES}"
    elif exc.status_code == 405:
        message = f"{request.method} is not allowed on {request.url.path}: the routes are {_ROUTES}"
    else:
        message = str(exc.detail)
    return _error(exc.status_code, message, exc.headers)


async def _internal_error(_request: Request, exc: Exception) -> Response:
    # The traceback goes to the server's log (Starlette re-raises); the client gets a sentence.
    return _error(500, f"internal error ({type(exc).__name__}); the server's log has the details")


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
    return _HeaderGate(app, settings.token)


# --- connections ----------------------------------------------------------------------------


def _raw_response(status: int, message: str, headers: Mapping[str, str] | None = None) -> bytes:
    """A whole `{"error": ...}` response, for connections that never reached the app."""
    body = json.dumps({"error": message}).encode()
    lines = [
        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}",
        "content-type: application/json",
        f"content-length: {len(body)}",
        "connection: close",
        *(f"{name}: {value}" for name, value in (headers or {}).items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii") + body


class _ConnectionGuard:
    """The open connections of one server, and which of them may be dropped to make room.

    uvicorn's `limit_concurrency` counts only once a request's headers have arrived, then
    refuses everyone alike: half-sent requests would still hold every descriptor, and the
    token holder would be refused with the attackers. Here a new connection over the limit
    takes the place of one that is answered and closing, else of the one that has waited
    longest for a first request, else of the longest idle keep-alive connection; only when
    every connection is inside a request is the newcomer turned away (503).
    """

    def __init__(self, limit: int, header_timeout_s: float, keep_alive_s: float) -> None:
        self.limit = limit
        self.header_timeout_s = header_timeout_s
        self.keep_alive_s = keep_alive_s
        self.open: set[_GuardedProtocol] = set()
        # Insertion-ordered dicts used as ordered sets: the first has waited longest.
        self.closing: dict[_GuardedProtocol, None] = {}
        self.fresh: dict[_GuardedProtocol, None] = {}
        self.kept: dict[_GuardedProtocol, None] = {}

    def admit(self, conn: _GuardedProtocol) -> bool:
        self.open.add(conn)
        if len(self.open) <= self.limit:
            return True
        for tier in (self.closing, self.fresh, self.kept):
            victim = next(iter(tier), None)
            if victim is not None:
                victim.drop()
                return True
        self.forget(conn)
        return False

    def waiting(self, conn: _GuardedProtocol, *, fresh: bool) -> None:
        (self.fresh if fresh else self.kept)[conn] = None

    def busy(self, conn: _GuardedProtocol) -> None:
        self.fresh.pop(conn, None)
        self.kept.pop(conn, None)

    def lingering(self, conn: _GuardedProtocol) -> None:
        self.busy(conn)
        self.closing[conn] = None

    def forget(self, conn: _GuardedProtocol) -> None:
        self.open.discard(conn)
        self.closing.pop(conn, None)
        self.busy(conn)


class _LingeringTransport:
    """The transport as uvicorn sees it. Closing while the client is still sending a body
    (an early 401, 408 or 413) would reset the connection, and a reset can destroy the answer
    before the client reads it; this sends the answer's end instead and swallows the rest."""

    def __init__(self, inner: asyncio.Transport, owner: _GuardedProtocol) -> None:
        self._inner = inner
        self._owner = owner

    def close(self) -> None:
        self._owner.close_transport()

    def is_closing(self) -> bool:
        return self._owner.lingering or self._inner.is_closing()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class _GuardedProtocol(H11Protocol):
    """uvicorn's h11 protocol with a connection limit, a header deadline and lingering close.

    Built on uvicorn's `H11Protocol` (its `conn`, `cycle` and `on_response_complete`); the
    tests under load and attack (tests/peers, tests/hostile) are what keep this honest when
    uvicorn changes.
    """

    guard: ClassVar[_ConnectionGuard]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.raw: asyncio.Transport | None = None
        self.lingering = False
        self._lost = False
        self._waiting = False
        self._pending = 0  # bytes of a request whose headers have not all arrived
        self._idle = False  # kept alive between requests, no byte of the next one yet
        self._cycle_seen: Any = None
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.raw = cast(asyncio.Transport, transport)
        super().connection_made(cast(asyncio.Transport, _LingeringTransport(self.raw, self)))
        if not self.guard.admit(self):
            limit = self.guard.limit
            message = f"the server has {limit} connections open (max_connections): retry shortly"
            self.raw.write(_raw_response(503, message, {"retry-after": "1"}))
            self.raw.close()
            return
        self._await_request(fresh=True)

    def data_received(self, data: bytes) -> None:
        if self.lingering:
            return  # answered already: swallow what is still coming
        if self._waiting:
            if not self._pending and self._idle:  # a request begins: its headers' clock starts
                self._idle = False
                self._set_timer(self.guard.header_timeout_s)
            self._pending += len(data)
        super().data_received(data)
        if self._waiting and (self.cycle is not self._cycle_seen or self.transport.is_closing()):
            self._stop_waiting()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            return  # a pipelined request is already running
        self._await_request(fresh=False)

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self._stop_waiting()
        self.guard.forget(self)
        super().connection_lost(exc)

    def send_400_response(self, msg: str) -> None:
        # h11 refused the bytes; answer in JSON like every other error.
        if self._pending > MAX_HEADER_BYTES:
            self.answer_and_close(431, _HEADERS_TOO_LARGE)
        else:
            self.answer_and_close(400, "the request is not valid HTTP/1.1")

    # --- waiting for a request --------------------------------------------------------------

    def _await_request(self, *, fresh: bool) -> None:
        self._stop_waiting()
        self._waiting, self._pending, self._cycle_seen = True, 0, self.cycle
        self._idle = not fresh
        self.guard.waiting(self, fresh=fresh)
        self._set_timer(self.guard.keep_alive_s if self._idle else self.guard.header_timeout_s)

    def _set_timer(self, seconds: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self.loop.call_later(seconds, self._headers_late)

    def _stop_waiting(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._waiting:
            self._waiting = False
            self.guard.busy(self)

    def _headers_late(self) -> None:
        self._timer = None
        if not self._waiting:
            return
        if not self._pending:
            self.drop()  # an idle connection: close it quietly, as keep-alive timeouts do
            return
        timeout = self.guard.header_timeout_s
        self.answer_and_close(
            408,
            f"the request headers did not arrive within {timeout:g} s (header_timeout_s): "
            "send the request line and headers at once",
        )

    # --- closing ----------------------------------------------------------------------------

    def drop(self) -> None:
        """Close at once, with no answer (an idle connection, or one making room)."""
        self._stop_waiting()
        self.guard.forget(self)
        if self.raw is not None:
            self.raw.close()

    def answer_and_close(self, status: int, message: str) -> None:
        if self.raw is None or self.lingering or self.raw.is_closing():
            return
        self.raw.write(_raw_response(status, message))
        self._linger()

    def close_transport(self) -> None:
        """uvicorn's `transport.close()`: linger if the client still owes body bytes."""
        if self.raw is None or (self.lingering and not self._lost):
            return
        if not self._lost and self.conn.their_state is h11.SEND_BODY:
            self._linger()
        else:
            self.raw.close()

    def _linger(self) -> None:
        assert self.raw is not None
        self.lingering = True
        self._stop_waiting()
        self.guard.lingering(self)
        if self.raw.can_write_eof():
            self.raw.write_eof()  # the client sees the answer end; its writes still succeed
        self.raw.resume_reading()
        self.loop.call_later(LINGER_S, self.raw.close)


def _protocol_for(guard: _ConnectionGuard) -> type[asyncio.Protocol]:
    return type("GuardedH11Protocol", (_GuardedProtocol,), {"guard": guard})


# --- serving --------------------------------------------------------------------------------


def open_listener(settings: ServerSettings, backlog: int = 2048) -> socket.socket:
    """Bind and listen now, before minutes of model loading: a busy port is one sentence at
    once, and nothing can take the port while the weights load (clients that connect then
    wait in the backlog and are answered once the model is up)."""
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        if os.name != "nt":  # a restart may reuse a port in TIME_WAIT; on Windows it would steal
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((settings.host, settings.port))
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        raise UserError(_bind_error(settings.host, settings.port, exc)) from None
    return sock


def _bind_error(host: str, port: int, exc: OSError) -> str:
    if exc.errno == errno.EADDRINUSE:
        return f"port {port} on {host} is in use: choose another with --port"
    if exc.errno == errno.EACCES:
        return f"port {port} on {host} needs root: choose one above 1023 with --port"
    if exc.errno == errno.EADDRNOTAVAIL or isinstance(exc, socket.gaierror):
        return f"{host} is not an address of this machine: choose another with --host"
    reason = exc.strerror or exc
    return f"cannot listen on port {port} of {host} ({reason}): check --host and --port"


def raise_fd_limit(max_connections: int) -> None:
    """Make sure `max_connections` sockets fit under the process's file-descriptor limit."""
    try:
        import resource
    except ImportError:  # Windows has no such per-process limit to raise
        return
    needed = max_connections + _SPARE_FDS
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return
    if hard != resource.RLIM_INFINITY and hard < needed:
        raise UserError(
            f"--max-connections {max_connections} needs {needed} open files but this process may "
            f"open only {hard}: lower --max-connections or raise the limit (ulimit -n)"
        )
    resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


def make_server(app: ASGIApp, settings: ServerSettings, log_level: str = "info") -> uvicorn.Server:
    """uvicorn, configured for a server that faces the internet; run it on `open_listener`."""
    guard = _ConnectionGuard(
        settings.max_connections, settings.header_timeout_s, settings.keep_alive_s
    )
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        http=_protocol_for(guard),
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
