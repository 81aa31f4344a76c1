"""What an audiobook's files are tagged with, and the FFMETADATA text that carries it to ffmpeg.

Tags are single-line text: whitespace runs become one space and NULs are dropped, because no
player shows a line break in a title and ffmpeg's FFMETADATA reader ends a value at a carriage
return even when it is escaped. A trailing backslash is dropped too: that reader takes an
escaped backslash before the line end for a line continuation, so no value can end with one.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from fractions import Fraction
from pathlib import Path
from typing import Literal

import attrs

from ..errors import UserError

CoverMime = Literal["image/jpeg", "image/png"]
_JPEG_MAGIC = b"\xff\xd8\xff"
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
#: A cover is a picture, not a book: Apple asks for at most a few MB; this bounds a mistake.
MAX_COVER_BYTES = 20 * 1024**2
_HEADER = ";FFMETADATA1"
#: Characters FFMETADATA escapes with a backslash (its own list: = ; # \ and the line feed).
_SPECIAL = re.compile(r"([=;#\\\n])")
_TRAILING = re.compile(r"[\s\\]+\Z")

# ISO 639-1 → ISO 639-2/T, the three-letter codes MP4 track languages and ID3's TLAN hold.
_ISO639_1: dict[str, str] = dict(
    re.findall(
        r"([a-z]{2}):([a-z]{3})",
        """
    aa:aar ab:abk ae:ave af:afr ak:aka am:amh an:arg ar:ara as:asm av:ava ay:aym az:aze ba:bak
    be:bel bg:bul bh:bih bi:bis bm:bam bn:ben bo:bod br:bre bs:bos ca:cat ce:che ch:cha co:cos
    cr:cre cs:ces cu:chu cv:chv cy:cym da:dan de:deu dv:div dz:dzo ee:ewe el:ell en:eng eo:epo
    es:spa et:est eu:eus fa:fas ff:ful fi:fin fj:fij fo:fao fr:fra fy:fry ga:gle gd:gla gl:glg
    gn:grn gu:guj gv:glv ha:hau he:heb hi:hin ho:hmo hr:hrv ht:hat hu:hun hy:hye hz:her ia:ina
    id:ind ie:ile ig:ibo ii:iii ik:ipk io:ido is:isl it:ita iu:iku ja:jpn jv:jav ka:kat kg:kon
    ki:kik kj:kua kk:kaz kl:kal km:khm kn:kan ko:kor kr:kau ks:kas ku:kur kv:kom kw:cor ky:kir
    la:lat lb:ltz lg:lug li:lim ln:lin lo:lao lt:lit lu:lub lv:lav mg:mlg mh:mah mi:mri mk:mkd
    ml:mal mn:mon mr:mar ms:msa mt:mlt my:mya na:nau nb:nob nd:nde ne:nep ng:ndo nl:nld nn:nno
    no:nor nr:nbl nv:nav ny:nya oc:oci oj:oji om:orm or:ori os:oss pa:pan pi:pli pl:pol ps:pus
    pt:por qu:que rm:roh rn:run ro:ron ru:rus rw:kin sa:san sc:srd sd:snd se:sme sg:sag si:sin
    sk:slk sl:slv sm:smo sn:sna so:som sq:sqi sr:srp ss:ssw st:sot su:sun sv:swe sw:swa ta:tam
    te:tel tg:tgk th:tha ti:tir tk:tuk tl:tgl tn:tsn to:ton tr:tur ts:tso tt:tat tw:twi ty:tah
    ug:uig uk:ukr ur:urd uz:uzb ve:ven vi:vie vo:vol wa:wln wo:wol xh:xho yi:yid yo:yor za:zha
    zh:zho zu:zul
    """,
    )
)


def tag_text(value: str) -> str:
    """`value` as a tag can hold it: one line, no NUL, no trailing backslash (see the module)."""
    return _TRAILING.sub("", " ".join(value.replace("\x00", "").split()))


def iso639_2(code: str) -> str:
    """The ISO 639-2 code of a language given as `en`, `eng`, `en-US` or `pt_BR`."""
    primary = re.split(r"[-_]", code.strip(), maxsplit=1)[0].lower()
    if len(primary) == 3 and primary.isascii() and primary.isalpha():
        return primary
    if primary in _ISO639_1:
        return _ISO639_1[primary]
    raise UserError(
        f"language {code!r} is not an ISO 639 language code; give one such as en, eng or en-US"
    )


def _optional_language(code: str | None) -> str | None:
    return None if code is None or not code.strip() else iso639_2(code)


@attrs.frozen
class Cover:
    """A cover picture: JPEG or PNG bytes, the two formats MP4 `covr` and ID3 APIC both carry."""

    data: bytes = attrs.field(repr=False)
    mime: CoverMime

    @classmethod
    def from_bytes(cls, data: bytes) -> Cover:
        """Recognise JPEG or PNG by its first bytes (a file's suffix may lie)."""
        if len(data) > MAX_COVER_BYTES:
            raise UserError(
                f"the cover is {len(data) // 1024**2} MB, over {MAX_COVER_BYTES // 1024**2} MB; "
                "use a smaller picture (Apple asks for at most 3000×3000 pixels)"
            )
        if data.startswith(_JPEG_MAGIC):
            return cls(bytes(data), "image/jpeg")
        if data.startswith(_PNG_MAGIC):
            return cls(bytes(data), "image/png")
        raise UserError("the cover is not a JPEG or PNG image; convert it to JPEG or PNG")

    @classmethod
    def from_file(cls, path: Path) -> Cover:
        try:
            with path.open("rb") as handle:
                data = handle.read(MAX_COVER_BYTES + 1)
        except OSError as exc:
            raise UserError(
                f"cannot read the cover {path} ({exc.strerror or exc}); give a readable image"
            ) from None
        return cls.from_bytes(data)

    @property
    def suffix(self) -> str:
        return ".jpg" if self.mime == "image/jpeg" else ".png"


@attrs.frozen
class BookInfo:
    """The book-level tags every output carries."""

    title: str = attrs.field(converter=tag_text)
    author: str = attrs.field(converter=tag_text)
    #: ISO 639-2 (three letters); any ISO 639-1 code or BCP 47 tag is converted on the way in.
    language: str | None = attrs.field(default=None, converter=_optional_language)
    cover: Cover | None = None


@attrs.frozen
class ChapterMark:
    """One chapter of a book file: from `start` to `end` in units of `timebase` seconds."""

    title: str = attrs.field(converter=tag_text)
    start: int
    end: int
    timebase: Fraction

    @property
    def start_s(self) -> float:
        return float(self.start * self.timebase)

    @property
    def end_s(self) -> float:
        return float(self.end * self.timebase)


def chapter_marks(
    titles: Sequence[str], frames: Sequence[int], sample_rate: int
) -> list[ChapterMark]:
    """Chapters laid end to end, counted in samples so that no mark drifts from its audio."""
    if len(titles) != len(frames):
        raise ValueError(f"{len(titles)} chapter titles for {len(frames)} chapters")
    marks: list[ChapterMark] = []
    start = 0
    for title, length in zip(titles, frames, strict=True):
        marks.append(ChapterMark(title, start, start + length, Fraction(1, sample_rate)))
        start += length
    return marks


@attrs.frozen
class FFMetadata:
    """The content of an FFMETADATA file: global tags and chapters."""

    tags: Mapping[str, str] = attrs.field(factory=dict)
    chapters: tuple[ChapterMark, ...] = ()


def escape(value: str) -> str:
    return _SPECIAL.sub(r"\\\1", value)


def render_ffmetadata(meta: FFMetadata) -> str:
    lines = [_HEADER]
    lines += [f"{escape(key)}={escape(tag_text(value))}" for key, value in meta.tags.items()]
    for mark in meta.chapters:
        tb = mark.timebase
        lines += ["[CHAPTER]", f"TIMEBASE={tb.numerator}/{tb.denominator}"]
        lines += [f"START={mark.start}", f"END={mark.end}", f"title={escape(mark.title)}"]
    return "\n".join(lines) + "\n"


def _logical_lines(text: str) -> Iterable[str]:
    """Lines with escapes kept, joined where a line feed was escaped."""
    current: list[str] = []
    index = 0
    while index < len(text):
        char = text[index]
        if char == "\\" and index + 1 < len(text):
            current.append(text[index : index + 2])
            index += 2
            continue
        if char == "\n":
            yield "".join(current)
            current = []
        else:
            current.append(char)
        index += 1
    if current:
        yield "".join(current)


def _split_tag(line: str) -> tuple[str, str] | None:
    """`key=value` unescaped, split at the first unescaped `=`; None for a line without one."""
    parts = re.split(r"(?<!\\)((?:\\\\)*)=", line, maxsplit=1)
    if len(parts) < 3:
        return None
    key, slashes, value = parts
    return _unescape(key + slashes), _unescape(value)


def _unescape(text: str) -> str:
    return re.sub(r"\\(.)", r"\1", text, flags=re.DOTALL)


def parse_ffmetadata(text: str) -> FFMetadata:
    """Read FFMETADATA (what `ffmpeg -i FILE -f ffmetadata -` prints): tags and chapters."""
    lines = iter(_logical_lines(text))
    if next(lines, "").rstrip("\r") != _HEADER:
        raise ValueError(f"not FFMETADATA: the first line is not {_HEADER}")
    tags: dict[str, str] = {}
    sections: list[dict[str, str]] = []
    current = tags
    for line in lines:
        if line.startswith("[") and line.rstrip().endswith("]"):
            current = {"[section]": line.strip()[1:-1]}
            sections.append(current)
        elif line and line[0] not in ";#" and (pair := _split_tag(line)):
            current[pair[0]] = pair[1]
    chapters = tuple(_chapter(section) for section in sections if section["[section]"] == "CHAPTER")
    return FFMetadata(tags, chapters)


def _chapter(fields: Mapping[str, str]) -> ChapterMark:
    try:
        num, _, den = fields.get("TIMEBASE", "1/1000000000").partition("/")
        timebase = Fraction(int(num), int(den or 1))
        start, end = int(fields["START"]), int(fields["END"])
        return ChapterMark(fields.get("title", ""), start, end, timebase)
    except (KeyError, ValueError, ZeroDivisionError) as exc:
        raise ValueError(f"malformed FFMETADATA chapter {dict(fields)}: {exc}") from None
