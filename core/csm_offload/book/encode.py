"""MP3 per chapter and one M4B per book, encoded by the ffmpeg binary that imageio-ffmpeg ships.

ffmpeg reads the chapter FLACs itself (the concat demuxer for the book), so the book never
passes through Python's memory. Each output is written to a temporary name beside the
destination and renamed only when ffmpeg exits 0; a failure, Ctrl-C or SIGTERM kills ffmpeg
and removes the temporary file, so a destination is either the previous file or a whole new one.

Facts about the shipped binary (imageio-ffmpeg 0.8, ffmpeg 9.0) this relies on: it has
libmp3lame and the native AAC encoder; its `ipod` muxer writes chapters both as a QuickTime
chapter track (what Apple Books reads) and as a Nero `chpl` atom (what most other players
read), and an attached JPEG or PNG as the `covr` atom; it ships no ffprobe.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO

import attrs
import soundfile as sf

from ..errors import CsmOffloadError, UserError
from ..output import write_bytes_atomic
from .assemble import check_output_dir
from .metadata import (
    BookInfo,
    ChapterMark,
    FFMetadata,
    chapter_marks,
    parse_ffmetadata,
    render_ffmetadata,
)

#: Called with the seconds of audio encoded so far, about twice a second.
Progress = Callable[[float], None]
#: What ACX asks of an MP3: 44.1 kHz, constant 192 kbps.
MP3_RATE = 44_100
MP3_KBPS = 192
#: Mono speech at 64 kbps AAC-LC is transparent enough for narration, about 29 MB an hour.
M4B_KBPS = 64
_GENRE = "Audiobook"
#: iTunes' media kind (`stik`) for an audiobook: Apple Books files it under Audiobooks.
_STIK_AUDIOBOOK = "2"
_ERROR_LINES = 6
_PROGRESS = re.compile(r"out_time_us=(-?\d+)\s*")


class EncodeError(CsmOffloadError):
    """ffmpeg failed; the message ends with the last lines it wrote to stderr."""


@attrs.frozen
class ChapterFile:
    """A chapter's FLAC (from `ChapterAssembler.commit`) and its title."""

    title: str
    path: Path


def ffmpeg_exe() -> str:
    """The path of the ffmpeg binary that imageio-ffmpeg ships (imported only when needed)."""
    try:
        import imageio_ffmpeg
    except ImportError:
        raise UserError(
            "MP3 and M4B need imageio-ffmpeg; install it (pip install imageio-ffmpeg) or ask "
            "for FLAC only"
        ) from None
    try:
        return str(imageio_ffmpeg.get_ffmpeg_exe())
    except RuntimeError as exc:
        raise UserError(f"imageio-ffmpeg has no ffmpeg binary ({exc}); reinstall it") from None


def parse_progress(line: str) -> float | None:
    """Seconds encoded from one line of `ffmpeg -progress`, or None for the other lines."""
    match = _PROGRESS.fullmatch(line)
    return max(0, int(match.group(1))) / 1_000_000 if match else None


def read_tags(path: Path) -> FFMetadata:
    """The global tags and chapters of a media file, as ffmpeg reads them back."""
    command = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", "-i", str(path)]
    try:
        done = subprocess.run(
            [*command, "-f", "ffmetadata", "-"], capture_output=True, check=False, timeout=120
        )
    except subprocess.TimeoutExpired:
        raise EncodeError(f"ffmpeg took over 2 minutes to read the tags of {path}") from None
    if done.returncode != 0:
        raise EncodeError(f"ffmpeg cannot read {path}: {_tail(done.stderr)}")
    return parse_ffmetadata(done.stdout.decode("utf-8", "replace"))


