"""csm-offload provider for Replicate: predictions of the csm-offload Cog model
(plugins/replicate/cog), by model version or through a deployment.

The prediction's input is `{"batch": "<wire BatchRequest JSON>"}` and its output the wire
`BatchResponse`, returned by the model as a file (an https:// file URL, or a data: URL).
Short jobs are created with `Prefer: wait=N`, so their answer usually comes back on the create
call; the rest are polled on `GET /v1/predictions/{id}`. See docs/replicate.md.
"""

from __future__ import annotations

import json
import time
from typing import Any

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
    ProviderError,
    ProviderInfo,
    ProviderLimits,
    RateLimit,
    RateLimited,
    Rejected,
    SpeechRequest,
    Target,
    TransientError,
    Unavailable,
    hookimpl,
    wire,
)
from csm_offload.batches import check_batch
from csm_offload.results import result_audio

from . import cost, output, prediction
from . import health as judged
from .api import Caller
from .cost import DEFAULT_GPU, PRICES
from .prediction import Prediction
from .settings import ReplicateSettings

__all__ = ["KIND", "LIMITS", "PRICES", "ReplicateSettings", "actual_cost"]

KIND = "replicate"
#: Replicate documents no bound on a JSON input; this one is ours (context audio travels inline,
#: and every read of the prediction echoes its input back).
MAX_INPUT_BYTES = 10 * 1024 * 1024
LIMITS = ProviderLimits(
    max_batch=16,
    max_text_chars=5_000,
    max_request_bytes=MAX_INPUT_BYTES,
    max_response_bytes=wire.DEFAULT_LIMITS.max_body_bytes,
    # API predictions keep their input, output and output files for an hour.
    result_ttl_s=3600.0,
    # Published: 600 creates a minute, 3000 a minute for every other route.
    submit_rate=RateLimit(600, 60.0),
    poll_rate=RateLimit(3000, 60.0),
)
#: JobHandle.extra key: a prediction that was already over when the create call answered.
EXTRA_PREDICTION = "prediction"


@hookimpl
def provider_info() -> ProviderInfo:
    return ProviderInfo(
        kind=KIND,
        description="Replicate model version or deployment running the csm-offload Cog model",
        settings_type=ReplicateSettings,
        prices=PRICES,
        limits=LIMITS,
        remote=True,
        quality="csm",
        default_gpu=DEFAULT_GPU,
    )


def _settings(target: Target) -> ReplicateSettings:
    if not isinstance(target.settings, ReplicateSettings):
        raise Unavailable(
            f"target {target.name!r} has no Replicate settings "
            f"(got {type(target.settings).__name__})",
            target=target.name,
        )
    return target.settings


def _caller(target: Target, settings: ReplicateSettings) -> Caller:
    return Caller(settings.api_token.reveal(), target.name, settings.call_total_s)


def _missing(target: Target, settings: ReplicateSettings) -> Unavailable:
    """What a 404 on create or health means: the version or deployment is not there."""
    label = settings.model().label
    return Unavailable(
        f"Replicate has no {label} that this token can see; check the target's version or "
        "deployment",
        target=target.name,
    )


@hookimpl
def estimate_cost(target: Target, batch: list[SpeechRequest]) -> CostEstimate:
    settings = _settings(target)
    return cost.estimate(
        target, batch, settings.seconds_per_char, settings.job_overhead_s, settings.public_model
    )


def actual_cost(target: Target, status: JobStatus) -> float | None:
    """USD a finished prediction cost (`predict_time` x the target's price)."""
    return cost.actual_cost(target, status)


@hookimpl
async def health(target: Target, http: httpx.AsyncClient) -> Health:
    settings = _settings(target)
    url, missing = settings.routes().health, _missing(target, settings)
    try:
        data = await _caller(target, settings).call(
            http, "GET", url, "Replicate health", not_found=missing
        )
    except RateLimited:
        raise  # back-pressure says nothing about the model: the last answer stands
    except ProviderError as exc:
        return Health(ok=False, detail=str(exc))
    return judged.judge(data, settings.model(), target.gpu)


def create_body(settings: ReplicateSettings, batch: list[SpeechRequest]) -> bytes:
    """`{"version": ..., "input": {"batch": "<wire JSON>"}}` (a deployment sends no version)."""
    body: dict[str, Any] = {"input": {"batch": wire.dumps(BatchRequest(tuple(batch))).decode()}}
    model = settings.model()
    if model.version is not None:
        body["version"] = model.version
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


