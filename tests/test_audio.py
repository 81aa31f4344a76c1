"""`Audio`: WAV/FLAC round trips, resampling, joining, bounds, and torch at the edge only."""

from __future__ import annotations

import io
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
from hypothesis import given, settings
from hypothesis import strategies as st

from csm_offload import Audio, AudioError

from .strategies import RATES

FORMATS = ("wav", "flac")


@st.composite
def float_audio(draw: st.DrawFn) -> Audio:
    rate = draw(st.sampled_from(RATES))
    frames = draw(st.integers(0, 2_000))
    seed = draw(st.integers(0, 2**32 - 1))
    samples = np.random.default_rng(seed).uniform(-1.2, 1.2, frames).astype(np.float32)
    return Audio(samples, rate)


@pytest.mark.parametrize("fmt", FORMATS)
@settings(max_examples=40, deadline=None)
@given(audio=float_audio())
def test_round_trip_equals_the_16_bit_quantised_input(fmt: str, audio: Audio) -> None:
    back = Audio.decode(audio.encode(fmt))
    assert back == audio.quantized()
    assert back.sample_rate == audio.sample_rate


@pytest.mark.parametrize("rate", RATES)
@pytest.mark.parametrize("fmt", FORMATS)
def test_round_trip_at_several_sample_rates(rate: int, fmt: str) -> None:
    t = np.arange(rate // 10) / rate
    audio = Audio(0.5 * np.sin(2 * np.pi * 440 * t), rate)
    back = Audio.decode(audio.encode(fmt))
    assert back == audio.quantized()
    assert np.max(np.abs(back.samples - audio.samples)) <= 1 / 32768


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(RATES), st.sampled_from(RATES), st.integers(0, 5_000))
def test_resampling_keeps_duration_within_one_sample(src: int, dst: int, frames: int) -> None:
    audio = Audio(np.random.default_rng(frames).uniform(-1, 1, frames), src)
    out = audio.resample(dst)
    assert out.sample_rate == dst
    assert abs(out.frames - frames * dst / src) <= 1


def test_resampling_keeps_a_tone_in_tune() -> None:
    rate = 44_100
    t = np.arange(rate) / rate
    out = Audio(0.5 * np.sin(2 * np.pi * 1000 * t), rate).resample(24_000)
    spectrum = np.abs(np.fft.rfft(out.samples))
    peak_hz = np.argmax(spectrum) * out.sample_rate / out.frames
    assert abs(peak_hz - 1000) < 2
    assert 0.3 < out.rms() < 0.4


def test_concat_resamples_to_the_first_rate_and_adds_durations() -> None:
    a = Audio.silence(0.5, 24_000)
    b = Audio(np.ones(22_050, np.float32) * 0.1, 22_050)
    joined = Audio.concat([a, b, Audio.silence(0.25, 24_000)])
    assert joined.sample_rate == 24_000
    assert abs(joined.duration - 1.75) < 1 / 24_000 * 2
    assert Audio.concat([]).frames == 0


def test_silence_and_levels() -> None:
    quiet = Audio.silence(1.0)
    assert quiet.frames == 24_000 and quiet.rms() == 0 and quiet.peak() == 0
    assert Audio(np.full(10, -0.5), 8_000).peak() == 0.5
    with pytest.raises(AudioError):
        Audio.silence(-1)


def test_stereo_is_mixed_down() -> None:
    stereo = np.stack([np.full(100, 0.5), np.full(100, -0.25)], axis=1)
    assert np.allclose(Audio(stereo, 8_000).samples, 0.125)


@pytest.mark.parametrize(
    "data",
    [b"", b"RIFF....WAVEjunk", b"fLaC" + b"\x00" * 10, bytes(range(256)) * 4],
)
def test_garbage_is_one_clear_error(data: bytes) -> None:
    with pytest.raises(AudioError, match="WAV or FLAC"):
        Audio.decode(data)