def encode_mp3(
    source: Path,
    dest: Path,
    *,
    book: BookInfo,
    title: str,
    track: int,
    tracks: int,
    progress: Progress | None = None,
) -> Path:
    """One chapter's FLAC as an ACX-style MP3 (44.1 kHz, CBR 192 kbps) with ID3v2.3 tags:
    title, artist, album = the book, track n/N, language and the cover as APIC."""
    if not 1 <= track <= tracks:
        raise ValueError(f"track {track} of {tracks}")
    tags = {**_book_tags(book), "title": title, "track": f"{track}/{tracks}"}
    if book.language:
        tags["language"] = book.language
    with tempfile.TemporaryDirectory(prefix="csm-offload-mp3-") as scratch:
        inputs = ["-i", str(source), *_metadata_input(Path(scratch), FFMetadata(tags))]
        inputs += _cover_input(Path(scratch), book)
        audio = ["-map", "0:a", "-map_metadata", "1", "-map_chapters", "-1"]
        audio += ["-c:a", "libmp3lame", "-b:a", f"{MP3_KBPS}k", "-ar", str(MP3_RATE)]
        muxer = ["-id3v2_version", "3", "-write_id3v1", "0"]
        _encode([*inputs, *audio, *_cover_output(book, mp3=True), *muxer], dest, "mp3", progress)
    return dest


def encode_m4b(
    chapters: Sequence[ChapterFile],
    dest: Path,
    *,
    book: BookInfo,
    bitrate_kbps: int = M4B_KBPS,
    progress: Progress | None = None,
) -> list[ChapterMark]:
    """The whole book as one M4B (AAC at the chapters' rate) with a chapter mark per file,
    the book's tags and its cover; returns the chapter marks written."""
    if not chapters:
        raise ValueError("a book needs at least one chapter")
    if not 8 <= bitrate_kbps <= 320:
        raise UserError(f"the M4B bit rate must be 8 to 320 kbps, got {bitrate_kbps}; try 64")
    rate, frames = _chapter_layout(chapters)
    marks = chapter_marks([chapter.title for chapter in chapters], frames, rate)
    tags = {**_book_tags(book), "title": book.title, "media_type": _STIK_AUDIOBOOK}
    with tempfile.TemporaryDirectory(prefix="csm-offload-m4b-") as scratch:
        inputs = _concat_input(Path(scratch), chapters)
        inputs += _metadata_input(Path(scratch), FFMetadata(tags, tuple(marks)))
        inputs += _cover_input(Path(scratch), book)
        audio = ["-map", "0:a", "-map_metadata", "1", "-map_chapters", "1"]
        # The "fast" coder: the default (twoloop) runs under 100× real time on speech here,
        # and measured no better (waveform SNR 24 dB against fast's 39 at 64 kbps mono).
        audio += ["-c:a", "aac", "-aac_coder", "fast", "-b:a", f"{bitrate_kbps}k"]
        if book.language:
            audio += ["-metadata:s:a:0", f"language={book.language}"]
        # `ipod` is the muxer ffmpeg picks for .m4b; the brand tells players it is a book.
        muxer = ["-brand", "M4B ", "-movflags", "+faststart"]
        _encode([*inputs, *audio, *_cover_output(book, mp3=False), *muxer], dest, "ipod", progress)
    return marks


def _book_tags(book: BookInfo) -> dict[str, str]:
    return {
        "artist": book.author,
        "album_artist": book.author,
        "album": book.title,
        "genre": _GENRE,
    }


def _chapter_layout(chapters: Sequence[ChapterFile]) -> tuple[int, list[int]]:
    """The common sample rate of the chapter files and each one's length in samples."""
    rates: set[int] = set()
    frames: list[int] = []
    for chapter in chapters:
        try:
            info = sf.info(str(chapter.path))
        except (sf.LibsndfileError, RuntimeError, OSError) as exc:
            raise UserError(
                f"cannot read the chapter audio {chapter.path} ({exc}); assemble it again"
            ) from None
        rates.add(int(info.samplerate))
        frames.append(int(info.frames))
    if len(rates) != 1:
        raise UserError(
            f"the chapter files have different sample rates ({', '.join(map(str, sorted(rates)))} "
            "Hz); assemble every chapter at one rate"
        )
    return rates.pop(), frames


