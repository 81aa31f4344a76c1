"""Loudness: measured on the whole book, applied per chapter from one gain plan (docs/loudness.md).

`measure` streams each chapter FLAC in 10-second blocks (a book never sits in memory) and keeps,
per chapter, its 400 ms BS.1770 block energies, sum of squares, peaks, noise floor and the room
tone at its head and tail. pyloudnorm's `Meter` wants the whole signal as one array, so we use
its K-weighting filters (the ITU-R BS.1770-4 shelf and high-pass, as pyloudnorm defines them)
through `scipy.signal.sosfilt` with the filter state carried from block to block, and gate the
blocks ourselves exactly as its `integrated_loudness` does: 400 ms blocks with 75 % overlap are
four consecutive 100 ms sums, so a block boundary loses nothing, and the book's loudness gates
the blocks of every chapter together.

`plan` turns the measures into one gain per chapter for a preset (`ACX`, `PODCAST`, `NONE`):
the same gain for the whole book, moved for a chapter only as far as keeps it inside the
preset's window, and a look-ahead limiter only for a chapter whose peaks no gain inside the
window can keep under the ceiling. `apply` rewrites a chapter with its gain, streaming, under
a temporary name that replaces the file only once complete. `check`/`check_acx` measure
finished chapters (FLAC or MP3) against a preset, criterion by criterion.

scipy and pyloudnorm are imported inside the functions that need them, so that importing this
module (or the command line) stays light.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import attrs
import numpy as np
import soundfile as sf

from ..audio import Audio
from ..errors import UserError
from ..output import AudioWriter
from .encode import MP3_KBPS, MP3_RATE
from .quality import frame_energies
from .roomtone import dbfs

#: Seconds read at a time: large enough that per-block overhead vanishes, small enough that
#: a block and its filtered copy take a few megabytes.
BLOCK_S = 10.0
#: BS.1770's gating block is 400 ms with 75 % overlap: a sum of four 100 ms steps.
_STEP_S = 0.1
_STEPS_PER_BLOCK = 4
ABSOLUTE_GATE_LUFS = -70.0
RELATIVE_GATE_LU = -10.0
#: ACX measures the noise floor as the RMS of the quietest half second.
NOISE_WINDOW_S = 0.5
#: Head and tail room tone: a stretch of 20 ms frames below the silence threshold.
EDGE_FRAME_S = 0.02
#: Head and tail are looked for in this much audio at each end (ACX's limits are 1 and 5 s).
EDGE_SCAN_S = 30.0
SILENCE_DBFS = -50.0
#: Silence sits at least this far above the noise floor (a loud room is not speech).
_SILENCE_OVER_FLOOR_DB = 10.0

#: ITU-R BS.1770-4 Annex 2: the 4× oversampling interpolator, 4 phases of 12 taps.
_TP_TAPS = np.array(
    [
        [0.0017089843750, 0.0109863281250, -0.0196533203125, 0.0332031250000,
         -0.0594482421875, 0.1373291015625, 0.9721679687500, -0.1022949218750,
         0.0476074218750, -0.0266113281250, 0.0148925781250, -0.0083007812500],
        [-0.0291748046875, 0.0292968750000, -0.0517578125000, 0.0891113281250,
         -0.1665039062500, 0.4650878906250, 0.7797851562500, -0.2003173828125,
         0.1015625000000, -0.0582275390625, 0.0330810546875, -0.0189208984375],
        [-0.0189208984375, 0.0330810546875, -0.0582275390625, 0.1015625000000,
         -0.2003173828125, 0.7797851562500, 0.4650878906250, -0.1665039062500,
         0.0891113281250, -0.0517578125000, 0.0292968750000, -0.0291748046875],
        [-0.0083007812500, 0.0148925781250, -0.0266113281250, 0.0476074218750,
         -0.1022949218750, 0.9721679687500, 0.1373291015625, -0.0594482421875,
         0.0332031250000, -0.0196533203125, 0.0109863281250, 0.0017089843750],
    ]
)  # fmt: skip
_TAPS = _TP_TAPS.shape[1]
_HISTORY = _TAPS - 1
#: A window of 12 samples, oldest first, times this gives the 4 interpolated values.
_TP_KERNEL = np.ascontiguousarray(_TP_TAPS[:, ::-1].T, dtype=np.float32)
#: No interpolated value exceeds this many times the largest of its 12 input samples.
_TP_WORST_GAIN = float(np.abs(_TP_TAPS).sum(axis=1).max())

# --- measuring -------------------------------------------------------------------------------


@attrs.frozen(eq=False)
class ChapterLoudness:
    """One chapter file's measures. Levels in dBFS (dBTP, LUFS); -inf for digital silence."""

    path: Path
    sample_rate: int
    frames: int
    #: RMS of the whole file, pauses included: what ACX measures.
    rms_dbfs: float
    sample_peak_dbfs: float
    #: The peak of the signal oversampled 4× with BS.1770-4's interpolator (never below the
    #: sample peak).
    true_peak_dbtp: float
    #: RMS of the quietest 0.5 s window.
    noise_floor_dbfs: float
    integrated_lufs: float
    #: Room tone before the first and after the last sound (at most `EDGE_SCAN_S`).
    head_s: float
    tail_s: float
    sum_squares: float = attrs.field(repr=False)
    #: Mean squares of the K-weighted 400 ms gating blocks, for the book's gated loudness.
    blocks: np.ndarray = attrs.field(repr=False)

    @property
    def duration(self) -> float:
        return self.frames / self.sample_rate

    def as_dict(self) -> dict[str, Any]:
        keys = ("rms_dbfs", "sample_peak_dbfs", "true_peak_dbtp", "noise_floor_dbfs")
        found: dict[str, Any] = {"path": str(self.path), "duration_s": round(self.duration, 3)}
        for key in (*keys, "integrated_lufs", "head_s", "tail_s"):
            value = getattr(self, key)
            found[key] = round(value, 2) if math.isfinite(value) else None
        return found


