"""csm-offload provider for the Acme Speech API (see README.md): the complete, tested example
behind docs/hooks.md. `fake_acme.py` beside this package serves the API on loopback for tests."""

from typing import Any

import attrs
import httpx

from csm_offload import Audio, JobState, JobStatus, Secret, SpeechRequest, hookimpl, httpapi, wire
from csm_offload.errors import JobLost, Rejected, TransientError, WireError
from csm_offload.model import BatchRequest, BatchResponse, CostEstimate, Health, JobHandle
from csm_offload.results import result_audio
from csm_offload.target import PriceTable, ProviderInfo, ProviderLimits, Target

PRICES = PriceTable(date="2026-06-01", usd_per_second={"A100 80GB": 0.0007, "H100": 0.0011})
#: What a GPU missing from the table costs: the most, so that it is never chosen for being cheap.
DEAREST = max(PRICES.usd_per_second.values())
LIMITS = ProviderLimits(max_batch=8, max_text_chars=5_000, max_request_bytes=10_000_000)
#: Acme's job states as the core names them; any other answer is one we cannot read.
STATES = {"queued": JobState.QUEUED, "running": JobState.RUNNING, "done": JobState.COMPLETED}
STATES |= {"failed": JobState.FAILED, "cancelled": JobState.CANCELLED}


@attrs.frozen
class AcmeSettings:
    api_key: Secret
    base_url: str = "https://api.acme.example"
    #: GPU seconds per character of text, measured on an A100.
    seconds_per_char: float = 0.02


@hookimpl
def provider_info() -> ProviderInfo:
    return ProviderInfo(
        kind="acme",
        description="Acme Speech API (the example provider)",
        settings_type=AcmeSettings,
        prices=PRICES,
        limits=LIMITS,  # remote=True is the default: work leaves this machine
        default_gpu="A100 80GB",
    )


@hookimpl
def estimate_cost(target: Target, batch: list[SpeechRequest]) -> CostEstimate:
    seconds = target.settings.seconds_per_char * sum(len(request.text) for request in batch)
    price = target.price_per_second(provider_info())  # the target's override, else the table
    source = f"Acme prices of {PRICES.date}"
    if price is None:  # never free, or the router would pick an unknown GPU first
        price, source = DEAREST, f"{target.gpu} is not in the table: set usd_per_second"
    basis = f"{seconds:.2f} GPU s x ${price}/s ({source})"
    return CostEstimate(target=target.name, usd=seconds * price, gpu_seconds=seconds, basis=basis)


async def _call(target: Target, http: httpx.AsyncClient, method: str, path: str, **kw: Any) -> Any:
    """One call, bounded in time and size, its status mapped to typed errors. `kw` may hold
    `content` (the body) and `not_found` (the error a 404 means to the caller)."""
    what, key = f"Acme {method} {path}", target.settings.api_key.reveal()
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    url = target.settings.base_url.rstrip("/") + path
    answer = await httpapi.send(
        http, method, url, what=what, target=target.name, headers=headers, content=kw.get("content")
    )
    if key:  # a server may echo our headers back: the key must never reach a message
        answer = attrs.evolve(answer, body=answer.body.replace(key.encode(), b"********"))
    httpapi.raise_for_status(answer, what, target.name, not_found=kw.get("not_found"))
    data = answer.json(what, target.name) if answer.body else {}
    if not isinstance(data, dict):
        raise TransientError(f"{what}: the answer is not a JSON object", target=target.name)
    return data


@hookimpl
async def health(target: Target, http: httpx.AsyncClient) -> Health:
    data = await _call(target, http, "GET", "/v1/health")
    ready, queued = data.get("ready"), data.get("queued")
    if type(ready) is not int or type(queued) is not int:
        raise TransientError("Acme health: the answer has no worker counts", target=target.name)
    detail = f"{ready} workers ready, {queued} jobs queued"
    return Health(ok=ready > 0, detail=detail, queue_depth=queued, workers=ready)


@hookimpl
async def submit(target: Target, batch: list[SpeechRequest], http: httpx.AsyncClient) -> JobHandle:
    body = wire.dumps(BatchRequest(tuple(batch)))
    if len(body) > LIMITS.max_request_bytes:
        raise Rejected("the batch is over Acme's 10 MB: send smaller batches", target=target.name)
    data = await _call(target, http, "POST", "/v1/jobs", content=body)
    # Job ids go into URL paths: a "/" or a "?" in one would address another route.
    if not isinstance(data.get("id"), str) or not data["id"].isalnum():
        raise TransientError("Acme submit: the answer has no usable job id", target=target.name)
    return JobHandle(target.name, data["id"], tuple(request.id for request in batch))


@hookimpl
async def poll(target: Target, handle: JobHandle, http: httpx.AsyncClient) -> JobStatus:
    lost = JobLost(f"Acme no longer knows job {handle.job_id}", target=target.name)
    data = await _call(target, http, "GET", f"/v1/jobs/{handle.job_id}", not_found=lost)
    state, gpu_ms = STATES.get(str(data.get("state"))), data.get("gpu_ms")
    gpu_ms = gpu_ms if type(gpu_ms) is int and gpu_ms >= 0 else None
    if state is None:
        raise TransientError("Acme status: the answer has no known state", target=target.name)
    if state is not JobState.COMPLETED:
        error = httpapi.snippet(str(data["error"])) if data.get("error") else None
        return JobStatus(state, error=error, exec_ms=gpu_ms)
    try:
        output = wire.structure(data.get("output"), BatchResponse)
    except WireError as exc:  # over, and unusable: a failed job is resubmitted at once
        return JobStatus(JobState.FAILED, error=f"unusable output: {exc}", exec_ms=gpu_ms)
    return JobStatus(state, results=output.results, exec_ms=gpu_ms)


@hookimpl
async def decode(target: Target, status: JobStatus, http: httpx.AsyncClient) -> list[Audio]:
    return [await result_audio(result, http) for result in status.results]


@hookimpl
async def cancel(target: Target, handle: JobHandle, http: httpx.AsyncClient) -> None:
    gone = JobLost(f"Acme no longer knows job {handle.job_id}", target=target.name)
    try:
        await _call(target, http, "POST", f"/v1/jobs/{handle.job_id}/cancel", not_found=gone)
    except JobLost:
        return  # already gone: cancelling it is done