def _concat_line(path: Path) -> str:
    text = str(path.absolute())
    if "\n" in text or "\r" in text:
        raise UserError(f"the chapter file name {text!r} has a line break; rename it")
    return "file '" + text.replace("'", "'\\''") + "'"


def _concat_input(scratch: Path, chapters: Sequence[ChapterFile]) -> list[str]:
    listing = scratch / "chapters.ffconcat"
    lines = ["ffconcat version 1.0", *(_concat_line(chapter.path) for chapter in chapters)]
    listing.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return ["-f", "concat", "-safe", "0", "-i", str(listing)]


def _metadata_input(scratch: Path, meta: FFMetadata) -> list[str]:
    path = scratch / "metadata.txt"
    path.write_text(render_ffmetadata(meta), encoding="utf-8")
    return ["-f", "ffmetadata", "-i", str(path)]


def _cover_input(scratch: Path, book: BookInfo) -> list[str]:
    if book.cover is None:
        return []
    path = scratch / f"cover{book.cover.suffix}"
    path.write_bytes(book.cover.data)
    return ["-i", str(path)]


def _cover_output(book: BookInfo, *, mp3: bool) -> list[str]:
    if book.cover is None:
        return []
    args = ["-map", "2:v", "-c:v", "copy", "-disposition:v:0", "attached_pic"]
    if mp3:  # ID3 APIC: the comment is what makes ffmpeg mark it as the front cover
        args += ["-metadata:s:v", "title=Cover", "-metadata:s:v", "comment=Cover (front)"]
    return args


def _encode(args: Sequence[str], dest: Path, fmt: str, progress: Progress | None) -> None:
    """Run ffmpeg into a temporary file beside `dest`; rename it into place on success."""
    check_output_dir(dest.parent)
    if dest.is_dir():
        raise UserError(f"{dest} is a folder; move it away or choose another output folder")
    tmp = write_bytes_atomic(dest, b"")  # reserves the temporary name and proves it writable
    try:
        head = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", "-nostats"]
        command = [*head, "-progress", "pipe:1", "-y", *args, "-f", fmt, str(tmp)]
        with _sigterm_raises(), tempfile.TemporaryFile() as stderr:
            code = _run(command, stderr, progress)
            if code != 0:
                stderr.seek(0)
                raise EncodeError(
                    f"ffmpeg could not write {dest} (exit status {code}): "
                    f"{_tail(stderr.read())}; the chapter FLACs are kept, so a rerun costs nothing"
                )
        _rename(tmp, dest)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise


def _rename(tmp: Path, dest: Path) -> None:
    try:
        os.replace(tmp, dest)
    except OSError as exc:
        raise UserError(
            f"could not put {dest} in place ({exc.strerror or exc}); choose another output folder"
        ) from None


def _run(command: Sequence[str], stderr: IO[bytes], progress: Progress | None) -> int:
    """ffmpeg's exit status, feeding `progress` as it goes; any exception here (a failing
    callback, Ctrl-C, SIGTERM) kills ffmpeg before it propagates."""
    process = subprocess.Popen(
        command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=stderr, text=True
    )
    try:
        assert process.stdout is not None
        for line in process.stdout:
            seconds = parse_progress(line)
            if seconds is not None and progress is not None:
                progress(seconds)
        return process.wait()
    except BaseException:
        process.kill()
        process.wait()
        raise
    finally:
        if process.stdout is not None:
            process.stdout.close()


def _tail(stderr: bytes) -> str:
    lines = [line.strip() for line in stderr.decode("utf-8", "replace").splitlines()]
    kept = [line for line in lines if line][-_ERROR_LINES:]
    return " | ".join(kept) or "no message"


@contextlib.contextmanager
def _sigterm_raises() -> Iterator[None]:
    """While ffmpeg runs, SIGTERM unwinds this process like Ctrl-C does, so ffmpeg is killed
    and the temporary file removed; left alone where the program handles SIGTERM itself or
    where signals cannot be set (outside the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield
        return

    def exit_on_sigterm(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, exit_on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
