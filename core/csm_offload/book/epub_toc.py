"""An EPUB's table of contents, and its spine's text cut into chapters where the contents point.

The spine gives the reading order; the table of contents (the EPUB 3 navigation document, else
the EPUB 2 NCX) says where chapters start, to the anchor: one XHTML file may hold several
chapters, and one chapter several files. Nested entries (parts holding chapters) all mark
chapters; a part with no text of its own lends its title to its first chapter ("Part One:
Chapter 1") instead of becoming an empty chapter.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterator, Sequence
from urllib.parse import unquote

import attrs
from lxml import etree

from .markup import Block, local_name, safe_xml_parser
from .model import Chapter

_OPS_TYPE = "{http://www.idpf.org/2007/ops}type"


@attrs.frozen
class TocEntry:
    """A contents entry: its label, the file (archive path) and anchor it points at, and how
    deeply it is nested (0: top level)."""

    title: str
    path: str
    fragment: str | None
    depth: int


@attrs.frozen
class SpineDocument:
    """One spine file's archive path and its text blocks."""

    path: str
    blocks: tuple[Block, ...]


def resolve(base_file: str, href: str) -> tuple[str, str | None] | None:
    """An href relative to `base_file` as (archive path, fragment); None for outside links."""
    if "://" in href or href.startswith(("mailto:", "data:")):
        return None
    target, _, fragment = href.partition("#")
    folder = posixpath.dirname(base_file)
    path = posixpath.normpath(posixpath.join(folder, unquote(target))) if target else base_file
    return path.lstrip("/"), (unquote(fragment) or None)


def nav_entries(data: bytes, nav_path: str) -> list[TocEntry]:
    """The entries of an EPUB 3 navigation document's `toc` nav, in order."""
    root = _parse(data)
    if root is None:
        return []
    navs = [el for el in root.iter() if local_name(el) == "nav"]
    toc = next((nav for nav in navs if "toc" in _kinds(nav)), navs[0] if navs else None)
    if toc is None:
        return []
    top = next((el for el in toc.iter() if local_name(el) == "ol"), None)
    return [] if top is None else list(_nav_list(top, nav_path))


def _kinds(element: etree._Element) -> list[str]:
    return f"{element.get(_OPS_TYPE, '')} {element.get('epub:type', '')}".split()


def _nav_list(top: etree._Element, nav_path: str) -> Iterator[TocEntry]:
    # An explicit stack, not recursion: nesting depth is the file's to choose.
    stack: list[tuple[Iterator[etree._Element], int]] = [(iter(top), 0)]
    while stack:
        items, depth = stack[-1]
        item = next(items, None)
        if item is None:
            stack.pop()
            continue
        if local_name(item) != "li":
            continue
        entry = _nav_item(item, nav_path, depth)
        if entry is not None:
            yield entry
        nested = next((child for child in item if local_name(child) == "ol"), None)
        if nested is not None:
            stack.append((iter(nested), depth + 1))


def _nav_item(item: etree._Element, nav_path: str, depth: int) -> TocEntry | None:
    label = next((child for child in item if local_name(child) in ("a", "span")), None)
    if label is None or not (href := label.get("href")):
        return None
    target = resolve(nav_path, href)
    if target is None:
        return None
    return TocEntry(_text(label), target[0], target[1], depth)


def ncx_entries(data: bytes, ncx_path: str) -> list[TocEntry]:
    """The navPoints of an EPUB 2 NCX, in document order."""
    root = _parse(data)
    if root is None:
        return []
    nav_map = next((el for el in root.iter() if local_name(el) == "navmap"), None)
    if nav_map is None:
        return []
    return list(_nav_points(nav_map, ncx_path))


def _nav_points(nav_map: etree._Element, ncx_path: str) -> Iterator[TocEntry]:
    stack: list[tuple[Iterator[etree._Element], int]] = [(iter(nav_map), 0)]
    while stack:
        points, depth = stack[-1]
        point = next(points, None)
        if point is None:
            stack.pop()
            continue
        if local_name(point) != "navpoint":
            continue
        entry = _nav_point(point, ncx_path, depth)
        if entry is not None:
            yield entry
        stack.append((iter(point), depth + 1))


