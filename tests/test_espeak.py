"""The eSpeak NG draft provider: real speech from the wheel's library, through every hook.

Bounds used below (eSpeak NG 1.52 at the default 175 words per minute, measured on this
project's sample sentences): speech takes 0.2-0.6 s per word, doubling the text multiplies the
duration by 1.6-2.4, and voiced speech has an RMS level above 0.03 (silence is 0).

eSpeak is not sample-exact across calls: its pitch flutter runs from a phase kept in a C static
that carries over from one synthesis to the next, so equal requests differ by up to ~20 ms of
length. "The same speech" is therefore checked as durations within JITTER_S of each other.
"""

from __future__ import annotations

import asyncio
import hashlib
import subprocess
import sys
import threading
import time
from pathlib import Path

import csm_offload_espeak as espeak
import numpy as np
import pytest
from csm_offload_espeak import engine as engine_module
from csm_offload_espeak import jobs as jobs_module
from csm_offload_espeak.engine import Engine
from csm_offload_espeak.library import EspeakLibrary, EspeakLoadError, clean_text, default_paths
from csm_offload_espeak.settings import DEFAULT_VARIANTS, EspeakSettings, speaker_voice
from hypothesis import given, settings
from hypothesis import strategies as st

from csm_offload import (
    CSM_SAMPLE_RATE,
    Audio,
    JobHandle,
    JobLost,
    JobState,
    JobStatus,
    Rejected,
    SpeechRequest,
    Target,
)
from csm_offload.config import load_config_text
from csm_offload.plugins import load_plugins
from csm_offload.targets import check_targets
from csm_offload.testing import ProviderConformance

SENTENCE = "The quick brown fox jumps over the lazy dog, and then it rests in the sun."
RMS_FLOOR = 0.03
SECONDS_PER_WORD = (0.2, 0.6)
MIXED_SCRIPTS = "Hello, 世界! Привет, мир. مرحبا بالعالم. Γειά σου κόσμε. नमस्ते 🙂 café naïve"
POLL_DEADLINE_S = 60.0
JITTER_S = 0.04


def target(**settings: object) -> Target:
    return Target(name="draft", kind="espeak", settings=EspeakSettings(**settings))


async def run_job(tgt: Target, batch: list[SpeechRequest]) -> JobStatus:
    handle = await espeak.submit(tgt, batch, None)
    return await wait(tgt, handle)


async def wait(tgt: Target, handle: JobHandle) -> JobStatus:
    deadline = time.monotonic() + POLL_DEADLINE_S
    while time.monotonic() < deadline:
        status = await espeak.poll(tgt, handle, None)
        if status.state.finished:
            return status
        await asyncio.sleep(0.01)
    raise AssertionError(f"job {handle.job_id} did not finish in {POLL_DEADLINE_S} s")


async def speak(text: str, tgt: Target | None = None, **request: object) -> Audio:
    tgt = tgt or target()
    status = await run_job(tgt, [SpeechRequest(text=text, **request)])
    assert status.state is JobState.COMPLETED, status.error
    assert status.results[0].error is None, status.results[0].error
    [audio] = await espeak.decode(tgt, status, None)
    return audio


