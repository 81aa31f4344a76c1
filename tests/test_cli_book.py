"""`csm-offload book` end to end against the simulated RunPod cloud: chapters, redo, dry run,
kill -9 and resume, and bad input."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from csm_offload import Audio, SpeechRequest
from csm_offload.cli import main
from csm_offload.plugins import Plugins
from tests.conftest import registered
from tests.scripted_provider import ScriptedProvider
from tests.sim.runpod_cloud import SimulatedRunPod

CLI = [sys.executable, "-m", "csm_offload"]


def _config(url: str, key: str = "${RUNPOD_API_KEY}") -> str:
    return f"""
providers:
  sim:
    kind: runpod
    endpoint_url: {url}
    api_key: {key}
    max_batch: 2
    max_in_flight: 4
    use_runsync: false
    seconds_per_char: 0.003
    job_overhead_s: 0
    usd_per_second: 0.01
audio:
  cloud_gpu:
    fallback_to_local: false
"""


def _book(chapters: int = 3, sentences: int = 8) -> str:
    parts = ["# A Test Book\n"]
    for c in range(1, chapters + 1):
        parts.append(f"## Chapter {c}\n")
        for p in range(2):
            line = " ".join(
                f"Chapter {c} paragraph {p} sentence {s} is here." for s in range(sentences // 2)
            )
            parts.append(line + "\n")
    return "\n".join(parts)


def cli(*args: str) -> int:
    with pytest.raises(SystemExit) as info:
        main(list(args))
    return int(info.value.code or 0)


@pytest.fixture
def sim(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[SimulatedRunPod]:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CSM_OFFLOAD_LOAD_PLUGINS", "runpod")
    monkeypatch.delenv("CSM_OFFLOAD_CONFIG", raising=False)
    with SimulatedRunPod(workers=4, seconds_per_char=0.0005) as cloud:
        (tmp_path / "cfg.yaml").write_text(_config(cloud.url, cloud.api_key))
        (tmp_path / "book.md").write_text(_book())
        yield cloud


def _submitted(sim: SimulatedRunPod) -> Counter[str]:
    return Counter(sim.stats()["submissions"])


def _chapters(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((folder / "chapters").glob("*.flac"))}


def test_a_book_becomes_chapters_and_a_rerun_is_free(
    sim: SimulatedRunPod, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ("--config", "cfg.yaml", "book", "book.md", "-o", "out", "--max-chars", "60")
    assert cli(*args, "--quiet", "--format", "m4b") == 0
    out = capsys.readouterr().out
    files = _chapters(tmp_path / "out")
    assert list(files) == ["01 - Chapter 1.flac", "02 - Chapter 2.flac", "03 - Chapter 3.flac"]
    assert (tmp_path / "out" / "A Test Book.m4b").is_file() and "wrote" in out
    srt = (tmp_path / "out" / "subtitles" / "01 - Chapter 1.srt").read_text()
    assert srt.startswith("1\n") and "Chapter one paragraph zero" in srt
    vtt = (tmp_path / "out" / "A Test Book.vtt").read_text()
    assert vtt.startswith("WEBVTT") and "Chapter three" in vtt
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert [c["chunks"] for c in report["chapters"]] == [len(c) for c in _chunk_counts(tmp_path)]
    paid = _submitted(sim)
    assert cli(*args, "--quiet", "--json") == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["cost_usd"] == 0 and _submitted(sim) == paid
    assert _chapters(tmp_path / "out") == files
    assert not list((tmp_path / "out").rglob("*.tmp"))


def _chunk_counts(tmp_path: Path) -> list[list[str]]:
    manifest = json.loads((tmp_path / "out" / "book.json").read_text())
    from csm_offload.book.speech import for_speech
    from csm_offload.chunking import split_chunks

    return [
        [c.text for c in split_chunks(for_speech((tmp_path / "out" / ch["text"]).read_text()), 60)]
        for ch in manifest["chapters"]
    ]


def test_redo_regenerates_exactly_what_it_names(sim: SimulatedRunPod, tmp_path: Path) -> None:
    args = ("--config", "cfg.yaml", "book", "book.md", "-o", "out", "--max-chars", "60", "--quiet")
    assert cli(*args) == 0
    before, paid = _chapters(tmp_path / "out"), _submitted(sim)
    assert cli(*args, "--redo", "2.1") == 0
    after = _chapters(tmp_path / "out")
    new = _submitted(sim) - paid
    assert sum(new.values()) == 1  # one chunk, a new take: a new request (a new seed)
    assert not set(new) & set(paid)
    # (The simulator's audio depends on the text's length only, so the chapter's bytes do not
    # show the new take; the other chapters must not change at all.)
    assert {k: v for k, v in after.items() if not k.startswith("02")} == {
        k: v for k, v in before.items() if not k.startswith("02")
    }
    assert json.loads((tmp_path / "out" / "book.json").read_text())["takes"] == {"2.1": 1}
    # The redo is remembered: a plain rerun keeps it and pays nothing.
    paid = _submitted(sim)
    assert cli(*args) == 0
    assert _submitted(sim) == paid and _chapters(tmp_path / "out") == after
    assert cli(*args, "--redo", "3") == 0
    assert sum((_submitted(sim) - paid).values()) == len(_chunk_counts(tmp_path)[2])


def test_dry_run_pays_nothing_and_writes_nothing(
    sim: SimulatedRunPod, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ("--config", "cfg.yaml", "book", "book.md", "-o", "out", "--max-chars", "60")
    assert cli(*args, "--dry-run", "--json") == 0
    summary = json.loads(capsys.readouterr().out)
    chapters = summary["books"][0]["chapters"]
    assert [c["number"] for c in chapters] == [1, 2, 3]
    assert all(c["chunks"] > 0 and c["audio_s"] > 0 and c["paid"] == 0 for c in chapters)
    sim_row = next(t for t in summary["targets"] if t["target"] == "sim")
    assert sim_row["usable"] and sim_row["usd"] > 0
    assert sum(_submitted(sim).values()) == 0
    assert not (tmp_path / "out").exists() and not (tmp_path / ".csm-offload").exists()
    # After a real run of chapter 1, the dry run marks its chunks as already made.
    assert cli(*args, "--quiet", "--chapters", "1") == 0
    capsys.readouterr()
    assert cli(*args, "--dry-run", "--json") == 0
    chapters = json.loads(capsys.readouterr().out)["books"][0]["chapters"]
    assert chapters[0]["paid"] == chapters[0]["chunks"] and chapters[1]["paid"] == 0


def test_a_source_that_cannot_be_read_is_skipped_and_said(
    sim: SimulatedRunPod, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = cli("--config", "cfg.yaml", "book", "book.md", "missing.md", "-o", "out", "--quiet")
    captured = capsys.readouterr()
    assert code == 2
    assert "missing.md" in captured.err and "skipped" in captured.err
    assert len(_chapters(tmp_path / "out")) == 3


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["book", "book.md", "-o", "book.md"], "book.md"),
        (["book", "book.md", "--groups", "a"], "--urls"),
        (["book", "book.md", "--chapters", "2-9"], "chapters 1 to 3"),
        (["book", "book.md", "--redo", "x.1"], "--redo"),
        (["book", "--urls", "nope.csv"], "nope.csv"),
        (["book", "-o", "empty", "--audio-only"], "without --audio-only"),
    ],
)
def test_bad_input_is_one_clear_sentence(
    sim: SimulatedRunPod, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    assert cli("--config", "cfg.yaml", *args) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert sum(_submitted(sim).values()) == 0


def _results(journal: Path) -> int:
    try:
        with sqlite3.connect(f"file:{journal}?mode=ro", uri=True, timeout=5) as db:
            return int(db.execute("SELECT COUNT(*) FROM results").fetchone()[0])
    except sqlite3.Error:
        return 0


def _requests_of(journal: Path, state: str) -> set[str]:
    with sqlite3.connect(f"file:{journal}?mode=ro", uri=True, timeout=5) as db:
        rows = db.execute("SELECT request_ids FROM jobs WHERE state = ?", (state,)).fetchall()
    return {rid for (ids,) in rows for rid in json.loads(ids)}


def _run_book(workdir: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            *CLI,
            "--config",
            "cfg.yaml",
            "book",
            "book.md",
            "-o",
            "out",
            "--max-chars",
            "50",
            "--quiet",
            "--format",
            "m4b",
        ],
        cwd=workdir,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_a_book_killed_mid_run_resumes_with_identical_audio(tmp_path: Path) -> None:
    with SimulatedRunPod.spawn(workers=4, seconds_per_char=0.003) as sim:
        env = {**os.environ, "RUNPOD_API_KEY": sim.api_key, "CSM_OFFLOAD_LOAD_PLUGINS": "runpod"}
        crashed, reference = tmp_path / "crashed", tmp_path / "reference"
        for folder in (crashed, reference):
            folder.mkdir()
            (folder / "cfg.yaml").write_text(_config(sim.url))
            (folder / "book.md").write_text(_book(chapters=4, sentences=12))
        journal = crashed / ".csm-offload" / "journal.sqlite3"
        client = _run_book(crashed, env)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and client.poll() is None and _results(journal) < 8:
            time.sleep(0.01)
        assert client.poll() is None, "the book finished before the kill"
        client.send_signal(signal.SIGKILL)
        client.wait(10)
        assert not (crashed / "out" / "A Test Book.m4b").exists()
        # A job killed between its submission and the journaling of its handle was never
        # heard back from: it is the one case that may run twice (RunPod cannot be asked for
        # it). Every other request must run exactly once.
        unheard = _requests_of(journal, "submitting")

        rerun = _run_book(crashed, env)
        _out, err = rerun.communicate(timeout=120)
        assert rerun.returncode == 0, err.decode()
        twice = {rid for rid, n in Counter(sim.stats()["generated"]).items() if n > 1}
        assert twice <= unheard

        clean = _run_book(reference, env)
        _out, err = clean.communicate(timeout=120)
        assert clean.returncode == 0, err.decode()
    assert _chapters(crashed / "out") == _chapters(reference / "out")
    assert not list((crashed / "out").rglob("*.tmp"))


def test_the_book_is_levelled_to_acx_and_checked(
    sim: SimulatedRunPod, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ("--config", "cfg.yaml", "book", "book.md", "-o", "out", "--quiet", "--check-acx")
    assert cli(*args) == 0
    out = capsys.readouterr().out
    assert "true peak" in out and "pass" in out
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["loudness"]["preset"] == "acx" and len(report["loudness"]["chapters"]) == 3
    assert [c["ok"] for c in report["acx_check"]] == [True, True, True]
    assert cli(*args, "--loudness", "none") == 0
    assert json.loads((tmp_path / "out" / "report.json").read_text())["loudness"] is None


def _bad_takes(request: SpeechRequest) -> Audio:
    """Speech-like tone, but silence for the SILENT chunk's first take, a clipped square wave
    for CLIP's, and a 30 s loop for every take of LOOP."""
    rate, seconds = 24_000, max(0.5, 0.06 * len(request.text))
    if "LOOP" in request.text:
        seconds = 30.0
    t = np.arange(int(seconds * rate)) / rate
    wave = 0.2 * np.sin(2 * np.pi * 220 * t) * (1 + 0.5 * np.sin(2 * np.pi * 3 * t))
    if "SILENT" in request.text and request.seed == 0:
        wave = np.zeros_like(t)
    if "CLIP" in request.text and request.seed == 0:
        wave = np.sign(np.sin(2 * np.pi * 220 * t))
    return Audio(wave.astype(np.float32), rate)


