"""Hostile provider answers: whatever shape RunPod's JSON takes, parsing gives a status or a
typed error, never a raw exception; result audio that is garbage, too large or missing is a
typed error too. No network: answers are built here, URLs go to an in-process transport."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from csm_offload import JobState, JobStatus, ProviderError, TransientError, wire
from csm_offload.model import AudioData, AudioUrl, BatchResponse, Result
from csm_offload.results import result_audio
from csm_offload.wire import WireLimits

status_mod = pytest.importorskip("csm_offload_runpod.status")
parse_status = status_mod.parse_status
parse_health_counts = status_mod.parse_health_counts
job_id_of = status_mod.job_id_of
judge_health = status_mod.judge_health

IDS = ("r1", "r2")
TARGET = "pod"

json_leaves = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**64), max_value=2**64)
    | st.floats()  # NaN and infinities too: json.loads gives them for NaN/Infinity literals
    | st.text(max_size=12)
)
json_values = st.recursive(
    json_leaves,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(
            st.sampled_from(
                [
                    "status",
                    "output",
                    "error",
                    "delayTime",
                    "executionTime",
                    "id",
                    "results",
                    "schema",
                    "audio",
                    "jobs",
                    "workers",
                    "idle",
                    "inQueue",
                ]
            )
            | st.text(max_size=6),
            inner,
            max_size=6,
        )
    ),
    max_leaves=25,
)
states = st.sampled_from(
    ["IN_QUEUE", "IN_PROGRESS", "COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT", "completed", ""]
)


@settings(max_examples=400, deadline=None)
@given(data=json_values)
def test_any_json_is_a_status_or_a_transient_error(data: Any) -> None:
    failed: TransientError | None = None
    try:
        status = parse_status(data, IDS, TARGET)
    except TransientError as exc:
        failed = exc
    if failed is not None:
        assert failed.target == TARGET
    else:
        assert isinstance(status, JobStatus)


@settings(max_examples=400, deadline=None)
@given(state=states, output=json_values, error=json_values, delay=json_leaves, run=json_leaves)
def test_any_answer_with_a_state_is_a_status_or_a_transient_error(
    state: str, output: Any, error: Any, delay: Any, run: Any
) -> None:
    data = {"status": state, "output": output, "error": error}
    data |= {"delayTime": delay, "executionTime": run, "id": "job-1"}
    try:
        status = parse_status(data, IDS, TARGET)
    except TransientError:
        return
    assert isinstance(status, JobStatus)
    assert status.queue_ms is None or status.queue_ms >= 0
    assert status.exec_ms is None or status.exec_ms >= 0
    if status.state is JobState.COMPLETED:
        assert {r.id for r in status.results} <= set(IDS)
    assert status.error is None or len(status.error) <= 500


@settings(max_examples=300, deadline=None)
@given(data=json_values)
def test_any_health_answer_is_counts_or_a_transient_error(data: Any) -> None:
    try:
        counts = parse_health_counts(data, TARGET)
    except TransientError:
        return
    assert min(counts.idle, counts.ready, counts.running, counts.unhealthy) >= 0
    assert judge_health(counts, None, 0.0).workers == counts.workers


@settings(max_examples=200, deadline=None)
@given(data=json_values)
def test_any_submit_answer_is_a_job_id_or_a_transient_error(data: Any) -> None:
    with contextlib.suppress(TransientError):
        assert job_id_of(data, TARGET)


def _completed(output: Any, **extra: Any) -> dict[str, Any]:
    return {"status": "COMPLETED", "output": output, "delayTime": 5, "executionTime": 9} | extra


GOOD_AUDIO = {"format": "wav", "sample_rate": 24_000, "data": "UklGRg=="}
ANSWERS: dict[str, tuple[Any, JobState | None, str]] = {
    "not-an-object": ([1, 2], None, "expected a JSON object"),
    "unknown-state": ({"status": "EXPLODED"}, None, "unknown state 'EXPLODED'"),
    "state-lowercase": ({"status": "completed"}, None, "unknown state"),
    "state-as-number": ({"status": 3}, None, "unknown state 3"),
    "completed-without-output": (_completed(None), JobState.FAILED, "sent no output"),
    "completed-output-a-string": (_completed("done"), JobState.FAILED, "not a csm-offload"),
    "completed-output-schema-9": (
        _completed({"schema": 9, "results": []}),
        JobState.FAILED,
        "unsupported schema 9",
    ),
    "completed-handler-error": (_completed({"error": "CUDA OOM"}), JobState.FAILED, "CUDA OOM"),
    "completed-error-object": (
        _completed({"error": {"type": "OOM", "nested": [1, {"deep": None}]}}),
        JobState.FAILED,
        "OOM",
    ),
    "completed-other-requests": (
        _completed({"schema": 1, "results": [{"id": "someone-else", "audio": GOOD_AUDIO}]}),
        JobState.FAILED,
        "other requests",
    ),
    "completed-base64-garbage": (
        _completed({"schema": 1, "results": [{"id": "r1", "audio": GOOD_AUDIO | {"data": "%%"}}]}),
        JobState.FAILED,
        "not valid base64",
    ),
    "completed-duplicate-results": (
        _completed(
            {"schema": 1, "results": [{"id": "r1", "error": "a"}, {"id": "r1", "error": "b"}]}
        ),
        JobState.COMPLETED,
        "",
    ),
    "failed-without-error": ({"status": "FAILED"}, JobState.FAILED, "job failed"),
    "failed-huge-error": ({"status": "FAILED", "error": "x" * 100_000}, JobState.FAILED, "xxx"),
    "times-negative-nan-bool": (
        {"status": "IN_PROGRESS", "delayTime": -5, "executionTime": float("nan")},
        JobState.RUNNING,
        "",
    ),
    "times-huge": (
        {"status": "IN_QUEUE", "delayTime": 1e300, "executionTime": True},
        JobState.QUEUED,
        "",
    ),
}


@pytest.mark.parametrize(("data", "state", "message"), list(ANSWERS.values()), ids=list(ANSWERS))
def test_hostile_status_answers(data: Any, state: JobState | None, message: str) -> None:
    if state is None:
        with pytest.raises(TransientError, match=message):
            parse_status(data, IDS, TARGET)
        return
    status = parse_status(data, IDS, TARGET)
    assert status.state is state
    assert message in (status.error or "")
    assert status.error is None or len(status.error) <= 500


# --- result audio: inline garbage, URLs that misbehave --------------------------------------------


def _transport(handler: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.MockTransport(handler))


def _fetch(result: Result, respond: Any, limits: WireLimits = wire.DEFAULT_LIMITS) -> Any:
    async def go() -> Any:
        async with _transport(respond) as http:
            return await result_audio(result, http, limits)

    return asyncio.run(go())


URL = AudioUrl("https://storage.invalid/out.flac")
RESULT_CASES: dict[str, tuple[Result, Any, str]] = {
    "inline-garbage": (
        Result("r1", AudioData("flac", 24_000, b"not audio at all")),
        None,
        "unreadable audio",
    ),
    "no-audio": (Result("r1"), None, "completed without audio"),
    "worker-error": (Result("r1", error="text too long"), None, "failed on the worker"),
    "url-404": (Result("r1", URL), lambda _r: httpx.Response(404), "HTTP 404"),
    "url-garbage": (Result("r1", URL), lambda _r: httpx.Response(200, content=b"<html>"), "unread"),
    "url-too-large": (
        Result("r1", URL),
        lambda _r: httpx.Response(200, content=b"\0" * 5_000),
        "max_audio_bytes",
    ),
    "url-connection-drops": (
        Result("r1", URL),
        lambda r: (_ for _ in ()).throw(httpx.ReadError("reset", request=r)),
        "ReadError",
    ),
}


@pytest.mark.parametrize(
    ("result", "respond", "message"), list(RESULT_CASES.values()), ids=list(RESULT_CASES)
)
def test_hostile_result_audio_is_a_typed_error(result: Result, respond: Any, message: str) -> None:
    limits = WireLimits(max_audio_bytes=1_000)
    with pytest.raises(ProviderError, match=message):
        _fetch(result, respond or (lambda _r: httpx.Response(500)), limits)


def test_a_completed_answer_round_trips_through_the_wire() -> None:
    audio = {"format": "wav", "sample_rate": 24_000, "data": base64.b64encode(b"RIFF").decode()}
    body = {"schema": 1, "results": [{"id": "r2", "error": "x"}, {"id": "r1", "audio": audio}]}
    status = parse_status(_completed(json.loads(json.dumps(body))), IDS, TARGET)
    assert [r.id for r in status.results] == ["r1", "r2"]
    assert isinstance(wire.structure(body, BatchResponse), BatchResponse)
