"""Wire format v1: round trips of every type, and one named error for every kind of bad input."""

from __future__ import annotations

import base64
import contextlib
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from csm_offload import (
    Audio,
    BatchRequest,
    BatchResponse,
    CostEstimate,
    JobHandle,
    JobStatus,
    Segment,
    SpeechRequest,
    UserError,
    WireError,
    wire,
)

from .strategies import SMALL_LIMITS, WIRE_TYPES, audios, batch_requests, speech_requests


@pytest.mark.parametrize(("strategy", "cls"), WIRE_TYPES, ids=[c.__name__ for _, c in WIRE_TYPES])
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_round_trip_through_json(strategy, cls, data) -> None:
    original = data.draw(strategy)
    raw = wire.dumps(original)
    json.loads(raw)  # it is plain JSON
    back = wire.loads(raw, cls)
    assert back == original
    if isinstance(original, JobHandle):
        assert dict(back.extra) == dict(original.extra)


@settings(max_examples=30, deadline=None)
@given(st.text(min_size=64, max_size=64), st.lists(audios(max_frames=2), min_size=3, max_size=3))
def test_maximum_sizes_are_accepted(text: str, clips: list[Audio]) -> None:
    context = tuple(Segment(1, text, clip) for clip in clips)
    request = SpeechRequest(text, context=context, max_audio_length_ms=10_000)
    batch = BatchRequest((request,) * SMALL_LIMITS.max_requests)
    assert wire.loads(wire.dumps(batch), BatchRequest, SMALL_LIMITS) == batch


def test_empty_sizes_are_accepted() -> None:
    batch = BatchRequest((SpeechRequest(""),))
    assert wire.loads(wire.dumps(batch), BatchRequest) == batch
    empty = BatchResponse(())
    assert wire.loads(wire.dumps(empty), BatchResponse) == empty
    silent = Segment(0, "", Audio(np.zeros(0, np.float32), 24_000))
    assert wire.loads(wire.dumps(silent), Segment) == silent


@settings(max_examples=40, deadline=None)
@given(speech_requests())
def test_request_id_survives_the_wire(request: SpeechRequest) -> None:
    back = wire.loads(wire.dumps(request), SpeechRequest)
    assert back.id == request.id == back.content_id()


def test_request_id_hashes_what_changes_the_output() -> None:
    base = SpeechRequest("Hello there.", speaker=1)
    assert base.id == SpeechRequest("Hello there.", speaker=1).id
    for changed in (
        SpeechRequest("Hello there!", speaker=1),
        SpeechRequest("Hello there.", speaker=2),
        SpeechRequest("Hello there.", speaker=1, seed=7),
        SpeechRequest("Hello there.", speaker=1, temperature=0.5),
        SpeechRequest("Hello there.", speaker=1, topk=10),
        SpeechRequest("Hello there.", speaker=1, max_audio_length_ms=5_000),
        SpeechRequest("Hello there.", speaker=1, context=(Segment(0, "Hi."),)),
    ):
        assert changed.id != base.id


def _valid_request_json() -> dict:
    clip = Audio(np.linspace(-0.5, 0.5, 240, dtype=np.float32), 24_000)
    batch = BatchRequest((SpeechRequest("Hi", context=(Segment(0, "Yo", clip),)),))
    return json.loads(wire.dumps(batch))


def _audio(doc: dict) -> dict:
    return doc["requests"][0]["context"][0]["audio"]


BAD_INPUT = [
    ("schema", lambda d: d.update(schema=2), "unsupported schema 2"),
    ("schema", lambda d: d.pop("schema"), "missing"),
    ("requests[0].speaker", lambda d: d["requests"][0].update(speaker="1"), "integer"),
    ("requests[0].seed", lambda d: d["requests"][0].update(seed=1.5), "integer"),
    ("requests[0].temperature", lambda d: d["requests"][0].update(temperature="hot"), "number"),
    ("requests[0].text", lambda d: d["requests"][0].pop("text"), "required field missing"),
    ("requests[0].voice", lambda d: d["requests"][0].update(voice="x"), "unknown field(s) voice"),
    ("requests", lambda d: d.update(requests="abc"), "expected a list"),
    ("requests[0].context[0].audio.data", lambda d: _audio(d).update(data="@@@"), "base64"),
    ("requests[0].context[0].audio.format", lambda d: _audio(d).update(format="mp3"), "'wav'"),
    ("requests[0].context[0].audio", lambda d: _audio(d).update(sample_rate=16000), "24000"),
    (
        "requests[0].context[0].audio",
        lambda d: _audio(d).update(data=base64.b64encode(b"not audio").decode()),
        "not a readable WAV or FLAC",
    ),
    ("audio_format", lambda d: d.update(audio_format="ogg"), "expected one of"),
]


