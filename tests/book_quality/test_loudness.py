"""Loudness: the streamed measures agree with pyloudnorm and with brute force, a generated
multi-chapter book fails ACX before the gain plan and passes after it (the limiter included),
the podcast preset lands on -16 LUFS, and rewriting a chapter is all or nothing."""

from __future__ import annotations

import math
import os
import tracemalloc
from pathlib import Path

import numpy as np
import pyloudnorm
import pytest
import soundfile as sf
from scipy.signal import resample_poly

from csm_offload.audio import Audio
from csm_offload.book import loudness
from csm_offload.book.assemble import ChapterAssembler
from csm_offload.book.encode import encode_mp3
from csm_offload.book.loudness import (
    ACX,
    NONE,
    PODCAST,
    apply,
    apply_plan,
    check,
    check_acx,
    format_checks,
    measure,
    measure_chapter,
    plan,
    preset,
)
from csm_offload.book.metadata import BookInfo
from csm_offload.book.roomtone import dbfs
from csm_offload.errors import UserError

from . import RATE, silence_dbfs, speech_samples


def _chunk(seconds: float, rms_dbfs: float, seed: int, clicks: int = 0) -> Audio:
    """A generated chunk: a breath of quiet, speech, and a little quiet after it; `clicks`
    adds full-scale 2 ms spikes, peaks that no gain inside ACX's window brings under -3 dB."""
    body = speech_samples(seconds, rms_dbfs=rms_dbfs, seed=seed)
    rng = np.random.default_rng(seed)
    for at in rng.integers(0, body.size - 48, clicks):
        body[at : at + 48] = np.hanning(48) * rng.choice([-0.99, 0.99])
    samples = np.concatenate((silence_dbfs(0.05, seed=seed), body, silence_dbfs(0.1, seed=seed)))
    return Audio(samples, RATE)


def _chapter(path: Path, rms_dbfs: float, *, chunks: int = 6, seed: int = 0, clicks: int = 0):
    ends = [i % 3 == 2 for i in range(chunks)]

    def load(index: int) -> Audio:
        seconds = 3.0 + (seed * 7 + index * 3) % 5
        return _chunk(seconds, rms_dbfs, seed * 100 + index, clicks)

    with ChapterAssembler(path, load, ends, seed=seed) as chapter:
        for index in range(chunks):
            chapter.ready(index)
        return chapter.commit().path


@pytest.fixture
def book(tmp_path: Path) -> list[Path]:
    """Three chapters as the book command would write them: one near ACX's level, one too
    quiet, one too loud."""
    folder = tmp_path / "chapters"
    return [
        _chapter(folder / "01 - Near.flac", -21.0, seed=1),
        _chapter(folder / "02 - Quiet.flac", -26.5, seed=2),
        _chapter(folder / "03 - Loud.flac", -16.0, seed=3),
    ]


def _read(path: Path) -> np.ndarray:
    return sf.read(str(path), dtype="float64")[0]


def _reference_true_peak(samples: np.ndarray) -> float:
    """An independent estimate: 8× polyphase resampling (scipy's Kaiser window FIR)."""
    return dbfs(float(np.abs(resample_poly(samples, 8, 1)).max()))


# --- the measures ------------------------------------------------------------------------------


@pytest.mark.parametrize("rate", [16_000, 22_050, 24_000, 44_100, 48_000])
def test_integrated_loudness_agrees_with_pyloudnorm(tmp_path: Path, rate: int) -> None:
    path = tmp_path / "c.flac"
    sf.write(str(path), speech_samples(23.0, rms_dbfs=-24, seed=rate, rate=rate), rate, "PCM_16")
    ours = measure_chapter(path, block_s=0.7)  # many blocks: the filter state is carried
    theirs = pyloudnorm.Meter(rate).integrated_loudness(_read(path))
    assert ours.integrated_lufs == pytest.approx(theirs, abs=0.01)
    assert ours.rms_dbfs == pytest.approx(dbfs(float(np.sqrt(np.mean(_read(path) ** 2)))), abs=1e-4)


def test_streaming_gives_the_same_measures_whatever_the_block(tmp_path: Path) -> None:
    path = _chapter(tmp_path / "c.flac", -20.0, seed=4, clicks=3)
    whole = measure_chapter(path, block_s=600)
    for block_s in (0.1, 0.7, 3.3):
        part = measure_chapter(path, block_s=block_s)
        assert part.as_dict() == whole.as_dict()
        assert np.allclose(part.blocks, whole.blocks, rtol=1e-5)


def test_true_peak_is_exact_bs1770_oversampling_across_block_edges(tmp_path: Path) -> None:
    rng = np.random.default_rng(9)
    noise = np.clip(rng.standard_normal(RATE * 3) * 0.2, -0.95, 0.95).astype(np.float32)
    path = tmp_path / "noise.flac"
    sf.write(str(path), noise, RATE, "PCM_16")
    stored = _read(path)
    padded = np.concatenate((np.zeros(11), stored, np.zeros(11)))
    brute = max(np.abs(np.convolve(padded, taps)).max() for taps in loudness._TP_TAPS)
    brute = max(brute, np.abs(stored).max())
    assert measure_chapter(path, block_s=0.013).true_peak_dbtp == pytest.approx(dbfs(brute))


