"""A book's output folder: what was extracted (so `--audio-only` never fetches again), which
chunks were regenerated on request (their takes), and where each output goes.

    DIR/book.json            title, author, language, chapters, skipped sources, takes
    DIR/text/NN.txt          each chapter's extracted text
    DIR/cover.jpg|png        the cover, when the source has one
    DIR/chapters/NN - T.flac one FLAC per chapter (always)
    DIR/mp3/NN - T.mp3       with --format mp3
    DIR/<title>.m4b          with --format m4b
    DIR/report.json          what the last run did

Every file is written under a temporary name and renamed when complete.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..output import write_bytes_atomic
from .model import Book, Chapter, Skipped

MANIFEST = "book.json"
_COVER_SUFFIX = {"image/png": "png", "image/jpeg": "jpg", "image/gif": "gif", "image/webp": "webp"}
SCHEMA = 1
_UNSAFE = re.compile(r"[\x00-\x1f/\\:*?\"<>|]+")


def safe_name(title: str, limit: int = 80) -> str:
    """A title as a file name on any common file system (no separators, no control characters,
    no leading dot, bounded length)."""
    name = _UNSAFE.sub(" ", title)
    name = " ".join(name.split()).strip(" .")
    return name[:limit].rstrip(" .") or "untitled"


def chapter_stem(number: int, title: str) -> str:
    return f"{number:02d} - {safe_name(title, 60)}"


def _write(path: Path, data: bytes) -> None:
    os.replace(write_bytes_atomic(path, data), path)


def save_book(
    folder: Path,
    book: Book,
    takes: dict[str, int],
    flagged: dict[str, list[str]] | None = None,
) -> None:
    """The extracted book, its takes and the chunks kept flagged by the quality gate (with
    their reasons); text files first, the manifest that names them last."""
    chapters = []
    for number, chapter in enumerate(book.chapters, start=1):
        text_file = f"text/{number:02d}.txt"
        _write(folder / text_file, chapter.text.encode("utf-8"))
        chapters.append({"title": chapter.title, "source": chapter.source, "text": text_file})
    cover = None
    if book.cover:
        cover = f"cover.{_COVER_SUFFIX.get(book.cover_mime or '', 'img')}"
        _write(folder / cover, book.cover)
    manifest = {
        "schema": SCHEMA,
        "title": book.title,
        "author": book.author,
        "language": book.language,
        "cover": cover,
        "cover_mime": book.cover_mime if cover else None,
        "chapters": chapters,
        "skipped": [{"source": s.source, "reason": s.reason} for s in book.skipped],
        "takes": dict(sorted(takes.items())),
        "flagged": dict(sorted((flagged or {}).items())),
    }
    _write(folder / MANIFEST, json.dumps(manifest, indent=2, ensure_ascii=False).encode())


def _manifest(folder: Path) -> dict[str, Any] | None:
    path = folder / MANIFEST
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError) as exc:
        raise UserError(
            f"{path} cannot be read ({exc}); move it away to start this book afresh"
        ) from None
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise UserError(f"{path} is not a csm-offload book manifest; choose another -o folder")
    return data


def load_takes(folder: Path) -> dict[str, int]:
    """The takes recorded by earlier runs in `folder` (none for a new book)."""
    data = _manifest(folder)
    takes = data.get("takes", {}) if data else {}
    return {str(k): int(v) for k, v in takes.items() if isinstance(v, int) and v > 0}


def load_flagged(folder: Path) -> dict[str, list[str]]:
    """The chunks an earlier run kept after failing the quality gate, with the reasons: a rerun
    keeps them as they are instead of paying for new takes again."""
    data = _manifest(folder)
    found = data.get("flagged", {}) if data else {}
    if not isinstance(found, dict):
        return {}
    return {str(k): [str(r) for r in v] for k, v in found.items() if isinstance(v, list)}


def load_book(folder: Path) -> Book:
    """The book extracted by an earlier run (for `--audio-only`: nothing is fetched again)."""
    data = _manifest(folder)
    if data is None:
        raise UserError(
            f"no extracted text in {folder} ({MANIFEST} is missing); run once without "
            "--audio-only to extract it"
        )
    try:
        chapters = tuple(
            Chapter(c["title"], (folder / c["text"]).read_text("utf-8"), c["source"])
            for c in data["chapters"]
        )
        cover = (folder / data["cover"]).read_bytes() if data.get("cover") else None
        skipped = tuple(Skipped(s["source"], s["reason"]) for s in data.get("skipped", []))
    except (OSError, KeyError, TypeError, UnicodeDecodeError) as exc:
        raise UserError(
            f"the extracted text in {folder} is incomplete ({exc}); run without --audio-only "
            "to extract it again"
        ) from None
    return Book(
        title=data["title"],
        author=data.get("author"),
        language=data.get("language") or "en",
        cover=cover,
        cover_mime=data.get("cover_mime"),
        chapters=chapters,
        skipped=skipped,
    )


_TEMP = re.compile(r"\A\..+\.(\d+)\.\d+\.tmp\Z")


def remove_stale_temps(folder: Path, *, every: bool = False) -> int:
    """Delete the temporary files a killed run left in the book's folders (their writer's
    process is gone); returns how many. A live process's files are left alone, unless `every`:
    the caller knows that no process writes there now (a queue's book whose chapters are all
    made, whose writers may have been on other machines, where a pid says nothing)."""
    removed = 0
    for sub in (folder, folder / "chapters", folder / "mp3", folder / "text", folder / "subtitles"):
        for path in sub.glob(".*.tmp") if sub.is_dir() else ():
            found = _TEMP.match(path.name)
            if found is None or (not every and _alive(int(found.group(1)))):
                continue
            with contextlib.suppress(OSError):
                path.unlink()
                removed += 1
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # it exists, under another user
    return True


def write_report(folder: Path, report: dict[str, Any]) -> Path:
    path = folder / "report.json"
    _write(path, json.dumps(report, indent=2, ensure_ascii=False).encode())
    return path
