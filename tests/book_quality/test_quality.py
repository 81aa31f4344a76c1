"""The quality gate: a scripted set of bad chunks, each caught with the right reason, and good
speech-like chunks passing; the pace learner; the settings' validation; the report."""

from __future__ import annotations

import math

import numpy as np
import pytest

from csm_offload.audio import Audio
from csm_offload.book.quality import (
    GateEvent,
    GateSettings,
    VoicePace,
    check_chunk,
    quality_report,
    summary_lines,
    text_characters,
)
from csm_offload.errors import UserError

from . import RATE, silence_dbfs, speech, speech_samples, text_of

SIXTY = text_of(60)  # 4.2 s at CSM's 0.07 s per character


def _join(*parts: np.ndarray) -> Audio:
    return Audio(np.concatenate(parts), RATE)


def _good(seconds: float = 4.2, seed: int = 0) -> Audio:
    lead, tail = silence_dbfs(0.15), silence_dbfs(0.3)
    return _join(lead, speech_samples(seconds, seed=seed), tail)


#: name → (audio, text, the words the one reason must contain)
SCRIPTED = {
    "all silence": (Audio(silence_dbfs(4.0), RATE), SIXTY, "no speech"),
    "digital silence": (Audio.silence(4.0), SIXTY, "no speech"),
    "silence at the start": (
        _join(silence_dbfs(3.0), speech_samples(4.2)),
        SIXTY,
        "3.0 s of silence at the start (limit 1 s)",
    ),
    "silence at the end": (
        _join(speech_samples(4.2), silence_dbfs(2.5)),
        SIXTY,
        "2.5 s of silence at the end (limit 1.5 s)",
    ),
    "silence inside": (
        _join(speech_samples(2.0, seed=1), silence_dbfs(3.0), speech_samples(2.2, seed=2)),
        SIXTY,
        "a 3.0 s silence inside the speech (limit 2 s)",
    ),
    "a 30 s loop": (
        Audio(np.tile(speech_samples(3.0, seed=3), 10), RATE),
        SIXTY,
        "too long: 30.0 s of speech for 60 characters",
    ),
    "cut short": (speech(1.0), text_of(150), "too short: 1.0 s of speech for 150 characters"),
    "clipped": (
        Audio(np.clip(speech_samples(4.2, seed=4) * 12, -1, 1), RATE),
        SIXTY,
        "of the samples are clipped (limit 0.1 %)",
    ),
    "too quiet": (speech(4.2, rms_dbfs=-46.0, seed=5), SIXTY, "the speech is too quiet"),
}


@pytest.mark.parametrize("name", sorted(SCRIPTED))
def test_each_scripted_failure_is_caught_with_its_reason(name: str) -> None:
    audio, text, expected = SCRIPTED[name]
    verdict = check_chunk(audio, text)
    assert not verdict.ok
    assert len(verdict.reasons) == 1, verdict.reasons
    assert expected in verdict.reasons[0]


@pytest.mark.parametrize("seed", range(6))
def test_good_speech_like_chunks_pass(seed: int) -> None:
    rng = np.random.default_rng(seed)
    characters = int(rng.integers(20, 300))
    pace = rng.uniform(0.055, 0.09)  # a voice a little faster or slower than the prior
    verdict = check_chunk(_good(characters * pace, seed), text_of(characters))
    assert verdict.ok, verdict.reasons
    assert verdict.reasons == ()
    assert verdict.measures is not None


def test_measures_are_what_was_made() -> None:
    audio = _join(silence_dbfs(0.5), speech_samples(4.0, rms_dbfs=-20.0), silence_dbfs(0.8))
    m = check_chunk(audio, SIXTY).measures
    assert m is not None
    assert m.duration_s == pytest.approx(5.3, abs=1e-6)
    # The speech-like audio may begin and end on a gap between words of up to 0.2 s.
    assert 0.5 <= m.leading_silence_s <= 0.75
    assert 0.8 <= m.trailing_silence_s <= 1.05
    assert 3.55 <= m.speech_s <= 4.0
    assert m.speech_level_dbfs == pytest.approx(-20.0, abs=1.5)
    assert m.clipped_fraction == 0
    assert m.characters == 60
    assert (m.expected_min_s, m.expected_max_s) == pytest.approx((1.35, 9.15))
    assert m.as_dict()["characters"] == 60


def test_a_short_text_has_slack_in_its_band() -> None:
    """ "Yes." is 0.28 s at 0.07 s a character; a narrator's 0.6 s must not fail."""
    assert check_chunk(speech(0.6), "Yes.").ok


def test_lazily_decoded_flac_from_the_journal_is_gated_the_same() -> None:
    audio = _good()
    lazy = Audio.decode(audio.encode("flac"), lazy=True)
    assert not lazy.decoded
    assert check_chunk(lazy, SIXTY).ok
    assert check_chunk(lazy, SIXTY).measures == check_chunk(audio.quantized(), SIXTY).measures


