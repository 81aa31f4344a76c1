"""csm-offload provider: an offline eSpeak NG draft voice, free, for previews and fallback.

eSpeak NG comes from the `espeakng-loader` wheel (library and data, no system package) and runs
in this process on one dedicated thread; see `engine` for why.
"""

from __future__ import annotations

import asyncio
from typing import Any

from csm_offload import (
    Audio,
    CostEstimate,
    Health,
    JobHandle,
    JobLost,
    JobStatus,
    PriceTable,
    ProviderInfo,
    ProviderLimits,
    Rejected,
    SpeechRequest,
    Target,
    hookimpl,
)
from csm_offload.results import result_audio

from . import jobs
from .engine import shared_engine
from .library import EspeakLoadError
from .settings import EspeakSettings

__all__ = ["KIND", "EspeakSettings"]

KIND = "espeak"
PRICES = PriceTable(
    date="2026-06-01", usd_per_second={}, source="runs offline on this machine", billing="free"
)
#: About ten minutes of speech at the default rate; longer texts must be split into chunks.
MAX_TEXT_CHARS = 10_000
MAX_BATCH = 8
#: Cost basis shown in plans: why the figure is zero.
COST_BASIS = "eSpeak NG runs offline on this machine's CPU: no GPU, no fee"

_jobs = jobs.JobTable()


@hookimpl
def provider_info() -> ProviderInfo:
    return ProviderInfo(
        kind=KIND,
        description="eSpeak NG draft voice (robotic, offline, free)",
        settings_type=EspeakSettings,
        prices=PRICES,
        limits=ProviderLimits(max_batch=MAX_BATCH, max_text_chars=MAX_TEXT_CHARS),
        remote=False,
        quality="draft",
        default_gpu=None,
    )


@hookimpl
def estimate_cost(target: Target, batch: list[SpeechRequest]) -> CostEstimate:
    return CostEstimate(target=target.name, usd=0.0, gpu_seconds=0.0, basis=COST_BASIS)


def _settings(target: Target) -> EspeakSettings:
    return target.settings if isinstance(target.settings, EspeakSettings) else EspeakSettings()


@hookimpl
async def health(target: Target, http: Any) -> Health:
    """Ok when the library and its data load and the voice with every variant speaks."""
    depth = _jobs.unfinished()  # before waiting behind those jobs for the engine thread
    try:
        detail = await asyncio.wrap_future(
            shared_engine().run(shared_engine().check, _settings(target))
        )
    except (EspeakLoadError, ValueError, RuntimeError) as exc:
        return Health(ok=False, detail=str(exc))
    return Health(ok=True, detail=detail, queue_depth=depth, workers=1)


def _check_request(request: SpeechRequest) -> None:
    if not request.text.strip():
        raise Rejected(
            f"request {request.id} has empty text: give it at least one word to speak "
            "(blank chunks should be dropped before synthesis)"
        )
    if len(request.text) > MAX_TEXT_CHARS:
        raise Rejected(
            f"request {request.id} has {len(request.text)} characters, over eSpeak's limit of "
            f"{MAX_TEXT_CHARS} per request: split the text into shorter chunks"
        )
    if request.max_audio_length_ms <= 0:
        raise Rejected(f"request {request.id}: max_audio_length_ms must be positive")


@hookimpl
async def submit(target: Target, batch: list[SpeechRequest], http: Any) -> JobHandle:
    """Queue the batch on the engine thread; returns at once."""
    requests = tuple(batch)
    if not 1 <= len(requests) <= MAX_BATCH:
        raise Rejected(
            f"an eSpeak job takes 1 to {MAX_BATCH} requests, got {len(requests)}: "
            "split the batch (a target's max_batch bounds it)"
        )
    for request in requests:
        _check_request(request)
    job_id = _jobs.submit(shared_engine(), requests, _settings(target))
    return JobHandle(target=target.name, job_id=job_id, request_ids=[r.id for r in requests])


@hookimpl
async def poll(target: Target, handle: JobHandle, http: Any) -> JobStatus:
    job = _jobs.get(handle.job_id)
    if job is None:
        raise JobLost(
            f"eSpeak job {handle.job_id} is not known to this process (it ran in one that has "
            "ended, or finished long ago); submit it again",
            target=target.name,
        )
    found = jobs.status(job)
    if found.state.finished:
        # The answer now lives in the runner's hands (and then in its journal): holding the
        # audio here too would make memory grow with the length of the text. A later poll of
        # this job gets JobLost, and a free local job is simply made again.
        _jobs.forget(handle.job_id)
    return found


@hookimpl
async def decode(target: Target, status: JobStatus, http: Any) -> list[Audio]:
    return [await result_audio(result, http) for result in status.results]


@hookimpl
async def cancel(target: Target, handle: JobHandle, http: Any) -> None:
    _jobs.cancel(handle.job_id)
