"""EPUB books built in the test: chapters from the spine and a nested table of contents,
metadata and cover; and every hostile EPUB ends in one sentence, never a traceback."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from csm_offload.book import Skipped, Unreadable, read_book
from csm_offload.book import epub as epub_module
from csm_offload.book.epub import read_epub
from csm_offload.book.epub_toc import resolve
from csm_offload.book.markup import blocks, parse_document

from .conftest import COVER, EXPECTED_CHAPTERS, EpubSpec


def _chapters(path: Path) -> list[tuple[str, str]]:
    return [(chapter.title, chapter.text) for chapter in read_epub(path).chapters]


def test_an_epub3_gives_its_chapters_metadata_and_cover(tmp_path: Path, epub_spec: EpubSpec):
    book = read_epub(epub_spec.write(tmp_path / "book.epub"))
    assert book.title == "The Test Book"
    assert book.author == "Ada Author"  # the illustrator is not an author
    assert book.language == "en-GB"
    assert book.cover == COVER
    assert book.cover_mime == "image/png"
    assert [(c.title, c.text) for c in book.chapters] == EXPECTED_CHAPTERS
    assert all(c.source == str(tmp_path / "book.epub") for c in book.chapters)


def test_an_epub2_with_only_an_ncx_gives_the_same_chapters(tmp_path: Path, epub_spec: EpubSpec):
    epub_spec.nav = False
    assert _chapters(epub_spec.write(tmp_path / "book.epub")) == EXPECTED_CHAPTERS


def test_the_nav_document_wins_over_the_ncx(tmp_path: Path, epub_spec: EpubSpec):
    epub_spec.extra_files["OEBPS/toc.ncx"] = b"<ncx><navMap/></ncx>"  # empty: ignored
    assert _chapters(epub_spec.write(tmp_path / "book.epub")) == EXPECTED_CHAPTERS


def test_without_contents_each_spine_file_is_a_chapter_titled_by_its_heading(
    tmp_path: Path, epub_spec: EpubSpec
):
    epub_spec.nav = epub_spec.ncx = False
    titles = [title for title, _ in _chapters(epub_spec.write(tmp_path / "book.epub"))]
    assert titles == ["The Test Book", "Part One", "Chapter 1", "Chapter 2"]


def test_epub2_cover_meta_and_creator_roles(tmp_path: Path, epub_spec: EpubSpec):
    epub_spec.metadata = (
        '<dc:title>Old Style</dc:title><dc:creator xmlns:opf="http://www.idpf.org/2007/opf" '
        'opf:role="aut">Bea Author</dc:creator><dc:creator xmlns:opf="http://www.idpf.org/2007/opf"'
        ' opf:role="trl">Tom Translator</dc:creator><dc:language>de</dc:language>'
    )
    spec_file = epub_spec.write(tmp_path / "book.epub")
    opf = epub_spec.opf().replace(' properties="cover-image"', "")
    _rewrite(spec_file, "OEBPS/content.opf", opf.encode())
    book = read_epub(spec_file)
    assert (book.title, book.author, book.language) == ("Old Style", "Bea Author", "de")
    assert book.cover == COVER  # found through <meta name="cover">


def test_font_obfuscation_is_not_drm(tmp_path: Path, epub_spec: EpubSpec):
    epub_spec.extra_files["META-INF/encryption.xml"] = _encryption(
        "OEBPS/fonts/serif.otf", "http://www.idpf.org/2008/embedding"
    )
    assert _chapters(epub_spec.write(tmp_path / "book.epub")) == EXPECTED_CHAPTERS


def test_non_linear_items_and_the_nav_document_are_not_read(tmp_path: Path, epub_spec: EpubSpec):
    opf = epub_spec.opf().replace(
        "</spine>", '<itemref idref="nav"/><itemref idref="notes" linear="no"/></spine>'
    )
    opf = opf.replace(
        "</manifest>",
        '<item id="notes" href="text/notes.xhtml" media-type="application/xhtml+xml"/></manifest>',
    )
    epub_spec.opf_override = opf.encode()
    epub_spec.extra_files["OEBPS/text/notes.xhtml"] = b"<html><body><p>A note.</p></body></html>"
    text = " ".join(text for _, text in _chapters(epub_spec.write(tmp_path / "book.epub")))
    assert "A note." not in text
    assert "Contents" not in text


def test_one_file_holding_many_chapters_is_cut_at_the_anchors(tmp_path: Path):
    body = "".join(
        f'<h2 id="ch{n}">Chapter {n}</h2><p>Text of chapter {n}.</p>' for n in range(1, 6)
    )
    spec = EpubSpec(ncx=False, spine=[("all", "OEBPS/text/all.xhtml", body)])
    links = "".join(f'<li><a href="text/all.xhtml#ch{n}">Chapter {n}</a></li>' for n in range(1, 6))
    spec.extra_files["OEBPS/nav.xhtml"] = (
        '<html xmlns="http://www.w3.org/1999/xhtml" xmlns:epub="http://www.idpf.org/2007/ops">'
        f'<body><nav epub:type="toc"><ol>{links}</ol></nav></body></html>'
    ).encode()
    chapters = _chapters(spec.write(tmp_path / "book.epub"))
    assert chapters == [(f"Chapter {n}", f"Text of chapter {n}.") for n in range(1, 6)]


def test_hrefs_are_percent_decoded_and_case_insensitive_names_are_found(tmp_path: Path):
    spine = [("c", "OEBPS/Text/Chapter One.xhtml", "<h1>One</h1><p>Spaces in names.</p>")]
    spec = EpubSpec(nav=False, ncx=False, cover=False, spine=spine)
    opf = spec.opf().replace('href="Text/Chapter One.xhtml"', 'href="text/Chapter%20One.xhtml"')
    spec.opf_override = opf.encode()
    assert _chapters(spec.write(tmp_path / "book.epub")) == [("One", "Spaces in names.")]


# --- hostile EPUBs -----------------------------------------------------------------------------


def _rewrite(path: Path, name: str, data: bytes) -> None:
    with zipfile.ZipFile(path) as archive:
        files = {info.filename: archive.read(info) for info in archive.infolist()}
    files[name] = data
    with zipfile.ZipFile(path, "w") as archive:
        for entry, content in files.items():
            archive.writestr(entry, content)


def _encryption(uri: str, algorithm: str) -> bytes:
    return (
        '<encryption xmlns="urn:oasis:names:tc:opendocument:xmlns:container" '
        'xmlns:enc="http://www.w3.org/2001/04/xmlenc#"><enc:EncryptedData>'
        f'<enc:EncryptionMethod Algorithm="{algorithm}"/>'
        f'<enc:CipherData><enc:CipherReference URI="{uri}"/></enc:CipherData>'
        "</enc:EncryptedData></encryption>"
    ).encode()


def _renamed_zip(path: Path) -> None:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("notes.txt", "just a zip")


def _not_a_zip(path: Path) -> None:
    path.write_bytes(b"%PDF-1.4 not a zip at all")


def _empty_file(path: Path) -> None:
    path.write_bytes(b"")


def _spec_file(**changes: object) -> object:
    def write(path: Path) -> None:
        spec = EpubSpec()
        for key, value in changes.items():
            setattr(spec, key, value)
        spec.write(path)

    return write


HOSTILE = {
    "renamed-zip": (_renamed_zip, "not an EPUB"),
    "not-a-zip": (_not_a_zip, "not a ZIP archive"),
    "empty-file": (_empty_file, "not a ZIP archive"),
    "adobe-drm": (
        _spec_file(extra_files={"META-INF/rights.xml": b"<rights/>"}),
        "Adobe DRM",
    ),
    "encrypted-content": (
        _spec_file(
            extra_files={
                "META-INF/encryption.xml": _encryption(
                    "OEBPS/text/ch1.xhtml", "http://www.w3.org/2001/04/xmlenc#aes128-cbc"
                )
            }
        ),
        "DRM-protected",
    ),
    "lcp": (_spec_file(extra_files={"META-INF/license.lcpl": b"{}"}), "Readium LCP"),
    "empty-spine": (_spec_file(spine=[]), "empty spine"),
    "missing-chapter-file": (
        _spec_file(drop_files=("OEBPS/text/ch1.xhtml",)),
        "which the archive lacks",
    ),
    "missing-package": (_spec_file(drop_files=("OEBPS/content.opf",)), "package document"),
    "package-not-xml": (_spec_file(opf_override=b"\x00\x01 not xml"), "damaged"),
    "spine-names-unknown-item": (
        _spec_file(opf_override=EpubSpec().opf().replace('idref="ch1"', 'idref="ghost"').encode()),
        "manifest lacks",
    ),
    "images-only": (
        _spec_file(spine=[("p", "OEBPS/text/p.xhtml", '<img src="a.png" alt="A page"/>')]),
        "no text",
    ),
}


@pytest.mark.parametrize(("make", "reason"), list(HOSTILE.values()), ids=list(HOSTILE))
async def test_a_hostile_epub_is_skipped_with_its_reason(tmp_path: Path, make, reason: str):
    path = tmp_path / "hostile.epub"
    make(path)
    with pytest.raises(Unreadable, match=reason):
        read_epub(path)
    book = await read_book([str(path)])
    assert book.chapters == ()
    assert book.skipped == (Skipped(str(path), book.skipped[0].reason),)
    assert reason in book.skipped[0].reason


def test_an_entry_that_inflates_past_the_bound_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(epub_module, "MAX_ENTRY_BYTES", 100_000)
    spine = [("big", "OEBPS/text/big.xhtml", "<p>" + "a " * 200_000 + "</p>")]
    path = EpubSpec(spine=spine, nav=False, ncx=False).write(tmp_path / "bomb.epub")
    with pytest.raises(Unreadable, match=r"over 0 MB|inflates past"):
        read_epub(path)


def test_external_entities_are_never_resolved(tmp_path: Path, epub_spec: EpubSpec):
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET")
    opf = epub_spec.opf().replace(
        '<?xml version="1.0" encoding="utf-8"?>\n',
        f'<?xml version="1.0"?><!DOCTYPE package [<!ENTITY x SYSTEM "file://{secret}">]>',
    )
    epub_spec.opf_override = opf.replace("The Test Book", "&x;").encode()
    book = read_epub(epub_spec.write(tmp_path / "xxe.epub"))
    assert "TOP-SECRET" not in repr(book)


def test_entity_expansion_bombs_are_not_expanded(tmp_path: Path):
    laughs = "".join(f'<!ENTITY l{n} "{f"&l{n - 1};" * 10}">' for n in range(1, 10))
    doc = (
        f'<?xml version="1.0"?><!DOCTYPE html [<!ENTITY l0 "ha">{laughs}]>'
        '<html xmlns="http://www.w3.org/1999/xhtml"><body><h1>Bomb</h1><p>&l9; tail text</p>'
        "</body></html>"
    ).encode()
    spec = EpubSpec(nav=False, ncx=False, spine=[("b", "OEBPS/text/b.xhtml", "")])
    spec.extra_files["OEBPS/text/b.xhtml"] = doc
    try:
        chapters = read_epub(spec.write(tmp_path / "laughs.epub")).chapters
    except Unreadable:
        return  # refusing the file is as good as not expanding it
    assert sum(len(chapter.text) for chapter in chapters) < 10_000


@pytest.mark.parametrize("depth", [200, 5_000])
def test_deep_markup_is_read_without_recursion_or_refused_whole(tmp_path: Path, depth: int):
    body = "<div>" * depth + "<p>Deep text.</p>" + "</div>" * depth
    spec = EpubSpec(nav=False, ncx=False, spine=[("d", "OEBPS/text/d.xhtml", body)])
    path = spec.write(tmp_path / "deep.epub")
    if depth > 256:  # libxml2's bound: past it a page would be read in part, so it is refused
        with pytest.raises(Unreadable, match="nested deeper than 256 levels"):
            read_epub(path)
    else:
        assert "Deep text." in read_epub(path).chapters[0].text


def test_a_stanza_of_div_lines_is_one_paragraph_and_line_numbers_are_not_read():
    stanza = (
        '<div class="linegroup"><div>April is the cruellest month, breeding</div>'
        '<div>Lilacs out of the dead land, mixing<span class="lnum">2</span></div>'
        "<blockquote><div><div>Frisch weht der Wind</div><div>Der Heimat zu</div></div>"
        "</blockquote><div>Memory and desire, stirring</div></div>"
    )
    prose = "<div><div>One sentence ends here.</div><div>So does this one.</div></div>"
    root = parse_document(f"<html><body>{stanza}{prose}</body></html>".encode())
    assert root is not None
    assert [block.text for block in blocks(root)] == [
        "April is the cruellest month, breeding Lilacs out of the dead land, mixing "
        "Frisch weht der Wind Der Heimat zu Memory and desire, stirring",
        "One sentence ends here.",
        "So does this one.",
    ]


# --- properties --------------------------------------------------------------------------------

segment = st.text(alphabet=st.sampled_from("abc-_. %20"), min_size=1, max_size=8)


@settings(max_examples=200, deadline=None)
@given(folders=st.lists(segment, max_size=4), href=st.lists(segment, min_size=1, max_size=4))
def test_resolved_hrefs_stay_inside_the_archive(folders: list[str], href: list[str]):
    base = "/".join([*folders, "nav.xhtml"])
    resolved = resolve(base, "/".join(href) + "#frag")
    assert resolved is not None
    path, fragment = resolved
    assert fragment == "frag"
    assert not path.startswith("/")
    assert "//" not in path


@settings(max_examples=100, deadline=None)
@given(data=st.binary(max_size=2_000))
def test_arbitrary_bytes_are_refused_in_one_sentence(tmp_path_factory, data: bytes):
    path = tmp_path_factory.mktemp("fuzz") / "fuzz.epub"
    path.write_bytes(data)
    with pytest.raises(Unreadable):
        read_epub(path)


markup_pieces = st.sampled_from(
    [
        *("<html>", "<body>", "<p>", "</p>", "<div>", "</div>", "<h1>", "</h1>", "<h2>T</h2>"),
        *("text ", "&nbsp;", "&bogus;", "&#xD800;", "&#0;", "&#99999999;", "<br/>", "\x00"),
        *("<a id='x'/>", "<blockquote>", "<!DOCTYPE x [<!ENTITY a 'b'>]>", "&a;", "<!-- c -->"),
        *("<?xml version='1.0'?>", "<?xml version='1.0' encoding='utf-16'?>", "<?pi x?>"),
        *("<ruby>x<rt>y</rt></ruby>", "<![CDATA[x]]>", "<sup><a href='#n'>1</a></sup>"),
    ]
)


@settings(max_examples=500, deadline=None)
@given(pieces=st.lists(markup_pieces, max_size=40), tail=st.binary(max_size=8))
def test_any_markup_gives_clean_blocks_or_one_sentence(pieces: list[str], tail: bytes):
    try:
        root = parse_document("".join(pieces).encode("utf-8", "surrogatepass") + tail)
        found = blocks(root) if root is not None else []
    except Unreadable as exc:
        found, refusal = [], str(exc)
    else:
        refusal = ""
    assert "\n" not in refusal
    assert all(block.text and block.text == " ".join(block.text.split()) for block in found)
