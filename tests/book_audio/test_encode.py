"""MP3 and M4B through the shipped ffmpeg: tags, chapters, cover and format read back (with
ffmpeg itself and with mutagen), all-or-nothing files, and the metadata text ffmpeg reads."""

from __future__ import annotations

import os
import re
import signal
import struct
import subprocess
import sys
import textwrap
import zlib
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mutagen.id3 import PictureType
from mutagen.mp3 import MP3, BitrateMode
from mutagen.mp4 import MP4, MP4Cover

from csm_offload.audio import Audio
from csm_offload.book.encode import (
    ChapterFile,
    EncodeError,
    encode_m4b,
    encode_mp3,
    ffmpeg_exe,
    parse_progress,
    read_tags,
)
from csm_offload.book.metadata import (
    BookInfo,
    ChapterMark,
    Cover,
    FFMetadata,
    iso639_2,
    parse_ffmetadata,
    render_ffmetadata,
    tag_text,
)
from csm_offload.errors import UserError

RATE = 24_000
CHAPTER_SECONDS = (1.5, 0.75, 2.25)
TITLES = ("Chapter 1: The = sign", "Chapitre 2 ; été #2", "第三章 \\ back")


def _png(width: int = 4, height: int = 3) -> bytes:
    """A real PNG, built by hand so no image library or download is needed."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    rows = b"".join(b"\x00" + bytes((200, 30, 60)) * width for _ in range(height))
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


@pytest.fixture(scope="module")
def jpeg() -> bytes:
    """A real 16×16 JPEG, made by the shipped ffmpeg."""
    command = [ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-f", "lavfi"]
    command += ["-i", "color=c=red:s=16x16", "-frames:v", "1", "-c:v", "mjpeg"]
    return subprocess.run(
        [*command, "-f", "image2pipe", "-"], capture_output=True, check=True
    ).stdout


@pytest.fixture(scope="module")
def chapters(tmp_path_factory: pytest.TempPathFactory) -> list[ChapterFile]:
    folder = tmp_path_factory.mktemp("chapters")
    files = []
    for number, (seconds, title) in enumerate(zip(CHAPTER_SECONDS, TITLES, strict=True)):
        samples = np.random.default_rng(number).uniform(-0.3, 0.3, round(seconds * RATE))
        path = folder / f"{number + 1:02d} it's chapter {number + 1}.flac"  # a quote, spaces
        path.write_bytes(Audio(samples.astype(np.float32), RATE).encode("flac"))
        files.append(ChapterFile(title, path))
    return files


def _book(cover: bytes | None = None, language: str | None = "en-GB") -> BookInfo:
    return BookInfo(
        title="The Böok of Tests",
        author="Ada Lovelace",
        language=language,
        cover=Cover.from_bytes(cover) if cover else None,
    )


def _leftovers(folder: Path) -> list[str]:
    return sorted(name for name in os.listdir(folder) if name.endswith(".tmp"))


def _describe(path: Path) -> str:
    """What `ffmpeg -i` says of a file (the binary ships no ffprobe)."""
    done = subprocess.run([ffmpeg_exe(), "-hide_banner", "-i", str(path)], capture_output=True)
    return done.stderr.decode()


def _stream_lines(path: Path) -> list[str]:
    return [line.strip() for line in _describe(path).splitlines() if "Stream #" in line]


def _ffmpeg_duration(path: Path) -> float:
    match = re.search(r"Duration: (\d+):(\d+):(\d+\.\d+)", _describe(path))
    assert match, _describe(path)
    hours, minutes, seconds = match.groups()
    return int(hours) * 3600 + int(minutes) * 60 + float(seconds)


def _ffmpeg_cover(path: Path) -> bytes:
    """The attached picture, copied out by ffmpeg byte for byte."""
    command = [ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-i", str(path)]
    command += ["-map", "0:v", "-c", "copy", "-f", "image2pipe", "-"]
    return subprocess.run(command, capture_output=True, check=True).stdout


# --- M4B ----------------------------------------------------------------------------------


def test_m4b_has_chapter_marks_titles_duration_tags_and_cover(
    tmp_path: Path, chapters: list[ChapterFile], jpeg: bytes
) -> None:
    dest = tmp_path / "book.m4b"
    marks = encode_m4b(chapters, dest, book=_book(jpeg))
    total = sum(round(seconds * RATE) for seconds in CHAPTER_SECONDS)

    # ffmpeg's reading: marks exact to the sample, the brand, the tags.
    tags = read_tags(dest)
    assert tags.chapters == tuple(marks)
    assert [mark.title for mark in tags.chapters] == [tag_text(title) for title in TITLES]
    assert tags.chapters[0].start == 0
    assert tags.chapters[-1].end == total
    assert all(a.end == b.start for a, b in zip(tags.chapters, tags.chapters[1:], strict=False))
    assert tags.tags["major_brand"].strip() == "M4B"
    assert tags.tags["title"] == tags.tags["album"] == "The Böok of Tests"
    assert tags.tags["artist"] == "Ada Lovelace"

    # mutagen's reading: the same chapters, the iTunes atoms, the cover bytes, the audio.
    m4b = MP4(dest)
    assert m4b.chapters is not None
    assert [chapter.title for chapter in m4b.chapters] == [mark.title for mark in marks]
    starts = [chapter.start for chapter in m4b.chapters]
    assert starts == pytest.approx([mark.start_s for mark in marks], abs=1e-3)
    assert m4b.tags is not None
    assert m4b.tags["©nam"] == ["The Böok of Tests"]
    assert m4b.tags["©ART"] == m4b.tags["aART"] == ["Ada Lovelace"]
    assert m4b.tags["©alb"] == ["The Böok of Tests"]
    assert m4b.tags["©gen"] == ["Audiobook"]
    assert m4b.tags["stik"] == [2]  # Apple's media kind "Audiobook"
    (cover,) = m4b.tags["covr"]
    assert bytes(cover) == jpeg
    assert cover.imageformat == MP4Cover.FORMAT_JPEG
    assert m4b.info.codec == "mp4a.40.2"  # AAC-LC
    assert m4b.info.sample_rate == RATE
    assert m4b.info.length == pytest.approx(total / RATE, abs=0.1)  # AAC priming included
    assert any("(eng): Audio: aac" in line for line in _stream_lines(dest))
    assert any("(attached pic)" in line for line in _stream_lines(dest))
    assert _ffmpeg_cover(dest) == jpeg
    assert _ffmpeg_duration(dest) == pytest.approx(total / RATE, abs=0.011)  # edit list: exact
    assert _leftovers(tmp_path) == []


def test_m4b_takes_a_png_cover(tmp_path: Path, chapters: list[ChapterFile]) -> None:
    png = _png()
    dest = tmp_path / "book.m4b"
    encode_m4b(chapters[:1], dest, book=_book(png))
    tags = MP4(dest).tags
    assert tags is not None
    (cover,) = tags["covr"]
    assert bytes(cover) == png
    assert cover.imageformat == MP4Cover.FORMAT_PNG


def test_m4b_without_cover_or_language(tmp_path: Path, chapters: list[ChapterFile]) -> None:
    dest = tmp_path / "book.m4b"
    marks = encode_m4b(chapters, dest, book=_book(None, language=None), bitrate_kbps=32)
    tags = MP4(dest).tags
    assert tags is not None
    assert "covr" not in tags
    assert read_tags(dest).chapters == tuple(marks)
    assert not any("Video" in line for line in _stream_lines(dest))


def test_progress_reports_seconds_up_to_the_end(
    tmp_path: Path, chapters: list[ChapterFile]
) -> None:
    seen: list[float] = []
    encode_m4b(chapters, tmp_path / "book.m4b", book=_book(), progress=seen.append)
    assert seen
    assert seen == sorted(seen)
    assert seen[-1] == pytest.approx(sum(CHAPTER_SECONDS), abs=0.1)


def test_chapters_at_different_rates_are_refused(
    tmp_path: Path, chapters: list[ChapterFile]
) -> None:
    odd = tmp_path / "odd.flac"
    odd.write_bytes(Audio(np.zeros(4410, dtype=np.float32), 44_100).encode("flac"))
    with pytest.raises(UserError, match=r"different sample rates.*one rate"):
        encode_m4b([*chapters, ChapterFile("Odd", odd)], tmp_path / "book.m4b", book=_book())
    assert list(tmp_path.iterdir()) == [odd]


def test_an_unreadable_chapter_file_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "bad.flac"
    bad.write_bytes(b"not audio at all")
    with pytest.raises(UserError, match=r"cannot read the chapter audio .*bad.flac"):
        encode_m4b([ChapterFile("Bad", bad)], tmp_path / "book.m4b", book=_book())


def test_a_chapter_path_with_a_line_break_is_refused(tmp_path: Path) -> None:
    odd = tmp_path / "two\nlines.flac"
    odd.write_bytes(Audio(np.zeros(240, dtype=np.float32), RATE).encode("flac"))
    with pytest.raises(UserError, match="line break; rename it"):
        encode_m4b([ChapterFile("x", odd)], tmp_path / "book.m4b", book=_book())


@pytest.mark.parametrize("kbps", [0, 7, 321])
def test_a_bit_rate_out_of_range_is_refused(
    tmp_path: Path, chapters: list[ChapterFile], kbps: int
) -> None:
    with pytest.raises(UserError, match="8 to 320 kbps"):
        encode_m4b(chapters, tmp_path / "book.m4b", book=_book(), bitrate_kbps=kbps)


# --- MP3 ----------------------------------------------------------------------------------


def test_mp3_is_44k1_cbr_192_with_id3_tags_and_cover(
    tmp_path: Path, chapters: list[ChapterFile], jpeg: bytes
) -> None:
    dest = tmp_path / "02.mp3"
    encode_mp3(chapters[1].path, dest, book=_book(jpeg), title=TITLES[1], track=2, tracks=3)
    mp3 = MP3(dest)
    assert mp3.info.sample_rate == 44_100
    assert mp3.info.bitrate == pytest.approx(192_000, rel=1e-3)  # mutagen averages frames
    assert mp3.info.bitrate_mode == BitrateMode.CBR
    assert mp3.info.channels == 1
    assert mp3.info.length == pytest.approx(CHAPTER_SECONDS[1], abs=0.1)
    tags = mp3.tags
    assert tags is not None
    assert tags.version[:2] == (2, 3)
    assert tags["TIT2"].text == [tag_text(TITLES[1])]
    assert tags["TPE1"].text == tags["TPE2"].text == ["Ada Lovelace"]
    assert tags["TALB"].text == ["The Böok of Tests"]
    assert tags["TRCK"].text == ["2/3"]
    assert tags["TLAN"].text == ["eng"]
    assert tags["TCON"].text == ["Audiobook"]
    (picture,) = tags.getall("APIC")
    assert picture.data == jpeg
    assert picture.mime == "image/jpeg"
    assert picture.type == PictureType.COVER_FRONT
    assert _leftovers(tmp_path) == []


def test_mp3_without_cover(tmp_path: Path, chapters: list[ChapterFile]) -> None:
    dest = tmp_path / "01.mp3"
    encode_mp3(chapters[0].path, dest, book=_book(language=None), title="One", track=1, tracks=1)
    tags = MP3(dest).tags
    assert tags is not None
    assert tags.getall("APIC") == []
    assert "TLAN" not in tags
    assert tags["TIT2"].text == ["One"]


@pytest.mark.parametrize(("track", "tracks"), [(0, 3), (4, 3), (1, 0)])
def test_a_track_outside_the_book_is_a_programming_error(
    tmp_path: Path, chapters: list[ChapterFile], track: int, tracks: int
) -> None:
    with pytest.raises(ValueError, match="track"):
        encode_mp3(
            chapters[0].path,
            tmp_path / "x.mp3",
            book=_book(),
            title="x",
            track=track,
            tracks=tracks,
        )


# --- all or nothing -----------------------------------------------------------------------


def test_a_failing_ffmpeg_leaves_no_file_and_says_why(tmp_path: Path) -> None:
    source = tmp_path / "garbage.flac"
    source.write_bytes(b"fLaC but not really" * 10)
    dest = tmp_path / "out.mp3"
    with pytest.raises(EncodeError, match=r"ffmpeg could not write .*out\.mp3.*exit status") as err:
        encode_mp3(source, dest, book=_book(), title="x", track=1, tracks=1)
    assert "garbage.flac" in str(err.value)  # ffmpeg's own last words are in the message
    assert not dest.exists()
    assert _leftovers(tmp_path) == []


_POPEN = subprocess.Popen


class _Recorder:
    """Wraps Popen to keep every ffmpeg process started, so a test can see it was reaped."""

    def __init__(self) -> None:
        self.processes: list[subprocess.Popen[Any]] = []

    def __call__(self, *args: Any, **kwargs: Any) -> subprocess.Popen[Any]:
        process = _POPEN(*args, **kwargs)
        self.processes.append(process)
        return process


def test_ctrl_c_mid_encode_kills_ffmpeg_and_keeps_the_old_file(
    tmp_path: Path, chapters: list[ChapterFile], monkeypatch: pytest.MonkeyPatch
) -> None:
    dest = tmp_path / "book.m4b"
    dest.write_bytes(b"last week's book")
    recorder = _Recorder()
    monkeypatch.setattr(subprocess, "Popen", recorder)

    def interrupt(_seconds: float) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        encode_m4b(chapters, dest, book=_book(), progress=interrupt)
    assert dest.read_bytes() == b"last week's book"
    assert _leftovers(tmp_path) == []
    (process,) = recorder.processes
    assert process.returncode is not None  # killed and reaped, not left running


SIGTERM_CHILD = textwrap.dedent(
    """
    import subprocess, sys, time
    from pathlib import Path
    from csm_offload.book import encode
    from csm_offload.book.metadata import BookInfo

    real_popen = subprocess.Popen

    def popen(*args, **kwargs):
        process = real_popen(*args, **kwargs)
        print("ffmpeg", process.pid, flush=True)
        return process

    subprocess.Popen = popen

    def progress(seconds):
        print("progress", flush=True)
        time.sleep(30)  # SIGTERM arrives while ffmpeg is still running

    chapter = encode.ChapterFile("One", Path(sys.argv[1]))
    encode.encode_m4b([chapter], Path(sys.argv[2]), book=BookInfo("T", "A"), progress=progress)
    """
)


def test_sigterm_mid_encode_kills_ffmpeg_and_leaves_no_file(
    tmp_path: Path, chapters: list[ChapterFile]
) -> None:
    dest = tmp_path / "book.m4b"
    child = subprocess.Popen(
        [sys.executable, "-c", SIGTERM_CHILD, str(chapters[0].path), str(dest)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    pids = []  # imageio-ffmpeg runs `ffmpeg -version` once first: the encoder is the last
    for line in child.stdout:
        if line.startswith("ffmpeg "):
            pids.append(int(line.split()[1]))
        elif line.strip() == "progress":
            break
    ffmpeg_pid = pids[-1]
    child.send_signal(signal.SIGTERM)
    assert child.wait(timeout=30) == 128 + signal.SIGTERM
    child.stdout.close()
    with pytest.raises(ProcessLookupError):
        os.kill(ffmpeg_pid, 0)  # ffmpeg went with it: no orphan still writing
    assert not dest.exists()
    assert _leftovers(tmp_path) == []


def test_an_output_folder_that_is_a_file_is_one_clear_error(
    tmp_path: Path, chapters: list[ChapterFile]
) -> None:
    blocker = tmp_path / "out"
    blocker.write_text("a file")
    with pytest.raises(UserError, match=r"is a file, not a folder.*choose another output folder"):
        encode_m4b(chapters, blocker / "book.m4b", book=_book())
    with pytest.raises(UserError, match="is a file, not a folder"):
        encode_mp3(
            chapters[0].path, blocker / "a" / "1.mp3", book=_book(), title="x", track=1, tracks=1
        )


def test_a_destination_that_is_a_folder_is_one_clear_error(
    tmp_path: Path, chapters: list[ChapterFile]
) -> None:
    (tmp_path / "book.m4b").mkdir()
    with pytest.raises(UserError, match=r"book\.m4b is a folder; move it away"):
        encode_m4b(chapters, tmp_path / "book.m4b", book=_book())
    assert _leftovers(tmp_path) == []


def test_an_unwritable_output_folder_is_one_clear_error(
    tmp_path: Path, chapters: list[ChapterFile]
) -> None:
    folder = Path("/sys") if os.geteuid() == 0 else tmp_path / "locked"
    if folder != Path("/sys"):
        folder.mkdir()
        folder.chmod(0o500)
    try:
        with pytest.raises(UserError, match=r"cannot write to .*choose an output folder you can"):
            encode_m4b(chapters, folder / "book.m4b", book=_book())
    finally:
        if folder != Path("/sys"):
            folder.chmod(0o700)


# --- metadata: covers, languages, FFMETADATA ----------------------------------------------


def test_cover_format_is_recognised_by_content(tmp_path: Path, jpeg: bytes) -> None:
    assert Cover.from_bytes(jpeg).mime == "image/jpeg"
    assert Cover.from_bytes(_png()).mime == "image/png"
    assert Cover.from_bytes(_png()).suffix == ".png"
    path = tmp_path / "cover.gif"  # a misleading suffix does not matter
    path.write_bytes(jpeg)
    assert Cover.from_file(path).mime == "image/jpeg"


@pytest.mark.parametrize("data", [b"GIF89a....", b"", b"<svg/>"])
def test_a_cover_that_is_not_jpeg_or_png_names_the_fix(data: bytes) -> None:
    with pytest.raises(UserError, match="not a JPEG or PNG image; convert it"):
        Cover.from_bytes(data)


def test_a_missing_or_huge_cover_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"cannot read the cover .*give a readable image"):
        Cover.from_file(tmp_path / "nope.jpg")
    huge = tmp_path / "huge.png"
    huge.write_bytes(_png() + b"\x00" * (20 * 1024**2))
    with pytest.raises(UserError, match="use a smaller picture"):
        Cover.from_file(huge)


@pytest.mark.parametrize(
    ("given_code", "expected"),
    [
        ("en", "eng"),
        ("EN-us", "eng"),
        ("pt_BR", "por"),
        ("de", "deu"),
        ("fra", "fra"),
        ("zh-Hant-TW", "zho"),
    ],
)
def test_languages_become_iso_639_2(given_code: str, expected: str) -> None:
    assert iso639_2(given_code) == expected
    assert BookInfo("t", "a", language=given_code).language == expected


@pytest.mark.parametrize("bad", ["e", "english", "12", "x-klingon", "ñe"])
def test_a_language_that_is_no_code_names_the_fix(bad: str) -> None:
    with pytest.raises(UserError, match="give one such as en, eng or en-US"):
        iso639_2(bad)


@given(code=st.text("abcdefghijklmnopqrstuvwxyz", min_size=3, max_size=3))
def test_any_three_letter_code_is_kept(code: str) -> None:
    assert iso639_2(code) == code


@given(value=st.text())
def test_tag_text_is_one_clean_line(value: str) -> None:
    clean = tag_text(value)
    assert tag_text(clean) == clean
    assert "\x00" not in clean
    assert clean == " ".join(clean.split())
    assert not clean.endswith("\\")


@st.composite
def metadata(draw: st.DrawFn) -> FFMetadata:
    keys = st.sampled_from(["title", "artist", "album", "album_artist", "genre", "comment"])
    tags = draw(st.dictionaries(keys, st.text(max_size=30)))
    lengths = draw(st.lists(st.integers(1, 10**7), max_size=4))
    titles = draw(st.lists(st.text(max_size=20), min_size=len(lengths), max_size=len(lengths)))
    rate = draw(st.sampled_from([8_000, 24_000, 44_100]))
    starts = np.cumsum([0, *lengths]).tolist()
    marks = tuple(
        ChapterMark(title, start, end, Fraction(1, rate))
        for title, start, end in zip(titles, starts, starts[1:], strict=False)
    )
    return FFMetadata(tags, marks)


def _clean(meta: FFMetadata) -> FFMetadata:
    return FFMetadata({key: tag_text(value) for key, value in meta.tags.items()}, meta.chapters)


@given(meta=metadata())
def test_ffmetadata_round_trips_through_our_parser(meta: FFMetadata) -> None:
    assert parse_ffmetadata(render_ffmetadata(meta)) == _clean(meta)


@settings(max_examples=25, deadline=None)
@given(meta=metadata())
def test_ffmpeg_reads_our_ffmetadata_as_we_meant_it(
    tmp_path_factory: pytest.TempPathFactory, meta: FFMetadata
) -> None:
    """The real reader has quirks (a carriage return ends a value even escaped; an escaped
    backslash before the line end continues the line): tag_text keeps values clear of them."""
    path = tmp_path_factory.mktemp("meta") / "meta.txt"
    path.write_text(render_ffmetadata(meta), encoding="utf-8")
    command = [ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-f", "ffmetadata"]
    done = subprocess.run(
        [*command, "-i", str(path), "-f", "ffmetadata", "-"], capture_output=True, check=True
    )
    back = parse_ffmetadata(done.stdout.decode("utf-8"))
    expected = _clean(meta)
    assert {key: back.tags[key] for key in expected.tags} == expected.tags
    assert back.chapters == expected.chapters


@given(text=st.text())
def test_parsing_any_text_gives_metadata_or_a_value_error(text: str) -> None:
    try:
        parsed = parse_ffmetadata(";FFMETADATA1\n" + text)
    except ValueError as exc:
        message = str(exc)
    else:
        message = "FFMETADATA"
        assert all(isinstance(value, str) for value in parsed.tags.values())
    assert "FFMETADATA" in message


def test_text_that_is_not_ffmetadata_is_refused() -> None:
    with pytest.raises(ValueError, match="not FFMETADATA"):
        parse_ffmetadata("title=x\n")


def test_chapters_without_a_timebase_count_nanoseconds() -> None:
    meta = parse_ffmetadata(";FFMETADATA1\n[CHAPTER]\nSTART=0\nEND=1500000000\ntitle=a\\=b\n")
    (mark,) = meta.chapters
    assert mark.end_s == 1.5
    assert mark.title == "a=b"


# --- progress lines -----------------------------------------------------------------------


@given(micros=st.integers(0, 10**13))
def test_progress_lines_give_seconds(micros: int) -> None:
    assert parse_progress(f"out_time_us={micros}\n") == micros / 1_000_000


@given(line=st.text().filter(lambda line: not line.startswith("out_time_us=")))
def test_other_progress_lines_give_nothing(line: str) -> None:
    assert parse_progress(line) is None


@pytest.mark.parametrize("line", ["out_time_us=N/A\n", "out_time_us=-5000\n", "out_time_us=\n"])
def test_progress_before_the_first_frame(line: str) -> None:
    assert parse_progress(line) in (None, 0.0)