@attrs.frozen(eq=False)
class BookLoudness:
    """The measures of every chapter, and of the book as one programme."""

    chapters: tuple[ChapterLoudness, ...]

    @property
    def frames(self) -> int:
        return sum(c.frames for c in self.chapters)

    @property
    def duration(self) -> float:
        return sum(c.duration for c in self.chapters)

    @property
    def rms_dbfs(self) -> float:
        frames = self.frames
        total = sum(c.sum_squares for c in self.chapters)
        return dbfs(math.sqrt(total / frames)) if frames else -math.inf

    @property
    def true_peak_dbtp(self) -> float:
        return max((c.true_peak_dbtp for c in self.chapters), default=-math.inf)

    @property
    def integrated_lufs(self) -> float:
        """Gated over all the chapters' blocks together, as one programme."""
        return gated_loudness(np.concatenate([c.blocks for c in self.chapters]))


def gated_loudness(blocks: np.ndarray) -> float:
    """BS.1770-4 integrated loudness (LUFS) of the K-weighted 400 ms block mean squares: the
    blocks above -70 LUFS, then those above their mean's loudness minus 10 LU, averaged."""
    if not blocks.size:
        return -math.inf
    with np.errstate(divide="ignore"):
        level = -0.691 + 10 * np.log10(blocks)
    above = blocks[level >= ABSOLUTE_GATE_LUFS]
    if not above.size:
        return -math.inf
    relative = -0.691 + 10 * math.log10(float(above.mean())) + RELATIVE_GATE_LU
    kept = blocks[(level > relative) & (level > ABSOLUTE_GATE_LUFS)]
    return -0.691 + 10 * math.log10(float(kept.mean())) if kept.size else -math.inf


def measure(chapter_paths: Iterable[Path | str]) -> BookLoudness:
    """Measure every chapter file, one block at a time."""
    paths = [Path(p) for p in chapter_paths]
    if not paths:
        raise UserError("no chapter files to measure; assemble the chapters first")
    return BookLoudness(tuple(measure_chapter(path) for path in paths))


