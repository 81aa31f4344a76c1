"""Parsing RunPod's JSON answers: a job's status into `JobStatus`, `/health` into `Health`.

Only what we rely on is checked; RunPod adds fields over time (`workerId`, `retries`, ...) and
those are ignored. Every malformed answer becomes a `TransientError` naming the field.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from csm_offload import (
    BatchResponse,
    Health,
    JobState,
    JobStatus,
    Result,
    TransientError,
    WireError,
    wire,
)
from csm_offload.scrub import scrub

STATES: Mapping[str, JobState] = {
    "IN_QUEUE": JobState.QUEUED,
    "IN_PROGRESS": JobState.RUNNING,
    "COMPLETED": JobState.COMPLETED,
    "FAILED": JobState.FAILED,
    "CANCELLED": JobState.CANCELLED,
    "TIMED_OUT": JobState.TIMED_OUT,
}
_ERROR_CHARS = 500


def _millis(data: Mapping[str, Any], key: str) -> int | None:
    value = data.get(key)
    if value is None or isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if not math.isfinite(value) or value < 0:
        return None
    return round(value)


def _error_text(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    text = " ".join(scrub(str(text)).split())
    return text[:_ERROR_CHARS]


def job_id_of(data: Any, target: str) -> str:
    """The job id of a `/run` or `/runsync` answer."""
    if not isinstance(data, dict) or not isinstance(data.get("id"), str) or not data["id"]:
        raise TransientError("RunPod's answer has no job id (field `id`)", target=target)
    return data["id"]


def parse_status(
    data: Any, request_ids: Sequence[str], target: str, limits: wire.WireLimits | None = None
) -> JobStatus:
    """A `/status` (or `/runsync`) answer as a `JobStatus` for a job of `request_ids`.

    A completed job must carry a schema-1 `BatchResponse` in `output` with one result per
    request; results are put in request order."""
    if not isinstance(data, dict):
        raise TransientError("RunPod status: expected a JSON object", target=target)
    raw_state = data.get("status")
    state = STATES.get(raw_state) if isinstance(raw_state, str) else None
    if state is None:
        message = f"RunPod status: unknown state {raw_state!r} (field `status`)"
        raise TransientError(message, target=target)
    queue_ms = _millis(data, "delayTime")
    exec_ms = _millis(data, "executionTime")
    output = data.get("output")
    if state is JobState.COMPLETED and _handler_error(output) is not None:
        # A handler that returns {"error": ...} failed, whatever the job state says.
        error = _error_text(_handler_error(output)) or "the handler returned an error"
        return JobStatus(JobState.FAILED, error=error, queue_ms=queue_ms, exec_ms=exec_ms)
    if state is JobState.COMPLETED:
        results, unusable = _results(data, request_ids, limits)
        if unusable is not None:
            # Final, though unusable: polling again would bring the same answer.
            error = _error_text(unusable)
            return JobStatus(JobState.FAILED, error=error, queue_ms=queue_ms, exec_ms=exec_ms)
        return JobStatus(state, results=results, queue_ms=queue_ms, exec_ms=exec_ms)
    error = None
    if state in (JobState.FAILED, JobState.TIMED_OUT, JobState.CANCELLED):
        found = data.get("error")
        if found is None:
            found = _handler_error(output)
        error = (_error_text(found) if found is not None else "") or f"job {raw_state.lower()}"
    return JobStatus(state, error=error, queue_ms=queue_ms, exec_ms=exec_ms)


def _handler_error(output: Any) -> Any:
    if isinstance(output, dict) and "results" not in output and output.get("error"):
        return output["error"]
    return None


def _results(
    data: Mapping[str, Any], request_ids: Sequence[str], limits: wire.WireLimits | None
) -> tuple[tuple[Result, ...], str | None]:
    """The results of a completed job, or why its output cannot be used."""
    output = data.get("output")
    if output is None:
        # A known RunPod trap: the worker finished but its result upload failed.
        return (), "RunPod says COMPLETED but sent no output (the worker's result upload failed?)"
    try:
        response = wire.structure(output, BatchResponse, limits or wire.DEFAULT_LIMITS)
    except WireError as exc:
        return (), f"RunPod output is not a csm-offload response: output.{exc}"
    results = in_request_order(response.results, request_ids)
    if response.results and not results:
        got = ", ".join(r.id for r in response.results[:4])
        return (), f"RunPod output answers other requests than this job's (got {got})"
    return results, None


def in_request_order(results: Sequence[Result], request_ids: Sequence[str]) -> tuple[Result, ...]:
    """The results for `request_ids`, in that order. Results for other ids are dropped (audio
    for another request must never be filed under this one), a duplicated id counts once, and
    a missing id is left out: the runner resubmits what a job did not deliver."""
    by_id: dict[str, Result] = {}
    for result in results:
        by_id.setdefault(result.id, result)
    return tuple(by_id[i] for i in request_ids if i in by_id)


@attrs.frozen
class HealthCounts:
    """The numbers of a `/health` answer that matter to us."""

    in_queue: int
    in_progress: int
    idle: int
    ready: int
    running: int
    initializing: int
    throttled: int
    unhealthy: int

    @property
    def serving(self) -> int:
        """Workers that can take or are taking jobs now."""
        return self.idle + self.ready + self.running

    @property
    def workers(self) -> int:
        return self.serving + self.initializing + self.throttled + self.unhealthy


def _count(section: Any, key: str) -> int:
    value = section.get(key, 0) if isinstance(section, dict) else 0
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return 0
    return value


def parse_health_counts(data: Any, target: str) -> HealthCounts:
    if not isinstance(data, dict) or not isinstance(data.get("workers"), dict):
        raise TransientError("RunPod health: expected {jobs: ..., workers: ...}", target=target)
    jobs, workers = data.get("jobs", {}), data["workers"]
    return HealthCounts(
        in_queue=_count(jobs, "inQueue"),
        in_progress=_count(jobs, "inProgress"),
        idle=_count(workers, "idle"),
        ready=_count(workers, "ready"),
        running=_count(workers, "running"),
        initializing=_count(workers, "initializing"),
        throttled=_count(workers, "throttled"),
        unhealthy=_count(workers, "unhealthy"),
    )


def judge_health(counts: HealthCounts, previous_queue: int | None, now: float) -> Health:
    """Is the endpoint fit for work? Not when every worker is unhealthy, nor when the queue grows
    while no worker serves and none is starting (crash-looping workers look like this)."""
    detail = (
        f"{counts.in_queue} queued, {counts.in_progress} running; workers: {counts.idle} idle, "
        f"{counts.ready} ready, {counts.running} running, {counts.initializing} initializing, "
        f"{counts.throttled} throttled, {counts.unhealthy} unhealthy"
    )
    ok = True
    reason = ""
    if counts.unhealthy and counts.serving == 0:
        ok, reason = False, f"all {counts.unhealthy} workers are unhealthy (crash-looping?)"
    elif (
        counts.in_queue
        and counts.serving == 0
        and counts.initializing == 0
        and previous_queue is not None
        and counts.in_queue > previous_queue
    ):
        ok, reason = False, "the queue grows while no worker is ready, idle or starting"
    return Health(
        ok=ok,
        detail=f"{reason}: {detail}" if reason else detail,
        queue_depth=counts.in_queue,
        workers=counts.workers,
        checked_at=now,
    )
