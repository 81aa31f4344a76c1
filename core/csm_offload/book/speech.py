"""Text for speech: chapter text as a narrator should read it, in the book's language.

Each paragraph is cleaned (`cleanup`), its abbreviations and symbols read out (`lexicon`), and
its numbers spelt out (`numbers`, through num2words). Full stops are handled with the chunker
in mind: an abbreviation that cannot end a sentence ("Dr.", "e.g.") loses its stop when read
out, so it no longer looks like a sentence end; one that can ("etc.", "p.m.") keeps it exactly
where a sentence ends. The result is paragraphs joined by blank lines, whitespace normalised —
the form `chunking.split_chunks` gives back — and the same input always gives the same text.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable

from ..chunking import normalise, paragraphs
from .cleanup import clean
from .lexicon import Lexicon, lexicon_for
from .model import DEFAULT_LANGUAGE
from .numbers import Speller, expand_numbers

_CLOSERS = "\"'”’»)]"
_OPENERS = ("“", '"', "‘", "'", "«", "(")


def for_speech(text: str, language: str = DEFAULT_LANGUAGE) -> str:
    """`text` (paragraphs split by blank lines) as it should be read aloud in `language`."""
    reader = _reader(language.strip() or DEFAULT_LANGUAGE)
    spoken = (reader(cleaned) for paragraph in paragraphs(text) if (cleaned := clean(paragraph)))
    return "\n\n".join(paragraph for paragraph in spoken if paragraph)


@functools.lru_cache(maxsize=64)
def _reader(language: str) -> Callable[[str], str]:
    lexicon, speller = lexicon_for(language), Speller(language)
    words = _Words(lexicon)

    def read(paragraph: str) -> str:
        expanded = expand_numbers(words.abbreviations(paragraph), lexicon, speller)
        return normalise(words.symbols(expanded))

    return read


class _Words:
    """One language's abbreviations and symbols as compiled patterns."""

    def __init__(self, lexicon: Lexicon) -> None:
        self.lexicon = lexicon
        readings = {**lexicon.titles, **lexicon.terminal}
        self._readings = readings
        self._abbreviation = _alternation(
            [*readings, *lexicon.before_name], r"(?<![\w.])", r"(?!\w)"
        )
        marks = [*lexicon.number_marks, "#"] if lexicon.number_word else []
        self._number_mark = _alternation(marks, r"(?<![\w.])", r"\s?(?=\d)")
        self._symbol = _alternation(list(lexicon.symbols), "", "")

    def abbreviations(self, text: str) -> str:
        if self._number_mark is not None:
            text = self._number_mark.sub(f"{self.lexicon.number_word} ", text)
        if self._abbreviation is None:
            return text
        return self._abbreviation.sub(self._read_abbreviation, text)

    def _read_abbreviation(self, match: re.Match[str]) -> str:
        written, text, end = match.group(0), match.string, match.end()
        if written in self.lexicon.before_name:
            name, other = self.lexicon.before_name[written]
            if _before_name(text, end):
                return name
            return other + ("." if _ends_sentence(text, end) else "")
        spoken = self._readings[written]
        if written in self.lexicon.terminal and _ends_sentence(text, end):
            return spoken + "."
        return spoken

    def symbols(self, text: str) -> str:
        if self._symbol is None:
            return text
        return self._symbol.sub(lambda match: f" {self.lexicon.symbols[match.group(0)]} ", text)


def _alternation(keys: list[str], before: str, after: str) -> re.Pattern[str] | None:
    if not keys:
        return None
    # Longest first, so "Mrs." is never read as "Mr." and an "s".
    choices = "|".join(re.escape(key) for key in sorted(keys, key=len, reverse=True))
    return re.compile(f"{before}(?:{choices}){after}")


def _before_name(text: str, end: int) -> bool:
    return end + 1 < len(text) and text[end] == " " and text[end + 1].isupper()


def _ends_sentence(text: str, end: int) -> bool:
    """Whether the full stop just before `end` also ends a sentence: the paragraph ends there,
    or a capitalised word follows (after any closing quotes or brackets)."""
    while end < len(text) and text[end] in _CLOSERS:
        end += 1
    if end >= len(text):
        return True
    following = text[end + 1 : end + 2]
    return text[end] == " " and (following.isupper() or following in _OPENERS)
