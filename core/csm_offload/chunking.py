"""Sentence-aware chunking: long text becomes requests that each fit a target's text limit.

Chunks end at sentence ends where possible, else at a clause mark, else at a space, and only as
a last resort inside a word. Whitespace runs are collapsed, so the chunks joined by single spaces
give back the text with its whitespace normalised.
"""

from __future__ import annotations

import re

from .errors import UserError

#: A sentence ends after . ! ? … (with closing quotes or brackets) or after CJK full stops.
_SENTENCE = re.compile(r"(?<=[.!?…])[\"'”’)\]]*\s+|(?<=[。！？])")
_CLAUSE = re.compile(r"(?<=[,;:—–])\s+")


def normalise(text: str) -> str:
    return " ".join(text.split())


def chunk_text(text: str, max_chars: int) -> list[str]:
    """Split `text` into chunks of at most `max_chars` characters, at the best break found."""
    if max_chars < 1:
        raise UserError(f"chunk size must be at least 1 character, got {max_chars}")
    chunks: list[str] = []
    for paragraph in re.split(r"\n\s*\n", text):
        flat = normalise(paragraph)
        if flat:
            chunks.extend(_pack(_pieces(flat, max_chars), max_chars))
    return chunks


def _pieces(text: str, max_chars: int) -> list[str]:
    """Sentences, each cut further when it alone is over the limit."""
    out: list[str] = []
    for sentence in _split(_SENTENCE, text):
        if len(sentence) <= max_chars:
            out.append(sentence)
            continue
        for clause in _split(_CLAUSE, sentence):
            out.extend(_words(clause, max_chars))
    return out


def _split(pattern: re.Pattern[str], text: str) -> list[str]:
    return [part.strip() for part in pattern.split(text) if part and part.strip()]


def _words(text: str, max_chars: int) -> list[str]:
    if len(text) <= max_chars:
        return [text]
    out: list[str] = []
    for word in text.split(" "):
        # One "word" over the limit is cut. Slicing by index, not by shortening the rest,
        # keeps a 10 MB word linear instead of copying megabytes per cut.
        out.extend(word[start : start + max_chars] for start in range(0, len(word), max_chars))
    return out


def _pack(pieces: list[str], max_chars: int) -> list[str]:
    """Greedily join consecutive pieces with spaces while they fit."""
    chunks: list[str] = []
    current = ""
    for piece in pieces:
        if not current:
            current = piece
        elif len(current) + 1 + len(piece) <= max_chars:
            current = f"{current} {piece}"
        else:
            chunks.append(current)
            current = piece
    if current:
        chunks.append(current)
    return chunks
