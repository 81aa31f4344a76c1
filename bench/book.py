"""Benchmark of `csm-offload book` end to end on an instant provider: prints one JSON object
(never asserted in tests).

    .venv/bin/python bench/book.py                    # a 1-hour and a 10-hour book
    .venv/bin/python bench/book.py --hours 1 --keep /tmp/book-bench
    .venv/bin/python bench/book.py --overlap          # assemble during generation

A generated Markdown book (seeded: about 54,000 characters and 6 chapters per hour of audio,
sentences of varied length in paragraphs, with numbers for the speech normaliser) goes through
the stages of the command, each timed on its own (wall and CPU seconds):

- extract: `read_book` on the Markdown file;
- chunk: `build_script` at the command's default budget (300 characters);
- generate: every chunk through `CloudGPUManager.synthesize` (router, runner, journal) on an
  in-process provider that answers each job at once with distinct speech-like FLAC audio, 0.07 s
  per character at 24 kHz (`bench/_instant_provider.py`; the CPU it spends making that audio is
  reported as `provider_cpu_s`);
- assemble: every chapter through `ChapterAssembler`, all chapters open at once and their
  chunks announced in the order the runner finished them, each loaded from the journal's store,
  as the command does. The command overlaps this with generation; here it runs afterwards, so
  that it is timed alone (`--overlap` runs both as the command does, as one stage);
- encode: the whole book through `encode_m4b`.

Each book size runs in its own child process (this script with `--child`), so that peak RSS
(`ru_maxrss`, a process-lifetime figure) is that size's alone; ffmpeg's peak is reported apart
(its `VmHWM`, sampled from /proc while it runs).
Real-time factor = seconds of audio / wall seconds of the stage.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import random
import re
import resource
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

from _instant_provider import KIND, InstantProvider

from csm_offload.book import Book, read_book
from csm_offload.book.assemble import ChapterAssembler, ChapterAudio
from csm_offload.book.encode import ChapterFile, encode_m4b
from csm_offload.book.metadata import BookInfo
from csm_offload.book.project import chapter_stem
from csm_offload.book.script import ScriptChapter, build_script
from csm_offload.cli.synth import DEFAULT_CHUNK_CHARS
from csm_offload.config import load_config_text
from csm_offload.journal import Journal
from csm_offload.manager import CloudGPUManager
from csm_offload.plugins import Plugins

T = TypeVar("T")

CHARS_PER_HOUR = 54_000
CHAPTERS_PER_HOUR = 6
CONFIG = f"providers:\n  instant:\n    kind: {KIND}\n"
#: The issue's goals: peak RSS flat in book length and small; assembly and encoding fast.
RSS_FLAT_RATIO = 1.2
RSS_LIMIT_MB = 300.0
MIN_REAL_TIME = 100.0

# --- the book's text --------------------------------------------------------------------------

_WORD_LIST = (
    "the a and of to in that it was he she they we his her their with for on at by from as "
    "but not all one had were which when there been would could into only over after before "
    "light harbour keeper ledger storm morning evening tide rope lantern window door letter "
    "river stone field road village market bell winter summer autumn spring coat boots table "
    "candle ship captain sailor fisherman widow child mother father brother sister stranger "
    "quiet slowly again already almost never always perhaps certainly suddenly carefully "
    "walked turned looked listened waited remembered wondered answered carried opened closed "
    "found lost kept counted wrote read followed climbed watched promised believed noticed "
    "old young cold grey narrow heavy bright silent distant familiar strange small long "
    "beneath across beyond between toward against without under through along"
)
WORDS = tuple(_WORD_LIST.split())
NAMES = ("Mara", "Elias", "Tobin", "Agnes", "Wren", "Halvard", "Ines", "Corwin", "Bryony")
PLACES = ("Kettle Point", "Saltmarsh", "the Narrows", "Abbot's Reach", "Ferry Lane", "Dunmore")
THINGS = ("ships", "miles", "letters", "days", "lanterns", "barrels", "steps", "pounds", "nights")
MONTHS = ("January", "March", "May", "July", "September", "November")
ADJECTIVES = ("Long", "Quiet", "Broken", "Last", "Northern", "Hidden", "Second", "Drowned")
NOUNS = ("Tide", "Ledger", "Lantern", "Crossing", "Winter", "Signal", "Harbour", "Promise")


def number_phrase(rng: random.Random) -> str:
    """A phrase with a number in it, of a kind the speech normaliser reads aloud."""
    kinds: list[Callable[[], str]] = [
        lambda: f"in {rng.randint(1790, 2024)}",
        lambda: f"{rng.randint(2, 480)} {rng.choice(THINGS)}",
        lambda: f"{rng.randint(1, 9)}.{rng.randint(1, 9)} miles",
        lambda: f"{rng.randint(2, 98)}%",
        lambda: f"${rng.randint(2, 900)}",
        lambda: f"at {rng.randint(1, 12)}:{rng.choice(('00', '15', '30', '45'))}",
        lambda: f"on {rng.choice(MONTHS)} {rng.randint(1, 28)}",
        lambda: f"number {rng.randint(1, 9999):,}",
    ]
    return rng.choice(kinds)()


def sentence_length(rng: random.Random) -> int:
    """Words in a sentence: a quarter short, half medium, a quarter long."""
    roll = rng.random()
    if roll < 0.25:
        return rng.randint(3, 7)
    return rng.randint(8, 18) if roll < 0.75 else rng.randint(19, 42)


def sentence(rng: random.Random) -> str:
    words: list[str] = []
    for _ in range(sentence_length(rng)):
        roll = rng.random()
        if roll < 0.05:
            words.append(rng.choice(NAMES))
        elif roll < 0.07:
            words.append(rng.choice(PLACES))
        elif roll < 0.09:
            words.append(number_phrase(rng))
        elif roll < 0.1:
            words.append(f"*{rng.choice(WORDS)}*")
        else:
            words.append(rng.choice(WORDS))
        if len(words) > 4 and rng.random() < 0.12:
            words[-1] += rng.choice((",", ",", ";", " —"))
    text = " ".join(words).rstrip(",; —")
    text = text[0].upper() + text[1:] + rng.choice((".", ".", ".", ".", "?", "!"))
    if rng.random() < 0.15:
        return f"“{text}” said {rng.choice(NAMES)}."
    return text


def paragraph(rng: random.Random) -> str:
    return " ".join(sentence(rng) for _ in range(rng.randint(1, 7)))


def chapter_markdown(rng: random.Random, number: int, chars: int) -> str:
    title = f"The {rng.choice(ADJECTIVES)} {rng.choice(NOUNS)}"
    parts = [f"# Chapter {number}: {title}"]
    size = 0
    while size < chars:
        parts.append(paragraph(rng))
        size += len(parts[-1])
    return "\n\n".join(parts)


def book_markdown(hours: float, seed: int = 1) -> str:
    """A Markdown book of about `hours` hours of narration, the same for the same arguments."""
    rng = random.Random(seed)
    chapters = max(1, round(hours * CHAPTERS_PER_HOUR))
    weights = [rng.uniform(0.7, 1.3) for _ in range(chapters)]
    total = hours * CHARS_PER_HOUR
    front = "---\ntitle: The Lighthouse Ledger\nauthor: A. Benchmark\nlang: en\n---"
    body = [
        chapter_markdown(rng, number, round(total * weight / sum(weights)))
        for number, weight in enumerate(weights, start=1)
    ]
    return "\n\n".join([front, *body]) + "\n"


# --- measuring --------------------------------------------------------------------------------


def cpu_seconds() -> float:
    """CPU seconds of this process and its finished children (ffmpeg)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def current_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return -1.0


