"""The one eSpeak NG engine of this process: every call runs on one dedicated thread, under a lock.

eSpeak NG keeps its voice, parameters and output buffer in C globals and is not re-entrant, so
two syntheses must never overlap. A single-thread executor queues them (and keeps them off the
event loop: ctypes releases the GIL while eSpeak runs); the lock also covers anyone calling
`Engine.speak` directly from another thread.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from csm_offload import CSM_SAMPLE_RATE, Audio, SpeechRequest
from csm_offload.errors import TOO_LONG

from .library import PARAM_PITCH, PARAM_RATE, EspeakLibrary, EspeakLoadError, default_paths
from .settings import EspeakSettings, speaker_voice

T = TypeVar("T")

#: eSpeak's globals are per process, so every engine shares one lock and one loaded library.
_LIBRARY_LOCK = threading.Lock()
_libraries: dict[tuple[str, str], EspeakLibrary] = {}


def _open(library_path: str, data_path: str) -> EspeakLibrary:
    """The library loaded once per process; a second engine must not initialise it again (it
    would take over the synthesis callback). Called with `_LIBRARY_LOCK` held."""
    key = (library_path, data_path)
    if key not in _libraries:
        if _libraries and Path(library_path).is_file():
            raise EspeakLoadError(
                "eSpeak NG is already loaded from another path in this process; use one "
                "espeakng-loader installation"
            )
        _libraries[key] = EspeakLibrary(library_path, data_path)
    return _libraries[key]


class TooLong(ValueError):
    """The speech would run past the request's `max_audio_length_ms`."""


class Engine:
    """Loads the library on first use (on its own thread) and serialises every call into it."""

    def __init__(self, paths: Callable[[], tuple[str, str]] = default_paths) -> None:
        self._paths = paths
        self._lock = _LIBRARY_LOCK
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="espeak")
        self._library: EspeakLibrary | None = None
        self._load_error: EspeakLoadError | None = None

    def run(self, fn: Callable[..., T], *args: Any) -> Future[T]:
        """Queue `fn(*args)` on the engine thread."""
        return self._executor.submit(fn, *args)

    def library(self) -> EspeakLibrary:
        """The loaded library; a failed load is remembered, since retrying cannot fix it."""
        if self._load_error is not None:
            raise self._load_error
        if self._library is None:
            try:
                self._library = _open(*self._paths())
            except EspeakLoadError as exc:
                self._load_error = exc
                raise
        return self._library

    def check(self, settings: EspeakSettings) -> str:
        """Load the library, select the voice with every variant, and speak one word; return a
        one-line description, or raise `EspeakLoadError`/`ValueError` saying what is wrong."""
        with self._lock:
            library = self.library()
            missing = [v for v in settings.variants if not _variant_file(library, v).is_file()]
            if missing:
                raise ValueError(_unknown_variants(library, missing))
            for variant in settings.variants:
                _select(library, f"{settings.voice}+{variant}", settings)
            spoken = library.synthesize("ok", library.sample_rate * 5, lambda: False)
        if spoken.samples.size == 0 or not spoken.samples.any():
            raise ValueError(f"eSpeak NG voice {settings.voice!r} produced no sound")
        return (
            f"eSpeak NG {library.version}, voice {settings.voice} at {settings.rate} wpm, "
            f"{library.sample_rate} Hz resampled to {CSM_SAMPLE_RATE} Hz"
        )

    def speak(
        self,
        request: SpeechRequest,
        settings: EspeakSettings,
        cancelled: Callable[[], bool] = lambda: False,
    ) -> Audio:
        """The request's text in its speaker's voice, at 24 kHz. Raises `TooLong` when the
        speech runs past `max_audio_length_ms` (synthesis stops there, nothing is cut silently)."""
        with self._lock:
            library = self.library()
            voice = speaker_voice(settings, request.speaker)
            _select(library, voice.name, settings, voice.pitch)
            cap = request.max_audio_length_ms * library.sample_rate // 1000
            spoken = library.synthesize(request.text, cap + 1, cancelled, request.seed)
        if spoken.stopped and not cancelled():
            raise TooLong(
                f"{TOO_LONG}: its speech runs past "
                f"max_audio_length_ms={request.max_audio_length_ms}; "
                "split the text into shorter chunks (csm-offload synth --max-chars, e.g. 200)"
            )
        audio = Audio(spoken.samples.astype("float32") / 32768.0, spoken.sample_rate)
        resampled = audio.resample(CSM_SAMPLE_RATE)
        # eSpeak sometimes drives samples to full scale; the resampler's ringing then overshoots.
        return Audio(np.clip(resampled.samples, -1.0, 1.0), CSM_SAMPLE_RATE)


def _select(
    library: EspeakLibrary, name: str, settings: EspeakSettings, pitch: int | None = None
) -> None:
    # Parameters outlive a voice change in eSpeak, so every call sets all of them again.
    try:
        library.set_voice(name)
    except RuntimeError as exc:
        raise ValueError(
            f"{exc}; use an eSpeak NG language such as en-us, en-gb, de, fr or es as `voice`"
        ) from None
    library.set_parameter(PARAM_RATE, settings.rate)
    library.set_parameter(PARAM_PITCH, settings.pitch if pitch is None else pitch)


def _variant_file(library: EspeakLibrary, variant: str) -> Path:
    return Path(library.data_path) / "voices" / "!v" / variant


def _unknown_variants(library: EspeakLibrary, missing: list[str]) -> str:
    folder = Path(library.data_path) / "voices" / "!v"
    names = sorted(p.name for p in folder.iterdir())
    plain = [n for n in names if re.fullmatch(r"[mf]\d", n)]
    return (
        f"no eSpeak NG variant named {', '.join(missing)} (in `variants`); use one of "
        f"{', '.join(plain)}, or one of the {len(names) - len(plain)} named variants in {folder}"
    )


_engine: Engine | None = None
_engine_lock = threading.Lock()


def shared_engine() -> Engine:
    """The process's engine (created on first use)."""
    global _engine
    with _engine_lock:
        if _engine is None:
            _engine = Engine()
        return _engine
