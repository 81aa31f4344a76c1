"""EPUB books: the container read with the standard library's zipfile and lxml (see
docs/book-sources.md for why no EPUB library), chapters from the spine and table of contents,
and title, author, language and cover from the package metadata.

A book is read whole or not at all: a renamed ZIP, DRM, an empty spine or a damaged archive is
one `Unreadable` sentence. Every archive entry is read with a size bound (a small file can
inflate to gigabytes), and XML is parsed without entities or DTDs.
"""

from __future__ import annotations

import posixpath
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path

import attrs
from lxml import etree

from .epub_toc import SpineDocument, TocEntry, nav_entries, ncx_entries, resolve, split_chapters
from .markup import blocks, local_name, parse_document, safe_xml_parser
from .model import DEFAULT_LANGUAGE, Book, Unreadable

#: Bytes one archive entry may inflate to; a whole novel's XHTML is a few MB.
MAX_ENTRY_BYTES = 64 * 1024 * 1024
#: A cover is a picture, not a book (the same bound as the audio tags').
MAX_COVER_BYTES = 20 * 1024 * 1024
_CONTAINER = "META-INF/container.xml"
_OPF_NS = "{http://www.idpf.org/2007/opf}"
#: Font obfuscation (IDPF, Adobe) only hides fonts; it is not DRM and leaves the text readable.
_FONT_SUFFIXES = (".ttf", ".otf", ".woff", ".woff2", ".eot", ".ttc", ".pfb", ".sfnt")
#: Files that only DRM schemes put in META-INF: Adobe ADEPT, Apple FairPlay, Readium LCP.
_DRM_FILES = {
    "META-INF/rights.xml": "Adobe DRM",
    "META-INF/sinf.xml": "Apple FairPlay DRM",
    "META-INF/license.lcpl": "Readium LCP DRM",
}
_TEXT_TYPES = frozenset({"application/xhtml+xml", "text/html", "application/x-dtbook+xml"})
_IMAGE_MAGIC = {
    b"\xff\xd8\xff": "image/jpeg",
    b"\x89PNG\r\n\x1a\n": "image/png",
    b"GIF87a": "image/gif",
    b"GIF89a": "image/gif",
}


@attrs.frozen
class Item:
    """A manifest item: its archive path, media type and EPUB 3 properties."""

    id: str
    path: str
    media_type: str
    properties: frozenset[str] = frozenset()


@attrs.frozen
class Package:
    """What the OPF package document says: metadata, reading order and where things are."""

    title: str | None
    authors: tuple[str, ...]
    language: str | None
    spine: tuple[Item, ...]
    nav: Item | None
    ncx: Item | None
    cover: Item | None


def read_epub(path: Path) -> Book:
    """The EPUB at `path` as a book, or `Unreadable` saying why not."""
    with _open_zip(path) as archive:
        container = _check_container(archive)
        _check_drm(archive)
        opf_path = _rootfile(archive, container)
        opf_name = _find(archive, opf_path)
        if opf_name is None:
            raise Unreadable(f"is damaged: its package document {opf_path} is missing")
        package = _package(_read(archive, opf_name), opf_path)
        title = package.title or path.stem
        spine = [_spine_document(archive, item) for item in package.spine]
        chapters = split_chapters(spine, _toc(archive, package), str(path), title)
        if not chapters:
            raise Unreadable("has no text in its reading order (its pages may be images only)")
        cover, cover_mime = _cover(archive, package.cover)
    return Book(
        title=title,
        author=", ".join(package.authors) or None,
        language=package.language or DEFAULT_LANGUAGE,
        cover=cover,
        cover_mime=cover_mime,
        chapters=tuple(chapters),
    )


def _open_zip(path: Path) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(path)
    except zipfile.BadZipFile:
        raise Unreadable("is not an EPUB: it is not a ZIP archive") from None
    except OSError as exc:
        raise Unreadable(f"cannot be opened: {exc.strerror or exc}") from None


def _check_container(archive: zipfile.ZipFile) -> str:
    """The container file's name in the archive."""
    name = _find(archive, _CONTAINER)
    if name is None:
        raise Unreadable(
            f"is a ZIP archive but not an EPUB (it has no {_CONTAINER}); "
            "convert it to EPUB, or give its text as .txt or .md"
        )
    return name


