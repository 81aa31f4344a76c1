"""Benchmark of the audiobook's audio half: prints one JSON object (never asserted in tests).

    .venv/bin/python bench/book_encode.py                # a 1-hour book
    .venv/bin/python bench/book_encode.py --hours 10     # peak RSS must stay flat in length

A book of synthetic speech-like audio at 24 kHz (voiced syllables on a wandering pitch,
fricative bursts, word and sentence gaps) is cut into chunks stored as FLAC files on disk, as
the journal stores them. Then, timed one after the other:

- assembly: every chapter through `ChapterAssembler`, its chunks announced in a shuffled
  order and each decoded from disk when its turn comes;
- M4B: the whole book through `encode_m4b` (AAC 64 kbps, chapter marks, tags);
- MP3: every chapter through `encode_mp3` (44.1 kHz CBR 192 kbps), one after the other.

Real-time factor = seconds of audio / seconds of wall time. Peak RSS is this process's
(`ru_maxrss`: the chunk generation is included, and is small); ffmpeg's is reported apart.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import tempfile
import time
from pathlib import Path

import numpy as np

from csm_offload.audio import Audio
from csm_offload.book.assemble import ChapterAssembler, ChapterAudio
from csm_offload.book.encode import ChapterFile, encode_m4b, encode_mp3
from csm_offload.book.metadata import BookInfo

RATE = 24_000
LEVEL_RMS = 0.08  # about -22 dBFS, in ACX's range


def syllable(rng: np.random.Generator, pitch: float) -> np.ndarray:
    """A voiced syllable (harmonics, falling toward its end) or, one time in five, a fricative."""
    frames = int(rng.uniform(0.09, 0.28) * RATE)
    envelope = np.hanning(frames)
    if rng.random() < 0.2:
        hiss = np.diff(rng.standard_normal(frames + 1))  # high-passed noise
        return (0.3 * hiss * envelope).astype(np.float32)
    glide = np.linspace(pitch, pitch * rng.uniform(0.85, 1.1), frames)
    phase = 2 * np.pi * np.cumsum(glide) / RATE
    voiced = sum(np.sin(k * phase) / k for k in range(1, 9))
    return (voiced * envelope).astype(np.float32)


def speech(rng: np.random.Generator, seconds: float) -> Audio:
    """About `seconds` of speech-like audio: words of 1-4 syllables, short gaps between them."""
    parts: list[np.ndarray] = []
    total = 0
    pitch = rng.uniform(95, 210)
    while total < seconds * RATE:
        word = []
        for _ in range(rng.integers(1, 5)):
            pitch = float(np.clip(pitch * rng.uniform(0.93, 1.07), 80, 260))
            word.append(syllable(rng, pitch))
        word.append(np.zeros(int(rng.uniform(0.04, 0.18) * RATE), dtype=np.float32))
        parts += word
        total += sum(part.size for part in word)
    samples = np.concatenate(parts)
    samples *= LEVEL_RMS / max(float(np.sqrt(np.mean(np.square(samples)))), 1e-9)
    return Audio(samples, RATE)


def make_store(folder: Path, count: int, seconds: float) -> list[Path]:
    """`count` distinct chunk FLACs, as the journal's content-addressed store holds them."""
    rng = np.random.default_rng(7)
    paths = []
    for index in range(count):
        path = folder / f"{index:04d}.flac"
        path.write_bytes(speech(rng, rng.uniform(0.6, 1.4) * seconds).encode("flac"))
        paths.append(path)
    return paths


def assemble(store: list[Path], out: Path, chapters: int, chunks: int) -> list[ChapterAudio]:
    done = []
    shuffle = random.Random(11)
    for number in range(chapters):
        picks = [store[(number * chunks + i) % len(store)] for i in range(chunks)]
        ends = [i % 4 == 3 for i in range(chunks)]  # a paragraph every four chunks

        def load(index: int, picks: list[Path] = picks) -> Audio:
            return Audio.decode(picks[index].read_bytes())

        order = list(range(chunks))
        shuffle.shuffle(order)
        path = out / f"{number + 1:03d}.flac"
        with ChapterAssembler(path, load, ends, seed=number) as chapter:
            for index in order:
                chapter.ready(index)
            done.append(chapter.commit())
    return done


def timed(action: object) -> tuple[float, float]:
    """Wall and CPU seconds (this process and its finished children) of `action()`."""
    wall, cpu = time.perf_counter(), _cpu()
    action()  # type: ignore[operator]
    return time.perf_counter() - wall, _cpu() - cpu


def _cpu() -> float:
    own, kids = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def main() -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hours", type=float, default=1.0)
    parser.add_argument("--chunk-seconds", type=float, default=15.0)
    parser.add_argument("--chapter-minutes", type=float, default=10.0)
    parser.add_argument("--distinct-chunks", type=int, default=40)
    parser.add_argument("--skip-mp3", action="store_true")
    args = parser.parse_args()
    chapters = max(1, round(args.hours * 60 / args.chapter_minutes))
    chunks = max(1, round(args.chapter_minutes * 60 / args.chunk_seconds))
    book = BookInfo("A Benchmark", "Nobody", language="en")
    with tempfile.TemporaryDirectory(prefix="bench-book-") as scratch:
        root = Path(scratch)
        (root / "store").mkdir()
        store = make_store(root / "store", args.distinct_chunks, args.chunk_seconds)
        rss_before_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        result: list[ChapterAudio] = []
        assembly = timed(lambda: result.extend(assemble(store, root, chapters, chunks)))
        rss_assembly_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        audio_s = sum(chapter.duration for chapter in result)
        files = [ChapterFile(f"Chapter {i + 1}", c.path) for i, c in enumerate(result)]
        m4b = timed(lambda: encode_m4b(files, root / "book.m4b", book=book))
        figures: dict[str, object] = {
            "audio_hours": round(audio_s / 3600, 3),
            "chapters": chapters,
            "chunks": chapters * chunks,
            "assembly_wall_s": round(assembly[0], 2),
            "assembly_cpu_s": round(assembly[1], 2),
            "assembly_rtf": round(audio_s / assembly[0], 1),
            "m4b_wall_s": round(m4b[0], 2),
            "m4b_cpu_s": round(m4b[1], 2),
            "m4b_rtf": round(audio_s / m4b[0], 1),
            "m4b_mb": round((root / "book.m4b").stat().st_size / 1024**2, 1),
            "flac_mb": round(sum(c.path.stat().st_size for c in result) / 1024**2, 1),
        }
        if not args.skip_mp3:

            def mp3s() -> None:
                for number, chapter in enumerate(files, 1):
                    dest = root / f"{number:03d}.mp3"
                    encode_mp3(
                        chapter.path,
                        dest,
                        book=book,
                        title=chapter.title,
                        track=number,
                        tracks=len(files),
                    )

            mp3 = timed(mp3s)
            figures |= {
                "mp3_wall_s": round(mp3[0], 2),
                "mp3_cpu_s": round(mp3[1], 2),
                "mp3_rtf": round(audio_s / mp3[0], 1),
            }
        figures |= {
            "peak_rss_mb_after_store": round(rss_before_mb, 1),
            "peak_rss_mb_after_assembly": round(rss_assembly_mb, 1),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "ffmpeg_peak_rss_mb": round(
                resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1
            ),
            "cpus": os.cpu_count(),
            "load_average_1m_after": round(os.getloadavg()[0], 2),
        }
    return figures


if __name__ == "__main__":
    print(json.dumps(main(), indent=2))
