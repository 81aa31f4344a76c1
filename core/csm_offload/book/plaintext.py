"""Plain-text books (.txt): the text decoded, Project Gutenberg's licence wrapper left out, and
chapters where a line such as "Chapter 3", "CHAPTER IV. The Pool of Tears" or "Prologue"
stands as its own paragraph.

The cutting at headings is shared with Markdown: headings of the two top levels (parts, then
chapters) start chapters; a part with no text of its own lends its title to its first chapter.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import attrs

from .markup import Block
from .model import DEFAULT_LANGUAGE, Book, Chapter, Unreadable

#: A text file larger than this is not a book (the longest novels are a few MB).
MAX_TEXT_BYTES = 64 * 1024 * 1024
_PARAGRAPH = re.compile(r"\n[ \t\f\v\r]*\n")
_NUMBER = (
    r"(?i:\d{1,4}|[ivxlcdm]{1,10}|one|two|three|four|five|six|seven|eight|nine|ten|eleven|"
    r"twelve|thirteen|fourteen|fifteen|sixteen|seventeen|eighteen|nineteen|"
    r"(?:twenty|thirty|forty|fifty|sixty|seventy|eighty|ninety)(?:[- ](?:one|two|three|four|"
    r"five|six|seven|eight|nine))?|first|second|third|fourth|fifth|sixth|seventh|eighth|"
    r"ninth|tenth|last)"
)
_PART_WORDS = r"(?i:part|book|volume|teil|partie|parte|livre|libro|tome|часть|książka)"
_CHAPTER_WORDS = (
    r"(?i:chapter|kapitel|chapitre|cap[ií]tulo|capitolo|hoofdstuk|rozdzia[łl]|глава|letter|canto)"
)
_STANDALONE = (
    r"(?i:prologue|epilogue|preface|foreword|introduction|afterword|interlude|appendix|"
    r"prolog|epilog|vorwort|nachwort|pr[ée]face|[ée]pilogue|pr[óo]logo|ep[íi]logo)"
)
#: What may follow the number: a mark and a title, or a title in capitals ("Chapter 3 The
#: Fall"); never a sentence ("Chapter 3 was the best."). Each word needs a space before it, so
#: no line can be split into words in more than one way (no backtracking blow-up).
_TITLE = r"(?:\s*[.:—–-]\s*.*|(?:\s+[A-Z0-9\"'“‘(]\S*)+)?"
_PART_LINE = re.compile(rf"{_PART_WORDS}\s+{_NUMBER}\b{_TITLE}")
_CHAPTER_LINE = re.compile(rf"(?:{_CHAPTER_WORDS}\s+{_NUMBER}\b|{_STANDALONE}\b){_TITLE}")
_MAX_HEADING = 80
_BOMS = ((b"\xef\xbb\xbf", "utf-8"), (b"\xff\xfe", "utf-16"), (b"\xfe\xff", "utf-16"))
_TITLE_MARKS = (".", ":", "—", "–", "-")
_SENTENCE_MARKS = (".", "!", "?", ",", ";", ":", "…")
_GUTENBERG_START = re.compile(r"^\*{3}\s*START OF (?:THE|THIS) PROJECT GUTENBERG.*$", re.M | re.I)
_GUTENBERG_END = re.compile(r"^\*{3}\s*END OF (?:THE|THIS) PROJECT GUTENBERG.*$", re.M | re.I)
_GUTENBERG_FIELD = re.compile(r"^(Title|Author|Language):[ \t]*(.+)$", re.M)
_LANGUAGE_NAMES = {
    "english": "en",
    "french": "fr",
    "german": "de",
    "spanish": "es",
    "italian": "it",
    "portuguese": "pt",
    "dutch": "nl",
    "finnish": "fi",
    "swedish": "sv",
    "danish": "da",
    "norwegian": "no",
    "polish": "pl",
    "russian": "ru",
    "czech": "cs",
    "hungarian": "hu",
    "latin": "la",
    "greek": "el",
    "chinese": "zh",
    "japanese": "ja",
}


def read_bytes(path: Path, limit: int = MAX_TEXT_BYTES) -> bytes:
    """A file's bytes, refused when over `limit` (a mistaken disk image is not a book)."""
    try:
        if path.stat().st_size > limit:
            raise Unreadable(f"is over {limit // 2**20} MB, more than a book holds")
        return path.read_bytes()
    except OSError as exc:
        raise Unreadable(f"cannot be read: {exc.strerror or exc}") from None


def decode_text(data: bytes) -> str:
    """The text in `data`: a BOM says the encoding, else UTF-8, else Windows-1252 (the usual
    encoding of older plain-text books). Binary data is refused."""
    for bom, codec in (
        (b"\xef\xbb\xbf", "utf-8"),
        (b"\xff\xfe", "utf-16"),
        (b"\xfe\xff", "utf-16"),
    ):
        if data.startswith(bom):
            return data.decode(codec, "replace").lstrip("\ufeff")
    if b"\x00" in data[:65536]:
        raise Unreadable("is not text (it holds binary data); give a .txt, .md, .epub or .pdf")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("cp1252", "replace")


def read_plain(path: Path) -> Book:
    """A .txt file as a book; Project Gutenberg's header gives title, author and language."""
    text = decode_text(read_bytes(path)).replace("\r\n", "\n").replace("\r", "\n")
    fields = _gutenberg_fields(text)
    text = _gutenberg_body(text)
    title = fields.get("title") or path.stem.replace("_", " ")
    chapters = chapters_at_headings(text_blocks(text), str(path), title)
    if not chapters:
        raise Unreadable("has no text to read")
    return Book(
        title=title,
        author=fields.get("author"),
        language=_LANGUAGE_NAMES.get(fields.get("language", "").casefold(), DEFAULT_LANGUAGE),
        chapters=tuple(chapters),
    )