def _open(path: Path) -> sf.SoundFile:
    try:
        return sf.SoundFile(str(path))
    except (sf.LibsndfileError, RuntimeError, OSError) as exc:
        raise UserError(
            f"cannot read the chapter audio {path} ({exc}); assemble it again"
        ) from None


def _read(reader: sf.SoundFile, frames: int) -> np.ndarray:
    """Up to `frames` frames as mono float32 (channels averaged, as `Audio` does)."""
    block = reader.read(frames, dtype="float32", always_2d=True)
    if block.shape[1] == 1:
        return np.ascontiguousarray(block[:, 0])
    return block.mean(axis=1, dtype=np.float32)


def _k_weighting(rate: int) -> np.ndarray:
    """pyloudnorm's K-weighting stages (BS.1770-4) as second-order sections for sosfilt."""
    from pyloudnorm import Meter

    # `_filters` is how the Meter holds its stages; tests compare our loudness with the
    # Meter's own, so a change there cannot pass unnoticed.
    stages = Meter(rate, filter_class="K-weighting")._filters.values()
    return np.array([[*(s.passband_gain * s.b), *s.a] for s in stages], dtype=np.float64)


class _TruePeak:
    """The 4×-oversampled peak of a stream, fed block by block. An interpolated value is at
    most `_TP_WORST_GAIN` times its largest input sample, so only outputs near samples within
    that factor of the peak so far can beat it; only those are computed (a few percent of
    speech), which makes the exact BS.1770-4 measure as cheap as a sample peak."""

    def __init__(self) -> None:
        self.history = np.zeros(_HISTORY, dtype=np.float32)
        self.sample_peak = 0.0
        self.peak = 0.0

    def feed(self, block: np.ndarray) -> None:
        if block.size:
            self.sample_peak = max(self.sample_peak, float(np.abs(block).max()))
            self.peak = max(self.peak, self.sample_peak)
        padded = np.concatenate((self.history, block))
        self.history = padded[-_HISTORY:]
        if self.peak > 0:
            index = _outputs_near(padded, self.peak / _TP_WORST_GAIN)
            if index.size:
                self.peak = max(self.peak, float(np.abs(_interpolated(padded, index)).max()))

    def finish(self) -> float:
        self.feed(np.zeros(_HISTORY, dtype=np.float32))  # the interpolator's ringing
        return self.peak


def _outputs_near(padded: np.ndarray, level: float) -> np.ndarray:
    """The outputs n (made of `padded[n : n + 12]`, the last of which is the newest) whose 12
    input samples include one at or above `level`."""
    outputs = padded.size - _HISTORY
    hot = np.flatnonzero(np.abs(padded) >= level)
    if not hot.size or outputs <= 0:
        return hot[:0]
    # Sample c feeds outputs c-11..c; marking 12 shifted copies is cheaper than sorting.
    marks = np.zeros(padded.size + _TAPS, dtype=bool)
    for shift in range(_TAPS):
        marks[hot + shift] = True
    return np.flatnonzero(marks[_HISTORY : _HISTORY + outputs])


def _interpolated(padded: np.ndarray, index: np.ndarray) -> np.ndarray:
    """The 4 interpolated values of each output in `index`, shape (len(index), 4)."""
    windows = np.lib.stride_tricks.sliding_window_view(padded, _TAPS)[index]
    return windows @ _TP_KERNEL


