"""The HTTP calls to Replicate's API, each answer checked and mapped to the core's typed errors.

Every call goes through `call`, on the core's shared client (`csm_offload.httpapi.send`): the
token only in the Authorization header, redirects never followed (so it never reaches another
host), a total time bound and a bound on the decoded body. Statuses are mapped by the core's
one mapping (`httpapi.error_for_status`); what is Replicate's own is the wording of a refused
token and the wait a throttled answer names in its body when it sends no `Retry-After`.
"""

from __future__ import annotations

import re
from typing import Any

import attrs
import httpx

from csm_offload import ProviderError, RateLimited, TransientError, Unavailable, httpapi
from csm_offload.backoff import MAX_RETRY_AFTER_S

#: Bound on an API answer: a prediction echoes its whole input (the batch, context audio and
#: all) on every read.
MAX_ANSWER_BYTES = 64 * 1024 * 1024
#: Seconds added to a `Prefer: wait` for the network and Replicate's own answer.
WAIT_SLACK_S = 15.0
_MASK = b"********"
#: `{"detail": "Request was throttled. Expected available in 1 second."}` and
#: `"... Your rate limit resets in ~30s."`: Replicate's documented 429 bodies.
_THROTTLE_HINT = re.compile(
    r"(?:available in|resets in)\s*~?\s*(\d{1,9}(?:\.\d{1,6})?)\s*(?:seconds?|secs?|s)\b", re.I
)


def headers(token: str, *, body: bool = False, wait_s: int | None = None) -> dict[str, str]:
    found = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
    if body:
        found["Content-Type"] = "application/json"
    if wait_s is not None:
        found["Prefer"] = f"wait={wait_s}"
    return found


def throttle_hint(body: bytes | str) -> float | None:
    """Seconds a throttled answer's body says to wait, when it says so; else None."""
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    found = _THROTTLE_HINT.search(text[:2000])
    if found is None:
        return None
    return min(float(found.group(1)), MAX_RETRY_AFTER_S)


def _judged(error: ProviderError, answer: httpapi.Answer, what: str, target: str) -> ProviderError:
    """The shared mapping's error, worded for Replicate where that helps the user."""
    if answer.status in (401, 403):
        return Unavailable(
            f"{what} answered HTTP {answer.status}: the API token was refused; check the "
            "target's api_token (REPLICATE_API_TOKEN) and that it may run this model",
            target=target,
        )
    if isinstance(error, RateLimited) and error.retry_after is None:
        return RateLimited(str(error), target=target, retry_after=throttle_hint(answer.body))
    return error


def _timeout(total_s: float, call_total_s: float) -> httpx.Timeout | None:
    """A waiting create is silent on purpose: its inactivity timeout must outlast the wait."""
    if total_s <= call_total_s:
        return None
    return httpx.Timeout(10.0, read=total_s)


@attrs.frozen
class Caller:
    """One target's calls: its token, name and time bound."""

    token: str
    target: str
    call_total_s: float

    async def call(
        self,
        http: httpx.AsyncClient,
        method: str,
        url: str,
        what: str,
        *,
        content: bytes | None = None,
        wait_s: int | None = None,
        not_found: ProviderError | None = None,
    ) -> dict[str, Any]:
        """One request: the answer's JSON object, or the typed error raised."""
        total_s = self.call_total_s if wait_s is None else wait_s + WAIT_SLACK_S
        answer = await httpapi.send(
            http,
            method,
            url,
            what=what,
            target=self.target,
            headers=headers(self.token, body=content is not None, wait_s=wait_s),
            content=content,
            total_s=total_s,
            max_bytes=MAX_ANSWER_BYTES,
            http_timeout=_timeout(total_s, self.call_total_s),
        )
        # A server may echo our headers back: the token must never reach a message.
        answer = attrs.evolve(answer, body=answer.body.replace(self.token.encode(), _MASK))
        error = httpapi.error_for_status(
            answer.status,
            answer.headers,
            answer.body,
            what,
            self.target,
            not_found=not_found,
            reason=answer.reason,
        )
        if error is not None:
            raise _judged(error, answer, what, self.target)
        data = answer.json(what, self.target, MAX_ANSWER_BYTES)
        if not isinstance(data, dict):
            raise TransientError(f"{what}: the answer is not a JSON object", target=self.target)
        return data
