"""Text for speech: cleanup and the reading of numbers, abbreviations and symbols, by language;
properties that the chunker relies on (normalised paragraphs, no false sentence ends,
determinism); and a ten-hour book in bounded time."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from csm_offload.book import for_speech
from csm_offload.book.cleanup import clean
from csm_offload.book.numbers import num2words_language
from csm_offload.chunking import chunk_text, normalise_paragraphs


@pytest.mark.parametrize(
    ("text", "spoken"),
    [
        ("It happened in 1984.", "It happened in nineteen eighty-four."),
        ("In 2005 and in 1905.", "In two thousand and five and in nineteen oh-five."),
        ("The 1960s were loud.", "The nineteen sixties were loud."),
        ("She came 3rd, he came 21st.", "She came third, he came twenty-first."),
        ("WHALES OF THE 1ST SIZE.", "WHALES OF THE first SIZE."),
        ("It cost $5.20 today.", "It cost five dollars, twenty cents today."),
        ("It cost $5 today.", "It cost five dollars today."),
        ("A €3 coffee.", "A three euro coffee."),
        ("A £12.50 ticket.", "A twelve pounds sterling, fifty pence ticket."),
        ("A $1.5bn deal.", "A one point five billion dollars deal."),
        ("Up 45% on the year.", "Up forty-five percent on the year."),
        ("It was 20°C outside.", "It was twenty degrees Celsius outside."),
        ("Pi is 3.14 or so.", "Pi is three point one four or so."),
        (
            "We were 1,234,567 strong.",
            "We were one million, two hundred and thirty-four "
            "thousand, five hundred and sixty-seven strong.",
        ),
        ("Call 007 at 5:30.", "Call zero zero seven at five thirty."),
        ("The war of 1914–1918.", "The war of nineteen fourteen to nineteen eighteen."),
        ("It was -5 outside.", "It was minus five outside."),
        ("Dr. Watson met Mr. Holmes.", "Doctor Watson met Mister Holmes."),
        ("He lives on Baker St. now.", "He lives on Baker Street now."),
        ("Tea, cakes, etc. We ate.", "Tea, cakes, et cetera. We ate."),
        ("Tea, cakes, etc. and more.", "Tea, cakes, et cetera and more."),
        ("Some, e.g. tea, i.e. drink.", "Some, for example tea, that is drink."),
        ("Salt & pepper.", "Salt and pepper."),
        ("It is No. 5 of #7.", "It is number five of number seven."),
        ("At 5 p.m. Then we left.", "At five PM. Then we left."),
        ("MP3s and 4K and COVID-19.", "MP3s and 4K and COVID-nineteen."),
        ("Version 1.2.3 on 12/05/2020.", "Version 1.2.3 on 12/05/2020."),
        (
            "ISBN 9780141036144.",
            "ISBN nine seven eight zero one four one zero three six one four four.",
        ),
    ],
)
def test_english_is_read_as_a_narrator_would(text: str, spoken: str):
    assert for_speech(text) == spoken


@pytest.mark.parametrize(
    ("language", "text", "spoken"),
    [
        (
            "de",
            "Dr. Weber kam am 3. Mai 1984.",
            "Doktor Weber kam am dritten Mai neunzehnhundertvierundachtzig.",
        ),
        (
            "de-AT",
            "Es kostet 1.234,50 € und 3,5 %.",
            "Es kostet eintausendzweihundertvierund"
            "dreißig Euro und fünfzig Cent und drei Komma fünf Prozent.",
        ),
        (
            "de",
            "Obst, z. B. Äpfel, usw. Dann Brot.",
            "Obst, zum Beispiel Äpfel, und so weiter. Dann Brot.",
        ),
        ("fr-FR", "M. Martin est arrivé le 1er mai.", "Monsieur Martin est arrivé le premier mai."),
        (
            "fr",
            "Il a payé 3,50 € & 20 %.",
            "Il a payé trois euros et cinquante centimes et vingt pour cent.",
        ),
        ("es", "La Sra. García pagó 25 €.", "La Señora García pagó veinticinco euros."),
        ("it", "Costa 3,5 euro.", "Costa tre virgola cinque euro."),
        ("pt-BR", "São 21 livros.", "São vinte e um livros."),
    ],
)
def test_other_languages_are_read_in_their_own_words(language: str, text: str, spoken: str):
    assert for_speech(text, language) == spoken


def test_a_language_num2words_lacks_keeps_its_digits():
    assert num2words_language("zh-Hant") is None
    assert for_speech("第3章 and 45%", "zh") == "第3章 and 45%"
    assert for_speech("Mr. 5", "xx") == "Mr. 5"  # no words for an unknown language: kept


@pytest.mark.parametrize(
    ("text", "spoken"),
    [
        ("It was truly¹ odd.² Then", "It was truly odd. Then"),
        ("A claim.[12] Another[citation needed].", "A claim. Another."),
        ("See https://www.example.com/a/b?c=d for more.", "See example.com for more."),
        ("Some <b>bold</b> &amp; &eacute;t&eacute;.", "Some bold and été."),
        ("[Illustration: A cat on a mat]", ""),
        ("* * *", ""),
        ("- 12 -", ""),
        ("Page 3 of 10", ""),
        ("The day ended.12 Then night.", "The day ended. Then night."),
        ("A _very_ good ﬁsh\u00ad\u200b.", "A very good fish."),
        ("• first item", "first item"),
        ("Chapter One . . . . . . 12", "Chapter One twelve"),
        ("Index.........12", "Index twelve"),
        ("The whale.... Some say.", "The whale.... Some say."),
    ],
)
def test_markup_notes_and_page_furniture_are_not_read(text: str, spoken: str):
    assert for_speech(text) == spoken


def test_paragraphs_stay_paragraphs():
    text = "First para\nwraps here.\n\n\n* * *\n\n  Second   para.  \n\n12\n\nThird."
    assert for_speech(text) == "First para wraps here.\n\nSecond para.\n\nThird."


def test_titles_lose_their_full_stop_so_no_sentence_ends_there():
    spoken = for_speech("Mr. Smith and Dr. Jones met St. Paul at approx. noon today.")
    assert chunk_text(spoken, 40) == [
        "Mister Smith and Doctor Jones met Saint",
        "Paul at approximately noon today.",
    ]
    assert "." not in spoken[:-1]


# --- properties ----------------------------------------------------------------------------------

prose = st.lists(
    st.sampled_from([*"abcXYZ 019.,;!?%$€&°\n-–:'\"", "Dr. ", "etc. ", "1984", "¹", "[1]"]),
    max_size=150,
).map("".join)


@settings(max_examples=300, deadline=None)
@given(text=prose, language=st.sampled_from(["en", "de", "fr", "es", "it", "ja", "xx", ""]))
def test_the_output_is_normalised_paragraphs_and_deterministic(text: str, language: str):
    spoken = for_speech(text, language)
    assert normalise_paragraphs(spoken) == spoken
    assert for_speech(text, language) == spoken


@settings(max_examples=300, deadline=None)
@given(text=st.text(max_size=300))
def test_any_text_is_read_without_error(text: str):
    spoken = for_speech(text)
    assert normalise_paragraphs(spoken) == spoken


@settings(max_examples=200, deadline=None)
@given(
    numbers=st.lists(
        st.one_of(
            st.integers(min_value=-(10**6), max_value=10**9).map(str),
            st.integers(min_value=1, max_value=10**6).map(lambda n: f"{n:,}"),
            st.decimals(min_value=0, max_value=10**5, places=2).map(str),
            st.integers(min_value=1, max_value=999).map(lambda n: f"${n}.99"),
            st.integers(min_value=0, max_value=100).map(lambda n: f"{n}%"),
        ),
        min_size=1,
        max_size=8,
    )
)
def test_english_numbers_leave_no_digit_behind(numbers: list[str]):
    spoken = for_speech("The values were " + " and ".join(numbers) + " in all.")
    assert not any(char.isdigit() for char in spoken), spoken


@settings(max_examples=200, deadline=None)
@given(text=prose)
def test_cleaning_is_idempotent(text: str):
    once = clean(text)
    assert clean(once) == once


@pytest.mark.timeout(120)
def test_a_ten_hour_book_is_read_in_bounded_time():
    chapter = (
        "On the 3rd of May, 1984, Dr. Grey paid $5.20 for tea, e.g. a pot, etc. "
        "It was 20°C and 45% humid; see https://example.com/tea for more. "
    )
    book = "\n\n".join(chapter * 4 for _ in range(1_100))  # about 600,000 characters
    spoken = for_speech(book)
    assert spoken.count("nineteen eighty-four") == 4_400