class _ChapterMeter:
    """Feeds blocks of one chapter; sums per 100 ms step (K-weighted and plain)."""

    def __init__(self, rate: int) -> None:
        self.rate = rate
        self.step = max(1, round(_STEP_S * rate))
        # float32 halves the filter's time and moves a level by under 0.001 dB.
        self.sos = _k_weighting(rate).astype(np.float32)
        self.state = np.zeros((self.sos.shape[0], 2), dtype=np.float32)
        self.weighted: list[np.ndarray] = []
        self.plain: list[np.ndarray] = []
        self.sum_squares = 0.0
        self.frames = 0
        self.peak = _TruePeak()

    def feed(self, block: np.ndarray) -> None:
        from scipy.signal import sosfilt

        filtered, self.state = sosfilt(self.sos, block, zi=self.state)
        whole = block.size // self.step * self.step  # BS.1770 drops a last partial block
        self.weighted.append(_step_sums(filtered[:whole], self.step))
        plain = _step_sums(block[:whole], self.step)
        self.plain.append(plain)
        rest = block[whole:]
        self.sum_squares += float(plain.sum()) + float(np.dot(rest, rest))
        self.frames += block.size
        self.peak.feed(block)

    def block_energies(self) -> np.ndarray:
        steps = np.concatenate(self.weighted) if self.weighted else np.zeros(0)
        if steps.size < _STEPS_PER_BLOCK:
            return np.zeros(0)
        sums = np.convolve(steps, np.ones(_STEPS_PER_BLOCK), mode="valid")
        return sums / (_STEPS_PER_BLOCK * self.step)

    def noise_floor(self) -> float:
        steps = np.concatenate(self.plain) if self.plain else np.zeros(0)
        size = max(1, round(NOISE_WINDOW_S / _STEP_S))
        if steps.size < size:  # shorter than one window: the whole file is the window
            return dbfs(math.sqrt(self.sum_squares / self.frames)) if self.frames else -math.inf
        windows = np.convolve(steps, np.ones(size), mode="valid") / (size * self.step)
        return dbfs(math.sqrt(max(0.0, float(windows.min()))))


def _step_sums(samples: np.ndarray, step: int) -> np.ndarray:
    rows = samples.reshape(-1, step)
    return np.einsum("ij,ij->i", rows, rows).astype(np.float64)


def measure_chapter(path: Path, *, block_s: float = BLOCK_S) -> ChapterLoudness:
    """One chapter file's measures, read `block_s` seconds at a time."""
    with _open(path) as reader:
        rate = int(reader.samplerate)
        meter = _ChapterMeter(rate)
        frames_per_block = max(1, round(block_s / _STEP_S)) * meter.step
        while (block := _read(reader, frames_per_block)).size:
            meter.feed(block)
    frames = meter.frames
    noise = meter.noise_floor()
    blocks = meter.block_energies()
    head, tail = _edges(path, rate, frames, noise)
    return ChapterLoudness(
        path=path,
        sample_rate=rate,
        frames=frames,
        rms_dbfs=dbfs(math.sqrt(meter.sum_squares / frames)) if frames else -math.inf,
        sample_peak_dbfs=dbfs(meter.peak.sample_peak),
        true_peak_dbtp=dbfs(meter.peak.finish()),
        noise_floor_dbfs=noise,
        integrated_lufs=gated_loudness(blocks),
        head_s=head,
        tail_s=tail,
        sum_squares=meter.sum_squares,
        blocks=blocks,
    )


def _edges(path: Path, rate: int, frames: int, noise_floor: float) -> tuple[float, float]:
    """Seconds of room tone at the head and the tail: 20 ms frames below the threshold."""
    scan = min(frames, round(EDGE_SCAN_S * rate))
    with _open(path) as reader:
        head = _read(reader, scan)
        reader.seek(frames - scan)
        tail = _read(reader, scan)
    threshold = max(SILENCE_DBFS, noise_floor + _SILENCE_OVER_FLOOR_DB)
    frame = max(1, round(EDGE_FRAME_S * rate))
    head_s = _quiet_run(head, frame, threshold) / rate
    return head_s, _quiet_run(tail[::-1], frame, threshold) / rate


def _quiet_run(samples: np.ndarray, frame: int, threshold_dbfs: float) -> int:
    """Samples before the first frame louder than the threshold (all of them if none is)."""
    loud = np.flatnonzero(frame_energies(samples, frame) > 10 ** (threshold_dbfs / 10))
    return min(samples.size, int(loud[0]) * frame) if loud.size else samples.size


# --- presets ---------------------------------------------------------------------------------

Level = Literal["rms", "lufs"]


