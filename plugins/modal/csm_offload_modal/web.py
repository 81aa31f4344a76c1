"""The Modal app's web endpoint: an ASGI (FastAPI) app in Modal's job-queue shape.

`create_web_app(calls, info)` builds it around a small `Calls` interface, so the same routes run
on Modal (`app.py` wires `Function.spawn` and `FunctionCall.from_id(id).get(timeout=0)`) and in
tests (a GPU method run in-process). Every route answers at once: `POST /jobs` spawns and
returns, `GET /jobs/{id}` polls with `timeout=0`, so no request nears Modal's 150 s web timeout.

Proxy auth (`Modal-Key`/`Modal-Secret`) is checked by Modal's proxy before a request reaches
this app (`@modal.asgi_app(requires_proxy_auth=True)`); nothing here sees the token.
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

import attrs
from csm_offload_local_csm.worker import parse_batch
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from modal.exception import (
    AuthError,
    ClientClosed,
    ConnectionError,
    FunctionTimeoutError,
    InternalError,
    NotFoundError,
    OutputExpiredError,
    ResourceExhaustedError,
    ServiceError,
)

from csm_offload import wire
from csm_offload.errors import WireError

from . import protocol

#: Errors of our own request to Modal's control plane (not of the call): worth another try.
PLATFORM_ERRORS = (AuthError, ClientClosed, ConnectionError, InternalError, ServiceError)
_ERROR_CHARS = 1_000


@attrs.frozen
class QueueStats:
    """What Modal says about the GPU function now: calls waiting, containers up."""

    backlog: int
    containers: int


class Calls(Protocol):
    """The GPU method as the endpoint uses it (Modal's spawn/poll interface)."""

    async def spawn(self, batch: bytes) -> str:
        """Start the GPU method on `batch` (wire JSON); return the call id (`fc-…`)."""

    async def result(self, call_id: str) -> bytes:
        """Like `FunctionCall.get(timeout=0)`: the method's return value; `TimeoutError` while
        pending, `OutputExpiredError` once the result expired, or the call's own exception."""

    async def cancel(self, call_id: str) -> None:
        """Cancel the call (`FunctionCall.cancel()`)."""

    async def stats(self) -> QueueStats:
        """The GPU function's current backlog and containers (no GPU is woken)."""


@attrs.frozen
class AppInfo:
    """What the deployed app is, for `/health`, and the bounds a submitted body must keep."""

    app: str
    gpu: str
    model: str
    limits: wire.WireLimits
    max_body_bytes: int = protocol.MAX_BODY_BYTES
    stats_timeout_s: float = 5.0


def _error(status: int, message: str, state: str | None = None) -> JSONResponse:
    body: dict[str, Any] = {"error": message[:_ERROR_CHARS]}
    if state is not None:
        body["state"] = state
    return JSONResponse(body, status_code=status)


def _platform(exc: Exception, doing: str) -> JSONResponse:
    """Our own request to Modal failed: 429 if Modal throttled it, else 503 (retry later)."""
    status = 429 if isinstance(exc, ResourceExhaustedError) else 503
    return _error(status, f"Modal did not {doing}: {type(exc).__name__}: {exc}")


async def _read_body(request: Request, limit: int) -> bytes | None:
    """The body, or None once it is over `limit` bytes (not read further)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        return None
    parts, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        parts.append(chunk)
    return b"".join(parts)


def _check_batch(body: bytes, limits: wire.WireLimits) -> str | None:
    """Why a body cannot be a job (named field and fix), or None: refused here, before a GPU
    container is started for it."""
    try:
        parse_batch(wire.parse_json(body, limits), limits)
    except WireError as exc:
        return f"the body is not a csm-offload batch: {exc}"
    return None


def create_web_app(calls: Calls, info: AppInfo) -> FastAPI:
    """The endpoint's routes (see `protocol`) around `calls`."""
    web = FastAPI(title="csm-offload", docs_url=None, redoc_url=None, openapi_url=None)

    @web.post(protocol.JOBS)
    async def submit(request: Request) -> Response:
        body = await _read_body(request, info.max_body_bytes)
        if body is None:
            limit = info.max_body_bytes // 2**20
            return _error(413, f"the body is over {limit} MiB: send fewer requests per job")
        problem = _check_batch(body, info.limits)
        if problem is not None:
            return _error(400, problem)
        try:
            call_id = await calls.spawn(body)
        except Exception as exc:
            return _platform(exc, "spawn the GPU call")
        return JSONResponse({"call_id": call_id}, status_code=202)

    @web.get(protocol.JOBS + "/{call_id}")
    async def status(call_id: str) -> Response:
        if not protocol.is_call_id(call_id):
            return _error(404, "not a Modal call id (fc-…)", protocol.UNKNOWN)
        return await _poll(calls, call_id)

    @web.post(protocol.JOBS + "/{call_id}/cancel")
    async def cancel(call_id: str) -> Response:
        if not protocol.is_call_id(call_id):
            return _error(404, "not a Modal call id (fc-…)", protocol.UNKNOWN)
        try:
            await calls.cancel(call_id)
        except NotFoundError:
            return _error(404, f"Modal has no call {call_id}", protocol.UNKNOWN)
        except Exception as exc:
            return _platform(exc, "cancel the call")
        return JSONResponse({})

    @web.get(protocol.HEALTH)
    async def health() -> Response:
        return JSONResponse(await _health(calls, info))

    return web


async def _poll(calls: Calls, call_id: str) -> Response:
    """One `get(timeout=0)`. `OutputExpiredError` is caught before `TimeoutError`: in modal
    versions where it subclasses `TimeoutError`, the other order would call it pending forever."""
    try:
        body = await calls.result(call_id)
    except OutputExpiredError:
        message = f"the result of {call_id} expired (Modal keeps it 7 days)"
        return _error(404, message, protocol.EXPIRED)
    except NotFoundError:
        return _error(404, f"Modal has no call {call_id}", protocol.UNKNOWN)
    except FunctionTimeoutError as exc:
        return _error(500, f"the call ran past its timeout: {exc}", protocol.TIMED_OUT)
    except (*PLATFORM_ERRORS, ResourceExhaustedError) as exc:
        return _platform(exc, "answer the poll")
    except TimeoutError:
        return JSONResponse({"state": protocol.PENDING}, status_code=202)
    except Exception as exc:  # the call's own failure, re-raised here by Modal
        return _error(500, f"{type(exc).__name__}: {exc}", protocol.FAILED)
    return Response(body, status_code=200, media_type="application/json")


async def _health(calls: Calls, info: AppInfo) -> dict[str, Any]:
    """The endpoint is up and the caller's token passed the proxy; the GPU function's queue
    is asked of Modal's control plane (it wakes no GPU), and left unknown if that fails."""
    answer: dict[str, Any] = {"ok": True, "app": info.app, "gpu": info.gpu, "model": info.model}
    try:
        stats = await asyncio.wait_for(calls.stats(), info.stats_timeout_s)
    except Exception:
        stats = None  # unknown is not unhealthy: the endpoint itself answered
    answer["backlog"] = None if stats is None else stats.backlog
    answer["containers"] = None if stats is None else stats.containers
    return answer
