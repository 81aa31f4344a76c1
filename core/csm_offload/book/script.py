"""A book as requests: each selected chapter's speakable text cut into chunks, each chunk a
`SpeechRequest`, and the selections a user types (`--chapters 1-3,7`, `--redo 12` / `12.4`).

Chunks are numbered from 1 within their chapter, as the user names them (`12.4` is chapter
12's fourth chunk). A chunk's "take" is how often it was regenerated on request: take n uses
seed n, so a redo is a new request id (new audio), and the journal still holds the old take.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence

import attrs

from ..chunking import split_chunks
from ..errors import UserError
from ..model import SpeechRequest
from ..voices import Voice, voice_request
from .model import Book
from .speech import for_speech

#: Seconds of narration per character, for estimates before anything is generated (CSM reads
#: about 14 characters a second).
SECONDS_PER_CHAR = 0.07


@attrs.frozen
class ScriptChunk:
    chapter: int
    index: int
    ends_paragraph: bool
    request: SpeechRequest

    @property
    def key(self) -> str:
        return f"{self.chapter}.{self.index}"


@attrs.frozen
class ScriptChapter:
    number: int
    title: str
    chunks: tuple[ScriptChunk, ...]

    @property
    def characters(self) -> int:
        return sum(len(c.request.text) for c in self.chunks)


def build_script(
    book: Book,
    max_chars: int,
    speaker: int,
    chapters: Iterable[int],
    takes: Mapping[str, int],
    voice: Voice | None = None,
    plain: str | None = None,
) -> list[ScriptChapter]:
    """The selected chapters (numbers from 1) as chunks and requests, in `voice` (its prompt as
    every request's context) but for the chunk keyed `plain` (an auto-voice's own sentence);
    chapters with nothing to speak are left out."""
    script = []
    for number in chapters:
        chapter = book.chapters[number - 1]
        spoken = for_speech(chapter.text, book.language)
        pieces = split_chunks(spoken, max_chars)
        chunks = tuple(
            ScriptChunk(
                number,
                index,
                piece.ends_paragraph,
                _request(
                    piece.text,
                    None if plain == f"{number}.{index}" else voice,
                    speaker,
                    takes.get(f"{number}.{index}", 0),
                ),
            )
            for index, piece in enumerate(pieces, start=1)
        )
        if chunks:
            script.append(ScriptChapter(number, chapter.title, chunks))
    return script


def _request(text: str, voice: Voice | None, speaker: int, take: int) -> SpeechRequest:
    if voice is None:
        return SpeechRequest(text, speaker, seed=take)
    # A take shifts the voice's own seed, so a redo still differs from the take before it.
    return voice_request(text, voice, seed=(voice.settings.seed or 0) + take)


_RANGE = re.compile(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?")


def parse_chapters(spec: str | None, count: int) -> list[int]:
    """`1-3,7` as chapter numbers in book order (all of them for None); out of range or
    malformed is a `UserError` naming the book's chapter count."""
    if spec is None or not spec.strip():
        return list(range(1, count + 1))
    wanted: set[int] = set()
    for part in spec.split(","):
        found = _RANGE.fullmatch(part)
        if found is None:
            raise UserError(f"--chapters {spec!r}: write chapter numbers and ranges like 1-3,7")
        first = int(found.group(1))
        last = int(found.group(2) or first)
        if not 1 <= first <= last <= count:
            raise UserError(
                f"--chapters {spec!r}: the book has chapters 1 to {count}; a range goes from low "
                "to high"
            )
        wanted.update(range(first, last + 1))
    return sorted(wanted)


_REDO = re.compile(r"\s*(\d+)(?:\.(\d+))?\s*")


def parse_redo(specs: Sequence[str]) -> list[tuple[int, int | None]]:
    """`12` (a chapter) or `12.4` (its fourth chunk), each as (chapter, chunk or None)."""
    found: list[tuple[int, int | None]] = []
    for spec in specs:
        match = _REDO.fullmatch(spec)
        if match is None or int(match.group(1)) < 1 or (match.group(2) and int(match.group(2)) < 1):
            raise UserError(f"--redo {spec!r}: name a chapter (12) or one of its chunks (12.4)")
        chunk = match.group(2)
        found.append((int(match.group(1)), int(chunk) if chunk else None))
    return found


def apply_redo(
    script: Sequence[ScriptChapter], redo: Sequence[tuple[int, int | None]], takes: dict[str, int]
) -> list[str]:
    """Raise the take of every chunk `redo` names (in `takes`); returns the keys changed. A
    chapter or chunk the script does not hold is a `UserError`."""
    by_number = {chapter.number: chapter for chapter in script}
    changed: list[str] = []
    for number, index in redo:
        chapter = by_number.get(number)
        if chapter is None:
            raise UserError(
                f"--redo {number}: chapter {number} is not in this run (chapters: "
                f"{', '.join(str(n) for n in by_number) or 'none'}); check --chapters"
            )
        if index is not None and not 1 <= index <= len(chapter.chunks):
            raise UserError(
                f"--redo {number}.{index}: chapter {number} has chunks 1 to {len(chapter.chunks)}"
            )
        for chunk in chapter.chunks if index is None else (chapter.chunks[index - 1],):
            takes[chunk.key] = takes.get(chunk.key, 0) + 1
            changed.append(chunk.key)
    return changed
