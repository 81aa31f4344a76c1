"""Room tone: the quiet noise of a room, for the pauses of an audiobook.

Digital silence between sentences sounds like the recording dropped out, and ACX rejects it;
real narration pauses hold the room's own faint noise. We make that noise once per chapter
rate: pink (equal energy per octave, like most rooms) above 40 Hz, built in the frequency
domain so the buffer is exactly periodic and tiles without a click, then read from a cursor
so that consecutive pauses do not repeat the same stretch of noise.
"""

from __future__ import annotations

import functools
import math

import numpy as np

from ..audio import Audio

#: ACX wants the noise floor at or below -60 dBFS RMS; -65 keeps a margin for encoders.
ROOM_TONE_DBFS = -65.0
#: Long enough that no listener hears a 6-second loop in noise this faint.
_PERIOD_S = 6.0
#: Below this the "room" would be rumble that small speakers cannot play and that wastes bits.
_LOW_CUT_HZ = 40.0


def dbfs(rms: float) -> float:
    """An RMS level in dB relative to full scale (a full-scale sine is about -3 dBFS)."""
    return 20 * math.log10(rms) if rms > 0 else -math.inf


@functools.lru_cache(maxsize=8)
def _tone_buffer(sample_rate: int, level_dbfs: float, seed: int = 0) -> np.ndarray:
    """One period of tone, shared (read-only) by every `RoomTone` of that rate and level: a
    book has every chapter in progress at once, and a buffer each would grow memory with the
    chapter count."""
    frames = max(1, round(_PERIOD_S * sample_rate))
    freqs = np.fft.rfftfreq(frames, 1 / sample_rate)
    rng = np.random.default_rng(seed)
    spectrum = rng.standard_normal(freqs.size) + 1j * rng.standard_normal(freqs.size)
    shape = np.zeros(freqs.size)
    audible = freqs >= _LOW_CUT_HZ
    shape[audible] = 1 / np.sqrt(freqs[audible])  # 1/f power: pink
    noise = np.fft.irfft(spectrum * shape, n=frames)
    if not noise.any():  # a rate too low to hold anything above the cut: white noise instead
        noise = rng.standard_normal(frames)
    rms = float(np.sqrt(np.mean(np.square(noise))))
    buffer = (noise * (10 ** (level_dbfs / 20) / rms)).astype(np.float32)
    buffer.flags.writeable = False
    return buffer


class RoomTone:
    """Seeded room tone at one sample rate; `take` hands out successive stretches of it."""

    def __init__(self, sample_rate: int, *, level_dbfs: float = ROOM_TONE_DBFS, seed: int = 0):
        if not -120.0 <= level_dbfs <= -30.0:
            raise ValueError(f"room tone level must be -120..-30 dBFS, got {level_dbfs}")
        self.sample_rate = sample_rate
        self.level_dbfs = level_dbfs
        self._buffer = _tone_buffer(sample_rate, level_dbfs)
        # The seed picks where in the shared period this tone starts: chapters differ.
        self._cursor = int(np.random.default_rng(seed).integers(self._buffer.size))

    def take(self, seconds: float) -> Audio:
        """The next `seconds` of tone (rounded to a sample), continuing where the last ended."""
        if not math.isfinite(seconds) or seconds < 0:
            raise ValueError(f"a pause must be 0 seconds or longer, got {seconds}")
        return Audio(self._frames(round(seconds * self.sample_rate)), self.sample_rate)

    def _frames(self, count: int) -> np.ndarray:
        size = self._buffer.size
        start = self._cursor
        self._cursor = (start + count) % size
        if start + count <= size:
            return self._buffer[start : start + count].copy()
        laps, rest = divmod(start + count, size)
        # Tiles of the periodic buffer, cut to start at the cursor.
        return np.tile(self._buffer, laps + (rest > 0))[start : start + count]
