"""The quality gate: every generated chunk is measured on the client before a chapter takes it.

A speech model fails in a few recognisable ways: it stops early or rambles (a loop repeats a
phrase for tens of seconds), it leaves long silences at the start, the end or in the middle,
it clips, or it whispers. Each is cheap to see in the 20 ms frame energies of the chunk, so
`check_chunk` computes those once (vectorised, about a thousand times faster than real time)
and derives every measure from them.

Loops are caught by the duration band: the speech lasts far longer than its text allows at the
voice's pace (`VoicePace` learns that pace from accepted chunks). We chose no repetition
detector: comparing the chunk with itself (envelope or spectral self-similarity) either misses
a model's near-copies or flags rhythmic text such as lists and refrains, and a loop short
enough to stay inside the band is also short enough for a listener to forgive; a reliable
check would need speech recognition, which the client does not carry.
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from collections.abc import Iterable, Sequence
from typing import Any

import attrs
import numpy as np

from ..audio import Audio
from ..errors import UserError
from .roomtone import dbfs
from .script import SECONDS_PER_CHAR

#: Frame length for every energy measure: short enough to time a silence to a syllable, long
#: enough to hold a pitch period or two (a low voice's is up to 12 ms) so speech never reads
#: as silence between two peaks.
FRAME_S = 0.020


def _positive(_instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if not number or not math.isfinite(value) or value <= 0:
        raise UserError(
            f"quality gate: {attribute.name} must be a number above 0, got {value!r}; "
            "give a positive number such as 1.0"
        )


def _dbfs_level(_instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if not number or not -120.0 <= value < 0:
        raise UserError(
            f"quality gate: {attribute.name} must be a level in dBFS from -120 to below 0, "
            f"got {value!r}; give a negative number such as -50"
        )


def _fraction(_instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if not number or not 0 < value <= 1:
        raise UserError(
            f"quality gate: {attribute.name} must be above 0 and at most 1, got {value!r}; "
            "give a fraction such as 0.001"
        )


def _retries(_instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 20:
        raise UserError(
            f"quality gate: {attribute.name} must be a whole number from 0 to 20, got "
            f"{value!r}; 2 is the default"
        )


@attrs.frozen
class GateSettings:
    """The limits a chunk must keep. Defaults suit CSM narration at its ~14 characters a
    second; every limit is one setting so that a voice that reads slowly, or a book that wants
    long dramatic pauses, can loosen just that one."""

    #: The speech may last from `min_pace` to `max_pace` times the voice's seconds per
    #: character times the text's length, give or take `duration_slack_s` (short texts such
    #: as "Yes." vary most in proportion).
    min_pace: float = attrs.field(default=0.5, validator=_positive)
    max_pace: float = attrs.field(default=2.0, validator=_positive)
    duration_slack_s: float = attrs.field(default=0.75, validator=_positive)
    max_leading_silence_s: float = attrs.field(default=1.0, validator=_positive)
    max_trailing_silence_s: float = attrs.field(default=1.5, validator=_positive)
    #: Longer than any pause a narrator makes inside a 300-character chunk.
    max_inner_silence_s: float = attrs.field(default=2.0, validator=_positive)
    #: A 20 ms frame quieter than this is silence (room tone sits at -65, speech above -40).
    silence_dbfs: float = attrs.field(default=-50.0, validator=_dbfs_level)
    #: A sample at or above this magnitude is clipped (16-bit full scale is 0.99997).
    clip_level: float = attrs.field(default=0.999, validator=_fraction)
    max_clipped_fraction: float = attrs.field(default=0.001, validator=_fraction)
    #: The speech level (RMS of the frames that are not silence) must reach this.
    level_floor_dbfs: float = attrs.field(default=-40.0, validator=_dbfs_level)
    #: How many times a failing chunk is regenerated before it is kept with a warning.
    max_retries: int = attrs.field(default=2, validator=_retries)

    def __attrs_post_init__(self) -> None:
        if self.min_pace >= self.max_pace:
            raise UserError(
                f"quality gate: min_pace ({self.min_pace}) must be below max_pace "
                f"({self.max_pace}); the defaults are 0.5 and 2.0"
            )
        if self.level_floor_dbfs <= self.silence_dbfs:
            raise UserError(
                f"quality gate: level_floor_dbfs ({self.level_floor_dbfs}) must be above "
                f"silence_dbfs ({self.silence_dbfs}), or speech could never pass"
            )

    def duration_band(self, characters: int, seconds_per_char: float) -> tuple[float, float]:
        """The shortest and longest speech (seconds) this many characters may take."""
        expected = characters * seconds_per_char
        low = max(0.0, expected * self.min_pace - self.duration_slack_s)
        return low, expected * self.max_pace + self.duration_slack_s


@attrs.frozen
class ChunkMeasures:
    """What the gate measured on one chunk (seconds and dBFS)."""

    duration_s: float
    #: From the first to the last frame that is not silence: what the text took to say.
    speech_s: float
    leading_silence_s: float
    trailing_silence_s: float
    longest_inner_silence_s: float
    clipped_fraction: float
    #: RMS of the frames that are not silence (-inf when there are none).
    speech_level_dbfs: float
    peak_dbfs: float
    characters: int
    expected_min_s: float
    expected_max_s: float

    def as_dict(self) -> dict[str, float | int | None]:
        """JSON-ready: rounded, with None for a level of minus infinity."""
        return {key: _json_number(value) for key, value in attrs.asdict(self).items()}


def _json_number(value: float | int) -> float | int | None:
    if isinstance(value, int):
        return value
    return round(value, 4) if math.isfinite(value) else None


@attrs.frozen
class Verdict:
    """The gate's answer: `ok`, else one short sentence per failed check."""

    ok: bool
    reasons: tuple[str, ...]
    measures: ChunkMeasures | None


