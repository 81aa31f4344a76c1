"""csm-offload provider for RunPod serverless endpoints running the csm-offload handler.

The job body is `{"input": <wire BatchRequest>}` and the handler's output is a wire
`BatchResponse`. Short jobs go to `/runsync?wait=` so their audio comes back on the submitting
request; the rest go to `/run` and are polled on `/status/{id}`.
"""

from __future__ import annotations

import json
import math
import time
from typing import Any

import attrs
import httpx

from csm_offload import (
    Audio,
    BatchRequest,
    CostEstimate,
    Health,
    JobHandle,
    JobLost,
    JobState,
    JobStatus,
    PriceTable,
    ProviderError,
    ProviderInfo,
    ProviderLimits,
    RateLimit,
    RateLimited,
    Rejected,
    Secret,
    SpeechRequest,
    Target,
    Unavailable,
    hookimpl,
    wire,
)
from csm_offload.batches import check_batch
from csm_offload.results import result_audio

from . import api, cost
from .endpoint import DEFAULT_BASE_URL, Endpoint, resolve
from .errors import URL_OUTPUTS_HINT
from .status import job_id_of, judge_health, parse_health_counts, parse_status

KIND = "runpod"
#: RunPod serverless per-second prices for flex workers, as published in June 2026.
PRICES = PriceTable(
    date="2026-06-01",
    usd_per_second={
        "L4": 0.00019,
        "A40": 0.00034,
        "L40S": 0.00053,
        "A100 80GB": 0.00076,
        "H100": 0.00116,
        "H200": 0.00155,
    },
    source="https://www.runpod.io/pricing (serverless, flex)",
    billing="per second of worker time",
)
LIMITS = ProviderLimits(
    max_batch=16,
    max_text_chars=5_000,
    max_request_bytes=api.RUN_MAX_BYTES,  # /run; /runsync takes 20 MB
    max_response_bytes=20 * 1024 * 1024,
    result_ttl_s=30 * 60,
    # Short jobs go to /runsync (2000 requests per 10 s); /run allows 1000 per 10 s, which the
    # runner learns from 429s if long jobs ever come that fast. /status: 2000 per 10 s.
    submit_rate=RateLimit(2000, 10.0),
    poll_rate=RateLimit(2000, 10.0),
)
DEFAULT_GPU = "A100 80GB"
#: JobHandle.extra keys: which route took the job, and a finished /runsync answer (raw JSON).
EXTRA_ROUTE = "route"
EXTRA_STATUS = "status"


def _as_secret(value: Any) -> Secret:
    return value if isinstance(value, Secret) else Secret(str(value))


def _non_negative(_instance: Any, attribute: attrs.Attribute, value: float) -> None:
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{attribute.name}: must be a finite number >= 0, got {value}")


@attrs.frozen
class RunPodSettings:
    """A RunPod serverless endpoint. See docs/providers.md for every key."""

    api_key: Secret = attrs.field(converter=_as_secret)
    #: `https://api.runpod.ai/v2/<id>`; the seed's `.../<id>/run` form is accepted too.
    endpoint_url: str | None = None
    #: The endpoint id alone (joined to `base_url`), when `endpoint_url` is not given.
    endpoint_id: str | None = None
    base_url: str = DEFAULT_BASE_URL
    #: Send short jobs to /runsync, which returns their audio on the same request.
    use_runsync: bool = True
    #: Jobs predicted to take at most this many worker seconds are short.
    runsync_max_s: float = attrs.field(default=120.0, validator=_non_negative)
    #: Worker seconds per character of text, for estimates and the runsync choice.
    seconds_per_char: float = attrs.field(default=0.05, validator=_non_negative)
    #: Worker seconds every job costs on top of its text (decoding, encoding, upload).
    job_overhead_s: float = attrs.field(default=1.0, validator=_non_negative)
    #: A job queued longer than this makes `poll` look at /health: crash-looping workers
    #: leave jobs queued forever, and the runner should fail over instead of waiting.
    stuck_after_s: float = attrs.field(default=120.0, validator=_non_negative)
    #: Longest a /runsync request is held open (RunPod allows 300 s); lower it behind a proxy
    #: that cuts idle connections sooner.
    runsync_max_wait_s: float = attrs.field(default=300.0, validator=_non_negative)
    #: Seconds any call except a /runsync long-poll may take, its whole body included.
    call_total_s: float = attrs.field(default=api.CALL_TOTAL_S, validator=_non_negative)

    def __attrs_post_init__(self) -> None:
        if not self.api_key:
            raise ValueError("api_key: empty; set RUNPOD_API_KEY or the target's api_key")
        self.endpoint()

    def endpoint(self) -> Endpoint:
        return resolve(self.endpoint_url, self.endpoint_id, self.base_url)


