"""A book as one run (or one queue task) sees it: its folder, its text, the chapters it makes
and what became of them, and the two decisions taken before any chapter runs: which chapters
as which requests (`plan_volume`) and, with no voice given, the book's voice (`auto_voice`).

`csm-offload book` and the queue's tasks (csm_offload.queue) both plan through here, so the
same options give the same requests, hence the same audio, whichever runs them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from ..errors import ProviderError, UserError
from ..manager import CloudGPUManager
from ..voices import Voice, voice_from_result
from .model import Book
from .quality import GateEvent
from .script import ScriptChapter, apply_redo, build_script, parse_chapters, parse_redo
from .subtitles import ChapterTiming


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
    #: Per chapter: how many of its chunks came from the journal (free); chunk keys that failed.
    from_journal: dict[int, int] = attrs.field(factory=dict)
    failed: list[str] = attrs.field(factory=list)
    #: Per chapter made by this run: the request of each chunk, in order (the kept takes).
    chunk_ids: dict[int, list[str]] = attrs.field(factory=dict)

    @property
    def requests(self) -> list[Any]:
        return [chunk.request for chapter in self.script for chunk in chapter.chunks]


def plan_volume(
    volume: Volume,
    opts: Mapping[str, Any],
    budget: int,
    voice: Voice | None,
    plain: str | None = None,
) -> None:
    """`volume.script`: the chapters `opts["chapter_spec"]` selects, cut at `budget`
    characters, in `voice`; `opts["redo"]` raises the takes it names (once per volume)."""
    numbers = parse_chapters(opts.get("chapter_spec"), len(volume.book.chapters))

    def build() -> list[ScriptChapter]:
        args = (volume.book, budget, opts.get("speaker", 0), numbers, volume.takes)
        return build_script(*args, voice=voice, plain=plain)

    script = build()
    if opts.get("redo") and not volume.redone:
        volume.redone = apply_redo(script, parse_redo(opts["redo"]), volume.takes)
        for key in volume.redone:  # a new take is judged afresh
            volume.flagged.pop(key, None)
        script = build()
    if not script:
        raise UserError(f"{volume.book.title}: the selected chapters have nothing to speak")
    volume.script = script


def first_chunk_voice(
    manager: CloudGPUManager, lead: Volume, *, generate: bool
) -> tuple[str, Voice] | None:
    """With no voice given, CSM picks a different speaker for every chunk: the book's first
    chunk is generated once, alone, and its audio becomes every other chunk's prompt, so the
    chunks still run in parallel in one voice. (The draft voice has one voice already.)

    Returns the first chunk's key and the voice, or None for a draft-quality plan or, without
    `generate`, when the journal does not hold that chunk yet."""
    first = lead.script[0].chunks[0]
    quality = manager.plan([first.request]).quality
    if quality != "csm":
        return None
    audio = journaled(manager, first.request.id, quality)
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
        return None
    return first.key, voice_from_result(audio, first.request.text, first.request.speaker)


def auto_voice(
    manager: CloudGPUManager,
    volumes: list[Volume],
    opts: Mapping[str, Any],
    budget: int,
    *,
    generate: bool = True,
) -> bool:
    """Re-plan `volumes` in the voice of the first volume's first chunk (that chunk itself
    stays plain); False when there is no such voice (see `first_chunk_voice`)."""
    found = first_chunk_voice(manager, volumes[0], generate=generate)
    if found is None:
        return False
    key, voice = found
    for index, volume in enumerate(volumes):
        plan_volume(volume, opts, budget, voice, plain=key if index == 0 else None)
    return True


def journaled(manager: CloudGPUManager, request_id: str, quality: str) -> Any:
    """A request's audio from the journal, without creating a journal that is not there."""
    journal = manager.existing_journal()
    if journal is None:
        return None
    stored = journal.cached([request_id], quality).get(request_id)
    return journal.load_audio(stored) if stored is not None else None
