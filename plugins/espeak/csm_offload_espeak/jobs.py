"""In-process jobs: a batch queued on the engine thread, polled and cancelled by its id.

A job lives only in this process. After a restart its id is unknown and `poll` raises `JobLost`,
so the runner resubmits (the work is free and takes milliseconds).
"""

from __future__ import annotations

import threading
import time
import uuid
from concurrent.futures import Future

import attrs

from csm_offload import AudioData, JobState, JobStatus, Result, SpeechRequest

from .engine import Engine, TooLong
from .settings import EspeakSettings

#: A finished job is forgotten this long after it finished: long enough for the runner to poll
#: and decode it, short enough that the audio does not pile up in memory.
KEEP_FINISHED_S = 600.0


@attrs.define
class Job:
    """One submitted batch and its timings (Unix seconds)."""

    requests: tuple[SpeechRequest, ...]
    submitted: float = attrs.field(factory=time.time)
    started: float | None = None
    finished: float | None = None
    cancelled: threading.Event = attrs.field(factory=threading.Event)
    future: Future[tuple[Result, ...]] | None = None


def _speak_one(
    engine: Engine, request: SpeechRequest, settings: EspeakSettings, job: Job
) -> Result:
    try:
        audio = engine.speak(request, settings, job.cancelled.is_set)
    except TooLong as exc:
        return Result(id=request.id, error=f"request {request.id}: {exc}")
    return Result(
        id=request.id, audio=AudioData.from_audio(audio, "wav"), duration_ms=audio.duration_ms
    )


def _run(engine: Engine, job: Job, settings: EspeakSettings) -> tuple[Result, ...]:
    job.started = time.time()
    try:
        results = []
        for request in job.requests:
            if job.cancelled.is_set():
                break
            results.append(_speak_one(engine, request, settings, job))
        return tuple(results)
    finally:
        job.finished = time.time()


class JobTable:
    """The jobs of this process, by id."""

    def __init__(self) -> None:
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()

    def submit(
        self, engine: Engine, batch: tuple[SpeechRequest, ...], settings: EspeakSettings
    ) -> str:
        job = Job(batch)
        job_id = f"espeak-{uuid.uuid4().hex}"
        with self._lock:
            self._forget_old()
            self._jobs[job_id] = job
        job.future = engine.run(_run, engine, job, settings)
        return job_id

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            return self._jobs.get(job_id)

    def forget(self, job_id: str) -> None:
        with self._lock:
            self._jobs.pop(job_id, None)

    def cancel(self, job_id: str) -> None:
        job = self.get(job_id)
        if job is None:
            return
        job.cancelled.set()
        if job.future is not None and job.future.cancel():
            job.finished = time.time()

    def _forget_old(self) -> None:
        horizon = time.time() - KEEP_FINISHED_S
        old = [i for i, j in self._jobs.items() if j.finished is not None and j.finished < horizon]
        for job_id in old:
            del self._jobs[job_id]

    def unfinished(self) -> int:
        """Jobs queued or running now (the health check's queue depth)."""
        with self._lock:
            return sum(1 for job in self._jobs.values() if job.finished is None)


def status(job: Job) -> JobStatus:
    """The job's state as the runner sees it."""
    future = job.future
    queue_ms = _ms(job.submitted, job.started)
    exec_ms = _ms(job.started, job.finished)
    if job.cancelled.is_set() and (future is None or future.done()):
        return JobStatus(JobState.CANCELLED, error="cancelled", queue_ms=queue_ms, exec_ms=exec_ms)
    if future is None or not future.done():
        state = JobState.RUNNING if job.started is not None else JobState.QUEUED
        return JobStatus(state, queue_ms=queue_ms)
    error = future.exception()
    if error is not None:
        return JobStatus(JobState.FAILED, error=str(error), queue_ms=queue_ms, exec_ms=exec_ms)
    return JobStatus(JobState.COMPLETED, future.result(), queue_ms=queue_ms, exec_ms=exec_ms)


def _ms(start: float | None, end: float | None) -> int | None:
    if start is None or end is None:
        return None
    return max(0, round(1000 * (end - start)))
