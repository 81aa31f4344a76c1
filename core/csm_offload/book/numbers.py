"""Numbers as a narrator says them, in the book's language, through num2words: amounts of
money, percentages, temperatures, ordinals, years and decades, clock times, ranges, and plain
numbers with their thousands separators and decimals as the language writes them.

One pass of one regular expression over the text (linear, and expanded words are never
matched again). Digits glued to letters ("MP3", "4K") and dotted or slashed runs ("1.2.3",
"12/05/2020") are left as written. A language num2words does not know keeps its digits.
"""

from __future__ import annotations

import functools
import re
from decimal import Decimal, InvalidOperation
from typing import Any

from .lexicon import Lexicon, primary_subtag

_CURRENCY_SYMBOLS = {"$": "USD", "€": "EUR", "£": "GBP", "¥": "JPY", "₹": "INR"}
_SCALES = {"k": "thousand", "m": "million", "bn": "billion"}
#: Plain integers longer than this, or with a leading zero, are read digit by digit
#: (phone numbers, ISBNs, codes): "nine trillion …" helps no listener.
_MAX_CARDINAL_DIGITS = 9
_YEARS = range(1100, 2100)
#: Where num2words has no word for the decimal mark of a language.
_POINT_WORDS = {"it": "virgola"}

#: "am 3. Mai": German writes ordinal days with a full stop, which must not end a sentence.
_GERMAN_MONTHS = (
    "Januar|Jänner|Februar|März|April|Mai|Juni|Juli|August|September|Oktober|November|Dezember"
)
_BEFORE = r"(?<![\w.,/])"
_AFTER = r"(?![\w/]|[.,]\d)"
_POINT_NUMBER = r"\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?"
_COMMA_NUMBER = r"\d{1,3}(?:[. ]\d{3})+(?!\d)(?:,\d+)?|\d+(?:,\d+)?"


def _pattern(number: str) -> re.Pattern[str]:
    n = f"(?:{number})"
    return re.compile(
        "|".join(
            (
                rf"(?P<sym>[$€£¥₹])\s?(?P<amount>{n})"
                rf"(?:\s?(?P<scale>million|billion|trillion|thousand|bn|m|k)\b|{_AFTER})",
                rf"{_BEFORE}(?P<amount_post>{n})\s?(?P<sym_post>[€£¥₹])",
                rf"{_BEFORE}(?P<pct>{n})\s?%",
                rf"{_BEFORE}(?P<temp_neg>[-−])?(?P<temp>{n})\s?°\s?(?P<unit>[CF])\b",
                rf"{_BEFORE}(?P<deg>{n})\s?°",
                r"\b(?P<ord>\d{1,9})(?P<ord_suffix>(?i:st|nd|rd|th|er|re|e|ème|eme)|º|ª)\b",
                r"\b(?P<decade>1\d\d0|20\d0)s\b",
                rf"{_BEFORE}(?P<day>[1-9]|[12]\d|3[01])\.(?=\s(?:{_GERMAN_MONTHS})\b)",
                rf"{_BEFORE}(?P<hour>[01]?\d|2[0-3]):(?P<minute>[0-5]\d){_AFTER}",
                rf"{_BEFORE}(?P<low>{n})\s?–\s?(?P<high>{n}){_AFTER}",
                rf"(?:(?P<neg>(?<![\w.,])[-−]))?{_BEFORE}(?P<num>{n}){_AFTER}",
            )
        )
    )


_PATTERNS = {True: _pattern(_POINT_NUMBER), False: _pattern(_COMMA_NUMBER)}
_ORDINAL_SUFFIXES = {
    "en": ("st", "nd", "rd", "th"),
    "fr": ("er", "re", "e", "ème", "eme"),
    "es": ("º", "ª"),
    "it": ("º", "ª"),
    "pt": ("º", "ª"),
}


def num2words_language(language: str) -> str | None:
    """The num2words converter for a BCP 47 tag ("pt-BR" → "pt_BR", "en-GB" → "en"); None when
    num2words has none."""
    from num2words import CONVERTER_CLASSES

    parts = language.replace("_", "-").split("-")
    primary = primary_subtag(language)
    regional = f"{primary}_{parts[1].upper()}" if len(parts) > 1 else ""
    for code in (regional, primary):
        if code and code in CONVERTER_CLASSES:
            return code
    return None


