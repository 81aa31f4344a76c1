"""`csm-offload book`: sources in, chapters of narrated audio out (docs/book.md).

Every chunk of every selected chapter goes through one run of the router and runner, so
hundreds are in flight at once; each chapter's FLAC is written as its chunks arrive in order
and committed the moment its last one is in. The journal makes a rerun free for what is done
(a killed run resumes where it stopped) and `--redo` regenerates exactly what it names.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs
import click

from .. import scrub
from ..audio import Audio
from ..book import Book, loudness, read_book, read_url_groups, subtitles
from ..book.assemble import ChapterAssembler, check_output_dir
from ..book.encode import ChapterFile, encode_m4b, encode_mp3
from ..book.metadata import BookInfo, Cover
from ..book.project import (
    chapter_stem,
    load_book,
    load_flagged,
    load_takes,
    remove_stale_temps,
    safe_name,
    save_book,
    write_report,
)
from ..book.quality import GateEvent, GateSettings, VoicePace, check_chunk, quality_report
from ..book.script import (
    SECONDS_PER_CHAR,
    ScriptChapter,
    apply_redo,
    build_script,
    parse_chapters,
    parse_redo,
)
from ..book.sources import read_url_table, select_groups
from ..book.subtitles import ChapterTiming, ChunkTiming
from ..errors import BudgetExceeded, ProviderError, UserError
from ..journal import Journal
from ..manager import CloudGPUManager, http_client
from ..model import SpeechRequest
from ..output import write_bytes_atomic
from ..runner import Progress, RunResult
from ..voices import Voice, chosen_voice, voice_from_result
from .app import App, pass_app
from .estimate import ask_health, price_rows, print_price_table
from .synth import DEFAULT_CHUNK_CHARS, ProgressBar, route_options

FORMATS = ("flac", "mp3", "m4b")
LOUDNESS_PRESETS = ("acx", "podcast", "none")


@attrs.define
class Volume:
    """One book of this run: where it goes, what it says, what this run makes of it."""

    folder: Path
    book: Book
    script: list[ScriptChapter] = attrs.field(factory=list)
    takes: dict[str, int] = attrs.field(factory=dict)
    #: Chunks kept after failing the gate (this run or an earlier one), with the reasons.
    flagged: dict[str, list[str]] = attrs.field(factory=dict)
    redone: list[str] = attrs.field(factory=list)
    chapters_written: dict[int, Path] = attrs.field(factory=dict)
    outputs: list[str] = attrs.field(factory=list)
    notes: list[str] = attrs.field(factory=list)
    #: Each chapter made by this run: its length and its chunks' places in it (subtitles).
    timings: dict[int, ChapterTiming] = attrs.field(factory=dict)
    gate_events: list[GateEvent] = attrs.field(factory=list)
    loudness: dict[str, Any] | None = None
    acx: list[dict[str, Any]] | None = None

    @property
    def requests(self) -> list[Any]:
        return [chunk.request for chapter in self.script for chunk in chapter.chunks]


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
@pass_app
def book_command(app: App, **opts: Any) -> None:
    """Turn SOURCES (.txt .md .epub .pdf .html files, URLs) or --urls CSV groups into
    audiobooks: one FLAC per chapter, and MP3 or M4B with --format."""
    _check_flags(opts)
    out = Path(opts["output"])
    check_output_dir(out)
    volumes = _volumes(opts, out)
    options = route_options(opts["cloud_gpu"], opts["local_audio"], opts["draft"])
    voice = chosen_voice(app.config, opts["voice"], opts["voice_prompt"], opts["voice_text"])
    with CloudGPUManager(
        config=app.config, plugins=app.plugins, options=options, max_usd=opts["max_usd"]
    ) as manager:
        budget = min(manager.text_limit(), opts["max_chars"] or DEFAULT_CHUNK_CHARS)
        for volume in volumes:
            _plan(volume, opts, budget, voice)
        auto = voice is None and not opts["no_auto_voice"]
        if opts["dry_run"]:
            if auto:  # priced in the voice an earlier run set, when there is one (free)
                _auto_voice(manager, volumes, opts, budget, generate=False)
            _dry_run(manager, volumes, opts["as_json"])
            return
        for volume in volumes:
            remove_stale_temps(volume.folder)
            save_book(volume.folder, volume.book, volume.takes, volume.flagged)
        if auto:
            _auto_voice(manager, volumes, opts, budget)
        gate = None if opts["no_quality_gate"] else GateSettings(max_retries=opts["max_retries"])
        result = _generate(manager, volumes, quiet=opts["quiet"], gate=gate)
    for volume in volumes:
        _level(volume, opts["loudness"], opts["check_acx"])
        _encode(volume, opts["formats"], quiet=opts["quiet"])
    _finish(volumes, result, opts["as_json"])


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


def _plan(
    volume: Volume,
    opts: dict[str, Any],
    budget: int,
    voice: Voice | None,
    plain: str | None = None,
) -> None:
    numbers = parse_chapters(opts["chapter_spec"], len(volume.book.chapters))

    def build() -> list[ScriptChapter]:
        args = (volume.book, budget, opts["speaker"], numbers, volume.takes)
        return build_script(*args, voice=voice, plain=plain)

    script = build()
    if opts["redo"] and not volume.redone:
        volume.redone = apply_redo(script, parse_redo(opts["redo"]), volume.takes)
        for key in volume.redone:  # a new take is judged afresh
            volume.flagged.pop(key, None)
        script = build()
    if not script:
        raise UserError(f"{volume.book.title}: the selected chapters have nothing to speak")
    volume.script = script


def _auto_voice(
    manager: CloudGPUManager,
    volumes: list[Volume],
    opts: dict[str, Any],
    budget: int,
    generate: bool = True,
) -> None:
    """With no voice given, CSM picks a different speaker for every chunk: the book's first
    chunk is generated once, alone, and its audio becomes every other chunk's prompt, so the
    chunks still run in parallel in one voice. (The draft voice has one voice already.)
    Without `generate`, only a first chunk the journal already holds sets the voice."""
    first = volumes[0].script[0].chunks[0]
    quality = manager.plan([first.request]).quality
    if quality != "csm":
        return
    audio = _journaled(manager, first.request.id, quality)
    if audio is None and generate:
        result = asyncio.run(manager.synthesize([first.request]))
        outcome = result.outcomes[first.request.id]
        audio = outcome.audio if outcome.ok else None
        if audio is None:
            raise ProviderError(
                f"the first sentence, generated to set the book's voice, failed "
                f"({outcome.error}); give a voice with --voice, or --no-auto-voice\n"
                f"{result.summary()}"
            )
    if audio is None:
        return
    voice = voice_from_result(audio, first.request.text, first.request.speaker)
    for index, volume in enumerate(volumes):
        _plan(volume, opts, budget, voice, plain=first.key if index == 0 else None)


def _journaled(manager: CloudGPUManager, request_id: str, quality: str) -> Any:
    """A request's audio from the journal, without creating a journal that is not there."""
    if not manager.journal_path.is_file():
        return None
    with Journal(manager.journal_path) as journal:
        stored = journal.cached([request_id], quality).get(request_id)
        return journal.load_audio(stored) if stored is not None else None


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
    if not manager.journal_path.is_file():
        return set()
    quality = manager.plan(unique[:1]).quality
    with Journal(manager.journal_path) as journal:
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


