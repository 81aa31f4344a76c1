"""Writing a run's audio: the destination is checked before any money is spent, and the file is
written segment by segment under a temporary name, then renamed.

Memory stays about one segment whatever the length of the text (a book of a million characters
is some 15 hours of audio: 1.3 billion samples, 10 GB as float64), and a failure leaves no half
file behind: the temporary file is removed, the destination is untouched.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType

import numpy as np
import soundfile as sf

from .audio import CSM_SAMPLE_RATE, Audio, AudioFormat, _empty_flac, quantize16
from .errors import UserError

#: Seconds of speech per character of text: CSM and eSpeak speak 14-18 characters a second.
AUDIO_S_PER_CHAR = 0.07
#: 16-bit mono PCM at CSM's rate.
PCM_BYTES_PER_S = CSM_SAMPLE_RATE * 2
#: How much of the PCM size a FLAC of speech takes.
FLAC_RATIO = 0.6
#: RIFF sizes are 32-bit: a WAV file cannot hold more.
WAV_MAX_BYTES = 2**32 - 1 - 44
_GB = 1024**3
_MB = 1024**2
_serial = itertools.count()


def estimate_audio_bytes(chars: int, fmt: AudioFormat, pause_s: float = 0.0) -> int:
    """About how many bytes `chars` characters of speech take as `fmt` (plus pauses)."""
    pcm = (chars * AUDIO_S_PER_CHAR + pause_s) * PCM_BYTES_PER_S
    return int(pcm * (FLAC_RATIO if fmt == "flac" else 1.0))


def describe_bytes(size: float) -> str:
    if size >= _GB:
        return f"{size / _GB:.1f} GB"
    return f"{max(size / _MB, 0.1):.1f} MB"


def existing_ancestor(path: Path) -> Path:
    """The nearest folder of `path` (itself included) that exists."""
    here = path.absolute()
    while not here.exists() and here != here.parent:
        here = here.parent
    return here


def check_output_path(path: Path) -> None:
    """Refuse, in one sentence naming the fix, an output that could not be written: a folder,
    a name too long, a parent that is a file, or a folder this process cannot write to. The
    folders missing on the way are created only when the audio is written."""
    if not path.name:  # "", "." or "/"
        raise UserError(f"{path} is a directory; give a file name such as out.wav")
    folder = existing_ancestor(path.parent)
    sidecar = path.with_name(path.name + ".json")
    try:
        name_max = os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError):
        name_max = 255
    # Checked first: a name over the limit makes even `is_dir` fail.
    if len(os.fsencode(sidecar.name)) > name_max:
        raise UserError(
            f"the file name {path.name[:40]}... is too long ({len(os.fsencode(path.name))} "
            f"bytes; this folder takes at most {name_max - 5} with the .json beside it); "
            "choose a shorter -o name"
        )
    if path.is_dir():
        raise UserError(f"{path} is a directory; give a file name such as {path / 'out.wav'}")
    if path.exists() and not path.is_file():
        raise UserError(f"{path} exists and is not a regular file; choose another -o path")
    if sidecar.is_dir():
        raise UserError(
            f"{sidecar} (where the metadata goes) is a directory; move it or choose another -o"
        )
    if not folder.is_dir():
        raise UserError(f"{folder} is a file, not a folder; choose an -o path in a folder")
    check_writable(folder, "choose an -o path in a folder you can write to")


def check_writable(folder: Path, fix: str) -> None:
    """Refuse, naming `fix`, a folder this process cannot create a file in. Permissions alone
    do not tell (a read-only mount, root, ACLs): try, as the writers will."""
    probe = folder / f".csm-offload-probe.{os.getpid()}.{next(_serial)}.tmp"
    try:
        probe.open("xb").close()
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise UserError(f"no space left in {folder}; free some space or {fix}") from None
        raise UserError(f"cannot write to {folder} ({exc.strerror or exc}); {fix}") from None
    finally:
        with contextlib.suppress(OSError):
            probe.unlink(missing_ok=True)


def check_free_space(needs: Mapping[Path, tuple[int, str]]) -> None:
    """Refuse when a disk has less free space than what will be written to it. `needs` maps a
    folder (it may not exist yet) to the bytes it will receive and the fix to suggest; folders
    on one disk are summed."""
    by_disk: dict[int, tuple[Path, int, list[str]]] = {}
    for folder, (size, fix) in needs.items():
        where = existing_ancestor(folder)
        try:
            device = where.stat().st_dev
        except OSError:
            continue
        known = by_disk.get(device)
        if known is None:
            by_disk[device] = (where, size, [fix])
        else:
            by_disk[device] = (known[0], known[1] + size, [*known[2], fix])
    for where, size, fixes in by_disk.values():
        try:
            free = shutil.disk_usage(where).free
        except OSError:
            continue
        if size > free:
            raise UserError(
                f"not enough disk space: the audio will take about {describe_bytes(size)} "
                f"under {where}, which has {describe_bytes(free)} free; free some space, or "
                f"{' or '.join(dict.fromkeys(fixes))}"
            )


class AudioWriter:
    """One WAV or FLAC file, written segment by segment with a pause between segments, under
    a temporary name beside `path`; `commit` renames it into place. A failure (or leaving the
    `with` block on an exception) removes the temporary file.

    The samples are quantised one segment at a time exactly as `Audio.encode` does, so the
    file equals `audio.join_audio(parts).encode(fmt)` without ever holding the whole."""

    def __init__(self, path: Path, fmt: AudioFormat, pause_s: float = 0.0) -> None:
        self.path = path
        self.fmt: AudioFormat = fmt
        self.pause_s = pause_s
        self.sample_rate: int | None = None
        self.frames = 0
        self.tmp = path.with_name(f".{path.name[:80]}.{os.getpid()}.{next(_serial)}.tmp")
        self._sound: sf.SoundFile | None = None
        self._closed = False

    def __enter__(self) -> AudioWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if exc_type is not None:
            self.abort()

    @property
    def duration(self) -> float:
        return self.frames / (self.sample_rate or CSM_SAMPLE_RATE)

    def add(self, audio: Audio) -> None:
        """Append one segment (resampled to the first segment's rate)."""
        if self._sound is None:
            self._open(audio.sample_rate)
        rate = self.sample_rate or CSM_SAMPLE_RATE
        if self.frames and self.pause_s:
            self._write(np.zeros(round(self.pause_s * rate), dtype=np.int16))
        self._write(quantize16(audio.resample(rate).samples))

    def close(self) -> None:
        """Finish the temporary file (header, FLAC's stream info) and check what it holds."""
        if self._closed:
            return
        if self._sound is None:
            self._open(CSM_SAMPLE_RATE)
        sound = self._sound
        self._closed = True
        try:
            if sound is not None:
                sound.close()
            if self.fmt == "flac" and self.frames == 0:
                # libsndfile writes no stream at all for empty FLAC, which nothing can read.
                self.tmp.write_bytes(_empty_flac(self.sample_rate or CSM_SAMPLE_RATE))
            elif sf.info(str(self.tmp)).frames != self.frames:
                raise OSError(errno.EIO, "the file holds fewer frames than were written")
        except (OSError, RuntimeError, AssertionError) as exc:
            self.abort()
            raise self._failed(exc) from None

    def commit(self) -> None:
        """Rename the finished temporary file to `path`."""
        self.close()
        try:
            os.replace(self.tmp, self.path)
        except OSError as exc:
            self.abort()
            raise self._failed(exc) from None

    def abort(self) -> None:
        """Drop the temporary file; `path` is left as it was."""
        if self._sound is not None and not self._sound.closed:
            with contextlib.suppress(Exception):
                self._sound.close()
        self._closed = True
        with contextlib.suppress(OSError):
            self.tmp.unlink(missing_ok=True)

    def _open(self, sample_rate: int) -> None:
        self.sample_rate = sample_rate
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._sound = sf.SoundFile(
                str(self.tmp),
                mode="w",
                samplerate=sample_rate,
                channels=1,
                format=self.fmt.upper(),
                subtype="PCM_16",
            )
        except (OSError, RuntimeError) as exc:
            self.abort()
            raise self._failed(exc) from None

    def _write(self, pcm: np.ndarray) -> None:
        if self.fmt == "wav" and 2 * (self.frames + len(pcm)) > WAV_MAX_BYTES:
            self.abort()
            raise UserError(
                f"the audio is over WAV's 4 GB limit; write FLAC instead (-o "
                f"{self.path.with_suffix('.flac')}): the segments are kept in the journal, so "
                "that costs nothing"
            )
        if self._sound is None:
            raise RuntimeError("AudioWriter: write before open")
        try:
            self._sound.write(pcm)
        except (OSError, RuntimeError, AssertionError) as exc:
            self.abort()
            raise self._failed(exc) from None
        self.frames += len(pcm)

    def _failed(self, exc: BaseException) -> UserError:
        folder = existing_ancestor(self.path.parent)
        full = isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)
        with contextlib.suppress(OSError):
            full = full or shutil.disk_usage(folder).free < 16 * _MB
        kept = "every segment is kept in the journal, so a rerun costs nothing"
        if full:
            return UserError(
                f"no space left in {folder} while writing {self.path}; free some space or "
                f"choose another -o path ({kept})"
            )
        detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        return UserError(
            f"could not write {self.path} ({detail or type(exc).__name__}); choose another "
            f"-o path ({kept})"
        )


def write_bytes_atomic(path: Path, data: bytes) -> Path:
    """Write `data` under a temporary name beside `path` and return that name; the caller
    renames it into place with `os.replace` (or removes it)."""
    tmp = path.with_name(f".{path.name[:80]}.{os.getpid()}.{next(_serial)}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_bytes(data)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        folder = existing_ancestor(path.parent)
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise UserError(
                f"no space left in {folder} while writing {path}; free some space or choose "
                "another -o path"
            ) from None
        raise UserError(
            f"could not write {path} ({exc.strerror or exc}); choose another -o path"
        ) from None
    return tmp
