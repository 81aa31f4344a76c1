"""Subtitles: cues in order, never overlapping, the last ending at the chapter's end (property
tested over random chunk timings and sentences), sentences cut as the chunker cuts them and
timed by their length, and SRT/WebVTT written to the letter."""

from __future__ import annotations

import itertools
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from csm_offload.book.subtitles import (
    ChapterTiming,
    ChunkTiming,
    Cue,
    book_cues,
    cues_for_chapter,
    sentences,
    to_srt,
    to_vtt,
)
from csm_offload.chunking import normalise
from csm_offload.errors import UserError

WORDS = st.sampled_from(
    ["the", "keeper", "Dr.", "lamp", "e.g.", "storm", "No.", "5", "“Why?”", "he", "asked", "—"]
)
ENDS = st.sampled_from([".", "!", "?", "…", "", ",", ".”"])


@st.composite
def sentence_texts(draw: st.DrawFn) -> str:
    words = draw(st.lists(WORDS, min_size=1, max_size=12))
    return " ".join(words) + draw(ENDS)


@st.composite
def chapters(draw: st.DrawFn) -> tuple[list[ChunkTiming], float]:
    """Chunks laid out as an assembler writes them: a head, chunks with gaps, a tail; the times
    are arbitrary floats, some chunks a couple of milliseconds long (rounded, at least one),
    some texts blank."""
    at = draw(st.floats(0, 2))
    chunks = []
    for _ in range(draw(st.integers(1, 12))):
        length = draw(st.one_of(st.floats(0.002, 0.01), st.floats(0.01, 40)))
        texts = draw(st.lists(sentence_texts(), min_size=1, max_size=5))
        text = draw(st.sampled_from([" ".join(texts), "   "])) if len(chunks) else " ".join(texts)
        chunks.append(ChunkTiming(at, at + length, text))
        at += length + draw(st.floats(0, 2))
    return chunks, at + draw(st.floats(0, 5))


@settings(max_examples=400, deadline=None)
@given(chapters())
def test_cues_are_ordered_do_not_overlap_and_end_at_the_chapter_end(
    chapter: tuple[list[ChunkTiming], float],
) -> None:
    chunks, end = chapter
    cues = cues_for_chapter(chunks, end)
    assert cues
    for cue in cues:
        assert cue.end_ms > cue.start_ms  # every cue is shown for some time
        assert cue.text == normalise(cue.text) and cue.text
    for before, after in itertools.pairwise(cues):
        assert before.end_ms <= after.start_ms
    assert cues[0].start_ms >= round(chunks[0].start_s * 1000)
    assert cues[-1].end_ms == round(end * 1000)
    # Every word is on screen exactly once, in order.
    spoken = " ".join(normalise(c.text) for c in chunks if normalise(c.text))
    assert " ".join(cue.text for cue in cues) == spoken


@settings(max_examples=150, deadline=None)
@given(chapters(), st.lists(st.floats(0, 100), min_size=1, max_size=4))
def test_the_books_cues_are_ordered_and_each_chapters_stay_inside_it(
    chapter: tuple[list[ChunkTiming], float], gaps: list[float]
) -> None:
    chunks, end = chapter
    timings, at = [], 0.0
    for gap in gaps:
        timings.append(ChapterTiming(at, end, chunks))
        at += end + gap
    book = book_cues(timings)
    for before, after in itertools.pairwise(book):
        assert before.start_ms < before.end_ms <= after.start_ms
    spoken = " ".join(normalise(c.text) for c in chunks if normalise(c.text))
    assert " ".join(cue.text for cue in book) == " ".join([spoken] * len(gaps))
    ends = {round((t.start_s + t.duration_s) * 1000) for t in timings}
    assert {cue.end_ms for cue in book} >= ends  # each chapter's last cue holds to its end
    assert book[-1].end_ms == round((timings[-1].start_s + end) * 1000)


def test_the_books_cues_are_the_chapters_moved_by_their_starts() -> None:
    chunks = [ChunkTiming(0.75, 4.0, "One. Two."), ChunkTiming(4.4, 6.0, "Three.")]
    local = cues_for_chapter(chunks, 8.0)
    book = book_cues([ChapterTiming(0.0, 8.0, chunks), ChapterTiming(8.0, 8.0, chunks)])
    moved = [Cue(c.start_ms + 8000, c.end_ms + 8000, c.text) for c in local]
    assert book == [*local, *moved]


