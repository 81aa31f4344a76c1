"""PDF books built in the test (fpdf2): outline → chapters, metadata, page furniture left out;
encrypted, image-only and broken PDFs end in one sentence."""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from csm_offload.book import Unreadable, read_book
from csm_offload.book.pdf import page_chapters, paragraphs, read_pdf, strip_furniture

from .conftest import PDF_PARAGRAPH, build_image_pdf, build_pdf


def test_the_outline_gives_the_chapters_and_the_metadata_the_book(tmp_path: Path):
    book = read_pdf(build_pdf(tmp_path / "river.pdf"))
    assert (book.title, book.author, book.language) == ("The River Book", "Rhea Writer", "en-US")
    assert [c.title for c in book.chapters] == [
        "Part One: Chapter 1",
        "Chapter 2",
        "Part Two: Chapter 3",
    ]
    assert all(chapter.source == str(tmp_path / "river.pdf") for chapter in book.chapters)


def test_paragraphs_are_rebuilt_across_lines_and_pages_without_furniture(tmp_path: Path):
    book = read_pdf(build_pdf(tmp_path / "river.pdf"))
    for chapter, name, ordinal in zip(
        book.chapters,
        ("Chapter 1", "Chapter 2", "Chapter 3"),
        ("first", "second", "third"),
        strict=True,
    ):
        paragraph = " ".join(f"{name} begins. {PDF_PARAGRAPH * 6}It ended.".split())
        last = f"A split word: extraordinary, and the end of the {ordinal} chapter."
        assert chapter.text.split("\n\n") == [paragraph, paragraph, paragraph, last]


def test_without_an_outline_the_text_is_one_chapter(tmp_path: Path):
    book = read_pdf(build_pdf(tmp_path / "flat.pdf", outline=False))
    assert [c.title for c in book.chapters] == ["The River Book"]
    assert book.chapters[0].text.count("begins.") == 9


def test_a_pdf_encrypted_only_against_printing_is_read(tmp_path: Path):
    book = read_pdf(build_pdf(tmp_path / "owner.pdf", user_password=""))
    assert len(book.chapters) == 3


HOSTILE = {
    "password": (lambda p: build_pdf(p, user_password="secret"), "encrypted with a password"),
    "image-only": (build_image_pdf, "no text layer"),
    "not-a-pdf": (lambda p: p.write_bytes(b"PK\x03\x04 a zip, renamed"), "not a readable PDF"),
    "empty": (lambda p: p.write_bytes(b""), "not a readable PDF"),
    "truncated": (
        lambda p: p.write_bytes(build_pdf(p).read_bytes()[:600]),
        "not a readable PDF|no text layer",
    ),
}


@pytest.mark.parametrize(("make", "reason"), list(HOSTILE.values()), ids=list(HOSTILE))
async def test_a_hostile_pdf_is_skipped_with_its_reason(tmp_path: Path, make, reason: str):
    path = tmp_path / "hostile.pdf"
    make(path)
    with pytest.raises(Unreadable, match=reason):
        read_pdf(path)
    book = await read_book([str(path), str(build_pdf(tmp_path / "good.pdf"))])
    assert [skipped.source for skipped in book.skipped] == [str(path)]
    assert len(book.chapters) == 3  # the rest of the book still builds


# --- the pure parts ----------------------------------------------------------------------------


def test_running_heads_titles_and_page_numbers_are_furniture():
    words = [
        "alder",
        "birch",
        "cedar",
        "dogwood",
        "elm",
        "fir",
        "ginkgo",
        "hazel",
        "ironwood",
        "juniper",
    ]

    def page(number: int) -> list[str]:
        body = [f"The {words[number]} stood in row {row}." for row in "ABCD"]
        return ["The Book", *body, f"- {number + 1} -"]

    pages = [page(number) for number in range(10)]
    pages[3].insert(3, "The Book")  # inside the page: not furniture
    pages[5].insert(0, "Chapter Five")  # a running chapter head, named by the outline
    stripped = strip_furniture(pages, ["Chapter Five"])
    assert stripped[0] == pages[0][1:-1]
    assert stripped[3] == pages[3][1:-1]
    assert stripped[5] == pages[5][2:-1]


line = st.text(alphabet=st.sampled_from("abcXYZ .,-!?"), min_size=1, max_size=40).map(
    lambda text: " ".join(text.split()) or "a"
)


@settings(max_examples=300, deadline=None)
@given(lines=st.lists(line, max_size=40))
def test_rebuilt_paragraphs_lose_no_character_but_joining_hyphens(lines: list[str]):
    rebuilt = paragraphs(lines)
    assert all(paragraph == paragraph.strip() for paragraph in rebuilt)
    kept = "".join("".join(rebuilt).split())
    original = "".join("".join(lines).split())
    assert kept.replace("-", "") == original.replace("-", "")


def _in_order(wanted: list[str], found: list[str]) -> bool:
    remaining = iter(found)
    return all(any(item == candidate for candidate in remaining) for item in wanted)


@settings(max_examples=200, deadline=None)
@given(pages=st.lists(st.lists(line, max_size=8), max_size=12))
def test_furniture_removal_only_touches_the_edges_of_pages(pages: list[list[str]]):
    stripped = strip_furniture(pages)
    assert len(stripped) == len(pages)
    for before, after in zip(pages, stripped, strict=True):
        assert _in_order(before[2:-2], after)
        assert _in_order(after, before)


@settings(max_examples=200, deadline=None)
@given(
    pages=st.lists(st.lists(line, min_size=1, max_size=5), min_size=1, max_size=8),
    marks=st.lists(
        st.tuples(
            st.integers(0, 10), st.text(alphabet="0123456789", max_size=4), st.integers(0, 1)
        ),
        max_size=6,
    ),
)
def test_chapters_hold_all_the_pages_text_in_order(pages, marks):
    chapters = page_chapters(pages, marks, "x.pdf", "Title")
    assert all(chapter.text and chapter.title for chapter in chapters)
    written = "".join("".join(line for page in pages for line in page).split())
    read = "".join("".join(chapter.text for chapter in chapters).split())
    assert read.replace("-", "") == written.replace("-", "")


@functools.cache
def _good_pdf() -> bytes:
    with tempfile.TemporaryDirectory() as folder:
        return build_pdf(Path(folder) / "good.pdf").read_bytes()


@settings(max_examples=150, deadline=None)
@given(
    flips=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)), max_size=12),
    keep=st.floats(0.05, 1.0),
)
def test_a_damaged_pdf_is_read_or_refused_in_one_sentence(tmp_path_factory, flips, keep):
    data = bytearray(_good_pdf())
    for where, value in flips:
        data[int(where * len(data))] = value
    path = tmp_path_factory.mktemp("damaged") / "damaged.pdf"
    path.write_bytes(bytes(data[: max(1, int(keep * len(data)))]))
    try:
        chapters, refusal = read_pdf(path).chapters, ""
    except Unreadable as exc:
        chapters, refusal = (), str(exc)
    assert "\n" not in refusal
    assert all(chapter.title and chapter.text for chapter in chapters)
