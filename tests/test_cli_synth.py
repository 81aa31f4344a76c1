"""`csm-offload synth`, `estimate` and `costs` end to end, and sentence-aware chunking."""

from __future__ import annotations

import json
import sqlite3
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from csm_offload import Audio
from csm_offload.audio import CHUNK_PAUSE_S, join_audio
from csm_offload.chunking import chunk_text
from csm_offload.cli import main
from csm_offload.cli.synth import DEFAULT_CHUNK_CHARS
from csm_offload.journal import Journal
from csm_offload.model import SpeechRequest
from csm_offload.output import AudioWriter
from csm_offload.voices import load_voice, voice_request
from tests.sim.runpod_cloud import SimulatedRunPod

SIM_CONFIG = """
providers:
  sim:
    kind: runpod
    endpoint_url: {url}
    api_key: sim-key
    max_batch: 2
    max_in_flight: 4
    use_runsync: false
    seconds_per_char: 0.001
    job_overhead_s: 0
    usd_per_second: 0.01
  espeak:
    kind: espeak
"""
BOOK = " ".join(f"This is sentence {i} of a short test text." for i in range(12))


def cli(*args: str) -> int:
    with pytest.raises(SystemExit) as info:
        main(list(args))
    return int(info.value.code or 0)


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CSM_OFFLOAD_LOAD_PLUGINS", "runpod,espeak")
    monkeypatch.delenv("CSM_OFFLOAD_CONFIG", raising=False)
    return tmp_path


@pytest.fixture
def sim(workdir: Path) -> Iterator[SimulatedRunPod]:
    with SimulatedRunPod(workers=4, seconds_per_char=0.001) as cloud:
        (workdir / "cfg.yaml").write_text(SIM_CONFIG.format(url=cloud.url))
        yield cloud


