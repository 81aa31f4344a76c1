"""Web pages served on loopback: articles become chapters; a 404, a non-HTML answer, a slow
page, a huge or bomb-compressed answer and redirect loops are each reported, and the rest of
the book still builds."""

from __future__ import annotations

import asyncio
import gzip
import threading
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import httpx
import pytest

from csm_offload.book import Skipped, WebLimits, read_book, read_url_groups
from csm_offload.book.web import fetch_page, read_article
from csm_offload.errors import UserError

from .conftest import Route, Site, respond

pytestmark = pytest.mark.timeout(60)

LIMITS = WebLimits(total_s=1.5, max_bytes=1_000_000, max_redirects=3)

RIVER = [
    "The river rose three feet overnight, and by morning the lower town was under water.",
    "Volunteers carried sandbags to the bridge while the mayor spoke to reporters about the "
    "dam upstream, which had been inspected only the week before.",
    "By noon the rain had stopped, and the first boats went out to the farms on the plain.",
]
MOUNTAIN = [
    "Die Bergsteiger erreichten den Gipfel kurz nach Sonnenaufgang, müde aber glücklich.",
    "Der Abstieg dauerte länger als erwartet, weil Nebel aus dem Tal aufstieg und die "
    "Markierungen verdeckte, die sie am Vortag noch deutlich gesehen hatten.",
    "Am Abend saßen alle in der Hütte und erzählten von der langen Tour.",
]


def article(title: str, paragraphs: list[str], lang: str = "en") -> bytes:
    """A page as sites serve them: menus, a cookie banner, scripts, a sidebar, comments and a
    footer around the article."""
    body = "".join(f"<p>{paragraph}</p>" for paragraph in paragraphs)
    return f"""<!DOCTYPE html><html lang="{lang}"><head><meta charset="utf-8">
<title>{title} | The Daily Example</title><meta property="og:title" content="{title}">
<script>window.tracking = {{"id": 1}};</script><style>body{{font:serif}}</style></head><body>
<div class="cookie-banner">We use cookies. <button>Accept all</button></div>
<header><nav><a href="/">Home</a> <a href="/news">News</a> <a href="/sport">Sport</a></nav>
</header><main><article><h1>{title}</h1><p class="byline">By Sam Reporter</p>{body}
<p>Footnoted claim.<sup><a href="#fn1">1</a></sup></p></article>
<aside><h3>Most read</h3><ul><li><a href="/a">Another story</a></li></ul></aside>
<section class="comments"><h3>Comments</h3><p>First!</p></section></main>
<footer><p>© 2024 The Daily Example. All rights reserved.</p></footer></body></html>""".encode()


def html_route(body: bytes, content_type: str = "text/html; charset=utf-8") -> Route:
    def route(handler: BaseHTTPRequestHandler, stop: threading.Event) -> None:
        respond(handler, 200, body, {"Content-Type": content_type})

    return route


def redirect(to: str, status: int = 302) -> Route:
    def route(handler: BaseHTTPRequestHandler, stop: threading.Event) -> None:
        respond(handler, status, b"", {"Location": to})

    return route


def slow(handler: BaseHTTPRequestHandler, stop: threading.Event) -> None:
    stop.wait(10)  # past the client's bound; the test's end releases it
    respond(handler, 200, article("Late", RIVER), {"Content-Type": "text/html"})


def huge(handler: BaseHTTPRequestHandler, stop: threading.Event) -> None:
    """Says 10 GB and sends until the client hangs up."""
    handler.send_response(200)
    handler.send_header("Content-Type", "text/html")
    handler.send_header("Content-Length", str(10 * 1024**3))
    handler.end_headers()
    block = b"<p>" + b"x" * 65_536 + b"</p>"
    while not stop.is_set():
        handler.wfile.write(block)


def gzip_bomb(handler: BaseHTTPRequestHandler, stop: threading.Event) -> None:
    body = gzip.compress(b"<html><body>" + b" " * 20_000_000, compresslevel=9)
    respond(handler, 200, body, {"Content-Type": "text/html", "Content-Encoding": "gzip"})


SENT_OF_A_VIDEO: list[int] = []


def video(handler: BaseHTTPRequestHandler, stop: threading.Event) -> None:
    """A big file that is not a page: counts how much of it the client let through."""
    handler.send_response(200)
    handler.send_header("Content-Type", "video/mp4")
    handler.send_header("Content-Length", str(500 * 65_536))
    handler.end_headers()
    sent = 0
    try:
        for _ in range(500):
            handler.wfile.write(b"\0" * 65_536)
            sent += 65_536
    except OSError:
        pass  # the client hung up
    SENT_OF_A_VIDEO.append(sent)


ROUTES: dict[str, Route] = {
    "/video.mp4": video,
    "/river": html_route(article("River floods the lower town", RIVER)),
    "/berg": html_route(article("Gipfel erreicht", MOUNTAIN, lang="de-AT")),
    "/report.pdf": html_route(b"%PDF-1.7 ...", "application/pdf"),
    "/slow": slow,
    "/huge": huge,
    "/bomb": gzip_bomb,
    "/moved": redirect("/river", 301),
    "/loop-a": redirect("/loop-b"),
    "/loop-b": redirect("/loop-a"),
    "/chain-1": redirect("/chain-2"),
    "/chain-2": redirect("/chain-3"),
    "/chain-3": redirect("/chain-4"),
    "/chain-4": redirect("/chain-5"),
    "/chain-5": redirect("/river"),
    "/nowhere": redirect(""),
    "/app": html_route(
        b'<html><body><div id="root"></div><script src="/app.js"></script></body></html>'
    ),
    "/latin1": html_route(
        article("Café society", ["Un café à Paris, où l'on parle de tout et de rien. " * 3])
        .decode()
        .replace('<meta charset="utf-8">', "")
        .encode("latin-1"),
        "text/html; charset=ISO-8859-1",
    ),
    "/forbidden": lambda handler, stop: respond(handler, 403, b"no bots"),
    "/broken": lambda handler, stop: respond(handler, 503, b"down"),
    "/no-type": lambda handler, stop: respond(handler, 200, b"\x89PNG not html"),
}


