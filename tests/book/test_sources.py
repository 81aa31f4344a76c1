"""Sources to books: plain text and Markdown chapter detection, local HTML, the dispatch by
file type, merging several sources, and urls.csv parsing (property-tested)."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from csm_offload.book import (
    Book,
    Skipped,
    UrlRow,
    parse_url_table,
    read_book,
    read_file,
    select_groups,
)
from csm_offload.book.markdown import front_matter, markdown_blocks
from csm_offload.book.markup import Block
from csm_offload.book.plaintext import chapters_at_headings, decode_text, heading_level, text_blocks
from csm_offload.errors import UserError

from .conftest import EpubSpec

GUTENBERG = """\ufeffThe Project Gutenberg eBook of The Small Adventure

Title: The Small Adventure

Author: Nell Novelist

Language: English

*** START OF THE PROJECT GUTENBERG EBOOK THE SMALL ADVENTURE ***

Produced by volunteers.

CONTENTS

 CHAPTER I.     Down the Lane

 CHAPTER II.    The Pool


CHAPTER I.
Down the Lane

It was a _fine_ morning, and the lane ran down to the water.
It ran past the mill.

She walked on.


CHAPTER II.

The Pool

The pool was deep and still.

*** END OF THE PROJECT GUTENBERG EBOOK THE SMALL ADVENTURE ***

Licence text that no one should hear.
"""


def _titles_and_texts(book: Book) -> list[tuple[str, str]]:
    return [(chapter.title, chapter.text) for chapter in book.chapters]


async def test_a_gutenberg_text_gives_its_chapters_and_metadata(tmp_path: Path):
    path = tmp_path / "small.txt"
    path.write_text(GUTENBERG, encoding="utf-8")
    book = await read_book([str(path)])
    assert (book.title, book.author, book.language) == (
        "The Small Adventure",
        "Nell Novelist",
        "en",
    )
    assert _titles_and_texts(book) == [
        ("The Small Adventure", "Produced by volunteers.\n\nCONTENTS"),
        (
            "CHAPTER I. Down the Lane",
            "It was a _fine_ morning, and the lane ran down to the water. It ran past the mill."
            "\n\nShe walked on.",
        ),
        ("CHAPTER II. The Pool", "The pool was deep and still."),
    ]
    assert "Licence" not in str(book)


@pytest.mark.parametrize(
    ("line", "level"),
    [
        ("Chapter 3", 2),
        ("CHAPTER IV. The Pool of Tears", 2),
        ("Chapter Twenty-One", 2),
        ("Chapter 3: A Title", 2),
        ("Chapter 3 The Fall", 2),
        ("Prologue", 2),
        ("Epilogue: Years Later", 2),
        ("Kapitel 7", 2),
        ("PART ONE", 1),
        ("Book II", 1),
        ("Chapter 3 was the best of them.", 0),
        ("Part of the problem was the rain.", 0),
        ("Introduction to the theory", 0),
        ("The chapter ended.", 0),
        ("", 0),
        ("Chapter 1 " + "Word " * 30, 0),
    ],
)
def test_chapter_lines(line: str, level: int):
    assert heading_level(line) == level


def test_parts_lend_their_title_to_their_first_chapter():
    text = (
        "PART ONE\n\nChapter 1\n\nFirst.\n\nChapter 2\n\nSecond.\n\nPART TWO\n\nChapter 3\n\nThird."
    )
    chapters = chapters_at_headings(text_blocks(text), "x.txt", "Front")
    assert [(c.title, c.text) for c in chapters] == [
        ("PART ONE: Chapter 1", "First."),
        ("Chapter 2", "Second."),
        ("PART TWO: Chapter 3", "Third."),
    ]


def test_text_without_headings_is_one_chapter_titled_by_the_file(tmp_path: Path):
    path = tmp_path / "a_short_story.txt"
    path.write_text("One paragraph.\n\nAnother paragraph.\n", encoding="utf-8")
    book = read_file(path)
    assert _titles_and_texts(book) == [("a short story", "One paragraph.\n\nAnother paragraph.")]


MARKDOWN = """---
title: Field Notes
author: [Ann Field, Bo Notes]
lang: fr-CA
---

