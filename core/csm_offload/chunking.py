"""Sentence-aware chunking: long text becomes requests that each fit a target's text limit.

Chunks end at sentence ends where possible, else at a clause mark, else at a space, and only as
a last resort inside a word (a "word" over the limit). Paragraphs (blank-line separated) never
share a chunk, so a narrator can pause longer where one ends. Whitespace runs are collapsed:
each chunk is a slice of its paragraph with whitespace normalised, so `join_chunks` gives back
exactly `normalise_paragraphs` of the input — no character is lost or invented.

Everything here is linear in the text's length (a ten-hour book is a few hundred thousand
characters) and deterministic: resuming a book depends on identical chunks from identical text.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence

import attrs

from .errors import UserError

_PARAGRAPH = re.compile(r"\n\s*\n")
#: A sentence ends after . ! ? … (and any closing quotes or brackets) before a space, or after a
#: CJK full stop (and its closing brackets), which needs no space after it. A match starts only
#: at the first mark of a run and never gives back (possessive), so a megabyte of dots is linear.
_SENTENCE_END = re.compile(
    r"(?<![.!?…])[.!?…]++[\"'”’»)\]]*+(?= )|(?<![。！？])[。！？]++[”’」』）)\]]*+"
)
_CLAUSE_END = re.compile(r"[,;:—–](?= )")
#: Periods that end a word but rarely a sentence: titles before a name, initials, "No. 5".
_NO_BREAK_BEFORE = re.compile(
    r"(?:^|[\s(\"'“‘])(?:Mr|Mrs|Ms|Mx|Dr|Prof|St|Mt|Rev|Hon|Gen|Capt|Col|Lt|Sgt|Fr|Sr|Jr"
    r"|No|Nr|Vol|Fig|Ch|pp|cf|vs|(?:[A-Za-z]\.)*[A-Za-z])\.\Z"
)
#: How far back the abbreviation check looks: longer than any abbreviation above.
_LOOK_BACK = 12


@attrs.frozen
class Chunk:
    """One request's text. `ends_paragraph` marks the last chunk of a paragraph (and of the
    text): a narrator pauses longer there. `glued` marks a chunk that the next one continues
    with no space between: an over-long word cut at the limit, or CJK text, which has no
    spaces between its sentences."""

    text: str
    ends_paragraph: bool
    glued: bool = False


def normalise(text: str) -> str:
    return " ".join(text.split())


def paragraphs(text: str) -> list[str]:
    """The text's paragraphs (split at blank lines), whitespace-normalised, blank ones dropped."""
    return [flat for part in _PARAGRAPH.split(text) if (flat := normalise(part))]


def normalise_paragraphs(text: str) -> str:
    """The text as the chunker sees it: normalised paragraphs joined by one blank line."""
    return "\n\n".join(paragraphs(text))


def join_chunks(chunks: Sequence[Chunk]) -> str:
    """The inverse of `split_chunks`: gives back `normalise_paragraphs` of the text."""
    parts: list[str] = []
    for index, chunk in enumerate(chunks):
        parts.append(chunk.text)
        if index + 1 < len(chunks):
            parts.append("\n\n" if chunk.ends_paragraph else "" if chunk.glued else " ")
    return "".join(parts)


def split_chunks(text: str, max_chars: int) -> list[Chunk]:
    """Split `text` into chunks of at most `max_chars` characters, at the best breaks found,
    never across a paragraph end."""
    _check_budget(max_chars)
    chunks: list[Chunk] = []
    for flat in paragraphs(text):
        spans = list(_pack(flat, _pieces(flat, max_chars), max_chars))
        for index, (start, end) in enumerate(spans):
            last = index + 1 == len(spans)
            glued = not last and end == spans[index + 1][0]
            chunks.append(Chunk(flat[start:end], ends_paragraph=last, glued=glued))
    return chunks


def chunk_text(text: str, max_chars: int) -> list[str]:
    """Split `text` into chunks of at most `max_chars` characters, at the best break found."""
    return [chunk.text for chunk in split_chunks(text, max_chars)]


def _check_budget(max_chars: int) -> None:
    if max_chars < 1:
        raise UserError(f"chunk size must be at least 1 character, got {max_chars}")


Span = tuple[int, int]


def _pieces(flat: str, max_chars: int) -> Iterator[Span]:
    """Sentences as spans of `flat`; one over the limit is cut at clauses, then words, then
    (a word over the limit) every `max_chars` characters."""
    for start, end in _split(flat, 0, len(flat), _sentence_ends(flat)):
        if end - start <= max_chars:
            yield start, end
            continue
        clause_ends = (m.end() for m in _CLAUSE_END.finditer(flat, start, end))
        for c_start, c_end in _split(flat, start, end, clause_ends):
            if c_end - c_start <= max_chars:
                yield c_start, c_end
                continue
            for w_start, w_end in _words(flat, c_start, c_end):
                # Stepping by index keeps a 10 MB "word" linear instead of copying per cut.
                for cut in range(w_start, w_end, max_chars):
                    yield cut, min(cut + max_chars, w_end)


def _sentence_ends(flat: str) -> Iterator[int]:
    for match in _SENTENCE_END.finditer(flat):
        end = match.end()
        if end < len(flat) and _is_sentence_end(flat, match.start(), end):
            yield end


def _is_sentence_end(flat: str, start: int, end: int) -> bool:
    after = end + 1 if flat[end] == " " else end
    if after < len(flat) and flat[after].islower():
        return False  # "e.g. the", "“Why?” he asked": the sentence goes on
    if flat[start] != ".":
        return True
    return not _NO_BREAK_BEFORE.search(flat, max(0, start - _LOOK_BACK), start + 1)


def _split(flat: str, start: int, end: int, cuts: Iterator[int]) -> Iterator[Span]:
    """The spans between `cuts` (positions in [start, end)), each stripped of one space."""
    for cut in cuts:
        if start < cut < end:
            yield start, cut
            start = cut + 1 if flat[cut] == " " else cut
    if start < end:
        yield start, end


def _words(flat: str, start: int, end: int) -> Iterator[Span]:
    while start < end:
        space = flat.find(" ", start, end)
        stop = end if space < 0 else space
        if stop > start:
            yield start, stop
        start = stop + 1


def _pack(flat: str, pieces: Iterator[Span], max_chars: int) -> Iterator[Span]:
    """Greedily join consecutive pieces (with what lies between them) while they fit."""
    current: Span | None = None
    for start, end in pieces:
        if current is None:
            current = (start, end)
        elif end - current[0] <= max_chars:
            current = (current[0], end)
        else:
            yield current
            current = (start, end)
    if current is not None:
        yield current