def test_an_inter_sample_peak_is_found(tmp_path: Path) -> None:
    """A sine at a quarter of the rate, phased so every sample sits at 1/√2 of its crest: the
    sample peak reads 3 dB under the true one."""
    n = np.arange(RATE * 2)
    sine = (0.5 * np.sin(np.pi / 2 * n + np.pi / 4)).astype(np.float32)
    path = tmp_path / "isp.flac"
    sf.write(str(path), sine, RATE, "PCM_16")
    found = measure_chapter(path)
    assert found.sample_peak_dbfs == pytest.approx(dbfs(0.5 / math.sqrt(2)), abs=0.01)
    assert found.true_peak_dbtp == pytest.approx(dbfs(0.5), abs=0.2)


def test_noise_floor_head_and_tail_are_the_room_tone(tmp_path: Path) -> None:
    found = measure_chapter(_chapter(tmp_path / "c.flac", -20.0, seed=5))
    assert found.noise_floor_dbfs == pytest.approx(-65.0, abs=1.5)  # roomtone.ROOM_TONE_DBFS
    assert 0.75 - 0.02 <= found.head_s <= 0.75 + 0.02  # head tone + the chunk's lead = head_s
    assert 2.0 <= found.tail_s <= 2.0 + 0.1 + 0.25


def test_the_book_is_one_programme(book: list[Path]) -> None:
    measured = measure(book)
    frames = sum(c.frames for c in measured.chapters)
    energy = sum(float(np.sum(_read(p) ** 2)) for p in book)
    assert measured.rms_dbfs == pytest.approx(dbfs(math.sqrt(energy / frames)), abs=1e-3)
    joined = np.concatenate([_read(p) for p in book])
    lufs = pyloudnorm.Meter(RATE).integrated_loudness(joined)
    assert measured.integrated_lufs == pytest.approx(lufs, abs=0.05)
    assert measured.true_peak_dbtp == max(c.true_peak_dbtp for c in measured.chapters)


# --- ACX before and after ----------------------------------------------------------------------


def test_a_generated_book_fails_acx_before_the_gain_plan_and_passes_after(
    book: list[Path],
) -> None:
    before = check_acx(book)
    assert [c.ok for c in before] == [True, False, False]
    assert any(f.startswith("RMS") for f in before[1].failures())
    assert any(f.startswith("RMS") for f in before[2].failures())
    frames = [sf.info(str(p)).frames for p in book]

    gains = plan(measure(book), ACX)
    # One gain for the book; only the chapters it would leave outside the window move.
    near, quiet, loud = gains.chapters
    assert near.gain_db == pytest.approx(gains.book_gain_db, abs=1e-3) and not near.notes
    assert quiet.gain_db > gains.book_gain_db and quiet.notes
    assert loud.gain_db < gains.book_gain_db and loud.notes
    assert all(c.limiter_dbtp is None for c in gains.chapters)
    assert apply_plan(gains) == book

    after = check_acx(book)
    assert all(c.ok for c in after), format_checks(after)
    for chapter in after:
        m = chapter.measures
        assert -23 <= m.rms_dbfs <= -18
        assert m.true_peak_dbtp <= -3
        assert _reference_true_peak(_read(chapter.path)) <= -3
        assert m.noise_floor_dbfs <= -60
        assert 0.5 <= m.head_s <= 1.0 and 1.0 <= m.tail_s <= 5.0
    assert [sf.info(str(p)).frames for p in book] == frames  # nothing added or lost
    # A rerun measures the finished files: its plan keeps them inside the window.
    apply_plan(plan(measure(book), ACX))
    assert all(c.ok for c in check_acx(book))


def test_peaks_no_gain_can_tame_go_through_the_limiter(tmp_path: Path) -> None:
    path = _chapter(tmp_path / "clicks.flac", -22.0, seed=6, clicks=4)
    before = measure([path])
    assert before.true_peak_dbtp > -1
    (gain,) = plan(before, ACX).chapters
    assert gain.limiter_dbtp == pytest.approx(-3.5)
    assert any("limited" in note for note in gain.notes)
    apply(gain)
    (after,) = check_acx([path])
    assert after.ok, format_checks([after])
    assert after.measures.true_peak_dbtp <= -3.4
    assert _reference_true_peak(_read(path)) <= -3.2
    # The limiter touched the clicks, not the speech: the level is what the gain made it.
    assert after.measures.rms_dbfs == pytest.approx(gain.level_db, abs=0.3)


def _noisy_chapter(path: Path, speech_dbfs: float, noise_dbfs: float) -> Path:
    noise = silence_dbfs(1.0, noise_dbfs, seed=7)
    samples = np.concatenate((noise, speech_samples(20.0, rms_dbfs=speech_dbfs, seed=8), noise))
    sf.write(str(path), samples, RATE, "PCM_16")
    return path