GATE_BOOK = """# Gate Book

## Chapter 1

The first paragraph has nothing odd in it at all, and reads well enough.

This SILENT chunk comes back as silence the first time it is made.

## Chapter 2

This CLIP chunk comes back clipped the first time it is made.

A LOOP chunk.

The last paragraph is fine, and it closes the book.
"""


def test_the_quality_gate_regenerates_and_flags(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CSM_OFFLOAD_CONFIG", raising=False)
    provider = ScriptedProvider("scripted", max_batch=2, seconds_per_char=0.0005)
    plugins = Plugins()
    monkeypatch.setattr("csm_offload.cli.app.load_plugins", lambda *_a, **_k: plugins)
    monkeypatch.setattr("tests.scripted_provider.tone_for", _bad_takes)
    (tmp_path / "cfg.yaml").write_text(
        "providers:\n  s:\n    kind: scripted\n    usd_per_second: 0.01\n"
    )
    (tmp_path / "book.md").write_text(GATE_BOOK)
    args = ("--config", "cfg.yaml", "book", "book.md", "-o", "out", "--no-auto-voice")
    with registered(plugins, provider, "scripted"):
        assert cli(*args, "--max-retries", "2") == 0
    out = capsys.readouterr().out
    quality = json.loads((tmp_path / "out" / "report.json").read_text())["quality"]
    regenerated = Counter(e["chunk"] for e in quality["regenerated"])
    assert regenerated == {"1.2": 1, "2.1": 1, "2.2": 2}
    assert [(e["chunk"], e["attempt"]) for e in quality["flagged"]] == [("2.2", 3)]
    reasons = {e["chunk"]: " ".join(e["reasons"]) for e in quality["regenerated"]}
    assert "no speech" in reasons["1.2"] and "clipped" in reasons["2.1"]
    assert "long" in reasons["2.2"]
    assert all(e["offset_s"] is not None for e in quality["flagged"])
    assert quality["regeneration_usd"] > 0
    assert "1 chunks kept flagged" in out and "flagged chunk 2.2" in out
    assert len(_chapters(tmp_path / "out")) == 2
    # The kept takes are remembered: a rerun regenerates nothing and pays nothing.
    assert json.loads((tmp_path / "out" / "book.json").read_text())["takes"] == {
        "1.2": 1,
        "2.1": 1,
        "2.2": 2,
    }
    paid = sum(provider.submitted.values())
    with registered(plugins, provider, "scripted"):
        assert cli(*args, "--max-retries", "2") == 0
    assert sum(provider.submitted.values()) == paid
    again = json.loads((tmp_path / "out" / "report.json").read_text())["quality"]
    assert list(again["kept_flagged"]) == ["2.2"] and not again["regenerated"]
    # A redo of the flagged chunk judges its new take afresh.
    with registered(plugins, provider, "scripted"):
        assert cli(*args, "--max-retries", "0", "--redo", "2.2") == 0
    assert sum(provider.submitted.values()) == paid + 1


def test_every_chunk_of_a_parallel_book_carries_the_same_voice(
    sim: SimulatedRunPod, tmp_path: Path
) -> None:
    t = np.arange(5 * 24_000) / 24_000
    clip = 0.2 * np.sin(2 * np.pi * 170 * t) * (1 + np.sin(2 * np.pi * 2 * t))
    (tmp_path / "narrator.wav").write_bytes(Audio(clip.astype(np.float32), 24_000).encode("wav"))
    args = ("--config", "cfg.yaml", "book", "book.md", "-o", "out", "--quiet")
    voice = ("--voice-prompt", "narrator.wav", "--voice-text", "This is how the narrator sounds.")
    assert cli(*args, *voice) == 0
    jobs = list(sim.cloud.jobs.values())
    contexts = {r.context for job in jobs for r in job.batch.requests}
    assert len(jobs) > 1 and len(contexts) == 1  # many jobs in parallel, one voice
    ((prompt,),) = contexts
    assert prompt.text == "This is how the narrator sounds."


def test_without_a_voice_the_first_chunk_becomes_everyones_prompt(
    sim: SimulatedRunPod, tmp_path: Path
) -> None:
    assert cli("--config", "cfg.yaml", "book", "book.md", "-o", "out", "--quiet") == 0
    requests = [r for job in sim.cloud.jobs.values() for r in job.batch.requests]
    first = [r for r in requests if not r.context]
    assert len(first) == 1  # generated once, alone, before the rest
    contexts = {r.context for r in requests if r.context}
    assert len(contexts) == 1 and len(requests) > 2
    ((prompt,),) = contexts
    assert prompt.text == first[0].text
