"""Hostile input to `csm-offload synth`: every case ends in one clear sentence (exit 2) or in
good audio (exit 0), never in a traceback or `internal error`, and leaves nothing half-written.

The free eSpeak draft voice (`--draft`) does the speaking, so no GPU, key or network is needed;
most cases are refused before it is ever called.
"""

from __future__ import annotations

import errno
import io
import os
import pathlib
import shutil
import sqlite3
import sys
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import soundfile as sf

from csm_offload import Audio
from csm_offload.cli import main
from csm_offload.cli.synth import MAX_INPUT_BYTES

ESPEAK_ONLY = "providers:\n  espeak:\n    kind: espeak\n"
JOURNAL = Path(".csm-offload/journal.sqlite3")
Setup = Callable[[Path, pytest.MonkeyPatch], list[str]]


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CSM_OFFLOAD_LOAD_PLUGINS", "espeak")
    monkeypatch.delenv("CSM_OFFLOAD_CONFIG", raising=False)
    (tmp_path / "cfg.yaml").write_text(ESPEAK_ONLY)
    return tmp_path


def synth(*args: str) -> int:
    with pytest.raises(SystemExit) as info:
        main(["--config", "cfg.yaml", "synth", *args, "--draft", "--quiet"])
    return int(info.value.code or 0)


def leftovers(root: Path) -> list[Path]:
    """Temporary files anywhere under `root`: a failed write must remove its own."""
    return [p for p in root.rglob("*") if p.name.endswith(".tmp")]


def assert_one_sentence(err: str, message: str) -> None:
    assert "Traceback" not in err and "internal error" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert message in lines[0], err


class LazyStdin(io.RawIOBase):
    """`size` bytes of `fill`, made as they are read: 50 MiB of input without 50 MiB of test."""

    def __init__(self, size: int, fill: bytes = b"a") -> None:
        self.left = size
        self.fill = fill

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        n = min(len(buffer), self.left)
        buffer[:n] = self.fill * n
        self.left -= n
        return n


def stdin_of(monkeypatch: pytest.MonkeyPatch, raw: io.RawIOBase) -> None:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BufferedReader(raw), "utf-8"))


def tiny_disk(free: int) -> Callable[[Any], SimpleNamespace]:
    def usage(_path: Any) -> SimpleNamespace:
        return SimpleNamespace(total=10 * free + 1, used=9 * free, free=free)

    return usage


# --- refused before any work is sent -----------------------------------------------------------


def _output_is_a_directory(work: Path, _mp: pytest.MonkeyPatch) -> list[str]:
    (work / "out.wav").mkdir()
    return ["Hello there.", "-o", "out.wav"]


def _output_is_a_bare_directory(work: Path, _mp: pytest.MonkeyPatch) -> list[str]:
    (work / "music").mkdir()
    return ["Hello there.", "-o", "music"]


def _output_is_empty(_work: Path, _mp: pytest.MonkeyPatch) -> list[str]:
    return ["Hello there.", "-o", ""]


def _output_parent_is_a_file(work: Path, _mp: pytest.MonkeyPatch) -> list[str]:
    (work / "book.txt").write_text("Some text.")
    return ["Hello there.", "-o", "book.txt/chapters/out.wav"]


def _output_in_read_only_folder(_work: Path, mp: pytest.MonkeyPatch) -> list[str]:
    real_open = pathlib.Path.open

    def read_only(self: Path, *args: Any, **kwargs: Any) -> Any:
        if self.parent.name == "ro":
            raise OSError(errno.EROFS, "Read-only file system", str(self))
        return real_open(self, *args, **kwargs)

    mp.setattr(pathlib.Path, "open", read_only)
    os.mkdir("ro")
    return ["Hello there.", "-o", "ro/out.wav"]


def _output_in_folder_without_permission(_work: Path, mp: pytest.MonkeyPatch) -> list[str]:
    real_open = pathlib.Path.open

    def denied(self: Path, *args: Any, **kwargs: Any) -> Any:
        if self.parent.name == "locked":
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return real_open(self, *args, **kwargs)

    mp.setattr(pathlib.Path, "open", denied)
    os.mkdir("locked")
    return ["Hello there.", "-o", "locked/deeper/out.wav"]