@hookimpl
async def submit(target: Target, batch: list[SpeechRequest], http: httpx.AsyncClient) -> JobHandle:
    settings = _settings(target)
    check_batch(batch, LIMITS, target.name, "Replicate targets")
    body = create_body(settings, batch)
    if len(body) > MAX_INPUT_BYTES:
        raise Rejected(
            f"the prediction input is {len(body) / 1e6:.1f} MB, over our {MAX_INPUT_BYTES} bytes "
            "for Replicate; send fewer requests per job (max_batch) or shorter context audio",
            target=target.name,
        )
    predicted = cost.predicted_seconds(batch, settings.seconds_per_char, settings.job_overhead_s)
    short = settings.use_wait and predicted <= settings.wait_s
    submitted_at = time.time()
    data = await _caller(target, settings).call(
        http,
        "POST",
        settings.routes().create,
        "Replicate create",
        content=body,
        wait_s=settings.wait_s if short else None,
        not_found=_missing(target, settings),
    )
    found = prediction.parse(data, target.name)
    extra: dict[str, str] = {}
    if found.state.finished:
        # Over already (the wait brought it): poll reads it from here, with no API call.
        extra[EXTRA_PREDICTION] = json.dumps(prediction.kept(data), ensure_ascii=False)
    ids = tuple(request.id for request in batch)
    return JobHandle(target.name, found.id, ids, submitted_at, extra, answered=bool(extra))


def _kept(handle: JobHandle) -> dict[str, Any] | None:
    """The finished prediction a handle keeps; None if absent or unreadable (a damaged journal
    row), and the prediction is then asked for again."""
    raw = handle.extra.get(EXTRA_PREDICTION)
    if raw is None:
        return None
    try:
        data = json.loads(raw)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


@hookimpl
async def poll(target: Target, handle: JobHandle, http: httpx.AsyncClient) -> JobStatus:
    settings = _settings(target)
    data = _kept(handle)
    if data is None:
        lost = JobLost(f"Replicate has no prediction {handle.job_id}", target=target.name)
        url = settings.routes().prediction(handle.job_id)
        data = await _caller(target, settings).call(
            http, "GET", url, "Replicate get", not_found=lost
        )
    found = prediction.parse(data, target.name)
    if found.id != handle.job_id:
        message = f"Replicate answered about prediction {found.id}, not {handle.job_id}"
        raise TransientError(message, target=target.name)
    return await _status(found, handle, http, target, settings)


async def _status(
    found: Prediction,
    handle: JobHandle,
    http: httpx.AsyncClient,
    target: Target,
    settings: ReplicateSettings,
) -> JobStatus:
    times = {"queue_ms": found.queue_ms, "exec_ms": found.predict_ms}
    if found.state is not JobState.COMPLETED:
        return JobStatus(found.state, error=found.error, **times)
    if found.data_removed:
        error = "Replicate has removed this prediction's output (API predictions keep it an hour)"
        return JobStatus(JobState.FAILED, error=error, **times)
    try:
        response = await output.response_of(found.output, http, target.name, settings.call_total_s)
        results = output.in_request_order(response.results, handle.request_ids)
    except output.Unusable as exc:
        # Over, and paid for, but unusable: failed, with its time kept so its cost is recorded.
        return JobStatus(JobState.FAILED, error=prediction.error_text(str(exc)), **times)
    return JobStatus(JobState.COMPLETED, results=results, **times)


@hookimpl
async def decode(target: Target, status: JobStatus, http: httpx.AsyncClient) -> list[Audio]:
    _settings(target)
    return [await result_audio(result, http) for result in status.results]


@hookimpl
async def cancel(target: Target, handle: JobHandle, http: httpx.AsyncClient) -> None:
    settings = _settings(target)
    if _kept(handle) is not None:
        return  # it was over when the create call answered: nothing left to cancel
    gone = JobLost(f"Replicate has no prediction {handle.job_id}", target=target.name)
    url = settings.routes().cancel(handle.job_id)
    try:
        await _caller(target, settings).call(http, "POST", url, "Replicate cancel", not_found=gone)
    except JobLost:
        return  # already gone: cancelling it is done
