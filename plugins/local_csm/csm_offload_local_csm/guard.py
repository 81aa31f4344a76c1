"""The app's guard: what a request's headers alone decide, and how much body it may send, how fast.

The worker server faces the internet, so nobody may hold it without the token
(docs/worker-server.md, "Limits and timeouts"): `HeaderGate` wraps the whole app and checks the
token and the headers' size before routing and before a byte of the body is read; a job's
declared type and length are refused before its body is read (`check_headers`), and the body
itself must stay within `max_body_bytes` and arrive within `body_timeout_s` (`read_body`).
Every refusal is a JSON `{"error": ...}` (`json_error`); one given before the body was read
closes the connection. The connections themselves (their number, the header deadline) are
`connections`'s.
"""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import Mapping

from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from csm_offload.secret import Secret

from .connections import HEADERS_TOO_LARGE, MAX_HEADER_BYTES

#: Four seconds per MiB: a body may arrive as slowly as 256 KiB/s and no slower.
BODY_SECONDS_PER_BYTE = 4.0 / 2**20
_TOKEN_ERROR = (
    "missing or wrong bearer token: send Authorization: Bearer <token>, the server's "
    "CSM_OFFLOAD_WORKER_TOKEN"
)


def json_error(
    status: int, message: str, headers: Mapping[str, str] | None = None, *, close: bool = False
) -> JSONResponse:
    """`{"error": message}`; `close` for answers given before the body was read, so the
    connection cannot be reused with the rest of that body still on it."""
    all_headers = dict(headers or {})
    if close:
        all_headers["Connection"] = "close"
    return JSONResponse({"error": message}, status_code=status, headers=all_headers)


def is_json(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    )


def check_headers(request: Request, max_body_bytes: int) -> Response | None:
    """What the headers alone can refuse, so no byte of a hopeless body is read."""
    content_type = request.headers.get("content-type")
    if content_type is not None and not is_json(content_type):
        shown = content_type[:80]
        return json_error(415, f"Content-Type must be application/json, not {shown!r}", close=True)
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_body_bytes:
        return json_error(413, _over_limit(max_body_bytes), close=True)
    return None


async def read_body(
    request: Request, max_body_bytes: int, body_timeout_s: float
) -> bytes | Response:
    """The body, within `max_body_bytes` and `body_timeout_s` (plus time per byte)."""
    body = bytearray()
    try:
        async with asyncio.timeout(body_timeout_s) as window:
            async for chunk in request.stream():
                body += chunk
                if len(body) > max_body_bytes:
                    return json_error(413, _over_limit(max_body_bytes), close=True)
                # Large bodies get time in proportion; a drip gains next to nothing.
                window.reschedule(_later(window.when(), len(chunk) * BODY_SECONDS_PER_BYTE))
    except TimeoutError:
        return json_error(
            408,
            f"the body did not arrive within {body_timeout_s:g} s (body_timeout_s): send it at "
            "once, with a Content-Length that matches it",
            close=True,
        )
    except ClientDisconnect:  # nobody is left to read this; it keeps the log quiet
        return json_error(400, "the connection closed before the body was complete", close=True)
    return bytes(body)


def _over_limit(limit: int) -> str:
    return f"body is over the limit of {limit} bytes (max_body_bytes): send fewer requests per job"


def _later(when: float | None, seconds: float) -> float | None:
    return None if when is None else when + seconds


class HeaderGate:
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
            return json_error(431, HEADERS_TOO_LARGE, close=True)
        if self.expected is None:
            return None
        given = next((value for name, value in headers if name == b"authorization"), b"")
        if hmac.compare_digest(given, self.expected):
            return None
        return json_error(401, _TOKEN_ERROR, {"WWW-Authenticate": "Bearer"}, close=True)