def _output_under_proc(_work: Path, _mp: pytest.MonkeyPatch) -> list[str]:
    if not Path("/proc/self").is_dir():
        pytest.skip("needs Linux /proc: a folder nobody, not even root, can write to")
    return ["Hello there.", "-o", "/proc/csm-offload-test/out.wav"]


def _output_is_a_fifo(work: Path, _mp: pytest.MonkeyPatch) -> list[str]:
    os.mkfifo(work / "pipe.wav")
    return ["Hello there.", "-o", "pipe.wav"]


def _sidecar_is_a_directory(work: Path, _mp: pytest.MonkeyPatch) -> list[str]:
    (work / "out.wav.json").mkdir()
    return ["Hello there.", "-o", "out.wav"]


def _output_name_too_long(_work: Path, _mp: pytest.MonkeyPatch) -> list[str]:
    # The audio's name fits (254 bytes); its sidecar's (259) does not.
    return ["Hello there.", "-o", "n" * 250 + ".wav"]


def _output_wrong_suffix(_work: Path, _mp: pytest.MonkeyPatch) -> list[str]:
    return ["Hello there.", "-o", "out.mp3"]


def _disk_full_for_output(_work: Path, mp: pytest.MonkeyPatch) -> list[str]:
    mp.setattr(shutil, "disk_usage", tiny_disk(1000))
    return ["Hello there, a sentence of some length.", "-o", "out.flac"]


def _disk_full_for_journal(work: Path, mp: pytest.MonkeyPatch) -> list[str]:
    (work / "cfg.yaml").write_text(ESPEAK_ONLY + "run:\n  journal: elsewhere/j.sqlite3\n")
    mp.setattr(shutil, "disk_usage", tiny_disk(1000))
    return ["Hello there, a sentence of some length.", "-o", "out.wav"]


def _megabyte_without_punctuation(work: Path, mp: pytest.MonkeyPatch) -> list[str]:
    words = ("alpha", "beta", "gamma", "delta")
    (work / "long.txt").write_text(" ".join(words[i % 4] for i in range(200_000))[:1_000_000])
    mp.setattr(shutil, "disk_usage", tiny_disk(2**30))  # 1 GB free; 15 hours of audio need 2
    return ["long.txt", "-o", "long.flac"]


def _wav_over_four_gigabytes(work: Path, _mp: pytest.MonkeyPatch) -> list[str]:
    (work / "long.txt").write_text("word " * 300_000)
    return ["long.txt", "-o", "long.wav"]


def _budget(value: str) -> Setup:
    def setup(_work: Path, _mp: pytest.MonkeyPatch) -> list[str]:
        return ["Hello there.", "-o", "out.wav", "--max-usd", value]

    return setup


def _stdin_over_the_limit(_work: Path, mp: pytest.MonkeyPatch) -> list[str]:
    stdin_of(mp, LazyStdin(MAX_INPUT_BYTES + 1))
    return ["-", "-o", "out.wav"]


def _stdin_not_utf8(_work: Path, mp: pytest.MonkeyPatch) -> list[str]:
    stdin_of(mp, io.BytesIO(b"Caf\xe9 au lait.\n"))
    return ["-", "-o", "out.wav"]


def _stdin_with_nul(_work: Path, mp: pytest.MonkeyPatch) -> list[str]:
    stdin_of(mp, io.BytesIO(b"PK\x03\x04\x00\x00binary zip"))
    return ["-", "-o", "out.wav"]


def _stdin_empty(_work: Path, mp: pytest.MonkeyPatch) -> list[str]:
    stdin_of(mp, io.BytesIO(b""))
    return ["-", "-o", "out.wav"]


def _directory_as_text(work: Path, _mp: pytest.MonkeyPatch) -> list[str]:
    (work / "chapters").mkdir()
    return ["chapters", "-o", "out.wav"]


def _device_as_text(_work: Path, _mp: pytest.MonkeyPatch) -> list[str]:
    if not Path("/dev/null").exists():
        pytest.skip("needs /dev/null")
    return ["/dev/null", "-o", "out.wav"]


def _missing_text_file(_work: Path, _mp: pytest.MonkeyPatch) -> list[str]:
    return ["chapter9.txt", "-o", "out.wav"]


