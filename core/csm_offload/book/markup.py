"""HTML and XHTML as speakable blocks: the text a reader sees, in reading order, without what a
narrator skips (scripts, footnote markers and bodies, page-break markers, ruby annotations).

EPUB content and saved web pages are both HTML; this module is the one place that knows which
elements make paragraphs and which hold nothing to say. Parsing never resolves external
entities or loads a DTD, and the tree is walked without recursion (hostile nesting is safe).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from html.entities import html5

import attrs
from lxml import etree
from lxml import html as lxml_html

from .model import Unreadable

_OPS = "{http://www.idpf.org/2007/ops}type"


def _names(spaced: str) -> frozenset[str]:
    return frozenset(spaced.split())


#: Elements whose text starts and ends a block (a paragraph of the output).
_BLOCKS = _names(
    "address article aside blockquote body caption dd div dl dt figcaption figure footer "
    "h1 h2 h3 h4 h5 h6 header hr li main ol p pre section table td th tr ul"
)
_HEADINGS = {f"h{level}": level for level in range(1, 7)}
#: Elements with nothing to say aloud.
_SILENT = _names(
    "head script style noscript template title rt rp svg math object iframe button "
    "select textarea nav"
)
#: epub:type and role values of what a narrator skips: notes, their markers, page furniture.
_SKIPPED_TYPES = _names(
    "noteref footnote footnotes endnote endnotes rearnote rearnotes note pagebreak page-list "
    "toc landmarks loi lot index colophon imprint copyright-page "
    "doc-noteref doc-footnote doc-endnote doc-endnotes doc-pagebreak doc-toc doc-index"
)
#: Class names of line and page numbers printed beside the text (poetry, facsimiles).
_NUMBER_CLASSES = _names(
    "lnum linenum linenumber line-number lineno pagenum pagenumber page-number pageno page-num"
)
_GUTENBERG_IDS = frozenset({"pg-header", "pg-footer"})
#: The longest average line of a stanza written as one <div> per line.
_MAX_LINE = 100
_LINE_GROUP = frozenset({"div", "blockquote"})
_FULL_STOPS = (".", "!", "?", "…", '"', "”", "’")
#: The text of a footnote marker link: "1", "[12]", "(a)", "*", "†".
_MARKER = re.compile(r"\s*[\[(]?\s*(?:\d{1,4}|[a-zA-Z]{1,2}|[*†‡§¶]{1,3})\s*[\])]?\s*")
#: Named HTML entities that XML does not know; turned into numeric references before parsing.
_ENTITY = re.compile(rb"&([A-Za-z][A-Za-z0-9]{1,31});")
_XML_ENTITIES = frozenset({b"amp", b"lt", b"gt", b"quot", b"apos"})
_CHAR_REFERENCE = re.compile(rb"&#([xX][0-9A-Fa-f]{1,8}|[0-9]{1,10});")


@attrs.frozen
class Block:
    """A paragraph of text; `heading` is 1–6 for h1–h6 and 0 otherwise; `anchors` are the ids
    that point at it or just before it (a table of contents' targets)."""

    text: str
    heading: int = 0
    anchors: tuple[str, ...] = ()


def safe_xml_parser(*, recover: bool = True) -> etree.XMLParser:
    """An XML parser that loads nothing from outside and expands no entity (no XXE, no
    billion laughs)."""
    return etree.XMLParser(
        resolve_entities=False,
        no_network=True,
        load_dtd=False,
        huge_tree=False,
        recover=recover,
        remove_comments=True,
        remove_pis=True,
    )


def parse_document(data: bytes) -> etree._Element | None:
    """XHTML parsed as XML (named HTML entities kept), else as HTML; None when neither yields
    a document. Markup nested past libxml2's depth bound (256) is refused, not read in part."""
    parser = safe_xml_parser()
    try:
        root = etree.fromstring(_numeric_entities(data), parser)
    except etree.XMLSyntaxError:
        root = None
    _check_limits(parser.error_log)
    if root is not None and local_name(root) == "html":
        return root
    html_parser = lxml_html.HTMLParser(no_network=True)
    try:
        root = lxml_html.fromstring(_CHAR_REFERENCE.sub(_valid_reference, data), parser=html_parser)
    except (etree.ParserError, ValueError):
        return None
    _check_limits(html_parser.error_log)
    if not isinstance(root.tag, str):  # a fragment that is only a comment or an instruction
        root = root.getroottree().getroot()
    return root if isinstance(root.tag, str) else None


def _check_limits(log: etree._ListErrorLog) -> None:
    if any(error.type_name == "ERR_RESOURCE_LIMIT" for error in log):
        raise Unreadable(
            "has markup nested deeper than 256 levels (or a text run past 10 MB), which no "
            "book needs; it is refused rather than read in part"
        )


def _numeric_entities(data: bytes) -> bytes:
    def replace(match: re.Match[bytes]) -> bytes:
        name = match.group(1)
        if name in _XML_ENTITIES:
            return match.group(0)
        char = html5.get(name.decode("ascii") + ";")
        return "".join(f"&#{ord(c)};" for c in char).encode() if char else match.group(0)

    return _CHAR_REFERENCE.sub(_valid_reference, _ENTITY.sub(replace, data))


def _valid_reference(match: re.Match[bytes]) -> bytes:
    """A character reference to no character (a surrogate, NUL, past U+10FFFF) becomes U+FFFD:
    libxml2's HTML parser would keep its bytes, which are not UTF-8, and fail us later."""
    digits = match.group(1)
    code = int(digits[1:], 16) if digits[:1] in (b"x", b"X") else int(digits)
    valid = 0 < code <= 0x10FFFF and not 0xD800 <= code <= 0xDFFF
    return match.group(0) if valid else b"&#xFFFD;"


def local_name(element: etree._Element) -> str:
    tag = element.tag
    if not isinstance(tag, str):
        return ""  # a comment, processing instruction or entity
    return tag.rsplit("}", 1)[-1].lower()


def _skipped(element: etree._Element, name: str) -> bool:
    if name in _SILENT or element.get("hidden") is not None:
        return True
    if _SKIPPED_TYPES.intersection(_kinds(element)):
        return True
    classes = (element.get("class") or "").lower().split()
    if _NUMBER_CLASSES.intersection(classes) or "pg-boilerplate" in classes:
        return True  # printed line or page numbers; Project Gutenberg's licence wrapper
    if element.get("id") in _GUTENBERG_IDS:
        return True
    return name == "a" and is_note_marker(element)


def _kinds(element: etree._Element) -> list[str]:
    """Its epub:type and ARIA role words (the HTML parser keeps "epub:type" as a plain name)."""
    words = (element.get(_OPS, ""), element.get("epub:type", ""), element.get("role", ""))
    return " ".join(words).split()


def is_note_marker(element: etree._Element) -> bool:
    """A link to a note whose whole text is a marker: "1", "[2]", "*"."""
    href = element.get("href") or ""
    return "#" in href and bool(_MARKER.fullmatch("".join(element.itertext())))


class _Collector:
    """Gathers inline text into blocks as the walk meets block boundaries."""

    def __init__(self) -> None:
        self.blocks: list[Block] = []
        self._parts: list[str] = []
        self._anchors: list[str] = []
        self._heading = 0

    def text(self, value: str | None) -> None:
        if value:
            self._parts.append(value)

    def anchor(self, name: str) -> None:
        self._anchors.append(name)

    def boundary(self, heading: int = 0) -> None:
        """End the current block; the next one is a heading of this level (0: none)."""
        text = " ".join("".join(self._parts).split())
        if text:
            self.blocks.append(Block(text, self._heading, tuple(self._anchors)))
            self._anchors = []
        self._parts = []
        self._heading = heading


def blocks(root: etree._Element) -> list[Block]:
    """The document's body as blocks, in reading order."""
    body = next((el for el in root.iter() if local_name(el) == "body"), root)
    out = _Collector()
    groups: list[etree._Element] = []  # the line groups (stanzas) the walk is inside
    walk = etree.iterwalk(body, events=("start", "end"))
    for event, element in walk:
        name = local_name(element)
        if event == "start":
            _start(walk, element, name, out, inline=bool(groups))
            if not groups and name == "div" and _is_line_group(element):
                groups.append(element)
            continue
        if groups and element is groups[-1]:
            groups.pop()
        if name in _BLOCKS and not groups:
            out.boundary()
        elif name == "br" or groups:
            out.text(" ")
        if element is not body:
            out.text(element.tail)
    out.boundary()
    return out.blocks


def _start(
    walk: etree.iterwalk, element: etree._Element, name: str, out: _Collector, inline: bool
) -> None:
    if name in _BLOCKS and not inline:
        # Before the anchors: an id on a block element points at that block, not the last one.
        out.boundary(_HEADINGS.get(name, 0))
    for key in ("id", "name" if name == "a" else None):
        if key and (value := element.get(key)):
            out.anchor(value)
    if not name or _skipped(element, name):
        walk.skip_subtree()
        return
    out.text(element.text)


def _is_line_group(element: etree._Element) -> bool:
    """A stanza written as one <div> per line (quoted lines in a nested <blockquote> or <div>):
    read as one paragraph, not one per line, since each paragraph is a request of its own and
    a line break is a short pause. Lines are short and mostly end without a full stop; prose
    paragraphs written as <div>s end with one and stay paragraphs."""
    children = [child for child in element if isinstance(child.tag, str)]
    if len(children) < 2 or any(local_name(child) not in _LINE_GROUP for child in children):
        return False
    lines: list[str] = []
    for inner in element.iterdescendants():
        name = local_name(inner)
        if name in _BLOCKS and name not in _LINE_GROUP:
            return False
        if name == "div" and not any(local_name(child) in _LINE_GROUP for child in inner):
            lines.append(" ".join("".join(inner.itertext()).split()))
    if len(lines) < 2 or sum(map(len, lines)) > _MAX_LINE * len(lines):
        return False
    return 2 * sum(line.endswith(_FULL_STOPS) for line in lines) < len(lines)


def drop_note_markers(root: etree._Element) -> None:
    """Remove footnote-marker links (keeping the text that follows them), so an extractor
    that reads the tree never speaks "1" or "[12]" after a sentence."""
    for element in list(_markers(root.iter())):
        parent = element.getparent()
        if parent is None:
            continue
        tail = element.tail or ""
        previous = element.getprevious()
        if previous is not None:
            previous.tail = (previous.tail or "") + tail
        else:
            parent.text = (parent.text or "") + tail
        parent.remove(element)


def _markers(elements: Iterable[etree._Element]) -> Iterable[etree._Element]:
    return (element for element in elements if _is_marker(element, local_name(element)))


def _is_marker(element: etree._Element, name: str) -> bool:
    if name == "a" and is_note_marker(element):
        return True
    return name in ("a", "sup", "span") and bool(_SKIPPED_TYPES.intersection(_kinds(element)))


def document_title(root: etree._Element) -> str | None:
    """The text of the document's <title>, if it has one."""
    title = next((el for el in root.iter() if local_name(el) == "title"), None)
    text = " ".join("".join(title.itertext()).split()) if title is not None else ""
    return text or None


def document_language(root: etree._Element) -> str | None:
    """The language the document declares: `lang` or `xml:lang` on its root, else a
    Content-Language meta element."""
    top = root.getroottree().getroot()
    for key in ("lang", "{http://www.w3.org/XML/1998/namespace}lang", "xml:lang"):
        if value := " ".join((top.get(key) or "").split()):
            return value
    for meta in top.iter():
        if local_name(meta) == "meta" and (meta.get("http-equiv") or "").lower() == (
            "content-language"
        ):
            return (meta.get("content") or "").split(",")[0].strip() or None
    return None