# --- generation and assembly -----------------------------------------------------------------


@attrs.frozen
class _Place:
    """Where a request's audio goes: one chunk of one chapter."""

    assembler: ChapterAssembler
    index: int
    volume: Volume
    chapter: int

    @property
    def key(self) -> str:
        return f"{self.chapter}.{self.index + 1}"


class _Assembly:
    """Feeds the runner's progress events to the chapters' assemblers: a chunk that passes the
    quality gate is written as soon as every chunk before it in its chapter is in, and a
    chapter is committed the moment its last chunk is. A chunk that fails the gate waits in
    `rejected` for a new take (see `_generate`)."""

    def __init__(
        self,
        manager: CloudGPUManager,
        volumes: list[Volume],
        quality: str,
        gate: GateSettings | None,
    ) -> None:
        self.journal = manager.journal
        self.quality = quality
        self.gate = gate
        self.pace = VoicePace()
        self.where: dict[str, list[_Place]] = {}
        self.requests: dict[str, SpeechRequest] = {}
        self.ids: dict[ChapterAssembler, list[str]] = {}
        self.rejected: dict[str, tuple[str, ...]] = {}
        self._last: tuple[str, Audio] | None = None
        self.error: BaseException | None = None
        for volume in volumes:
            for chapter in volume.script:
                self._open(volume, chapter)

    def _open(self, volume: Volume, chapter: ScriptChapter) -> None:
        path = volume.folder / "chapters" / f"{chapter_stem(chapter.number, chapter.title)}.flac"
        ids = [chunk.request.id for chunk in chapter.chunks]
        assembler = ChapterAssembler(
            path,
            lambda index: self._load(ids[index]),
            [chunk.ends_paragraph for chunk in chapter.chunks],
            seed=chapter.number,
        )
        self.ids[assembler] = ids
        for index, chunk in enumerate(chapter.chunks):
            place = _Place(assembler, index, volume, chapter.number)
            self.where.setdefault(chunk.request.id, []).append(place)
            self.requests[chunk.request.id] = chunk.request

    def _load(self, request_id: str) -> Any:
        # The gate has usually just read this chunk: its chapter writes it at once if in order.
        if self._last is not None and self._last[0] == request_id:
            return self._last[1]
        stored = self.journal.cached([request_id], self.quality)[request_id]
        audio = self.journal.load_audio(stored)
        self._last = (request_id, audio)  # one chunk held at most
        return audio

    def __call__(self, event: Progress) -> None:
        if event.event not in ("completed", "cached") or event.request_id is None:
            return
        if self.error is not None or event.request_id not in self.where:
            return
        try:
            if self._passes(event.request_id):
                self.accept(event.request_id)
        except Exception as exc:  # reported after the run; the runner must not see it
            self.error = exc

    def _passes(self, request_id: str) -> bool:
        if self.gate is None:
            return True
        if all(p.key in p.volume.flagged for p in self.where[request_id]):
            return True  # kept flagged by an earlier run: paying for it again would not help
        # Until a few chunks have shown the voice's pace, duration is judged only loosely
        # (a tenth to ten times the prior): a voice may read faster or slower than the prior,
        # and the tight band would reject it all; a chunk that loops to the cap still fails.
        warm = len(self.pace) >= self.pace.min_chunks
        settings = self.gate if warm else attrs.evolve(self.gate, min_pace=0.1, max_pace=10.0)
        text = self.requests[request_id].text
        verdict = check_chunk(self._load(request_id), text, settings, self.pace.seconds_per_char)
        if verdict.ok:
            if verdict.measures is not None:
                self.pace.observe(verdict.measures)
            return True
        self.rejected[request_id] = verdict.reasons
        return False

    def accept(self, request_id: str) -> None:
        for place in self.where[request_id]:
            assembler = place.assembler
            assembler.ready(place.index)
            if assembler.complete:
                self._commit(place)

    def _commit(self, place: _Place) -> None:
        made = place.assembler.commit()
        place.volume.chapters_written[place.chapter] = made.path
        texts = [self.requests[rid].text for rid in self.ids[place.assembler]]
        chunks = [ChunkTiming(*place.assembler.spans[i], text) for i, text in enumerate(texts)]
        timing = ChapterTiming(0.0, made.duration, chunks)
        place.volume.timings[place.chapter] = timing
        _write_subtitles(made.path, timing)

    def retake(self, request_id: str, attempt: int) -> tuple[list[SpeechRequest], list[GateEvent]]:
        """A new take (the next seed: a new request) for every chunk the rejected request
        fills, and the gate's events for the rejected one."""
        old = self.requests[request_id]
        reasons = self.rejected.pop(request_id)
        cost = self.journal.request_cost(request_id)
        new = attrs.evolve(old, seed=old.seed + 1, id="")
        events = []
        for place in self.where[request_id]:
            place.volume.takes[place.key] = place.volume.takes.get(place.key, 0) + 1
            self.ids[place.assembler][place.index] = new.id
            self.where.setdefault(new.id, []).append(place)
            events.append(
                GateEvent(place.chapter, place.key, request_id, attempt, reasons, cost, False)
            )
        self.requests[new.id] = new
        return [new], events

    def keep_flagged(self, attempt: int) -> list[GateEvent]:
        """Out of retries: the last takes go into their chapters, flagged in the report."""
        events = []
        for request_id, reasons in list(self.rejected.items()):
            cost = self.journal.request_cost(request_id)
            for place in self.where[request_id]:
                events.append(
                    GateEvent(place.chapter, place.key, request_id, attempt, reasons, cost, True)
                )
            del self.rejected[request_id]
            self.accept(request_id)
        return events

    def offsets(self, events: list[GateEvent]) -> list[GateEvent]:
        """The events with where each chunk starts in its chapter, now that they are written."""
        placed = []
        for event in events:
            place = next(p for p in self.where[event.request_id] if p.key == event.chunk)
            span = place.assembler.spans.get(place.index)
            placed.append(attrs.evolve(event, offset_s=span[0] if span else None))
        return placed

    def abort_unfinished(self) -> None:
        for assembler in self.ids:
            assembler.abort()


