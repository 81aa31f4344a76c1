"""A succeeded prediction's `output` as the wire `BatchResponse` the Cog model returned.

The model (plugins/replicate/cog/predict.py) returns its wire response as a file, so the output
is a URL: on Replicate an `https://` file URL (kept for an hour), or inline as a `data:` URL
(Replicate does this for some small files; Cog's own server does it when it has nowhere to
upload). A file URL is fetched with a request of its own that carries no credentials: the API
token belongs to the API host alone. A JSON object or JSON text output (a model that returns
the response directly) is read as it is.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Sequence
from typing import Any

import httpx

from csm_offload import BatchResponse, Result, TransientError, WireError, httpapi, wire
from csm_offload.wire import DEFAULT_LIMITS, WireLimits

from . import dataurl
from .names import is_loopback


class Unusable(Exception):
    """The prediction is over and its output cannot be used: polling again cannot help."""


async def response_of(
    output: Any,
    http: httpx.AsyncClient,
    target: str,
    total_s: float,
    limits: WireLimits = DEFAULT_LIMITS,
) -> BatchResponse:
    """The wire response an output holds, fetched if it is a file URL. Raises `Unusable`, or
    `TransientError` when the file host failed in a way another try may not."""
    if isinstance(output, dict):
        return _structure(output, limits)
    if not isinstance(output, str):
        shown = "no output" if output is None else f"an output of type {type(output).__name__}"
        raise Unusable(f"the prediction succeeded with {shown}, not a csm-offload response")
    text = output.strip()
    if dataurl.is_data_url(text):
        try:
            body = dataurl.decode(text, limits.max_body_bytes).data
        except ValueError as exc:
            raise Unusable(f"the output is {exc}") from None
    elif text.startswith("{"):
        body = text.encode("utf-8")
    else:
        body = await fetch(check_file_url(text, limits), http, target, total_s, limits)
    try:
        return wire.loads(body, BatchResponse, limits)
    except WireError as exc:
        raise Unusable(f"the output is not a csm-offload response: {exc}") from None


def _structure(data: dict[str, Any], limits: WireLimits) -> BatchResponse:
    try:
        return wire.structure(data, BatchResponse, limits)
    except WireError as exc:
        raise Unusable(f"the output is not a csm-offload response: {exc}") from None


def check_file_url(url: str, limits: WireLimits = DEFAULT_LIMITS) -> str:
    """An output file URL we may fetch: https, or plain http to this machine (tests)."""
    if len(url) > limits.max_url_chars:
        raise Unusable(f"the output URL is over {limits.max_url_chars} characters")
    parts = urllib.parse.urlsplit(url)
    secure = parts.scheme == "https" or (parts.scheme == "http" and is_loopback(parts.hostname))
    if not secure or not parts.netloc or parts.username or parts.password:
        raise Unusable("the output is neither a data: URL nor an https:// file URL")
    return url


async def fetch(
    url: str, http: httpx.AsyncClient, target: str, total_s: float, limits: WireLimits
) -> bytes:
    """GET an output file with no credentials, bounded in time and size."""
    what = "Replicate output file"
    answer = await httpapi.send(
        http,
        "GET",
        url,
        what=what,
        target=target,
        headers={"Accept": "application/json"},
        total_s=total_s,
        max_bytes=limits.max_body_bytes,
    )
    error = httpapi.error_for_status(
        answer.status, answer.headers, answer.body, what, target, reason=answer.reason
    )
    if error is None:
        return answer.body
    if isinstance(error, TransientError):
        raise error  # the file host is busy or failing (429, 5xx): the next poll fetches again
    # Gone, refused or redirected: output files live an hour, and this one will not come back.
    raise Unusable(f"{error} (Replicate keeps output files for an hour)")


def in_request_order(results: Sequence[Result], request_ids: Sequence[str]) -> tuple[Result, ...]:
    """The results for `request_ids`, in that order. Results for other ids are dropped (audio
    for another request must never be filed under this one), a duplicated id counts once, and
    a missing id is left out: the runner resubmits what a prediction did not deliver."""
    by_id: dict[str, Result] = {}
    for result in results:
        by_id.setdefault(result.id, result)
    found = tuple(by_id[i] for i in request_ids if i in by_id)
    if results and not found:
        shown = ", ".join(r.id[:40] for r in results[:4])
        raise Unusable(f"the output answers other requests than this job's (got {shown})")
    return found