@hookimpl
def provider_info() -> ProviderInfo:
    return ProviderInfo(
        kind=KIND,
        description="RunPod serverless endpoint running the csm-offload worker handler",
        settings_type=RunPodSettings,
        prices=PRICES,
        limits=LIMITS,
        remote=True,
        quality="csm",
        default_gpu=DEFAULT_GPU,
    )


def _settings(target: Target) -> RunPodSettings:
    if not isinstance(target.settings, RunPodSettings):
        raise Unavailable(
            f"target {target.name!r} has no RunPod settings (got {type(target.settings).__name__})",
            target=target.name,
        )
    return target.settings


@hookimpl
def estimate_cost(target: Target, batch: list[SpeechRequest]) -> CostEstimate:
    settings = _settings(target)
    return cost.estimate(
        target, batch, PRICES, DEFAULT_GPU, settings.seconds_per_char, settings.job_overhead_s
    )


def actual_cost(target: Target, status: JobStatus) -> float | None:
    """USD a finished job cost (`executionTime` x the target's price), None when unreported.
    The runner may equally compute `status.exec_ms / 1000 * target.price_per_second(info)`."""
    return cost.actual_cost(target, status, PRICES, DEFAULT_GPU)


# --- health ---------------------------------------------------------------------------------

#: Last queue depth seen per endpoint, to notice a queue that only grows.
_last_queue: dict[str, int] = {}
#: Recent judged health per endpoint, so polls of many stuck jobs ask /health once, not once
#: each. Only answers that were fetched and judged are kept: a failed health call is no
#: evidence about the workers.
_recent_health: dict[str, Health] = {}
_HEALTH_REUSE_S = 5.0


async def _judged_health(
    target: Target, http: httpx.AsyncClient, settings: RunPodSettings
) -> Health:
    """GET /health and judge it; raises the typed error when the call itself fails."""
    endpoint = settings.endpoint()
    data, _raw = await api.call(
        http,
        "GET",
        endpoint.route("health"),
        "health",
        settings.api_key.reveal(),
        target.name,
        total_s=settings.call_total_s,
    )
    counts = parse_health_counts(data, target.name)
    found = judge_health(counts, _last_queue.get(endpoint.url), time.time())
    _last_queue[endpoint.url] = counts.in_queue
    _recent_health[endpoint.url] = found
    return found


@hookimpl
async def health(target: Target, http: httpx.AsyncClient) -> Health:
    settings = _settings(target)
    try:
        return await _judged_health(target, http, settings)
    except RateLimited:
        raise  # back-pressure says nothing about the workers: the last answer stands
    except ProviderError as exc:
        return Health(ok=False, detail=str(exc))


async def _recent(target: Target, http: httpx.AsyncClient, settings: RunPodSettings) -> Health:
    known = _recent_health.get(settings.endpoint().url)
    if known is not None and time.time() - known.checked_at < _HEALTH_REUSE_S:
        return known
    return await _judged_health(target, http, settings)


# --- submit / poll / decode / cancel --------------------------------------------------------


def _choose_route(settings: RunPodSettings, predicted_s: float, size: int, target: str) -> str:
    if size > api.RUNSYNC_MAX_BYTES:
        raise Rejected(
            f"the job body is {size / 1e6:.1f} MB, over RunPod's 20 MB limit for /runsync "
            f"(10 MB for /run); {URL_OUTPUTS_HINT}",
            target=target,
        )
    short = settings.use_runsync and predicted_s <= settings.runsync_max_s
    if short or size > api.RUN_MAX_BYTES:
        return "runsync"
    return "run"