def child_pids() -> set[int]:
    """The processes this one started and has not reaped yet."""
    pids: set[int] = set()
    for children in Path("/proc/self/task").glob("*/children"):
        with contextlib.suppress(OSError):
            pids.update(int(pid) for pid in children.read_text().split())
    return pids


def high_water_mb(pid: int) -> float | None:
    """A process's peak RSS so far (`VmHWM`), once it runs ffmpeg; None before its exec."""
    try:
        if not Path(f"/proc/{pid}/comm").read_text().startswith("ffmpeg"):
            return None
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    found = re.search(r"^VmHWM:\s+(\d+) kB", status, re.M)
    return int(found.group(1)) / 1024 if found else None


class ChildPeak:
    """Samples the peak RSS of the ffmpeg processes this one runs, every `interval` seconds.
    (`RUSAGE_CHILDREN`'s `ru_maxrss` cannot tell it: Linux counts a child's RSS from before its
    exec, which is this process's own size at the fork.)"""

    def __init__(self, interval: float = 0.05) -> None:
        self.interval = interval
        self.peak_mb = 0.0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self) -> ChildPeak:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _watch(self) -> None:
        while not self._stop.wait(self.interval):
            for pid in child_pids():
                found = high_water_mb(pid)
                if found is not None:
                    self.samples += 1
                    self.peak_mb = max(self.peak_mb, found)