def _dangling_symlink_as_text(work: Path, _mp: pytest.MonkeyPatch) -> list[str]:
    (work / "book.txt").symlink_to(work / "gone.txt")
    return ["book.txt", "-o", "out.wav"]


def _text_file_over_the_limit(work: Path, _mp: pytest.MonkeyPatch) -> list[str]:
    with open(work / "huge.txt", "wb") as handle:  # sparse: no 50 MB written
        handle.truncate(MAX_INPUT_BYTES + 1)
    return ["huge.txt", "-o", "out.wav"]


def _text_file_not_utf8(work: Path, _mp: pytest.MonkeyPatch) -> list[str]:
    (work / "latin1.txt").write_bytes("Ça coûte très cher.".encode("latin-1"))
    return ["latin1.txt", "-o", "out.wav"]


def _text_file_with_nul(work: Path, _mp: pytest.MonkeyPatch) -> list[str]:
    (work / "doc.txt").write_bytes(b"Hello\x00world.")
    return ["doc.txt", "-o", "out.wav"]


def _text(value: str) -> Setup:
    def setup(_work: Path, _mp: pytest.MonkeyPatch) -> list[str]:
        return [value, "-o", "out.wav"]

    return setup


def _newer_journal(work: Path, _mp: pytest.MonkeyPatch) -> list[str]:
    (work / JOURNAL).parent.mkdir()
    db = sqlite3.connect(work / JOURNAL)
    db.execute("PRAGMA user_version = 99")
    db.close()
    return ["Hello there.", "-o", "out.wav"]


def _journal_not_a_database(work: Path, _mp: pytest.MonkeyPatch) -> list[str]:
    (work / JOURNAL).parent.mkdir()
    (work / JOURNAL).write_bytes(b"this is not SQLite, just text " * 200)
    return ["Hello there.", "-o", "out.wav"]


def _journal_with_damaged_pages(work: Path, _mp: pytest.MonkeyPatch) -> list[str]:
    (work / JOURNAL).parent.mkdir()
    db = sqlite3.connect(work / JOURNAL)
    db.execute("CREATE TABLE filler (x TEXT)")
    db.executemany("INSERT INTO filler VALUES (?)", [("x" * 500,) for _ in range(200)])
    db.commit()
    db.close()
    data = bytearray((work / JOURNAL).read_bytes())
    data[4096 * 3 : 4096 * 4] = b"\x55" * 4096
    (work / JOURNAL).write_bytes(bytes(data))
    return ["Hello there.", "-o", "out.wav"]


def _journal_is_a_directory(work: Path, _mp: pytest.MonkeyPatch) -> list[str]:
    (work / "cfg.yaml").write_text(ESPEAK_ONLY + "run:\n  journal: jdir\n")
    (work / "jdir").mkdir()
    return ["Hello there.", "-o", "out.wav"]


