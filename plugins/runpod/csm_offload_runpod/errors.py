"""RunPod's HTTP answers and transport failures, as the core's typed errors.

The mapping itself is the core's (`csm_offload.httpapi`); what is RunPod's own is what a 404
means on each route and the hint for bodies over RunPod's size limits. The plugin never
retries: it says what kind of failure it saw and the runner decides.
"""

from __future__ import annotations

import httpx

from csm_offload import JobLost, ProviderError, Rejected, TransientError, Unavailable, httpapi
from csm_offload.backoff import MAX_RETRY_AFTER_S, parse_retry_after
from csm_offload.httpapi import snippet

__all__ = [
    "MAX_RETRY_AFTER_S",
    "URL_OUTPUTS_HINT",
    "error_for_response",
    "error_for_transport",
    "parse_retry_after",
    "snippet",
]

URL_OUTPUTS_HINT = (
    "send fewer or shorter requests per job (lower max_batch, less context audio) and have the "
    "worker return URL outputs for large results"
)
_JOB_ROUTES = ("status", "cancel")


def not_found(route: str, target: str) -> ProviderError:
    where = f"RunPod {route} answered HTTP 404"
    if route in _JOB_ROUTES:
        return JobLost(
            f"{where}: RunPod no longer knows this job (past its result TTL or dropped)",
            target=target,
        )
    return Unavailable(
        f"{where}: no such endpoint; check the target's endpoint_url or endpoint_id",
        target=target,
    )


def error_for_status(
    status: int, headers: httpx.Headers, body: bytes, route: str, target: str, reason: str = ""
) -> ProviderError | None:
    """The typed error for a non-2xx answer to `route` (run, runsync, status, cancel, health)."""
    what = f"RunPod {route}"
    if status in (401, 403):
        return Unavailable(
            f"{what} answered HTTP {status}: the API key was refused; check the target's "
            "api_key (RUNPOD_API_KEY) and that it may use this endpoint",
            target=target,
        )
    if status == 413:
        return Rejected(
            f"{what} answered HTTP 413: the request is too large; {URL_OUTPUTS_HINT}",
            target=target,
        )
    return httpapi.error_for_status(
        status, headers, body, what, target, not_found=not_found(route, target), reason=reason
    )


def error_for_response(response: httpx.Response, route: str, target: str) -> ProviderError | None:
    """`error_for_status` for a whole `httpx.Response`."""
    return error_for_status(
        response.status_code,
        response.headers,
        response.content,
        route,
        target,
        response.reason_phrase,
    )


def error_for_transport(exc: httpx.HTTPError, route: str, target: str) -> TransientError:
    return httpapi.transport_error(exc, f"RunPod {route}", target)
