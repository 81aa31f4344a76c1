"""Builders for the book tests: EPUBs and PDFs made in the test, and a loopback web server."""

from __future__ import annotations

import struct
import threading
import zipfile
import zlib
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import attrs
import pytest

# --- EPUB ------------------------------------------------------------------------------------

XHTML = """<?xml version="1.0" encoding="utf-8"?>
<!DOCTYPE html>
<html xmlns="http://www.w3.org/1999/xhtml" xmlns:epub="http://www.idpf.org/2007/ops"
 xml:lang="en-GB"><head><title>{title}</title></head><body>{body}</body></html>"""


def png_bytes() -> bytes:
    """A valid 1×1 PNG: a cover small enough to write by hand."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
    pixels = zlib.compress(b"\x00\xff\x00\x00")
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")
    )


COVER = png_bytes()

#: The reading order of the standard test book: (manifest id, archive path, body).
SPINE = [
    (
        "titlepage",
        "OEBPS/text/titlepage.xhtml",
        '<section epub:type="titlepage"><h1>The Test Book</h1><p>by Ada Author</p></section>',
    ),
    (
        "part1",
        "OEBPS/text/part1.xhtml",
        '<section id="p1"><h2>Part One</h2><p>An epigraph that opens the first part.</p></section>',
    ),
    (
        "ch1",
        "OEBPS/text/ch1.xhtml",
        "<section><h3>Chapter 1</h3><p>It was a bright cold day in April, and the clocks"
        '&nbsp;were striking thirteen.<a epub:type="noteref" href="notes.xhtml#n1">1</a></p>'
        "<p>Second paragraph&mdash;with a dash.</p></section>",
    ),
    (
        "ch23",
        "OEBPS/text/ch2-3.xhtml",
        '<section id="c2"><h3>Chapter 2</h3><p>The second chapter is short.</p></section>'
        '<section id="p2"><h2>Part Two</h2><section id="c3"><h3>Chapter 3</h3>'
        "<p>The third chapter ends the book.</p></section></section>",
    ),
]

NAV = """<?xml version="1.0" encoding="utf-8"?>
<html xmlns="http://www.w3.org/1999/xhtml" xmlns:epub="http://www.idpf.org/2007/ops">
<head><title>Contents</title></head><body>
<nav epub:type="landmarks"><ol><li><a href="text/ch1.xhtml">Start</a></li></ol></nav>
<nav epub:type="toc"><h1>Contents</h1><ol>
 <li><a href="text/part1.xhtml">Part One</a><ol>
   <li><a href="text/ch1.xhtml">Chapter 1</a></li>
   <li><a href="text/ch2-3.xhtml#c2">Chapter 2</a></li></ol></li>
 <li><a href="text/ch2-3.xhtml#p2">Part Two</a><ol>
   <li><a href="text/ch2-3.xhtml#c3">Chapter 3</a></li></ol></li>
</ol></nav></body></html>"""

NCX = """<?xml version="1.0" encoding="UTF-8"?>
<ncx xmlns="http://www.daisy.org/z3986/2005/ncx/" version="2005-1"><head/>
<docTitle><text>The Test Book</text></docTitle><navMap>
 <navPoint id="n1" playOrder="1"><navLabel><text>Part One</text></navLabel>
  <content src="text/part1.xhtml"/>
  <navPoint id="n2" playOrder="2"><navLabel><text>Chapter 1</text></navLabel>
   <content src="text/ch1.xhtml"/></navPoint>
  <navPoint id="n3" playOrder="3"><navLabel><text>Chapter 2</text></navLabel>
   <content src="text/ch2-3.xhtml#c2"/></navPoint></navPoint>
 <navPoint id="n4" playOrder="4"><navLabel><text>Part Two</text></navLabel>
  <content src="text/ch2-3.xhtml#p2"/>
  <navPoint id="n5" playOrder="5"><navLabel><text>Chapter 3</text></navLabel>
   <content src="text/ch2-3.xhtml#c3"/></navPoint></navPoint>
