"""An async client for the csm-offload worker server (`csm-offload serve`), and its wire types.

The protocol (wire format v1, JSON; see docs/worker-server.md):
`POST /v1/jobs` (a `BatchRequest`) -> `WorkerJob`; `GET /v1/jobs/{id}?wait=S` -> `WorkerJob`
(long-polls up to S seconds for the job to finish); `DELETE /v1/jobs/{id}` -> `WorkerJob`;
`GET /healthz` -> `WorkerHealth`. Errors are `{"error": "..."}` with an HTTP status.

The client uses the `httpx.AsyncClient` it is given, never retries or sleeps, and raises the
core's typed errors so the runner can decide. `check_url` is the one check of a server's URL
that every provider talking to a worker server applies before its token is sent there.
"""

from __future__ import annotations

import urllib.parse
from typing import Any

import attrs
import httpx

from . import httpapi, wire
from .errors import JobLost, ProviderError, TransientError, Unavailable, WireError
from .model import BatchRequest, BatchResponse, JobState, WorkerInfo
from .secret import Secret
from .wire import DEFAULT_LIMITS, WireLimits

#: Seconds added to a long-poll's wait for the network and the server's own answer.
_WAIT_SLACK_S = 10.0
#: The longest the server holds a poll's answer (it caps `?wait=` at 60 s).
MAX_POLL_WAIT_S = 60.0
_LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})


def is_loopback(url: str) -> bool:
    """True when `url` names this machine, where a token in clear text crosses no network."""
    return (urllib.parse.urlsplit(url).hostname or "") in _LOOPBACK


def check_url(url: str, field: str) -> str:
    """A worker server's base URL, normalised (no trailing slash): https, or plain http to this
    machine only, since the bearer token would otherwise cross the network in clear text.
    A refusal is a `ValueError` starting with `field`, which the config loader places."""
    parts = urllib.parse.urlsplit(url.strip())
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise ValueError(f"{field}: expected an https:// URL, got {url!r}")
    if parts.username or parts.password:
        raise ValueError(f"{field}: must not carry credentials; use the token settings")
    if parts.query or parts.fragment:
        raise ValueError(f"{field}: must not have a query or fragment, got {url!r}")
    if parts.scheme == "http" and parts.hostname not in _LOOPBACK:
        raise ValueError(
            f"{field}: plain http is only allowed to 127.0.0.1 or localhost (the token would "
            "travel unencrypted); use https:// (TLS in front of the server: a reverse proxy, "
            "a tunnel, or Thunder's forwarded ports)"
        )
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/"), "", ""))


@attrs.frozen
class WorkerJob:
    """A job on the worker server. `response` is set once `state` is completed."""

    id: str
    state: JobState
    response: BatchResponse | None = None
    error: str | None = None
    queue_ms: int | None = None
    exec_ms: int | None = None
    schema: int = 1


@attrs.frozen
class WorkerHealth:
    """`GET /healthz`: is the engine loaded, how busy is the queue, how fast is this machine."""

    ok: bool
    detail: str
    queued: int
    running: int
    max_queue: int
    worker: WorkerInfo = attrs.field(factory=WorkerInfo)
    #: Measured wall seconds of generation per character of text (None before the first job).
    seconds_per_char: float | None = None
    schema: int = 1


class WorkerClient:
    """Talks to one worker server at `base_url` (no trailing `/v1`)."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        base_url: str,
        token: Secret | None = None,
        limits: WireLimits = DEFAULT_LIMITS,
        target: str | None = None,
    ) -> None:
        self.http = http
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.limits = limits
        self.target = target

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token.reveal()}"
        return headers

    async def submit(self, batch: BatchRequest) -> WorkerJob:
        body = wire.dumps(batch)
        response = await self._send("POST", "/v1/jobs", self._not_a_worker(), content=body)
        return self._parse(response, WorkerJob)

    async def job(self, job_id: str, wait: float | None = None) -> WorkerJob:
        """The job's state; with `wait`, the server holds the answer until it finishes."""
        params = {"wait": f"{wait:g}"} if wait else None
        timeout = None if not wait else wait + _WAIT_SLACK_S
        response = await self._send(
            "GET", _job_path(job_id), self._lost(job_id), params=params, http_timeout=timeout
        )
        return self._parse(response, WorkerJob)

    async def cancel(self, job_id: str) -> WorkerJob:
        response = await self._send("DELETE", _job_path(job_id), self._lost(job_id))
        return self._parse(response, WorkerJob)

    async def health(self) -> WorkerHealth:
        response = await self._send("GET", "/healthz", self._not_a_worker())
        return self._parse(response, WorkerHealth)

    def _lost(self, job_id: str) -> JobLost:
        return JobLost(
            f"the worker at {self.base_url} does not know job {job_id[:40]} (it restarted, or "
            "the result outlived its --result-ttl)",
            target=self.target,
        )

    def _not_a_worker(self) -> Unavailable:
        return Unavailable(
            f"{self.base_url} answers 404 where a worker server has its routes: is it "
            "`csm-offload serve`? check the target's URL",
            target=self.target,
        )

    async def _send(
        self,
        method: str,
        path: str,
        not_found: ProviderError,
        http_timeout: float | None = None,
        **kwargs: Any,
    ) -> httpapi.Answer:
        total = httpapi.DEFAULT_TOTAL_S if http_timeout is None else http_timeout
        answer = await httpapi.send(
            self.http,
            method,
            self.base_url + path,
            what=f"worker at {self.base_url}",
            target=self.target,
            headers=self._headers(),
            total_s=total,
            max_bytes=self.limits.max_body_bytes,
            http_timeout=None if http_timeout is None else httpx.Timeout(10.0, read=total),
            **kwargs,
        )
        error = httpapi.error_for_status(
            answer.status,
            answer.headers,
            answer.body,
            f"worker at {self.base_url}",
            self.target,
            not_found=not_found,
            reason=answer.reason,
        )
        if error is not None and answer.status in (401, 403):
            raise Unavailable(f"{error} (check the worker token)", target=self.target)
        if error is not None:
            raise error
        return answer

    def _parse(self, answer: httpapi.Answer, cls: type) -> Any:
        try:
            return wire.loads(answer.body, cls, self.limits)
        except WireError as exc:
            raise TransientError(
                f"worker at {self.base_url} sent a malformed answer: {exc}", target=self.target
            ) from None


def _job_path(job_id: str) -> str:
    # An id is the server's, but it travels through a journal: it never reshapes the path.
    return f"/v1/jobs/{urllib.parse.quote(job_id, safe='')}"
