"""The data model: what is asked for (`SpeechRequest`), and what a job is and costs.

All classes are frozen attrs classes; they cross process boundaries only through the one cattrs
converter in `wire`.
"""

from __future__ import annotations

import enum
import hashlib
import json
import time
from collections.abc import Mapping

import attrs

from .audio import Audio, AudioFormat, quantize16
from .errors import UserError

#: Version of the request-hashing scheme; part of every id so a change never collides.
_ID_SCHEME = "csm-req-1"


def _unicode_text(_instance: object, attribute: attrs.Attribute, value: str) -> None:
    """Refuse lone surrogates: they cannot be hashed, stored or sent as UTF-8."""
    if isinstance(value, str) and not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise UserError(
                f"{attribute.name} has invalid Unicode at character {exc.start} (a lone "
                "surrogate); read the input as UTF-8 or clean it before synthesis"
            ) from None


@attrs.frozen
class Segment:
    """One turn of conversation context: who spoke, what they said, and (optionally) how."""

    speaker: int
    text: str = attrs.field(validator=_unicode_text)
    audio: Audio | None = None


def _audio_digest(audio: Audio | None) -> str | None:
    if audio is None:
        return None
    # Hash the 16-bit PCM, not the floats: the id must survive a trip through WAV/FLAC.
    digest = hashlib.sha256(quantize16(audio.samples).tobytes()).hexdigest()
    return f"{audio.sample_rate}:{digest}"


def segment_key(segment: Segment) -> tuple[int, str, str | None]:
    """What identifies a context segment (its audio by 16-bit content): equal keys, same turn."""
    return (segment.speaker, segment.text, _audio_digest(segment.audio))


def request_id(
    text: str,
    speaker: int,
    context: tuple[Segment, ...],
    max_audio_length_ms: int,
    temperature: float,
    topk: int,
    seed: int,
) -> str:
    """Content hash of everything that changes the generated audio."""
    canonical = json.dumps(
        [
            _ID_SCHEME,
            text,
            speaker,
            [[s.speaker, s.text, _audio_digest(s.audio)] for s in context],
            max_audio_length_ms,
            repr(float(temperature)),
            topk,
            seed,
        ],
        ensure_ascii=False,
        separators=(",", ":"),
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:32]


@attrs.frozen
class SpeechRequest:
    """One utterance to generate. `id` defaults to the content hash of the other fields."""

    text: str = attrs.field(validator=_unicode_text)
    speaker: int = 0
    context: tuple[Segment, ...] = attrs.field(default=(), converter=tuple)
    max_audio_length_ms: int = 30_000
    temperature: float = 0.9
    topk: int = 50
    seed: int = 0
    id: str = ""

    def __attrs_post_init__(self) -> None:
        if not self.id:
            object.__setattr__(self, "id", self.content_id())

    def content_id(self) -> str:
        return request_id(
            self.text,
            self.speaker,
            self.context,
            self.max_audio_length_ms,
            self.temperature,
            self.topk,
            self.seed,
        )


class JobState(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    TIMED_OUT = "timed_out"
    LOST = "lost"

    @property
    def finished(self) -> bool:
        return self not in (JobState.QUEUED, JobState.RUNNING)


@attrs.frozen
class AudioData:
    """Audio carried inline on the wire: encoded bytes (base64 in JSON)."""

    format: AudioFormat
    sample_rate: int
    data: bytes

    @classmethod
    def from_audio(cls, audio: Audio, fmt: AudioFormat = "flac") -> AudioData:
        return cls(format=fmt, sample_rate=audio.sample_rate, data=audio.encode(fmt))


@attrs.frozen
class AudioUrl:
    """Audio left at a URL (for results too large for the provider's payload limit)."""

    url: str
    format: AudioFormat | None = None
    sample_rate: int | None = None


@attrs.frozen
class Result:
    """The outcome of one request inside a job: audio, or an error for that request alone."""

    id: str
    audio: AudioData | AudioUrl | None = None
    duration_ms: int = 0
    gpu_ms: int = 0
    error: str | None = None


@attrs.frozen
class WorkerInfo:
    gpu: str = ""
    model: str = ""
    engine_version: str = ""


@attrs.frozen
class BatchRequest:
    """Wire request: the body every worker host accepts."""

    requests: tuple[SpeechRequest, ...] = attrs.field(converter=tuple)
    audio_format: AudioFormat = "flac"
    schema: int = 1


@attrs.frozen
class BatchResponse:
    """Wire response: one result per request, in request order."""

    results: tuple[Result, ...] = attrs.field(converter=tuple)
    worker: WorkerInfo = WorkerInfo()
    schema: int = 1


@attrs.frozen
class JobHandle:
    """What a provider returned on submit: enough to poll, decode or cancel later, even after a
    restart (the journal stores it). `extra` holds provider-specific strings."""

    target: str
    job_id: str
    request_ids: tuple[str, ...] = attrs.field(converter=tuple)
    submitted_at: float = attrs.field(factory=time.time)
    extra: Mapping[str, str] = attrs.field(factory=dict, eq=False, hash=False)
    #: The submission's answer already holds the job's final status (a long-poll route such
    #: as RunPod's /runsync): the runner polls at once, and `poll` answers without a request.
    answered: bool = attrs.field(default=False, eq=False, hash=False)


@attrs.frozen
class JobStatus:
    """A poll's answer. `results` is filled when `state` is completed."""

    state: JobState
    results: tuple[Result, ...] = attrs.field(default=(), converter=tuple)
    error: str | None = None
    queue_ms: int | None = None
    exec_ms: int | None = None


@attrs.frozen
class CostEstimate:
    """What a batch would cost on a target, and how the figure was reached."""

    target: str
    usd: float
    gpu_seconds: float
    basis: str


@attrs.frozen
class Health:
    """A target's readiness. `checked_at` is a Unix time."""

    ok: bool
    detail: str = ""
    queue_depth: int | None = None
    workers: int | None = None
    checked_at: float = attrs.field(factory=time.time)
    #: The most jobs the endpoint holds at once, running and queued (a worker server's
    #: `1 + max_queue`); one more is answered 429. None: no bound is known.
    capacity: int | None = None