def test_the_gain_stays_down_to_keep_the_noise_floor_under_acx(tmp_path: Path) -> None:
    path = _noisy_chapter(tmp_path / "c.flac", -23.0, -63.0)
    (gain,) = plan(measure([path]), ACX).chapters
    assert gain.gain_db < plan(measure([path]), ACX).book_gain_db
    assert any("noise floor down" in note for note in gain.notes)
    apply(gain)
    (after,) = measure([path]).chapters
    assert after.noise_floor_dbfs <= -60.5
    assert -23 <= after.rms_dbfs <= -18


def test_a_noise_floor_no_gain_can_save_is_named(tmp_path: Path) -> None:
    path = _noisy_chapter(tmp_path / "c.flac", -27.0, -62.0)
    (gain,) = plan(measure([path]), ACX).chapters
    assert any("the pauses are too loud next to the speech" in n for n in gain.notes)
    apply(gain)
    (found,) = check_acx([path])
    assert [c.name for c in found.criteria if not c.ok] == ["noise floor"]


def test_the_acx_mp3_passes_too(tmp_path: Path, book: list[Path]) -> None:
    apply_plan(plan(measure(book[:1]), ACX))
    mp3 = encode_mp3(
        book[0], tmp_path / "01.mp3", book=BookInfo("T", "A"), title="One", track=1, tracks=1
    )
    (found,) = check_acx([mp3])
    assert found.ok, format_checks([found])
    assert "rate" in [c.name for c in found.criteria]
    assert found.measures.sample_rate == 44_100


def test_the_table_shows_values_and_verdicts(book: list[Path]) -> None:
    table = format_checks(check_acx(book)).splitlines()
    assert table[0].split()[:2] == ["chapter", "RMS"]
    assert len(table) == 4
    assert table[1].endswith("pass") and table[2].endswith("FAIL")
    assert "dBFS" in table[2] and "FAIL" in table[2]


# --- other presets -----------------------------------------------------------------------------


def test_podcast_lands_on_minus_16_lufs(book: list[Path]) -> None:
    apply_plan(plan(measure(book), "podcast"))
    after = measure(book)
    assert after.integrated_lufs == pytest.approx(-16.0, abs=0.7)
    for chapter in check(after, PODCAST):
        assert chapter.ok, format_checks([chapter])
        assert -17 <= chapter.measures.integrated_lufs <= -15
        assert chapter.measures.true_peak_dbtp <= -1


def test_none_changes_nothing(book: list[Path]) -> None:
    before = [p.read_bytes() for p in book]
    gains = plan(measure(book), NONE)
    assert all(not c.changes_audio for c in gains.chapters)
    assert apply_plan(gains) == []
    assert [p.read_bytes() for p in book] == before
    assert all(c.ok and not c.criteria for c in check(measure(book), "none"))


def test_a_silent_chapter_gets_no_gain(tmp_path: Path, book: list[Path]) -> None:
    quiet = tmp_path / "silent.flac"
    sf.write(str(quiet), np.zeros(RATE * 2, dtype=np.float32), RATE, "PCM_16")
    gains = plan(measure([*book, quiet]), ACX)
    assert gains.chapters[-1].gain_db == 0 and gains.chapters[-1].notes == ("silent: no gain",)
    assert measure([quiet]).chapters[0].rms_dbfs == -math.inf


def test_measuring_and_rewriting_hold_one_block_not_the_chapter(tmp_path: Path) -> None:
    """Ten minutes decode to 58 MB of float32; the measure and the rewrite stay far below."""
    path = tmp_path / "long.flac"
    sf.write(str(path), np.tile(speech_samples(30.0, rms_dbfs=-26.0), 20), RATE, "PCM_16")
    tracemalloc.start()
    try:
        measured = measure([path])
        _size, measure_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        (gain,) = plan(measured, ACX).chapters
        assert apply(gain)
        _size, apply_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert measured.duration == 600.0
    assert measure_peak < 20e6 and apply_peak < 20e6, (measure_peak, apply_peak)


# --- rewriting ---------------------------------------------------------------------------------


def test_a_failed_rewrite_leaves_the_chapter_as_it_was(
    book: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    gains = plan(measure(book), ACX)
    before = book[1].read_bytes()
    calls = 0

    def failing_add(self: object, audio: Audio) -> None:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise OSError("disk full")
        original_add(self, audio)

    original_add = loudness.AudioWriter.add
    monkeypatch.setattr(loudness.AudioWriter, "add", failing_add)
    with pytest.raises(OSError, match="disk full"):
        apply(gains.chapters[1], block_s=5.0)
    assert book[1].read_bytes() == before
    assert not [n for n in os.listdir(book[1].parent) if n.endswith(".tmp")]


def test_bad_input_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no chapter files"):
        measure([])
    with pytest.raises(UserError, match="choose one of acx, podcast, none"):
        preset("loud")
    bad = tmp_path / "bad.flac"
    bad.write_bytes(b"not audio")
    with pytest.raises(UserError, match="cannot read the chapter audio"):
        measure([bad])
    assert preset(" ACX ") is ACX