# Field Notes

An *introduction* with a [link](https://example.com) and ![a figure](fig.png).

## Morning

Birds at **dawn**[^1], counted:

| Bird | Count |
|------|-------|
| Wren | 3     |

```python
print("code is not read")
```

### Detail

A deeper heading stays in the text.

## Evening

> Quiet now.

- first item
- second item

[^1]: A footnote that is not read.
"""


def test_markdown_headings_metadata_and_markup(tmp_path: Path):
    path = tmp_path / "notes.md"
    path.write_text(MARKDOWN, encoding="utf-8")
    book = read_file(path)
    assert (book.title, book.author, book.language) == (
        "Field Notes",
        "Ann Field, Bo Notes",
        "fr-CA",
    )
    assert _titles_and_texts(book) == [
        ("Field Notes", "An introduction with a link and ."),
        (
            "Morning",
            "Birds at dawn, counted:\n\nBird, Count\n\nWren, 3\n\nDetail\n\n"
            "A deeper heading stays in the text.",
        ),
        ("Evening", "Quiet now.\n\nfirst item\n\nsecond item"),
    ]


def test_markdown_without_headings_falls_back_to_chapter_lines():
    blocks = markdown_blocks("Chapter 1\n\nOne.\n\nChapter 2\n\nTwo.")
    assert not any(block.heading for block in blocks)


def test_front_matter_that_is_not_a_mapping_is_text():
    meta, rest = front_matter("---\n- a list\n---\nBody")
    assert meta.title is None and rest.startswith("---")


def test_local_html_is_read_whole_with_chapters_at_headings(tmp_path: Path):
    path = tmp_path / "book.html"
    path.write_text(
        '<html lang="it"><head><title>Il Libro</title><script>x()</script></head><body>'
        '<section class="pg-boilerplate pgheader" id="pg-header"><p>The Project Gutenberg '
        "eBook licence.</p></section>"
        "<h1>Il Libro</h1><h2>Capitolo 1</h2><p>Uno.</p><h2>Capitolo 2</h2><p>Due.</p>"
        '<section id="pg-footer"><p>Licence again.</p></section></body></html>',
        encoding="utf-8",
    )
    book = read_file(path)
    assert (book.title, book.language) == ("Il Libro", "it")
    assert _titles_and_texts(book) == [("Capitolo 1", "Uno."), ("Capitolo 2", "Due.")]


async def test_sources_merge_in_order_and_unreadable_ones_are_skipped(tmp_path: Path):
    epub = EpubSpec().write(tmp_path / "book.epub")
    text = tmp_path / "appendix.txt"
    text.write_text("Appendix A\n\nThe end matter.", encoding="utf-8")
    binary = tmp_path / "photo.txt"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00")
    sources = [str(epub), str(tmp_path / "missing.md"), str(text), str(binary), "notes.docx"]
    book = await read_book(sources)
    assert book.title == "The Test Book"  # the first source's metadata
    assert book.cover is not None
    assert [chapter.source for chapter in book.chapters][-1] == str(text)
    assert len(book.chapters) == 6
    assert [skipped.source for skipped in book.skipped] == [
        str(tmp_path / "missing.md"),
        str(binary),
        "notes.docx",
    ]
    reasons = [skipped.reason for skipped in book.skipped]
    assert reasons[0] == "does not exist"
    assert "binary data" in reasons[1]
    assert "unknown file type '.docx'" in reasons[2]


async def test_a_book_with_no_readable_source_has_only_skipped(tmp_path: Path):
    book = await read_book([str(tmp_path / "gone.txt")])
    assert book.chapters == ()
    assert book.skipped == (Skipped(str(tmp_path / "gone.txt"), "does not exist"),)
    assert book.title == "gone"


async def test_no_sources_is_a_user_error():
    with pytest.raises(UserError, match="no sources"):
        await read_book([])


def test_decoding_falls_back_from_utf8_to_windows_1252():
    assert decode_text("naïve café".encode("cp1252")) == "naïve café"
    assert decode_text("naïve café".encode("utf-16")) == "naïve café"
    assert decode_text(b"\xef\xbb\xbfplain") == "plain"


# --- urls.csv ----------------------------------------------------------------------------------

cell = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00\r\n"),
    min_size=1,
    max_size=20,
).filter(lambda text: text.strip() == text and not text.startswith("#"))
rows = st.lists(
    st.builds(UrlRow, url=cell, group=cell, title=st.none() | cell), min_size=1, max_size=10
).filter(lambda found: found[0].url.lower() != "url")


def _csv(found: list[UrlRow], header: bool) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    if header:
        writer.writerow(["url", "group", "title"])
    for row in found:
        writer.writerow([row.url, row.group, row.title or ""])
    return out.getvalue()


@settings(max_examples=200, deadline=None)
@given(found=rows, header=st.booleans())
def test_url_tables_round_trip(found: list[UrlRow], header: bool):
    assert parse_url_table(_csv(found, header)) == found


@settings(max_examples=200, deadline=None)
@given(text=st.text(max_size=300))
def test_any_table_parses_or_is_one_user_error(text: str):
    try:
        parsed = parse_url_table(text)
    except UserError as exc:
        message = str(exc)
        assert message.startswith("urls.csv ")
        assert "\n" not in message
    else:
        assert all(row.url and row.group for row in parsed)


def test_header_columns_may_come_in_any_order_with_comments_and_blank_lines():
    table = (
        "# chapters\n\ntitle,url,group,notes\nOne,https://a.example/1,g1,x\n,https://b.example,g2\n"
    )
    assert parse_url_table(table) == [
        UrlRow("https://a.example/1", "g1", "One"),
        UrlRow("https://b.example", "g2", None),
    ]


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ("", "has no rows"),
        ("url,title\nhttps://a.example,One\n", "no 'group' column"),
        ("https://a.example\n", "line 1 has no group"),
        ("url,group\nhttps://a.example,\n", "line 2 has no group"),
        ("url,group\n,g1\n", "line 2 has no URL"),
    ],
)
def test_a_table_with_missing_columns_is_a_user_error(table: str, message: str):
    with pytest.raises(UserError, match=message):
        parse_url_table(table)


def test_groups_are_selected_in_the_order_asked():
    found = [UrlRow("u1", "a"), UrlRow("u2", "b"), UrlRow("u3", "a")]
    assert list(select_groups(found, None)) == ["a", "b"]
    assert select_groups(found, ["b", "a"]) == {"b": [found[1]], "a": [found[0], found[2]]}
    with pytest.raises(UserError, match=r"group c is not in urls\.csv"):
        select_groups(found, ["c"])


# --- plain-text chapter detection never loses a paragraph -------------------------------------

paragraph = st.one_of(
    st.sampled_from(["Chapter 1", "CHAPTER II.", "Part One", "Prologue", "* * *"]),
    st.text(alphabet=st.sampled_from("abc XYZ.,!?"), min_size=1, max_size=60),
)


@settings(max_examples=300, deadline=None)
@given(paragraphs=st.lists(paragraph, max_size=20))
def test_chapters_hold_every_paragraph_that_is_not_a_heading(paragraphs: list[str]):
    text = "\n\n".join(paragraphs)
    blocks = text_blocks(text)
    chapters = chapters_at_headings(blocks, "x.txt", "Front")
    body = [block.text for block in blocks if not block.heading]
    read = [part for chapter in chapters for part in chapter.text.split("\n\n")]
    assert read == [part for part in body if part]
    assert all(chapter.title and chapter.text for chapter in chapters)


def test_blocks_keep_heading_levels():
    assert text_blocks("Chapter 1\n\nText.") == [Block("Chapter 1", heading=2), Block("Text.")]
