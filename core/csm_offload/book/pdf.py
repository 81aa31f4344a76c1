"""PDF books through pypdf: the text layer page by page, chapters from the outline (bookmarks)
when the file has one, and the page furniture (running heads, page numbers) left out.

A PDF has no paragraphs, only lines placed on pages, so they are rebuilt: a line that ends a
sentence well short of the page's usual line length ends its paragraph, a word hyphenated
across lines is joined, and a paragraph runs on across a page break.
"""

from __future__ import annotations

import re
import statistics
import struct
import zlib
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from .model import DEFAULT_LANGUAGE, Book, Chapter, Unreadable
from .plaintext import are_parts

#: Outline levels read: parts and their chapters (`page_chapters` decides which make chapters);
#: sections stay inside their chapter.
CHAPTER_DEPTH = 2
#: A head or foot line seen on at least this share of pages (and on 3 or more) is furniture.
_FURNITURE_SHARE = 0.4
_MIN_REPEATS = 3
#: A title found inside an edge line marks a running head when it is this long at least (in
#: letters and digits), and the line adds at most `_HEAD_PREFIX` of them ("Chapter 12").
_MIN_HEAD = 8
_HEAD_PREFIX = 12
_EDGE_LINES = 2
_PAGE_NUMBER = re.compile(
    r"[\W_]*(?:page\s+)?(?:\d{1,5}|[ivxlcdm]{1,8})(?:\s*(?:of|/)\s*\d{1,5})?[\W_]*", re.I
)
#: A page number at either end of a running head: "12 Chapter Two", "Chapter Two 13".
_EDGE_NUMBER = re.compile(r"^\d{1,5}\s+|\s+\d{1,5}$")
_SENTENCE_END = re.compile(r"[.!?…:][\"'”’)\]]*\Z")
_SHORT_LINE = 0.8


def read_pdf(path: Path) -> Book:
    """The PDF at `path` as a book, or `Unreadable` saying why not."""
    import pypdf  # loaded only when a PDF is read

    # pypdf raises many kinds of error on malformed files; each means the same to the reader.
    damaged = (
        *(pypdf.errors.PyPdfError, ValueError, KeyError, TypeError, AttributeError),
        *(IndexError, RecursionError, NotImplementedError, struct.error, zlib.error, OSError),
    )
    try:
        reader = pypdf.PdfReader(path)
        _decrypt(reader, pypdf)
        pages = [_lines(page.extract_text() or "") for page in reader.pages]
        marks = _outline_marks(reader)
        info = reader.metadata
        language = _text(reader.root_object.get("/Lang"))
    except Unreadable:
        raise
    except damaged as exc:
        raise Unreadable(f"is not a readable PDF ({type(exc).__name__}: {exc})") from None
    pages = strip_furniture(pages, [title for _page, title, _depth in marks])
    if not any(pages):
        raise Unreadable(
            "has no text layer (its pages are images, as in a scan); run OCR on it first "
            "(e.g. ocrmypdf) and give the result"
        )
    title = _text(info.title if info else None) or path.stem
    return Book(
        title=title,
        author=_text(info.author if info else None) or None,
        language=language or DEFAULT_LANGUAGE,
        chapters=tuple(page_chapters(pages, marks, str(path), title)),
    )


def _decrypt(reader: Any, pypdf: Any) -> None:
    if not reader.is_encrypted:
        return
    try:
        # Many PDFs are encrypted only to restrict printing, with an empty password to open.
        opened = reader.decrypt("")
    except pypdf.errors.DependencyError:
        raise Unreadable(
            "is encrypted with AES, which needs the cryptography package: pip install cryptography"
        ) from None
    if opened == pypdf.PasswordType.NOT_DECRYPTED:
        raise Unreadable(
            "is encrypted with a password; remove it first (e.g. qpdf --decrypt "
            "--password=PASSWORD in.pdf out.pdf) and give the decrypted file"
        )


def _lines(text: str) -> list[str]:
    return [line for raw in text.splitlines() if (line := " ".join(raw.split()))]


def _text(value: object) -> str:
    return " ".join(str(value).split()) if value is not None else ""


def _outline_marks(reader: Any) -> list[tuple[int, str, int]]:
    """(page index, title, depth) of the outline's entries down to `CHAPTER_DEPTH` levels."""
    marks: list[tuple[int, str, int]] = []
    stack: list[tuple[Iterator[Any], int]] = [(iter(reader.outline), 0)]
    while stack:
        entries, depth = stack[-1]
        entry = next(entries, None)
        if entry is None:
            stack.pop()
        elif isinstance(entry, list):
            if depth + 1 < CHAPTER_DEPTH:
                stack.append((iter(entry), depth + 1))
        else:
            page = reader.get_destination_page_number(entry)
            if page is not None and page >= 0:
                marks.append((page, _text(entry.title), depth))
    return marks