def test_decoded_size_is_checked_before_decoding() -> None:
    data = Audio.silence(10.0).encode("flac")  # 240k frames of silence compress to little
    assert len(data) < 100_000
    with pytest.raises(AudioError, match="over the limit"):
        Audio.decode(data, max_decoded_bytes=100_000)


@pytest.mark.parametrize("bad", [0, -8_000, 10**7, 8000.5])
def test_bad_sample_rates_are_refused(bad) -> None:
    with pytest.raises(AudioError, match="sample rate"):
        Audio(np.zeros(4), bad)
    with pytest.raises(AudioError, match="sample rate"):
        Audio.silence(0.1).resample(bad)


def test_bad_format_is_refused() -> None:
    with pytest.raises(AudioError, match="wav, flac"):
        Audio.silence(0.1).encode("mp3")  # type: ignore[arg-type]


@pytest.mark.torch
def test_torch_conversion_at_the_edge() -> None:
    import torch

    audio = Audio(np.linspace(-1, 1, 50, dtype=np.float32), 24_000)
    tensor = audio.to_torch()
    assert isinstance(tensor, torch.Tensor) and tensor.dtype == torch.float32
    assert Audio.from_torch(tensor, 24_000) == audio
    assert Audio.from_torch(tensor.unsqueeze(0), 24_000) == audio  # (1, frames)
    two = torch.stack([tensor, tensor * 0])
    assert np.allclose(Audio.from_torch(two, 24_000).samples, audio.samples / 2)


def test_core_never_imports_torch() -> None:
    code = (
        "import sys, csm_offload, csm_offload.wire, csm_offload.config, csm_offload.plugins, "
        "csm_offload.cli; from csm_offload import Audio; Audio.silence(0.1).resample(16000); "
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def _speech_like(seconds: float = 1.0, rate: int = 24_000) -> Audio:
    t = np.arange(int(seconds * rate)) / rate
    noise = np.random.default_rng(3).standard_normal(t.size)
    return Audio((0.3 * np.sin(2 * np.pi * 220 * t) + 0.05 * noise).astype(np.float32), rate)


def test_lazy_flac_is_checked_but_decoded_only_when_read() -> None:
    data = _speech_like().encode("flac")
    lazy = Audio.decode(data, lazy=True)
    assert not lazy.decoded
    assert (lazy.frames, lazy.sample_rate, lazy.duration_ms) == (24_000, 24_000, 1000)
    assert lazy.encode("flac") == data  # stored as received, never decoded for it
    assert lazy.is_finite() and not lazy.decoded
    assert lazy == Audio.decode(data)  # reading the samples decodes them, once
    assert lazy.decoded


@pytest.mark.parametrize("keep", [0.3, 0.6, 0.95])
def test_lazy_flac_cut_off_is_refused_at_once(keep: float) -> None:
    data = _speech_like().encode("flac")
    with pytest.raises(AudioError, match=r"corrupt|cut off"):
        Audio.decode(data[: int(len(data) * keep)], lazy=True)


def test_lazy_is_only_for_what_can_be_stored_as_received() -> None:
    wav = _speech_like().encode("wav")
    assert Audio.decode(wav, lazy=True).decoded
    stereo = io.BytesIO()
    sf.write(stereo, np.zeros((100, 2), dtype=np.int16), 8000, format="FLAC")
    assert Audio.decode(stereo.getvalue(), lazy=True).decoded


def test_lazy_flac_damaged_inside_fails_clearly_when_read() -> None:
    data = bytearray(_speech_like(2.0).encode("flac"))
    middle = len(data) // 2
    data[middle : middle + 2000] = bytes(2000)  # frames zeroed, the last one intact
    lazy = Audio.decode(bytes(data), lazy=True)
    with pytest.raises(AudioError, match="corrupt"):
        _ = lazy.samples


def test_audio_needs_samples_or_their_bytes() -> None:
    with pytest.raises(AudioError, match="needs samples"):
        Audio(None, 24_000)  # type: ignore[arg-type]
