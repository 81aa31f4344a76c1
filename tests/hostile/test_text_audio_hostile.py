"""Hostile text for the chunker, hostile audio bytes for `Audio.decode`, and hostile context for
a request's bounds: each ends in chunks within the limit, a typed error, or good audio."""

from __future__ import annotations

import io
import struct
import time
from collections.abc import Callable

import numpy as np
import pytest
import soundfile as sf
from hypothesis import given, settings
from hypothesis import strategies as st

from csm_offload import Audio, AudioError, UserError, WireError
from csm_offload.chunking import chunk_text
from csm_offload.model import Segment, SpeechRequest
from csm_offload.wire import DEFAULT_LIMITS, check_request

MB = 1_000_000

# --- the chunker -----------------------------------------------------------------------------


def _words_without_punctuation() -> str:
    words = ("alpha", "beta", "gamma", "delta", "epsilon")
    return " ".join(words[i % 5] for i in range(MB // 5))[:MB]


LONG_TEXTS: dict[str, Callable[[], str]] = {
    "1-mb-no-punctuation": _words_without_punctuation,
    "10-mb-single-word": lambda: "x" * (10 * MB),
    "1-mb-cjk-no-spaces": lambda: "你好世界今天天气很好" * (MB // 10),
    "1-mb-emoji": lambda: "🎉👋🏽🌍" * (MB // 4),
    "1-mb-tiny-words": lambda: "a " * (MB // 2),
    "1-mb-dots": lambda: "." * MB,
    "1-mb-paragraphs": lambda: "word\n\n" * (MB // 6),
    "long-words-in-sentences": lambda: ("Short one. " + "y" * 5_000 + " end. ") * 150,
    "1-mb-zero-width-joined": lambda: "a\u200db" * (MB // 3),
}


@pytest.mark.parametrize("make", list(LONG_TEXTS.values()), ids=list(LONG_TEXTS))
@pytest.mark.parametrize("limit", [300, 2_000])
def test_long_text_is_chunked_fast_and_within_the_limit(
    make: Callable[[], str], limit: int
) -> None:
    text = make()
    started = time.perf_counter()
    chunks = chunk_text(text, limit)
    elapsed = time.perf_counter() - started
    assert elapsed < 5.0, f"chunking {len(text)} characters took {elapsed:.1f} s"
    assert chunks and all(0 < len(c) <= limit for c in chunks)
    assert "".join("".join(chunks).split()) == "".join(text.split())


@pytest.mark.parametrize("text", ["", " " * MB, "\n" * MB, "\t \u3000\n" * 1000])
def test_blank_text_gives_no_chunks(text: str) -> None:
    assert chunk_text(text, 300) == []


@pytest.mark.parametrize("limit", [0, -1])
def test_a_limit_below_one_is_a_user_error(limit: int) -> None:
    with pytest.raises(UserError, match="at least 1 character"):
        chunk_text("Hello.", limit)


hostile_chars = st.text(
    alphabet=st.sampled_from(
        [
            *"ab .,;!?\n。",
            "\u200b",
            "\u200d",
            "\u202e",
            "\u0301",
            "ש",
            "\u05c1",
            "م",
            "🎉",
            "\ufeff",
        ]
    ),
    max_size=600,
)


@settings(max_examples=200, deadline=None)
@given(text=hostile_chars, limit=st.integers(min_value=1, max_value=120))
def test_chunks_of_hostile_text_fit_and_lose_nothing(text: str, limit: int) -> None:
    chunks = chunk_text(text, limit)
    assert all(0 < len(c) <= limit for c in chunks)
    assert "".join("".join(chunks).split()) == "".join(text.split())


# --- audio bytes -----------------------------------------------------------------------------

TONE = (0.3 * np.sin(np.arange(24_000) / 10)).astype(np.float32)


def _encode(samples: np.ndarray, fmt: str, subtype: str, rate: int = 24_000) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, samples, rate, format=fmt, subtype=subtype)
    return buffer.getvalue()


FLAC = _encode(TONE, "FLAC", "PCM_16")
WAV = _encode(TONE, "WAV", "PCM_16")


def _wav_at_rate(rate: int) -> bytes:
    data = bytearray(WAV)
    data[24:28] = struct.pack("<I", rate)
    data[28:32] = struct.pack("<I", rate * 2)
    return bytes(data)


def _flac_claiming(frames: int) -> bytes:
    """A short FLAC whose STREAMINFO claims `frames` samples: a tiny file promising hours."""
    data = bytearray(FLAC)
    fields = int.from_bytes(data[18:26], "big")
    fields = (fields & ~((1 << 36) - 1)) | frames
    data[18:26] = fields.to_bytes(8, "big")
    return bytes(data)


BAD_AUDIO: dict[str, tuple[bytes, str]] = {
    "empty": (b"", "not a readable WAV or FLAC"),
    "random-bytes": (bytes(range(256)) * 8, "not a readable WAV or FLAC"),
    "text": (b"RIFF? no, just a text file that starts oddly", "not a readable WAV or FLAC"),
    "truncated-flac-header": (FLAC[:100], "corrupt"),
    "truncated-flac-half": (FLAC[: len(FLAC) // 2], "corrupt"),
    "zero-hz-wav": (_wav_at_rate(0), "not a readable WAV or FLAC"),
    "ten-mhz-wav": (_wav_at_rate(10_000_000), "sample rate must be an integer"),
    "one-hour-claimed": (_flac_claiming(24_000 * 3600), "over the limit"),
    "ogg-vorbis": (_encode(TONE, "OGG", "VORBIS"), "audio must be WAV or FLAC, got OGG"),
    "aiff": (_encode(TONE, "AIFF", "PCM_16"), "audio must be WAV or FLAC, got AIFF"),
}


@pytest.mark.parametrize(("data", "message"), list(BAD_AUDIO.values()), ids=list(BAD_AUDIO))
def test_bad_audio_bytes_are_an_audio_error(data: bytes, message: str) -> None:
    with pytest.raises(AudioError, match=message):
        Audio.decode(data, DEFAULT_LIMITS.max_decoded_audio_bytes)


ODD_BUT_READABLE: dict[str, tuple[bytes, int]] = {
    "eight-channels": (_encode(np.tile(TONE[:, None], (1, 8)), "WAV", "PCM_16"), 24_000),
    "truncated-wav-data": (WAV[: 44 + 1_000], 500),
    "wav-header-only": (WAV[:44], 0),
    "float-wav": (_encode(TONE, "WAV", "FLOAT"), 24_000),
    "24-bit-flac": (_encode(TONE, "FLAC", "PCM_24"), 24_000),
}


@pytest.mark.parametrize(
    ("data", "frames"), list(ODD_BUT_READABLE.values()), ids=list(ODD_BUT_READABLE)
)
def test_odd_but_readable_audio_decodes_to_mono(data: bytes, frames: int) -> None:
    audio = Audio.decode(data, DEFAULT_LIMITS.max_decoded_audio_bytes)
    assert audio.samples.ndim == 1 and audio.frames == frames
    assert np.isfinite(audio.samples).all()


# --- context and request bounds ----------------------------------------------------------------


def _hour_of_context() -> SpeechRequest:
    # One sample a second: an hour of context in 3600 samples.
    return SpeechRequest("Hi.", context=(Segment(0, "Long.", Audio(np.zeros(3600), 1)),))


BAD_REQUESTS: dict[str, tuple[Callable[[], SpeechRequest], str]] = {
    "one-hour-of-context": (_hour_of_context, "max_context_seconds"),
    "too-many-context-segments": (
        lambda: SpeechRequest("Hi.", context=tuple(Segment(0, "x") for _ in range(33))),
        "max_context_segments",
    ),
    "text-over-the-limit": (lambda: SpeechRequest("a" * 5_001), "max_text_chars"),
    "context-text-over-the-limit": (
        lambda: SpeechRequest("Hi.", context=(Segment(0, "b" * 5_001),)),
        "max_text_chars",
    ),
    "zero-length-cap": (lambda: SpeechRequest("Hi.", max_audio_length_ms=0), "must be positive"),
    "ten-hour-cap": (lambda: SpeechRequest("Hi.", max_audio_length_ms=36_000_000), "over"),
    "topk-zero": (lambda: SpeechRequest("Hi.", topk=0), "must be positive"),
    "negative-temperature": (lambda: SpeechRequest("Hi.", temperature=-1.0), "0 or more"),
}


@pytest.mark.parametrize(("make", "message"), list(BAD_REQUESTS.values()), ids=list(BAD_REQUESTS))
def test_requests_over_a_bound_are_a_wire_error(
    make: Callable[[], SpeechRequest], message: str
) -> None:
    with pytest.raises(WireError, match=message):
        check_request(make(), DEFAULT_LIMITS)


@pytest.mark.parametrize("text", ["caf\udce9", "\ud800", "ok \udfff ok"])
def test_lone_surrogates_are_refused_when_a_request_is_made(text: str) -> None:
    with pytest.raises(UserError, match="lone surrogate"):
        SpeechRequest(text)
    with pytest.raises(UserError, match="lone surrogate"):
        Segment(0, text)
