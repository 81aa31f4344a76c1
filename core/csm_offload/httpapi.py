"""HTTP calls to a provider's API: bounded in time and in size, answers mapped to typed errors.

Every HTTP provider needs the same things, so they live here once:
- a total time bound on the whole call, body included (httpx's read timeout is an inactivity
  timeout: a body that drips in a byte at a time would otherwise hold a job for hours);
- a bound on the body *after* decompression, enforced while it streams in, so a small gzip
  answer cannot inflate to gigabytes in memory;
- the status classes as the core's typed errors: 429 is back-pressure (`RateLimited`), 5xx and
  408 are transient, 401/403 unavailable, 404 the caller's choice, other 4xx rejected, and a
  redirect is never followed (a key must stay on its own host), with `Retry-After` in both
  forms and a short, printable piece of the body in the message;
- transport failures (refused, reset, timed out) as `TransientError`.
"""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import Callable
from typing import Any

import attrs
import httpx

from . import wire
from .backoff import parse_retry_after
from .errors import (
    ProviderError,
    RateLimited,
    Rejected,
    TransientError,
    Unavailable,
    WireError,
)
from .scrub import scrub

#: Seconds a call may take from sending to the last byte of the answer.
DEFAULT_TOTAL_S = 60.0
#: Bytes an answer may decode (decompress) to.
DEFAULT_MAX_BYTES = 64 * 1024 * 1024
#: We decompress ourselves, with a bound, so only these encodings are asked for.
ACCEPT_ENCODING = "gzip, deflate"
_SNIPPET_CHARS = 200
_INFLATE_STEP = 1024 * 1024


@attrs.frozen
class Answer:
    """A whole HTTP answer, its body decoded and bounded."""

    status: int
    headers: httpx.Headers
    body: bytes
    reason: str = ""

    def json(self, what: str, target: str | None, max_bytes: int = DEFAULT_MAX_BYTES) -> Any:
        """The body as JSON; a malformed body is a `TransientError` naming `what`."""
        try:
            return wire.parse_json(self.body, wire.WireLimits(max_body_bytes=max_bytes))
        except WireError as exc:
            raise TransientError(f"{what} answered with {exc}", target=target) from None


async def send(
    http: httpx.AsyncClient,
    method: str,
    url: str,
    *,
    what: str,
    target: str | None = None,
    headers: dict[str, str] | None = None,
    content: bytes | None = None,
    params: dict[str, str] | None = None,
    total_s: float = DEFAULT_TOTAL_S,
    max_bytes: int = DEFAULT_MAX_BYTES,
    http_timeout: httpx.Timeout | None = None,
    check_head: Callable[[int, httpx.Headers], None] | None = None,
) -> Answer:
    """One request, its answer read whole within `total_s` and `max_bytes`; never follows a
    redirect. Transport failures and the bounds raise `TransientError`; the status is not
    judged here (see `raise_for_status`). `check_head` sees the status and headers before any
    of the body is read, and may refuse the answer by raising (a file that is not a web page
    need not be downloaded to be refused)."""
    sent = {"Accept-Encoding": ACCEPT_ENCODING, **(headers or {})}
    extra: dict[str, Any] = {} if http_timeout is None else {"timeout": http_timeout}
    try:
        async with asyncio.timeout(total_s):
            request = http.build_request(
                method, url, headers=sent, content=content, params=params, **extra
            )
            response = await http.send(request, stream=True, follow_redirects=False)
            try:
                if check_head is not None:
                    check_head(response.status_code, response.headers)
                body = await read_bounded(response, max_bytes, what, target)
            finally:
                await response.aclose()
    except TimeoutError:
        raise TransientError(
            f"{what} took over {total_s:g} s (the call's total time bound)", target=target
        ) from None
    except httpx.HTTPError as exc:
        raise transport_error(exc, what, target) from None
    return Answer(response.status_code, response.headers, body, response.reason_phrase)


