"""The shared worker-host parsers, property-tested (no torch: a fake engine stands in)."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
from csm_offload_local_csm.url_outputs import BucketConfig
from csm_offload_local_csm.worker import handle_body, parse_batch
from csm_offload_runpod.handler import WorkerConfig
from hypothesis import given, settings
from hypothesis import strategies as st

from csm_offload import (
    Audio,
    AudioData,
    BatchRequest,
    SpeechRequest,
    UserError,
    WorkerInfo,
    wire,
)
from csm_offload.errors import WireError
from csm_offload.wire import WireLimits

from .strategies import speech_requests

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)


class EchoEngine:
    """Returns a short tone per request; records what it was asked."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def generate(self, requests: Sequence[SpeechRequest], cancel: threading.Event | None) -> Any:
        from csm_offload_local_csm.engine import Generated

        self.calls.append([r.id for r in requests])
        audio = Audio(np.full(240, 0.25, dtype=np.float32), 24_000)
        return [Generated(r.id, audio, 5) for r in requests]

    def info(self) -> WorkerInfo:
        return WorkerInfo("test", "echo", "1")


@settings(max_examples=150, deadline=None)
@given(json_values)
def test_parse_batch_never_raises_anything_but_wire_errors(data: Any) -> None:
    try:
        parsed = parse_batch(data)
    except WireError:
        return
    assert len(parsed.items) == len(data["requests"])


@settings(max_examples=150, deadline=None)
@given(st.lists(json_values, max_size=5))
def test_each_malformed_item_gets_its_own_error(items: list[Any]) -> None:
    parsed = parse_batch({"schema": 1, "requests": items})
    assert len(parsed.items) == len(items)
    for index, item in enumerate(parsed.items):
        if not isinstance(item, SpeechRequest):
            assert item.error.startswith(f"requests[{index}]")


@settings(max_examples=40, deadline=None)
@given(st.lists(speech_requests(), min_size=1, max_size=4, unique_by=lambda r: r.id))
def test_valid_batches_round_trip_through_a_host(requests: list[SpeechRequest]) -> None:
    limits = WireLimits(max_context_seconds=1e9, max_text_chars=10**6)
    body = wire.unstructure(BatchRequest(tuple(requests), "wav"))
    engine = EchoEngine()
    response = handle_body(engine, body, limits)
    assert [r.id for r in response.results] == [r.id for r in requests]
    # Empty context audio is answered per request (the engine cannot encode it).
    usable = [r for r in requests if all(s.audio is None or s.audio.frames for s in r.context)]
    for request, result in zip(requests, response.results, strict=True):
        if request in usable:
            assert isinstance(result.audio, AudioData) and result.error is None
        else:
            assert result.audio is None and "no samples" in result.error
    assert engine.calls == ([[r.id for r in usable]] if usable else [])


def test_bad_envelopes_name_the_field() -> None:
    with pytest.raises(WireError, match="schema"):
        parse_batch({"schema": 2, "requests": []})
    with pytest.raises(WireError, match="requests"):
        parse_batch({"schema": 1, "requests": {}})
    with pytest.raises(WireError, match="max_requests"):
        parse_batch({"schema": 1, "requests": [{}] * 3}, WireLimits(max_requests=2))
    with pytest.raises(WireError, match="audio_format"):
        parse_batch({"schema": 1, "requests": [], "audio_format": "mp3"})


env_values = st.text(alphabet="0123456789abcx-", max_size=6)
env_keys = st.sampled_from(
    [
        "CSM_OFFLOAD_MAX_BATCH",
        "CSM_OFFLOAD_MAX_TEXT_CHARS",
        "CSM_OFFLOAD_MAX_INLINE_BYTES",
        "CSM_OFFLOAD_STATIC_CACHE",
        "BUCKET_ENDPOINT_URL",
        "BUCKET_ACCESS_KEY_ID",
        "BUCKET_SECRET_ACCESS_KEY",
        "CSM_OFFLOAD_BUCKET_NAME",
        "CSM_OFFLOAD_URL_EXPIRY_S",
    ]
)


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(env_keys, env_values))
def test_worker_config_from_any_environment_is_a_config_or_a_user_error(
    env: dict[str, str],
) -> None:
    message = ""
    try:
        config = WorkerConfig.from_env(env)
    except UserError as exc:
        message = str(exc)
    if message:  # the error names the variable to fix
        assert any(key in message for key in env) or "URL outputs" in message
        return
    assert config.limits.max_requests >= 1
    assert config.max_inline_bytes >= 1
    if config.bucket is not None:
        assert isinstance(config.bucket, BucketConfig)
        assert "Secret('********')" in repr(config.bucket)


class BrokenEngine(EchoEngine):
    def generate(self, requests: Sequence[SpeechRequest], cancel: threading.Event | None) -> Any:
        raise RuntimeError("CUDA out of memory")


def test_runpod_worker_fails_the_job_with_one_sentence_when_the_engine_breaks() -> None:
    from csm_offload_runpod.handler import Worker

    body = wire.unstructure(BatchRequest((SpeechRequest("Hi."),)))
    answer = Worker(WorkerConfig(), BrokenEngine()).handle({"id": "job", "input": body})
    assert answer == {"error": "engine failed: RuntimeError: CUDA out of memory"}
    fine = Worker(WorkerConfig(), EchoEngine()).handle({"id": "job", "input": body})
    assert fine["results"][0]["error"] is None
    assert fine["schema"] == 1