@attrs.frozen
class LoudnessPreset:
    """What a finished chapter must measure. `level` names the measure the gain aims at and
    `window` bounds it per chapter; None fields are not required by the preset."""

    name: str
    level: Level | None = None
    target_db: float = 0.0
    window_db: tuple[float, float] | None = None
    peak_max_dbtp: float | None = None
    noise_floor_max_dbfs: float | None = None
    head_s: tuple[float, float] | None = None
    tail_s: tuple[float, float] | None = None
    mp3_rate: int | None = None
    mp3_kbps: int | None = None


#: ACX (Audible): each file -23 to -18 dBFS RMS, peaks at most -3 dBFS, noise floor at most
#: -60 dBFS RMS, 0.5-1 s of room tone at the head and 1-5 s at the tail, MP3 at 44.1 kHz CBR
#: 192 kbps. We aim at the middle of the RMS window.
ACX = LoudnessPreset(
    name="acx",
    level="rms",
    target_db=-20.5,
    window_db=(-23.0, -18.0),
    peak_max_dbtp=-3.0,
    noise_floor_max_dbfs=-60.0,
    head_s=(0.5, 1.0),
    tail_s=(1.0, 5.0),
    mp3_rate=MP3_RATE,
    mp3_kbps=MP3_KBPS,
)
#: Podcasts (Apple Podcasts' recommendation, and common practice): -16 LUFS integrated, true
#: peak at most -1 dBTP; a chapter may sit within 1 LU of the target.
PODCAST = LoudnessPreset(
    name="podcast", level="lufs", target_db=-16.0, window_db=(-17.0, -15.0), peak_max_dbtp=-1.0
)
#: Leave the levels as generated.
NONE = LoudnessPreset(name="none")
PRESETS: dict[str, LoudnessPreset] = {p.name: p for p in (ACX, PODCAST, NONE)}

#: Plan inside the window by this much, so rounding and encoding cannot push a chapter out.
LEVEL_MARGIN_DB = 0.5
#: MP3 encoding adds up to about half a dB of overshoot to a peak.
PEAK_MARGIN_DB = 0.5
NOISE_MARGIN_DB = 1.0


def preset(name: str) -> LoudnessPreset:
    """The preset called `name` (acx, podcast, none)."""
    found = PRESETS.get(name.strip().lower()) if isinstance(name, str) else None
    if found is None:
        raise UserError(f"unknown loudness preset {name!r}; choose one of {', '.join(PRESETS)}")
    return found


# --- the gain plan ---------------------------------------------------------------------------


@attrs.frozen
class ChapterGain:
    """The gain for one chapter file, what it should then measure, and why it differs from
    the book's gain when it does."""

    path: Path
    gain_db: float
    #: Peaks are held at this true-peak level by the limiter; None: no limiter.
    limiter_dbtp: float | None
    level_db: float
    true_peak_dbtp: float
    noise_floor_dbfs: float
    notes: tuple[str, ...] = ()

    @property
    def changes_audio(self) -> bool:
        return self.gain_db != 0 or self.limiter_dbtp is not None


@attrs.frozen
class GainPlan:
    """A preset's gains for a book: the book's one gain, and each chapter's (the same unless
    the chapter's notes say why not)."""

    preset: LoudnessPreset
    book_gain_db: float
    chapters: tuple[ChapterGain, ...]


def plan(book: BookLoudness, loudness: LoudnessPreset | str) -> GainPlan:
    """One gain for the book (to its target level), adjusted per chapter only to keep the
    chapter inside the preset's window; a limiter only where no gain inside the window keeps
    the peaks under the ceiling."""
    chosen = preset(loudness) if isinstance(loudness, str) else loudness
    if chosen.level is None:
        return GainPlan(chosen, 0.0, tuple(_unchanged(c) for c in book.chapters))
    book_level = book.rms_dbfs if chosen.level == "rms" else book.integrated_lufs
    gain = chosen.target_db - book_level if math.isfinite(book_level) else 0.0
    return GainPlan(chosen, gain, tuple(_chapter_gain(c, chosen, gain) for c in book.chapters))


def _unchanged(chapter: ChapterLoudness) -> ChapterGain:
    return ChapterGain(
        chapter.path,
        0.0,
        None,
        chapter.rms_dbfs,
        chapter.true_peak_dbtp,
        chapter.noise_floor_dbfs,
    )


