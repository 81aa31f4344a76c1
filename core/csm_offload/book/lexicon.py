"""The words a narrator says for abbreviations and symbols, per language.

Only languages listed here get abbreviations and symbols read out; numbers are read in every
language num2words knows (see `numbers`). A language missing here leaves abbreviations and
symbols as written, which CSM reads as best it can, rather than reading them in English.
"""

from __future__ import annotations

from collections.abc import Mapping

import attrs


@attrs.frozen
class Lexicon:
    """One language's readings.

    `titles` never end a sentence ("Dr." before a name); `terminal` may ("etc." at a sentence
    end keeps its full stop once read out, so sentence detection still sees the end there).
    Keys are written as in text, full stops included; matching is case-sensitive.
    """

    titles: Mapping[str, str] = attrs.field(factory=dict)
    #: Read one way before a capitalised word ("St. Paul": Saint) and another elsewhere
    #: ("Baker St.": Street), where a full stop may also end the sentence.
    before_name: Mapping[str, tuple[str, str]] = attrs.field(factory=dict)
    terminal: Mapping[str, str] = attrs.field(factory=dict)
    symbols: Mapping[str, str] = attrs.field(factory=dict)
    percent: str = ""
    degrees: str = ""
    celsius: str = ""
    fahrenheit: str = ""
    #: Between the two numbers of a range written with an en dash: "1914–1918".
    range_word: str = ""
    #: Read for "#" or one of `number_marks` ("No.", "Nr.") before a number.
    number_word: str = ""
    number_marks: tuple[str, ...] = ()
    #: Currency names where num2words has none for this language: code → plural name.
    currencies: Mapping[str, str] = attrs.field(factory=dict)
    #: True where "1,234.5" is written (comma groups, point decimals); False for "1.234,5".
    decimal_point: bool = True


_EN = Lexicon(
    titles={
        "Mr.": "Mister",
        "Mrs.": "Missus",
        "Ms.": "Miz",
        "Prof.": "Professor",
        "Rev.": "Reverend",
        "Gen.": "General",
        "Capt.": "Captain",
        "Lt.": "Lieutenant",
        "Sgt.": "Sergeant",
        "Mt.": "Mount",
        "Ft.": "Fort",
        "e.g.": "for example",
        "i.e.": "that is",
        "cf.": "compare",
        "vs.": "versus",
        "approx.": "approximately",
        "Fig.": "Figure",
        "fig.": "figure",
        "Vol.": "Volume",
        "vol.": "volume",
        "Ch.": "Chapter",
        "pp.": "pages",
    },
    before_name={"Dr.": ("Doctor", "Drive"), "St.": ("Saint", "Street")},
    terminal={
        "etc.": "et cetera",
        "a.m.": "AM",
        "p.m.": "PM",
        "Inc.": "Incorporated",
        "Ltd.": "Limited",
        "Jr.": "Junior",
        "Sr.": "Senior",
    },
    symbols={
        "&": "and",
        "@": "at",
        "+": "plus",
        "=": "equals",
        "×": "times",
        "÷": "divided by",
        "±": "plus or minus",
        "§": "section",
        "©": "copyright",
        "~": "about",
    },
    percent="percent",
    degrees="degrees",
    celsius="degrees Celsius",
    fahrenheit="degrees Fahrenheit",
    range_word="to",
    number_word="number",
    number_marks=("No.",),
    currencies={"JPY": "yen", "CNY": "yuan", "CHF": "Swiss francs", "INR": "rupees"},
)

_DE = Lexicon(
    titles={
        "Dr.": "Doktor",
        "Prof.": "Professor",
        "Hr.": "Herr",
        "Fr.": "Frau",
        "St.": "Sankt",
        "z. B.": "zum Beispiel",
        "z.B.": "zum Beispiel",
        "d. h.": "das heißt",
        "d.h.": "das heißt",
        "u. a.": "unter anderem",
        "u.a.": "unter anderem",
        "bzw.": "beziehungsweise",
        "ca.": "circa",
        "vgl.": "vergleiche",
        "S.": "Seite",
    },
    terminal={"usw.": "und so weiter", "etc.": "et cetera", "Jh.": "Jahrhundert"},
    symbols={"&": "und", "@": "at", "+": "plus", "=": "gleich", "×": "mal", "§": "Paragraf"},
    percent="Prozent",
    degrees="Grad",
    celsius="Grad Celsius",
    fahrenheit="Grad Fahrenheit",
    range_word="bis",
    number_word="Nummer",
    number_marks=("Nr.",),
    decimal_point=False,
)

_FR = Lexicon(
    titles={
        "M.": "Monsieur",
        "MM.": "Messieurs",
        "Mme": "Madame",
        "Mlle": "Mademoiselle",
        "Dr": "Docteur",
        "p. ex.": "par exemple",
        "c.-à-d.": "c'est-à-dire",
        "St": "Saint",
        "Ste": "Sainte",
    },
    terminal={"etc.": "et cetera"},
    symbols={"&": "et", "@": "arobase", "+": "plus", "=": "égale", "×": "fois", "§": "paragraphe"},
    percent="pour cent",
    degrees="degrés",
    celsius="degrés Celsius",
    fahrenheit="degrés Fahrenheit",
    range_word="à",
    number_word="numéro",
    number_marks=("n°", "N°"),
    decimal_point=False,
)

_ES = Lexicon(
    titles={
        "Sr.": "Señor",
        "Sra.": "Señora",
        "Srta.": "Señorita",
        "Dr.": "Doctor",
        "Dra.": "Doctora",
        "p. ej.": "por ejemplo",
        "Ud.": "usted",
        "Uds.": "ustedes",
    },
    terminal={"etc.": "etcétera"},
    symbols={"&": "y", "@": "arroba", "+": "más", "=": "igual a", "×": "por", "§": "sección"},
    percent="por ciento",
    degrees="grados",
    celsius="grados Celsius",
    fahrenheit="grados Fahrenheit",
    range_word="a",
    number_word="número",
    number_marks=("n.º", "N.º", "núm."),
    decimal_point=False,
)

_LEXICONS = {"en": _EN, "de": _DE, "fr": _FR, "es": _ES}
#: Languages that write "3,5" for three and a half (and group thousands with points or spaces).
_DECIMAL_COMMA = frozenset(
    {
        *("it", "pt", "nl", "ru", "pl", "cs", "sk", "sl", "sv", "da", "no", "nb", "nn", "fi"),
        *("tr", "ro", "hu", "uk", "be", "bg", "hr", "sr", "lt", "lv", "et", "id", "is", "el"),
    }
)


def primary_subtag(language: str) -> str:
    """ "en" for "en-GB", "en_US" or "EN"; "" for an empty tag."""
    return language.replace("_", "-").split("-", 1)[0].strip().lower()


def lexicon_for(language: str) -> Lexicon:
    """The readings for a BCP 47 language tag; for a language not listed, none but the way it
    writes decimals (nothing is read out but numbers)."""
    primary = primary_subtag(language)
    found = _LEXICONS.get(primary)
    return found if found is not None else Lexicon(decimal_point=primary not in _DECIMAL_COMMA)