@pytest.fixture
def server(site) -> Site:
    return site(ROUTES)


async def test_articles_become_chapters_and_bad_urls_are_reported(server: Site):
    urls = [server.url(path) for path in ("/river", "/missing", "/report.pdf", "/slow", "/berg")]
    book = await read_book(urls, limits=LIMITS)
    assert [chapter.title for chapter in book.chapters] == [
        "River floods the lower town",
        "Gipfel erreicht",
    ]
    river, berg = book.chapters
    assert river.text == "\n\n".join(RIVER) + "\n\nFootnoted claim."
    assert river.source == server.url("/river")
    assert berg.text.endswith(MOUNTAIN[-1] + "\n\nFootnoted claim.")
    assert book.title == "River floods the lower town"
    assert book.language == "en"
    reasons = {skipped.source: skipped.reason for skipped in book.skipped}
    assert list(reasons) == [server.url(path) for path in ("/missing", "/report.pdf", "/slow")]
    assert "HTTP 404" in reasons[server.url("/missing")]
    assert "application/pdf" in reasons[server.url("/report.pdf")]
    assert "1.5 s" in reasons[server.url("/slow")]


def _reason(book_skipped: tuple[Skipped, ...]) -> str:
    (skipped,) = book_skipped
    return skipped.reason


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("/huge", "over 1000000 bytes"),
        ("/bomb", "over 1000000 bytes"),
        ("/loop-a", "redirects in a loop"),
        ("/chain-1", "more than 3 times"),
        ("/nowhere", "names no new address"),
        ("/app", "no article text"),
        ("/forbidden", "HTTP 403"),
        ("/broken", "HTTP 503"),
        ("/no-type", "does not look like HTML"),
    ],
)
async def test_a_hostile_page_is_reported_in_one_sentence(server: Site, path: str, reason: str):
    book = await read_book([server.url(path)], limits=LIMITS)
    assert book.chapters == ()
    assert reason in _reason(book.skipped)
    assert "\n" not in _reason(book.skipped)


async def test_a_redirect_is_followed_to_the_article(server: Site):
    book = await read_book([server.url("/moved")], limits=LIMITS)
    assert [chapter.title for chapter in book.chapters] == ["River floods the lower town"]
    assert book.chapters[0].source == server.url("/moved")


async def test_a_declared_charset_is_honoured(server: Site):
    book = await read_book([server.url("/latin1")], limits=LIMITS)
    assert book.chapters[0].title == "Café society"
    assert "Un café à Paris" in book.chapters[0].text


async def test_the_page_language_is_the_html_lang(server: Site):
    async with httpx.AsyncClient() as http:
        page = await fetch_page(http, server.url("/berg"), LIMITS)
    assert read_article(page.body, page.url, page.charset).language == "de-AT"


@pytest.mark.parametrize("url", ["ftp://example.com/a", "https://", "http://exa mple.com/"])
async def test_a_url_that_is_not_http_is_refused(url: str):
    from csm_offload.book.web import fetch_page as fetch

    async with httpx.AsyncClient() as http:
        with pytest.raises(UserError, match="URL"):
            await fetch(http, url, LIMITS)


async def test_a_refused_connection_is_one_sentence():
    book = await read_book(["http://127.0.0.1:9/closed"], limits=LIMITS)
    assert "check the URL" in _reason(book.skipped)


# --- urls.csv groups ---------------------------------------------------------------------------


async def test_each_group_is_a_book_and_csv_titles_override(server: Site, tmp_path: Path):
    table = tmp_path / "urls.csv"
    table.write_text(
        "url,group,title\n"
        f"{server.url('/river')},news,The Flood\n"
        f"{server.url('/berg')},travel,\n"
        f"{server.url('/missing')},news,Gone\n"
        f"{server.url('/moved')},news,\n",
        encoding="utf-8",
    )
    news, travel = await read_url_groups(table, None, limits=LIMITS)
    assert news.title == "news"
    assert [chapter.title for chapter in news.chapters] == [
        "The Flood",
        "River floods the lower town",
    ]
    assert [skipped.source for skipped in news.skipped] == [server.url("/missing")]
    assert travel.title == "travel"
    assert travel.language == "de-AT"
    assert [chapter.title for chapter in travel.chapters] == ["Gipfel erreicht"]
    (only,) = await read_url_groups(table, ["travel"], limits=LIMITS)
    assert only.title == "travel"


async def test_an_unknown_group_is_a_user_error(server: Site, tmp_path: Path):
    table = tmp_path / "urls.csv"
    table.write_text(f"{server.url('/river')},news\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"group sport is not in .*its groups: news"):
        await read_url_groups(table, ["news", "sport"], limits=LIMITS)


async def test_a_file_that_is_not_a_page_is_refused_before_its_body_is_read(server: Site):
    book = await read_book([server.url("/video.mp4")], limits=LIMITS)
    assert "is not a web page" in _reason(book.skipped) and "video/mp4" in _reason(book.skipped)
    # Refused on its headers: the client hung up long before the 32 MB were sent (what is
    # sent before the hang-up sits in the socket buffers, a few hundred KB at most).
    for _ in range(100):
        if SENT_OF_A_VIDEO:
            break
        await asyncio.sleep(0.05)
    assert SENT_OF_A_VIDEO and SENT_OF_A_VIDEO[-1] < 8 * 1024 * 1024
