"""An in-memory provider plugin whose timing and faults a test scripts, and router helpers.

Jobs take real (short) time: `seconds_per_char` x the batch's characters. Each hook pops its next
scripted fault, if any, before doing its work, so a test says exactly what goes wrong and when.
"""

from __future__ import annotations

import hashlib
import time
from collections import Counter, deque
from collections.abc import Callable
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
from csm_offload.breaker import Breakers
from csm_offload.config import load_config_text
from csm_offload.health import HealthCache
from csm_offload.plugins import Plugins
from csm_offload.results import result_audio
from csm_offload.router import Router
from csm_offload.speed import SpeedBook
from csm_offload.targets import check_targets

#: A scripted fault: an exception to raise, or a callable given the job that returns a status.
Fault = BaseException | Callable[[Any], JobStatus]


@attrs.frozen
class ScriptedSettings:
    label: str = ""


def tone_for(request: SpeechRequest) -> Audio:
    """Deterministic audio per request: its id picks the pitch, its text the length."""
    pitch = 200 + int(hashlib.sha256(request.id.encode()).hexdigest()[:4], 16) % 400
    frames = 240 * max(1, len(request.text))
    t = np.arange(frames) / 24_000
    return Audio((0.3 * np.sin(2 * np.pi * pitch * t)).astype(np.float32), 24_000)


@attrs.define
class Job:
    batch: list[SpeechRequest]
    started: float
    duration: float
    cancelled: bool = False


class ScriptedProvider:
    def __init__(
        self,
        kind: str = "scripted",
        *,
        remote: bool = True,
        quality: str = "csm",
        usd_per_second: float = 0.001,
        seconds_per_char: float = 0.0,
        max_batch: int = 4,
        max_text_chars: int = 5_000,
        healthy: bool = True,
    ) -> None:
        self.kind = kind
        self.remote = remote
        self.quality = quality
        self.usd_per_second = usd_per_second
        self.seconds_per_char = seconds_per_char
        self.max_batch = max_batch
        self.max_text_chars = max_text_chars
        self.healthy = healthy
        self.faults: dict[str, deque[Fault]] = {
            h: deque() for h in ("submit", "poll", "decode", "health")
        }
        self.calls: Counter[str] = Counter()
        self.jobs: dict[str, Job] = {}
        #: request id -> number of jobs that carried it.
        self.submitted: Counter[str] = Counter()

    def script(self, hook: str, *faults: Fault) -> None:
        self.faults[hook].extend(faults)

    def _fault(self, hook: str, job: Job | None = None) -> JobStatus | None:
        if not self.faults[hook]:
            return None
        fault = self.faults[hook].popleft()
        if isinstance(fault, BaseException):
            raise fault
        return fault(job)

    @hookimpl
    def provider_info(self) -> ProviderInfo:
        return ProviderInfo(
            kind=self.kind,
            description="scripted in-memory test provider",
            settings_type=ScriptedSettings,
            prices=PriceTable("2026-06-01", {"T4": self.usd_per_second}),
            limits=ProviderLimits(max_batch=self.max_batch, max_text_chars=self.max_text_chars),
            remote=self.remote,
            quality=self.quality,  # type: ignore[arg-type]
            default_gpu="T4",
        )

    @hookimpl
    def estimate_cost(self, target: Any, batch: list[SpeechRequest]) -> CostEstimate:
        seconds = self.seconds_per_char * sum(len(r.text) for r in batch)
        price = target.usd_per_second if target.usd_per_second is not None else self.usd_per_second
        return CostEstimate(target.name, seconds * price, seconds, "scripted")

    @hookimpl
    async def health(self, target: Any, http: Any) -> Health:
        self.calls["health"] += 1
        self._fault("health")
        return Health(ok=self.healthy, detail="scripted")

    @hookimpl
    async def submit(self, target: Any, batch: list[SpeechRequest], http: Any) -> JobHandle:
        self.calls["submit"] += 1
        self._fault("submit")
        job_id = f"{target.name}-{len(self.jobs)}"
        chars = sum(len(r.text) for r in batch)
        self.jobs[job_id] = Job(list(batch), time.monotonic(), self.seconds_per_char * chars)
        self.submitted.update(r.id for r in batch)
        return JobHandle(target.name, job_id, tuple(r.id for r in batch))

    @hookimpl
    async def poll(self, target: Any, handle: JobHandle, http: Any) -> JobStatus:
        self.calls["poll"] += 1
        job = self.jobs.get(handle.job_id)
        if job is None:
            raise JobLost(f"no job {handle.job_id}")
        scripted = self._fault("poll", job)
        if scripted is not None:
            return scripted
        if time.monotonic() - job.started < job.duration:
            return JobStatus(JobState.RUNNING)
        return completed(job)

    @hookimpl
    async def decode(self, target: Any, status: JobStatus, http: Any) -> list[Audio]:
        self.calls["decode"] += 1
        self._fault("decode")
        return [await result_audio(result, http) for result in status.results]

    @hookimpl
    async def cancel(self, target: Any, handle: JobHandle, http: Any) -> None:
        self.calls["cancel"] += 1
        job = self.jobs.get(handle.job_id)
        if job is not None:
            job.cancelled = True


def completed(job: Job, errors: dict[str, str] | None = None) -> JobStatus:
    results = []
    for request in job.batch:
        if errors and request.id in errors:
            results.append(Result(request.id, error=errors[request.id]))
            continue
        audio = tone_for(request)
        results.append(Result(request.id, AudioData.from_audio(audio), audio.duration_ms))
    return JobStatus(JobState.COMPLETED, tuple(results), exec_ms=round(job.duration * 1000))


def make_router(plugins: Plugins, yaml_text: str, env: dict[str, str] | None = None) -> Router:
    config = load_config_text(yaml_text, "test.yaml", env or {})
    checks = check_targets(config, plugins.providers)
    return Router(
        checks,
        config.audio.cloud_gpu,
        HealthCache(config.run.health_ttl_s),
        Breakers(threshold=3, cooldown_s=0.2),
        SpeedBook(),
    )


class registered_all:
    """Register several throwaway plugins, and always unregister them."""

    def __init__(self, plugins: Plugins, **providers: Any) -> None:
        self.plugins = plugins
        self.providers = providers

    def __enter__(self) -> Plugins:
        for name, provider in self.providers.items():
            assert self.plugins.register(provider, name), self.plugins.errors
        return self.plugins

    def __exit__(self, *_exc: object) -> None:
        for name in self.providers:
            self.plugins.unregister(name)


def requests_for(count: int, prefix: str = "sentence") -> list[SpeechRequest]:
    return [SpeechRequest(f"{prefix} number {i}.") for i in range(count)]
