"""Tests of the quality gate, loudness and subtitles, with speech-like audio made here.

`speech` makes something a level meter and a silence detector cannot tell from narration:
voiced syllables (a gliding pitch with harmonics under a Hann envelope) and bursts of hiss,
grouped into words with short gaps, at a chosen RMS level.
"""

from __future__ import annotations

import numpy as np

from csm_offload.audio import Audio

RATE = 24_000


def _syllable(rng: np.random.Generator, pitch: float, rate: int) -> np.ndarray:
    frames = int(rng.uniform(0.09, 0.28) * rate)
    envelope = np.hanning(frames)
    if rng.random() < 0.2:
        return 0.3 * np.diff(rng.standard_normal(frames + 1)) * envelope
    glide = np.linspace(pitch, pitch * rng.uniform(0.85, 1.1), frames)
    phase = 2 * np.pi / rate * np.cumsum(glide)
    voiced = sum(np.sin(k * phase) / k for k in range(1, 9))
    return voiced * envelope


def speech_samples(seconds: float, *, rms_dbfs: float = -20.0, seed: int = 0, rate: int = RATE):
    """`seconds` of speech-like float32 samples at `rms_dbfs` (gaps between words included)."""
    rng = np.random.default_rng(seed)
    out = np.zeros(round(seconds * rate))
    at, pitch = 0, 140.0
    while at < out.size:
        for _ in range(rng.integers(1, 5)):
            pitch = float(np.clip(pitch * rng.uniform(0.93, 1.07), 80, 260))
            part = _syllable(rng, pitch, rate)[: out.size - at]
            out[at : at + part.size] = part
            at += part.size
        at += int(rng.uniform(0.04, 0.18) * rate)
    out *= 10 ** (rms_dbfs / 20) / np.sqrt(np.mean(np.square(out)))
    return out.astype(np.float32)


def speech(seconds: float, *, rms_dbfs: float = -20.0, seed: int = 0, rate: int = RATE) -> Audio:
    return Audio(speech_samples(seconds, rms_dbfs=rms_dbfs, seed=seed, rate=rate), rate)


def silence_dbfs(seconds: float, level_dbfs: float = -70.0, seed: int = 1, rate: int = RATE):
    """Faint white noise: the silence a model leaves is rarely digital zero."""
    rng = np.random.default_rng(seed)
    noise = rng.standard_normal(round(seconds * rate)) * 10 ** (level_dbfs / 20)
    return noise.astype(np.float32)


def text_of(characters: int) -> str:
    """Plausible text of exactly `characters` characters."""
    words = ["the", "keeper", "climbed", "the", "stair", "and", "lit", "the", "lamp", "before"]
    out = ""
    index = 0
    while len(out) < characters:
        out += ("" if not out else " ") + words[index % len(words)]
        index += 1
    body = out[: characters - 1]
    if body.endswith(" "):  # keep the length exact: no whitespace run to collapse
        body = body[:-1] + "s"
    return body + "."
