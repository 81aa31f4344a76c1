"""Calls to the deployed app's web endpoint, bounded in time and size, answers as typed errors.

The status mapping is the core's (`csm_offload.httpapi`); what is Modal's own is the wording of
a refused token (Modal's proxy answers 401 `modal-http: missing credentials for proxy
authorization` before our app sees the request) and what a 404 means on each route.
"""

from __future__ import annotations

import attrs
import httpx

from csm_offload import ProviderError, Target, Unavailable, httpapi

from .settings import ModalSettings

#: Bound on an answer: a finished job carries the audio of a whole batch.
MAX_RESPONSE_BYTES = 64 * 1024 * 1024
_MASK = b"********"


def settings_of(target: Target) -> ModalSettings:
    if not isinstance(target.settings, ModalSettings):
        kind = type(target.settings).__name__
        message = f"target {target.name!r} has no Modal settings (got {kind})"
        raise Unavailable(message, target=target.name)
    return target.settings


async def send(
    target: Target,
    http: httpx.AsyncClient,
    method: str,
    path: str,
    what: str,
    content: bytes | None = None,
) -> httpapi.Answer:
    """One request with the proxy-auth headers; the answer is returned whatever its status,
    with the token masked out of its body (a proxy may echo request headers back)."""
    settings = settings_of(target)
    headers = {**settings.headers(), "Accept": "application/json"}
    if content is not None:
        headers["Content-Type"] = "application/json"
    answer = await httpapi.send(
        http,
        method,
        settings.url + path,
        what=what,
        target=target.name,
        headers=headers,
        content=content,
        total_s=settings.call_total_s,
        max_bytes=MAX_RESPONSE_BYTES,
    )
    body = answer.body
    for value in (settings.key.reveal(), settings.secret.reveal()):
        body = body.replace(value.encode(), _MASK)
    return attrs.evolve(answer, body=body)


def check(answer: httpapi.Answer, what: str, target: str, not_found: ProviderError) -> None:
    """Raise the typed error of a non-2xx answer (see `csm_offload.httpapi`)."""
    if answer.status in (401, 403):
        raise Unavailable(
            f"{what} answered HTTP {answer.status}: Modal's proxy refused the token; check the "
            "target's key and secret (MODAL_KEY, MODAL_SECRET: a Proxy Auth Token of the "
            "app's workspace)",
            target=target,
        )
    httpapi.raise_for_status(answer, what, target, not_found=not_found)


def no_endpoint(what: str, target: str) -> Unavailable:
    return Unavailable(
        f"{what} answered HTTP 404: no csm-offload endpoint there; check the target's url "
        "(the web endpoint `modal deploy` printed) and that the app is deployed",
        target=target,
    )
