"""The in-process provider: jobs run on one worker thread, so the event loop never blocks.

Engines are loaded on that thread the first time a target needs them, and kept; one thread
because one machine has one GPU and batching (not threads) is how CSM goes faster.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import importlib.util
import threading
import time
import uuid
from typing import Any

import attrs

from csm_offload import (
    BatchResponse,
    CostEstimate,
    Health,
    JobState,
    JobStatus,
    SpeechRequest,
)
from csm_offload.errors import JobLost, Unavailable

from .device import check_device, check_dtype
from .options import EngineOptions
from .speed import SpeedMeter
from .weights import weights_status
from .worker import ParsedBatch, run_batch

#: Priors before anything is measured, from CSM-1B's speed: about real time on a datacentre GPU
#: (speech runs at roughly 15 characters a second) and about ten times slower on a CPU.
PRIOR_GPU_S_PER_CHAR = 0.07
PRIOR_CPU_S_PER_CHAR = 0.7
#: Finished jobs nobody polled are forgotten after this long.
FINISHED_TTL_S = 3600.0


#: A `local_csm` target's settings are the engine's options (model, device, dtype, ...).
LocalCsmSettings = EngineOptions


def _engine_key(settings: LocalCsmSettings) -> tuple:
    return attrs.astuple(settings)


@attrs.define
class _Job:
    future: concurrent.futures.Future
    cancel: threading.Event
    submitted: float
    started: float | None = None
    finished: float | None = None


class LocalRuntime:
    """Loaded engines, their speed, and the jobs of this process."""

    def __init__(self) -> None:
        self.engines: dict[tuple, Any] = {}
        self.meters: dict[tuple, SpeedMeter] = {}
        self.jobs: dict[str, _Job] = {}
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    @property
    def executor(self) -> concurrent.futures.ThreadPoolExecutor:
        if self._executor is None:
            self._executor = concurrent.futures.ThreadPoolExecutor(1, "csm-offload-local")
        return self._executor

    def meter(self, settings: LocalCsmSettings) -> SpeedMeter:
        with self._lock:
            return self.meters.setdefault(_engine_key(settings), SpeedMeter())

    def engine(self, settings: LocalCsmSettings) -> Any:
        """The loaded engine for these settings (loads it; call on the worker thread)."""
        key = _engine_key(settings)
        if key not in self.engines:
            from .engine import CsmEngine

            self.engines[key] = CsmEngine.load(settings)
        return self.engines[key]

    def submit(self, settings: LocalCsmSettings, batch: list[SpeechRequest]) -> str:
        self._forget_old()
        job_id = uuid.uuid4().hex
        job = _Job(concurrent.futures.Future(), threading.Event(), time.time())
        job.future = self.executor.submit(self._run, settings, job, batch)
        self.jobs[job_id] = job
        return job_id

    def _run(self, settings: LocalCsmSettings, job: _Job, batch: list[SpeechRequest]) -> Any:
        job.started = time.time()
        try:
            if job.cancel.is_set():
                return None
            engine = self.engine(settings)
            started = time.perf_counter()
            response = run_batch(engine, ParsedBatch(tuple(batch), "wav"), job.cancel)
            chars = sum(len(request.text) for request in batch)
            self.meter(settings).record(chars, time.perf_counter() - started)
            return response
        finally:
            job.finished = time.time()

    def _forget_old(self) -> None:
        now = time.time()
        for job_id, job in list(self.jobs.items()):
            if job.finished is not None and now - job.finished > FINISHED_TTL_S:
                del self.jobs[job_id]

    def status(self, job_id: str) -> JobStatus:
        job = self.jobs.get(job_id)
        if job is None:
            raise JobLost(f"local job {job_id} is not known to this process (restarted?)")
        queue_ms = _ms(job.submitted, job.started)
        if not job.future.done():
            state = JobState.QUEUED if job.started is None else JobState.RUNNING
            return JobStatus(state, queue_ms=queue_ms)
        exec_ms = _ms(job.started, job.finished)
        if job.cancel.is_set() or job.future.cancelled():
            return JobStatus(JobState.CANCELLED, error="cancelled", queue_ms=queue_ms)
        error = job.future.exception()
        if error is not None:
            from .engine import ModelLoadError

            if isinstance(error, ModelLoadError):
                raise Unavailable(str(error))
            message = f"engine failed: {type(error).__name__}: {error}"
            return JobStatus(JobState.FAILED, error=message, queue_ms=queue_ms, exec_ms=exec_ms)
        response: BatchResponse = job.future.result()
        return JobStatus(JobState.COMPLETED, response.results, None, queue_ms, exec_ms)

    def cancel(self, job_id: str) -> None:
        job = self.jobs.get(job_id)
        if job is None:
            return
        job.cancel.set()
        job.future.cancel()


def _ms(start: float | None, end: float | None) -> int | None:
    if start is None:
        return None
    return round(((end or time.time()) - start) * 1000)


RUNTIME = LocalRuntime()


def seconds_per_char(settings: LocalCsmSettings) -> tuple[float, str]:
    """This machine's measured speed, else a prior for the device the engine would run on."""
    meter = RUNTIME.meter(settings)
    if meter.measured and meter.seconds_per_char is not None:
        return meter.seconds_per_char, "measured"
    # `auto` on a machine without a GPU runs on the CPU, about ten times slower than a GPU.
    on_cpu = check_device(settings.device).device == "cpu"
    prior = PRIOR_CPU_S_PER_CHAR if on_cpu else PRIOR_GPU_S_PER_CHAR
    return prior, "prior"


def estimate(target: Any, batch: list[SpeechRequest], usd_per_second: float) -> CostEstimate:
    rate, source = seconds_per_char(target.settings)
    chars = sum(len(request.text) for request in batch)
    seconds = chars * rate
    basis = (
        f"{chars} chars x {rate:.3g} s/char ({source}) at ${usd_per_second * 3600:.4g}/hour "
        "of this machine"
    )
    return CostEstimate(target.name, seconds * usd_per_second, seconds, basis)


def device_status(requested: str) -> tuple[bool, str]:
    """Is the requested device there? Answered without torch (see `device.check_device`)."""
    check = check_device(requested)
    return check.ok, check.detail


def _check_health(settings: LocalCsmSettings) -> tuple[bool, str]:
    """Packages, weights and device, all without importing torch: a cloud-only run checks the
    health of every configured target, and torch would cost it about 700 MB and a second."""
    rate, source = seconds_per_char(settings)
    speed = f"{rate:.3g} s/char ({source})"
    engine = RUNTIME.engines.get(_engine_key(settings))
    if engine is not None:
        return True, f"engine loaded on {getattr(engine, 'device', settings.device)}; {speed}"
    # find_spec locates a package without importing it.
    missing = [
        name
        for name in ("torch", "torchaudio", "transformers")
        if not importlib.util.find_spec(name)
    ]
    if missing:
        return False, f"{', '.join(missing)} not installed: pip install csm-offload-local-csm"
    weights_ok, weights = weights_status(settings.model)
    device_ok, device = device_status(settings.device)
    dtype_ok, dtype = check_dtype(settings.dtype)
    detail = "; ".join(part for part in (weights, device, dtype, speed) if part)
    return weights_ok and device_ok and dtype_ok, detail


async def health(settings: LocalCsmSettings) -> Health:
    # The Hugging Face cache look-up and a first nvidia-smi run block: keep them off the loop.
    ok, detail = await asyncio.to_thread(_check_health, settings)
    queued = sum(1 for job in RUNTIME.jobs.values() if not job.future.done())
    return Health(ok=ok, detail=detail, queue_depth=queued, workers=1)