def _nav_point(point: etree._Element, ncx_path: str, depth: int) -> TocEntry | None:
    label = next((child for child in point if local_name(child) == "navlabel"), None)
    content = next((child for child in point if local_name(child) == "content"), None)
    if content is None or not (src := content.get("src")):
        return None
    target = resolve(ncx_path, src)
    if target is None:
        return None
    return TocEntry(_text(label) if label is not None else "", target[0], target[1], depth)


def _parse(data: bytes) -> etree._Element | None:
    try:
        return etree.fromstring(data, safe_xml_parser())
    except etree.XMLSyntaxError:
        return None


def _text(element: etree._Element) -> str:
    return " ".join("".join(element.itertext()).split())


# --- the spine cut at the contents' marks ---------------------------------------------------


@attrs.frozen
class _Mark:
    position: int
    title: str
    depth: int


def split_chapters(
    spine: Sequence[SpineDocument], toc: Sequence[TocEntry], source: str, front_title: str
) -> list[Chapter]:
    """The spine's blocks as chapters: cut where the contents point, or one per spine file
    when the contents point at none of them. Text before the first entry (a title page, a
    dedication) is a chapter titled by its first heading, else `front_title`."""
    flat = [block for document in spine for block in document.blocks]
    marks = _marks(spine, toc)
    if not marks:
        marks = _file_marks(spine)
    chapters: list[Chapter] = []
    if marks and marks[0].position > 0:
        heading = next((block.text for block in flat[: marks[0].position] if block.heading), "")
        marks.insert(0, _Mark(0, heading or front_title, 0))
    carried = ""
    for index, mark in enumerate(marks):
        end = marks[index + 1].position if index + 1 < len(marks) else len(flat)
        title = ": ".join(part for part in (carried, mark.title) if part)
        carried = ""
        chapter = _chapter(flat[mark.position : end], title, len(chapters) + 1, source)
        if chapter is not None:
            chapters.append(chapter)
        elif index + 1 < len(marks) and marks[index + 1].depth > mark.depth:
            carried = title  # a part with no text of its own: its title leads its first chapter
    return chapters


def _marks(spine: Sequence[SpineDocument], toc: Sequence[TocEntry]) -> list[_Mark]:
    starts: dict[str, int] = {}
    anchors: dict[tuple[str, str | None], int] = {}
    position = 0
    for document in spine:
        starts.setdefault(document.path, position)
        for block in document.blocks:
            for anchor in block.anchors:
                anchors.setdefault((document.path, anchor), position)
            position += 1
    marks: list[_Mark] = []
    seen: set[tuple[int, str]] = set()
    for entry in toc:
        if entry.path not in starts:
            continue  # a contents entry for a file outside the reading order
        at = anchors.get((entry.path, entry.fragment)) if entry.fragment else starts[entry.path]
        if at is None:
            continue  # it points into what is not read (notes, an index) or nowhere
        if (at, entry.title) not in seen:
            seen.add((at, entry.title))
            marks.append(_Mark(at, entry.title, entry.depth))
    # The spine's order wins over the contents' where they disagree; ties keep contents order.
    return sorted(marks, key=lambda mark: mark.position)


def _file_marks(spine: Sequence[SpineDocument]) -> list[_Mark]:
    marks: list[_Mark] = []
    position = 0
    for document in spine:
        if document.blocks:
            marks.append(_Mark(position, "", 0))
        position += len(document.blocks)
    return marks


def _chapter(blocks: Sequence[Block], title: str, number: int, source: str) -> Chapter | None:
    if not title:
        title = next((block.text for block in blocks if block.heading), "") or f"Chapter {number}"
    body = _without_title(blocks, title)
    if not body:
        return None
    return Chapter(title, "\n\n".join(block.text for block in body), source)


def _without_title(blocks: Sequence[Block], title: str) -> Sequence[Block]:
    """The blocks after the leading headings that only repeat the chapter's title."""
    key = _key(title)
    start = 0
    while start < len(blocks) and blocks[start].heading and _key(blocks[start].text) in key:
        start += 1
    return blocks[start:]


def _key(text: str) -> str:
    return "".join(char for char in text.casefold() if char.isalnum())
