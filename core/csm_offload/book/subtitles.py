"""Subtitles: SRT and WebVTT cues for a chapter (and for the whole M4B) from the chunk timings.

The audio of a chunk is one take of its text, and nothing tells us where inside it each
sentence falls; narration runs at a steady pace, so each sentence of a chunk gets a share of
the chunk's time in proportion to its length in characters. Sentences are cut by the same rules
as the chunker's (`csm_offload.chunking`), so a cue never ends inside "Dr. Watson" where the
chunker would not either.

Every time is a whole millisecond (what both formats write), computed once from cumulative
positions, so cues are in order and never overlap however they round. A sentence whose share
rounds to no time at all joins its neighbour's cue. The last cue holds until the chapter's end,
so the subtitle of a chapter's last words stays up through its tail of room tone.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import attrs

# The chunker's own sentence rules, imported rather than copied so the two cannot drift;
# chunking.py has no public name for them yet.
from ..chunking import _sentence_ends, _split, normalise
from ..errors import UserError


@attrs.frozen
class ChunkTiming:
    """Where one chunk's audio sits in its chapter (seconds), and the text it reads."""

    start_s: float
    end_s: float
    text: str


@attrs.frozen
class Cue:
    """One subtitle, in whole milliseconds from the start of its chapter (or of the book)."""

    start_ms: int
    end_ms: int
    text: str

    @property
    def start_s(self) -> float:
        return self.start_ms / 1000

    @property
    def end_s(self) -> float:
        return self.end_ms / 1000


def sentences(text: str) -> list[str]:
    """The sentences of a chunk's text, cut where the chunker would cut them."""
    flat = normalise(text)
    return [flat[start:end] for start, end in _split(flat, 0, len(flat), _sentence_ends(flat))]


def _ms(seconds: float) -> int:
    return round(seconds * 1000)


def _check_timings(chunks: Sequence[ChunkTiming], chapter_end_s: float) -> None:
    previous = 0.0
    for number, chunk in enumerate(chunks, start=1):
        times = (chunk.start_s, chunk.end_s)
        if not all(isinstance(t, int | float) and math.isfinite(t) for t in times):
            raise UserError(f"chunk {number} has a start or end that is not a number of seconds")
        if not previous <= chunk.start_s <= chunk.end_s:
            raise UserError(
                f"chunk {number} runs from {chunk.start_s:.3f} to {chunk.end_s:.3f} s, before "
                f"the previous chunk's end ({previous:.3f} s) or backwards; pass the chunks in "
                "chapter order with the times the assembler wrote them at"
            )
        previous = chunk.end_s
    if not (math.isfinite(chapter_end_s) and chapter_end_s >= previous):
        raise UserError(
            f"the chapter ends at {chapter_end_s!r} s, before its last chunk ends "
            f"({previous:.3f} s); pass the chapter file's length"
        )


def _pieces(chunk: ChunkTiming) -> Iterable[Cue]:
    """The chunk's sentences, timed in proportion to their length (some may get no time)."""
    parts = sentences(chunk.text)
    total = sum(len(part) for part in parts)
    start, length = _ms(chunk.start_s), _ms(chunk.end_s) - _ms(chunk.start_s)
    done = 0
    for part in parts:
        begin = start + length * done // total
        done += len(part)
        yield Cue(begin, start + length * done // total, part)


def _coalesce(pieces: Iterable[Cue]) -> list[Cue]:
    """Cues of positive length: a piece with none joins the cue before it (the first ones, the
    cue after them)."""
    cues: list[Cue] = []
    waiting: Cue | None = None  # zero-length text with no cue before it yet
    for piece in pieces:
        if waiting is not None:
            piece = Cue(waiting.start_ms, piece.end_ms, f"{waiting.text} {piece.text}")
            waiting = None
        if piece.end_ms > piece.start_ms:
            cues.append(piece)
        elif cues:
            last = cues[-1]
            cues[-1] = Cue(last.start_ms, last.end_ms, f"{last.text} {piece.text}")
        else:
            waiting = piece
    if waiting is not None:
        cues.append(waiting)  # only zero-length text so far: the chapter's end gives it time
    return cues


def cues_for_chapter(chunks: Sequence[ChunkTiming], chapter_end_s: float) -> list[Cue]:
    """The chapter's cues: each chunk's sentences over its audio, the last cue held to
    `chapter_end_s` (the chapter file's length)."""
    _check_timings(chunks, chapter_end_s)
    spoken = [chunk for chunk in chunks if normalise(chunk.text)]
    cues = _coalesce(piece for chunk in spoken for piece in _pieces(chunk))
    if not cues:
        return []
    end = _ms(chapter_end_s)
    last = cues[-1]
    if end <= last.start_ms:
        raise UserError(
            f"the chapter is {chapter_end_s:.3f} s long, too short to show its text; pass the "
            "chapter file's length and chunk times in seconds"
        )
    cues[-1] = Cue(last.start_ms, end, last.text)
    return cues


@attrs.frozen
class ChapterTiming:
    """A chapter's place in the book (seconds: where it starts, how long it is) and its
    chunks' timings within it."""

    start_s: float
    duration_s: float
    chunks: tuple[ChunkTiming, ...] = attrs.field(converter=tuple)


def book_cues(chapters: Sequence[ChapterTiming]) -> list[Cue]:
    """One cue list for the whole book (the M4B), chapters in book order. The chunk times are
    moved into the book before anything is rounded, so the cues of consecutive chapters cannot
    overlap by a rounding. Take the starts from the chapter marks (`metadata.chapter_marks`:
    `mark.start_s`) so that subtitles and marks agree."""
    found: list[Cue] = []
    previous_end = 0.0
    for number, chapter in enumerate(chapters, start=1):
        if not (math.isfinite(chapter.start_s) and chapter.start_s >= previous_end):
            raise UserError(
                f"chapter {number} starts at {chapter.start_s!r} s, before the previous one "
                f"ends ({previous_end:.3f} s); pass the chapters in book order with their starts"
            )
        moved = [
            ChunkTiming(chapter.start_s + c.start_s, chapter.start_s + c.end_s, c.text)
            for c in chapter.chunks
        ]
        previous_end = chapter.start_s + chapter.duration_s
        found += cues_for_chapter(moved, previous_end)
    return found


def _clock(ms: int, separator: str) -> str:
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    seconds, millis = divmod(rest, 1000)
    return f"{hours:02d}:{minutes:02d}:{seconds:02d}{separator}{millis:03d}"


def to_srt(cues: Sequence[Cue]) -> str:
    """SubRip: numbered cues, times with a comma before the milliseconds."""
    blocks = []
    for number, cue in enumerate(cues, start=1):
        text = cue.text.replace("-->", "->")  # the one sequence a SubRip reader would misread
        blocks.append(
            f"{number}\n{_clock(cue.start_ms, ',')} --> {_clock(cue.end_ms, ',')}\n{text}\n"
        )
    return "\n".join(blocks)


def to_vtt(cues: Sequence[Cue]) -> str:
    """WebVTT: the header, then cues with a dot before the milliseconds, text escaped."""
    blocks = ["WEBVTT\n"]
    for cue in cues:
        text = cue.text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
        blocks.append(f"{_clock(cue.start_ms, '.')} --> {_clock(cue.end_ms, '.')}\n{text}\n")
    return "\n".join(blocks)