def _level(chapter: ChapterLoudness, loudness: LoudnessPreset) -> float:
    return chapter.rms_dbfs if loudness.level == "rms" else chapter.integrated_lufs


def _chapter_gain(
    chapter: ChapterLoudness, loudness: LoudnessPreset, book_gain: float
) -> ChapterGain:
    level = _level(chapter, loudness)
    if not math.isfinite(level):
        note = "silent: no gain"
        return attrs.evolve(_unchanged(chapter), notes=(note,))
    low, high = _window(loudness)
    floor = low - level  # the least gain that keeps the chapter in its window
    notes: list[str] = []
    gain = min(max(book_gain, floor), high - level)
    if gain != book_gain:
        notes.append(f"moved {gain - book_gain:+.1f} dB from the book's gain into the window")
    gain = _quieter_for_noise(chapter, loudness, gain, floor, notes)
    gain, limiter = _peaks(chapter, loudness, gain, floor, notes)
    peak = chapter.true_peak_dbtp + gain
    return ChapterGain(
        path=chapter.path,
        gain_db=round(gain, 3),
        limiter_dbtp=limiter,
        level_db=level + gain,
        true_peak_dbtp=min(peak, limiter) if limiter is not None else peak,
        noise_floor_dbfs=chapter.noise_floor_dbfs + gain,
        notes=tuple(notes),
    )


def _window(loudness: LoudnessPreset) -> tuple[float, float]:
    if loudness.window_db is None:
        return -math.inf, math.inf
    low, high = loudness.window_db
    return low + LEVEL_MARGIN_DB, high - LEVEL_MARGIN_DB


def _quieter_for_noise(
    chapter: ChapterLoudness,
    loudness: LoudnessPreset,
    gain: float,
    floor: float,
    notes: list[str],
) -> float:
    """Lower the gain (never under the window) when it would lift the noise floor over the
    preset's limit; a floor that still fails is named: only the room can fix it."""
    limit = loudness.noise_floor_max_dbfs
    if limit is None or not math.isfinite(chapter.noise_floor_dbfs):
        return gain
    most = limit - NOISE_MARGIN_DB - chapter.noise_floor_dbfs
    if gain <= most:
        return gain
    lowered = max(most, floor)
    if lowered < gain:
        notes.append(f"{lowered - gain:+.1f} dB to keep the noise floor down")
    if chapter.noise_floor_dbfs + lowered > limit:
        notes.append(
            f"noise floor {chapter.noise_floor_dbfs + lowered:.1f} dBFS after gain, over "
            f"{limit:g}: the pauses are too loud next to the speech"
        )
    return lowered


def _peaks(
    chapter: ChapterLoudness,
    loudness: LoudnessPreset,
    gain: float,
    floor: float,
    notes: list[str],
) -> tuple[float, float | None]:
    """Lower the gain for the peaks as far as the window allows; past that, limit."""
    if loudness.peak_max_dbtp is None:
        return gain, None
    ceiling = loudness.peak_max_dbtp - PEAK_MARGIN_DB
    over = chapter.true_peak_dbtp + gain - ceiling
    if over <= 0:
        return gain, None
    lowered = max(gain - over, min(gain, floor))
    if lowered != gain:
        notes.append(f"{lowered - gain:+.1f} dB to keep the peaks under {ceiling:g} dBTP")
    if chapter.true_peak_dbtp + lowered <= ceiling:
        return lowered, None
    notes.append(
        f"limited: peaks of {chapter.true_peak_dbtp + lowered:.1f} dBTP held at {ceiling:g}"
    )
    return lowered, ceiling


# --- applying it -----------------------------------------------------------------------------

#: The limiter sees this far ahead and takes this long to reach a peak's gain...
LIMITER_LOOKAHEAD_S = 0.005
#: ...and holds the gain this long after it before coming back over the same time: speech
#: peaks come in bursts, and a gain that pumps at every syllable is audible.
LIMITER_HOLD_S = 0.05


