"""The CSM engine with the tiny random model: batching, seeding, context audio, limits."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from csm_offload import Audio, Segment, SpeechRequest, UserError
from csm_offload.audio import CSM_SAMPLE_RATE

pytest_plugins = ["tests.tiny_csm"]
pytestmark = pytest.mark.torch


def _noise(seconds: float, rate: int, seed: int = 0) -> Audio:
    rng = np.random.default_rng(seed)
    return Audio(rng.uniform(-0.2, 0.2, round(seconds * rate)).astype(np.float32), rate)


def test_batch_of_three_returns_three_24k_audios(tiny_engine: Any) -> None:
    requests = [
        SpeechRequest(f"Sentence number {i}.", speaker=i % 2, max_audio_length_ms=320, seed=i)
        for i in range(3)
    ]
    results = tiny_engine.generate(requests)
    assert [r.id for r in results] == [r.id for r in requests]
    for result in results:
        assert result.error is None
        assert result.audio.sample_rate == CSM_SAMPLE_RATE
        assert 0 < result.audio.duration_ms <= 320
        assert result.gpu_ms >= 0
        assert np.isfinite(result.audio.samples).all()
        assert result.audio.peak() <= 1.0


def test_same_seed_gives_identical_samples(tiny_engine: Any) -> None:
    request = SpeechRequest("The same words twice.", max_audio_length_ms=240, seed=7)
    first = tiny_engine.generate([request])[0].audio
    second = tiny_engine.generate([request])[0].audio
    other = tiny_engine.generate([attrs_evolve(request, seed=8)])[0].audio
    assert first == second
    assert first.frames > 0
    assert other != first


def attrs_evolve(request: SpeechRequest, **changes: Any) -> SpeechRequest:
    import attrs

    return attrs.evolve(request, id="", **changes)


def test_context_audio_at_44k1_is_resampled_and_accepted(tiny_engine: Any) -> None:
    from csm_offload_local_csm.engine import to_24k

    voice = _noise(1.0, 44_100)
    assert to_24k(voice).shape == (CSM_SAMPLE_RATE,)
    request = SpeechRequest(
        "A reply in the same voice.",
        speaker=1,
        context=(Segment(0, "Hello there.", voice),),
        max_audio_length_ms=240,
    )
    (result,) = tiny_engine.generate([request])
    assert result.error is None
    assert result.audio.sample_rate == CSM_SAMPLE_RATE
    assert result.audio.frames > 0


def test_overlong_context_is_refused_before_generation(
    tiny_engine: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    real = tiny_engine.model.generate

    def counting(**kwargs: Any) -> Any:
        calls.append(kwargs["input_ids"].shape[0])
        return real(**kwargs)

    monkeypatch.setattr(tiny_engine.model, "generate", counting)
    # Ten minutes of context audio is about 7500 Mimi frames, far past 2048 tokens.
    long_context = (Segment(0, "Long ago.", _noise(600.0, 8_000)),)
    too_long = SpeechRequest("Too much.", context=long_context, max_audio_length_ms=240)
    fine = SpeechRequest("Fine.", max_audio_length_ms=240)
    with pytest.raises(UserError, match="2048-token context"):
        tiny_engine.prepare(too_long)
    assert calls == []
    results = tiny_engine.generate([too_long, fine])
    assert "2048-token context" in results[0].error
    assert results[0].audio is None
    assert results[1].error is None
    assert calls == [1]  # only the good request reached the model


def test_text_too_long_with_frames_is_refused(tiny_engine: Any) -> None:
    # The tiny tokenizer makes one token per character: 2040 characters + 30 s of frames.
    request = SpeechRequest("a" * 2040, max_audio_length_ms=30_000)
    (result,) = tiny_engine.generate([request])
    assert "max_audio_length_ms" in result.error


def test_control_tokens_in_text_are_refused(tiny_engine: Any) -> None:
    (result,) = tiny_engine.generate([SpeechRequest("hi <|AUDIO|>", max_audio_length_ms=80)])
    assert "control token" in result.error


def test_context_without_audio_is_refused(tiny_engine: Any) -> None:
    request = SpeechRequest("Hi.", context=(Segment(0, "no audio"),), max_audio_length_ms=80)
    (result,) = tiny_engine.generate([request])
    assert "needs its audio" in result.error


def test_max_audio_length_cuts_output(tiny_engine: Any) -> None:
    (result,) = tiny_engine.generate([SpeechRequest("Short.", max_audio_length_ms=100)])
    assert result.audio.duration_ms <= 100


def test_cancel_event_stops_the_batch(tiny_engine: Any) -> None:
    import threading

    cancel = threading.Event()
    cancel.set()
    (result,) = tiny_engine.generate([SpeechRequest("Stop.", max_audio_length_ms=800)], cancel)
    assert result.error == "cancelled"


def test_missing_directory_names_it(tmp_path: Path) -> None:
    from csm_offload_local_csm.engine import CsmEngine, EngineOptions, ModelLoadError

    with pytest.raises(ModelLoadError, match=str(tmp_path)):
        CsmEngine.load(EngineOptions(model=str(tmp_path), device="cpu"))


def test_gated_model_message_names_token_and_licence() -> None:
    from csm_offload_local_csm.engine import load_error_message

    message = load_error_message("sesame/csm-1b", OSError("401 gated"))
    assert "HF_TOKEN" in message
    assert "licence" in message
    assert "local directory" in message


@pytest.mark.torch
def test_uncached_gated_model_without_a_token_fails_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import time

    from csm_offload_local_csm import engine

    monkeypatch.setattr(engine, "cached", lambda model: False)
    monkeypatch.setattr(engine, "_hub_token", lambda: None)
    started = time.perf_counter()
    with pytest.raises(engine.ModelLoadError, match="set HF_TOKEN, and run `hf download"):
        engine.CsmEngine.load(engine.EngineOptions(model="sesame/csm-1b", device="cpu"))
    assert time.perf_counter() - started < 5  # no minutes of retries against the Hub


def test_device_and_dtype_choice() -> None:
    import torch
    from csm_offload_local_csm.engine import ModelLoadError, pick_device, pick_dtype

    assert pick_device("cpu") == "cpu"
    assert pick_dtype("auto", "cuda") == torch.bfloat16
    assert pick_dtype("auto", "cpu") == torch.float32
    with pytest.raises(ModelLoadError, match="dtype"):
        pick_dtype("float8", "cpu")
    with pytest.raises(ModelLoadError, match="device"):
        pick_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ModelLoadError, match="CUDA"):
            pick_device("cuda")


@settings(max_examples=40, deadline=None)
@given(
    seeds=st.lists(st.integers(min_value=0, max_value=2**64), min_size=1, max_size=6),
)
def test_group_seed_is_deterministic_and_in_range(seeds: list[int]) -> None:
    from csm_offload_local_csm.engine import _group_seed, _Prepared

    group = [_Prepared(i, SpeechRequest("x", seed=s), [], 1) for i, s in enumerate(seeds)]
    seed = _group_seed(group)
    assert seed == _group_seed(list(group))
    assert 0 <= seed < 2**63
    if len(set(seeds)) == 1:
        assert seed == seeds[0] % 2**63


def test_static_cache_option_generates(tiny_csm_dir: Path) -> None:
    from csm_offload_local_csm.engine import CsmEngine, EngineOptions

    engine = CsmEngine.load(EngineOptions(str(tiny_csm_dir), "cpu", static_cache=True))
    assert engine.model.generation_config.cache_implementation == "static"
    (result,) = engine.generate([SpeechRequest("Static.", max_audio_length_ms=160)])
    assert result.error is None
    assert 0 < result.audio.duration_ms <= 160
