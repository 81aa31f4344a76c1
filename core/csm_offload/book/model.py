"""What the text half of the audiobook pipeline produces: a book of chapters, and the sources
that could not be read, each with the reason (the command sets its exit code from those)."""

from __future__ import annotations

import attrs

from ..errors import UserError

#: When a source declares no language: the numbers and abbreviations are read in English.
DEFAULT_LANGUAGE = "en"


class Unreadable(UserError):
    """This source gives no chapter; the message is the reason, without the source's name (the
    caller records it as a `Skipped`)."""


@attrs.frozen
class Chapter:
    """One chapter's plain text: paragraphs separated by a blank line, markup already gone.
    `text` does not repeat `title`; `source` is the file or URL it came from."""

    title: str
    text: str
    source: str


@attrs.frozen
class Skipped:
    """A source that gave no chapter, and why, in one sentence that names the fix."""

    source: str
    reason: str


def _cover_repr(cover: bytes | None) -> str:
    return "None" if cover is None else f"<{len(cover)} bytes>"


@attrs.frozen
class Book:
    """A book's metadata and chapters. `language` is a BCP 47 tag ("en", "de-AT"); `cover`
    holds the image's bytes as found (its `cover_mime` says which format)."""

    title: str
    author: str | None = None
    language: str = DEFAULT_LANGUAGE
    cover: bytes | None = attrs.field(
        default=None, repr=lambda c: f"<{len(c)} bytes>" if c else "None"
    )
    cover_mime: str | None = None
    chapters: tuple[Chapter, ...] = ()
    skipped: tuple[Skipped, ...] = ()
