"""Chapter assembly: a chapter's chunks, in order, with room tone between them, into one FLAC.

Chunks finish in any order (they run in parallel on several GPUs); the chapter is written as
far as its contiguous prefix allows each time one is ready, pulling each chunk's audio from
disk through `load` only when it is its turn, so memory holds one chunk whatever the book's
length. The file grows under a temporary name and only `commit` gives it its real name: an
interrupted run leaves the last good chapter file, never half of a new one.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Literal

import attrs
import soundfile as sf

from ..audio import CSM_SAMPLE_RATE, Audio
from ..errors import UserError
from ..output import AudioWriter, check_writable, existing_ancestor
from .quality import leading_silence_s
from .roomtone import RoomTone

#: Reads one chunk's audio (from the journal's store) by its index in the chapter.
Loader = Callable[[int], Audio]
#: A pause longer than this is a typo, not a style.
MAX_PAUSE_S = 60.0


def _pause(_instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if not number or not math.isfinite(value) or not 0 <= value <= MAX_PAUSE_S:
        raise UserError(
            f"the {attribute.name.removesuffix('_s')} pause must be 0 to {MAX_PAUSE_S:g} "
            f"seconds, got {value!r}; give a number of seconds such as 0.5"
        )


@attrs.frozen
class Pauses:
    """Seconds of room tone at each kind of boundary. ACX asks for 0.5-1 s at a chapter's
    head and 1-5 s at its tail; a chapter break is the tail of one and the head of the next."""

    sentence_s: float = attrs.field(default=0.4, validator=_pause)
    paragraph_s: float = attrs.field(default=1.0, validator=_pause)
    head_s: float = attrs.field(default=0.75, validator=_pause)
    tail_s: float = attrs.field(default=2.0, validator=_pause)

    def after(self, paragraph_end: bool) -> float:
        return self.paragraph_s if paragraph_end else self.sentence_s


@attrs.frozen
class ChapterAudio:
    """A committed chapter file and its exact length."""

    path: Path
    frames: int
    sample_rate: int

    @property
    def duration(self) -> float:
        return self.frames / self.sample_rate


def check_output_dir(folder: Path) -> None:
    """Refuse, in one sentence naming the fix, an output folder that is a file or that this
    process cannot write to. Missing folders are fine: they are made when a file is written."""
    here = existing_ancestor(folder)
    if not here.is_dir():
        raise UserError(
            f"{here} is a file, not a folder, so {folder} cannot hold the book; choose another "
            "output folder or move that file away"
        )
    check_writable(here, "choose an output folder you can write to")


class ChapterAssembler:
    """One chapter's FLAC from `len(paragraph_ends)` chunks; `paragraph_ends[i]` says whether
    chunk i closes a paragraph (a longer pause follows it than a sentence's)."""

    def __init__(
        self,
        path: Path,
        load: Loader,
        paragraph_ends: Sequence[bool],
        *,
        sample_rate: int = CSM_SAMPLE_RATE,
        pauses: Pauses | None = None,
        seed: int = 0,
    ) -> None:
        if not paragraph_ends:
            raise ValueError("a chapter needs at least one chunk")
        check_output_dir(path.parent)
        self.path = path
        self.sample_rate = sample_rate
        self._load = load
        self._paragraph_ends = tuple(bool(end) for end in paragraph_ends)
        self._pauses = pauses or Pauses()
        self._tone = RoomTone(sample_rate, seed=seed)
        # The chapter grows as 16-bit WAV and becomes FLAC at commit: a book has every chapter
        # in progress at once (chunks finish in any order), and an open FLAC encoder holds
        # ~0.4 MB where a WAV writer holds a few KB, so memory stays flat in the book's length.
        self._writer = AudioWriter(path, "wav")
        self._ready: set[int] = set()
        self._next = 0
        #: Where each written chunk's audio starts and ends in the chapter (seconds), for
        #: subtitles and for the report's offsets.
        self.spans: dict[int, tuple[float, float]] = {}
        self._state: Literal["open", "committed", "aborted"] = "open"

    def __enter__(self) -> ChapterAssembler:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._state == "open":  # an exception, or a block that never committed
            self.abort()

    @property
    def chunk_count(self) -> int:
        return len(self._paragraph_ends)

    @property
    def written(self) -> int:
        """How many chunks are in the file so far (always a prefix of the chapter)."""
        return self._next

    @property
    def complete(self) -> bool:
        return self._next == self.chunk_count

    @property
    def frames(self) -> int:
        return self._writer.frames

    def ready(self, index: int) -> int:
        """Chunk `index` can be loaded now: write every chunk that has become contiguous and
        return how many are written. Announcing a chunk twice is harmless."""
        self._check_open()
        if not 0 <= index < self.chunk_count:
            raise IndexError(f"chunk {index} of a chapter of {self.chunk_count} chunks")
        if index >= self._next:
            self._ready.add(index)
        try:
            while self._next in self._ready:
                self._write_chunk(self._next)
                self._ready.discard(self._next)
                self._next += 1
        except BaseException:
            self.abort()
            raise
        return self._next

    def commit(self) -> ChapterAudio:
        """Close the chapter with its tail and rename it into place."""
        self._check_open()
        if not self.complete:
            raise RuntimeError(
                f"chunk {self._next} of {self.chunk_count} is not ready yet; commit once ready() "
                "has been called for every chunk"
            )
        try:
            self._add_tone(self._pauses.tail_s)
            self._writer.close()
            self._to_flac()
        except BaseException:
            self.abort()
            raise
        self._state = "committed"
        return ChapterAudio(self.path, self._writer.frames, self.sample_rate)

    def abort(self) -> None:
        """Drop the temporary file; whatever was at `path` stays as it was."""
        if self._state != "committed":
            self._state = "aborted"
            self._writer.abort()

    def _write_chunk(self, index: int) -> None:
        audio = self._load(index).resample(self.sample_rate)
        if index == 0:
            audio, head = self._head(audio)
            self._add_tone(head)
        else:
            self._add_tone(self._pauses.after(self._paragraph_ends[index - 1]))
        start = self._writer.frames
        self._writer.add(audio)
        self.spans[index] = (start / self.sample_rate, self._writer.frames / self.sample_rate)

    def _head(self, first: Audio) -> tuple[Audio, float]:
        """The first chunk, and the room tone before it: together exactly `head_s` of quiet
        before the first word (ACX wants 0.5-1 s), however much silence the chunk opens with."""
        lead = leading_silence_s(first)
        if lead <= self._pauses.head_s:
            return first, self._pauses.head_s - lead
        cut = round((lead - self._pauses.head_s) * self.sample_rate)
        return Audio(first.samples[cut:], first.sample_rate), 0.0

    def _to_flac(self) -> None:
        """The finished WAV, block by block, into the chapter's FLAC (temp, then renamed)."""
        flac = AudioWriter(self.path, "flac")
        try:
            with sf.SoundFile(self._writer.tmp) as pcm:
                for block in pcm.blocks(blocksize=1 << 16, dtype="float32"):
                    flac.add(Audio(block, self.sample_rate))
            flac.commit()
        except BaseException:
            flac.abort()
            raise
        finally:
            self._writer.abort()  # the WAV is done with either way

    def _add_tone(self, seconds: float) -> None:
        # Added even when empty: the writer takes its rate from the first thing it gets.
        self._writer.add(self._tone.take(seconds))

    def _check_open(self) -> None:
        if self._state != "open":
            raise RuntimeError(f"this chapter assembler is {self._state}")
