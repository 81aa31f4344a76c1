"""Sources to books: files and URLs to one book, or a urls.csv to one book per group.

A source that cannot be read becomes a `Skipped` record with its reason and the rest of the
book still builds; the caller decides the exit code from `Book.skipped`. What is wrong with the
request itself (a CSV without its columns, a group it does not hold) is a `UserError`.
"""

from __future__ import annotations

import asyncio
import csv
import io
from collections.abc import Callable, Sequence
from pathlib import Path

import attrs
import httpx

from ..errors import UserError
from .epub import read_epub
from .markdown import read_markdown
from .markup import blocks, document_language, document_title, parse_document
from .model import DEFAULT_LANGUAGE, Book, Skipped, Unreadable
from .pdf import read_pdf
from .plaintext import (
    chapter_levels,
    chapters_at_headings,
    read_bytes,
    read_plain,
    title_heading,
)
from .web import WebLimits, read_web_chapter

#: A urls.csv larger than this is not a list of chapters.
MAX_CSV_BYTES = 16 * 1024 * 1024
_URL_PREFIXES = ("http://", "https://")


def read_html_file(path: Path) -> Book:
    """A local HTML file read whole (a saved book or document: nothing is cut as boilerplate),
    chapters at its headings as in Markdown."""
    root = parse_document(read_bytes(path))
    if root is None:
        raise Unreadable("is not HTML that can be parsed")
    heading, found = title_heading(blocks(root))
    title = document_title(root) or heading or path.stem.replace("_", " ")
    chapters = chapters_at_headings(chapter_levels(found), str(path), title)
    if not chapters:
        raise Unreadable("has no text to read")
    return Book(
        title=title,
        language=document_language(root) or DEFAULT_LANGUAGE,
        chapters=tuple(chapters),
    )


#: The file readers, by suffix (lower case).
READERS: dict[str, Callable[[Path], Book]] = {
    ".txt": read_plain,
    ".text": read_plain,
    ".md": read_markdown,
    ".markdown": read_markdown,
    ".epub": read_epub,
    ".pdf": read_pdf,
    ".html": read_html_file,
    ".htm": read_html_file,
    ".xhtml": read_html_file,
}


def is_url(source: str) -> bool:
    return source.strip().lower().startswith(_URL_PREFIXES)


def read_file(path: Path) -> Book:
    """One file as a book (its own metadata and chapters), or `Unreadable`."""
    reader = READERS.get(path.suffix.lower())
    if reader is None:
        known = ", ".join(sorted(READERS))
        raise Unreadable(f"has an unknown file type {path.suffix or '(none)'!r}; give {known}")
    if not path.is_file():
        raise Unreadable("does not exist" if not path.exists() else "is not a file")
    return reader(path)


async def read_book(
    sources: Sequence[str],
    http: httpx.AsyncClient | None = None,
    *,
    limits: WebLimits | None = None,
) -> Book:
    """Files and URLs, in order, as one book: its title, author, language and cover are the
    first source's that has them; each URL is one chapter. Unreadable sources are skipped."""
    if not sources:
        raise UserError("no sources given; give text, Markdown, EPUB, PDF or HTML files, or URLs")
    limits = limits or WebLimits()
    urls = [source for source in sources if is_url(source)]
    pages = iter(await _read_urls(http, [(url, None) for url in urls], limits))
    parts: list[Book | Skipped] = []
    for source in sources:
        parts.append(next(pages) if is_url(source) else await _read_file_part(source))
    return _merge(parts, fallback_title=_fallback_title(sources))


async def _read_file_part(source: str) -> Book | Skipped:
    try:
        # A large PDF takes seconds to read: off the event loop, which may be running jobs.
        return await asyncio.to_thread(read_file, Path(source))
    except Unreadable as exc:
        return Skipped(source, str(exc))


def _fallback_title(sources: Sequence[str]) -> str:
    first = sources[0]
    return first if is_url(first) else Path(first).stem.replace("_", " ")


def _merge(parts: Sequence[Book | Skipped], fallback_title: str) -> Book:
    books = [part for part in parts if isinstance(part, Book)]
    with_cover = next((book for book in books if book.cover is not None), None)
    return Book(
        title=books[0].title if books else fallback_title,
        author=next((book.author for book in books if book.author), None),
        language=books[0].language if books else DEFAULT_LANGUAGE,
        cover=with_cover.cover if with_cover else None,
        cover_mime=with_cover.cover_mime if with_cover else None,
        chapters=tuple(chapter for book in books for chapter in book.chapters),
        skipped=tuple(part for part in parts if isinstance(part, Skipped)),
    )


async def _read_urls(
    http: httpx.AsyncClient | None,
    wanted: Sequence[tuple[str, str | None]],
    limits: WebLimits,
) -> list[Book | Skipped]:
    """Each (url, title) as a one-chapter book or a `Skipped`, in order; fetched
    `limits.concurrency` at a time."""
    if not wanted:
        return []
    if http is None:
        async with httpx.AsyncClient() as own:
            return await _read_urls(own, wanted, limits)
    gate = asyncio.Semaphore(limits.concurrency)

    async def one(url: str, title: str | None) -> Book | Skipped:
        async with gate:
            return await _read_url(http, url.strip(), title, limits)

    # A task group, not gather: should one fetch fail unexpectedly, the others are cancelled.
    async with asyncio.TaskGroup() as group:
        tasks = [group.create_task(one(url, title)) for url, title in wanted]
    return [task.result() for task in tasks]