class Stages:
    """Runs the stages one after another and keeps each one's figures."""

    def __init__(self) -> None:
        self.figures: dict[str, dict[str, float]] = {}

    def run(self, name: str, action: Callable[[], T]) -> T:
        wall, cpu = time.perf_counter(), cpu_seconds()
        value = action()
        self.figures[name] = {
            "wall_s": round(time.perf_counter() - wall, 3),
            "cpu_s": round(cpu_seconds() - cpu, 3),
            "peak_rss_mb_after": peak_rss_mb(),
            "rss_mb_after": current_rss_mb(),
        }
        return value


# --- the stages -------------------------------------------------------------------------------


def extract(path: Path) -> Book:
    return asyncio.run(read_book([str(path)]))


def chunk(book: Book, budget: int) -> list[ScriptChapter]:
    return build_script(book, budget, 0, range(1, len(book.chapters) + 1), {})


class Assembly:
    """Every chapter of the script, all open at once, fed chunk by chunk in the order the
    runner finished them, each chunk loaded from the journal's store: what `csm-offload book`
    does with the runner's progress events."""

    def __init__(
        self, journal: Journal, quality: str, script: Sequence[ScriptChapter], folder: Path
    ) -> None:
        self.journal = journal
        self.quality = quality
        self.assemblers = [self._open(chapter, folder) for chapter in script]
        self.where: dict[str, list[tuple[int, int]]] = {}
        for position, chapter in enumerate(script):
            for index, piece in enumerate(chapter.chunks):
                self.where.setdefault(piece.request.id, []).append((position, index))
        self.done: dict[int, ChapterAudio] = {}

    def _open(self, chapter: ScriptChapter, folder: Path) -> ChapterAssembler:
        ids = [piece.request.id for piece in chapter.chunks]

        def load(index: int) -> Any:
            stored = self.journal.cached([ids[index]], self.quality)[ids[index]]
            return self.journal.load_audio(stored)

        path = folder / "chapters" / f"{chapter_stem(chapter.number, chapter.title)}.flac"
        ends = [piece.ends_paragraph for piece in chapter.chunks]
        return ChapterAssembler(path, load, ends, seed=chapter.number)

    def feed(self, request_id: str) -> None:
        for position, index in self.where.get(request_id, []):
            assembler = self.assemblers[position]
            assembler.ready(index)
            if assembler.complete:
                self.done[position] = assembler.commit()

    def feed_all(self, order: Sequence[str]) -> list[ChapterAudio]:
        for request_id in order:
            self.feed(request_id)
        return self.chapters()

    def chapters(self) -> list[ChapterAudio]:
        return [self.done[position] for position in range(len(self.assemblers))]

    def close(self) -> None:
        for assembler in self.assemblers:
            assembler.abort()  # a no-op for the committed ones


def generate(
    manager: CloudGPUManager,
    script: Sequence[ScriptChapter],
    assembly: Assembly | None = None,
) -> list[str]:
    """Every chunk through the runner, fed to `assembly` as it is ready when one is given (as
    the command does); returns the order in which the chunks became ready."""
    requests = [piece.request for chapter in script for piece in chapter.chunks]
    order: list[str] = []

    def progress(event: Any) -> None:
        if event.event in ("completed", "cached") and event.request_id is not None:
            order.append(event.request_id)
            if assembly is not None:
                assembly.feed(event.request_id)

    result = asyncio.run(manager.synthesize(requests, progress=progress))
    if not result.ok:
        raise RuntimeError(f"generation failed: {result.summary()}")
    return order


