"""Markdown books (.md): parsed with markdown-it-py (CommonMark), so emphasis, links, images,
code and tables are read as a reader sees them, not as the characters that write them.

Headings mark chapters (see `plaintext.chapters_at_headings`); a single level-1 heading at the
top is the book's title. A YAML front matter block (`title`, `author`, `lang`) gives the
metadata. Code blocks and images are not read; a link is read as its text; a table row is read
as its cells, separated by commas. Files without headings fall back to "Chapter …" lines.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import attrs
import yaml

from .markup import Block, blocks, parse_document
from .model import DEFAULT_LANGUAGE, Book, Unreadable
from .plaintext import (
    chapter_levels,
    chapters_at_headings,
    decode_text,
    read_bytes,
    text_blocks,
    title_heading,
)

_FRONT_MATTER = re.compile(r"\A---[ \t]*\n(.{0,65536}?)\n(?:---|\.\.\.)[ \t]*(?:\n|\Z)", re.S)
_FOOTNOTE_REF = re.compile(r"\[\^[^\]\s]{1,40}\]")
_FOOTNOTE_DEFINITION = re.compile(r"\[\^[^\]\s]{1,40}\]:")
_INLINE_TEXT = frozenset({"text", "code_inline"})
_INLINE_BREAKS = frozenset({"softbreak", "hardbreak"})


@attrs.frozen
class FrontMatter:
    title: str | None = None
    author: str | None = None
    language: str | None = None


def read_markdown(path: Path) -> Book:
    """A Markdown file as a book."""
    text = decode_text(read_bytes(path)).replace("\r\n", "\n")
    front, text = front_matter(text)
    found = markdown_blocks(text)
    title, found = title_heading(found)
    title = front.title or title or path.stem.replace("_", " ")
    if not any(block.heading for block in found):
        found = text_blocks("\n\n".join(block.text for block in found))
    chapters = chapters_at_headings(chapter_levels(found), str(path), title)
    if not chapters:
        raise Unreadable("has no text to read")
    return Book(
        title=title,
        author=front.author,
        language=front.language or DEFAULT_LANGUAGE,
        chapters=tuple(chapters),
    )


def front_matter(text: str) -> tuple[FrontMatter, str]:
    """The YAML front matter's metadata and the text after it; a block that is not YAML
    mapping is left as text."""
    match = _FRONT_MATTER.match(text)
    if match is None:
        return FrontMatter(), text
    try:
        data = yaml.safe_load(match.group(1))
    except yaml.YAMLError:
        return FrontMatter(), text
    if not isinstance(data, dict):
        return FrontMatter(), text
    return (
        FrontMatter(
            title=_field(data.get("title")),
            author=_field(data.get("author") or data.get("authors")),
            language=_field(data.get("lang") or data.get("language")),
        ),
        text[match.end() :],
    )


def _field(value: object) -> str | None:
    if isinstance(value, list):
        value = ", ".join(str(item) for item in value if item is not None)
    text = " ".join(str(value).split()) if value is not None else ""
    return text or None


def markdown_blocks(text: str) -> list[Block]:
    """The document's readable blocks; headings keep their level."""
    from markdown_it import MarkdownIt  # loaded only when Markdown is read

    tokens = MarkdownIt("commonmark").enable("table").parse(text)
    return [block for block in _blocks(tokens) if block.text]


def _blocks(tokens: Sequence[Any]) -> Iterator[Block]:
    heading = 0
    row: list[str] | None = None  # the cells of the table row being read
    for token in tokens:
        kind = token.type
        if kind == "heading_open":
            heading = int(token.tag[1:])
        elif kind == "heading_close":
            heading = 0
        elif kind == "tr_open":
            row = []
        elif kind == "tr_close" and row is not None:
            yield Block(", ".join(cell for cell in row if cell))
            row = None
        elif kind == "inline":
            text = _inline(token.children or [])
            if row is not None:
                row.append(text)
            elif not _FOOTNOTE_DEFINITION.match(token.content):
                yield Block(text, heading=heading)
        elif kind == "html_block":
            root = parse_document(f"<html><body>{token.content}</body></html>".encode())
            yield from blocks(root) if root is not None else ()


def _inline(children: Sequence[Any]) -> str:
    parts: list[str] = []
    for child in children:
        if child.type in _INLINE_TEXT:
            parts.append(child.content)
        elif child.type in _INLINE_BREAKS:
            parts.append(" ")
    return " ".join(_FOOTNOTE_REF.sub("", "".join(parts)).split())
