"""Web pages as chapters: a bounded fetch, then the article's title and text (trafilatura).

The fetch goes through the core's `httpapi.send`, which bounds the whole call's time and the
body's size after decompression and never follows a redirect by itself. Here we follow at most
`max_redirects` of them, refuse a loop at once, and refuse what is not HTML with its content
type named: a PDF or a ZIP behind a link is a different source, not a page to read.
"""

from __future__ import annotations

import asyncio
import codecs
import re
from collections.abc import Iterable

import attrs
import httpx

from ..errors import ProviderError
from ..httpapi import send
from .markup import document_language, drop_note_markers
from .model import Chapter, Unreadable

_HTML_TYPES = frozenset({"text/html", "application/xhtml+xml"})
_LOOKS_LIKE_HTML = re.compile(rb"\s*(?:<!--.*?-->\s*)*<(?:!doctype\s+html|html|head)", re.I | re.S)
_HEADERS = {
    "User-Agent": "csm-offload (audiobook builder; +https://pypi.org/project/csm-offload/)",
    "Accept": "text/html,application/xhtml+xml;q=0.9,*/*;q=0.1",
}
#: What an HTTP status means for a page we wanted to read, as the fix to try.
_STATUS_HINTS = {
    401: "the site needs a login: save the page from a browser and give the file instead",
    403: "the site refuses automated readers or needs a login: save the page from a browser "
    "and give the file instead",
    404: "not found: check the URL",
    410: "gone: the page was removed",
    429: "the site is rate limiting: try again later",
}


@attrs.frozen
class WebLimits:
    """Bounds for one page: the whole fetch's time (redirects included), the body's size after
    decompression, and how many redirects are followed."""

    total_s: float = 30.0
    max_bytes: int = 10 * 1024 * 1024
    max_redirects: int = 5
    #: Pages fetched at once; each site sees at most this many requests in flight.
    concurrency: int = 4


@attrs.frozen
class Page:
    """A fetched page: where it ended up after redirects, its body and declared charset."""

    url: str
    body: bytes
    charset: str | None


@attrs.frozen
class Article:
    """What a page has to read: its title, its text (paragraphs split by blank lines) and
    the language its HTML declares."""

    title: str | None
    text: str
    language: str | None


async def fetch_page(http: httpx.AsyncClient, url: str, limits: WebLimits) -> Page:
    """The page at `url` (following redirects), or `Unreadable` saying why not."""
    current = _checked_url(url)
    seen = [str(current)]
    try:
        async with asyncio.timeout(limits.total_s):
            while True:
                answer = await send(
                    http,
                    "GET",
                    str(current),
                    what="the page",
                    headers=_HEADERS,
                    total_s=limits.total_s,
                    max_bytes=limits.max_bytes,
                    check_head=_check_head,
                )
                if not 300 <= answer.status < 400:
                    break
                current = _next_hop(current, answer.headers.get("location"), seen, limits)
    except TimeoutError:
        raise Unreadable(
            f"the page and its redirects took over {limits.total_s:g} s; try again later"
        ) from None
    except ProviderError as exc:  # the transport's bounds and failures, already one sentence
        raise Unreadable(f"{exc}; check the URL and the network, or try again later") from None
    _check_status(answer.status, answer.reason)
    return Page(str(current), answer.body, _html_charset(answer.headers, answer.body))


def _check_head(status: int, headers: httpx.Headers) -> None:
    """Refuse a page that is not HTML before downloading it (a PDF link, a video)."""
    if 200 <= status < 300 and headers.get("content-type", "").strip():
        _html_charset(headers, b"")


def _checked_url(url: str) -> httpx.URL:
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, ValueError):
        raise Unreadable("is not a valid URL") from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise Unreadable("is not an http:// or https:// URL")
    return parsed


def _next_hop(
    current: httpx.URL, location: str | None, seen: list[str], limits: WebLimits
) -> httpx.URL:
    if not location:
        raise Unreadable("the site answered with a redirect that names no new address")
    try:
        target = _checked_url(str(current.join(location.strip())))
    except Unreadable as exc:
        raise Unreadable(f"the site redirects to {location!r}, which {exc}") from None
    if str(target) in seen:
        loop = " → ".join([*seen[seen.index(str(target)) :], str(target)])
        raise Unreadable(f"the site redirects in a loop ({loop}); open it in a browser to check")
    if len(seen) > limits.max_redirects:
        raise Unreadable(f"the site redirects more than {limits.max_redirects} times")
    seen.append(str(target))
    return target


def _check_status(status: int, reason: str) -> None:
    if 200 <= status < 300:
        return
    hint = _STATUS_HINTS.get(status)
    if hint is None:
        hint = "the site failed: try again later" if status >= 500 else "the site refused it"
    label = f"HTTP {status} {reason}".strip()
    raise Unreadable(f"the site answered {label} ({hint})")


def _html_charset(headers: httpx.Headers, body: bytes) -> str | None:
    """The declared charset, after checking that the answer is HTML at all."""
    declared = headers.get("content-type", "")
    media, _, params = declared.partition(";")
    media = media.strip().lower()
    if not media:
        if _LOOKS_LIKE_HTML.match(body[:4096]):
            return None
        raise Unreadable("the site sent no content type and the answer does not look like HTML")
    if media not in _HTML_TYPES:
        raise Unreadable(
            f"is not a web page: the site sent {media}; only HTML pages are read "
            "(download other files and give them as files)"
        )
    return _charset_param(params.split(";"))


def _charset_param(params: Iterable[str]) -> str | None:
    for param in params:
        key, _, value = param.partition("=")
        if key.strip().lower() == "charset":
            name = value.strip().strip("\"'")
            try:
                return codecs.lookup(name).name
            except LookupError:
                return None  # unknown: let the extractor detect it from the bytes
    return None


def read_article(body: bytes, source: str, charset: str | None = None) -> Article:
    """The article in an HTML document: title, text and declared language (trafilatura)."""
    import trafilatura  # heavy (lxml, dateparser): loaded only when a page is read

    markup = body.decode(charset, "replace") if charset else body
    tree = trafilatura.load_html(markup)
    if tree is None:
        raise Unreadable("is not HTML that can be parsed")
    drop_note_markers(tree)
    language = document_language(tree)
    document = trafilatura.bare_extraction(
        tree,
        url=source if source.startswith(("http://", "https://")) else None,
        with_metadata=True,
        include_comments=False,
        include_tables=False,
    )
    title = _clean(getattr(document, "title", None) or "") or None
    text = _paragraphs(getattr(document, "text", None) or "", title)
    if not text:
        raise Unreadable(
            "has no article text to extract (the page may build its text with JavaScript: "
            "save it from a browser and give the file)"
        )
    return Article(title, text, language)


def _paragraphs(text: str, title: str | None) -> str:
    """trafilatura's lines as paragraphs, without a first line that repeats the title."""
    lines = [line for raw in text.splitlines() if (line := _clean(raw))]
    if lines and title and lines[0].casefold() == title.casefold():
        lines = lines[1:]
    return "\n\n".join(lines)


def _clean(text: str) -> str:
    return " ".join(text.split())


async def read_web_chapter(
    http: httpx.AsyncClient, url: str, limits: WebLimits, title: str | None = None
) -> tuple[Chapter, str | None]:
    """One URL as a chapter (titled `title` when given, else by the page), and the page's
    declared language."""
    page = await fetch_page(http, url, limits)
    article = await asyncio.to_thread(read_article, page.body, page.url, page.charset)
    chapter_title = title or article.title or page.url
    return Chapter(chapter_title, article.text, url), article.language