REFUSED: list[tuple[str, Setup, str]] = [
    ("output-is-a-directory", _output_is_a_directory, "is a directory; give a file name"),
    ("output-is-a-bare-directory", _output_is_a_bare_directory, "is a directory"),
    ("output-is-empty", _output_is_empty, "is a directory"),
    ("output-parent-is-a-file", _output_parent_is_a_file, "is a file, not a folder"),
    ("output-read-only-folder", _output_in_read_only_folder, "cannot write to"),
    ("output-no-permission", _output_in_folder_without_permission, "cannot write to"),
    ("output-under-proc", _output_under_proc, "cannot write to /proc"),
    ("output-is-a-fifo", _output_is_a_fifo, "is not a regular file"),
    ("sidecar-is-a-directory", _sidecar_is_a_directory, "(where the metadata goes)"),
    ("output-name-too-long", _output_name_too_long, "is too long"),
    ("output-wrong-suffix", _output_wrong_suffix, "must end in .wav or .flac"),
    ("disk-full-output", _disk_full_for_output, "not enough disk space"),
    ("disk-full-journal", _disk_full_for_journal, "set run.journal to a file on another"),
    ("megabyte-no-punctuation", _megabyte_without_punctuation, "not enough disk space"),
    ("wav-over-4-gb", _wav_over_four_gigabytes, "over WAV's 4 GB limit; write FLAC"),
    ("max-usd-nan", _budget("nan"), "--max-usd must be a number of dollars above 0"),
    ("max-usd-inf", _budget("inf"), "--max-usd must be a number of dollars above 0"),
    ("max-usd-overflow", _budget("1e999"), "--max-usd must be a number of dollars above 0"),
    ("max-usd-negative", _budget("-1"), "--max-usd must be a number of dollars above 0"),
    ("max-usd-zero", _budget("0"), "--max-usd must be a number of dollars above 0"),
    ("stdin-over-50-mib", _stdin_over_the_limit, "the text on stdin is over 50 MB"),
    ("stdin-not-utf8", _stdin_not_utf8, "the text on stdin is not UTF-8 (byte 3)"),
    ("stdin-with-nul", _stdin_with_nul, "contains a NUL character"),
    ("stdin-empty", _stdin_empty, "the text is empty"),
    ("directory-as-text", _directory_as_text, "chapters is a directory: give a text file"),
    ("device-as-text", _device_as_text, "is not a regular file"),
    ("missing-text-file", _missing_text_file, "chapter9.txt: no such file"),
    ("dangling-symlink", _dangling_symlink_as_text, "book.txt: no such file"),
    ("text-file-over-50-mb", _text_file_over_the_limit, "is over 50 MB"),
    ("text-file-latin1", _text_file_not_utf8, "is not UTF-8 text"),
    ("text-file-with-nul", _text_file_with_nul, "contains a NUL character"),
    ("empty-text", _text(""), "the text is empty"),
    ("whitespace-only", _text(" \t\n\u3000\n  "), "the text is empty"),
    ("lone-surrogate", _text("caf\udce9 au lait"), "not UTF-8 (at character 3)"),
    ("punctuation-only", _text("... !!! ???"), "nothing to speak"),
    ("zero-width-only", _text("\u200b\u200c\u200d\u2060\ufeff"), "nothing to speak"),
    ("dashes-only", _text("— – … ‒ ―"), "nothing to speak"),
    ("journal-newer-schema", _newer_journal, "written by a newer csm-offload (schema 99)"),
    ("journal-not-a-database", _journal_not_a_database, "is damaged (file is not a database)"),
    ("journal-damaged-pages", _journal_with_damaged_pages, "is damaged"),
    ("journal-is-a-directory", _journal_is_a_directory, "cannot open the journal"),
]


@pytest.mark.parametrize(("setup", "message"), [pytest.param(s, m, id=i) for i, s, m in REFUSED])
def test_refused_before_any_work_in_one_sentence(
    workdir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    setup: Setup,
    message: str,
) -> None:
    before = {p for p in workdir.rglob("*")}
    args = setup(workdir, monkeypatch)
    made = {p for p in workdir.rglob("*")} - before
    code = synth(*args)
    err = capsys.readouterr().err
    assert code == 2, err
    assert_one_sentence(err, message)
    output = Path(args[args.index("-o") + 1]) if args[args.index("-o") + 1] else None
    if output is not None and output.suffix in (".wav", ".flac"):
        assert not output.is_file()
    assert not leftovers(workdir)
    # Nothing was generated: the audio store holds no new results.
    assert not [p for p in workdir.rglob("*.flac") if p not in made and "audio" in p.parts]


