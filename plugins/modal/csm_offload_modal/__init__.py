"""csm-offload provider for the csm-offload worker deployed as a Modal app (`app.py`).

The app's web endpoint follows Modal's job-queue pattern (see `protocol`): `submit` posts a wire
`BatchRequest` and gets the spawned call's id, `poll` asks for it (202 pending, 200 done, 404
expired, 500 failed), behind Modal's proxy auth (`Modal-Key`/`Modal-Secret`). This module needs
neither `modal` nor `fastapi`: only the app does.
"""

from __future__ import annotations

import time

import httpx

from csm_offload import (
    Audio,
    BatchRequest,
    CostEstimate,
    Health,
    JobHandle,
    JobLost,
    JobStatus,
    PriceTable,
    ProviderError,
    ProviderInfo,
    ProviderLimits,
    RateLimited,
    Rejected,
    SpeechRequest,
    Target,
    hookimpl,
    wire,
)
from csm_offload.batches import check_batch
from csm_offload.results import result_audio

from . import answers, api, cost, protocol
from .settings import ModalSettings

__all__ = ["KIND", "PRICES", "ModalSettings", "actual_cost"]

KIND = "modal"
#: Modal's per-second GPU prices (CPU and memory are billed on top and left out here).
#: L40S is $1.9512/h as listed in May 2026; the others are Modal's June 2026 figures.
PRICES = PriceTable(
    date="2026-06-01",
    usd_per_second={
        "T4": 0.000164,
        "L4": 0.000222,
        "L40S": 0.000542,
        "A100 80GB": 0.000694,
        "H100": 0.001097,
    },
    source="https://modal.com/pricing",
    billing="per second of container time (cold start and scaledown_window included)",
)
DEFAULT_GPU = "A100 80GB"
#: Modal publishes no request-rate limit for web endpoints or spawns: the runner learns one
#: from 429s if it ever meets one. Results of a spawned call are kept 7 days.
LIMITS = ProviderLimits(
    max_batch=16,
    max_text_chars=5_000,
    max_request_bytes=protocol.MAX_BODY_BYTES,
    max_response_bytes=api.MAX_RESPONSE_BYTES,
    result_ttl_s=7 * 24 * 3600,
)


@hookimpl
def provider_info() -> ProviderInfo:
    return ProviderInfo(
        kind=KIND,
        description="Modal web endpoint that spawns the csm-offload GPU function",
        settings_type=ModalSettings,
        prices=PRICES,
        limits=LIMITS,
        remote=True,
        quality="csm",
        default_gpu=DEFAULT_GPU,
    )


@hookimpl
def estimate_cost(target: Target, batch: list[SpeechRequest]) -> CostEstimate:
    return cost.estimate(target, batch, PRICES, DEFAULT_GPU, api.settings_of(target))


def actual_cost(target: Target, status: JobStatus) -> float | None:
    """USD a finished job cost (its measured `exec_ms` x the target's price)."""
    return cost.actual_cost(target, status, PRICES, DEFAULT_GPU)


@hookimpl
async def health(target: Target, http: httpx.AsyncClient) -> Health:
    what = "Modal health"
    try:
        answer = await api.send(target, http, "GET", protocol.HEALTH, what)
        api.check(answer, what, target.name, api.no_endpoint(what, target.name))
        return answers.health_of(answer, target.name, target.gpu or DEFAULT_GPU)
    except RateLimited:
        raise  # back-pressure says nothing about the app: the last answer stands
    except ProviderError as exc:
        return Health(ok=False, detail=str(exc))


def _encode_batch(target: Target, batch: list[SpeechRequest]) -> bytes:
    """The job body, once the batch is known to fit the endpoint (else a typed error)."""
    check_batch(batch, LIMITS, target.name, "Modal targets")
    body = wire.dumps(BatchRequest(tuple(batch)))
    if len(body) > protocol.MAX_BODY_BYTES:
        raise Rejected(
            f"the job body is {len(body) / 1e6:.1f} MB, over the endpoint's "
            f"{protocol.MAX_BODY_BYTES // 2**20} MiB: send fewer requests per job (lower "
            "max_batch) or shorter context audio",
            target=target.name,
        )
    return body


@hookimpl
async def submit(target: Target, batch: list[SpeechRequest], http: httpx.AsyncClient) -> JobHandle:
    body, what, submitted_at = _encode_batch(target, batch), "Modal submit", time.time()
    answer = await api.send(target, http, "POST", protocol.JOBS, what, content=body)
    api.check(answer, what, target.name, api.no_endpoint(what, target.name))
    call_id = answers.call_id_of(answer, target.name)
    return JobHandle(target.name, call_id, tuple(r.id for r in batch), submitted_at)


def _lost(target: Target, handle: JobHandle) -> JobLost:
    return JobLost(
        f"Modal no longer has call {handle.job_id} (its result expired after 7 days, or the "
        "app was redeployed elsewhere)",
        target=target.name,
    )


def _call_path(target: Target, handle: JobHandle, action: str = "") -> str:
    if not protocol.is_call_id(handle.job_id):
        raise _lost(target, handle)  # never put a foreign id into a URL path
    return protocol.job_path(handle.job_id, action)


@hookimpl
async def poll(target: Target, handle: JobHandle, http: httpx.AsyncClient) -> JobStatus:
    what = "Modal status"
    answer = await api.send(target, http, "GET", _call_path(target, handle), what)
    failed = answers.failed_call(answer)
    if failed is not None:
        return failed
    api.check(answer, what, target.name, _lost(target, handle))
    return answers.job_status(answer, handle.request_ids, target.name)


@hookimpl
async def decode(target: Target, status: JobStatus, http: httpx.AsyncClient) -> list[Audio]:
    api.settings_of(target)
    return [await result_audio(result, http) for result in status.results]


@hookimpl
async def cancel(target: Target, handle: JobHandle, http: httpx.AsyncClient) -> None:
    what = "Modal cancel"
    try:
        path = _call_path(target, handle, "cancel")
        answer = await api.send(target, http, "POST", path, what, content=b"{}")
        api.check(answer, what, target.name, _lost(target, handle))
    except JobLost:
        return  # already gone: cancelling it is done