def text_characters(text: str) -> int:
    """The characters the pace is counted in: the text with its whitespace runs collapsed, as
    the chunker sends it."""
    return len(" ".join(text.split()))


def frame_energies(samples: np.ndarray, frame: int) -> np.ndarray:
    """Mean square of each `frame`-sample frame (the last one may be shorter), float64."""
    full = samples.size // frame
    head = samples[: full * frame].reshape(full, frame)
    # einsum keeps float32 rows without a float64 copy of the whole chunk: ten times faster,
    # and 480 squares summed in float32 lose nothing a dB figure shows.
    energy = np.einsum("ij,ij->i", head, head).astype(np.float64) / frame
    rest = samples[full * frame :]
    if rest.size:
        energy = np.append(energy, float(np.dot(rest, rest)) / rest.size)
    return energy


def _runs(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Starts and ends (exclusive) of the runs of True in `mask`."""
    edges = np.diff(np.concatenate(([0], mask.astype(np.int8), [0])))
    return np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)


@attrs.frozen
class _Speech:
    """Where the sound is, in frames: first, end of the last, longest gap, mean energy."""

    first: int
    last: int
    longest_gap: int
    energy: float


def _speech_frames(energy: np.ndarray, silence_dbfs: float) -> _Speech:
    sound = energy > 10 ** (silence_dbfs / 10)
    starts, ends = _runs(sound)
    if not starts.size:
        return _Speech(energy.size, energy.size, 0, 0.0)
    gaps = starts[1:] - ends[:-1]
    mean = float(energy[sound].mean())
    return _Speech(int(starts[0]), int(ends[-1]), int(gaps.max(initial=0)), mean)


def leading_silence_s(audio: Audio, silence_dbfs: float = -50.0) -> float:
    """Seconds before the first 20 ms frame louder than `silence_dbfs`."""
    frame = max(1, round(FRAME_S * audio.sample_rate))
    speech = _speech_frames(frame_energies(audio.samples, frame), silence_dbfs)
    return min(speech.first * frame, audio.frames) / audio.sample_rate


def measure_chunk(
    audio: Audio, text: str, settings: GateSettings, seconds_per_char: float
) -> ChunkMeasures:
    """Every measure the gate checks, from one pass over the samples."""
    samples, rate = audio.samples, audio.sample_rate
    frame = max(1, round(FRAME_S * rate))
    speech = _speech_frames(frame_energies(samples, frame), settings.silence_dbfs)
    start, end = min(speech.first * frame, samples.size), min(speech.last * frame, samples.size)
    characters = text_characters(text)
    low, high = settings.duration_band(characters, seconds_per_char)
    clipped = np.count_nonzero(np.abs(samples) >= settings.clip_level)
    return ChunkMeasures(
        duration_s=audio.duration,
        speech_s=(end - start) / rate,
        leading_silence_s=start / rate,
        trailing_silence_s=(samples.size - end) / rate,
        longest_inner_silence_s=speech.longest_gap * frame / rate,
        clipped_fraction=clipped / max(1, samples.size),
        speech_level_dbfs=dbfs(math.sqrt(speech.energy)),
        peak_dbfs=dbfs(audio.peak()),
        characters=characters,
        expected_min_s=low,
        expected_max_s=high,
    )


def check_chunk(
    audio: Audio,
    text: str,
    settings: GateSettings | None = None,
    seconds_per_char: float = SECONDS_PER_CHAR,
) -> Verdict:
    """Whether `audio` is an acceptable reading of `text` at the voice's `seconds_per_char`."""
    settings = settings or GateSettings()
    _check_inputs(text, seconds_per_char)
    if audio.frames == 0:
        return Verdict(False, ("the audio is empty",), None)
    if not audio.is_finite():
        return Verdict(False, ("the audio holds samples that are not numbers",), None)
    measures = measure_chunk(audio, text, settings, seconds_per_char)
    reasons = tuple(_reasons(measures, settings))
    return Verdict(not reasons, reasons, measures)


def _check_inputs(text: str, seconds_per_char: float) -> None:
    if not text_characters(text):
        raise UserError("quality gate: the chunk's text is empty; pass the text it was made from")
    if not (isinstance(seconds_per_char, int | float) and 0 < seconds_per_char < 10):
        raise UserError(
            f"quality gate: seconds per character must be above 0 and below 10, got "
            f"{seconds_per_char!r}; CSM reads about {SECONDS_PER_CHAR}"
        )


def _reasons(m: ChunkMeasures, s: GateSettings) -> Iterable[str]:
    if m.speech_level_dbfs == -math.inf:
        yield (
            f"no speech: the whole chunk is below {s.silence_dbfs:g} dBFS "
            f"(its peak is {m.peak_dbfs:.1f} dBFS)"
        )
        return  # every other measure of a silent chunk says the same thing again
    yield from _duration_reasons(m)
    yield from _silence_reasons(m, s)
    if m.clipped_fraction > s.max_clipped_fraction:
        yield (
            f"{100 * m.clipped_fraction:.2f} % of the samples are clipped "
            f"(limit {100 * s.max_clipped_fraction:g} %)"
        )
    if m.speech_level_dbfs < s.level_floor_dbfs:
        yield (
            f"the speech is too quiet: {m.speech_level_dbfs:.1f} dBFS "
            f"(floor {s.level_floor_dbfs:g} dBFS)"
        )


def _duration_reasons(m: ChunkMeasures) -> Iterable[str]:
    band = f"{m.expected_min_s:.1f} to {m.expected_max_s:.1f} s"
    if m.speech_s > m.expected_max_s:
        yield f"too long: {m.speech_s:.1f} s of speech for {m.characters} characters ({band})"
    elif m.speech_s < m.expected_min_s:
        yield f"too short: {m.speech_s:.1f} s of speech for {m.characters} characters ({band})"


def _silence_reasons(m: ChunkMeasures, s: GateSettings) -> Iterable[str]:
    if m.leading_silence_s > s.max_leading_silence_s:
        yield (
            f"{m.leading_silence_s:.1f} s of silence at the start "
            f"(limit {s.max_leading_silence_s:g} s)"
        )
    if m.trailing_silence_s > s.max_trailing_silence_s:
        yield (
            f"{m.trailing_silence_s:.1f} s of silence at the end "
            f"(limit {s.max_trailing_silence_s:g} s)"
        )
    if m.longest_inner_silence_s > s.max_inner_silence_s:
        yield (
            f"a {m.longest_inner_silence_s:.1f} s silence inside the speech "
            f"(limit {s.max_inner_silence_s:g} s)"
        )


class VoicePace:
    """The voice's seconds per character, learned from accepted chunks: the running median of
    the last `window` of them, so one odd chunk moves it little and the band tightens around
    the voice as the book goes. Until `min_chunks` are in, the prior is used."""

    def __init__(
        self, prior: float = SECONDS_PER_CHAR, *, window: int = 101, min_chunks: int = 5
    ) -> None:
        _check_inputs("x", prior)
        if not 1 <= min_chunks <= window:
            raise ValueError(f"min_chunks must be 1..window ({window}), got {min_chunks}")
        self.prior = prior
        self.min_chunks = min_chunks
        self._recent: deque[float] = deque(maxlen=window)
        self._sorted: list[float] = []

    def __len__(self) -> int:
        return len(self._recent)

    @property
    def seconds_per_char(self) -> float:
        if len(self._recent) < self.min_chunks:
            return self.prior
        middle, odd = divmod(len(self._sorted), 2)
        if odd:
            return self._sorted[middle]
        return (self._sorted[middle - 1] + self._sorted[middle]) / 2

    def observe(self, measures: ChunkMeasures) -> None:
        """Learn from one accepted chunk (never from one kept after failing: it would drag
        the band toward the failure)."""
        if measures.characters <= 0 or measures.speech_s <= 0:
            return
        if len(self._recent) == self._recent.maxlen:
            oldest = self._recent[0]
            del self._sorted[bisect.bisect_left(self._sorted, oldest)]
        pace = measures.speech_s / measures.characters
        self._recent.append(pace)
        bisect.insort(self._sorted, pace)


# --- what the report says ------------------------------------------------------------------


@attrs.frozen
class GateEvent:
    """One failed take of a chunk, for the book's report. `kept` is False when the chunk was
    regenerated after it, True when retries ran out and this take went into the chapter."""

    chapter: int
    chunk: str
    request_id: str
    attempt: int
    reasons: tuple[str, ...]
    cost_usd: float
    kept: bool
    #: Where the chunk starts in its chapter (seconds), once the chapter is assembled.
    offset_s: float | None = None

    def as_dict(self) -> dict[str, Any]:
        found = attrs.asdict(self)
        found["reasons"] = list(self.reasons)
        found["cost_usd"] = round(self.cost_usd, 6)
        found["offset_s"] = None if self.offset_s is None else round(self.offset_s, 2)
        return found


def quality_report(events: Sequence[GateEvent]) -> dict[str, Any]:
    """The report's quality section: every regenerated and every flagged (kept after its last
    retry) chunk with chapter, offset and reasons, and what the rejected takes cost."""
    regenerated = [e.as_dict() for e in events if not e.kept]
    flagged = [e.as_dict() for e in events if e.kept]
    cost = sum(e.cost_usd for e in events if not e.kept)
    return {"regenerated": regenerated, "flagged": flagged, "regeneration_usd": round(cost, 6)}


def summary_lines(events: Sequence[GateEvent]) -> list[str]:
    """The end-of-run lines: a count and cost, then one line per flagged chunk."""
    report = quality_report(events)
    lines = []
    if report["regenerated"]:
        lines.append(
            f"quality gate: {len(report['regenerated'])} takes rejected and regenerated "
            f"(${report['regeneration_usd']:.4f})"
        )
    for event in (e for e in events if e.kept):
        at = "" if event.offset_s is None else f" at {_clock(event.offset_s)}"
        lines.append(f"  kept with a warning: chunk {event.chunk}{at}: {'; '.join(event.reasons)}")
    return lines


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"