def test_empty_and_non_finite_audio_fail() -> None:
    assert check_chunk(Audio.silence(0.0), SIXTY).reasons == ("the audio is empty",)
    broken = speech_samples(4.2)
    broken[100] = np.nan
    assert "not numbers" in check_chunk(Audio(broken, RATE), SIXTY).reasons[0]


def test_several_reasons_are_all_given() -> None:
    audio = Audio(np.clip(np.tile(speech_samples(3.0, seed=3), 10) * 12, -1, 1), RATE)
    reasons = check_chunk(audio, SIXTY).reasons
    assert any(r.startswith("too long") for r in reasons)
    assert any("clipped" in r for r in reasons)


def test_a_learned_pace_tightens_the_band() -> None:
    fast = _good(60 * 0.04)  # a fast voice: 0.04 s a character
    slow = _good(60 * 0.14)  # twice the prior: inside the prior's band
    assert check_chunk(slow, SIXTY).ok
    pace = VoicePace()
    for seed in range(10):
        measures = check_chunk(_good(60 * 0.04, seed), SIXTY).measures
        assert measures is not None
        pace.observe(measures)
    assert pace.seconds_per_char == pytest.approx(0.04, rel=0.1)
    assert check_chunk(fast, SIXTY, seconds_per_char=pace.seconds_per_char).ok
    verdict = check_chunk(slow, SIXTY, seconds_per_char=pace.seconds_per_char)
    assert verdict.reasons[0].startswith("too long")


def test_pace_is_a_running_median_over_a_window() -> None:
    pace = VoicePace(prior=0.07, window=5, min_chunks=3)
    m = check_chunk(_good(), SIXTY).measures
    assert m is not None

    def observe(seconds_per_char: float) -> None:
        import attrs

        pace.observe(attrs.evolve(m, speech_s=seconds_per_char * 60, characters=60))

    observe(0.05)
    observe(0.06)
    assert pace.seconds_per_char == 0.07  # the prior until three chunks are in
    observe(1.0)  # one wild chunk moves a median little
    assert pace.seconds_per_char == pytest.approx(0.06)
    for _ in range(5):
        observe(0.08)
    assert pace.seconds_per_char == pytest.approx(0.08)  # the old ones left the window
    assert len(pace) == 5


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"min_pace": 2.0, "max_pace": 1.0}, "min_pace"),
        ({"max_leading_silence_s": -1}, "max_leading_silence_s"),
        ({"max_inner_silence_s": math.nan}, "max_inner_silence_s"),
        ({"silence_dbfs": 3.0}, "silence_dbfs"),
        ({"clip_level": 1.5}, "clip_level"),
        ({"max_retries": -1}, "max_retries"),
        ({"max_retries": True}, "max_retries"),
        ({"level_floor_dbfs": -60.0}, "level_floor_dbfs"),
        ({"duration_slack_s": "1"}, "duration_slack_s"),
    ],
)
def test_bad_settings_are_one_clear_error(changes: dict[str, object], words: str) -> None:
    with pytest.raises(UserError, match=words):
        GateSettings(**changes)  # type: ignore[arg-type]


def test_bad_text_or_pace_is_one_clear_error() -> None:
    with pytest.raises(UserError, match="text is empty"):
        check_chunk(_good(), "  ")
    with pytest.raises(UserError, match="seconds per character"):
        check_chunk(_good(), SIXTY, seconds_per_char=0)


def test_settings_loosen_one_limit() -> None:
    audio = _join(silence_dbfs(3.0), speech_samples(4.2))
    assert check_chunk(audio, SIXTY, GateSettings(max_leading_silence_s=4.0)).ok
    assert text_characters("  a \n b  ") == 3


def test_the_report_lists_regenerated_and_flagged_chunks_with_their_cost() -> None:
    events = [
        GateEvent(2, "2.4", "r1", 0, ("too long: 30.0 s",), 0.0125, kept=False, offset_s=61.2),
        GateEvent(2, "2.4", "r2", 1, ("clipped",), 0.0100, kept=False, offset_s=61.2),
        GateEvent(3, "3.1", "r3", 2, ("too quiet",), 0.0050, kept=True, offset_s=0.75),
    ]
    report = quality_report(events)
    assert [e["request_id"] for e in report["regenerated"]] == ["r1", "r2"]
    assert [e["chunk"] for e in report["flagged"]] == ["3.1"]
    assert report["regeneration_usd"] == pytest.approx(0.0225)
    assert report["flagged"][0]["offset_s"] == 0.75
    lines = summary_lines(events)
    assert "2 takes rejected and regenerated ($0.0225)" in lines[0]
    assert "chunk 3.1 at 0:00:00: too quiet" in lines[1]