def apply(chapter: ChapterGain, *, block_s: float = BLOCK_S) -> bool:
    """Rewrite the chapter file with its gain (and limiter), block by block, into a temporary
    file that replaces it when complete. Returns whether the file was rewritten (a zero gain
    without a limiter leaves it alone)."""
    if not chapter.changes_audio:
        return False
    if chapter.path.suffix.lower() != ".flac":
        raise UserError(
            f"{chapter.path} is not a chapter FLAC; apply the gain to the FLACs, then encode "
            "the MP3s and the M4B from them"
        )
    with _open(chapter.path) as reader:
        rate = int(reader.samplerate)
        writer = AudioWriter(chapter.path, "flac")
        try:
            for block in _gained(reader, chapter, max(1, round(block_s * rate))):
                writer.add(Audio(block, rate))
        except BaseException:
            writer.abort()
            raise
    writer.commit()
    return True


def apply_plan(gains: GainPlan) -> list[Path]:
    """Apply every chapter's gain; the paths rewritten."""
    return [c.path for c in gains.chapters if apply(c)]


def _gained(reader: sf.SoundFile, chapter: ChapterGain, step: int) -> Iterator[np.ndarray]:
    linear = np.float32(10 ** (chapter.gain_db / 20))
    if chapter.limiter_dbtp is None:
        while (block := _read(reader, step)).size:
            yield block * linear
        return
    limiter = _Limiter(int(reader.samplerate), chapter.limiter_dbtp)
    for window, start, length in _with_context(reader, max(step, limiter.context), limiter.context):
        yield limiter.process(window * linear)[start : start + length]


def _with_context(
    reader: sf.SoundFile, step: int, context: int
) -> Iterator[tuple[np.ndarray, int, int]]:
    """Each `step` frames of the file with up to `context` frames of the file either side:
    (window, where the step starts in it, its length)."""
    before = np.zeros(0, dtype=np.float32)
    current = _read(reader, step)
    while current.size:
        after = _read(reader, step)
        yield np.concatenate((before, current, after[:context])), before.size, current.size
        before = np.concatenate((before, current))[-context:]
        current = after


