"""Hostile wire bodies: every malformed body is a `WireError` naming the field, never a raw
exception, whatever the nesting, numbers, encodings, types or sizes."""

from __future__ import annotations

import base64
import contextlib
import copy
import io
import json
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import soundfile as sf
from hypothesis import given, settings
from hypothesis import strategies as st

from csm_offload import Audio, WireError, wire
from csm_offload.model import AudioData, BatchRequest, BatchResponse, Segment, SpeechRequest
from csm_offload.wire import WireLimits

CONTEXT_AUDIO = Audio((0.2 * np.sin(np.arange(2400) / 7)).astype(np.float32), 24_000)
BASE_REQUEST: dict[str, Any] = wire.unstructure(
    BatchRequest((SpeechRequest("Hello.", context=(Segment(1, "Hi.", CONTEXT_AUDIO),)),))
)
BASE_RESPONSE: dict[str, Any] = wire.unstructure(
    BatchResponse(
        (
            wire.converter.structure(
                {"id": "r1", "audio": wire.unstructure(AudioData.from_audio(CONTEXT_AUDIO))},
                wire.Result,
            ),
        )
    )
)


def _req(edit: Callable[[dict[str, Any]], object]) -> bytes:
    body = copy.deepcopy(BASE_REQUEST)
    edit(body)
    return json.dumps(body).encode()


def _first(body: dict[str, Any]) -> dict[str, Any]:
    return body["requests"][0]


def _audio(body: dict[str, Any]) -> dict[str, Any]:
    return _first(body)["context"][0]["audio"]


def _float_wav(samples: list[float]) -> str:
    buffer = io.BytesIO()
    sf.write(buffer, np.array(samples, dtype=np.float32), 24_000, format="WAV", subtype="FLOAT")
    return base64.b64encode(buffer.getvalue()).decode()


