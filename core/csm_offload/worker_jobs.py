"""What every provider that talks to a worker server (`csm-offload serve`) shares.

The `thunder` provider (a server on a Thunder Compute VM) and the `worker` provider (a server
on a GPU box you own) differ only in how they find the server and price its time; once a
`WorkerClient` points at it, a job is submitted, polled, read and cancelled the same way, and
its `/healthz` means the same thing. That part lives here, once:

- the server's default limits, and the check of a job id before it goes into a URL path;
- `submit_job`, `poll_job`, `cancel_job`: the hooks' bodies given a client;
- `job_status`: a `WorkerJob` as the core's `JobStatus`, results in request order;
- `worker_health`: `/healthz` as the core's `Health` (one worker, its queue, its capacity);
- the validators of the settings every such target has (`poll_wait_s`, predicted seconds).
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Sequence
from typing import Any

import attrs

from . import httpapi
from .batches import check_batch
from .errors import JobLost, TransientError
from .model import (
    BatchRequest,
    Health,
    JobHandle,
    JobState,
    JobStatus,
    Result,
    SpeechRequest,
)
from .secret import Secret
from .target import ProviderLimits, Target
from .worker_client import MAX_POLL_WAIT_S, WorkerClient, WorkerHealth, WorkerJob

#: The worker server's defaults (`serve --max-batch 16 --max-text-chars 2000 --max-body-mb 32
#: --result-ttl 600`).
LIMITS = ProviderLimits(
    max_batch=16,
    max_text_chars=2_000,
    max_request_bytes=32 * 1024 * 1024,
    result_ttl_s=600.0,
)
#: Job ids go into URL paths: a "/" or a "?" in one would address another route.
JOB_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")
#: Jobs a worker server runs at once (one GPU runs one CSM batch at a time).
RUNNING_SLOTS = 1


# --- settings parts -------------------------------------------------------------------------


def optional_secret(value: Any) -> Secret | None:
    """attrs converter: a token from the config (a string) becomes a `Secret` at once."""
    if value is None or isinstance(value, Secret):
        return value
    return Secret(str(value))


def check_seconds(_instance: Any, attribute: attrs.Attribute, value: float) -> None:
    """attrs validator of a predicted time (`seconds_per_char`, `job_overhead_s`)."""
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{attribute.name}: must be a finite number >= 0, got {value}")


def check_poll_wait(_instance: Any, attribute: attrs.Attribute, value: float) -> None:
    """attrs validator of `poll_wait_s`: the server holds a poll at most 60 s."""
    if not math.isfinite(value) or not 0 <= value <= MAX_POLL_WAIT_S:
        raise ValueError(f"{attribute.name}: must be 0 to {MAX_POLL_WAIT_S:g} s, got {value}")


def predicted_seconds(batch: Sequence[SpeechRequest], per_char: float, overhead: float) -> float:
    """Server seconds a job is predicted to take, before the core has measured the target."""
    return overhead + per_char * sum(len(r.text) for r in batch)


# --- the job lifecycle ----------------------------------------------------------------------


async def submit_job(
    client: WorkerClient, target: Target, batch: Sequence[SpeechRequest]
) -> JobHandle:
    """Send `batch` as one job; the handle names the server's job id, checked to be a path-safe
    one, since every later call puts it into a URL."""
    check_batch(batch, LIMITS, target.name, "a worker server's targets")
    submitted_at = time.time()
    job = await client.submit(BatchRequest(tuple(batch)))
    if not JOB_ID.fullmatch(job.id):
        raise TransientError(
            f"the worker server's answer has no usable job id ({job.id[:40]!r})",
            target=target.name,
        )
    return JobHandle(target.name, job.id, tuple(r.id for r in batch), submitted_at)


def lost(target: Target, handle: JobHandle) -> JobLost:
    return JobLost(
        f"the worker server no longer knows job {handle.job_id[:40]} (restarted, or the result "
        "outlived its --result-ttl): it is submitted again",
        target=target.name,
    )


async def poll_job(
    client: WorkerClient, target: Target, handle: JobHandle, wait_s: float
) -> JobStatus:
    """The job's status; with `wait_s`, the server holds the answer until the job finishes, so
    its end is seen at once. A job id no server could have made is lost, never sent."""
    if not JOB_ID.fullmatch(handle.job_id):
        raise lost(target, handle)
    try:
        job = await client.job(handle.job_id, wait=wait_s or None)
    except JobLost:
        raise lost(target, handle) from None
    return job_status(job, handle.request_ids)


async def cancel_job(client: WorkerClient, handle: JobHandle) -> None:
    if not JOB_ID.fullmatch(handle.job_id):
        return  # no such job could have been made: nothing to cancel
    try:
        await client.cancel(handle.job_id)
    except JobLost:
        return  # already gone: cancelling it is done


def in_request_order(results: Sequence[Result], request_ids: Sequence[str]) -> tuple[Result, ...]:
    """The results for `request_ids`, in that order. A result for another id is dropped (its
    audio must never be filed under this request), a duplicated id counts once, and a missing
    id is left out: the runner resubmits what a job did not deliver."""
    by_id: dict[str, Result] = {}
    for result in results:
        by_id.setdefault(result.id, result)
    return tuple(by_id[i] for i in request_ids if i in by_id)


def job_status(job: WorkerJob, request_ids: Sequence[str]) -> JobStatus:
    """The job's state; a completed job's results for this job's requests. A completed job
    whose response cannot be used is over all the same: a failed status (with its `exec_ms`,
    so what it cost is recorded), which the runner resubmits."""
    timing = {"queue_ms": job.queue_ms, "exec_ms": job.exec_ms}
    if job.state is not JobState.COMPLETED:
        error = httpapi.snippet(job.error) if job.error else None
        if job.state.finished and not error:
            error = f"job {job.state.value}"
        return JobStatus(job.state, error=error, **timing)
    if job.response is None:
        return JobStatus(JobState.FAILED, error="completed without a response", **timing)
    results = in_request_order(job.response.results, request_ids)
    if job.response.results and not results:
        got = httpapi.snippet(", ".join(r.id for r in job.response.results[:4]))
        error = f"the response answers other requests than this job's (got {got})"
        return JobStatus(JobState.FAILED, error=error, **timing)
    return JobStatus(JobState.COMPLETED, results=results, **timing)


# --- health ---------------------------------------------------------------------------------


def capacity(found: WorkerHealth) -> int:
    """Jobs the server holds at once, running and queued; one more is answered 429."""
    return RUNNING_SLOTS + max(0, found.max_queue)


def worker_health(found: WorkerHealth, prefix: str = "", note: str = "") -> Health:
    """`/healthz` as one worker, as RunPod's `/health` counts them, whose queue depth is its
    `queued`: the runner then fills whole `max_batch` batches (batching is what makes one GPU
    fast) and its adaptive in-flight cap follows from the worker count and the capacity.
    `prefix` describes the machine the server runs on, `note` ends the detail (how it bills)."""
    queued, running = max(0, found.queued), max(0, found.running)
    detail = (
        f"{prefix}worker: {httpapi.snippet(found.detail)}; {running} running, {queued} queued "
        f"(holds {capacity(found)}: {RUNNING_SLOTS} running + {max(0, found.max_queue)} "
        f"queued)"
    )
    return Health(
        ok=found.ok,
        detail=f"{detail}; {note}" if note else detail,
        queue_depth=queued,
        workers=RUNNING_SLOTS,
        checked_at=time.time(),
        capacity=capacity(found),
    )