class Speller:
    """Reads numbers in one language; every method returns None where it cannot."""

    def __init__(self, language: str) -> None:
        self.code = num2words_language(language)
        self.primary = primary_subtag(language)

    def cardinal(self, value: int) -> str | None:
        return _words(self.code, value, "cardinal") if self.code else None

    def digits(self, text: str) -> str | None:
        words = [_words(self.code, int(d), "cardinal") if self.code else None for d in text]
        return None if None in words else " ".join(w for w in words if w)

    def decimal(self, value: Decimal) -> str | None:
        whole, _, fraction = f"{abs(value):f}".partition(".")
        point = _point_word(self.code, self.primary)
        whole_words = self.cardinal(int(whole))
        if whole_words is None:
            return None
        spoken: str | None
        if not fraction:
            spoken = whole_words
        elif point is not None and (digits := self.digits(fraction)) is not None:
            spoken = f"{whole_words} {point} {digits}"
        else:
            spoken = _words(self.code, abs(value), "cardinal") if self.code else None
        return self._signed(spoken, value < 0)

    def _signed(self, spoken: str | None, negative: bool) -> str | None:
        if spoken is None or not negative:
            return spoken
        minus = _words(self.code, -1, "cardinal") if self.code else None
        # num2words says "minus one": keep its word for "minus", not its "one".
        return f"{minus.rsplit(' ', 1)[0]} {spoken}" if minus and " " in minus else spoken

    def ordinal(self, value: int) -> str | None:
        return _words(self.code, value, "ordinal") if self.code else None

    def year(self, value: int) -> str | None:
        return _words(self.code, value, "year") if self.code else None

    def currency(self, amount: Decimal, code: str) -> str | None:
        """An amount of money: "five dollars, twenty cents", "three euros"."""
        if self.code is None:
            return None
        if amount != amount.to_integral_value():
            return _words(self.code, amount, "currency", code)
        whole = int(amount)
        noun = self.currency_noun(code, whole)
        spoken = self.cardinal(whole)
        return f"{spoken} {noun}" if spoken and noun else None

    def currency_noun(self, code: str, count: int) -> str | None:
        from num2words import CONVERTER_CLASSES

        converter: Any = CONVERTER_CLASSES.get(self.code or "")
        try:
            forms = converter.CURRENCY_FORMS[code][0]
            return str(converter.pluralize(count, forms))
        except (AttributeError, KeyError, TypeError, IndexError, NotImplementedError):
            return None


def _point_word(code: str | None, primary: str) -> str | None:
    from num2words import CONVERTER_CLASSES

    word = getattr(CONVERTER_CLASSES.get(code or ""), "pointword", None)
    return word if isinstance(word, str) else _POINT_WORDS.get(primary)


@functools.lru_cache(maxsize=4096)
def _words(code: str, value: int | Decimal, kind: str, currency: str = "") -> str | None:
    from num2words import num2words

    try:
        if kind == "currency":
            return str(num2words(value, lang=code, to="currency", currency=currency))
        return str(num2words(value, lang=code, to=kind))
    except (NotImplementedError, OverflowError, ValueError, TypeError, KeyError, IndexError):
        return None


def expand_numbers(text: str, lexicon: Lexicon, speller: Speller) -> str:
    """`text` with its numbers as words."""
    if speller.code is None:
        return text
    reader = _Reader(lexicon, speller)
    return _PATTERNS[lexicon.decimal_point].sub(reader.read, text)