</navMap></ncx>"""

CONTAINER = """<?xml version="1.0"?>
<container version="1.0" xmlns="urn:oasis:names:tc:opendocument:xmlns:container">
<rootfiles><rootfile full-path="OEBPS/content.opf" media-type="application/oebps-package+xml"/>
</rootfiles></container>"""

#: The chapters the standard test book must give: (title, text).
EXPECTED_CHAPTERS = [
    ("The Test Book", "by Ada Author"),
    ("Part One", "An epigraph that opens the first part."),
    (
        "Chapter 1",
        "It was a bright cold day in April, and the clocks were striking thirteen."
        "\n\nSecond paragraph\u2014with a dash.",
    ),
    ("Chapter 2", "The second chapter is short."),
    ("Part Two: Chapter 3", "The third chapter ends the book."),
]


@attrs.define
class EpubSpec:
    """What to put in a test EPUB; tests change fields to make it hostile."""

    nav: bool = True
    ncx: bool = True
    cover: bool = True
    spine: list[tuple[str, str, str]] = attrs.field(factory=lambda: list(SPINE))
    extra_files: dict[str, bytes] = attrs.field(factory=dict)
    drop_files: tuple[str, ...] = ()
    opf_override: bytes | None = None
    metadata: str = (
        '<dc:title>The Test Book</dc:title><dc:creator id="a1">Ada Author</dc:creator>'
        '<meta refines="#a1" property="role" scheme="marc:relators">aut</meta>'
        '<dc:creator id="a2">Ivan Illustrator</dc:creator>'
        '<meta refines="#a2" property="role" scheme="marc:relators">ill</meta>'
        "<dc:language>en-GB</dc:language>"
    )

    def opf(self) -> str:
        items = [
            f'<item id="{ident}" href="{path.removeprefix("OEBPS/")}" '
            'media-type="application/xhtml+xml"/>'
            for ident, path, _ in self.spine
        ]
        if self.nav:
            items.append(
                '<item id="nav" href="nav.xhtml" media-type="application/xhtml+xml" '
                'properties="nav"/>'
            )
        if self.ncx:
            items.append('<item id="ncx" href="toc.ncx" media-type="application/x-dtbncx+xml"/>')
        if self.cover:
            items.append(
                '<item id="cover-img" href="images/cover.png" media-type="image/png" '
                'properties="cover-image"/>'
            )
        refs = "".join(f'<itemref idref="{ident}"/>' for ident, _, _ in self.spine)
        toc = ' toc="ncx"' if self.ncx else ""
        return (
            '<?xml version="1.0" encoding="utf-8"?>\n'
            '<package xmlns="http://www.idpf.org/2007/opf" version="3.0" unique-identifier="id">'
            '<metadata xmlns:dc="http://purl.org/dc/elements/1.1/">'
            f'<dc:identifier id="id">urn:test:1</dc:identifier>{self.metadata}'
            '<meta name="cover" content="cover-img"/></metadata>'
            f"<manifest>{''.join(items)}</manifest><spine{toc}>{refs}</spine></package>"
        )

    def files(self) -> dict[str, bytes]:
        files = {
            "mimetype": b"application/epub+zip",
            "META-INF/container.xml": CONTAINER.encode(),
            "OEBPS/content.opf": self.opf_override or self.opf().encode(),
        }
        for ident, path, body in self.spine:
            files[path] = XHTML.format(title=ident, body=body).encode()
        if self.nav:
            files["OEBPS/nav.xhtml"] = NAV.encode()
        if self.ncx:
            files["OEBPS/toc.ncx"] = NCX.encode()
        if self.cover:
            files["OEBPS/images/cover.png"] = COVER
        files.update(self.extra_files)
        return {name: data for name, data in files.items() if name not in self.drop_files}

    def write(self, path: Path) -> Path:
        with zipfile.ZipFile(path, "w") as archive:
            for name, data in self.files().items():
                method = zipfile.ZIP_STORED if name == "mimetype" else zipfile.ZIP_DEFLATED
                archive.writestr(name, data, compress_type=method)
        return path


@pytest.fixture
def epub_spec() -> EpubSpec:
    return EpubSpec()


# --- PDF -------------------------------------------------------------------------------------

PDF_PARAGRAPH = (
    "The river ran past the mill and under the old stone bridge, where the children waited "
    "for the boats to come down from the hills with their loads of timber and wool. "
)


def build_pdf(
    path: Path,
    *,
    outline: bool = True,
    user_password: str | None = None,
    owner_password: str = "owner",
) -> Path:
    """A three-chapter PDF (parts and chapters in its outline) with a running head, page
    numbers at the foot, and a word hyphenated across a line end."""
    from fpdf import FPDF
    from fpdf.enums import EncryptionMethod

    class Document(FPDF):
        def header(self) -> None:
            self.set_font("helvetica", size=9)
            self.cell(0, 8, "The River Book", align="C", new_x="LMARGIN", new_y="NEXT")

        def footer(self) -> None:
            self.set_y(-15)
            self.set_font("helvetica", size=9)
            self.cell(0, 8, str(self.page_no()), align="C")

    pdf = Document()
    pdf.set_title("The River Book")
    pdf.set_author("Rhea Writer")
    pdf.set_lang("en-US")
    if user_password is not None:
        pdf.set_encryption(
            owner_password=owner_password,
            user_password=user_password,
            encryption_method=EncryptionMethod.RC4,
        )
    chapters = (("Part One", "Chapter 1"), (None, "Chapter 2"), ("Part Two", "Chapter 3"))
    for (part, chapter), ordinal in zip(chapters, ("first", "second", "third"), strict=True):
        pdf.add_page()
        if part and outline:
            pdf.start_section(part, level=0)
        if outline:
            pdf.start_section(chapter, level=1)
        pdf.set_font("helvetica", size=16)
        pdf.cell(0, 12, chapter, new_x="LMARGIN", new_y="NEXT")
        pdf.set_font("helvetica", size=11)
        for _ in range(3):
            pdf.multi_cell(0, 6, f"{chapter} begins. " + PDF_PARAGRAPH * 6 + "It ended.")
            pdf.ln(4)
        pdf.multi_cell(
            0, 6, f"A split word: extra-\nordinary, and the end of the {ordinal} chapter."
        )
    pdf.output(str(path))
    return path


def build_image_pdf(path: Path) -> Path:
    """A PDF whose pages hold only drawings, as a scan without OCR does."""
    from fpdf import FPDF

    pdf = FPDF()
    for _ in range(2):
        pdf.add_page()
        pdf.set_fill_color(120, 120, 120)
        pdf.rect(20, 20, 150, 200, style="F")
    pdf.output(str(path))
    return path


# --- a loopback web server --------------------------------------------------------------------

Route = Callable[[BaseHTTPRequestHandler, threading.Event], None]


@attrs.frozen
class Site:
    base: str
    stop: threading.Event

    def url(self, path: str) -> str:
        return f"{self.base}{path}"


def respond(
    handler: BaseHTTPRequestHandler,
    status: int,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
) -> None:
    handler.send_response(status)
    for key, value in (headers or {}).items():
        handler.send_header(key, value)
    if "Content-Length" not in (headers or {}):
        handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


@pytest.fixture
def site(request: pytest.FixtureRequest) -> Iterator[Callable[[dict[str, Route]], Site]]:
    """Start a web server on 127.0.0.1 with the given routes; stopped when the test ends (a
    slow route waits on `stop`, so no handler outlives the test)."""
    servers: list[tuple[ThreadingHTTPServer, threading.Thread, threading.Event]] = []

    def start(routes: dict[str, Route]) -> Site:
        stop = threading.Event()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                route = routes.get(self.path)
                try:
                    if route is None:
                        respond(self, 404, b"<html><body>Not found</body></html>")
                    else:
                        route(self, stop)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up, as it should on a hostile answer

            def log_message(self, *args: object) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
        thread.start()
        servers.append((server, thread, stop))
        return Site(f"http://127.0.0.1:{server.server_address[1]}", stop)

    yield start
    for server, thread, stop in servers:
        stop.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
