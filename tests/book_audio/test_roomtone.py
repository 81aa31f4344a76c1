"""Room tone: below ACX's noise floor yet never digital silence, seeded, and seamless however
it is sliced."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from csm_offload.audio import Audio
from csm_offload.book.roomtone import ROOM_TONE_DBFS, RoomTone, dbfs

from ..strategies import RATES

#: ACX: the noise floor must be at or below -60 dB RMS.
ACX_NOISE_FLOOR_DBFS = -60.0


def _longest_zero_run(pcm: np.ndarray) -> int:
    zero = np.concatenate(([0], (pcm == 0).astype(np.int8), [0]))
    edges = np.flatnonzero(np.diff(zero))
    return int(np.max(edges[1::2] - edges[::2])) if edges.size else 0


@pytest.mark.parametrize("rate", RATES)
def test_level_is_about_minus_65_and_below_the_acx_floor_once_stored(rate: int) -> None:
    tone = RoomTone(rate).take(10.0)
    assert abs(dbfs(tone.rms()) - ROOM_TONE_DBFS) < 0.5
    stored = Audio.decode(tone.encode("flac"))  # what the chapter file holds: 16-bit PCM
    assert dbfs(stored.rms()) <= ACX_NOISE_FLOOR_DBFS
    assert abs(dbfs(stored.rms()) - ROOM_TONE_DBFS) < 0.5


@pytest.mark.parametrize("rate", RATES)
def test_it_is_never_digital_silence_even_in_16_bit(rate: int) -> None:
    stored = Audio.decode(RoomTone(rate).take(7.0).encode("flac"))
    pcm = np.rint(stored.samples * 32768).astype(np.int32)
    # Any run of zero samples is a few samples long, never a millisecond of silence.
    assert _longest_zero_run(pcm) < rate // 1000
    assert np.count_nonzero(pcm) > 0.9 * pcm.size


def test_same_seed_same_tone_and_other_seeds_differ() -> None:
    first = RoomTone(24_000, seed=7).take(3.0)
    assert RoomTone(24_000, seed=7).take(3.0) == first
    assert RoomTone(24_000, seed=8).take(3.0) != first


@settings(max_examples=40, deadline=None)
@given(
    rate=st.sampled_from(RATES),
    lengths=st.lists(st.integers(0, 400_000), min_size=1, max_size=8),
)
def test_successive_takes_are_one_continuous_tone(rate: int, lengths: list[int]) -> None:
    """Pauses continue the noise where the last left off, across the buffer's wrap too."""
    sliced = RoomTone(rate)
    parts = [sliced.take(frames / rate) for frames in lengths]
    whole = RoomTone(rate).take(sum(lengths) / rate)
    assert [part.frames for part in parts] == lengths
    assert np.array_equal(np.concatenate([part.samples for part in parts]), whole.samples)


def test_the_loop_has_no_click_where_the_buffer_wraps() -> None:
    rate = 24_000
    tone = RoomTone(rate).take(13.0).samples  # more than two laps of the 6 s buffer
    wrap = round(6.0 * rate)
    steps = np.abs(np.diff(tone))
    assert steps[wrap - 1] <= np.percentile(steps, 99.9)
    assert np.array_equal(tone[:wrap], tone[wrap : 2 * wrap])  # it is the same noise


def test_the_spectrum_is_pink_above_40_hz() -> None:
    rate = 24_000
    samples = RoomTone(rate).take(6.0).samples.astype(np.float64)
    power = np.abs(np.fft.rfft(samples)) ** 2
    freqs = np.fft.rfftfreq(samples.size, 1 / rate)

    def band(low: float, high: float) -> float:
        return float(power[(freqs >= low) & (freqs < high)].sum())

    assert band(1, 39) < 1e-9 * band(40, rate / 2)  # nothing below the cut
    # Pink noise has equal energy per octave (white would have 16 times more up there).
    ratio = band(3200, 6400) / band(200, 400)
    assert 0.5 < ratio < 2.0


@settings(max_examples=30, deadline=None)
@given(rate=st.integers(1, 200_000), level=st.floats(-100, -40))
def test_any_rate_and_level_gives_that_level(rate: int, level: float) -> None:
    tone = RoomTone(rate, level_dbfs=level).take(12.0)  # two whole laps of the buffer
    assert abs(dbfs(tone.rms()) - level) < 0.5
    assert tone.sample_rate == rate


@pytest.mark.parametrize("seconds", [-0.1, math.nan, math.inf])
def test_a_negative_or_endless_pause_is_refused(seconds: float) -> None:
    with pytest.raises(ValueError, match="0 seconds or longer"):
        RoomTone(24_000).take(seconds)


@pytest.mark.parametrize("level", [-20.0, -130.0, math.nan])
def test_a_level_outside_room_tone_range_is_refused(level: float) -> None:
    with pytest.raises(ValueError, match="dBFS"):
        RoomTone(24_000, level_dbfs=level)


def test_dbfs_of_silence_is_minus_infinity() -> None:
    assert dbfs(0.0) == -math.inf
    assert dbfs(1.0) == 0.0
