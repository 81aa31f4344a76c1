"""Finishing a book once its chapters are made: one gain plan over every chapter (loudness),
the MP3s and the M4B, the whole book's subtitles, and report.json's per-book part. Shared by
`csm-offload book` and the queue's finishing task, so both give the same files.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..output import write_bytes_atomic
from . import loudness, subtitles
from .encode import ChapterFile, encode_m4b, encode_mp3
from .metadata import BookInfo, Cover
from .project import chapter_stem, safe_name
from .quality import quality_report
from .subtitles import ChapterTiming
from .volume import Volume


def level(volume: Volume, preset: str, check_acx: bool) -> str | None:
    """One gain plan for the whole book (every chapter made so far, not only this run's),
    measured and applied per chapter, before anything is encoded from the chapters."""
    paths = [path for _n, _t, path in all_chapter_files(volume)]
    if not paths:
        return None
    if preset != "none":
        gains = loudness.plan(loudness.measure(paths), preset)
        loudness.apply_plan(gains)
        volume.loudness = {
            "preset": preset,
            "book_gain_db": round(gains.book_gain_db, 2),
            "chapters": [
                {"file": str(c.path), "gain_db": round(c.gain_db, 2), "notes": list(c.notes)}
                for c in gains.chapters
            ],
        }
    if check_acx:
        checks = loudness.check_acx(paths)
        volume.acx = [{"file": str(c.path), "ok": c.ok, "failures": c.failures()} for c in checks]
        return loudness.format_checks(checks)
    return None


def encode(volume: Volume, formats: Sequence[str]) -> None:
    book = volume.book
    info = BookInfo(
        title=book.title,
        author=book.author or "Unknown",
        language=book.language,
        cover=book_cover(volume) if formats else None,
    )
    files = all_chapter_files(volume)
    book_subtitles(volume)
    if "mp3" in formats:
        for number, title, path in files:
            if number in volume.chapters_written:
                dest = volume.folder / "mp3" / f"{path.stem}.mp3"
                encode_mp3(path, dest, book=info, title=title, track=number, tracks=len(files))
                volume.outputs.append(str(dest))
    if "m4b" in formats:
        missing = len(book.chapters) - len(files)
        if missing:
            volume.notes.append(f"no M4B yet: {missing} chapters are not made (see --chapters)")
            return
        dest = volume.folder / f"{safe_name(book.title)}.m4b"
        chapters = [ChapterFile(title, path) for _n, title, path in files]
        encode_m4b(chapters, dest, book=info)
        volume.outputs.append(str(dest))


def book_cover(volume: Volume) -> Cover | None:
    """The book's cover for the tags; MP3 and M4B carry only JPEG or PNG, so another format
    (an EPUB's GIF or WebP) is left out with a note rather than stopping the book."""
    if not volume.book.cover:
        return None
    try:
        return Cover.from_bytes(volume.book.cover)
    except UserError as exc:
        volume.notes.append(f"cover left out of the tags: {exc}")
        return None


def all_chapter_files(volume: Volume) -> list[tuple[int, str, Path]]:
    """Every chapter of the book whose FLAC exists (made now or by an earlier run)."""
    found = []
    for number, chapter in enumerate(volume.book.chapters, start=1):
        path = volume.folder / "chapters" / f"{chapter_stem(number, chapter.title)}.flac"
        if path.is_file():
            found.append((number, chapter.title, path))
    return found


def book_subtitles(volume: Volume) -> None:
    """One SRT and WebVTT for the whole book (the M4B's timeline), when every chapter of the
    book was assembled by this run (an earlier run's chapter has no timings here)."""
    numbers = range(1, len(volume.book.chapters) + 1)
    if any(n not in volume.timings for n in numbers):
        return
    start, placed = 0.0, []
    for number in numbers:
        timing = volume.timings[number]
        placed.append(ChapterTiming(start, timing.duration_s, timing.chunks))
        start += timing.duration_s
    cues = subtitles.book_cues(placed)
    stem = volume.folder / safe_name(volume.book.title)
    for suffix, text in ((".srt", subtitles.to_srt(cues)), (".vtt", subtitles.to_vtt(cues))):
        path = stem.with_name(stem.name + suffix)
        os.replace(write_bytes_atomic(path, text.encode("utf-8")), path)
        volume.outputs.append(str(path))


def book_report(volume: Volume) -> dict[str, Any]:
    """What this run (or this queue's book) made of `volume`, for report.json."""
    return {
        "title": volume.book.title,
        "folder": str(volume.folder),
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "chapters": [
            {
                "number": chapter.number,
                "title": chapter.title,
                "chunks": len(chapter.chunks),
                "file": str(volume.chapters_written.get(chapter.number) or "") or None,
                "from_journal": volume.from_journal.get(chapter.number, 0),
            }
            for chapter in volume.script
        ],
        "regenerated": volume.redone,
        "failed_chunks": volume.failed,
        "outputs": volume.outputs,
        "notes": volume.notes,
        "loudness": volume.loudness,
        "quality": {**quality_report(volume.gate_events), "kept_flagged": volume.flagged},
        "acx_check": volume.acx,
        "skipped": [{"source": s.source, "reason": s.reason} for s in volume.book.skipped],
    }