async def read_bounded(
    response: httpx.Response, max_bytes: int, what: str, target: str | None = None
) -> bytes:
    """The body, decompressed as it arrives; over `max_bytes` decoded is an error at once."""
    try:
        # Already in memory (a response built around bytes, as mock transports do).
        ready = response.content
    except httpx.ResponseNotRead:
        pass
    else:
        if len(ready) > max_bytes:
            raise _too_large(what, max_bytes, target)
        return ready
    encoding = response.headers.get("content-encoding", "identity").strip().lower()
    decoder = _decoder(encoding, what, target)
    parts: list[bytes] = []
    size = 0
    async for raw in response.aiter_raw():
        pending = raw
        while pending:
            if decoder is None:
                data, pending = pending, b""
            else:
                # At most a step at a time: a few KB of gzip can hold gigabytes.
                data = decoder.decompress(pending, min(max_bytes - size + 1, _INFLATE_STEP))
                pending = decoder.unconsumed_tail
            size += len(data)
            if size > max_bytes:
                raise _too_large(what, max_bytes, target)
            parts.append(data)
    if decoder is not None:
        tail = decoder.flush()
        size += len(tail)
        if size > max_bytes:
            raise _too_large(what, max_bytes, target)
        parts.append(tail)
    return b"".join(parts)


def _decoder(encoding: str, what: str, target: str | None) -> Any:
    if encoding in ("", "identity"):
        return None
    if encoding in ("gzip", "x-gzip", "deflate"):
        # 32 + 15: a zlib or gzip header, detected from the data.
        return zlib.decompressobj(wbits=47)
    raise TransientError(
        f"{what} answered in an encoding we did not ask for: {encoding}", target=target
    )


def _too_large(what: str, max_bytes: int, target: str | None) -> TransientError:
    return TransientError(
        f"{what} sent an answer of over {max_bytes} bytes (decoded); not read further",
        target=target,
    )


def transport_error(exc: httpx.HTTPError, what: str, target: str | None) -> TransientError:
    """Connection refused or reset, timeouts, protocol errors: all worth another try."""
    kind = "timed out" if isinstance(exc, httpx.TimeoutException) else "failed"
    return TransientError(f"{what} {kind}: {type(exc).__name__}", target=target)


def snippet(body: bytes | str) -> str:
    """A short printable excerpt of a body for an error message, with every known secret
    masked (a server may echo the request's headers into its error bodies)."""
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    text = scrub(text)
    text = " ".join(text.split())
    text = "".join(ch if ch.isprintable() else "?" for ch in text)
    return text if len(text) <= _SNIPPET_CHARS else text[: _SNIPPET_CHARS - 1] + "…"


def error_for_status(
    status: int,
    headers: httpx.Headers | dict[str, str],
    body: bytes,
    what: str,
    target: str | None = None,
    *,
    not_found: ProviderError | None = None,
    reason: str = "",
) -> ProviderError | None:
    """The typed error for a non-2xx answer, or None for a success. `not_found` is what a 404
    means to the caller (a lost job, a wrong endpoint); by default the target is unavailable."""
    if status < 300:
        return None
    where = f"{what} answered HTTP {status}"
    detail = snippet(body) if body else reason
    retry_after = parse_retry_after(httpx.Headers(headers).get("retry-after"))
    if status < 400:
        return Unavailable(
            f"{where} (a redirect, not followed: credentials stay on their own host); "
            "check the target's URL",
            target=target,
        )
    if status == 429:
        return RateLimited(f"{where} (rate limited)", target=target, retry_after=retry_after)
    if status >= 500 or status == 408:
        return TransientError(f"{where}: {detail}", target=target, retry_after=retry_after)
    if status in (401, 403):
        return Unavailable(f"{where}: the credentials were refused", target=target)
    if status == 404:
        return not_found or Unavailable(f"{where}: not found; check the URL", target=target)
    return Rejected(f"{where}: {detail}", target=target)


def raise_for_status(
    answer: Answer, what: str, target: str | None = None, *, not_found: ProviderError | None = None
) -> None:
    error = error_for_status(
        answer.status,
        answer.headers,
        answer.body,
        what,
        target,
        not_found=not_found,
        reason=answer.reason,
    )
    if error is not None:
        raise error