@hookimpl
async def submit(target: Target, batch: list[SpeechRequest], http: httpx.AsyncClient) -> JobHandle:
    settings = _settings(target)
    check_batch(batch, LIMITS, target.name, "RunPod targets")
    body = api.run_body(wire.dumps(BatchRequest(tuple(batch))))
    predicted = cost.predicted_seconds(batch, settings.seconds_per_char, settings.job_overhead_s)
    route = _choose_route(settings, predicted, len(body), target.name)
    endpoint = settings.endpoint()
    params = None
    total_s = settings.call_total_s
    if route == "runsync":
        wait = api.wait_ms(predicted, settings.runsync_max_wait_s)
        params, total_s = {"wait": str(wait)}, api.runsync_total_s(wait)
    submitted_at = time.time()
    data, raw = await api.call(
        http,
        "POST",
        endpoint.route(route),
        route,
        settings.api_key.reveal(),
        target.name,
        content=body,
        params=params,
        total_s=total_s,
    )
    job_id = job_id_of(data, target.name)
    extra = {EXTRA_ROUTE: route}
    request_ids = tuple(r.id for r in batch)
    if route == "runsync" and data.get("status") not in ("IN_QUEUE", "IN_PROGRESS"):
        # The answer is final (often with the audio): keep it, so poll needs no request and a
        # result paid for is never lost, even if RunPod forgets the job a minute later.
        # Malformed answers fail here, not later; the parsed status is kept for the poll
        # that follows at once, so the audio is not decoded from JSON twice.
        _parsed.put(job_id, parse_status(data, request_ids, target.name))
        extra[EXTRA_STATUS] = raw.decode("utf-8")
    answered = EXTRA_STATUS in extra
    return JobHandle(target.name, job_id, request_ids, submitted_at, extra, answered=answered)


class _ParsedAnswers:
    """Finished /runsync answers parsed at submit, waiting for their first poll (bounded:
    a poll that never comes costs nothing but a slot here, and the handle can be re-parsed)."""

    def __init__(self, limit: int = 4096) -> None:
        self.limit = limit
        self._items: dict[str, JobStatus] = {}

    def put(self, job_id: str, status: JobStatus) -> None:
        if len(self._items) >= self.limit:
            self._items.pop(next(iter(self._items)))
        self._items[job_id] = status

    def take(self, job_id: str) -> JobStatus | None:
        return self._items.pop(job_id, None)


_parsed = _ParsedAnswers()


def _inline_status(handle: JobHandle) -> Any:
    """The finished /runsync answer kept on the handle; None if absent or unreadable (a damaged
    journal row), in which case the job is asked for again."""
    inline = handle.extra.get(EXTRA_STATUS)
    if inline is None:
        return None
    try:
        return json.loads(inline)
    except ValueError:
        return None


@hookimpl
async def poll(target: Target, handle: JobHandle, http: httpx.AsyncClient) -> JobStatus:
    settings = _settings(target)
    parsed = _parsed.take(handle.job_id)
    if parsed is not None:
        return parsed
    inline = _inline_status(handle)
    if inline is not None:
        return parse_status(inline, handle.request_ids, target.name)
    endpoint = settings.endpoint()
    data, _raw = await api.call(
        http,
        "GET",
        endpoint.route("status", handle.job_id),
        "status",
        settings.api_key.reveal(),
        target.name,
        total_s=settings.call_total_s,
    )
    status = parse_status(data, handle.request_ids, target.name)
    if status.state is JobState.QUEUED:
        await _check_stuck(target, handle, http, settings)
    return status


async def _check_stuck(
    target: Target,
    handle: JobHandle,
    http: httpx.AsyncClient,
    settings: RunPodSettings,
) -> None:
    waited = time.time() - handle.submitted_at
    if waited < settings.stuck_after_s:
        return
    try:
        found = await _recent(target, http, settings)
    except ProviderError:
        return  # no judgement to act on; the next poll asks again
    if not found.ok:
        raise Unavailable(
            f"job {handle.job_id} has been queued for {waited:.0f} s and the endpoint is "
            f"unhealthy ({found.detail})",
            target=target.name,
        )


@hookimpl
async def decode(target: Target, status: JobStatus, http: httpx.AsyncClient) -> list[Audio]:
    _settings(target)
    return [await result_audio(result, http) for result in status.results]


@hookimpl
async def cancel(target: Target, handle: JobHandle, http: httpx.AsyncClient) -> None:
    settings = _settings(target)
    if _inline_status(handle) is not None:
        return  # finished on /runsync: nothing left to cancel
    endpoint = settings.endpoint()
    try:
        await api.call(
            http,
            "POST",
            endpoint.route("cancel", handle.job_id),
            "cancel",
            settings.api_key.reveal(),
            target.name,
            content=b"",
            total_s=settings.call_total_s,
        )
    except JobLost:
        return  # already gone: cancelling it is done