REQUESTS: dict[str, tuple[bytes, str]] = {
    "deep-arrays": (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    "deep-objects": (b'{"a":' * 100_000 + b"1" + b"}" * 100_000, "nested too deeply"),
    "huge-float": (
        _req(lambda b: _first(b).update(temperature="__HUGE__")).replace(b'"__HUGE__"', b"1e999"),
        "requests[0].temperature: expected a finite number",
    ),
    "huge-integer": (
        _req(lambda b: _first(b).update(seed="__BIG__")).replace(b'"__BIG__"', b"9" * 5_000),
        "body:",
    ),
    "nan-literal": (b'{"schema": 1, "requests": [], "x": NaN}', "NaN is not allowed"),
    "infinity-literal": (b'{"schema": 1, "requests": [Infinity]}', "Infinity is not allowed"),
    "minus-infinity": (b'{"schema": 1, "requests": -Infinity}', "-Infinity is not allowed"),
    "duplicate-schema-key": (
        b'{"schema": 1, "schema": 2, "requests": []}',
        "schema: unsupported schema 2",
    ),
    "schema-2": (_req(lambda b: b.update(schema=2)), "unsupported schema 2"),
    "schema-missing": (_req(lambda b: b.pop("schema")), "schema: missing"),
    "schema-as-string": (_req(lambda b: b.update(schema="1")), "unsupported schema '1'"),
    "schema-as-true": (_req(lambda b: b.update(schema=True)), "unsupported schema True"),
    "speaker-as-string": (_req(lambda b: _first(b).update(speaker="0")), "requests[0].speaker"),
    "speaker-as-bool": (_req(lambda b: _first(b).update(speaker=True)), "requests[0].speaker"),
    "text-as-number": (_req(lambda b: _first(b).update(text=5)), "requests[0].text"),
    "topk-as-float": (_req(lambda b: _first(b).update(topk=1.5)), "requests[0].topk"),
    "temperature-as-word": (
        _req(lambda b: _first(b).update(temperature="hot")),
        "requests[0].temperature",
    ),
    "requests-as-object": (_req(lambda b: b.update(requests={})), "requests: expected a list"),
    "requests-as-string": (_req(lambda b: b.update(requests="abc")), "requests: expected a list"),
    "context-as-string": (
        _req(lambda b: _first(b).update(context="abc")),
        "requests[0].context: expected a list",
    ),
    "unknown-field": (_req(lambda b: _first(b).update(voice="x")), "unknown field(s) voice"),
    "missing-text": (_req(lambda b: _first(b).pop("text")), "requests[0].text: required field"),
    "body-is-array": (b"[]", "expected a JSON object"),
    "body-is-null": (b"null", "expected a JSON object"),
    "body-is-string": (b'"hello"', "expected a JSON object"),
    "body-is-empty": (b"", "not valid JSON"),
    "body-not-utf8": (b'{"schema": 1, "requests": ["\xff\xfe"]}', "not UTF-8"),
    "body-utf16": ('{"schema": 1, "requests": []}'.encode("utf-16"), "not UTF-8"),
    "audio-format-mp3": (_req(lambda b: b.update(audio_format="mp3")), "audio_format"),
    "base64-garbage": (
        _req(lambda b: _audio(b).update(data="!!! not base64 ###")),
        "requests[0].context[0].audio.data: not valid base64",
    ),
    "base64-of-text": (
        _req(lambda b: _audio(b).update(data=base64.b64encode(b"just text").decode())),
        "requests[0].context[0].audio: not a readable WAV or FLAC",
    ),
    "sample-rate-lies": (
        _req(lambda b: _audio(b).update(sample_rate=16_000)),
        "requests[0].context[0].audio: sample_rate says 16000",
    ),
    "context-audio-as-url": (
        _req(lambda b: _first(b)["context"][0].update(audio={"url": "https://x.invalid/a"})),
        "requests[0].context[0].audio",
    ),
    "text-over-limit": (_req(lambda b: _first(b).update(text="a" * 5_001)), "max_text_chars"),
    "negative-length-cap": (
        _req(lambda b: _first(b).update(max_audio_length_ms=-5)),
        "requests[0].max_audio_length_ms: must be positive",
    ),
}


@pytest.mark.parametrize(
    ("body", "message"),
    [pytest.param(body, message, id=name) for name, (body, message) in REQUESTS.items()],
)
def test_bad_request_bodies_are_a_wire_error(body: bytes, message: str) -> None:
    with pytest.raises(WireError) as info:
        wire.loads(body, BatchRequest)
    assert message in str(info.value)


def test_nan_context_audio_is_the_workers_to_refuse_per_request() -> None:
    """Decodable audio with NaN samples is valid wire: the worker answers that one request
    with a permanent error and generates the rest of its batch (tests/hostile/
    test_worker_hostile.py), instead of the whole batch failing here."""
    body = _req(lambda b: _audio(b).update(format="wav", data=_float_wav([0.1, float("nan")] * 50)))
    batch = wire.loads(body, BatchRequest)
    audio = batch.requests[0].context[0].audio
    assert audio is not None and not np.isfinite(audio.samples).all()


def _without_context(body: dict[str, Any]) -> None:
    _first(body)["context"] = []
    body["requests"] = [_first(body)] * 3


SMALL_CASES: dict[str, tuple[bytes, WireLimits, str]] = {
    "body-over-max-body-bytes": (
        b'{"schema": 1, "requests": []}' + b" " * 5_000,
        WireLimits(max_body_bytes=4_096),
        "body: 5029 bytes is over the limit of 4096 (max_body_bytes)",
    ),
    "too-many-requests": (
        _req(_without_context),
        WireLimits(max_requests=2),
        "requests: 3 is over the limit of 2 (max_requests)",
    ),
    "audio-over-max-audio-bytes": (
        _req(lambda _b: None),
        WireLimits(max_audio_bytes=1_000),
        "requests[0].context[0].audio.data: over the limit of 1000 bytes (max_audio_bytes)",
    ),
    "audio-decodes-too-large": (
        _req(lambda _b: None),
        WireLimits(max_decoded_audio_bytes=1_000),
        "requests[0].context[0].audio: audio decodes to 9600 bytes, over the limit of 1000",
    ),
    "context-over-max-seconds": (
        _req(lambda _b: None),
        WireLimits(max_context_seconds=0.05),
        "max_context_seconds",
    ),
}


@pytest.mark.parametrize(
    ("body", "limits", "message"), list(SMALL_CASES.values()), ids=list(SMALL_CASES)
)
def test_bodies_over_a_host_limit_are_a_wire_error(
    body: bytes, limits: WireLimits, message: str
) -> None:
    with pytest.raises(WireError) as info:
        wire.loads(body, BatchRequest, limits)
    assert message in str(info.value)


def _resp(edit: Callable[[dict[str, Any]], object]) -> bytes:
    body = copy.deepcopy(BASE_RESPONSE)
    edit(body)
    return json.dumps(body).encode()


def _result(body: dict[str, Any]) -> dict[str, Any]:
    return body["results"][0]


RESPONSES: dict[str, tuple[bytes, str]] = {
    "url-file-scheme": (
        _resp(lambda b: _result(b).update(audio={"url": "file:///etc/passwd"})),
        "results[0].audio.url: audio URL must start with https://",
    ),
    "url-too-long": (
        _resp(lambda b: _result(b).update(audio={"url": "https://x.invalid/" + "a" * 9_000})),
        "max_url_chars",
    ),
    "results-as-object": (_resp(lambda b: b.update(results={"0": {}})), "results"),
    "error-as-number": (_resp(lambda b: _result(b).update(error=500)), "results[0].error"),
    "audio-as-string": (_resp(lambda b: _result(b).update(audio="data")), "results[0].audio"),
    "worker-as-list": (_resp(lambda b: b.update(worker=[])), "worker"),
    "response-schema-0": (_resp(lambda b: b.update(schema=0)), "unsupported schema 0"),
}


@pytest.mark.parametrize(("body", "message"), list(RESPONSES.values()), ids=list(RESPONSES))
def test_bad_response_bodies_are_a_wire_error(body: bytes, message: str) -> None:
    with pytest.raises(WireError) as info:
        wire.loads(body, BatchResponse)
    assert message in str(info.value)


def test_the_base_bodies_are_valid() -> None:
    request = wire.loads(json.dumps(BASE_REQUEST), BatchRequest)
    assert request.requests[0].context[0].audio is not None
    assert wire.loads(json.dumps(BASE_RESPONSE), BatchResponse).results[0].id == "r1"


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(
            st.sampled_from(["schema", "requests", "results", "text", "id", "audio", "x"]),
            inner,
            max_size=5,
        )
    ),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(data=json_values, cls=st.sampled_from([BatchRequest, BatchResponse]))
def test_random_json_is_a_wire_type_or_a_wire_error(data: Any, cls: type) -> None:
    for candidate in (data, {"schema": 1, "requests": data, "results": data}):
        with contextlib.suppress(WireError):
            wire.structure(candidate, cls)


@settings(max_examples=300, deadline=None)
@given(raw=st.binary(max_size=200))
def test_random_bytes_parse_or_are_a_wire_error(raw: bytes) -> None:
    with contextlib.suppress(WireError):
        wire.loads(raw, BatchRequest)