@pytest.mark.parametrize(("field", "mutate", "message"), BAD_INPUT, ids=[b[0] for b in BAD_INPUT])
def test_malformed_input_names_the_field(field: str, mutate, message: str) -> None:
    doc = _valid_request_json()
    mutate(doc)
    with pytest.raises(WireError) as caught:
        wire.loads(json.dumps(doc), BatchRequest)
    assert caught.value.field == field
    assert message in str(caught.value)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b'{"schema": 1, "requests": [', "not valid JSON"),
        (b"", "not valid JSON"),
        (b"\xff\xfe", "not UTF-8"),
        (b'{"schema": 1, "requests": [], "x": NaN}', "NaN is not allowed"),
        (b"[" * 100_000, "nested too deeply"),
        (b"[1, 2]", "expected a JSON object"),
    ],
)
def test_malformed_json_is_a_wire_error(raw: bytes, message: str) -> None:
    with pytest.raises(WireError, match=message):
        wire.loads(raw, BatchRequest)


def test_oversize_body_is_refused_before_parsing() -> None:
    limits = wire.WireLimits(max_body_bytes=100)
    with pytest.raises(WireError, match="max_body_bytes") as caught:
        wire.loads(b" " * 101, BatchRequest, limits)
    assert caught.value.field == "body"


@pytest.mark.parametrize(
    ("make", "field", "limit"),
    [
        (lambda: BatchRequest((SpeechRequest("a"),) * 5), "requests", "max_requests"),
        (lambda: BatchRequest((SpeechRequest("a" * 65),)), "requests[0].text", "max_text_chars"),
        (
            lambda: BatchRequest((SpeechRequest("a", context=(Segment(0, "b"),) * 4),)),
            "requests[0].context",
            "max_context_segments",
        ),
        (
            lambda: BatchRequest(
                (SpeechRequest("a", context=(Segment(0, "b", Audio.silence(0.6)),)),)
            ),
            "requests[0].context",
            "max_context_seconds",
        ),
        (
            lambda: BatchRequest((SpeechRequest("a", max_audio_length_ms=30_001),)),
            "requests[0].max_audio_length_ms",
            "max_audio_length_ms",
        ),
    ],
)
def test_each_size_is_bounded_by_a_named_setting(make, field: str, limit: str) -> None:
    with pytest.raises(WireError, match=limit) as caught:
        wire.loads(wire.dumps(make()), BatchRequest, SMALL_LIMITS)
    assert caught.value.field == field


def test_audio_bytes_are_bounded_before_decoding() -> None:
    clip = Audio(np.zeros(48_000, np.float32), 24_000)  # FLAC of silence: tiny, decodes large
    doc = json.loads(wire.dumps(Segment(0, "", clip)))
    with pytest.raises(WireError, match="over the limit") as caught:
        wire.loads(json.dumps(doc), Segment, wire.WireLimits(max_decoded_audio_bytes=100_000))
    assert caught.value.field == "audio"
    with pytest.raises(WireError, match="max_audio_bytes"):
        wire.loads(json.dumps(doc), Segment, wire.WireLimits(max_audio_bytes=10))


@settings(max_examples=50, deadline=None)
@given(batch_requests, st.integers(min_value=1, max_value=60))
def test_truncated_json_always_raises_the_named_error(batch: BatchRequest, cut: int) -> None:
    raw = wire.dumps(batch)
    with pytest.raises(WireError):
        wire.loads(raw[: max(0, len(raw) - cut)], BatchRequest)


@settings(max_examples=100, deadline=None)
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(),
        lambda c: st.lists(c) | st.dictionaries(st.text(), c),
        max_leaves=20,
    )
)
def test_arbitrary_json_never_escapes_as_another_error(doc) -> None:
    with contextlib.suppress(WireError):
        wire.loads(json.dumps(doc), BatchRequest)


def test_unencodable_values_are_refused_not_written() -> None:
    with pytest.raises(WireError, match="cannot encode"):
        wire.dumps(CostEstimate("runpod", float("nan"), 0.0, "nan is not JSON"))


def test_lone_surrogates_are_refused_with_the_fix() -> None:
    with pytest.raises(UserError, match="invalid Unicode at character 2"):
        SpeechRequest("ab\ud800cd")
    doc = _valid_request_json()
    doc["requests"][0]["context"][0]["text"] = "x\ud800"
    with pytest.raises(WireError, match="invalid Unicode") as caught:
        wire.structure(doc, BatchRequest)
    assert str(caught.value).startswith("requests[0].context[0]: text has invalid Unicode")


@pytest.mark.parametrize("state", ["bogus", "COMPLETED", 1, None])
def test_job_state_must_be_one_of_the_states(state) -> None:
    with pytest.raises(WireError, match="expected one of 'queued'") as caught:
        wire.loads(json.dumps({"state": state}), JobStatus)
    assert caught.value.field == "state"
