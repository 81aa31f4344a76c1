"""The batch-level shared context: a voice prompt travels once per job, requests keep their ids."""

from __future__ import annotations

import json

import numpy as np
import pytest
from cattrs.errors import ClassValidationError
from csm_offload_local_csm.worker import parse_batch
from hypothesis import given, settings

from csm_offload import Audio, BatchRequest, Result, Segment, SpeechRequest, WireError, wire

from .strategies import SMALL_LIMITS, voiced_batch_requests


def prompt(seconds: float = 10.0) -> Segment:
    rng = np.random.default_rng(1)
    samples = (0.2 * rng.standard_normal(round(24_000 * seconds))).astype(np.float32)
    return Segment(0, "The voice prompt's words.", Audio(samples, 24_000).quantized())


def voiced(count: int, seconds: float = 10.0) -> BatchRequest:
    voice = prompt(seconds)
    return BatchRequest(tuple(SpeechRequest(f"Chunk {i}.", context=(voice,)) for i in range(count)))


@settings(max_examples=60, deadline=None)
@given(voiced_batch_requests())
def test_voiced_batches_round_trip_with_their_ids(batch: BatchRequest) -> None:
    raw = wire.dumps(batch)
    back = wire.loads(raw, BatchRequest)
    assert back == batch
    assert [r.id for r in back.requests] == [r.content_id() for r in batch.requests]
    if len({r.id for r in batch.requests}) == len(batch.requests):  # the worker's own rule
        assert parse_batch(json.loads(raw)).requests == list(batch.requests)


def test_the_prompt_travels_once_and_every_request_refers_to_it() -> None:
    batch = voiced(8)
    doc = json.loads(wire.dumps(batch))
    data = doc["shared_context"][0]["audio"]["data"]
    assert wire.dumps(batch).count(data.encode()) == 1
    assert all(r["context_ref"] == "shared" and r["context"] == [] for r in doc["requests"])
    assert all(
        r.context == batch.requests[0].context
        for r in wire.loads(wire.dumps(batch), BatchRequest).requests
    )


def test_ids_do_not_depend_on_the_wire_form() -> None:
    voice = prompt(3.0)
    alone = SpeechRequest("Same text.", context=(voice,))
    batch = BatchRequest((alone, SpeechRequest("Other.", context=(voice,))))
    assert wire.loads(wire.dumps(batch), BatchRequest).requests[0].id == alone.id
    assert "shared_context" not in json.loads(wire.dumps(BatchRequest((alone,))))


def test_batches_without_a_shared_voice_are_sent_as_before() -> None:
    batch = BatchRequest((SpeechRequest("a"), SpeechRequest("b", context=(Segment(0, "x"),))))
    doc = json.loads(wire.dumps(batch))
    assert set(doc) == {"requests", "audio_format", "schema"}
    assert all("context_ref" not in r for r in doc["requests"])


def test_hoisting_can_be_turned_off_for_old_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(wire.HOIST_ENV, "0")
    batch = voiced(2, 3.0)
    doc = json.loads(wire.dumps(batch))
    assert "shared_context" not in doc
    assert wire.loads(json.dumps(doc), BatchRequest) == batch


def test_an_old_decoder_refuses_the_shared_context_loudly() -> None:
    """A decoder without the hook (an old worker) must fail naming the field, never drop it."""
    doc = json.loads(wire.dumps(voiced(2, 3.0)))
    with pytest.raises(ClassValidationError) as caught:
        wire._plain_batch(doc, BatchRequest)
    path, message = wire.first_error(caught.value)
    # It stops at the first request's `context_ref` (or the batch's `shared_context`).
    assert path in {("shared_context",), ("requests", 0, "context_ref")}
    assert "unknown field(s)" in message


def test_a_ten_second_prompt_costs_one_copy_per_job_at_batch_8() -> None:
    plain = len(wire.dumps(BatchRequest(tuple(SpeechRequest(f"Chunk {i}.") for i in range(8)))))
    batch = voiced(8)
    with_voice = len(wire.dumps(batch))
    prompt_bytes = len(wire.dumps(batch.requests[0].context[0]))
    ideal = plain + prompt_bytes  # the prompt exactly once, nothing else added
    assert with_voice <= 1.10 * ideal
    assert with_voice < 2 * prompt_bytes  # never two copies


def _doc() -> dict:
    return json.loads(wire.dumps(voiced(2, 0.1)))


@pytest.mark.parametrize(
    ("mutate", "field", "message"),
    [
        (lambda d: d.pop("shared_context"), "requests[0].context_ref", "the batch has none"),
        (lambda d: d["requests"][1].update(context_ref="x"), "requests[1].context_ref", "expected"),
        (
            lambda d: d["shared_context"][0]["audio"].update(data="@@"),
            "shared_context[0].audio.data",
            "base64",
        ),
        (lambda d: d.update(shared_context="abc"), "shared_context", "expected a list"),
    ],
)
def test_bad_shared_context_names_the_field(mutate, field: str, message: str) -> None:
    doc = _doc()
    mutate(doc)
    with pytest.raises(WireError, match=message) as caught:
        wire.loads(json.dumps(doc), BatchRequest)
    assert caught.value.field == field


def test_limits_apply_to_the_rebuilt_context() -> None:
    doc = json.loads(wire.dumps(voiced(2, 0.6)))
    with pytest.raises(WireError, match="max_context_seconds") as caught:
        wire.loads(json.dumps(doc), BatchRequest, SMALL_LIMITS)
    assert caught.value.field == "shared_context.context"
    # Shared and own context together count toward the per-request bound.
    voice = prompt(0.3)
    own = Segment(1, "own", prompt(0.3).audio)
    batch = BatchRequest(
        (SpeechRequest("a", context=(voice, own)), SpeechRequest("b", context=(voice,)))
    )
    with pytest.raises(WireError, match="max_context_seconds") as caught:
        wire.loads(wire.dumps(batch), BatchRequest, SMALL_LIMITS)
    assert caught.value.field == "requests[0].context"


def test_the_worker_answers_a_bad_reference_in_its_own_result() -> None:
    doc = _doc()
    doc["requests"][1]["context_ref"] = "elsewhere"
    parsed = parse_batch(doc)
    assert isinstance(parsed.items[1], Result)
    assert "requests[1].context_ref" in (parsed.items[1].error or "")
    assert parsed.items[0] == voiced(2, 0.1).requests[0]


def test_the_worker_refuses_a_bad_shared_context_for_the_whole_body() -> None:
    doc = _doc()
    doc["shared_context"][0]["audio"]["sample_rate"] = 16_000
    with pytest.raises(WireError) as caught:
        parse_batch(doc)
    assert caught.value.field == "shared_context[0].audio"
