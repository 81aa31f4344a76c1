"""Benchmark of the quality gate and the loudness pass on a generated book: prints one JSON
object (never asserted in tests).

    .venv/bin/python bench/quality.py                  # a 1-hour book at 24 kHz
    .venv/bin/python bench/quality.py --hours 0.25 --keep /tmp/quality-bench

The book is made of distinct speech-like chunks (`bench/_instant_provider.py`'s speech bank,
cut at seeded offsets and gains, 0.07 s per character, a breath of quiet before and after),
stored as FLAC as the journal stores them. The stages, each timed on its own (wall and CPU):

- gate: every chunk read from its FLAC bytes (lazily, as the journal hands it over) and
  checked by `check_chunk` at the voice's learned pace (`VoicePace`);
- assemble (not part of the target; the book command does it already): the chunks into one
  FLAC per chapter through `ChapterAssembler`, with room tone between them;
- measure: `loudness.measure` over every chapter file, streamed;
- apply: `loudness.plan` for the ACX preset and `apply_plan`, rewriting every chapter;
- apply_limiting_every_chapter (not part of the target): `apply` again with the limiter on
  every chapter at a ceiling most syllables reach, the limiter's worst case.

Real-time factor = seconds of audio / wall seconds (`rtf_cpu`: / CPU seconds, which another
process's load on a shared machine disturbs less). The issue's target: gate + measure + apply
together at 200× real time or faster.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import soundfile as sf
from _instant_provider import RATE, SECONDS_PER_CHAR, speech_bank

from csm_offload.audio import Audio
from csm_offload.book import loudness
from csm_offload.book.assemble import ChapterAssembler
from csm_offload.book.quality import GateSettings, VoicePace, check_chunk

TARGET_RTF = 200.0
CHAPTER_S = 600.0
#: A ceiling low enough that the limiter works on most syllables of this speech.
LIMIT_TEST_DBTP = -12.0
WORDS = ["the", "keeper", "climbed", "stair", "and", "lit", "lamp", "before", "storm", "came"]


@contextlib.contextmanager
def timed(into: dict[str, Any], name: str, audio_s: float) -> Iterator[None]:
    wall, cpu = time.perf_counter(), time.process_time()
    yield
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    into[name] = {"wall_s": round(wall, 3), "cpu_s": round(cpu, 3), "rtf": round(audio_s / wall, 1)}


def text_of(characters: int, rng: np.random.Generator) -> str:
    words: list[str] = []
    while sum(len(w) + 1 for w in words) < characters:
        words.append(str(rng.choice(WORDS)))
    return " ".join(words)[: characters - 1] + "."


def make_chunks(hours: float, seed: int = 3) -> list[list[tuple[str, bytes]]]:
    """Chapters of (text, FLAC bytes) chunks adding up to `hours` of audio."""
    rng = np.random.default_rng(seed)
    bank = speech_bank()
    quiet = (rng.standard_normal(RATE) * 10 ** (-70 / 20)).astype(np.float32)
    chapters: list[list[tuple[str, bytes]]] = []
    left = hours * 3600
    while left > 0:
        chapter, length = [], 0.0
        while length < min(CHAPTER_S, left):
            text = text_of(int(rng.integers(80, 300)), rng)
            frames = round(len(text) * SECONDS_PER_CHAR * RATE)
            start = int(rng.integers(0, bank.size - frames))
            body = bank[start : start + frames] * np.float32(rng.uniform(0.8, 1.2))
            samples = np.concatenate((quiet[: RATE // 10], body, quiet[: RATE // 5]))
            chapter.append((text, Audio(samples, RATE).encode("flac")))
            length += samples.size / RATE + 0.4
        chapters.append(chapter)
        left -= length
    return chapters


def gate(chapters: list[list[tuple[str, bytes]]]) -> dict[str, Any]:
    settings, pace = GateSettings(), VoicePace()
    failed = 0
    for chapter in chapters:
        for text, flac in chapter:
            audio = Audio.decode(flac, lazy=True)
            verdict = check_chunk(audio, text, settings, pace.seconds_per_char)
            if verdict.ok and verdict.measures is not None:
                pace.observe(verdict.measures)
            else:
                failed += 1
    chunks = sum(map(len, chapters))
    return {"chunks": chunks, "failed": failed, "pace": round(pace.seconds_per_char, 4)}


def assemble(chapters: list[list[tuple[str, bytes]]], folder: Path) -> list[Path]:
    paths = []
    for number, chapter in enumerate(chapters, start=1):
        path = folder / f"{number:02d}.flac"

        def load(index: int, chapter: list[tuple[str, bytes]] = chapter) -> Audio:
            return Audio.decode(chapter[index][1])

        ends = [index % 4 == 3 for index in range(len(chapter))]
        with ChapterAssembler(path, load, ends, seed=number) as assembler:
            for index in range(len(chapter)):
                assembler.ready(index)
            paths.append(assembler.commit().path)
    return paths


def run(hours: float, folder: Path) -> dict[str, Any]:
    started = time.perf_counter()
    chapters = make_chunks(hours)
    result: dict[str, Any] = {"make_s": round(time.perf_counter() - started, 1)}
    audio_s = sum(Audio.decode(flac, lazy=True).duration for c in chapters for _t, flac in c)
    stages: dict[str, Any] = {}
    with timed(stages, "gate", audio_s):
        result["gate"] = gate(chapters)
    paths: list[Path] = []
    with timed(stages, "assemble", audio_s):
        paths.extend(assemble(chapters, folder))
    book_s = sum(sf.info(str(p)).duration for p in paths)  # the chunks, pauses and edges
    with timed(stages, "measure", book_s):
        measured = loudness.measure(paths)
    with timed(stages, "apply", book_s):
        gains = loudness.plan(measured, loudness.ACX)
        rewritten = loudness.apply_plan(gains)
    checks = loudness.check_acx(paths)
    # The worst case for `apply`: a limiter on every chapter, holding its loudest syllables
    # down (the ACX plan needs none for this book; real books need it only for odd peaks).
    with timed(stages, "apply_limiting_every_chapter", book_s):
        for chapter in gains.chapters:
            loudness.apply(attrs.evolve(chapter, gain_db=0.0, limiter_dbtp=LIMIT_TEST_DBTP))
    target_wall = sum(stages[name]["wall_s"] for name in ("gate", "measure", "apply"))
    target_cpu = sum(stages[name]["cpu_s"] for name in ("gate", "measure", "apply"))
    result.update(
        chunk_audio_s=round(audio_s, 1),
        book_s=round(book_s, 1),
        chapters=len(paths),
        stages=stages,
        gate_measure_apply={
            "wall_s": round(target_wall, 3),
            "rtf": round(book_s / target_wall, 1),
            "cpu_s": round(target_cpu, 3),
            "rtf_cpu": round(book_s / target_cpu, 1),
        },
        target_rtf=TARGET_RTF,
        met=book_s / target_wall >= TARGET_RTF,
        book_before={
            "rms_dbfs": round(measured.rms_dbfs, 2),
            "lufs": round(measured.integrated_lufs, 2),
        },
        book_gain_db=round(gains.book_gain_db, 2),
        rewritten=len(rewritten),
        acx_pass_after=sum(c.ok for c in checks),
        peak_rss_mb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    )
    return result


def machine() -> dict[str, Any]:
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "load_1min": round(os.getloadavg()[0], 2),
    }


def main() -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--hours", type=float, default=1.0, help="the book's length in hours")
    parser.add_argument("--keep", type=Path, help="keep the chapter files in this folder")
    args = parser.parse_args()
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
        return {"result": run(args.hours, args.keep), "machine": machine()}
    with tempfile.TemporaryDirectory(prefix="csm-offload-quality-") as scratch:
        return {"result": run(args.hours, Path(scratch)), "machine": machine()}


if __name__ == "__main__":
    print(json.dumps(main(), indent=2))
