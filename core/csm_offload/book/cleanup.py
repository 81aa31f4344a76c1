"""What no narrator reads: markup that survived extraction, footnote markers, editorial notes,
page numbers standing alone, scene-break ornaments, web addresses spelt out, invisible
characters. Language-independent; every rule is one linear regular expression.
"""

from __future__ import annotations

import html
import re
from urllib.parse import urlsplit

_ENTITY = re.compile(r"&(?:[A-Za-z]{2,10}|#\d{1,7}|#[xX][0-9A-Fa-f]{1,6});")
_TAG = re.compile(r"</?[A-Za-z][A-Za-z0-9-]*(?:\s[^<>]{0,500})?/?>")
#: Soft hyphens, zero-width spaces, word joiners, BOMs and bidi controls (ZWJ and ZWNJ stay:
#: scripts such as Persian and emoji sequences need them).
_INVISIBLE = re.compile("[\u00ad\u200b\u2060\ufeff\u202a-\u202e\u2066-\u2069]")
_LIGATURES = str.maketrans(
    {"ﬀ": "ff", "ﬁ": "fi", "ﬂ": "fl", "ﬃ": "ffi", "ﬄ": "ffl", "ﬅ": "st", "ﬆ": "st"}
)
_BRACKET_NOTES = re.compile(
    r"\[(?:\d{1,3}|[a-z]|\^[^\]\s]{1,40}|note \d{1,3}|citation needed|clarification needed|"
    r"verification needed|when\?|who\?|edit|sic)\]"
    r"|\[(?:Illustration|Footnote|Transcriber'?s? [Nn]ote|Sidenote)(?::[^\]]{0,2000})?\]",
    re.I,
)
#: Markers right after a word or a mark: superscript digits ("end.¹²"), asterisks, daggers.
_MARKERS = re.compile(r"(?:(?<=[^\W\d_]{2})|(?<=[.,;:!?”\"')\]]))(?:[¹²³⁴⁵⁶⁷⁸⁹⁰]+|[*†‡]+)(?=\W|\Z)")
#: Dot leaders of contents and index pages ("Chapter One . . . . 12", "Index......12"); not
#: a four-dot ellipsis ("the whale.... Some say"), which books use.
_LEADERS = re.compile(r"(?:\.\s){3,}\.|\.{6,}")
#: Bullets and asterisks left from lists and emphasis: read as nothing.
_ORNAMENTS = re.compile(r"[*•●▪■◆◇○◦]+")
#: A footnote number a PDF's text layer glued after a sentence's end: "the day.12 Then".
_GLUED_NOTE = re.compile(r"(?<=[a-z][.!?])\d{1,3}(?=\s+[A-Z“\"‘']|\s*\Z)")
#: Gutenberg's _italics_: the underscores are markup.
_UNDERSCORED = re.compile(r"(?<!\w)_([^_\n]{1,500})_(?!\w)")
_URL = re.compile(r"\b(?:https?://|www\.)[^\s<>\"'“”]+", re.I)
_URL_TRAILING = ".,;:!?)]}'\""
#: Paragraphs that are only a page number ("12", "- 12 -", "Page 12 of 300").
_PAGE_NUMBER = re.compile(r"[-–—\s]*(?:page\s+)?\d{1,5}(?:\s+of\s+\d{1,5})?[-–—\s]*", re.I)


def clean(paragraph: str) -> str:
    """One paragraph without what no narrator reads; "" when nothing readable is left."""
    text = paragraph.translate(_LIGATURES)
    text = _INVISIBLE.sub("", text)
    if "&" in text:
        text = _ENTITY.sub(lambda match: html.unescape(match.group(0)), text)
    if "<" in text:
        text = _TAG.sub("", text)
    text = _BRACKET_NOTES.sub("", text)
    text = _MARKERS.sub("", text)
    text = _ORNAMENTS.sub(" ", text)
    text = _LEADERS.sub(" ", text)
    text = _GLUED_NOTE.sub("", text)
    text = _UNDERSCORED.sub(r"\1", text)
    text = _URL.sub(_host, text)
    text = " ".join(text.split())
    if _PAGE_NUMBER.fullmatch(text) or not any(char.isalnum() for char in text):
        return ""  # a page number, or a scene break such as "* * *"
    return text


def _host(match: re.Match[str]) -> str:
    """A web address as its site's name: a listener cannot follow a path read aloud."""
    url = match.group(0)
    stripped = url.rstrip(_URL_TRAILING)
    trailing = url[len(stripped) :]
    target = stripped if "://" in stripped else f"http://{stripped}"
    try:
        host = urlsplit(target).hostname or stripped
    except ValueError:
        host = stripped
    return host.removeprefix("www.") + trailing