def test_synth_a_file_through_the_cloud(
    sim: SimulatedRunPod, workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (workdir / "book.txt").write_text(BOOK)
    code = cli(
        "--config",
        "cfg.yaml",
        "synth",
        "book.txt",
        "-o",
        "out/book.wav",
        "--max-chars",
        "100",
        "--quiet",
    )
    out = capsys.readouterr().out
    assert code == 0, out
    audio = Audio.decode((workdir / "out/book.wav").read_bytes())
    assert audio.duration > 1
    meta = json.loads((workdir / "out/book.wav.json").read_text())
    assert meta["quality"] == "csm"
    assert meta["targets"] == {"sim": len(meta["segments"])}
    assert len(meta["segments"]) == len(chunk_text(BOOK, 100)) > 1
    assert "made by sim" in out and "routing (default)" in out
    assert "not espeak (espeak): draft quality" in out
    assert not list(workdir.rglob("*.tmp"))
    # Again: everything comes from the journal, nothing is sent.
    submitted = sum(sim.stats()["submissions"].values())
    assert (
        cli(
            "--config",
            "cfg.yaml",
            "synth",
            "book.txt",
            "-o",
            "again.wav",
            "--max-chars",
            "100",
            "--quiet",
        )
        == 0
    )
    assert sum(sim.stats()["submissions"].values()) == submitted
    assert (workdir / "again.wav").read_bytes() == (workdir / "out/book.wav").read_bytes()


def test_draft_voice_when_asked(
    sim: SimulatedRunPod, workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = cli(
        "--config",
        "cfg.yaml",
        "synth",
        "Hello from the draft voice.",
        "-o",
        "d.wav",
        "--draft",
        "--quiet",
    )
    out = capsys.readouterr().out
    assert code == 0, out
    meta = json.loads((workdir / "d.wav.json").read_text())
    assert meta["quality"] == "draft" and meta["targets"] == {"espeak": 1}
    assert "--draft" in out
    assert sim.stats()["requests"].get("run", 0) == 0


def test_cloud_gpu_with_no_usable_remote_exits_2_naming_why(
    workdir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RUNPOD_API_KEY", raising=False)
    monkeypatch.delenv("RUNPOD_ENDPOINT_URL", raising=False)
    code = cli("synth", "Hello.", "-o", "x.wav", "--cloud-gpu", "--quiet")
    err = capsys.readouterr().err
    assert code == 2
    assert "no usable remote target (--cloud-gpu)" in err
    assert "runpod: needs RUNPOD_API_KEY" in err
    assert "Traceback" not in err
    assert not (workdir / "x.wav").exists()


def test_budget_stop_writes_nothing_and_exits_2(
    sim: SimulatedRunPod, workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = cli(
        "--config",
        "cfg.yaml",
        "synth",
        BOOK,
        "-o",
        "b.wav",
        "--max-chars",
        "60",
        "--max-usd",
        "0.0008",
        "--quiet",
    )
    err = capsys.readouterr().err
    assert code == 2
    assert "budget" in err and "--max-usd" in err
    assert not (workdir / "b.wav").exists()
    assert sim.stats()["billed_ms"] / 1000 * 0.01 <= 0.0008


def test_provider_failure_exits_1_with_a_per_target_summary(
    sim: SimulatedRunPod, workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sim.inject("run", "http", status=500, count=1000)
    code = cli("--config", "cfg.yaml", "synth", "One sentence.", "-o", "f.wav", "--quiet")
    err = capsys.readouterr().err
    assert code == 1
    assert ("sim:" in err and "HTTP 500" in err) or "500" in err
    assert not (workdir / "f.wav").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("synth", "", "-o", "x.wav"), "the text is empty"),
        (("synth", "chapter1.txt", "-o", "x.wav"), "chapter1.txt: no such file"),
        (("synth", "Hi.", "-o", "x.mp3"), "must end in .wav or .flac"),
        (("synth", "Hi.", "-o", "x.wav", "--cloud-gpu", "--local-audio"), "exclude each other"),
    ],
)
def test_bad_input_is_one_clear_sentence(
    workdir: Path, capsys: pytest.CaptureFixture[str], args: tuple[str, ...], message: str
) -> None:
    assert cli(*args) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_estimate_prices_every_target_and_sends_no_work(
    sim: SimulatedRunPod, workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (workdir / "book.txt").write_text(BOOK)
    assert cli("--config", "cfg.yaml", "estimate", "book.txt", "--json") == 0
    rows = {row["target"]: row for row in json.loads(capsys.readouterr().out)}
    assert rows["sim"]["usd"] > 0 and rows["sim"]["quality"] == "csm"
    assert rows["espeak"]["usd"] == 0 and rows["espeak"]["quality"] == "draft"
    # Only health checks reach the endpoint: no work is sent, nothing is paid.
    assert set(sim.stats()["requests"]) == {"health"}
    assert sim.stats()["submissions"] == {}
    assert cli("--config", "cfg.yaml", "estimate", "book.txt") == 0
    assert "sim" in capsys.readouterr().out


def test_costs_by_target_and_day(
    sim: SimulatedRunPod, workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli("--config", "cfg.yaml", "costs") == 0
    assert "no journal" in capsys.readouterr().out
    assert cli("--config", "cfg.yaml", "synth", BOOK, "-o", "c.wav", "--quiet") == 0
    capsys.readouterr()
    assert cli("--config", "cfg.yaml", "costs", "--json") == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["target"] == "sim" and row["jobs"] >= 1 and row["actual_usd"] > 0
    assert row["actual_usd"] == pytest.approx(sim.stats()["billed_ms"] / 1000 * 0.01, rel=0.05)
    assert cli("--config", "cfg.yaml", "costs") == 0
    assert "total" in capsys.readouterr().out


words = st.text(alphabet=st.sampled_from("abc xyz.,;!?\n。"), max_size=400)


@given(text=words, size=st.integers(min_value=1, max_value=80))
def test_chunks_fit_and_lose_nothing(text: str, size: int) -> None:
    chunks = chunk_text(text, size)
    assert all(0 < len(c) <= size for c in chunks)
    assert "".join("".join(chunks).split()) == "".join(text.split())


def test_chunks_break_at_sentences_first() -> None:
    text = "First sentence here. Second one! A third? " * 3
    chunks = chunk_text(text, 45)
    assert chunks[0] == "First sentence here. Second one! A third?"
    assert all(c[-1] in ".!?" for c in chunks)


# --- long outputs: written segment by segment ---------------------------------------------------


def _tones(count: int, seconds: float, rate: int = 24_000) -> list[Audio]:
    t = np.arange(round(seconds * rate)) / rate
    return [
        Audio((0.3 * np.sin(2 * np.pi * (200 + 50 * i) * t)).astype(np.float32), rate)
        for i in range(count)
    ]


@pytest.mark.parametrize("fmt", ["wav", "flac"])
def test_the_writer_equals_joining_in_memory(tmp_path: Path, fmt: str) -> None:
    parts = [*_tones(3, 0.5), *_tones(1, 0.25, rate=16_000), *_tones(1, 0.001)]
    with AudioWriter(tmp_path / f"out.{fmt}", fmt, CHUNK_PAUSE_S) as writer:  # type: ignore[arg-type]
        for part in parts:
            writer.add(part)
        writer.commit()
    assert (tmp_path / f"out.{fmt}").read_bytes() == join_audio(parts).encode(fmt)  # type: ignore[arg-type]
    assert writer.duration == pytest.approx(join_audio(parts).duration)
    with AudioWriter(tmp_path / f"empty.{fmt}", fmt) as writer:  # type: ignore[arg-type]
        writer.commit()
    assert Audio.decode((tmp_path / f"empty.{fmt}").read_bytes()).frames == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([f"empty.{fmt}", f"out.{fmt}"])
    assert not list(tmp_path.glob("*.tmp"))


def test_a_failed_write_leaves_neither_file_nor_tmp(tmp_path: Path) -> None:
    (tmp_path / "out.wav").write_bytes(b"the previous take")

    def interrupted() -> None:
        with AudioWriter(tmp_path / "out.wav", "wav") as writer:
            writer.add(_tones(1, 0.1)[0])
            raise RuntimeError("the run stopped here")

    with pytest.raises(RuntimeError):
        interrupted()
    assert (tmp_path / "out.wav").read_bytes() == b"the previous take"
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*"))


def _journaled_text(workdir: Path, chars: int, seconds: float) -> str:
    """A text without punctuation whose every segment is already in the journal (as the
    draft voice's), so `synth --draft` only assembles: no engine, no network."""
    words = ("alpha", "beta", "gamma", "delta", "epsilon", "zeta")
    text = " ".join(words[(i * 7) % 6] + str(i % 97) for i in range(chars // 7))[:chars]
    tones = _tones(7, seconds)
    with Journal(workdir / ".csm-offload" / "journal.sqlite3") as journal:
        shas = [journal.put_audio(tone) for tone in tones]
        for index, piece in enumerate(chunk_text(text, DEFAULT_CHUNK_CHARS)):
            sha = shas[index % len(shas)]
            journal.record_result(SpeechRequest(piece).id, "draft", "espeak", None, sha, 1000)
    return text


def _peak_of_synth(workdir: Path, text: str, output: str) -> int:
    (workdir / "long.txt").write_text(text)
    tracemalloc.start()
    try:
        code = cli(
            "--config", "espeak.yaml", "synth", "long.txt", "-o", output, "--draft", "--quiet"
        )
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert code == 0
    return peak


def test_memory_does_not_grow_with_the_length_of_the_text(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (workdir / "espeak.yaml").write_text("providers:\n  espeak:\n    kind: espeak\n")
    _peak_of_synth(workdir, _journaled_text(workdir, 2_000, 1.0), "warm.wav")  # imports
    short = _peak_of_synth(workdir, _journaled_text(workdir, 20_000, 2.0), "short.wav")
    long = _peak_of_synth(workdir, _journaled_text(workdir, 200_000, 2.0), "long.wav")
    out = capsys.readouterr().out
    assert "0 segments from the journal" not in out
    long_audio = (workdir / "long.wav").stat().st_size
    # Ten times the text, ten times the audio (about 70 MB of WAV), but not ten times the memory:
    # only the text and its segment list grow, never the audio held.
    assert long_audio > 9 * (workdir / "short.wav").stat().st_size
    assert long < 3 * short, (short, long)
    assert long < long_audio / 4, (long, long_audio)
    meta = json.loads((workdir / "long.wav.json").read_text())
    assert meta["duration_s"] == pytest.approx(long_audio / 48_000, rel=0.01)


def test_synth_in_a_given_voice(
    sim: SimulatedRunPod, workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    t = np.arange(5 * 24_000) / 24_000
    clip = (0.2 * np.sin(2 * np.pi * 180 * t) * (1 + np.sin(2 * np.pi * 2 * t))).astype(np.float32)
    (workdir / "voice.wav").write_bytes(Audio(clip, 24_000).encode("wav"))
    base = ("--config", "cfg.yaml", "synth", "Hello there. How are you?", "--quiet")
    args = (*base, "--voice-prompt", "voice.wav", "--voice-text", "A short reference clip.")
    assert cli(*args, "-o", "voiced.wav") == 0
    voice = load_voice(workdir / "voice.wav", "A short reference clip.")
    meta = json.loads((workdir / "voiced.wav.json").read_text())
    assert [s["id"] for s in meta["segments"]] == [
        voice_request(s["text"], voice).id for s in meta["segments"]
    ]
    capsys.readouterr()
    assert cli(*base, "-o", "x.wav", "--voice-prompt", "voice.wav") == 2
    assert "--voice-text" in capsys.readouterr().err


SCRIPT = """Ana: Did the draft come out?
Ben: It did, every chapter.
Ana: And it cost nothing?
---
Ben: A second scene starts here.
Ana: With its own history.
"""


def test_a_script_speaks_each_name_in_its_voice_scene_by_scene(
    sim: SimulatedRunPod, workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    t = np.arange(4 * 24_000) / 24_000
    for name, pitch in (("ana", 220), ("ben", 130)):
        clip = 0.2 * np.sin(2 * np.pi * pitch * t) * (1 + np.sin(2 * np.pi * 2 * t))
        (workdir / f"{name}.wav").write_bytes(Audio(clip.astype(np.float32), 24_000).encode("wav"))
    config = (workdir / "cfg.yaml").read_text() + (
        "voices:\n"
        "  Ana:\n    audio: ana.wav\n    transcript: Ana's reference line.\n    speaker: 3\n"
        "  Ben:\n    audio: ben.wav\n    transcript: Ben's reference line.\n    speaker: 4\n"
    )
    (workdir / "cfg.yaml").write_text(config)
    (workdir / "script.txt").write_text(SCRIPT)
    args = ("--config", "cfg.yaml", "synth", "script.txt", "--script", "-o", "talk.wav")
    assert cli(*args, "--quiet") == 0, capsys.readouterr().err
    meta = json.loads((workdir / "talk.wav.json").read_text())
    assert [s["text"] for s in meta["segments"]] == [
        "Did the draft come out?",
        "It did, every chapter.",
        "And it cost nothing?",
        "A second scene starts here.",
        "With its own history.",
    ]
    # Three waves (the longest scene has three turns), five turns in all, each made once.
    submitted = sim.stats()["submissions"]
    assert len(submitted) == 5 and set(submitted.values()) == {1}
    with sqlite3.connect(workdir / ".csm-offload" / "journal.sqlite3") as db:
        speakers = dict(db.execute("SELECT text, speaker FROM requests").fetchall())
    assert speakers["It did, every chapter."] == 4 and speakers["With its own history."] == 3