def test_sentences_are_timed_in_proportion_to_their_length() -> None:
    ten, thirty = "Ten chars.", "And then thirty characters in."
    assert (len(ten), len(thirty)) == (10, 30)
    cues = cues_for_chapter([ChunkTiming(1.0, 9.0, f"{ten} {thirty}")], 11.0)
    assert cues == [Cue(1000, 3000, ten), Cue(3000, 11000, thirty)]


def test_sentences_are_cut_where_the_chunker_cuts_them() -> None:
    text = "Dr. Watson came, e.g. at noon. “Why?” he asked. It rained!  Then it stopped…"
    assert sentences(text) == [
        "Dr. Watson came, e.g. at noon.",
        "“Why?” he asked.",
        "It rained!",
        "Then it stopped…",
    ]


def test_gaps_between_chunks_stay_empty_and_the_last_cue_holds_to_the_end() -> None:
    chunks = [ChunkTiming(0.75, 4.0, "One. Two."), ChunkTiming(4.4, 6.0, "Three.")]
    cues = cues_for_chapter(chunks, 8.0)
    assert [(c.start_ms, c.end_ms) for c in cues] == [(750, 2375), (2375, 4000), (4400, 8000)]


def test_a_sentence_too_short_to_time_joins_its_neighbour() -> None:
    cues = cues_for_chapter([ChunkTiming(0.0, 0.001, "Go. Stop. Run.")], 0.001)
    assert cues == [Cue(0, 1, "Go. Stop. Run.")]
    cues = cues_for_chapter([ChunkTiming(0, 0, "Lost."), ChunkTiming(0, 1, "Found.")], 1)
    assert cues == [Cue(0, 1000, "Lost. Found.")]


def test_srt_is_numbered_with_comma_milliseconds() -> None:
    cues = [Cue(750, 2375, "One."), Cue(3_725_004, 3_726_000, "a --> b")]
    assert to_srt(cues) == (
        "1\n00:00:00,750 --> 00:00:02,375\nOne.\n\n2\n01:02:05,004 --> 01:02:06,000\na -> b\n"
    )
    assert to_srt([]) == ""


def test_vtt_has_its_header_dot_milliseconds_and_escapes() -> None:
    text = to_vtt([Cue(0, 1500, "Fish & <chips> -->")])
    assert text == "WEBVTT\n\n00:00:00.000 --> 00:00:01.500\nFish &amp; &lt;chips&gt; --&gt;\n"
    assert re.fullmatch(r"WEBVTT\n", to_vtt([]))


@pytest.mark.parametrize(
    ("chunks", "end", "words"),
    [
        ([ChunkTiming(2.0, 1.0, "Backwards.")], 3.0, "backwards"),
        ([ChunkTiming(0, 2, "A."), ChunkTiming(1, 3, "B.")], 3.0, "previous chunk"),
        ([ChunkTiming(0, 2, "A.")], 1.0, "before its last chunk ends"),
        ([ChunkTiming(0, float("nan"), "A.")], 1.0, "not a number"),
        ([ChunkTiming(0, 0, "A.")], 0.0, "too short to show its text"),
    ],
)
def test_bad_timings_are_one_clear_error(chunks: list[ChunkTiming], end: float, words: str) -> None:
    with pytest.raises(UserError, match=words):
        cues_for_chapter(chunks, end)


def test_book_cues_refuse_chapters_out_of_order() -> None:
    chunks = [ChunkTiming(0.5, 4.0, "A.")]
    with pytest.raises(UserError, match=r"chapter 2 starts at 4\.0 s, before the previous one"):
        book_cues([ChapterTiming(0.0, 5.0, chunks), ChapterTiming(4.0, 5.0, chunks)])
    book = book_cues([ChapterTiming(0.0, 5.0, chunks), ChapterTiming(5.0, 5.0, chunks)])
    assert book == [Cue(500, 5000, "A."), Cue(5500, 10000, "A.")]
    assert cues_for_chapter([ChunkTiming(0, 1, "  ")], 2.0) == []