def encode(book: Book, chapters: Sequence[ChapterAudio], titles: Sequence[str], dest: Path) -> int:
    info = BookInfo(title=book.title, author=book.author or "Unknown", language=book.language)
    files = [ChapterFile(title, c.path) for title, c in zip(titles, chapters, strict=True)]
    return len(encode_m4b(files, dest, book=info))


# --- one book size (the child process) --------------------------------------------------------


def size_mb(paths: Sequence[Path]) -> float:
    return round(sum(p.stat().st_size for p in paths if p.is_file()) / 1024**2, 1)


def make_manager(folder: Path, provider: InstantProvider) -> CloudGPUManager:
    plugins = Plugins()
    if not plugins.register(provider, KIND):
        raise RuntimeError(f"the instant provider did not load: {plugins.errors}")
    config = load_config_text(CONFIG, "bench.yaml", {})
    return CloudGPUManager(config=config, plugins=plugins, journal=folder / "journal.sqlite3")


def make_audio(
    stages: Stages,
    manager: CloudGPUManager,
    script: Sequence[ScriptChapter],
    folder: Path,
    overlap: bool,
) -> list[ChapterAudio]:
    """The chapters' FLACs: generated, then assembled (two stages), or with `overlap` both at
    once as the command runs them (one stage)."""
    quality = manager.plan([script[0].chunks[0].request]).quality

    def both() -> list[ChapterAudio]:
        assembly = Assembly(manager.journal, quality, script, folder)
        try:
            generate(manager, script, assembly)
            return assembly.chapters()
        finally:
            assembly.close()

    def after(order: Sequence[str]) -> list[ChapterAudio]:
        assembly = Assembly(manager.journal, quality, script, folder)
        try:
            return assembly.feed_all(order)
        finally:
            assembly.close()

    if overlap:
        return stages.run("generate_assemble", both)
    order = stages.run("generate", lambda: generate(manager, script))
    return stages.run("assemble", lambda: after(order))


def run_size(hours: float, folder: Path, overlap: bool) -> dict[str, Any]:
    source = folder / "book.md"
    source.write_text(book_markdown(hours), encoding="utf-8")
    provider = InstantProvider()
    stages = Stages()
    setup_peak = peak_rss_mb()
    with make_manager(folder, provider) as manager:
        book = stages.run("extract", lambda: extract(source))
        budget = min(manager.text_limit(), DEFAULT_CHUNK_CHARS)
        script = stages.run("chunk", lambda: chunk(book, budget))
        chapters = make_audio(stages, manager, script, folder, overlap)
    titles = [chapter.title for chapter in script]
    m4b = folder / f"{folder.name}.m4b"
    with ChildPeak() as ffmpeg:
        marks = stages.run("encode", lambda: encode(book, chapters, titles, m4b))
    figures = summarise(source, script, chapters, stages, provider, m4b, marks)
    return {
        "hours_asked": hours,
        "overlap": overlap,
        **figures,
        "peak_rss_mb_after_setup": setup_peak,
        "peak_rss_mb": peak_rss_mb(),
        "ffmpeg_peak_rss_mb": round(ffmpeg.peak_mb, 1),
        "ffmpeg_rss_samples": ffmpeg.samples,
    }


def summarise(
    source: Path,
    script: Sequence[ScriptChapter],
    chapters: Sequence[ChapterAudio],
    stages: Stages,
    provider: InstantProvider,
    m4b: Path,
    marks: int,
) -> dict[str, Any]:
    audio_s = sum(c.duration for c in chapters)
    chunks = [c for chapter in script for c in chapter.chunks]
    figures = stages.figures
    alone = "assemble" in figures
    generating = figures["generate" if alone else "generate_assemble"]
    store = list((source.parent / "audio").rglob("*.flac"))
    return {
        "audio_hours": round(audio_s / 3600, 3),
        "markdown_chars": len(source.read_text(encoding="utf-8")),
        "spoken_chars": sum(len(c.request.text) for c in chunks),
        "chapters": len(script),
        "chunks": len(chunks),
        "mean_chunk_chars": round(sum(len(c.request.text) for c in chunks) / len(chunks), 1),
        "jobs": provider.jobs,
        "stages": figures,
        "total_wall_s": round(sum(f["wall_s"] for f in figures.values()), 2),
        "provider_cpu_s": round(provider.cpu_s, 2),
        "generate_chunks_per_s": round(len(chunks) / generating["wall_s"], 1),
        "assemble_rtf": round(audio_s / figures["assemble"]["wall_s"], 1) if alone else None,
        "encode_rtf": round(audio_s / figures["encode"]["wall_s"], 1),
        "m4b_chapter_marks": marks,
        "m4b_mb": size_mb([m4b]),
        "chapter_flac_mb": size_mb([c.path for c in chapters]),
        "journal_store_mb": size_mb(store),
    }


