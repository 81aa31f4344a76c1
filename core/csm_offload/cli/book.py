"""`csm-offload book`: sources in, chapters of narrated audio out (docs/book.md).

Every chunk of every selected chapter goes through one run of the router and runner, so
hundreds are in flight at once; each chapter's FLAC is written as its chunks arrive in order
and committed the moment its last one is in. The journal makes a rerun free for what is done
(a killed run resumes where it stopped) and `--redo` regenerates exactly what it names.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs
import click

from .. import scrub
from ..book import Book, read_book, read_url_groups
from ..book.assemble import check_output_dir
from ..book.finish import book_report, encode, level
from ..book.generate import generate_chapters
from ..book.metadata import Cover
from ..book.project import (
    load_book,
    load_flagged,
    load_takes,
    remove_stale_temps,
    safe_name,
    save_book,
    write_report,
)
from ..book.quality import GateSettings
from ..book.script import SECONDS_PER_CHAR
from ..book.sources import read_url_table, select_groups
from ..book.volume import Volume, auto_voice, plan_volume
from ..errors import BudgetExceeded, ProviderError, UserError
from ..manager import CloudGPUManager, http_client
from ..runner import RunResult
from ..voices import chosen_voice
from .app import App, pass_app
from .estimate import ask_health, price_rows, print_price_table
from .synth import DEFAULT_CHUNK_CHARS, ProgressBar, route_options

FORMATS = ("flac", "mp3", "m4b")
LOUDNESS_PRESETS = ("acx", "podcast", "none")


@click.command(name="book")
@click.argument("sources", nargs=-1)
@click.option("-o", "--output", default="audiobooks", show_default=True, help="Output folder.")
@click.option("--urls", type=click.Path(dir_okay=False), help="A urls.csv (url,group[,title]).")
@click.option("--groups", help="With --urls: the groups to make, comma-separated (default all).")
@click.option("--chapters", "chapter_spec", help="Chapters to make, e.g. 1-3,7 (default all).")
@click.option("--redo", multiple=True, help="Regenerate chapter N or chunk N.M (repeatable).")
@click.option(
    "--format",
    "formats",
    type=click.Choice(FORMATS),
    multiple=True,
    help="Besides one FLAC per chapter: mp3 (per chapter) and/or m4b (the book).",
)
@click.option("--speaker", type=click.IntRange(0, 1_000), default=0, show_default=True)
@click.option("--voice", help="A voice from the config's voices: section.")
@click.option("--voice-prompt", type=click.Path(dir_okay=False), help="A 3-30 s reference clip.")
@click.option("--voice-text", help="What the --voice-prompt clip says.")
@click.option(
    "--no-auto-voice",
    is_flag=True,
    help="Without a voice, do not make the first sentence every chunk's prompt.",
)
@click.option("--max-chars", type=click.IntRange(20, 100_000), default=None)
@click.option("--cloud-gpu", is_flag=True, help="Remote GPU targets only.")
@click.option("--local-audio", is_flag=True, help="Local targets only.")
@click.option("--draft", is_flag=True, help="The free draft voice (eSpeak NG).")
@click.option("--audio-only", is_flag=True, help="Reuse the text extracted before; fetch nothing.")
@click.option("--dry-run", is_flag=True, help="Chapters, chunks and prices; pay nothing.")
@click.option(
    "--loudness",
    type=click.Choice(LOUDNESS_PRESETS),
    default="acx",
    show_default=True,
    help="Level the whole book with one gain plan (docs/loudness.md).",
)
@click.option("--check-acx", is_flag=True, help="Print each chapter's ACX measurements.")
@click.option("--no-quality-gate", is_flag=True, help="Accept every chunk as it comes back.")
@click.option(
    "--max-retries",
    type=click.IntRange(0, 20),
    default=2,
    show_default=True,
    help="New takes of a chunk that fails the quality gate before it is kept, flagged.",
)
@click.option("--max-usd", type=float, default=None, help="Spend at most this much on this run.")
@click.option("--title", help="The book's title (default: from the source).")
@click.option("--author", help="The book's author (default: from the source).")
@click.option("--cover", type=click.Path(dir_okay=False), help="A JPEG or PNG cover.")
@click.option("--json", "as_json", is_flag=True, help="Print a machine-readable summary.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option(
    "--enqueue",
    is_flag=True,
    help="Plan the book here and queue it for `csm-offload worker` (docs/queue.md).",
)
@pass_app
def book_command(app: App, **opts: Any) -> None:
    """Turn SOURCES (.txt .md .epub .pdf .html files, URLs) or --urls CSV groups into
    audiobooks: one FLAC per chapter, and MP3 or M4B with --format."""
    _check_flags(opts)
    out = Path(opts["output"])
    check_output_dir(out)
    if opts["enqueue"]:
        from ..queue.enqueue import enqueue_command  # psycopg and procrastinate load only here

        enqueue_command(app, opts, lambda: _volumes(opts, out))
        return
    volumes = _volumes(opts, out)
    options = route_options(opts["cloud_gpu"], opts["local_audio"], opts["draft"])
    voice = chosen_voice(app.config, opts["voice"], opts["voice_prompt"], opts["voice_text"])
    with CloudGPUManager(
        config=app.config, plugins=app.plugins, options=options, max_usd=opts["max_usd"]
    ) as manager:
        budget = min(manager.text_limit(), opts["max_chars"] or DEFAULT_CHUNK_CHARS)
        for volume in volumes:
            plan_volume(volume, opts, budget, voice)
        auto = voice is None and not opts["no_auto_voice"]
        if opts["dry_run"]:
            if auto:  # priced in the voice an earlier run set, when there is one (free)
                auto_voice(manager, volumes, opts, budget, generate=False)
            _dry_run(manager, volumes, opts["as_json"])
            return
        for volume in volumes:
            remove_stale_temps(volume.folder)
            save_book(volume.folder, volume.book, volume.takes, volume.flagged)
        if auto:
            auto_voice(manager, volumes, opts, budget)
        result = _generate(manager, volumes, opts)
    for volume in volumes:
        acx = level(volume, opts["loudness"], opts["check_acx"])
        if acx is not None:
            click.echo(acx)
        encode(volume, opts["formats"])
    _finish(volumes, result, opts["as_json"])


class _BookBar(ProgressBar):
    """The progress bar, grown when retakes add work."""

    def grow(self, extra: int) -> None:
        self.bar.update(self.task, total=self.bar.tasks[0].total + extra)


def _generate(manager: CloudGPUManager, volumes: list[Volume], opts: dict[str, Any]) -> RunResult:
    gate = None if opts["no_quality_gate"] else GateSettings(max_retries=opts["max_retries"])
    total = len({r.id for volume in volumes for r in volume.requests})
    label = volumes[0].book.title[:40] if len(volumes) == 1 else f"{len(volumes)} books"
    with _BookBar(total, enabled=not opts["quiet"], label=label) as bar:
        result = generate_chapters(manager, volumes, gate, bar)
    for volume in volumes:
        if volume.gate_events:  # the takes that were kept, and the chunks kept flagged
            save_book(volume.folder, volume.book, volume.takes, volume.flagged)
    return result


def _check_flags(opts: dict[str, Any]) -> None:
    if opts["urls"] and opts["sources"]:
        raise UserError("give SOURCES or --urls, not both")
    if not opts["urls"] and not opts["sources"] and not opts["audio_only"]:
        raise UserError("give the book's sources (files or URLs), or --urls urls.csv")
    if opts["groups"] and not opts["urls"]:
        raise UserError("--groups picks groups of a --urls CSV; give --urls too")
    if opts["max_usd"] is not None and not opts["max_usd"] > 0:
        raise UserError(f"--max-usd must be above 0, got {opts['max_usd']}")


def _volumes(opts: dict[str, Any], out: Path) -> list[Volume]:
    """The books of this run, read from their sources (or, with --audio-only, from the text
    an earlier run extracted)."""
    groups = [g for g in (opts["groups"] or "").split(",") if g.strip()] or None
    if opts["urls"]:
        csv_path = Path(opts["urls"])
        if opts["audio_only"]:
            names = select_groups(read_url_table(csv_path), groups, str(csv_path))
            return [_volume(out / safe_name(g), load_book(out / safe_name(g))) for g in names]
        books = asyncio.run(_read_groups(csv_path, groups))
        return [_volume(out / safe_name(b.title), b) for b in books]
    book = load_book(out) if opts["audio_only"] else asyncio.run(_read(opts["sources"]))
    book = _overridden(book, opts)
    return [_volume(out, book)]


async def _read(sources: Sequence[str]) -> Book:
    async with http_client() as http:
        return await read_book(sources, http)


async def _read_groups(csv_path: Path, groups: list[str] | None) -> tuple[Book, ...]:
    async with http_client() as http:
        return await read_url_groups(csv_path, groups, http)


def _overridden(book: Book, opts: dict[str, Any]) -> Book:
    changes: dict[str, Any] = {}
    if opts["title"]:
        changes["title"] = opts["title"]
    if opts["author"]:
        changes["author"] = opts["author"]
    if opts["cover"]:
        cover = Cover.from_file(Path(opts["cover"]))
        changes.update(cover=cover.data, cover_mime=cover.mime)
    return attrs.evolve(book, **changes)


def _volume(folder: Path, book: Book) -> Volume:
    if not book.chapters:
        reasons = "; ".join(f"{s.source}: {s.reason}" for s in book.skipped) or "no text found"
        raise UserError(f"{book.title}: nothing to narrate ({scrub.scrub(reasons)})")
    check_output_dir(folder)
    return Volume(folder, book, takes=load_takes(folder), flagged=load_flagged(folder))


# --- dry run ---------------------------------------------------------------------------------


def _dry_run(manager: CloudGPUManager, volumes: list[Volume], as_json: bool) -> None:
    requests = [r for volume in volumes for r in volume.requests]
    unique = list({r.id: r for r in requests}.values())
    asyncio.run(ask_health(manager))
    prices = price_rows(manager, unique)
    done = _paid(manager, unique)
    summary = {"books": [_dry_book(v, done) for v in volumes], "targets": prices}
    if as_json:
        click.echo(json.dumps(scrub.scrub_data(summary), indent=2))
        return
    for book in summary["books"]:
        click.echo(f"{book['title']}: {len(book['chapters'])} chapters → {book['folder']}")
        for chapter in book["chapters"]:
            click.echo(
                f"  {chapter['number']:>3}  {chapter['title'][:50]:<50} {chapter['chunks']:>5} "
                f"chunks {chapter['characters']:>8} chars  ~{_clock(chapter['audio_s'])}"
                + (f"  ({chapter['paid']} already made)" if chapter["paid"] else "")
            )
    characters = sum(len(r.text) for r in unique)
    print_price_table(prices, f"{len(unique)} chunks, {characters} characters (dry run)")
    click.echo("dry run: nothing was sent and nothing was written")


def _paid(manager: CloudGPUManager, unique: list[Any]) -> set[str]:
    """Chunks the journal already holds for the quality the plan would use (none when there
    is no journal yet: a dry run never creates one)."""
    journal = manager.existing_journal()
    if journal is None:
        return set()
    quality = manager.plan(unique[:1]).quality
    return set(journal.cached([r.id for r in unique], quality))


def _dry_book(volume: Volume, paid: set[str]) -> dict[str, Any]:
    return {
        "title": volume.book.title,
        "folder": str(volume.folder),
        "skipped": [{"source": s.source, "reason": s.reason} for s in volume.book.skipped],
        "chapters": [
            {
                "number": c.number,
                "title": c.title,
                "chunks": len(c.chunks),
                "characters": c.characters,
                "audio_s": round(c.characters * SECONDS_PER_CHAR, 1),
                "paid": sum(chunk.request.id in paid for chunk in c.chunks),
            }
            for c in volume.script
        ],
    }


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


# --- the summary ------------------------------------------------------------------------------


def _finish(volumes: list[Volume], result: RunResult, as_json: bool) -> None:
    reports = [book_report(volume) for volume in volumes]
    for volume, report in zip(volumes, reports, strict=True):
        write_report(volume.folder, report)
    summary = scrub.scrub_data({"books": reports, "cost_usd": round(result.cost_usd, 6)})
    if as_json:
        click.echo(json.dumps(summary, indent=2))
    else:
        for report in reports:
            _print(report)
        made_by = ", ".join(f"{name} ({n} chunks)" for name, n in _made_by(result).items())
        click.echo(
            f"made by {made_by or 'nothing new'} ({result.plan.quality} quality); "
            f"${result.cost_usd:.4f} spent"
        )
        for line in result.plan.explain():
            click.echo(scrub.scrub(line))
    _exit_code(volumes, result)


def _made_by(result: RunResult) -> dict[str, int]:
    found: dict[str, int] = {}
    for outcome in result.outcomes.values():
        if outcome.ok and outcome.target:
            found[outcome.target] = found.get(outcome.target, 0) + 1
    return found


def _print(report: dict[str, Any]) -> None:
    made = [c for c in report["chapters"] if c["file"]]
    click.echo(
        f"{report['title']}: {len(made)} of {len(report['chapters'])} chapters in "
        f"{report['folder']}/chapters"
    )
    for output in report["outputs"]:
        click.echo(f"  wrote {output}")
    for note in report["notes"]:
        click.echo(f"  {note}")
    quality = report["quality"]
    if quality["regenerated"] or quality["flagged"]:
        click.echo(
            f"  quality gate: {len(quality['regenerated'])} takes regenerated "
            f"(${quality['regeneration_usd']:.4f}), {len(quality['flagged'])} chunks kept flagged"
        )
        for flagged in quality["flagged"]:
            reasons = "; ".join(flagged["reasons"])
            click.echo(f"    flagged chunk {flagged['chunk']}: {reasons}")
    for skipped in report["skipped"]:
        click.echo(scrub.scrub(f"  skipped {skipped['source']}: {skipped['reason']}"), err=True)


def _exit_code(volumes: list[Volume], result: RunResult) -> None:
    if result.budget_stopped:
        raise BudgetExceeded(
            f"stopped by the budget (${result.cost_usd:.4f} spent); finished chapters are "
            "written, the rest is kept in the journal: rerun with a higher --max-usd"
        )
    if not result.ok:
        first = result.failed()[0]
        raise ProviderError(
            f"{len(result.failed())} chunks failed (first: {first.error}); finished chapters "
            f"are written, rerun to finish the rest\n{result.summary()}"
        )
    skipped = sum(len(v.book.skipped) for v in volumes)
    if skipped:
        raise UserError(f"the book was built, but {skipped} sources were skipped (see above)")
