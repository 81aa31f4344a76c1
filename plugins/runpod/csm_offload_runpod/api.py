"""The HTTP calls to a RunPod serverless endpoint, each answer checked and mapped to typed errors.

Every call goes through `call`, on the core's shared client, with the key in the
Authorization header, redirects never followed (so the key never reaches another host), a
total time bound and a bound on the decoded body (`csm_offload.httpapi`).
"""

from __future__ import annotations

from typing import Any

import httpx

from csm_offload import httpapi

from .errors import error_for_status

#: RunPod's request-body limits (bytes).
RUN_MAX_BYTES = 10 * 1024 * 1024
RUNSYNC_MAX_BYTES = 20 * 1024 * 1024
#: `?wait=` bounds RunPod accepts on /runsync (ms).
MIN_WAIT_MS = 1_000
MAX_WAIT_MS = 300_000
#: Bound on a response body we read (a status carries the audio of a whole batch).
MAX_RESPONSE_BYTES = 64 * 1024 * 1024
#: Seconds a call that does not wait on purpose may take, body included.
CALL_TOTAL_S = 60.0
#: Seconds added to a /runsync wait for the network and RunPod's own answer.
_WAIT_SLACK_S = 15.0


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
    total_s: float = CALL_TOTAL_S,
) -> tuple[Any, bytes]:
    """One request: (parsed JSON, raw body) of a 2xx answer, or the typed error raised."""
    what = f"RunPod {route}"
    answer = await httpapi.send(
        http,
        method,
        url,
        what=what,
        target=target,
        headers=headers(api_key, body=content is not None),
        content=content,
        params=params,
        total_s=total_s,
        max_bytes=MAX_RESPONSE_BYTES,
        http_timeout=_timeout(total_s),
    )
    error = error_for_status(
        answer.status, answer.headers, answer.body, route, target, answer.reason
    )
    if error is not None:
        raise error
    return answer.json(what, target, MAX_RESPONSE_BYTES), answer.body


def _timeout(total_s: float) -> httpx.Timeout | None:
    """A long-poll waits silently on purpose: its inactivity timeout must outlast the wait."""
    if total_s <= CALL_TOTAL_S:
        return None
    return httpx.Timeout(10.0, read=total_s)


def run_body(batch_json: bytes) -> bytes:
    """The `{"input": <BatchRequest>}` body, built around already-encoded wire JSON."""
    return b'{"input":' + batch_json + b"}"


def wait_ms(predicted_s: float, cap_s: float = MAX_WAIT_MS / 1000) -> int:
    """How long /runsync should hold the connection: three times the predicted run (a job may
    also queue behind others), at least 30 s. RunPod answers as soon as the job finishes, so a
    long wait costs nothing, while a short one costs a /status poll per job."""
    wanted = max(30_000, int(predicted_s * 3000) + 5_000)
    return max(MIN_WAIT_MS, min(MAX_WAIT_MS, int(cap_s * 1000), wanted))


def runsync_total_s(wait: int) -> float:
    """The client must wait a little longer than the server holds the connection."""
    return wait / 1000 + _WAIT_SLACK_S