def strip_furniture(pages: Sequence[list[str]], titles: Sequence[str] = ()) -> list[list[str]]:
    """The pages without running heads and feet: at a page's top or foot, a page number, an
    outline title (a running chapter head), or a line that repeats (numbers aside) on many
    pages."""
    keys = Counter(key for page in pages for key in {_key(line) for line in _edges(page)})
    share = _FURNITURE_SHARE * len(pages)
    repeated = {
        key
        for key, count in keys.items()
        # A head that carries the page number ("12 · Chapter Two") repeats only within its
        # chapter, so it needs no share of the whole book.
        if count >= _MIN_REPEATS and (count >= share or key.startswith("#") or key.endswith("#"))
    }
    heads = {_letters(title) for title in titles} - {""}
    out: list[list[str]] = []
    for page in pages:
        edge = set(range(min(_EDGE_LINES, len(page))))
        edge |= set(range(max(0, len(page) - _EDGE_LINES), len(page)))
        out.append(
            [
                line
                for index, line in enumerate(page)
                if index not in edge or not _is_furniture(line, repeated, heads)
            ]
        )
    return out


def _is_furniture(line: str, repeated: set[str], heads: set[str]) -> bool:
    if _PAGE_NUMBER.fullmatch(line) or _key(line) in repeated:
        return True
    letters = _letters(_EDGE_NUMBER.sub("", line))
    # A running chapter head: the outline's title, perhaps after "Chapter 2:".
    return letters in heads or any(
        head in letters and len(letters) <= len(head) + _HEAD_PREFIX
        for head in heads
        if len(head) >= _MIN_HEAD
    )


def _edges(page: Sequence[str]) -> list[str]:
    return [*page[:_EDGE_LINES], *page[-_EDGE_LINES:]]


def _key(line: str) -> str:
    return re.sub(r"\d+", "#", line.casefold())


Mark = tuple[int, str, int]  # (page index, title, depth)


def page_chapters(
    pages: Sequence[list[str]], marks: Sequence[Mark], source: str, title: str
) -> list[Chapter]:
    """Chapters as page ranges between outline entries: top-level entries, or parts and their
    chapters when the top level holds parts (`are_parts`). Entries on the same page share a
    chapter, titles joined; a part with no text of its own leads its first chapter's title.
    Without an outline the whole text is one chapter titled `title`."""
    marks = sorted((mark for mark in marks if 0 <= mark[0] < len(pages)), key=lambda m: m[0])
    depth = 1 if are_parts(_own_text(pages, marks)) else 0
    starts: dict[int, list[Mark]] = {}
    for mark in marks:
        if mark[2] <= depth:
            starts.setdefault(mark[0], []).append(mark)
    if not starts or min(starts) > 0:
        starts[0] = [(0, title, 0), *starts.get(0, [])]
    bounds = sorted(starts)
    chapters: list[Chapter] = []
    carried: list[str] = []
    for index, first in enumerate(bounds):
        last = bounds[index + 1] if index + 1 < len(bounds) else len(pages)
        names = [*carried, *_titles(starts[first])]
        lines = _without_title([line for page in pages[first:last] for line in page], names)
        text = "\n\n".join(paragraphs(lines))
        carried = []
        if text:
            chapter_title = ": ".join(names) or f"Chapter {len(chapters) + 1}"
            chapters.append(Chapter(chapter_title, text, source))
        elif last < len(pages) and min(m[2] for m in starts[last]) > starts[first][-1][2]:
            carried = names
    return chapters


def _titles(marks: Sequence[Mark]) -> list[str]:
    """The titles of the entries starting on one page: the first at each depth (a part and its
    first chapter), not every section that happens to start there."""
    seen: set[int] = set()
    titles: list[str] = []
    for _, name, depth in marks:
        if name and depth not in seen:
            seen.add(depth)
            titles.append(name)
    return titles


def _own_text(pages: Sequence[list[str]], marks: Sequence[Mark]) -> list[bool]:
    """For each top-level entry with a child entry under it: whether its pages before the
    child's hold text besides its title."""
    out: list[bool] = []
    for index, (page, name, depth) in enumerate(marks):
        child = marks[index + 1] if index + 1 < len(marks) else None
        if depth != 0 or child is None or child[2] == 0:
            continue
        lines = [line for sheet in pages[page : child[0]] for line in sheet]
        out.append(bool(_without_title(lines, [name])))
    return out


def _without_title(lines: list[str], names: Sequence[str]) -> list[str]:
    """The lines after the first few that only repeat the chapter's title (its heading)."""
    title = _letters(" ".join(names))
    start = 0
    while start < min(len(lines), _EDGE_LINES + 1) and (key := _letters(lines[start])):
        if key not in title:
            break
        start += 1
    return lines[start:]


def _letters(text: str) -> str:
    return "".join(char for char in text.casefold() if char.isalnum())


def paragraphs(lines: Sequence[str]) -> list[str]:
    """Lines rebuilt into paragraphs: a line well short of the usual length ends its paragraph
    when it ends a sentence, or when it looks like a heading (no closing punctuation and a
    capitalised line after it); a word hyphenated at a line end is joined."""
    if not lines:
        return []
    typical = statistics.median(len(line) for line in lines)
    out: list[str] = []
    current = ""
    for index, line in enumerate(lines):
        if current.endswith("-") and current[-2:-1].isalpha() and line[:1].islower():
            current = current[:-1] + line
        else:
            current = f"{current} {line}" if current else line
        following = lines[index + 1] if index + 1 < len(lines) else ""
        if len(line) < _SHORT_LINE * typical and _ends_paragraph(line, following):
            out.append(current)
            current = ""
    if current:
        out.append(current)
    return out


def _ends_paragraph(line: str, following: str) -> bool:
    if _SENTENCE_END.search(line):
        return True
    return not line.endswith((",", ";", "-")) and following[:1].isupper()
