"""Replicate's prediction object, read into what the core needs.

A prediction (`POST /v1/predictions`, `GET /v1/predictions/{id}`, a deployment's create) is
`{id, status, output, error, logs, metrics: {predict_time}, created_at, started_at,
completed_at, urls: {get, cancel}, data_removed, input, ...}`. Only what we rely on is checked;
fields Replicate adds are ignored. Anything malformed is a `TransientError` naming the field.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import attrs

from csm_offload import JobState, TransientError
from csm_offload.scrub import scrub

from .names import PREDICTION_ID

#: Replicate's statuses as the core's states. `aborted`: its deadline passed before it started
#: (never ran, never billed); `canceled`: cancelled, or its deadline passed while it ran.
STATES: Mapping[str, JobState] = {
    "starting": JobState.QUEUED,
    "processing": JobState.RUNNING,
    "succeeded": JobState.COMPLETED,
    "failed": JobState.FAILED,
    "canceled": JobState.CANCELLED,
    "aborted": JobState.TIMED_OUT,
}
#: The fields a handle keeps of a finished prediction (never the echoed input: it is the batch).
KEPT = ("id", "status", "output", "error", "metrics", "created_at", "started_at", "data_removed")
_ERROR_CHARS = 500


@attrs.frozen
class Prediction:
    id: str
    status: str
    state: JobState
    output: Any = None
    error: str | None = None
    #: `metrics.predict_time` in ms: the time `run()` ran, what Replicate bills per second.
    predict_ms: int | None = None
    #: From `created_at` to `started_at`: queueing and any cold boot.
    queue_ms: int | None = None
    data_removed: bool = False


def parse(data: Any, target: str | None = None) -> Prediction:
    """A prediction object as a `Prediction`; a malformed one is a `TransientError`."""
    if not isinstance(data, dict):
        raise TransientError("Replicate prediction: expected a JSON object", target=target)
    found = data.get("id")
    if not isinstance(found, str) or not PREDICTION_ID.fullmatch(found):
        raise TransientError("Replicate prediction has no usable id (field `id`)", target=target)
    raw = data.get("status")
    state = STATES.get(raw) if isinstance(raw, str) else None
    if state is None:
        shown = error_text(raw)[:40]
        message = f"Replicate prediction {found}: unknown status {shown!r} (field `status`)"
        raise TransientError(message, target=target)
    metrics = data.get("metrics")
    predict_s = metrics.get("predict_time") if isinstance(metrics, dict) else None
    return Prediction(
        id=found,
        status=raw,
        state=state,
        output=data.get("output"),
        error=_error(data.get("error"), raw, state),
        predict_ms=seconds_to_ms(predict_s),
        queue_ms=elapsed_ms(data.get("created_at"), data.get("started_at")),
        data_removed=data.get("data_removed") is True,
    )


def _error(value: Any, status: str, state: JobState) -> str | None:
    if value is not None:
        return error_text(value) or None
    if state is JobState.TIMED_OUT:
        return "aborted: its deadline passed before it started"
    if state in (JobState.FAILED, JobState.CANCELLED):
        return f"prediction {status}"
    return None


def error_text(value: Any) -> str:
    """A printable, scrubbed, bounded rendering of an answer's field."""
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return " ".join(scrub(text).split())[:_ERROR_CHARS]


def seconds_to_ms(value: Any) -> int | None:
    """A duration in seconds (a JSON number >= 0) in whole ms; None for anything else."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if not math.isfinite(value) or value < 0 or value > 1e9:
        return None
    return round(value * 1000)


def timestamp(value: Any) -> float | None:
    """An ISO 8601 time with a zone (`2023-09-08T16:19:34.765994Z`) as a Unix time."""
    if not isinstance(value, str) or len(value) > 64:
        return None
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        return None
    return when.timestamp() if when.tzinfo is not None else None


def elapsed_ms(start: Any, end: Any) -> int | None:
    began, ended = timestamp(start), timestamp(end)
    if began is None or ended is None or ended < began:
        return None
    return round((ended - began) * 1000)


def kept(data: Mapping[str, Any]) -> dict[str, Any]:
    """The part of a finished prediction a handle keeps (a few hundred bytes with a file URL)."""
    return {key: data[key] for key in KEPT if key in data}
