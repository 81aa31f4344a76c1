"""The web endpoint's answers read into the core's types: a call id, a `JobStatus`, a `Health`.

Answers are untrusted: every field is type-checked, valid JSON of the wrong shape is a
`TransientError` naming the field, and text that reaches a message is scrubbed and shortened
(`httpapi.snippet`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from csm_offload import (
    BatchResponse,
    Health,
    JobState,
    JobStatus,
    Result,
    TransientError,
    WireError,
    httpapi,
    wire,
)

from . import protocol
from .api import MAX_RESPONSE_BYTES

_STATES = {protocol.FAILED: JobState.FAILED, protocol.TIMED_OUT: JobState.TIMED_OUT}


def _object(answer: httpapi.Answer, what: str, target: str) -> dict[str, Any]:
    data = answer.json(what, target, MAX_RESPONSE_BYTES) if answer.body else {}
    if not isinstance(data, dict):
        raise TransientError(f"{what}: the answer is not a JSON object", target=target)
    return data


def _count(value: Any) -> int | None:
    """A non-negative whole number, or None for anything else (a bool is not a count)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if not math.isfinite(value) or value < 0 or value != int(value):
        return None
    return int(value)


def call_id_of(answer: httpapi.Answer, target: str) -> str:
    """The call id of a `POST /jobs` answer."""
    data = _object(answer, "Modal submit", target)
    call_id = data.get("call_id")
    if not protocol.is_call_id(call_id):
        message = "Modal submit: the answer has no usable call id (field `call_id`, fc-…)"
        raise TransientError(message, target=target)
    return call_id


def failed_call(answer: httpapi.Answer) -> JobStatus | None:
    """The endpoint's own 500 for a call that ran and failed (or timed out), else None: any
    other 500 is the platform's and only worth another try."""
    if answer.status != 500 or not answer.body:
        return None
    try:
        data = wire.parse_json(answer.body, wire.WireLimits(max_body_bytes=MAX_RESPONSE_BYTES))
    except WireError:
        return None
    if not isinstance(data, dict) or not isinstance(data.get("error"), str):
        return None
    state = _STATES.get(data.get("state"))  # type: ignore[arg-type]
    if state is None:
        return None
    error = httpapi.snippet(data["error"]) or f"the Modal call {data['state']}"
    return JobStatus(state, error=error)


def job_status(answer: httpapi.Answer, request_ids: Sequence[str], target: str) -> JobStatus:
    """A 2xx answer of `GET /jobs/{call_id}`: pending, or completed with one result per
    request. Output that cannot be used is a failed job (it is over: asking again brings the
    same answer), with its execution time kept so its cost is recorded."""
    data = _object(answer, "Modal status", target)
    state = data.get("state")
    if answer.status == 202 or state == protocol.PENDING:
        # Modal does not say whether a pending call is queued or already generating: calling
        # it queued would let the runner cancel work that is running and paid for.
        return JobStatus(JobState.RUNNING)
    if state != protocol.COMPLETED:
        shown = state if isinstance(state, str) and len(state) <= 20 else type(state).__name__
        message = f"Modal status: unknown state {shown!r} (field `state`)"
        raise TransientError(httpapi.snippet(message), target=target)
    exec_ms = _count(data.get("exec_ms"))
    try:
        output = wire.structure(data.get("output"), BatchResponse)
    except WireError as exc:
        error = httpapi.snippet(f"the output is not a csm-offload response: output.{exc}")
        return JobStatus(JobState.FAILED, error=error, exec_ms=exec_ms)
    results = in_request_order(output.results, request_ids)
    if output.results and not results:
        error = "the output answers other requests than this job's"
        return JobStatus(JobState.FAILED, error=error, exec_ms=exec_ms)
    return JobStatus(JobState.COMPLETED, results=results, exec_ms=exec_ms)


def in_request_order(results: Sequence[Result], request_ids: Sequence[str]) -> tuple[Result, ...]:
    """The results for `request_ids`, in that order: audio for another request is never filed
    under this one, a repeated id counts once, and a missing one is left for the runner to
    resubmit."""
    by_id: dict[str, Result] = {}
    for result in results:
        by_id.setdefault(result.id, result)
    return tuple(by_id[i] for i in request_ids if i in by_id)


def health_of(answer: httpapi.Answer, target: str, priced_gpu: str | None) -> Health:
    """A `GET /health` answer. `priced_gpu` is the GPU the target is priced as: a different
    deployed GPU is said in the detail, because every estimate would then be wrong."""
    data = _object(answer, "Modal health", target)
    if not isinstance(data.get("ok"), bool):
        raise TransientError("Modal health: the answer has no `ok` field", target=target)
    gpu = data.get("gpu") if isinstance(data.get("gpu"), str) else "an unknown GPU"
    model = data.get("model") if isinstance(data.get("model"), str) else "an unknown model"
    backlog, containers = _count(data.get("backlog")), _count(data.get("containers"))
    queue = "queue unknown" if backlog is None else f"{backlog} calls waiting"
    running = "" if containers is None else f", GPU containers up: {containers}"
    detail = f"app on {gpu} with {model}; {queue}{running}"
    if priced_gpu is not None and gpu_key(gpu) != gpu_key(priced_gpu):
        detail += f"; the target is priced as {priced_gpu}: set its gpu to match"
    return Health(
        ok=data["ok"],
        detail=httpapi.snippet(detail),
        queue_depth=backlog,
        workers=containers,
    )


def gpu_key(name: str) -> str:
    """Modal's GPU names (`A100-80GB`, `H100!`) as the price table spells them (`A100 80GB`)."""
    return name.replace("-", " ").replace("!", "").strip().upper()
