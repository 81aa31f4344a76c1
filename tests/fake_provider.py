"""A throwaway provider plugin class for tests: complete, in memory, recording every call."""

from __future__ import annotations

from typing import Any

import attrs
import numpy as np

from csm_offload import (
    Audio,
    AudioData,
    CostEstimate,
    Health,
    JobHandle,
    JobState,
    JobStatus,
    PriceTable,
    ProviderInfo,
    ProviderLimits,
    Result,
    hookimpl,
)
from csm_offload.results import result_audio


@attrs.frozen
class FakeSettings:
    voice: str = "plain"


class FakeProvider:
    """Generates 10 ms of a tone per character; every hook call is appended to `calls`."""

    def __init__(
        self,
        kind: str = "fake",
        remote: bool = True,
        usd_per_second: float = 0.001,
        settings_type: type = FakeSettings,
    ) -> None:
        self.kind = kind
        self.settings_type = settings_type
        self.remote = remote
        self.usd_per_second = usd_per_second
        self.calls: list[str] = []
        self.jobs: dict[str, list[Any]] = {}

    @hookimpl
    def provider_info(self) -> ProviderInfo:
        self.calls.append("provider_info")
        return ProviderInfo(
            kind=self.kind,
            description="in-memory test provider",
            settings_type=self.settings_type,
            prices=PriceTable(
                "2026-06-01", dict.fromkeys(("T4", "A100 80GB", "H100"), self.usd_per_second)
            ),
            limits=ProviderLimits(max_batch=4),
            remote=self.remote,
            default_gpu="T4",
        )

    @hookimpl
    def estimate_cost(self, target: Any, batch: list) -> CostEstimate:
        self.calls.append("estimate_cost")
        seconds = 0.01 * sum(len(r.text) for r in batch)
        return CostEstimate(target.name, seconds * self.usd_per_second, seconds, "10 ms/char")

    @hookimpl
    async def health(self, target: Any, http: Any) -> Health:
        self.calls.append("health")
        return Health(ok=True, detail="fake is always up")

    @hookimpl
    async def submit(self, target: Any, batch: list, http: Any) -> JobHandle:
        self.calls.append("submit")
        job_id = f"job-{len(self.jobs)}"
        self.jobs[job_id] = list(batch)
        return JobHandle(target.name, job_id, tuple(r.id for r in batch))

    @hookimpl
    async def poll(self, target: Any, handle: JobHandle, http: Any) -> JobStatus:
        self.calls.append("poll")
        results = []
        for request in self.jobs[handle.job_id]:
            tone = np.sin(np.arange(240 * max(1, len(request.text))) / 3).astype(np.float32)
            audio = Audio(0.3 * tone, 24_000)
            results.append(Result(request.id, AudioData.from_audio(audio), audio.duration_ms))
        return JobStatus(JobState.COMPLETED, tuple(results), exec_ms=5)

    @hookimpl
    async def decode(self, target: Any, status: JobStatus, http: Any) -> list[Audio]:
        self.calls.append("decode")
        return [await result_audio(result, http) for result in status.results]

    @hookimpl
    async def cancel(self, target: Any, handle: JobHandle, http: Any) -> None:
        self.calls.append("cancel")
        self.jobs.pop(handle.job_id, None)
