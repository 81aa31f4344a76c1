"""Generating and assembling chapters: every chunk of the given chapters through one run of
the router and runner, each chapter's FLAC written as its chunks arrive in order (after the
quality gate) and committed the moment its last one is in, with new takes for chunks the gate
rejects. `csm-offload book` runs every selected chapter of its books through here at once; a
queue worker (csm_offload.queue) runs one chapter at a time, through the same code.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import attrs

from ..audio import Audio
from ..journal import Journal
from ..manager import CloudGPUManager
from ..model import SpeechRequest
from ..output import write_bytes_atomic
from ..runner import Progress, RunResult
from . import subtitles
from .assemble import ChapterAssembler
from .project import chapter_stem
from .quality import GateEvent, GateSettings, VoicePace, check_chunk
from .script import ScriptChapter
from .subtitles import ChapterTiming, ChunkTiming
from .volume import Volume


class Watcher(Protocol):
    """What follows a generation: the runner's events, a note (chapters written) and more
    work when retakes are added (a progress bar, or a worker's log lines)."""

    note: str

    def __call__(self, event: Progress) -> None: ...

    def grow(self, extra: int) -> None: ...


class Silent:
    """A watcher that shows nothing."""

    note = ""

    def __call__(self, event: Progress) -> None:
        pass

    def grow(self, extra: int) -> None:
        pass


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


class Assembly:
    """Feeds the runner's progress events to the chapters' assemblers: a chunk that passes the
    quality gate is written as soon as every chunk before it in its chapter is in, and a
    chapter is committed the moment its last chunk is. A chunk that fails the gate waits in
    `rejected` for a new take (see `generate_chapters`)."""

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
        path = chapter_path(volume, chapter)
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
        place.volume.chunk_ids[place.chapter] = list(self.ids[place.assembler])
        texts = [self.requests[rid].text for rid in self.ids[place.assembler]]
        chunks = [ChunkTiming(*place.assembler.spans[i], text) for i, text in enumerate(texts)]
        timing = ChapterTiming(0.0, made.duration, chunks)
        place.volume.timings[place.chapter] = timing
        write_subtitles(made.path, timing)

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


def write_subtitles(audio: Path, timing: ChapterTiming) -> None:
    """SRT and WebVTT for one chapter (or the book), beside the audio's folder."""
    cues = subtitles.cues_for_chapter(timing.chunks, timing.duration_s)
    folder = audio.parent.parent / "subtitles"
    for suffix, text in ((".srt", subtitles.to_srt(cues)), (".vtt", subtitles.to_vtt(cues))):
        path = folder / f"{audio.stem}{suffix}"
        os.replace(write_bytes_atomic(path, text.encode("utf-8")), path)


def generate_chapters(
    manager: CloudGPUManager,
    volumes: list[Volume],
    gate: GateSettings | None,
    watcher: Watcher | None = None,
) -> RunResult:
    """Every chunk of every volume's script, and its chapters assembled; each volume's takes,
    flagged chunks, gate events, timings and per-chapter journal counts are set on it (saving
    them is the caller's: one writer per book.json)."""
    watch = watcher or Silent()
    requests = [r for volume in volumes for r in volume.requests]
    unique = {r.id: r for r in requests}
    plan = manager.plan(list(unique.values())[:1])  # fail fast when nothing is usable
    assembly = Assembly(manager, volumes, plan.quality, gate)
    events: list[GateEvent] = []

    def progress(event: Progress) -> None:
        assembly(event)
        written = sum(len(v.chapters_written) for v in volumes)
        watch.note = f"{written}/{sum(len(v.script) for v in volumes)} chapters"
        watch(event)

    try:
        result = asyncio.run(manager.synthesize(requests, progress=progress))
        for attempt in range(1, (gate.max_retries if gate else 0) + 1):
            if not assembly.rejected or assembly.error is not None:
                break
            retakes: list[SpeechRequest] = []
            for request_id in list(assembly.rejected):
                new, found = assembly.retake(request_id, attempt)
                retakes += new
                events += found
            watch.grow(len(retakes))
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
        _record(volume, result)
    return result


def _of(volume: Volume, event: GateEvent, assembly: Assembly) -> bool:
    return any(p.volume is volume for p in assembly.where[event.request_id])


def _record(volume: Volume, result: RunResult) -> None:
    """What the run made of each chapter of `volume`: chunks from the journal, and failures."""
    for chapter in volume.script:
        outcomes = [result.outcomes[c.request.id] for c in chapter.chunks]
        volume.from_journal[chapter.number] = sum(o.cached for o in outcomes)
        volume.failed += [c.key for c, o in zip(chapter.chunks, outcomes, strict=True) if not o.ok]


def chapter_path(volume: Volume, chapter: ScriptChapter) -> Path:
    return volume.folder / "chapters" / f"{chapter_stem(chapter.number, chapter.title)}.flac"


def file_digest(path: Path) -> str:
    """SHA-256 of a file, read in blocks (chapters can be hundreds of MB)."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def rebuild_chapter(
    journal: Journal | Any,
    quality: str,
    path: Path,
    request_ids: Sequence[str],
    chapter: ScriptChapter,
) -> None:
    """A chapter's FLAC again, byte for byte as first assembled, from the takes it was made of
    (all in the journal): how a finishing step that died half-way through levelling the book
    gets its unlevelled chapters back without paying or judging anything again."""
    ids = list(request_ids)

    def load(index: int) -> Audio:
        return journal.load_audio(journal.cached([ids[index]], quality)[ids[index]])

    ends = [chunk.ends_paragraph for chunk in chapter.chunks]
    with ChapterAssembler(path, load, ends, seed=chapter.number) as assembler:
        for index in range(len(ids)):
            assembler.ready(index)
        assembler.commit()
