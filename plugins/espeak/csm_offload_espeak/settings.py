"""`EspeakSettings`: what a target block of kind `espeak` may set, and how speakers get voices."""

from __future__ import annotations

import re
from typing import Any

import attrs

#: eSpeak NG's own bounds: words per minute, and base pitch.
MIN_RATE, MAX_RATE = 80, 450
MIN_PITCH, MAX_PITCH = 0, 99
#: Voice variants (files in espeak-ng-data/voices/!v) given to CSM speaker ids 0, 1, 2, ... in
#: turn: male and female alternate so that a two-speaker dialogue is clearly two voices.
DEFAULT_VARIANTS = ("m3", "f2", "m1", "f4", "m7", "f1", "m5", "f3")
#: Speakers past the variant list reuse it with the pitch moved by this much per round.
PITCH_STEP = 8
_VOICE = re.compile(r"[A-Za-z0-9_\-/()]+")
_VARIANT = re.compile(r"[A-Za-z0-9_ \-]+")


def _voice(_instance: Any, _attribute: attrs.Attribute, value: str) -> None:
    if not _VOICE.fullmatch(value):
        raise ValueError(
            f"voice {value!r} is not an eSpeak NG voice name or language such as en-us, en-gb, "
            "de or fr; put speaker variants in `variants`, not after a '+'"
        )


def _rate(_instance: Any, _attribute: attrs.Attribute, value: int) -> None:
    if not MIN_RATE <= value <= MAX_RATE:
        raise ValueError(
            f"rate must be {MIN_RATE}-{MAX_RATE} words per minute (175 is eSpeak's usual), "
            f"got {value}"
        )


def _pitch(_instance: Any, _attribute: attrs.Attribute, value: int) -> None:
    if not MIN_PITCH <= value <= MAX_PITCH:
        raise ValueError(
            f"pitch must be {MIN_PITCH}-{MAX_PITCH} (50 is eSpeak's usual), got {value}"
        )


def _variants(_instance: Any, _attribute: attrs.Attribute, value: tuple[str, ...]) -> None:
    if not value:
        raise ValueError("variants must name at least one eSpeak NG variant, e.g. [m3, f2]")
    for name in value:
        if not _VARIANT.fullmatch(name):
            raise ValueError(f"variant {name!r} is not an eSpeak NG variant name such as m3 or f2")


@attrs.frozen
class EspeakSettings:
    """eSpeak NG voice (language), speaking rate in words per minute, base pitch 0-99, and the
    voice variants that CSM speaker ids 0, 1, 2, ... are spoken with."""

    voice: str = attrs.field(default="en-us", validator=_voice)
    rate: int = attrs.field(default=175, validator=_rate)
    pitch: int = attrs.field(default=50, validator=_pitch)
    variants: tuple[str, ...] = attrs.field(
        default=DEFAULT_VARIANTS, converter=tuple, validator=_variants
    )


@attrs.frozen
class SpeakerVoice:
    """What one CSM speaker id sounds like: an eSpeak voice name with its variant, and a pitch."""

    name: str
    pitch: int


def speaker_voice(settings: EspeakSettings, speaker: int) -> SpeakerVoice:
    """Speaker n gets variant n mod len(variants); each later round shifts the pitch up, then
    down, by PITCH_STEP, so every speaker id up to a few dozen sounds distinct."""
    count = len(settings.variants)
    variant = settings.variants[speaker % count]
    lap = speaker // count
    shift = PITCH_STEP * ((lap + 1) // 2) * (1 if lap % 2 else -1)
    pitch = min(MAX_PITCH, max(MIN_PITCH, settings.pitch + shift))
    return SpeakerVoice(f"{settings.voice}+{variant}", pitch)