def fundamental_hz(audio: Audio) -> float:
    """Median pitch of the voiced 40 ms frames, by autocorrelation (60-400 Hz)."""
    x, rate = audio.samples, audio.sample_rate
    frame = int(0.04 * rate)
    pitches = []
    for start in range(0, len(x) - frame, frame // 2):
        window = x[start : start + frame] - x[start : start + frame].mean()
        if np.sqrt(np.mean(window**2)) < RMS_FLOOR:
            continue
        corr = np.correlate(window, window, "full")[frame - 1 :]
        low, high = rate // 400, rate // 60
        lag = low + int(np.argmax(corr[low:high]))
        if corr[lag] > 0.3 * corr[0]:
            pitches.append(rate / lag)
    assert pitches, "no voiced frames"
    return float(np.median(pitches))


def digest(audio: Audio) -> str:
    return hashlib.sha256(audio.samples.tobytes()).hexdigest()


# --- plugin identity, cost, health -------------------------------------------------------------


def test_loads_from_its_entry_point_with_every_provider_hook() -> None:
    provider = load_plugins(["espeak"]).providers["espeak"]
    assert provider.missing == ()
    assert provider.info.quality == "draft"
    assert provider.info.remote is False
    assert provider.info.settings_type is EspeakSettings


def test_cost_is_zero_with_a_basis() -> None:
    estimate = espeak.estimate_cost(target(), [SpeechRequest(text=SENTENCE)] * 3)
    assert estimate.usd == 0.0
    assert estimate.gpu_seconds == 0.0
    assert estimate.target == "draft"
    assert "offline" in estimate.basis


async def test_health_is_ok_when_the_library_and_data_load() -> None:
    health = await espeak.health(target(), None)
    assert health.ok, health.detail
    assert "eSpeak NG 1." in health.detail
    assert "24000 Hz" in health.detail


async def test_health_names_an_unknown_voice() -> None:
    health = await espeak.health(target(voice="xx-nowhere"), None)
    assert not health.ok
    assert "xx-nowhere" in health.detail
    assert "en-us" in health.detail  # the fix: a voice that exists


async def test_health_names_an_unknown_variant_and_the_choices() -> None:
    health = await espeak.health(target(variants=("m3", "zz9")), None)
    assert not health.ok
    assert "zz9" in health.detail
    assert "f2" in health.detail


async def test_health_says_why_when_the_library_does_not_load(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    broken = Engine(paths=lambda: (str(tmp_path / "libespeak-ng.so"), default_paths()[1]))
    monkeypatch.setattr(engine_module, "_engine", broken)
    health = await espeak.health(target(), None)
    assert not health.ok
    assert "cannot load the eSpeak NG library" in health.detail
    assert "pip install" in health.detail


def test_missing_data_directory_is_a_load_error(tmp_path: Path) -> None:
    with pytest.raises(EspeakLoadError, match=r"data directory .* is missing"):
        EspeakLibrary(default_paths()[0], str(tmp_path / "nowhere"))


def test_empty_data_directory_fails_with_a_reason_not_an_exit(tmp_path: Path) -> None:
    # In a child process: a failed initialisation leaves eSpeak's globals unusable.
    code = (
        "from csm_offload_espeak.library import EspeakLibrary, EspeakLoadError, default_paths\n"
        f"try:\n    EspeakLibrary(default_paths()[0], {str(tmp_path)!r})\n"
        "except EspeakLoadError as exc:\n    print('REASON', exc)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert "REASON eSpeak NG could not initialise" in done.stdout
    assert "reinstall espeakng-loader" in done.stdout


# --- real speech ---------------------------------------------------------------------------------


async def test_real_speech_comes_out_at_24_khz() -> None:
    audio = await speak(SENTENCE)
    assert audio.sample_rate == CSM_SAMPLE_RATE
    assert audio.rms() > RMS_FLOOR
    assert audio.peak() > 0.2
    words = len(SENTENCE.split())
    low, high = SECONDS_PER_WORD
    assert low * words < audio.duration < high * words


async def test_duration_grows_with_text_length() -> None:
    one = await speak(SENTENCE)
    two = await speak(f"{SENTENCE} {SENTENCE}")
    four = await speak(" ".join([SENTENCE] * 4))
    assert 1.6 < two.duration / one.duration < 2.4
    assert 1.6 < four.duration / two.duration < 2.4


async def test_rate_and_pitch_settings_change_the_speech() -> None:
    slow = await speak(SENTENCE, target(rate=120))
    fast = await speak(SENTENCE, target(rate=350))
    assert fast.duration < 0.6 * slow.duration
    low = await speak(SENTENCE, target(pitch=10))
    high = await speak(SENTENCE, target(pitch=90))
    assert fundamental_hz(high) > 1.2 * fundamental_hz(low)


async def test_other_languages_speak() -> None:
    audio = await speak("Guten Tag, wie geht es Ihnen heute?", target(voice="de"))
    assert audio.rms() > RMS_FLOOR


def test_resampling_keeps_the_duration() -> None:
    engine = engine_module.shared_engine()
    settings = EspeakSettings()

    def raw() -> int:
        library = engine.library()
        engine_module._select(library, speaker_voice(settings, 0).name, settings)
        return library.synthesize(SENTENCE, library.sample_rate * 60, lambda: False).samples.size

    frames = engine.run(raw).result(timeout=30)
    audio = engine.run(engine.speak, SpeechRequest(text=SENTENCE), settings).result(timeout=30)
    assert audio.sample_rate == 24_000
    assert abs(audio.duration - frames / 22_050) < JITTER_S


async def test_equal_requests_give_the_same_speech() -> None:
    first = await speak(SENTENCE, speaker=1)
    second = await speak(SENTENCE, speaker=1)
    assert abs(first.duration - second.duration) < JITTER_S
    assert abs(first.rms() - second.rms()) < 0.1 * first.rms()


# --- speakers -----------------------------------------------------------------------------------


async def test_two_speaker_ids_give_two_voices() -> None:
    zero = await speak(SENTENCE, speaker=0)
    one = await speak(SENTENCE, speaker=1)
    assert digest(zero) != digest(one)
    # Speaker 0 is a male variant and speaker 1 a female one: about an octave apart.
    assert fundamental_hz(one) > 1.4 * fundamental_hz(zero)


def test_speaker_ids_map_to_distinct_voices() -> None:
    settings = EspeakSettings()
    voices = {speaker_voice(settings, n) for n in range(3 * len(DEFAULT_VARIANTS))}
    assert len(voices) == 3 * len(DEFAULT_VARIANTS)
    assert speaker_voice(settings, 0).name == "en-us+m3"
    assert speaker_voice(settings, 1).name == "en-us+f2"


@given(st.integers(min_value=0, max_value=10_000))
def test_speaker_pitch_stays_in_range(speaker: int) -> None:
    voice = speaker_voice(EspeakSettings(pitch=95), speaker)
    assert 0 <= voice.pitch <= 99


# --- concurrency ----------------------------------------------------------------------------------


NUMBERS = [
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
    "twenty",
]


async def test_twenty_concurrent_jobs_complete_with_correct_distinct_audio() -> None:
    tgt = target()
    # Job i counts from one to i+1: every text has its own length, so its audio is recognisable.
    requests = [
        SpeechRequest(text=" ".join(NUMBERS[: i + 1]) + ".", speaker=i % 2) for i in range(20)
    ]
    handles = await asyncio.gather(*(espeak.submit(tgt, [r], None) for r in requests))
    statuses = await asyncio.gather(*(wait(tgt, h) for h in handles))
    audios = []
    for request, status in zip(requests, statuses, strict=True):
        assert status.state is JobState.COMPLETED
        assert [r.id for r in status.results] == [request.id]
        [audio] = await espeak.decode(tgt, status, None)
        audios.append(audio)
    assert len({digest(a) for a in audios}) == 20
    alone = [engine_module.shared_engine().speak(r, EspeakSettings()) for r in requests]
    expected = [a.duration for a in alone]
    assert min(np.diff(expected)) > 2 * JITTER_S  # so a duration names exactly one text
    for audio, duration in zip(audios, expected, strict=True):
        assert audio.rms() > RMS_FLOOR
        # Correct: as long as the same request spoken alone, and so no other request's audio.
        assert abs(audio.duration - duration) < JITTER_S


def test_direct_calls_from_many_threads_are_serialised() -> None:
    requests = [SpeechRequest(text=" ".join(NUMBERS[: 2 * i + 1])) for i in range(8)]
    expected = [engine_module.shared_engine().speak(r, EspeakSettings()) for r in requests]
    got: dict[int, Audio] = {}

    def work(i: int) -> None:
        got[i] = engine_module.shared_engine().speak(requests[i], EspeakSettings())

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(requests))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(got) == list(range(len(requests)))
    for i, audio in got.items():
        assert abs(audio.duration - expected[i].duration) < JITTER_S
        assert audio.rms() > RMS_FLOOR


async def test_a_batch_comes_back_in_request_order() -> None:
    tgt = target()
    batch = [SpeechRequest(text=f"Part {word}.", speaker=i) for i, word in enumerate(NUMBERS[:5])]
    status = await run_job(tgt, batch)
    assert [r.id for r in status.results] == [r.id for r in batch]
    audios = await espeak.decode(tgt, status, None)
    assert len(audios) == 5
    assert all(a.rms() > RMS_FLOOR for a in audios)


async def test_synthesis_runs_off_the_event_loop() -> None:
    tgt = target()
    long_text = " ".join([SENTENCE] * 100)  # about 7,500 characters, several minutes of speech
    handle = await espeak.submit(
        tgt, [SpeechRequest(text=long_text, max_audio_length_ms=600_000)], None
    )
    first = await espeak.poll(tgt, handle, None)
    assert first.state in (JobState.QUEUED, JobState.RUNNING)
    status = await wait(tgt, handle)
    assert status.state is JobState.COMPLETED
    assert status.exec_ms is not None
    assert status.results[0].duration_ms > 120_000


async def test_cancel_stops_a_running_job_and_a_queued_one() -> None:
    tgt = target()
    long_text = " ".join([SENTENCE] * 120)
    batch = [SpeechRequest(text=long_text, max_audio_length_ms=600_000, seed=i) for i in range(8)]
    running = await espeak.submit(tgt, batch, None)
    queued = await espeak.submit(tgt, [SpeechRequest(text=SENTENCE)], None)
    deadline = time.monotonic() + POLL_DEADLINE_S
    while (await espeak.poll(tgt, running, None)).state is JobState.QUEUED:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.001)
    await espeak.cancel(tgt, queued, None)
    await espeak.cancel(tgt, running, None)
    assert (await wait(tgt, queued)).state is JobState.CANCELLED
    status = await wait(tgt, running)
    assert status.state is JobState.CANCELLED
    assert status.results == ()
    # Cancelling a finished job is not an error, and the engine is free for the next job.
    await espeak.cancel(tgt, running, None)
    assert (await speak(SENTENCE)).rms() > RMS_FLOOR


async def test_an_unknown_job_is_lost() -> None:
    handle = JobHandle(target="draft", job_id="espeak-gone", request_ids=["x"])
    with pytest.raises(JobLost, match="submit it again"):
        await espeak.poll(target(), handle, None)


# --- edge-case texts ------------------------------------------------------------


@pytest.mark.parametrize("text", ["", "   ", "\n\t "])
async def test_empty_text_is_rejected_naming_the_fix(text: str) -> None:
    with pytest.raises(Rejected, match="empty text: give it at least one word"):
        await espeak.submit(target(), [SpeechRequest(text=text)], None)


async def test_a_20000_character_text_is_rejected_naming_the_fix() -> None:
    text = ("All work and no play makes a dull draft. " * 500)[:20_000]
    assert len(text) == 20_000
    with pytest.raises(Rejected, match=r"20000 characters, over eSpeak's limit of 10000 .* split"):
        await espeak.submit(target(), [SpeechRequest(text=text)], None)


async def test_speech_longer_than_max_audio_length_is_an_error_for_that_request() -> None:
    tgt = target()
    batch = [SpeechRequest(text=" ".join([SENTENCE] * 20)), SpeechRequest(text=SENTENCE)]
    status = await run_job(tgt, batch)
    assert status.state is JobState.COMPLETED
    too_long, fine = status.results
    assert too_long.audio is None
    assert "max_audio_length_ms=30000" in (too_long.error or "")
    assert "split the text" in (too_long.error or "")
    assert fine.error is None
    [audio] = await espeak.decode(tgt, JobStatus(JobState.COMPLETED, (fine,)), None)
    assert audio.rms() > RMS_FLOOR


async def test_mixed_script_unicode_speaks() -> None:
    audio = await speak(MIXED_SCRIPTS, max_audio_length_ms=120_000)
    assert audio.rms() > RMS_FLOOR
    assert audio.duration > 3.0


async def test_control_characters_still_speak() -> None:
    audio = await speak("Before\x00the\x07break after \x1b[31m the end.")
    assert audio.rms() > RMS_FLOOR


def test_text_reaches_espeak_as_one_utf8_c_string() -> None:
    assert clean_text("a\x00b\x07c\td\ud800é") == "a b c\td?é".encode() + b"\0"


@settings(max_examples=60, deadline=None)
@given(st.text(min_size=1, max_size=80).filter(lambda t: t.strip()))
def test_any_unicode_text_gives_audio_or_a_request_error(text: str) -> None:
    request = SpeechRequest(text=text, max_audio_length_ms=600_000)
    audio = engine_module.shared_engine().speak(request, EspeakSettings())
    assert audio.sample_rate == CSM_SAMPLE_RATE
    assert np.all(np.abs(audio.samples) <= 1.0)


# --- settings ------------------------------------------------------------


@pytest.mark.parametrize(
    ("block", "message"),
    [
        ("rate: 10", "rate must be 80-450 words per minute"),
        ("pitch: 120", "pitch must be 0-99"),
        ("voice: en-us+f2", "put speaker variants in `variants`"),
        ("variants: []", "at least one eSpeak NG variant"),
        ("variants: ['../../etc']", "not an eSpeak NG variant name"),
    ],
)
def test_bad_settings_are_config_errors_naming_the_key(block: str, message: str) -> None:
    config = load_config_text(f"providers:\n  es:\n    kind: espeak\n    {block}\n", "t.yaml", {})
    [check] = check_targets(config, load_plugins(["espeak"]).providers)
    assert check.invalid
    assert message in check.reason


def test_settings_from_the_config() -> None:
    text = "providers:\n  es:\n    kind: espeak\n    voice: en-gb\n    rate: 200\n"
    text += "    variants: [m1, f3]\n"
    [check] = check_targets(
        load_config_text(text, "t.yaml", {}), load_plugins(["espeak"]).providers
    )
    assert check.usable, check.reason
    assert check.target is not None
    assert check.target.settings == EspeakSettings(voice="en-gb", rate=200, variants=("m1", "f3"))


# --- conformance --------------------------------------------------------------------------


def test_the_conformance_kit_passes() -> None:
    # No HTTP surface: eSpeak runs in this process and never touches the shared client.
    ProviderConformance(espeak, target(), live=True, http_surface=False).assert_ok()


async def test_a_batch_over_the_limit_is_rejected() -> None:
    batch = [SpeechRequest(text=f"Line {i}.") for i in range(espeak.MAX_BATCH + 1)]
    with pytest.raises(Rejected, match="split the batch"):
        await espeak.submit(target(), batch, None)


# --- examples -----------------------------------------------------------------------------


def test_the_dialogue_example_writes_two_voices(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "dialogue.wav"
    done = subprocess.run(
        [
            sys.executable,
            str(root / "examples" / "dialogue.py"),
            str(root / "examples" / "dialogue.txt"),
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "target espeak (draft quality)" in done.stdout
    audio = Audio.decode(out.read_bytes())
    assert audio.sample_rate == CSM_SAMPLE_RATE
    assert audio.duration > 10
    assert audio.rms() > RMS_FLOOR
    assert not list(tmp_path.glob("*.partial"))


def test_the_welcome_text_is_short_and_speaks() -> None:
    text = (Path(__file__).resolve().parents[1] / "examples" / "welcome.txt").read_text("utf-8")
    assert 200 < len(text) < espeak.MAX_TEXT_CHARS
    request = SpeechRequest(text=text, max_audio_length_ms=120_000)
    audio = engine_module.shared_engine().speak(request, EspeakSettings())
    assert 20 < audio.duration < 60
    assert audio.rms() > RMS_FLOOR


async def test_health_reports_the_jobs_waiting() -> None:
    tgt = target()
    long_text = " ".join([SENTENCE] * 100)
    handle = await espeak.submit(
        tgt, [SpeechRequest(text=long_text, max_audio_length_ms=600_000)], None
    )
    health = await espeak.health(tgt, None)
    assert health.ok
    assert health.queue_depth is not None
    assert health.queue_depth >= 1
    assert health.workers == 1
    await wait(tgt, handle)


async def test_finished_jobs_are_forgotten_after_a_while(monkeypatch: pytest.MonkeyPatch) -> None:
    tgt = target()
    old = await espeak.submit(tgt, [SpeechRequest(text=SENTENCE)], None)
    await wait(tgt, old)
    monkeypatch.setattr(jobs_module, "KEEP_FINISHED_S", 0.0)
    await asyncio.sleep(0.01)
    await wait(tgt, await espeak.submit(tgt, [SpeechRequest(text="Next.")], None))
    with pytest.raises(JobLost):
        await espeak.poll(tgt, old, None)


def test_a_second_engine_shares_the_one_loaded_library() -> None:
    shared = engine_module.shared_engine()
    other = Engine()
    first = shared.run(shared.library).result(timeout=30)
    assert other.run(other.library).result(timeout=30) is first
    audio = other.run(other.speak, SpeechRequest(text=SENTENCE), EspeakSettings()).result(30)
    assert audio.rms() > RMS_FLOOR