def _write_subtitles(audio: Path, timing: ChapterTiming) -> None:
    """SRT and WebVTT for one chapter (or the book), beside the audio's folder."""
    cues = subtitles.cues_for_chapter(timing.chunks, timing.duration_s)
    folder = audio.parent.parent / "subtitles"
    for suffix, text in ((".srt", subtitles.to_srt(cues)), (".vtt", subtitles.to_vtt(cues))):
        path = folder / f"{audio.stem}{suffix}"
        os.replace(write_bytes_atomic(path, text.encode("utf-8")), path)


def _book_subtitles(volume: Volume) -> None:
    """One SRT and WebVTT for the whole book (the M4B's timeline), when every chapter of the
    book was assembled by this run (an earlier run's chapter has no timings here)."""
    numbers = range(1, len(volume.book.chapters) + 1)
    if any(n not in volume.timings for n in numbers):
        return
    start, placed = 0.0, []
    for number in numbers:
        timing = volume.timings[number]
        placed.append(ChapterTiming(start, timing.duration_s, timing.chunks))
        start += timing.duration_s
    cues = subtitles.book_cues(placed)
    stem = volume.folder / safe_name(volume.book.title)
    for suffix, text in ((".srt", subtitles.to_srt(cues)), (".vtt", subtitles.to_vtt(cues))):
        path = stem.with_name(stem.name + suffix)
        os.replace(write_bytes_atomic(path, text.encode("utf-8")), path)
        volume.outputs.append(str(path))


