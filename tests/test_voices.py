"""Voices: reference audio is checked (length, silence, format, transcript) with the fix named."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from csm_offload import Audio, UserError
from csm_offload.config import load_config_text
from csm_offload.voices import (
    load_voice,
    voice_context,
    voice_from_config,
    voice_from_result,
    voice_request,
)


def speechlike(seconds: float, rate: int = 24_000, channels: int = 1) -> np.ndarray:
    rng = np.random.default_rng(3)
    mono = 0.2 * rng.standard_normal(round(rate * seconds)).astype(np.float32)
    return np.stack([mono] * channels, axis=1) if channels > 1 else mono


def write(path: Path, samples: np.ndarray, rate: int = 24_000) -> Path:
    sf.write(str(path), samples, rate)
    return path


@pytest.mark.parametrize(
    ("rate", "channels", "suffix"), [(44_100, 2, ".wav"), (16_000, 1, ".flac")]
)
def test_any_rate_and_channel_count_becomes_24k_mono(
    tmp_path: Path, rate: int, channels: int, suffix: str
) -> None:
    path = write(tmp_path / f"v{suffix}", speechlike(5.0, rate, channels), rate)
    voice = load_voice(path, "Hello there.", speaker=2)
    assert voice.audio.sample_rate == 24_000
    assert abs(voice.audio.duration - 5.0) < 0.01
    assert voice.audio == voice.audio.quantized()  # ids survive the wire
    (segment,) = voice_context(voice)
    assert (segment.speaker, segment.text) == (2, "Hello there.")


def write_text(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("make", "transcript", "words"),
    [
        (lambda p: write(p / "s.wav", np.zeros(24_000 * 5, np.float32)), "Hi.", "silent"),
        (lambda p: write(p / "long.wav", speechlike(120.0)), "Hi.", "3-30 s"),
        (lambda p: write(p / "short.wav", speechlike(1.0)), "Hi.", "3-30 s"),
        (lambda p: write_text(p / "x.wav", "not audio"), "Hi.", "ffmpeg"),
        (lambda p: write(p / "ok.wav", speechlike(5.0)), "  ", "transcript is missing"),
        (lambda p: p / "missing.wav", "Hi.", "no such file"),
    ],
    ids=["silent", "two-minutes", "too-short", "wrong-format", "no-transcript", "missing"],
)
def test_bad_voice_prompts_get_one_clear_error(
    tmp_path: Path, make, transcript: str, words: str
) -> None:
    path = make(tmp_path)
    with pytest.raises(UserError, match=words) as caught:
        load_voice(path, transcript)
    assert str(path) in str(caught.value)


def test_voice_from_result_accepts_a_sentence() -> None:
    audio = Audio(speechlike(1.2), 24_000)
    voice = voice_from_result(audio, "The first sentence.", speaker=1)
    assert voice.transcript == "The first sentence." and voice.speaker == 1
    with pytest.raises(UserError, match="silent"):
        voice_from_result(Audio(np.zeros(24_000, np.float32), 24_000), "Quiet.")


def test_voice_request_uses_the_voice_and_same_text_same_id(tmp_path: Path) -> None:
    path = write(tmp_path / "v.wav", speechlike(4.0))
    voice = load_voice(path, "Hi there.", speaker=3)
    first = voice_request("A line.", voice, seed=5)
    again = voice_request("A line.", load_voice(path, "Hi there.", speaker=3), seed=5)
    assert first.id == again.id and first.speaker == 3 and first.context == voice_context(voice)
    assert voice_request("A line.", None).context == ()


def test_config_voices_load_relative_to_the_file(tmp_path: Path) -> None:
    write(tmp_path / "narrator.wav", speechlike(4.0, 48_000, 2), 48_000)
    text = (
        "voices:\n  narrator:\n    audio: narrator.wav\n    transcript: Hello.\n"
        "    speaker: 1\n    temperature: 0.7\n"
    )
    config = load_config_text(text, str(tmp_path / "csm-offload.yaml"), {})
    voice = voice_from_config(config, "narrator")
    assert voice.speaker == 1 and voice.settings.temperature == 0.7
    assert voice_request("x", voice).temperature == 0.7
    with pytest.raises(UserError, match="no voice named 'bob'"):
        voice_from_config(config, "bob")


def test_config_voice_errors_name_file_line_and_key(tmp_path: Path) -> None:
    write(tmp_path / "quiet.wav", np.zeros(24_000 * 4, np.float32))
    text = "voices:\n  quiet:\n    audio: quiet.wav\n    transcript: Hi.\n"
    config = load_config_text(text, str(tmp_path / "c.yaml"), {})
    with pytest.raises(UserError, match=r"c\.yaml:3: voices\.quiet\.audio: .*silent"):
        voice_from_config(config, "quiet")
    with pytest.raises(UserError, match=r"c\.yaml:\d+: voices\.x\.speaker"):
        load_config_text(
            "voices:\n  x:\n    audio: a.wav\n    transcript: t\n    speaker: two\n",
            str(tmp_path / "c.yaml"),
            {},
        )