class _Limiter:
    """A look-ahead peak limiter with an exact ceiling on the samples: each sample's needed gain
    (also from the 4×-interpolated values its neighbours make) is spread by a running minimum
    reaching `lookahead` ahead and `hold` behind, then smoothed by a running mean over
    `lookahead`. Every mean is of minima that include the sample itself, so the gain never
    exceeds what the sample needs; attack and release are straight ramps of 5 ms."""

    def __init__(self, rate: int, ceiling_dbtp: float) -> None:
        self.ceiling = 10 ** (ceiling_dbtp / 20)
        self.ahead = max(_TAPS, round(LIMITER_LOOKAHEAD_S * rate))
        self.hold = round(LIMITER_HOLD_S * rate)
        #: What one output sample depends on, either side (with room for the interpolator).
        self.context = self.hold + 2 * self.ahead + 2 * _TAPS

    def process(self, window: np.ndarray) -> np.ndarray:
        from scipy.ndimage import minimum_filter1d

        need = self._needed_gain(window)
        size = self.hold + self.ahead
        spread = minimum_filter1d(need, size, origin=self.hold - size // 2, mode="nearest")
        sums = np.concatenate(([0.0], np.cumsum(spread, dtype=np.float64)))
        ends = np.arange(1, window.size + 1)
        starts = np.maximum(0, ends - self.ahead)
        smooth = (sums[ends] - sums[starts]) / (ends - starts)
        return (window * smooth).astype(np.float32)

    def _needed_gain(self, window: np.ndarray) -> np.ndarray:
        from scipy.ndimage import minimum_filter1d

        need = np.minimum(1.0, self.ceiling / np.maximum(np.abs(window), 1e-12))
        padded = np.concatenate((np.zeros(_HISTORY, dtype=np.float32), window))
        index = _outputs_near(padded, self.ceiling / _TP_WORST_GAIN)
        phases = np.abs(_interpolated(padded, index))
        # Column by column: numpy's max along a 4-wide axis is ten times slower.
        values = np.maximum(
            np.maximum(phases[:, 0], phases[:, 1]), np.maximum(phases[:, 2], phases[:, 3])
        )
        over = values > self.ceiling
        if over.any():
            # An interpolated value at output n is made of samples n-11..n: each needs its gain.
            by_output = np.ones(window.size)
            by_output[index[over]] = self.ceiling / values[over]
            spread = minimum_filter1d(by_output, _TAPS, origin=-(_TAPS // 2), mode="nearest")
            need = np.minimum(need, spread)
        return need


# --- checking --------------------------------------------------------------------------------


@attrs.frozen
class Criterion:
    """One requirement of a preset and how a chapter measured against it."""

    name: str
    value: float
    unit: str
    limit: str
    ok: bool

    def describe(self) -> str:
        shown = f"{self.value:.2f}" if self.unit == "s" else f"{self.value:.1f}"
        shown = shown if math.isfinite(self.value) else "-inf"
        return f"{shown} {self.unit}".strip()


@attrs.frozen
class ChapterCheck:
    path: Path
    measures: ChapterLoudness
    criteria: tuple[Criterion, ...]

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.criteria)

    def failures(self) -> list[str]:
        return [f"{c.name} {c.describe()} (needs {c.limit})" for c in self.criteria if not c.ok]


def check(book: BookLoudness, loudness: LoudnessPreset | str) -> list[ChapterCheck]:
    """Every chapter against every requirement of the preset."""
    chosen = preset(loudness) if isinstance(loudness, str) else loudness
    return [ChapterCheck(c.path, c, tuple(_criteria(c, chosen))) for c in book.chapters]


def check_acx(chapter_paths: Iterable[Path | str]) -> list[ChapterCheck]:
    """Measure chapter files (FLAC, or the MP3s ACX receives) against ACX's requirements."""
    return check(measure(chapter_paths), ACX)


def _between(name: str, value: float, unit: str, bounds: tuple[float, float]) -> Criterion:
    low, high = bounds
    return Criterion(name, value, unit, f"{low:g} to {high:g} {unit}", low <= value <= high)


def _at_most(name: str, value: float, unit: str, limit: float) -> Criterion:
    return Criterion(name, value, unit, f"at most {limit:g} {unit}", value <= limit)


def _criteria(c: ChapterLoudness, p: LoudnessPreset) -> Iterator[Criterion]:
    if p.window_db is not None and p.level is not None:
        unit = "dBFS" if p.level == "rms" else "LUFS"
        yield _between(p.level.upper(), _level(c, p), unit, p.window_db)
    if p.peak_max_dbtp is not None:
        yield _at_most("true peak", c.true_peak_dbtp, "dBTP", p.peak_max_dbtp)
    if p.noise_floor_max_dbfs is not None:
        yield _at_most("noise floor", c.noise_floor_dbfs, "dBFS", p.noise_floor_max_dbfs)
    if p.head_s is not None:
        yield _between("head", c.head_s, "s", p.head_s)
    if p.tail_s is not None:
        yield _between("tail", c.tail_s, "s", p.tail_s)
    if p.mp3_rate is not None and c.path.suffix.lower() == ".mp3":
        rate = Criterion(
            "rate", c.sample_rate, "Hz", f"{p.mp3_rate} Hz", c.sample_rate == p.mp3_rate
        )
        yield rate


def format_checks(checks: Sequence[ChapterCheck]) -> str:
    """A table: one row per chapter, each criterion's measured value and ok/FAIL, then the
    chapter's verdict."""
    if not checks:
        return "no chapters to check"
    names = [c.name for c in checks[0].criteria]
    width = max(12, *(len(c.path.name[:40]) for c in checks))
    head = f"{'chapter':<{width}}  " + "  ".join(f"{n:>16}" for n in names) + "  result"
    rows = [head]
    for chapter in checks:
        cells = [f"{c.describe():>11} {'ok' if c.ok else 'FAIL':>4}" for c in chapter.criteria]
        verdict = "pass" if chapter.ok else "FAIL"
        rows.append(f"{chapter.path.name[:40]:<{width}}  " + "  ".join(cells) + f"  {verdict}")
    return "\n".join(rows)