def _gutenberg_fields(text: str) -> dict[str, str]:
    start = _GUTENBERG_START.search(text)
    if start is None:
        return {}
    header = text[: start.start()]
    return {key.lower(): " ".join(value.split()) for key, value in _GUTENBERG_FIELD.findall(header)}


def _gutenberg_body(text: str) -> str:
    """The book between Project Gutenberg's start and end lines (the licence is not read)."""
    start = _GUTENBERG_START.search(text)
    if start is not None:
        text = text[start.end() :]
    end = _GUTENBERG_END.search(text)
    return text[: end.start()] if end is not None else text


def text_blocks(text: str) -> list[Block]:
    """Paragraphs as blocks; a paragraph that is a part line is a level-1 heading, a chapter
    line level 2. A chapter line's title may continue on its next line ("CHAPTER I." then
    "Down the Rabbit-Hole"), or in the next paragraph when that is one short, unpunctuated line."""
    out: list[Block] = []
    raw = [part.strip() for part in _PARAGRAPH.split(text)]
    paragraphs = [part for part in raw if part]
    index = 0
    while index < len(paragraphs):
        lines = paragraphs[index].splitlines()
        level = heading_level(lines[0]) if len(lines) <= 2 else 0
        if level and len(lines) == 2 and len(lines[1].strip()) > _MAX_HEADING:
            level = 0
        if not level:
            out.append(Block(" ".join(paragraphs[index].split())))
            index += 1
            continue
        title = _join_title([line.strip() for line in lines])
        following = paragraphs[index + 1] if index + 1 < len(paragraphs) else ""
        if len(lines) == 1 and _is_subtitle(following):
            title = _join_title([title, following.strip()])
            index += 1
        out.append(Block(title, heading=level))
        index += 1
    return out


def heading_level(line: str) -> int:
    """1 for a part line, 2 for a chapter line, 0 for anything else."""
    line = " ".join(line.split())
    if not line or len(line) > _MAX_HEADING:
        return 0
    if _PART_LINE.fullmatch(line):
        return 1
    return 2 if _CHAPTER_LINE.fullmatch(line) else 0


def _is_subtitle(paragraph: str) -> bool:
    text = paragraph.strip()
    return (
        bool(text)
        and "\n" not in text
        and len(text) <= _MAX_HEADING
        and not text.endswith(_SENTENCE_MARKS)
        and not heading_level(text)
    )


def _join_title(lines: Sequence[str]) -> str:
    title = lines[0]
    for line in lines[1:]:
        title = (
            f"{title} {line}" if title.endswith((".", ":", "—", "–", "-")) else f"{title}: {line}"
        )
    return " ".join(title.split())


def chapters_at_headings(blocks: Sequence[Block], source: str, front_title: str) -> list[Chapter]:
    """Chapters cut at headings of levels 1 and 2; deeper headings stay in the text. Text
    before the first heading is a chapter titled `front_title`; a heading with no text before
    the next one is dropped, unless it is a part whose title then leads its first chapter."""
    chapters: list[Chapter] = []
    title, level, body = front_title, 0, []
    carried = ""
    for block in [*blocks, Block("", heading=1)]:  # the sentinel flushes the last chapter
        if not block.heading or block.heading > 2:
            body.append(block.text)
            continue
        if body:
            full = ": ".join(part for part in (carried, title) if part)
            chapters.append(Chapter(full, "\n\n".join(body), source))
            carried = ""
        elif level and level < block.heading:
            carried = ": ".join(part for part in (carried, title) if part)
        else:
            carried = ""
        title, level, body = block.text, block.heading, []
    return chapters


def title_heading(found: list[Block]) -> tuple[str | None, list[Block]]:
    """A lone level-1 heading before any other heading is the book's title: that title, and
    the blocks without it."""
    level_one = [index for index, block in enumerate(found) if block.heading == 1]
    first = next((index for index, block in enumerate(found) if block.heading), None)
    if first is not None and level_one == [first]:
        return found[first].text, found[:first] + found[first + 1 :]
    return None, found


def are_parts(own_text: Sequence[bool]) -> bool:
    """Whether top-level entries are parts rather than chapters: `own_text` says, for each one
    that has deeper entries under it, whether it has text of its own before the first of them.
    Parts are mostly bare titles; chapters with sections have text before their first one."""
    return bool(own_text) and 2 * sum(not own for own in own_text) > len(own_text)


def chapter_levels(found: Sequence[Block]) -> list[Block]:
    """Headings renumbered for `chapters_at_headings`: the shallowest level present makes
    chapters, unless its headings are parts (see `are_parts`): then it makes parts (1) and the
    next level chapters (2). Deeper headings become 3 and stay in the text."""
    levels = sorted({block.heading for block in found if block.heading})
    if not levels:
        return list(found)
    rank = {levels[0]: 1}
    if len(levels) > 1 and are_parts(_own_text(found, levels[0])):
        rank[levels[1]] = 2
    return [
        attrs.evolve(block, heading=rank.get(block.heading, 3)) if block.heading else block
        for block in found
    ]


def _own_text(found: Sequence[Block], top: int) -> list[bool]:
    """For each `top`-level heading with a deeper heading under it: whether text comes first."""
    out: list[bool] = []
    for index, block in enumerate(found):
        if block.heading != top:
            continue
        following = index + 1
        while following < len(found) and not found[following].heading:
            following += 1
        if following < len(found) and found[following].heading > top:
            out.append(following > index + 1)
    return out
