"""Voices: a reference recording and its transcript, given to CSM as the first context turn.

CSM has no fixed voices: it continues the voice of its context. A `Voice` is one checked
reference clip (24 kHz mono, 16-bit grid so that request ids survive the wire) and the words
spoken in it; `voice_context(voice)` is what goes into `SpeechRequest.context`. Every chunk of
a book with the same voice therefore has the same context prefix, which the wire format sends
once per job (`wire.shared_prefix`).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import attrs
import numpy as np
import soundfile as sf

from .audio import CSM_SAMPLE_RATE, Audio
from .config import Config
from .errors import UserError
from .model import Segment, SpeechRequest

#: A reference clip shorter than this gives CSM too little of the voice to hold on to.
MIN_PROMPT_S = 3.0
#: Longer clips eat CSM's 2048-token context (12.5 frames a second) and every request's upload.
MAX_PROMPT_S = 30.0
#: A generated first sentence (auto-voice) may be short, but not a blip.
MIN_SENTENCE_S = 0.5
#: RMS below -50 dBFS: nothing a listener would call speech.
SILENCE_RMS = 10 ** (-50 / 20)
_CONVERT = "convert it with: ffmpeg -i INPUT -ac 1 -ar 24000 voice.wav"


@attrs.frozen
class VoiceSettings:
    """Generation settings a voice brings with it; None keeps the request's own value."""

    temperature: float | None = None
    topk: int | None = None
    seed: int | None = None


@attrs.frozen
class Voice:
    """A checked reference clip (24 kHz mono) with its transcript and CSM speaker id."""

    name: str
    audio: Audio
    transcript: str
    speaker: int = 0
    settings: VoiceSettings = VoiceSettings()


def voice_context(voice: Voice) -> tuple[Segment, ...]:
    """The context turns that make CSM speak in `voice` (for `SpeechRequest.context`)."""
    return (Segment(voice.speaker, voice.transcript, voice.audio),)


def voice_request(text: str, voice: Voice | None, **fields: object) -> SpeechRequest:
    """A request for `text` in `voice` (None: CSM's own choice): the voice's speaker, context
    and settings, under any explicit `fields` (max_audio_length_ms, seed, ...)."""
    if voice is None:
        return SpeechRequest(text, **fields)  # type: ignore[arg-type]
    own = {k: v for k, v in attrs.asdict(voice.settings).items() if v is not None}
    merged = {**own, **fields, "speaker": voice.speaker, "context": voice_context(voice)}
    return SpeechRequest(text, **merged)  # type: ignore[arg-type]


def check_voice_audio(
    audio: Audio,
    transcript: str,
    source: str,
    *,
    min_s: float = MIN_PROMPT_S,
    max_s: float = MAX_PROMPT_S,
) -> Audio:
    """The clip at 24 kHz on the 16-bit grid, or one `UserError` naming `source` and the fix."""
    if not transcript.strip():
        raise UserError(
            f"{source}: the transcript is missing; give the words spoken in the clip "
            "(a voice's `transcript:` in the config, or --voice-text)"
        )
    if not audio.is_finite():
        raise UserError(f"{source}: the audio has NaN or infinite samples; re-export it")
    seconds = audio.duration
    if seconds < min_s or seconds > max_s:
        raise UserError(
            f"{source}: the clip is {seconds:.1f} s; a voice prompt must be {min_s:g}-{max_s:g} s "
            "of clear speech (trim it, e.g. ffmpeg -i INPUT -t 10 voice.wav)"
        )
    if audio.frames == 0 or audio.rms() < SILENCE_RMS:
        level = 20 * math.log10(max(audio.rms(), 1e-12))
        raise UserError(
            f"{source}: the clip is silent ({level:.0f} dBFS RMS); record or choose a clip "
            "with speech in it"
        )
    return audio.resample(CSM_SAMPLE_RATE).quantized()


def read_voice_audio(path: str | os.PathLike[str]) -> Audio:
    """Any format and channel count soundfile reads (WAV, FLAC, OGG, MP3, ...), as mono."""
    where = Path(path)
    if not where.is_file():
        raise UserError(f"{where}: no such file; give the path of a voice recording")
    try:
        samples, rate = sf.read(str(where), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError) as exc:
        raise UserError(f"{where}: not readable audio ({exc}); {_CONVERT}") from None
    return Audio(np.asarray(samples), int(rate))


def load_voice(
    path: str | os.PathLike[str],
    transcript: str,
    *,
    name: str | None = None,
    speaker: int = 0,
    settings: VoiceSettings = VoiceSettings(),
    source: str | None = None,
) -> Voice:
    """A `Voice` from a reference recording (3-30 s of speech) and its transcript."""
    where = source or str(path)
    if not transcript.strip():  # before reading: the cheaper mistake to report first
        check_voice_audio(Audio(np.zeros(0, np.float32), CSM_SAMPLE_RATE), transcript, where)
    audio = check_voice_audio(read_voice_audio(path), transcript, where)
    return Voice(name or Path(path).stem, audio, transcript.strip(), speaker, settings)


def voice_from_result(
    audio: Audio,
    text: str,
    speaker: int = 0,
    name: str = "auto",
    settings: VoiceSettings = VoiceSettings(),
) -> Voice:
    """Auto-voice: a generated sentence (the book's first) as the prompt for every other chunk,
    with the same checks but a floor suited to one sentence."""
    checked = check_voice_audio(
        audio, text, f"the generated voice sentence {text[:40]!r}", min_s=MIN_SENTENCE_S
    )
    return Voice(name, checked, text.strip(), speaker, settings)


def voice_from_config(config: Config, name: str) -> Voice:
    """The configured voice `name` (the config's `voices:`), its file relative to the config
    file; errors name the file, line and key."""
    spec = config.voices.get(name)
    if spec is None:
        known = ", ".join(sorted(config.voices)) or "none configured"
        raise UserError(f"no voice named {name!r} (voices: {known}); add it under `voices:`")
    path = Path(os.path.expanduser(spec.audio))
    if not path.is_absolute() and not config.built_in:
        path = Path(config.source).parent / path
    settings = VoiceSettings(spec.temperature, spec.topk, spec.seed)
    try:
        return load_voice(path, spec.transcript, name=name, speaker=spec.speaker, settings=settings)
    except UserError as exc:
        key = "transcript" if "transcript" in str(exc) else "audio"
        raise config.error(("voices", name, key), str(exc)) from None


def chosen_voice(
    config: Config, name: str | None, prompt: str | None, text: str | None
) -> Voice | None:
    """The voice a command line names (`--voice NAME`) or gives (`--voice-prompt FILE` with
    `--voice-text TEXT`); None when it gives neither."""
    if name and prompt:
        raise UserError("give --voice NAME or --voice-prompt FILE, not both")
    if name:
        return voice_from_config(config, name)
    if prompt:
        if not text:
            raise UserError("--voice-prompt needs --voice-text: what the clip says, word for word")
        return load_voice(prompt, text)
    if text:
        raise UserError("--voice-text goes with --voice-prompt FILE (the clip it transcribes)")
    return None
