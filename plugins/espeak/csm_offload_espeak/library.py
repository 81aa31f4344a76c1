"""A ctypes binding to the eSpeak NG library and data that the `espeakng-loader` wheel ships.

Only the `espeak_ng_*` calls that return a status are used: the older `espeak_Initialize` calls
`exit()` on a bad data path, which would take the whole process down. eSpeak keeps its state in
globals and is not re-entrant, so an `EspeakLibrary` must be driven from one thread at a time
(`engine.Engine` guarantees that).
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from pathlib import Path

import attrs
import numpy as np

from csm_offload import UserError

#: `espeak_ng_OUTPUT_MODE`: synthesise into our callback, returning when the text is done.
_OUTPUT_SYNCHRONOUS = 0x0001
#: `espeak_POSITION_TYPE`: positions counted in characters.
_POS_CHARACTER = 1
#: Synthesis flags: the text is UTF-8, and a pause is added at its end (a sentence ends there).
_CHARS_UTF8 = 0x0001
_ENDPAUSE = 0x1000
#: `espeak_PARAMETER` values.
PARAM_RATE = 1
PARAM_VOLUME = 2
PARAM_PITCH = 3
#: Callback return values: 0 goes on, 1 aborts the synthesis.
_CONTINUE = 0
_ABORT = 1
_STATUS_OK = 0
#: C0 control characters, except tab, newline and carriage return, are read as spaces: eSpeak
#: gives some of them meanings, and a NUL would end the C string early.
_CONTROLS = {code: " " for code in range(32) if chr(code) not in "\t\n\r"}

_SynthCallback = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p
)


class EspeakLoadError(UserError):
    """The eSpeak NG library or its data could not be loaded; the message says how to fix it."""


class EspeakError(RuntimeError):
    """eSpeak NG returned an error status for a call."""


@attrs.frozen
class Synthesis:
    """16-bit samples from one synthesis, and whether it stopped early (cap or cancel)."""

    samples: np.ndarray
    sample_rate: int
    stopped: bool


def default_paths() -> tuple[str, str]:
    """The library and data paths inside the installed `espeakng-loader` wheel."""
    try:
        import espeakng_loader
    except ImportError:
        raise EspeakLoadError(
            "the espeakng-loader package is not installed: pip install espeakng-loader"
        ) from None
    try:
        return espeakng_loader.get_library_path(), espeakng_loader.get_data_path()
    except RuntimeError as exc:
        raise EspeakLoadError(
            f"espeakng-loader has no eSpeak NG data ({exc}); reinstall it: "
            "pip install --force-reinstall espeakng-loader"
        ) from None


def clean_text(text: str) -> bytes:
    """The text as eSpeak takes it: UTF-8, NUL-terminated, controls as spaces, and characters
    that UTF-8 cannot carry (lone surrogates) as '?'."""
    return text.translate(_CONTROLS).encode("utf-8", errors="replace") + b"\0"


def _declare(lib: ctypes.CDLL) -> None:
    """Argument and result types, so ctypes neither truncates nor guesses."""
    c = ctypes
    lib.espeak_ng_InitializePath.argtypes = [c.c_char_p]
    lib.espeak_ng_InitializePath.restype = None
    lib.espeak_ng_Initialize.argtypes = [c.POINTER(c.c_void_p)]
    lib.espeak_ng_InitializeOutput.argtypes = [c.c_int, c.c_int, c.c_char_p]
    lib.espeak_ng_GetSampleRate.restype = c.c_int
    lib.espeak_Info.argtypes = [c.POINTER(c.c_char_p)]
    lib.espeak_Info.restype = c.c_char_p
    lib.espeak_SetSynthCallback.argtypes = [_SynthCallback]
    lib.espeak_SetSynthCallback.restype = None
    lib.espeak_ng_SetVoiceByName.argtypes = [c.c_char_p]
    lib.espeak_ng_SetParameter.argtypes = [c.c_int, c.c_int, c.c_int]
    lib.espeak_ng_Synthesize.argtypes = [
        c.c_void_p,
        c.c_size_t,
        c.c_uint,
        c.c_int,
        c.c_uint,
        c.c_uint,
        c.c_void_p,
        c.c_void_p,
    ]
    lib.espeak_ng_GetStatusCodeMessage.argtypes = [c.c_int, c.c_char_p, c.c_size_t]
    lib.espeak_ng_GetStatusCodeMessage.restype = None
    lib.espeak_ng_SetRandSeed.argtypes = [c.c_long]
    lib.espeak_ng_SetRandSeed.restype = None


class EspeakLibrary:
    """The loaded, initialised library. Not thread-safe: one caller at a time."""

    def __init__(self, library_path: str, data_path: str) -> None:
        if not Path(data_path).is_dir():
            raise EspeakLoadError(
                f"eSpeak NG data directory {data_path} is missing; reinstall espeakng-loader"
            )
        try:
            self._lib = ctypes.CDLL(library_path)
            _declare(self._lib)
        except (OSError, AttributeError) as exc:
            raise EspeakLoadError(
                f"cannot load the eSpeak NG library {library_path} ({exc}); "
                "reinstall espeakng-loader: pip install --force-reinstall espeakng-loader"
            ) from None
        self.data_path = data_path
        self._lib.espeak_ng_InitializePath(data_path.encode())
        context = ctypes.c_void_p()
        self._check(self._lib.espeak_ng_Initialize(ctypes.byref(context)), "initialise", load=True)
        self._check(
            self._lib.espeak_ng_InitializeOutput(_OUTPUT_SYNCHRONOUS, 0, None), "open output"
        )
        self.sample_rate = int(self._lib.espeak_ng_GetSampleRate())
        self.version = (self._lib.espeak_Info(None) or b"?").decode()
        self._chunks: list[np.ndarray] = []
        self._room = 0
        self._should_stop: Callable[[], bool] = lambda: False
        self._stopped = False
        # Keep the ctypes callback object alive as long as the library may call it.
        self._callback = _SynthCallback(self._on_samples)
        self._lib.espeak_SetSynthCallback(self._callback)

    def message(self, status: int) -> str:
        buffer = ctypes.create_string_buffer(512)
        self._lib.espeak_ng_GetStatusCodeMessage(status, buffer, len(buffer))
        return buffer.value.decode(errors="replace") or f"status {status:#x}"

    def _check(self, status: int, what: str, load: bool = False) -> None:
        if status == _STATUS_OK:
            return
        text = f"eSpeak NG could not {what}: {self.message(status)}"
        if load:
            raise EspeakLoadError(f"{text} (data: {self.data_path}); reinstall espeakng-loader")
        raise EspeakError(text)

    def set_voice(self, name: str) -> None:
        """Select a voice by name or language, with an optional `+variant`."""
        self._check(self._lib.espeak_ng_SetVoiceByName(name.encode()), f"select voice {name!r}")

    def set_parameter(self, parameter: int, value: int) -> None:
        self._check(
            self._lib.espeak_ng_SetParameter(parameter, value, 0), f"set parameter {parameter}"
        )

    def synthesize(
        self, text: str, max_samples: int, should_stop: Callable[[], bool], seed: int = 0
    ) -> Synthesis:
        """Speak `text` with the current voice; stop early past `max_samples` or when
        `should_stop()` turns true (checked every few milliseconds of audio)."""
        data = clean_text(text)
        self._chunks, self._room, self._stopped = [], max_samples, False
        self._should_stop = should_stop
        # Some voices add random roughness; a fixed seed makes equal requests give equal audio.
        self._lib.espeak_ng_SetRandSeed(seed)
        try:
            status = self._lib.espeak_ng_Synthesize(
                data, len(data), 0, _POS_CHARACTER, 0, _CHARS_UTF8 | _ENDPAUSE, None, None
            )
            if not self._stopped:  # when we abort, eSpeak answers "speech stopped"
                self._check(status, "synthesise the text")
            samples = np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.int16)
            return Synthesis(samples, self.sample_rate, self._stopped)
        finally:
            self._chunks = []
            self._should_stop = lambda: False

    def _on_samples(self, wav: ctypes._Pointer, count: int, _events: int | None) -> int:
        if self._stopped:
            return _ABORT
        if count > 0 and wav:
            taken = min(count, self._room)
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(count,))[:taken].copy())
            self._room -= taken
            if taken < count:
                self._stopped = True
        if self._should_stop():
            self._stopped = True
        return _ABORT if self._stopped else _CONTINUE