def _generate(
    manager: CloudGPUManager, volumes: list[Volume], quiet: bool, gate: GateSettings | None
) -> RunResult:
    requests = [r for volume in volumes for r in volume.requests]
    unique = {r.id: r for r in requests}
    plan = manager.plan(list(unique.values())[:1])  # fail fast when nothing is usable
    assembly = _Assembly(manager, volumes, plan.quality, gate)
    label = volumes[0].book.title[:40] if len(volumes) == 1 else f"{len(volumes)} books"
    events: list[GateEvent] = []
    try:
        with ProgressBar(len(unique), enabled=not quiet, label=label) as bar:

            def progress(event: Progress) -> None:
                assembly(event)
                written = sum(len(v.chapters_written) for v in volumes)
                bar.note = f"{written}/{sum(len(v.script) for v in volumes)} chapters"
                bar(event)

            result = asyncio.run(manager.synthesize(requests, progress=progress))
            for attempt in range(1, (gate.max_retries if gate else 0) + 1):
                if not assembly.rejected or assembly.error is not None:
                    break
                retakes: list[SpeechRequest] = []
                for request_id in list(assembly.rejected):
                    new, found = assembly.retake(request_id, attempt)
                    retakes += new
                    events += found
                bar.bar.update(bar.task, total=bar.bar.tasks[0].total + len(retakes))
                again = asyncio.run(manager.synthesize(retakes, progress=progress))
                result = result.then(again)
            if assembly.error is None:
                events += assembly.keep_flagged((gate.max_retries if gate else 0) + 1)
    finally:
        assembly.abort_unfinished()
    if assembly.error is not None:
        raise assembly.error
    for volume in volumes:
        volume.gate_events = assembly.offsets([e for e in events if _of(volume, e, assembly)])
        volume.flagged.update({e.chunk: list(e.reasons) for e in volume.gate_events if e.kept})
        if volume.gate_events:  # the takes that were kept, and the chunks kept flagged
            save_book(volume.folder, volume.book, volume.takes, volume.flagged)
    return result