async def _read_url(
    http: httpx.AsyncClient, url: str, title: str | None, limits: WebLimits
) -> Book | Skipped:
    try:
        chapter, language = await read_web_chapter(http, url, limits, title)
    except Unreadable as exc:
        return Skipped(url, str(exc))
    return Book(title=chapter.title, language=language or DEFAULT_LANGUAGE, chapters=(chapter,))


# --- urls.csv ---------------------------------------------------------------------------------


@attrs.frozen
class UrlRow:
    """One line of urls.csv: a chapter's URL, the book (group) it belongs to, and the chapter
    title that overrides the page's own (None: use the page's)."""

    url: str
    group: str
    title: str | None = None


def parse_url_table(text: str, name: str = "urls.csv") -> list[UrlRow]:
    """The rows of a urls.csv (columns `url,group[,title]`, with or without that header line;
    blank lines and lines starting with # are ignored)."""
    rows = [
        (number, row)
        for number, row in _csv_rows(text, name)
        if any(cell.strip() for cell in row) and not row[0].lstrip().startswith("#")
    ]
    if not rows:
        raise UserError(f"{name} has no rows; give one line per chapter: url,group[,title]")
    columns = _columns(rows[0][1], name)
    if columns is not None:
        rows = rows[1:]
    columns = columns or {"url": 0, "group": 1, "title": 2}
    return [_row(number, row, columns, name) for number, row in rows]


def _csv_rows(text: str, name: str) -> list[tuple[int, list[str]]]:
    """Each record with the line it starts on (a quoted cell may span lines)."""
    reader = csv.reader(io.StringIO(text, newline=""))
    rows: list[tuple[int, list[str]]] = []
    start = 1
    try:
        for row in reader:
            rows.append((start, row))
            start = reader.line_num + 1
    except csv.Error as exc:
        raise UserError(f"{name} line {reader.line_num} is not valid CSV ({exc})") from None
    return rows


def _columns(header: list[str], name: str) -> dict[str, int] | None:
    """The header's column positions, or None when the first line is data."""
    cells = [cell.strip().lower() for cell in header]
    if "url" not in cells:
        return None
    if "group" not in cells:
        raise UserError(f"{name} has no 'group' column; its header must be url,group[,title]")
    return {key: cells.index(key) for key in ("url", "group", "title") if key in cells}


def _row(number: int, row: list[str], columns: dict[str, int], name: str) -> UrlRow:
    def cell(key: str) -> str:
        index = columns.get(key)
        return row[index].strip() if index is not None and index < len(row) else ""

    url, group = cell("url"), cell("group")
    if not url:
        raise UserError(f"{name} line {number} has no URL; each line is url,group[,title]")
    if not group:
        raise UserError(
            f"{name} line {number} has no group; add the book's group after the URL "
            "(url,group[,title])"
        )
    return UrlRow(url, group, cell("title") or None)


def read_url_table(path: Path) -> list[UrlRow]:
    """urls.csv from disk (UTF-8), parsed."""
    try:
        if path.stat().st_size > MAX_CSV_BYTES:
            raise UserError(f"{path} is over {MAX_CSV_BYTES // 2**20} MB; it should list URLs")
        data = path.read_bytes()
    except OSError as exc:
        raise UserError(f"{path} cannot be read: {exc.strerror or exc}") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise UserError(f"{path} is not UTF-8 text; save it as UTF-8 CSV") from None
    return parse_url_table(text, str(path))


def select_groups(
    rows: Sequence[UrlRow], groups: Sequence[str] | None, name: str = "urls.csv"
) -> dict[str, list[UrlRow]]:
    """The rows of each wanted group (all groups, in order of first appearance, when `groups`
    is None or empty); a group the table does not hold is a `UserError`."""
    by_group: dict[str, list[UrlRow]] = {}
    for row in rows:
        by_group.setdefault(row.group, []).append(row)
    wanted = [group.strip() for group in groups or () if group.strip()] or list(by_group)
    missing = [group for group in wanted if group not in by_group]
    if missing:
        known = ", ".join(by_group) or "none"
        raise UserError(
            f"group {', '.join(missing)} is not in {name} (its groups: {known}); check --groups"
        )
    return {group: by_group[group] for group in dict.fromkeys(wanted)}


async def read_url_groups(
    csv_path: Path,
    groups: Sequence[str] | None = None,
    http: httpx.AsyncClient | None = None,
    *,
    limits: WebLimits | None = None,
) -> tuple[Book, ...]:
    """One book per group of urls.csv, titled by the group, each URL a chapter (its CSV title
    overriding the page's); unreadable URLs are in each book's `skipped`."""
    selected = select_groups(read_url_table(csv_path), groups, str(csv_path))
    limits = limits or WebLimits()
    wanted = [(row.url, row.title) for rows in selected.values() for row in rows]
    results = iter(await _read_urls(http, wanted, limits))
    books: list[Book] = []
    for group, rows in selected.items():
        parts = [next(results) for _ in rows]
        merged = _merge(parts, fallback_title=group)
        books.append(attrs.evolve(merged, title=group, author=None))
    return tuple(books)