# --- the parent: one child per size, then the goals -------------------------------------------


@contextlib.contextmanager
def work_folder(keep: Path | None, hours: float) -> Iterator[Path]:
    if keep is None:
        with tempfile.TemporaryDirectory(prefix="bench-book-") as scratch:
            folder = Path(scratch) / f"book-{hours:g}h"
            folder.mkdir()
            yield folder
        return
    folder = keep / f"book-{hours:g}h"
    if folder.exists() and any(folder.iterdir()):
        raise SystemExit(f"{folder} is not empty (its journal would make a rerun free)")
    folder.mkdir(parents=True, exist_ok=True)
    yield folder


def run_child(hours: float, folder: Path, overlap: bool) -> dict[str, Any]:
    command = [sys.executable, __file__, "--child", f"{hours:g}", "--folder", str(folder)]
    command += ["--overlap"] if overlap else []
    done = subprocess.run(command, stdout=subprocess.PIPE, check=True, text=True)
    figures: dict[str, Any] = json.loads(done.stdout)
    return figures


def goals(sizes: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The issue's goals, checked (reported, not asserted)."""
    peaks = [size["peak_rss_mb"] for size in sizes.values()]
    ratio = round(peaks[-1] / peaks[0], 3) if len(peaks) > 1 else None
    return {
        "rss_ratio_longest_to_shortest": ratio,
        "rss_flat_le_1_2x": None if ratio is None else ratio <= RSS_FLAT_RATIO,
        "peak_rss_le_300mb": max(peaks) <= RSS_LIMIT_MB,
        "ffmpeg_peak_rss_le_300mb": all(
            size["ffmpeg_peak_rss_mb"] <= RSS_LIMIT_MB for size in sizes.values()
        ),
        "assemble_ge_100x_real_time": None
        if any(size["assemble_rtf"] is None for size in sizes.values())
        else all(size["assemble_rtf"] >= MIN_REAL_TIME for size in sizes.values()),
        "encode_ge_100x_real_time": all(
            size["encode_rtf"] >= MIN_REAL_TIME for size in sizes.values()
        ),
    }


def machine(load_before: float) -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "load_average_1m_before": round(load_before, 2),
        "load_average_1m_after": round(os.getloadavg()[0], 2),
    }


def parse_hours(text: str) -> list[float]:
    hours = sorted(float(part) for part in text.split(",") if part.strip())
    if not hours or min(hours) <= 0:
        raise SystemExit(f"--hours {text!r}: give positive numbers of hours, e.g. 1,10")
    return hours


def main() -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--hours", default="1,10", help="book sizes in hours, comma-separated")
    parser.add_argument("--keep", type=Path, help="keep each book's files under this folder")
    parser.add_argument(
        "--overlap",
        action="store_true",
        help="assemble while generating, as the command does (one stage, no assembly RTF)",
    )
    parser.add_argument("--child", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        return run_size(args.child, args.folder, args.overlap)
    load_before = os.getloadavg()[0]
    sizes: dict[str, dict[str, Any]] = {}
    for hours in parse_hours(args.hours):
        with work_folder(args.keep, hours) as folder:
            sizes[f"{hours:g}h"] = run_child(hours, folder, args.overlap)
    return {"sizes": sizes, "goals": goals(sizes), "machine": machine(load_before)}


if __name__ == "__main__":
    print(json.dumps(main(), indent=2))
