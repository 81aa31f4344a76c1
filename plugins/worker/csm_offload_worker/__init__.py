"""csm-offload provider for worker servers (`csm-offload serve`) on GPU boxes you own.

A target is a server's URL and its bearer token; a fleet is a list of targets, which the router
orders by the `usd_per_hour` you give each. Every call goes through the core's `WorkerClient`,
and the job lifecycle is the core's `worker_jobs`, shared with the Thunder provider (which adds
only how it finds a VM's URL). See docs/worker-target.md.
"""

from __future__ import annotations

import httpx

from csm_offload import (
    Audio,
    CostEstimate,
    Health,
    JobHandle,
    JobStatus,
    PriceTable,
    ProviderError,
    ProviderInfo,
    RateLimited,
    SpeechRequest,
    Target,
    Unavailable,
    hookimpl,
)
from csm_offload import worker_jobs as jobs
from csm_offload.results import result_audio
from csm_offload.worker_client import WorkerClient

from . import cost
from .settings import WorkerSettings

__all__ = ["DEFAULT_GPU", "KIND", "LIMITS", "PRICES", "WorkerSettings"]

KIND = "worker"
#: What `gpu` is when a target names none. The core prices a target by its GPU in the table
#: unless it sets its own price; this one row makes an unpriced box $0 (said in every estimate)
#: instead of unusable. A target that names its GPU is priced by its own usd_per_hour.
DEFAULT_GPU = "own GPU"
PRICES = PriceTable(
    date="2026-11-24",
    usd_per_second={DEFAULT_GPU: 0.0},
    source="your own hardware: no price list; set usd_per_hour on each target",
    billing="whatever the box costs you; priced at the target's usd_per_hour, else $0",
)
#: The worker server's defaults, as for every target of a worker server.
LIMITS = jobs.LIMITS


@hookimpl
def provider_info() -> ProviderInfo:
    return ProviderInfo(
        kind=KIND,
        description=(
            "csm-offload worker server (`csm-offload serve`) on a GPU box you own, priced at "
            "the target's usd_per_hour ($0 when unset)"
        ),
        settings_type=WorkerSettings,
        prices=PRICES,
        limits=LIMITS,
        remote=True,
        quality="csm",
        default_gpu=DEFAULT_GPU,
    )


def _settings(target: Target) -> WorkerSettings:
    if not isinstance(target.settings, WorkerSettings):
        raise Unavailable(
            f"target {target.name!r} has no worker settings (got {type(target.settings).__name__})",
            target=target.name,
        )
    return target.settings


def _client(target: Target, http: httpx.AsyncClient) -> WorkerClient:
    """The one client for the target's server; its token goes to `url` and nowhere else."""
    settings = _settings(target)
    return WorkerClient(http, settings.url, settings.worker_token, target=target.name)


@hookimpl
def estimate_cost(target: Target, batch: list[SpeechRequest]) -> CostEstimate:
    return cost.estimate(target, batch, _settings(target))


def _price_note(target: Target) -> str:
    price = cost.price_of(target)
    if price is None:
        return "no usd_per_hour set: priced at $0"
    return f"priced at ${price * 3600:.4g}/h"


@hookimpl
async def health(target: Target, http: httpx.AsyncClient) -> Health:
    try:
        found = await _client(target, http).health()
    except RateLimited:
        raise  # back-pressure says nothing about the box: the last answer stands
    except ProviderError as exc:
        url = _settings(target).url
        why = f"is `csm-offload serve` running at {url}, and reachable from this machine?"
        return Health(ok=False, detail=f"{exc}; {why}")
    return jobs.worker_health(found, note=_price_note(target))


@hookimpl
async def submit(target: Target, batch: list[SpeechRequest], http: httpx.AsyncClient) -> JobHandle:
    return await jobs.submit_job(_client(target, http), target, batch)


@hookimpl
async def poll(target: Target, handle: JobHandle, http: httpx.AsyncClient) -> JobStatus:
    wait_s = _settings(target).poll_wait_s
    return await jobs.poll_job(_client(target, http), target, handle, wait_s)


@hookimpl
async def decode(target: Target, status: JobStatus, http: httpx.AsyncClient) -> list[Audio]:
    _settings(target)
    return [await result_audio(result, http) for result in status.results]


@hookimpl
async def cancel(target: Target, handle: JobHandle, http: httpx.AsyncClient) -> None:
    await jobs.cancel_job(_client(target, http), handle)