class _Reader:
    """Reads one match of the number pattern; what it cannot read stays as written."""

    def __init__(self, lexicon: Lexicon, speller: Speller) -> None:
        self.lexicon = lexicon
        self.speller = speller

    def read(self, match: re.Match[str]) -> str:
        found = {key: value for key, value in match.groupdict().items() if value is not None}
        for keys, method in self._readers():
            if keys <= found.keys():
                spoken = method(found)
                return match.group(0) if spoken is None else spoken
        return match.group(0)

    def _readers(self) -> list[tuple[set[str], Any]]:
        return [
            ({"sym", "amount"}, self._money),
            ({"sym_post", "amount_post"}, self._money_after),
            ({"pct"}, self._percent),
            ({"temp", "unit"}, self._temperature),
            ({"deg"}, self._degrees),
            ({"ord", "ord_suffix"}, self._ordinal),
            ({"decade"}, self._decade),
            ({"day"}, self._german_day),
            ({"hour", "minute"}, self._time),
            ({"low", "high"}, self._range),
            ({"num"}, self._number),
        ]

    def _value(self, written: str) -> Decimal | None:
        if self.lexicon.decimal_point:
            plain = written.replace(",", "")
        else:
            plain = written.replace(".", "").replace(" ", "").replace(",", ".")
        try:
            return Decimal(plain)
        except InvalidOperation:
            return None

    def _spoken_number(
        self, written: str, negative: bool = False, years: bool = False
    ) -> str | None:
        value = self._value(written)
        if value is None:
            return None
        if written.isdigit() and len(written) > 1:
            if written.startswith("0") or len(written) > _MAX_CARDINAL_DIGITS:
                return self.speller.digits(written)  # "007", an ISBN: a code, not a quantity
            if years and not negative and len(written) == 4 and int(written) in _YEARS:
                return self.speller.year(int(written))
        return self.speller.decimal(-value if negative else value)

    def _money(self, found: dict[str, str]) -> str | None:
        code = _CURRENCY_SYMBOLS[found["sym"]]
        value = self._value(found["amount"])
        if value is None:
            return None
        scale = found.get("scale")
        if scale is None:
            return self.speller.currency(value, code) or self._money_fallback(value, code)
        number = self.speller.decimal(value)
        noun = self.speller.currency_noun(code, 5) or self.lexicon.currencies.get(code)
        if number is None or noun is None:
            return None
        return f"{number} {_SCALES.get(scale, scale)} {noun}"

    def _money_after(self, found: dict[str, str]) -> str | None:
        return self._money({"sym": found["sym_post"], "amount": found["amount_post"]})

    def _money_fallback(self, value: Decimal, code: str) -> str | None:
        number, noun = self.speller.decimal(value), self.lexicon.currencies.get(code)
        return f"{number} {noun}" if number and noun else None

    def _percent(self, found: dict[str, str]) -> str | None:
        spoken = self._spoken_number(found["pct"])
        return f"{spoken} {self.lexicon.percent}" if spoken and self.lexicon.percent else None

    def _temperature(self, found: dict[str, str]) -> str | None:
        negative = "temp_neg" in found
        spoken = self._spoken_number(found["temp"], negative)
        word = self.lexicon.celsius if found["unit"] == "C" else self.lexicon.fahrenheit
        return f"{spoken} {word}" if spoken and word else None

    def _degrees(self, found: dict[str, str]) -> str | None:
        spoken = self._spoken_number(found["deg"])
        return f"{spoken} {self.lexicon.degrees}" if spoken and self.lexicon.degrees else None

    def _ordinal(self, found: dict[str, str]) -> str | None:
        suffixes = _ORDINAL_SUFFIXES.get(self.speller.primary, ())
        if found["ord_suffix"].lower() not in suffixes:
            return None
        return self.speller.ordinal(int(found["ord"]))

    def _decade(self, found: dict[str, str]) -> str | None:
        if self.speller.primary != "en":
            return None
        year = self.speller.year(int(found["decade"]))
        if year is None:
            return None
        return year[:-1] + "ies" if year.endswith("y") else year + "s"

    def _german_day(self, found: dict[str, str]) -> str | None:
        if self.speller.primary != "de":
            return None
        ordinal = self.speller.ordinal(int(found["day"]))
        # The dative ("am dritten Mai") is by far the most common case of a date in running text.
        return f"{ordinal}n" if ordinal and ordinal.endswith("e") else ordinal

    def _time(self, found: dict[str, str]) -> str | None:
        if self.speller.primary != "en":
            return None
        hour, minute = int(found["hour"]), int(found["minute"])
        spoken_hour = self.speller.cardinal(hour)
        if spoken_hour is None:
            return None
        if minute == 0:
            return f"{spoken_hour} o'clock"
        spoken_minute = self.speller.cardinal(minute) or ""
        return f"{spoken_hour} {'oh ' if minute < 10 else ''}{spoken_minute}"

    def _range(self, found: dict[str, str]) -> str | None:
        low = self._spoken_number(found["low"], years=True)
        high = self._spoken_number(found["high"], years=True)
        word = self.lexicon.range_word
        return f"{low} {word} {high}" if low and high and word else None

    def _number(self, found: dict[str, str]) -> str | None:
        return self._spoken_number(found["num"], "neg" in found, years=True)
