"""What the queue's tasks do, synchronously (they run in a worker thread): set a book's voice,
make one chapter, finish a book. Each goes through the same code as `csm-offload book`
(csm_offload.book.volume, .generate, .finish), so a queued book comes out byte for byte as a
single run makes it.

A chapter records what the finishing step needs in its row (`made`): the takes it kept, the
chunks it kept flagged, the gate's events, its chunks' timings (the book's subtitles), the
requests it was made of and the digest of its unlevelled FLAC. Levelling changes chapters in
place; a finishing step that died half-way is retried, finds a digest that differs, and
rebuilds that chapter from the journal first, so the book is levelled once, from the same
audio.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import attrs
import click

from ..book.finish import book_report, encode, level
from ..book.generate import chapter_path, file_digest, generate_chapters, rebuild_chapter
from ..book.project import (
    load_book,
    load_flagged,
    load_takes,
    remove_stale_temps,
    save_book,
    write_report,
)
from ..book.quality import GateEvent, GateSettings
from ..book.subtitles import ChapterTiming, ChunkTiming
from ..book.volume import Volume, first_chunk_voice, plan_volume
from ..cli.synth import route_options
from ..config import Config
from ..errors import CsmOffloadError
from ..manager import CloudGPUManager
from ..metrics import NULL, Metrics
from ..plugins import Plugins
from ..runner import Progress
from ..voices import Voice, chosen_voice
from .options import BookOptions
from .state import BookRow


@attrs.frozen
class WorkerContext:
    """What every task of one worker process shares."""

    config: Config
    plugins: Plugins
    dsn: str
    name: str
    quiet: bool = False
    #: One for the process: a manager per chapter must not each serve run.metrics_port.
    metrics: Metrics = NULL


class ChapterFailed(CsmOffloadError):
    """A chapter that cannot be made now (budget, every target failed): the reason is shown
    by `csm-offload queue`; the worker goes on with other work."""


def _manager(ctx: WorkerContext, options: BookOptions, max_usd: float | None) -> CloudGPUManager:
    routes = route_options(options.cloud_gpu, options.local_audio, options.draft)
    return CloudGPUManager(
        config=ctx.config,
        plugins=ctx.plugins,
        options=routes,
        max_usd=max_usd,
        metrics=ctx.metrics,  # the process's one Metrics (and its one server), never a new one
    )


def _volume(folder: Path) -> Volume:
    return Volume(folder, load_book(folder), takes=load_takes(folder), flagged=load_flagged(folder))


def book_voice(
    ctx: WorkerContext, manager: CloudGPUManager, book: BookRow
) -> tuple[Voice | None, str | None]:
    """The voice of every chunk and the key of the chunk left plain (the auto-voice's own
    sentence, in the book whose first chunk it is); generated once if the journal lacks it."""
    options = book.options
    voice = chosen_voice(ctx.config, options.voice, options.voice_prompt, options.voice_text)
    if voice is not None or options.no_auto_voice or options.voice_folder is None:
        return voice, None
    lead = _volume(Path(options.voice_folder))
    spec = {**options.as_opts(), "chapter_spec": str(options.voice_chapter)}
    plan_volume(lead, spec, options.budget, None)
    found = first_chunk_voice(manager, lead, generate=True)
    if found is None:
        return None, None
    key, voice = found
    return voice, key if Path(options.voice_folder) == Path(book.folder) else None


def prepare_voice(ctx: WorkerContext, book: BookRow) -> None:
    """Decide the book's voice before any chapter runs (chapters run in parallel, all in it)."""
    with _manager(ctx, book.options, book.options.max_usd) as manager:
        book_voice(ctx, manager, book)


class _Log:
    """A chapter's progress as a line on stderr every few seconds (workers have no terminal)."""

    def __init__(self, label: str, total: int, quiet: bool) -> None:
        self.label, self.total, self.quiet = label, total, quiet
        self.note = ""
        self._last = 0.0

    def __call__(self, event: Progress) -> None:
        now = time.monotonic()
        if self.quiet or now - self._last < 5.0:
            return
        self._last = now
        click.echo(
            f"{self.label}: {event.done}/{self.total} chunks, ${event.cost_usd:.4f}", err=True
        )

    def grow(self, extra: int) -> None:
        self.total += extra


