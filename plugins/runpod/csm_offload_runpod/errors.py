"""RunPod's HTTP answers and transport failures, as the core's typed errors.

The plugin never retries: it says what kind of failure it saw (`TransientError` with the
server's `Retry-After`, `Unavailable`, `Rejected`, `JobLost`) and the runner decides.
Messages never carry the API key, and quote at most a short, printable piece of a body.
"""

from __future__ import annotations

import email.utils
import math
import time

import httpx

from csm_offload import JobLost, ProviderError, Rejected, TransientError, Unavailable

#: A Retry-After further away than this is treated as this (a misconfigured proxy should not
#: park a run for a day); the runner's deadlines still apply.
MAX_RETRY_AFTER_S = 3600.0
_SNIPPET_CHARS = 200
URL_OUTPUTS_HINT = (
    "send fewer or shorter requests per job (lower max_batch, less context audio) and have the "
    "worker return URL outputs for large results"
)


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a `Retry-After` header: delta-seconds or an HTTP-date.

    Returns None when the header is absent or unreadable; never negative, never above
    `MAX_RETRY_AFTER_S`."""
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    seconds: float | None
    try:
        seconds = float(text)
    except ValueError:
        seconds = _http_date_delay(text, time.time() if now is None else now)
    if seconds is None or not math.isfinite(seconds):
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_S)


def _http_date_delay(text: str, now: float) -> float | None:
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when is None or when.tzinfo is None:
        # RFC 9110 dates are always GMT; a date without a zone is not one of them.
        return None
    try:
        return when.timestamp() - now
    except (OverflowError, OSError, ValueError):
        return None


def snippet(body: bytes | str) -> str:
    """A short printable excerpt of a response body for an error message."""
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    text = " ".join(text.split())
    text = "".join(ch if ch.isprintable() else "?" for ch in text)
    return text if len(text) <= _SNIPPET_CHARS else text[: _SNIPPET_CHARS - 1] + "…"


def error_for_response(
    response: httpx.Response, route: str, target: str, now: float | None = None
) -> ProviderError | None:
    """The typed error for a non-2xx answer to `route` (run, runsync, status, cancel, health),
    or None for a success."""
    code = response.status_code
    if code < 300:
        return None
    detail = snippet(response.content) if response.content else response.reason_phrase
    where = f"RunPod {route} answered HTTP {code}"
    retry_after = parse_retry_after(response.headers.get("retry-after"), now)
    if code < 400:
        return Unavailable(
            f"{where} (a redirect, not followed: the API key stays on the endpoint's host); "
            "check the target's endpoint_url",
            target=target,
        )
    if code == 429:
        return TransientError(
            f"{where} (rate limited; backing off)", target=target, retry_after=retry_after
        )
    if code >= 500 or code == 408:
        return TransientError(f"{where}: {detail}", target=target, retry_after=retry_after)
    if code in (401, 403):
        return Unavailable(
            f"{where}: the API key was refused; check the target's api_key "
            "(RUNPOD_API_KEY) and that it may use this endpoint",
            target=target,
        )
    if code == 404:
        if route in ("status", "cancel"):
            return JobLost(
                f"{where}: RunPod no longer knows this job (past its result TTL or dropped)",
                target=target,
            )
        return Unavailable(
            f"{where}: no such endpoint; check the target's endpoint_url or endpoint_id",
            target=target,
        )
    if code == 413:
        return Rejected(f"{where}: the request is too large; {URL_OUTPUTS_HINT}", target=target)
    return Rejected(f"{where}: {detail}", target=target)


def error_for_transport(exc: httpx.HTTPError, route: str, target: str) -> TransientError:
    """Connection refused or reset, timeouts, protocol errors: all worth another try."""
    kind = "timed out" if isinstance(exc, httpx.TimeoutException) else "failed"
    return TransientError(f"RunPod {route} {kind}: {type(exc).__name__}", target=target)
