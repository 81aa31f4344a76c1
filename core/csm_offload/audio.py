"""`Audio`: mono float32 samples at a sample rate, and their WAV/FLAC bytes.

Torch never enters core: tensors are converted at the edge by duck typing (`from_torch`) or by a
lazy import (`to_torch`), so `import csm_offload` stays light for the plugins that need no torch.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Sequence
from typing import Any, Literal

import attrs
import numpy as np
import soundfile as sf
import soxr

from .errors import AudioError

AudioFormat = Literal["wav", "flac"]
FORMATS: tuple[AudioFormat, ...] = ("wav", "flac")
CSM_SAMPLE_RATE = 24_000
#: FLAC's own limit; WAV allows more but nothing we make needs it.
MAX_SAMPLE_RATE = 655_350
_SUBTYPE = "PCM_16"
_PCM_SCALE = 32768.0


def quantize16(samples: np.ndarray) -> np.ndarray:
    """The int16 PCM that `Audio.encode` writes: round(x * 32768), clipped to int16."""
    scaled = np.rint(np.asarray(samples, dtype=np.float64) * _PCM_SCALE)
    return np.clip(scaled, -32768, 32767).astype(np.int16)


def _empty_flac(sample_rate: int) -> bytes:
    """A FLAC stream with no frames. libsndfile writes nothing at all for empty audio, which no
    reader accepts; a lone STREAMINFO block with 0 total samples is valid FLAC."""
    fields = (sample_rate << 44) | (0 << 41) | (15 << 36)  # mono, 16 bits, 0 samples
    info = b"\x10\x00\x10\x00" + b"\x00" * 6 + fields.to_bytes(8, "big") + b"\x00" * 16
    return b"fLaC" + bytes([0x80]) + len(info).to_bytes(3, "big") + info


def _empty_flac_rate(data: bytes) -> int | None:
    """The sample rate of a FLAC stream that declares 0 samples, else None."""
    if len(data) < 42 or data[:4] != b"fLaC" or data[4] & 0x7F != 0:
        return None
    fields = int.from_bytes(data[18:26], "big")
    total = fields & ((1 << 36) - 1)
    return (fields >> 44) if total == 0 else None


def _as_mono_float32(samples: Any) -> np.ndarray:
    array = np.asarray(samples, dtype=np.float32)
    if array.ndim == 2 and array.shape[1] == 1:
        array = array[:, 0]
    elif array.ndim == 2:  # (frames, channels), as soundfile reads it
        array = array.mean(axis=1, dtype=np.float32)
    if array.ndim != 1:
        raise AudioError(f"audio must be mono or (frames, channels); got shape {array.shape}")
    return np.ascontiguousarray(array)


def _open(data: bytes) -> sf.SoundFile:
    try:
        reader = sf.SoundFile(io.BytesIO(data))
    except (sf.LibsndfileError, RuntimeError, TypeError) as exc:
        raise AudioError(f"not a readable WAV or FLAC file ({exc})") from None
    if reader.format not in ("WAV", "FLAC", "WAVEX"):
        reader.close()
        raise AudioError(f"audio must be WAV or FLAC, got {reader.format}")
    return reader


def _decode_flac(data: bytes) -> np.ndarray:
    try:
        samples, _rate = sf.read(io.BytesIO(data), dtype="float32")
    except (sf.LibsndfileError, RuntimeError) as exc:
        raise AudioError(f"audio data is corrupt ({exc})") from None
    return _as_mono_float32(samples)


def _check_rate(sample_rate: int) -> None:
    if not isinstance(sample_rate, int) or not 1 <= sample_rate <= MAX_SAMPLE_RATE:
        raise AudioError(
            f"sample rate must be an integer in 1..{MAX_SAMPLE_RATE}, got {sample_rate}"
        )


def _samples_or_none(samples: Any) -> np.ndarray | None:
    return None if samples is None else _as_mono_float32(samples)


@attrs.frozen(eq=False)
class Audio:
    """Mono audio. Samples are float32 in [-1, 1]; equality compares samples exactly.

    Audio read from a 16-bit mono FLAC may leave its samples undecoded (`decode(..., lazy=True)`)
    until something reads them: the runner only stores and measures what it receives, and
    decoding every result was the largest part of its CPU per job.
    """

    _samples: np.ndarray | None = attrs.field(alias="samples", converter=_samples_or_none)
    sample_rate: int = attrs.field()
    #: The 16-bit mono FLAC these samples were decoded from, if any: encoding them again
    #: would give the same samples, so `encode("flac")` returns these bytes instead (it is
    #: the largest part of the client's CPU per job otherwise). Never part of equality.
    source_flac: bytes | None = attrs.field(default=None, kw_only=True, repr=False)
    #: The frame count of undecoded samples (from the FLAC header); unused once decoded.
    _lazy_frames: int = attrs.field(default=0, kw_only=True, alias="lazy_frames", repr=False)

    def __attrs_post_init__(self) -> None:
        if self._samples is None and self.source_flac is None:
            raise AudioError("audio needs samples, or the FLAC bytes to decode them from")

    @sample_rate.validator
    def _valid_rate(self, _attribute: attrs.Attribute, value: int) -> None:
        _check_rate(value)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Audio):
            return NotImplemented
        return self.sample_rate == other.sample_rate and np.array_equal(self.samples, other.samples)

    def __hash__(self) -> int:
        return hash((self.sample_rate, self.samples.tobytes()))

    def __repr__(self) -> str:
        return f"Audio({self.duration:.3f}s at {self.sample_rate} Hz)"

    @property
    def samples(self) -> np.ndarray:
        if self._samples is None:
            # Frozen, but decoding once and keeping the result changes nothing observable.
            object.__setattr__(self, "_samples", _decode_flac(self.source_flac or b""))
        return self._samples  # type: ignore[return-value]

    @property
    def frames(self) -> int:
        if self._samples is None:
            return self._lazy_frames
        return int(self._samples.shape[0])

    @property
    def decoded(self) -> bool:
        """Whether the samples are in memory (False only for lazily read FLAC)."""
        return self._samples is not None

    @property
    def duration(self) -> float:
        """Length in seconds."""
        return self.frames / self.sample_rate

    @property
    def duration_ms(self) -> int:
        return round(1000 * self.frames / self.sample_rate)

    def rms(self) -> float:
        """Root mean square level (0 for empty audio)."""
        if self.frames == 0:
            return 0.0
        return float(np.sqrt(np.mean(np.square(self.samples, dtype=np.float64))))

    def is_finite(self) -> bool:
        """No NaN or infinity in the samples (16-bit PCM read lazily cannot hold any)."""
        return self._samples is None or bool(np.isfinite(self._samples).all())

    def peak(self) -> float:
        return float(np.max(np.abs(self.samples))) if self.frames else 0.0

    @classmethod
    def silence(cls, seconds: float, sample_rate: int = CSM_SAMPLE_RATE) -> Audio:
        if seconds < 0:
            raise AudioError(f"silence must be 0 seconds or longer, got {seconds}")
        return cls(np.zeros(round(seconds * sample_rate), dtype=np.float32), sample_rate)

    @classmethod
    def concat(cls, parts: Iterable[Audio], sample_rate: int | None = None) -> Audio:
        """Join parts end to end, resampling each to `sample_rate` (default: the first's)."""
        items = list(parts)
        if not items:
            return cls(np.zeros(0, dtype=np.float32), sample_rate or CSM_SAMPLE_RATE)
        rate = sample_rate or items[0].sample_rate
        joined = np.concatenate([part.resample(rate).samples for part in items])
        return cls(joined, rate)

    def resample(self, sample_rate: int) -> Audio:
        """Band-limited resampling (soxr, high quality); the length is rounded to a frame."""
        _check_rate(sample_rate)
        if sample_rate == self.sample_rate:
            return self
        if self.frames == 0:
            return Audio(self.samples, sample_rate)
        out = soxr.resample(self.samples, self.sample_rate, sample_rate, quality="HQ")
        return Audio(out.astype(np.float32, copy=False), sample_rate)

    def encode(self, fmt: AudioFormat = "flac") -> bytes:
        """16-bit PCM WAV or FLAC bytes; samples outside [-1, 1) are clipped.

        We quantise ourselves because libsndfile rounds differently for WAV and FLAC; this way
        `decode(encode(a)) == a.quantized()` for both formats.
        """
        if fmt not in FORMATS:
            raise AudioError(f"audio format must be one of {', '.join(FORMATS)}, got {fmt!r}")
        if fmt == "flac" and self.source_flac is not None:
            return self.source_flac
        if fmt == "flac" and self.frames == 0:
            return _empty_flac(self.sample_rate)
        buffer = io.BytesIO()
        pcm = quantize16(self.samples)
        sf.write(buffer, pcm, self.sample_rate, format=fmt.upper(), subtype=_SUBTYPE)
        return buffer.getvalue()

    def quantized(self) -> Audio:
        """These samples as 16-bit PCM would store them (what a WAV/FLAC round trip returns)."""
        return Audio(quantize16(self.samples).astype(np.float32) / _PCM_SCALE, self.sample_rate)

    @classmethod
    def decode(
        cls, data: bytes, max_decoded_bytes: int | None = None, *, lazy: bool = False
    ) -> Audio:
        """Read WAV or FLAC bytes (any channel count, mixed down to mono).

        `max_decoded_bytes` bounds the decoded float32 size before anything is decoded, so a
        small, highly compressed file cannot expand into gigabytes. With `lazy`, a 16-bit mono
        FLAC is checked (its header, and that its last frame decodes) but its samples are
        decoded only when first read.
        """
        empty_rate = _empty_flac_rate(data)
        if empty_rate:
            return cls(np.zeros(0, dtype=np.float32), empty_rate)
        with _open(data) as reader:
            decoded = reader.frames * 4
            if max_decoded_bytes is not None and decoded > max_decoded_bytes:
                raise AudioError(
                    f"audio decodes to {decoded} bytes, over the limit of {max_decoded_bytes}; "
                    "send shorter audio or raise the limit"
                )
            flac = reader.format == "FLAC" and reader.subtype == _SUBTYPE and reader.channels == 1
            try:
                if flac and lazy and reader.frames > 0:
                    # A stream cut off or damaged at its end fails on its last sample.
                    reader.seek(reader.frames - 1)
                    if reader.read(1, dtype="int16").shape[0] != 1:
                        raise AudioError("audio data is cut off before its declared length")
                    return cls(
                        None,
                        reader.samplerate,
                        source_flac=bytes(data),
                        lazy_frames=reader.frames,
                    )
                samples = reader.read(dtype="float32", always_2d=True)
            except (sf.LibsndfileError, RuntimeError) as exc:
                raise AudioError(f"audio data is corrupt ({exc})") from None
        return cls(samples, int(reader.samplerate), source_flac=bytes(data) if flac else None)

    @classmethod
    def from_torch(cls, tensor: Any, sample_rate: int) -> Audio:
        """From a torch tensor shaped (frames,), (1, frames) or (channels, frames)."""
        array = np.squeeze(tensor.detach().to("cpu").float().numpy())
        if array.ndim == 2:  # torch audio is (channels, frames)
            array = array.mean(axis=0)
        return cls(np.atleast_1d(array), sample_rate)

    def to_torch(self) -> Any:
        """A 1-D float32 torch tensor (imports torch only when called)."""
        import torch

        return torch.from_numpy(self.samples.copy())


#: Pause between the chunks of one long text (and the parts of a split request).
CHUNK_PAUSE_S = 0.2


def join_audio(parts: Sequence[Audio], pause_s: float = CHUNK_PAUSE_S) -> Audio:
    """Chunks end to end with a short pause between them, at the first chunk's rate."""
    if not parts:
        return Audio.silence(0.0)
    rate = parts[0].sample_rate
    gap = Audio.silence(pause_s, rate)
    items: list[Audio] = []
    for index, part in enumerate(parts):
        if index:
            items.append(gap)
        items.append(part)
    return Audio.concat(items, rate)
