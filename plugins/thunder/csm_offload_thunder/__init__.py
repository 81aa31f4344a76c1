"""csm-offload provider for a worker server (`csm-offload serve`) on a Thunder Compute VM.

Every call to the server goes through the core's `WorkerClient` with the server's bearer token;
Thunder's own API is asked (with `TNR_API_TOKEN`) only when a target names an instance instead
of a URL, to find the instance's state and forwarded URL. See docs/thunder.md.
"""

from __future__ import annotations

import attrs
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
    worker_jobs,
)
from csm_offload.batches import check_batch
from csm_offload.results import result_audio
from csm_offload.worker_client import WorkerClient

from . import cost, locate
from .server_health import worker_health
from .settings import ThunderSettings

__all__ = ["KIND", "LIMITS", "PRICES", "ThunderSettings"]

KIND = "thunder"
#: Thunder Compute on-demand VM prices (USD per hour), June 2026, converted to per second.
_HOURLY = {"A100 80GB": 0.78, "H100": 1.38}
PRICES = PriceTable(
    date="2026-06-01",
    usd_per_second={gpu: usd / 3600 for gpu, usd in _HOURLY.items()},
    source="https://www.thundercompute.com/pricing (A100 in prototyping mode)",
    billing="per minute while the VM exists, working or idle (there is no per-job price)",
)
DEFAULT_GPU = "A100 80GB"
#: JobHandle.extra key: the uuid of the instance a job went to (targets named by instance).
EXTRA_UUID = "instance_uuid"
#: The worker server's defaults, as for every target of a worker server.
LIMITS = worker_jobs.LIMITS


@hookimpl
def provider_info() -> ProviderInfo:
    return ProviderInfo(
        kind=KIND,
        description=(
            "csm-offload worker server on a Thunder Compute GPU VM; the VM bills per minute "
            "while it exists, whether or not it is generating"
        ),
        settings_type=ThunderSettings,
        prices=PRICES,
        limits=LIMITS,
        remote=True,
        quality="csm",
        default_gpu=DEFAULT_GPU,
    )


def _settings(target: Target) -> ThunderSettings:
    if not isinstance(target.settings, ThunderSettings):
        raise Unavailable(
            f"target {target.name!r} has no Thunder settings "
            f"(got {type(target.settings).__name__})",
            target=target.name,
        )
    return target.settings


@hookimpl
def estimate_cost(target: Target, batch: list[SpeechRequest]) -> CostEstimate:
    return cost.estimate(target, batch, _settings(target), PRICES, DEFAULT_GPU)


# --- health ---------------------------------------------------------------------------------


@hookimpl
async def health(target: Target, http: httpx.AsyncClient) -> Health:
    settings = _settings(target)
    try:
        prefix, why = await _instance_state(target, settings, http)
    except RateLimited:
        raise  # back-pressure says nothing about the VM: the last answer stands
    except ProviderError as exc:
        return Health(ok=False, detail=str(exc))
    if why is not None:
        return Health(ok=False, detail=why)
    try:
        client, _uuid = await _client(target, http)
        found = await client.health()
    except RateLimited:
        raise
    except ProviderError as exc:
        return Health(ok=False, detail=f"{prefix}{exc}; {_is_it_serving(settings)}")
    return worker_health(found, prefix)


async def _instance_state(
    target: Target, settings: ThunderSettings, http: httpx.AsyncClient
) -> tuple[str, str | None]:
    """(how the instance is described, why it cannot serve or None); ("", None) for a target
    that names no instance."""
    if settings.instance_id is None:
        return "", None
    instance = await locate.look_up(target, settings, http)
    return f"{instance.describe()}; ", locate.problem(instance, settings)


def _is_it_serving(settings: ThunderSettings) -> str:
    forwarded = f" and port {settings.port} forwarded" if settings.url is None else ""
    return f"is `csm-offload serve` running on the VM{forwarded}?"


# --- submit / poll / decode / cancel --------------------------------------------------------


async def _client(
    target: Target, http: httpx.AsyncClient, handle: JobHandle | None = None
) -> tuple[WorkerClient, str | None]:
    """The client for the target's worker server, and the uuid of the instance it runs on
    (None when the target gives `url`). A job's handle keeps the uuid its job went to: the
    job is there, even if the instance id now names another VM."""
    settings = _settings(target)
    uuid = None
    if settings.url is None:
        uuid = handle.extra.get(EXTRA_UUID) if handle is not None else None
        uuid = uuid or await locate.instance_uuid(target, settings, http)
    url = locate.url_for(target, settings, uuid)
    return WorkerClient(http, url, settings.worker_token, target=target.name), uuid


@hookimpl
async def submit(target: Target, batch: list[SpeechRequest], http: httpx.AsyncClient) -> JobHandle:
    # Checked before the client, which may ask Thunder's API where the instance is.
    check_batch(batch, LIMITS, target.name, "a worker server's targets")
    client, uuid = await _client(target, http)
    handle = await worker_jobs.submit_job(client, target, batch)
    return attrs.evolve(handle, extra={EXTRA_UUID: uuid}) if uuid else handle


@hookimpl
async def poll(target: Target, handle: JobHandle, http: httpx.AsyncClient) -> JobStatus:
    settings = _settings(target)
    if not worker_jobs.JOB_ID.fullmatch(handle.job_id):
        raise worker_jobs.lost(target, handle)  # before any call to Thunder's API
    client, _uuid = await _client(target, http, handle)
    return await worker_jobs.poll_job(client, target, handle, settings.poll_wait_s)


@hookimpl
async def decode(target: Target, status: JobStatus, http: httpx.AsyncClient) -> list[Audio]:
    _settings(target)
    return [await result_audio(result, http) for result in status.results]


@hookimpl
async def cancel(target: Target, handle: JobHandle, http: httpx.AsyncClient) -> None:
    if not worker_jobs.JOB_ID.fullmatch(handle.job_id):
        return  # no such job could have been made: nothing to cancel
    client, _uuid = await _client(target, http, handle)
    await worker_jobs.cancel_job(client, handle)
