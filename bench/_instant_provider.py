"""An instant provider plugin for `bench/book.py`: every job is answered by its submission.

Each request gets distinct speech-like audio (about 0.07 s per character at 24 kHz, CSM's
pace) cut from a precomputed buffer at an offset and gain taken from the request's id, encoded
as FLAC, as a remote worker would send it. Synthesis is not what the benchmark measures, so the
CPU the plugin spends making and encoding that audio is counted apart (`cpu_s`): it stands in
for work a GPU worker would do elsewhere.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any

import attrs
import numpy as np

from csm_offload import (
    Audio,
    AudioData,
    CostEstimate,
    Health,
    JobHandle,
    JobLost,
    JobState,
    JobStatus,
    PriceTable,
    ProviderInfo,
    ProviderLimits,
    Result,
    SpeechRequest,
    hookimpl,
)
from csm_offload.results import result_audio

KIND = "bench_instant"
RATE = 24_000
SECONDS_PER_CHAR = 0.07
LEVEL_RMS = 0.08  # about -22 dBFS, in ACX's range
#: Seconds of speech-like audio every request's audio is cut from (a prime number of seconds,
#: so that neighbouring offsets rarely line up).
BANK_SECONDS = 61


@attrs.frozen
class InstantSettings:
    label: str = ""


def _syllable(rng: np.random.Generator, pitch: float) -> np.ndarray:
    """A voiced syllable on a gliding pitch or, one time in five, a burst of hiss."""
    frames = int(rng.uniform(0.09, 0.28) * RATE)
    envelope = np.hanning(frames).astype(np.float32)
    if rng.random() < 0.2:
        hiss = np.diff(rng.standard_normal(frames + 1, dtype=np.float32))
        return np.float32(0.3) * hiss * envelope
    glide = np.linspace(pitch, pitch * rng.uniform(0.85, 1.1), frames, dtype=np.float32)
    phase = np.float32(2 * np.pi / RATE) * np.cumsum(glide)
    voiced = np.zeros(frames, dtype=np.float32)
    for k in range(1, 9):
        voiced += np.sin(k * phase) / np.float32(k)
    return voiced * envelope


def speech_bank(seconds: int = BANK_SECONDS, seed: int = 5) -> np.ndarray:
    """`seconds` of speech-like float32 audio (words of 1-4 syllables with gaps between),
    made in place so that making it raises the process's peak memory by little more than its
    own size."""
    rng = np.random.default_rng(seed)
    bank = np.zeros(seconds * RATE, dtype=np.float32)
    at = 0
    pitch = 140.0
    while at < bank.size:
        for _ in range(rng.integers(1, 5)):
            pitch = float(np.clip(pitch * rng.uniform(0.93, 1.07), 80, 260))
            part = _syllable(rng, pitch)[: bank.size - at]
            bank[at : at + part.size] = part
            at += part.size
        at += int(rng.uniform(0.04, 0.18) * RATE)  # the gap after a word: already silence
    bank *= np.float32(LEVEL_RMS / np.sqrt(np.dot(bank, bank) / bank.size))
    return bank


class InstantProvider:
    """A remote-looking CSM-quality provider with `workers` workers that answers at once."""

    def __init__(self, *, workers: int = 4, max_batch: int = 5) -> None:
        self.workers = workers
        self.max_batch = max_batch
        self.bank = speech_bank()
        self.answers: dict[str, JobStatus] = {}
        self.jobs = 0
        self.cpu_s = 0.0
        self.audio_s = 0.0

    def audio_for(self, request: SpeechRequest) -> Audio:
        """Distinct audio for `request`, 0.07 s per character of its text."""
        digest = int.from_bytes(hashlib.sha256(request.id.encode()).digest()[:8], "big")
        frames = max(RATE // 10, round(SECONDS_PER_CHAR * len(request.text) * RATE))
        gain = np.float32(0.8 + (digest >> 32) % 1000 / 2500)  # 0.8 to 1.2
        samples = np.empty(frames, dtype=np.float32)
        at, start = 0, digest % self.bank.size
        while at < frames:  # from `start`, wrapping round the bank
            piece = self.bank[start : start + frames - at]
            np.multiply(piece, gain, out=samples[at : at + piece.size])
            at, start = at + piece.size, 0
        return Audio(samples, RATE)

    @hookimpl
    def provider_info(self) -> ProviderInfo:
        return ProviderInfo(
            kind=KIND,
            description="instant in-process provider for benchmarks",
            settings_type=InstantSettings,
            prices=PriceTable("2026-01-01", {"BENCH": 0.0001}),
            limits=ProviderLimits(max_batch=self.max_batch, max_text_chars=1_000),
            remote=True,
            quality="csm",
            default_gpu="BENCH",
        )

    @hookimpl
    def estimate_cost(self, target: Any, batch: list[SpeechRequest]) -> CostEstimate:
        seconds = 0.001 * sum(len(r.text) for r in batch)
        return CostEstimate(target.name, seconds * 0.0001, seconds, "bench")

    @hookimpl
    async def health(self, target: Any, http: Any) -> Health:
        return Health(ok=True, detail="instant", workers=self.workers)

    @hookimpl
    async def submit(self, target: Any, batch: list[SpeechRequest], http: Any) -> JobHandle:
        started = time.thread_time()
        results = []
        for request in batch:
            audio = self.audio_for(request)
            self.audio_s += audio.duration
            results.append(Result(request.id, AudioData.from_audio(audio), audio.duration_ms))
        job_id = f"{target.name}-{self.jobs}"
        self.jobs += 1
        self.answers[job_id] = JobStatus(JobState.COMPLETED, tuple(results), exec_ms=1)
        self.cpu_s += time.thread_time() - started
        return JobHandle(target.name, job_id, tuple(r.id for r in batch), answered=True)

    @hookimpl
    async def poll(self, target: Any, handle: JobHandle, http: Any) -> JobStatus:
        status = self.answers.pop(handle.job_id, None)  # answered once: nothing is kept
        if status is None:
            raise JobLost(f"no job {handle.job_id}")
        return status

    @hookimpl
    async def decode(self, target: Any, status: JobStatus, http: Any) -> list[Audio]:
        return [await result_audio(result, http) for result in status.results]

    @hookimpl
    async def cancel(self, target: Any, handle: JobHandle, http: Any) -> None:
        self.answers.pop(handle.job_id, None)