def _of(volume: Volume, event: GateEvent, assembly: _Assembly) -> bool:
    return any(p.volume is volume for p in assembly.where[event.request_id])


# --- encoding and the summary ----------------------------------------------------------------


def _level(volume: Volume, preset: str, check_acx: bool) -> None:
    """One gain plan for the whole book (every chapter made so far, not only this run's),
    measured and applied per chapter, before anything is encoded from the chapters."""
    paths = [path for _n, _t, path in _all_chapter_files(volume)]
    if not paths:
        return
    if preset != "none":
        gains = loudness.plan(loudness.measure(paths), preset)
        loudness.apply_plan(gains)
        volume.loudness = {
            "preset": preset,
            "book_gain_db": round(gains.book_gain_db, 2),
            "chapters": [
                {"file": str(c.path), "gain_db": round(c.gain_db, 2), "notes": list(c.notes)}
                for c in gains.chapters
            ],
        }
    if check_acx:
        checks = loudness.check_acx(paths)
        volume.acx = [{"file": str(c.path), "ok": c.ok, "failures": c.failures()} for c in checks]
        click.echo(loudness.format_checks(checks))


def _encode(volume: Volume, formats: Sequence[str], quiet: bool) -> None:
    book = volume.book
    info = BookInfo(
        title=book.title,
        author=book.author or "Unknown",
        language=book.language,
        cover=_cover(volume) if formats else None,
    )
    files = _all_chapter_files(volume)
    _book_subtitles(volume)
    if "mp3" in formats:
        for number, title, path in files:
            if number in volume.chapters_written:
                dest = volume.folder / "mp3" / f"{path.stem}.mp3"
                encode_mp3(path, dest, book=info, title=title, track=number, tracks=len(files))
                volume.outputs.append(str(dest))
    if "m4b" in formats:
        missing = len(book.chapters) - len(files)
        if missing:
            volume.notes.append(f"no M4B yet: {missing} chapters are not made (see --chapters)")
            return
        dest = volume.folder / f"{safe_name(book.title)}.m4b"
        chapters = [ChapterFile(title, path) for _n, title, path in files]
        encode_m4b(chapters, dest, book=info)
        volume.outputs.append(str(dest))


def _cover(volume: Volume) -> Cover | None:
    """The book's cover for the tags; MP3 and M4B carry only JPEG or PNG, so another format
    (an EPUB's GIF or WebP) is left out with a note rather than stopping the book."""
    if not volume.book.cover:
        return None
    try:
        return Cover.from_bytes(volume.book.cover)
    except UserError as exc:
        volume.notes.append(f"cover left out of the tags: {exc}")
        return None


def _all_chapter_files(volume: Volume) -> list[tuple[int, str, Path]]:
    """Every chapter of the book whose FLAC exists (made now or by an earlier run)."""
    found = []
    for number, chapter in enumerate(volume.book.chapters, start=1):
        path = volume.folder / "chapters" / f"{chapter_stem(number, chapter.title)}.flac"
        if path.is_file():
            found.append((number, chapter.title, path))
    return found


def _finish(volumes: list[Volume], result: RunResult, as_json: bool) -> None:
    reports = [_report(volume, result) for volume in volumes]
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


def _report(volume: Volume, result: RunResult) -> dict[str, Any]:
    failed = [
        chunk.key
        for chapter in volume.script
        for chunk in chapter.chunks
        if not result.outcomes[chunk.request.id].ok
    ]
    return {
        "title": volume.book.title,
        "folder": str(volume.folder),
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "chapters": [
            {
                "number": chapter.number,
                "title": chapter.title,
                "chunks": len(chapter.chunks),
                "file": str(volume.chapters_written.get(chapter.number) or "") or None,
                "from_journal": sum(result.outcomes[c.request.id].cached for c in chapter.chunks),
            }
            for chapter in volume.script
        ],
        "regenerated": volume.redone,
        "failed_chunks": failed,
        "outputs": volume.outputs,
        "notes": volume.notes,
        "loudness": volume.loudness,
        "quality": {**quality_report(volume.gate_events), "kept_flagged": volume.flagged},
        "acx_check": volume.acx,
        "skipped": [{"source": s.source, "reason": s.reason} for s in volume.book.skipped],
    }


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