def make_chapter(
    ctx: WorkerContext, book: BookRow, number: int, max_usd: float | None
) -> tuple[dict[str, Any], float]:
    """Chapter `number` of `book` generated and assembled; returns what the finishing step
    needs (see the module's docstring) and what the chapter cost (journal prices)."""
    options = book.options
    with _manager(ctx, options, max_usd) as manager:
        voice, plain = book_voice(ctx, manager, book)
        volume = _volume(Path(book.folder))
        plan_volume(volume, options.as_opts([number]), options.budget, voice, plain)
        gate = None if options.no_quality_gate else GateSettings(max_retries=options.max_retries)
        label = f"book {book.id} chapter {number}"
        watch = _Log(label, len(volume.requests), ctx.quiet)
        result = generate_chapters(manager, [volume], gate, watch)
        if result.budget_stopped:
            raise ChapterFailed(f"stopped by the budget (${result.cost_usd:.4f} spent)")
        if not result.ok:
            first = result.failed()[0]
            raise ChapterFailed(
                f"{len(result.failed())} chunks failed (first: {first.error}); {result.summary()}"
            )
        made = _made(volume, number, result.plan.quality)
        journal = manager.journal
        cost = sum(journal.request_cost(rid) for rid in made["ids"])
        cost += sum(e.cost_usd for e in volume.gate_events if not e.kept)
    return made, cost


def _made(volume: Volume, number: int, quality: str) -> dict[str, Any]:
    path = volume.chapters_written[number]
    timing = volume.timings[number]
    prefix = f"{number}."
    return {
        "file": str(path),
        "sha256": file_digest(path),
        "quality": quality,
        "ids": volume.chunk_ids[number],
        "from_journal": volume.from_journal.get(number, 0),
        "duration_s": timing.duration_s,
        "chunks": [[c.start_s, c.end_s, c.text] for c in timing.chunks],
        "takes": {k: v for k, v in volume.takes.items() if k.startswith(prefix)},
        "flagged": {k: v for k, v in volume.flagged.items() if k.startswith(prefix)},
        "gate_events": [attrs.asdict(e) for e in volume.gate_events],
    }


def finish_book(ctx: WorkerContext, book: BookRow, made: dict[int, dict[str, Any]]) -> list[str]:
    """Level every chapter with one gain plan, encode, write the subtitles and report.json, as
    `csm-offload book` does once its chapters are in; returns the files written."""
    options = book.options
    # Every chapter is made and this is the book's one finishing job: what temporary files
    # are left belong to workers that died (on any machine).
    remove_stale_temps(Path(book.folder), every=True)
    volume = _volume(Path(book.folder))
    plan_volume(volume, options.as_opts(), options.budget, None)  # the chapters' layout only
    with _manager(ctx, options, None) as manager:
        for chapter in volume.script:
            record = made[chapter.number]
            path = chapter_path(volume, chapter)
            if not path.is_file() or file_digest(path) != record["sha256"]:
                rebuild_chapter(manager.journal, record["quality"], path, record["ids"], chapter)
            _restore(volume, chapter.number, path, record)
    if volume.gate_events:  # the takes that were kept, and the chunks kept flagged
        save_book(volume.folder, volume.book, volume.takes, volume.flagged)
    checks = level(volume, options.loudness, options.check_acx)
    if checks is not None and not ctx.quiet:
        click.echo(checks, err=True)
    encode(volume, options.formats)
    write_report(volume.folder, book_report(volume))
    return list(volume.outputs)


def _restore(volume: Volume, number: int, path: Path, record: dict[str, Any]) -> None:
    """A chapter's record back on the volume, as if this process had made it."""
    volume.chapters_written[number] = path
    chunks = [ChunkTiming(float(a), float(b), str(t)) for a, b, t in record["chunks"]]
    volume.timings[number] = ChapterTiming(0.0, float(record["duration_s"]), chunks)
    volume.from_journal[number] = int(record["from_journal"])
    volume.takes.update(record["takes"])
    volume.flagged.update(record["flagged"])
    for event in record["gate_events"]:
        volume.gate_events.append(GateEvent(**{**event, "reasons": tuple(event["reasons"])}))
