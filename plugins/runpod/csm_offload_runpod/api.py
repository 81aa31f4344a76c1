"""The HTTP calls to a RunPod serverless endpoint, each answer checked and mapped to typed errors.

Every call goes through `call`, on the core's shared client, with the key in the
Authorization header and redirects never followed (so the key never reaches another host).
"""

from __future__ import annotations

from typing import Any

import httpx

from csm_offload import TransientError, WireError, wire

from .errors import error_for_response, error_for_transport

#: RunPod's request-body limits (bytes).
RUN_MAX_BYTES = 10 * 1024 * 1024
RUNSYNC_MAX_BYTES = 20 * 1024 * 1024
#: `?wait=` bounds RunPod accepts on /runsync (ms).
MIN_WAIT_MS = 1_000
MAX_WAIT_MS = 300_000
#: Bound on a response body we parse (a status carries the audio of a whole batch).
_RESPONSE_LIMITS = wire.WireLimits(max_body_bytes=64 * 1024 * 1024)


def headers(api_key: str, body: bool = False) -> dict[str, str]:
    found = {"Authorization": f"Bearer {api_key}", "Accept": "application/json"}
    if body:
        found["Content-Type"] = "application/json"
    return found


async def call(
    http: httpx.AsyncClient,
    method: str,
    url: str,
    route: str,
    api_key: str,
    target: str,
    content: bytes | None = None,
    params: dict[str, str] | None = None,
    limit: httpx.Timeout | None = None,
) -> tuple[Any, bytes]:
    """One request: (parsed JSON, raw body) of a 2xx answer, or the typed error raised."""
    extra: dict[str, Any] = {} if limit is None else {"timeout": limit}
    try:
        response = await http.request(
            method,
            url,
            content=content,
            params=params,
            headers=headers(api_key, body=content is not None),
            follow_redirects=False,
            **extra,
        )
    except httpx.HTTPError as exc:
        raise error_for_transport(exc, route, target) from None
    error = error_for_response(response, route, target)
    if error is not None:
        raise error
    try:
        return wire.parse_json(response.content, _RESPONSE_LIMITS), response.content
    except WireError as exc:
        raise TransientError(f"RunPod {route} answered with {exc}", target=target) from None


def run_body(batch_json: bytes) -> bytes:
    """The `{"input": <BatchRequest>}` body, built around already-encoded wire JSON."""
    return b'{"input":' + batch_json + b"}"


def wait_ms(predicted_s: float) -> int:
    """How long /runsync should hold the connection: the predicted run plus a margin."""
    wanted = int(predicted_s * 1500) + 2_000
    return max(MIN_WAIT_MS, min(MAX_WAIT_MS, wanted))


def runsync_timeout(wait: int) -> httpx.Timeout:
    """The client must wait a little longer than the server holds the connection."""
    return httpx.Timeout(10.0, read=wait / 1000 + 15.0)
