"""csm-offload provider that runs CSM in this process (transformers), and the worker server.

torch is imported lazily, so `csm-offload plugins` works where torch is not installed.
"""

from __future__ import annotations

from typing import Any

from csm_offload import (
    Audio,
    CostEstimate,
    Health,
    JobHandle,
    JobStatus,
    PriceTable,
    ProviderInfo,
    ProviderLimits,
    SpeechRequest,
    hookimpl,
)
from csm_offload.results import result_audio

from .provider import RUNTIME, LocalCsmSettings, estimate
from .provider import health as _health

__all__ = ["KIND", "LocalCsmSettings"]

KIND = "local_csm"
PRICES = PriceTable(
    date="2026-06-01",
    usd_per_second={},
    source="this machine: set usd_per_hour on the target to price its time",
    billing="your own hardware",
)


@hookimpl
def provider_info() -> ProviderInfo:
    return ProviderInfo(
        kind=KIND,
        description="CSM on this machine through transformers (CUDA, MPS or CPU)",
        settings_type=LocalCsmSettings,
        prices=PRICES,
        limits=ProviderLimits(max_batch=8, max_text_chars=5_000),
        remote=False,
        quality="csm",
        default_gpu=None,
    )


@hookimpl
def estimate_cost(target: Any, batch: list[SpeechRequest]) -> CostEstimate:
    """This machine's time (measured speed) at the target's price, which defaults to 0."""
    return estimate(target, batch, target.price_per_second(provider_info()) or 0.0)


@hookimpl
async def health(target: Any, http: Any) -> Health:
    return await _health(target.settings)


@hookimpl
async def submit(target: Any, batch: list[SpeechRequest], http: Any) -> JobHandle:
    job_id = RUNTIME.submit(target.settings, list(batch))
    return JobHandle(target.name, job_id, tuple(request.id for request in batch))


@hookimpl
async def poll(target: Any, handle: JobHandle, http: Any) -> JobStatus:
    return RUNTIME.status(handle.job_id)


@hookimpl
async def decode(target: Any, status: JobStatus, http: Any) -> list[Audio]:
    return [await result_audio(result, http) for result in status.results]


@hookimpl
async def cancel(target: Any, handle: JobHandle, http: Any) -> None:
    RUNTIME.cancel(handle.job_id)


@hookimpl
def register_commands(cli: Any) -> None:
    from .command import serve_command

    cli.add_command(serve_command)