def test_journal_is_left_as_found_when_refused(
    workdir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for setup in (_newer_journal, _journal_not_a_database):
        args = setup(workdir, monkeypatch)
        before = (workdir / JOURNAL).read_bytes()
        assert synth(*args) == 2
        assert "move it away" in capsys.readouterr().err or setup is _newer_journal
        assert (workdir / JOURNAL).read_bytes() == before
        shutil.rmtree(workdir / JOURNAL.parent)


def test_click_rejects_out_of_range_options(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for option, value in (("--max-chars", "3"), ("--speaker", "-1"), ("--max-usd", "lots")):
        assert synth("Hello.", "-o", "out.wav", option, value) == 2
        err = capsys.readouterr().err
        assert "Invalid value" in err and "Traceback" not in err
    assert not leftovers(workdir)


# --- failures after the work is done -------------------------------------------------------------


def test_full_disk_under_the_journal_mid_run_leaves_no_tmp(
    workdir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    real = pathlib.Path.write_bytes

    def full(self: Path, data: bytes) -> int:
        if self.name.endswith(".tmp") and "audio" in self.parts:
            real(self, data[:100])  # half a file, as a full disk leaves it
            raise OSError(errno.ENOSPC, "No space left on device", str(self))
        return real(self, data)

    monkeypatch.setattr(pathlib.Path, "write_bytes", full)
    code = synth("One sentence only.", "-o", "out.wav")
    err = capsys.readouterr().err
    assert code == 2
    assert_one_sentence(err, "no space left on the disk of the journal")
    assert "set run.journal to a file on another disk" in err
    assert not leftovers(workdir)
    assert not (workdir / "out.wav").exists()


def test_full_disk_while_writing_the_output_keeps_the_work(
    workdir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    real = sf.SoundFile.write

    def full(self: sf.SoundFile, data: Any) -> None:
        if isinstance(self.name, str) and self.name.endswith(".tmp"):
            raise OSError(errno.ENOSPC, "No space left on device")
        real(self, data)

    monkeypatch.setattr(sf.SoundFile, "write", full)
    text = "First sentence here. Second sentence there."
    assert synth(text, "-o", "out.flac", "--max-chars", "25") == 2
    err = capsys.readouterr().err
    assert_one_sentence(err, "no space left in")
    assert "a rerun costs nothing" in err
    assert not (workdir / "out.flac").exists() and not (workdir / "out.flac.json").exists()
    assert not leftovers(workdir)
    monkeypatch.undo()
    monkeypatch.chdir(workdir)
    monkeypatch.setenv("CSM_OFFLOAD_LOAD_PLUGINS", "espeak")
    assert synth(text, "-o", "out.flac", "--max-chars", "25") == 0
    assert "2 segments from the journal" in capsys.readouterr().out


def test_damaged_audio_in_the_store_names_the_file(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert synth("A sentence to keep.", "-o", "first.wav") == 0
    (stored,) = (workdir / ".csm-offload" / "audio").rglob("*.flac")
    stored.write_bytes(stored.read_bytes()[:60])
    capsys.readouterr()
    assert synth("A sentence to keep.", "-o", "second.wav") == 2
    err = capsys.readouterr().err
    assert_one_sentence(err, f"({stored.relative_to(workdir)}) cannot be read")
    assert "delete that file and rerun" in err
    assert not (workdir / "second.wav").exists() and not leftovers(workdir)


# --- odd but valid text: spoken, never a crash ---------------------------------------------------

SPOKEN = {
    "rtl": "שלום עולם. مرحبا بالعالم.",
    "emoji": "Hello 👋🏽 world 🌍! 🎉",
    "emoji-only": "🎉🎉🎉",
    "zero-width-inside-words": "Hel\u200blo wo\u200drld.",
    "cjk-no-spaces": "你好世界今天天气很好",
    "control-characters": "Hello\x07\x1b[31m world\x08.",
    "byte-order-mark": "\ufeffHello world.",
    "noncharacters": "Hello \uffff world \U0010ffff.",
    "combining-marks": "Z\u0351\u0352a\u0354l\u0356go text " * 5,
    "bidi-override": "\u202eHello world\u202c.",
    "crlf-and-tabs": "Hello\r\nworld\t\t!\r",
    "digits-only": "1234567890 " * 3,
}


@pytest.mark.parametrize("text", list(SPOKEN.values()), ids=list(SPOKEN))
def test_odd_text_is_spoken(workdir: Path, capsys: pytest.CaptureFixture[str], text: str) -> None:
    code = synth(text, "-o", "out.wav")
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "Traceback" not in captured.err
    assert Audio.decode((workdir / "out.wav").read_bytes()).duration > 0
    assert (workdir / "out.wav.json").is_file()
    assert not leftovers(workdir)


def test_speech_past_the_cap_is_split_and_spoken(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # eSpeak's English voice names each CJK character ("Chinese letter"): 54 of them run past
    # the 30 s cap. The worker says the request is too long for one request, so the runner
    # splits its text and joins the parts' audio instead of failing it.
    code = synth("你好世界今天天气很好我们去公园散步吧" * 3, "-o", "out.wav")
    err = capsys.readouterr().err
    assert code == 0, err
    assert "Traceback" not in err and "internal error" not in err
    audio = Audio.decode((workdir / "out.wav").read_bytes())
    assert audio.duration > 30  # longer than one request could be
    assert not leftovers(workdir)
