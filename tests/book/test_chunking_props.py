"""The chunker's promises, property-tested: no chunk over the budget, no character lost or
invented (joining the chunks gives the normalised text back), no cut inside a word unless the
word alone is over the budget, paragraph ends marked, sentence ends preferred; and a ten-hour
book chunked in bounded time."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from csm_offload.book import for_speech
from csm_offload.chunking import (
    Chunk,
    chunk_text,
    join_chunks,
    normalise_paragraphs,
    paragraphs,
    split_chunks,
)
from csm_offload.errors import UserError

pieces = st.sampled_from(
    [
        *"abcXYZ  \n\t.,;:!?—–-'\"”’)(…",
        "\n\n",
        "。",
        "你好",
        "Mr. ",
        "e.g. ",
        "J. ",
        "\u00a0",
        "\u3000",
        "🎉",
        "x" * 30,
    ]
)
texts = st.lists(pieces, max_size=200).map("".join)
budgets = st.integers(min_value=1, max_value=80)


def _boundaries(chunks: list[Chunk]) -> list[tuple[str, str]]:
    """The (before, after) text around each cut inside a paragraph with no space between."""
    return [
        (chunk.text, chunks[index + 1].text)
        for index, chunk in enumerate(chunks[:-1])
        if chunk.glued
    ]


@settings(max_examples=500, deadline=None)
@given(text=texts, budget=budgets)
def test_no_chunk_is_over_the_budget_or_empty(text: str, budget: int):
    assert all(0 < len(chunk.text) <= budget for chunk in split_chunks(text, budget))


@settings(max_examples=500, deadline=None)
@given(text=texts, budget=budgets)
def test_joining_the_chunks_gives_the_normalised_text_back(text: str, budget: int):
    assert join_chunks(split_chunks(text, budget)) == normalise_paragraphs(text)


@settings(max_examples=500, deadline=None)
@given(text=texts, budget=budgets)
def test_no_word_is_cut_unless_it_is_over_the_budget(text: str, budget: int):
    chunks = split_chunks(text, budget)
    for before, after in _boundaries(chunks):
        left = before.rsplit(" ", 1)[-1]
        right = after.split(" ", 1)[0]
        cjk_sentence_end = left[-1] in "。！？”’」』）)]" and "。" in left
        assert cjk_sentence_end or len(left) + len(right) > budget, (before, after)


@settings(max_examples=500, deadline=None)
@given(text=texts, budget=budgets)
def test_each_paragraph_ends_one_chunk(text: str, budget: int):
    chunks = split_chunks(text, budget)
    assert sum(chunk.ends_paragraph for chunk in chunks) == len(paragraphs(text))
    assert not chunks or chunks[-1].ends_paragraph
    assert all(not (chunk.ends_paragraph and chunk.glued) for chunk in chunks)


@settings(max_examples=300, deadline=None)
@given(text=texts, budget=budgets)
def test_chunk_text_is_the_texts_of_split_chunks(text: str, budget: int):
    assert chunk_text(text, budget) == [chunk.text for chunk in split_chunks(text, budget)]


sentence = st.lists(st.sampled_from(["alpha", "beta", "Gamma", "delta"]), min_size=1, max_size=8)


@settings(max_examples=300, deadline=None)
@given(
    sentences=st.lists(
        st.tuples(sentence, st.sampled_from([".", "!", "?", '."', "?)"])), min_size=1, max_size=12
    ),
    budget=st.integers(min_value=60, max_value=200),
)
def test_sentences_that_fit_are_never_split(sentences, budget: int):
    written = [" ".join(words).capitalize() + end for words, end in sentences]
    chunks = chunk_text(" ".join(written), budget)
    assert " ".join(chunks) == " ".join(written)
    ends = {len(" ".join(written[: index + 1])) for index in range(len(written))}
    offset = 0
    for chunk in chunks:
        offset += len(chunk)
        assert offset in ends, chunk
        offset += 1


def test_abbreviations_and_initials_are_not_sentence_ends():
    text = "Mr. Smith met J. R. R. Tolkien at 5 p.m. on Monday. They talked."
    assert chunk_text(text, 52) == [
        "Mr. Smith met J. R. R. Tolkien at 5 p.m. on Monday.",
        "They talked.",
    ]


def test_closing_quotes_stay_with_their_sentence():
    text = '"Stop." She stopped. (It was late.) They left.'
    assert chunk_text(text, 22) == ['"Stop." She stopped.', "(It was late.)", "They left."]


def test_a_question_mark_before_a_lowercase_word_does_not_end_the_sentence():
    text = "“Why?” he asked, and then he left the room quietly."
    assert chunk_text(text, 30) == ["“Why?” he asked, and then he", "left the room quietly."]
    assert chunk_text("“Why?” he asked. “Because.”", 20) == ["“Why?” he asked.", "“Because.”"]


def test_cjk_sentences_are_glued_without_a_space():
    chunks = split_chunks("你好世界。今天很好。", 6)
    assert [chunk.text for chunk in chunks] == ["你好世界。", "今天很好。"]
    assert chunks[0].glued and join_chunks(chunks) == "你好世界。今天很好。"


def test_paragraph_ends_are_marked_for_a_longer_pause():
    chunks = split_chunks("One. Two.\n\nThree.", 6)
    assert chunks == [
        Chunk("One.", ends_paragraph=False),
        Chunk("Two.", ends_paragraph=True),
        Chunk("Three.", ends_paragraph=True),
    ]


@pytest.mark.parametrize("budget", [0, -5])
def test_a_budget_below_one_is_a_user_error(budget: int):
    with pytest.raises(UserError, match="at least 1 character"):
        split_chunks("Hello.", budget)


@pytest.mark.timeout(120)
def test_a_ten_hour_book_is_chunked_in_bounded_time():
    chapter = (
        "It was the best of times, it was the worst of times, it was the age of wisdom. "
        "Mr. Lorry said so; Dr. Manette agreed, e.g. at 5 p.m. on the 3rd of May 1775.\n\n"
    )
    book = for_speech(chapter * 3_300)  # about 540,000 characters once read out
    chunks = split_chunks(book, 300)
    assert join_chunks(chunks) == book
    assert all(len(chunk.text) <= 300 for chunk in chunks)
    assert split_chunks(book, 300) == chunks  # deterministic: resume depends on it