def _check_drm(archive: zipfile.ZipFile) -> None:
    for name, scheme in _DRM_FILES.items():
        if _find(archive, name) is not None:
            raise Unreadable(f"is protected by {scheme}; use a DRM-free copy of the book")
    encryption = _find(archive, "META-INF/encryption.xml")
    if encryption is None:
        return
    root = _xml(_read(archive, encryption), "META-INF/encryption.xml")
    for uri in _encrypted_uris(root):
        if not uri.lower().endswith(_FONT_SUFFIXES):
            raise Unreadable(
                f"is DRM-protected: META-INF/encryption.xml encrypts {uri}; "
                "use a DRM-free copy of the book"
            )


def _encrypted_uris(root: etree._Element) -> Iterator[str]:
    for element in root.iter():
        if local_name(element) == "cipherreference" and (uri := element.get("URI")):
            yield uri


def _rootfile(archive: zipfile.ZipFile, container: str) -> str:
    root = _xml(_read(archive, container), _CONTAINER)
    rootfiles = [el for el in root.iter() if local_name(el) == "rootfile" and el.get("full-path")]
    preferred = [el for el in rootfiles if el.get("media-type") == "application/oebps-package+xml"]
    chosen = (preferred or rootfiles or [None])[0]
    if chosen is None:
        raise Unreadable(f"is damaged: its {_CONTAINER} names no package document")
    return posixpath.normpath(chosen.get("full-path", "")).lstrip("/")


def _package(data: bytes, opf_path: str) -> Package:
    root = _xml(data, opf_path)
    manifest = _manifest(root, opf_path)
    spine_element = _first(root, "spine")
    listed = list(_spine_items(spine_element, manifest))
    if not listed:
        raise Unreadable("has an empty spine (no reading order), so there is nothing to read")
    spine = tuple(item for item in listed if _is_text(item))
    if not spine:
        raise Unreadable(
            "has only images in its reading order (a comic or a scan), so there is no text to read"
        )
    metadata = _first(root, "metadata")
    ncx_id = spine_element.get("toc") if spine_element is not None else None
    return Package(
        title=_first_text(metadata, "title"),
        authors=_authors(metadata),
        language=_first_text(metadata, "language"),
        spine=spine,
        nav=next((item for item in manifest.values() if "nav" in item.properties), None),
        ncx=manifest.get(ncx_id or "") or _ncx_by_type(manifest),
        cover=_cover_item(metadata, manifest),
    )


def _manifest(root: etree._Element, opf_path: str) -> dict[str, Item]:
    items: dict[str, Item] = {}
    manifest = _first(root, "manifest")
    for element in manifest if manifest is not None else ():
        item_id, href = element.get("id"), element.get("href")
        if local_name(element) != "item" or not item_id or not href:
            continue
        target = resolve(opf_path, href)
        if target is not None:
            properties = frozenset((element.get("properties") or "").split())
            media = (element.get("media-type") or "").strip().lower()
            items.setdefault(item_id, Item(item_id, target[0], media, properties))
    return items


def _spine_items(spine: etree._Element | None, manifest: dict[str, Item]) -> Iterator[Item]:
    """The linear items of the reading order (non-linear ones, such as notes, are not read)."""
    for itemref in spine if spine is not None else ():
        if local_name(itemref) != "itemref" or itemref.get("linear") == "no":
            continue  # non-linear items (notes, pop-ups) are outside the reading order
        item = manifest.get(itemref.get("idref") or "")
        if item is None:
            raise Unreadable(
                f"is damaged: its spine names {itemref.get('idref')!r}, which its manifest lacks"
            )
        yield item


def _is_text(item: Item) -> bool:
    return item.media_type in _TEXT_TYPES and "nav" not in item.properties


def _authors(metadata: etree._Element | None) -> tuple[str, ...]:
    """The creators whose role is author (or unstated); every creator when none is."""
    if metadata is None:
        return ()
    roles = {
        (el.get("refines") or "").lstrip("#"): _clean(el.text)
        for el in metadata
        if local_name(el) == "meta" and el.get("property") == "role"
    }
    creators = [el for el in metadata if local_name(el) == "creator" and _clean(el.text)]
    authors = [
        el
        for el in creators
        if (el.get(f"{_OPF_NS}role") or roles.get(el.get("id") or "") or "aut") == "aut"
    ]
    return tuple(_clean(el.text) for el in (authors or creators))


