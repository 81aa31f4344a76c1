"""A worker server's job (`WorkerJob`) as the core's `JobStatus`, results in request order.

The server answers with wire types already checked by the one converter; what is left to judge
is whether a finished job delivered what this job asked for.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from csm_offload import JobState, JobStatus, Result, httpapi
from csm_offload.worker_client import WorkerJob

#: Job ids go into URL paths: a "/" or a "?" in one would address another route.
JOB_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")


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