def _cover_item(metadata: etree._Element | None, manifest: dict[str, Item]) -> Item | None:
    for item in manifest.values():
        if "cover-image" in item.properties:
            return item
    for element in metadata if metadata is not None else ():
        if local_name(element) == "meta" and element.get("name") == "cover":
            reference = element.get("content") or ""
            by_id = manifest.get(reference)
            by_path = next((i for i in manifest.values() if i.path.endswith(reference)), None)
            if (found := by_id or by_path) and found.media_type.startswith("image/"):
                return found
    return next(
        (
            item
            for item in manifest.values()
            if "cover" in item.id.lower() and item.media_type.startswith("image/")
        ),
        None,
    )


def _ncx_by_type(manifest: dict[str, Item]) -> Item | None:
    return next(
        (item for item in manifest.values() if item.media_type == "application/x-dtbncx+xml"),
        None,
    )


def _toc(archive: zipfile.ZipFile, package: Package) -> list[TocEntry]:
    entries: list[TocEntry] = []
    if package.nav is not None and (name := _find(archive, package.nav.path)):
        entries = nav_entries(_read(archive, name), package.nav.path)
    if not entries and package.ncx is not None and (name := _find(archive, package.ncx.path)):
        entries = ncx_entries(_read(archive, name), package.ncx.path)
    return entries


def _spine_document(archive: zipfile.ZipFile, item: Item) -> SpineDocument:
    name = _find(archive, item.path)
    if name is None:
        raise Unreadable(f"is damaged: its spine names {item.path}, which the archive lacks")
    root = parse_document(_read(archive, name))
    return SpineDocument(item.path, tuple(blocks(root)) if root is not None else ())


def _cover(archive: zipfile.ZipFile, item: Item | None) -> tuple[bytes | None, str | None]:
    """The cover's bytes and type; a missing or oversized cover is no reason to skip a book."""
    if item is None or (name := _find(archive, item.path)) is None:
        return None, None
    try:
        data = _read(archive, name, MAX_COVER_BYTES)
    except Unreadable:
        return None, None
    sniffed = next((mime for magic, mime in _IMAGE_MAGIC.items() if data.startswith(magic)), None)
    if sniffed is None and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        sniffed = "image/webp"
    return data, sniffed or item.media_type or None


# --- the archive and its XML ------------------------------------------------------------------


def _find(archive: zipfile.ZipFile, path: str) -> str | None:
    """The archive's name for `path`; EPUBs made on case-insensitive disks may differ in case."""
    names = archive.NameToInfo
    if path in names:
        return path
    folded = path.casefold()
    return next((name for name in names if name.casefold() == folded), None)


def _read(archive: zipfile.ZipFile, name: str, limit: int | None = None) -> bytes:
    limit = MAX_ENTRY_BYTES if limit is None else limit
    try:
        info = archive.getinfo(name)
        if info.file_size > limit:
            raise Unreadable(
                f"has a file ({name}) over {limit // 2**20} MB, more than a book holds"
            )
        with archive.open(info) as stream:
            data = stream.read(limit + 1)
    except (zipfile.BadZipFile, zlib.error, EOFError, KeyError) as exc:
        raise Unreadable(f"is damaged ({name}: {exc}); get a fresh copy") from None
    except (RuntimeError, NotImplementedError) as exc:  # encrypted entry, unknown compression
        raise Unreadable(f"cannot be unpacked ({name}: {exc})") from None
    if len(data) > limit:
        raise Unreadable(f"has a file ({name}) that inflates past {limit // 2**20} MB")
    return data


def _xml(data: bytes, name: str) -> etree._Element:
    try:
        root = etree.fromstring(data, safe_xml_parser())
    except etree.XMLSyntaxError as exc:
        raise Unreadable(f"is damaged: {name} is not XML ({exc})") from None
    if root is None:
        raise Unreadable(f"is damaged: {name} is empty or not XML")
    return root


def _first(root: etree._Element, name: str) -> etree._Element | None:
    return next((el for el in root.iter() if local_name(el) == name.lower()), None)


def _first_text(parent: etree._Element | None, name: str) -> str | None:
    if parent is None:
        return None
    return next(
        (text for el in parent if local_name(el) == name and (text := _clean(el.text))), None
    )


def _clean(text: str | None) -> str:
    return " ".join((text or "").split())
