"""A simulated RunPod serverless cloud: a real HTTP server on 127.0.0.1.

It speaks RunPod's documented routes under `/v2/{endpoint}/`: `POST run`, `POST runsync`
(`?wait=` ms), `GET status/{id}`, `POST cancel/{id}`, `GET health`, `POST purge-queue`, with
Bearer-key checking, a queue served by N simulated workers, job time proportional to the text
(or a fixed time), results kept for a TTL and then 404. Outputs are wire-format v1
`BatchResponse`s with real FLAC audio (a quiet tone) whose length follows the text.

Faults can be injected per route (429 with Retry-After, 5xx, connection reset, a slow answer,
malformed JSON) or per job (completed without output, lost, failed, undecodable audio, audio
for the wrong request), and the whole endpoint can be made "stuck" (workers unhealthy, jobs stay
queued). Counters record requests per route, jobs and outputs per request id and the billed
execution time, so tests can assert that nothing was generated or paid twice.

Use it from a test or a benchmark (the repository root on `sys.path`):

    with SimulatedRunPod(workers=4, seconds_per_char=0.001) as sim:
        sim.url, sim.api_key        # http://127.0.0.1:PORT/v2/sim-endpoint, "sim-key"
        sim.inject("status", "http", status=429, retry_after="2")
        sim.stats()["requests"]["status"]

or as a process of its own (`python -m tests.sim.runpod_cloud --port 0 --workers 100
--job-seconds 2`), which prints one JSON line with its URL and is controlled over `/_sim/...`;
`SimulatedRunPod.spawn(...)` starts one and returns a handle with the same control methods.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import email.utils
import functools
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Mapping
from typing import Any

import attrs
import httpx
import numpy as np

from csm_offload import Audio, BatchRequest, SpeechRequest, WireError, wire

try:
    from .http_server import RESET, HttpServer, Request, Response
except ImportError:  # run as a script path rather than a module
    from tests.sim.http_server import RESET, HttpServer, Request, Response

ROUTES = ("run", "runsync", "status", "cancel", "health", "purge-queue")
HTTP_FAULTS = ("http", "reset", "slow", "malformed")
JOB_FAULTS = ("no_output", "lost", "failed", "undecodable_audio", "wrong_id")
SAMPLE_RATE = 24_000
#: RunPod holds a /runsync connection this long when no `?wait=` is given.
DEFAULT_WAIT_MS = 90_000


@attrs.frozen
class Fault:
    """An injected misbehaviour of one route (`*` for any) for the next `count` requests."""

    route: str
    kind: str
    status: int = 503
    retry_after: str | None = None
    delay_s: float = 0.0


@attrs.define
class SimJob:
    id: str
    batch: BatchRequest
    fault: str | None
    submitted: float
    state: str = "IN_QUEUE"
    started: float | None = None
    finished: float | None = None
    output: Any = None
    error: str | None = None
    worker: str = ""
    done: asyncio.Event = attrs.field(factory=asyncio.Event)
    cancel: asyncio.Event = attrs.field(factory=asyncio.Event)

    def ms(self, start: float | None, end: float | None) -> int | None:
        if start is None or end is None:
            return None
        return round((end - start) * 1000)


@functools.lru_cache(maxsize=512)
def _flac_tone(frames: int) -> bytes:
    """A quiet 220 Hz tone, encoded once per length (encoding is the sim's main CPU cost)."""
    t = np.arange(frames, dtype=np.float32) / SAMPLE_RATE
    return Audio(0.1 * np.sin(2 * np.pi * 220.0 * t), SAMPLE_RATE).encode("flac")


def _json(data: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    body = json.dumps(data, separators=(",", ":")).encode()
    return Response(status=status, body=body, headers=dict(headers or {}))


class SimCloud:
    """The simulated endpoint's state and behaviour; runs inside one asyncio loop."""

    def __init__(
        self,
        *,
        workers: int = 4,
        job_seconds: float | None = None,
        seconds_per_char: float = 0.001,
        overhead_s: float = 0.0,
        audio_seconds_per_char: float = 0.06,
        api_key: str = "sim-key",
        endpoint_id: str = "sim-endpoint",
        result_ttl_s: float = 1800.0,
        validate: bool = True,
    ) -> None:
        self.workers = workers
        self.job_seconds = job_seconds
        self.seconds_per_char = seconds_per_char
        self.overhead_s = overhead_s
        self.audio_seconds_per_char = audio_seconds_per_char
        self.api_key = api_key
        self.endpoint_id = endpoint_id
        self.result_ttl_s = result_ttl_s
        self.validate = validate
        self.lock = threading.Lock()
        self.faults: list[list[Any]] = []  # [Fault, remaining count]
        self.job_faults: collections.deque[str] = collections.deque()
        self.jobs: dict[str, SimJob] = {}
        self.queue: asyncio.Queue[SimJob] | None = None
        self.healthy: asyncio.Event | None = None
        self.busy = 0
        self.peak_busy = 0
        self.stuck = False
        self.requests: collections.Counter[str] = collections.Counter()
        self.statuses: collections.Counter[str] = collections.Counter()
        self.submissions: collections.Counter[str] = collections.Counter()
        self.generated: collections.Counter[str] = collections.Counter()
        self.fired: collections.Counter[str] = collections.Counter()
        self.counts: collections.Counter[str] = collections.Counter()
        self.billed_ms = 0
        self._tasks: list[asyncio.Task[None]] = []

    # --- lifecycle (inside the loop) --------------------------------------------------------

    async def start(self) -> None:
        self.queue = asyncio.Queue()
        self.healthy = asyncio.Event()
        if not self.stuck:
            self.healthy.set()
        self._tasks = [asyncio.create_task(self._worker(i)) for i in range(self.workers)]
        self._tasks.append(asyncio.create_task(self._sweeper()))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # --- control (from any thread) ----------------------------------------------------------

    def inject(self, fault: Fault, count: int = 1) -> None:
        if fault.kind not in HTTP_FAULTS:
            raise ValueError(f"unknown route fault {fault.kind!r}; one of {HTTP_FAULTS}")
        if fault.route != "*" and fault.route not in ROUTES:
            raise ValueError(f"unknown route {fault.route!r}; one of {ROUTES} or '*'")
        with self.lock:
            self.faults.append([fault, count])

    def inject_job(self, kind: str, count: int = 1) -> None:
        if kind not in JOB_FAULTS:
            raise ValueError(f"unknown job fault {kind!r}; one of {JOB_FAULTS}")
        with self.lock:
            self.job_faults.extend([kind] * count)

    def set_stuck(self, stuck: bool) -> None:
        """Stuck: workers are unhealthy and take nothing, so jobs stay IN_QUEUE."""
        self.stuck = stuck
        if self.healthy is not None:
            (self.healthy.clear if stuck else self.healthy.set)()

    def clear_faults(self) -> None:
        with self.lock:
            self.faults.clear()
            self.job_faults.clear()

    def stats(self) -> dict[str, Any]:
        with self.lock:
            return {
                "requests": dict(self.requests),
                "responses": dict(self.statuses),
                "submissions": dict(self.submissions),
                "generated": dict(self.generated),
                "faults_fired": dict(self.fired),
                "jobs": dict(self.counts),
                "billed_ms": self.billed_ms,
                "in_queue": sum(1 for j in self.jobs.values() if j.state == "IN_QUEUE"),
                "in_progress": self.busy,
                "peak_in_progress": self.peak_busy,
            }

    # --- HTTP -------------------------------------------------------------------------------

    async def handle(self, request: Request) -> Response:
        if request.path.startswith("/_sim/"):
            return self._admin(request)
        parts = [p for p in request.path.split("/") if p]
        route = parts[2] if len(parts) >= 3 and parts[0] == "v2" else "other"
        route = route if route in ROUTES else "other"
        with self.lock:
            self.requests[route] += 1
        response = await self._faulted(route)
        if response is None:
            response = await self._route(request, parts, route)
        with self.lock:
            self.statuses[f"{route} {response.status or 'reset'}"] += 1
        return response

    def _take_fault(self, route: str) -> Fault | None:
        with self.lock:
            for entry in self.faults:
                fault, remaining = entry
                if remaining > 0 and fault.route in ("*", route):
                    entry[1] -= 1
                    self.fired[fault.kind] += 1
                    if entry[1] == 0:
                        self.faults.remove(entry)
                    return fault
        return None

    async def _faulted(self, route: str) -> Response | None:
        fault = self._take_fault(route)
        if fault is None:
            return None
        if fault.kind == "reset":
            return RESET
        if fault.kind == "slow":
            # The stall comes before the request is acted on, as with an overloaded gateway,
            # so a client that times out and retries does not create a second job.
            await asyncio.sleep(fault.delay_s)
            return None
        if fault.kind == "malformed":
            return Response(200, b'{"id": "oops", "status": ')
        headers = {"Retry-After": fault.retry_after} if fault.retry_after is not None else {}
        return _json({"error": f"injected HTTP {fault.status}"}, fault.status, headers)

    def _authorized(self, request: Request) -> bool:
        return request.headers.get("authorization", "") == f"Bearer {self.api_key}"

    async def _route(self, request: Request, parts: list[str], route: str) -> Response:
        if not self._authorized(request):
            return _json({"error": "Unauthorized"}, 401)
        if route == "other" or parts[1] != self.endpoint_id:
            return _json({"error": "not found"}, 404)
        job_id = parts[3] if len(parts) >= 4 else None
        method = request.method
        if route in ("run", "runsync") and method == "POST":
            return await self._submit(request, route)
        if route == "status" and method in ("GET", "POST") and job_id:
            return self._status(job_id)
        if route == "cancel" and method == "POST" and job_id:
            return self._cancel(job_id)
        if route == "health" and method == "GET":
            return _json(self._health())
        if route == "purge-queue" and method == "POST":
            return _json({"removed": self._purge(), "status": "completed"})
        return _json({"error": f"{method} not allowed here"}, 405)

    async def _submit(self, request: Request, route: str) -> Response:
        limit = 20 * 1024 * 1024 if route == "runsync" else 10 * 1024 * 1024
        if len(request.body) > limit:
            return _json({"error": f"payload over {limit} bytes"}, 413)
        try:
            body = json.loads(request.body)
            batch = self._batch(body["input"])
        except (ValueError, KeyError, TypeError, WireError) as exc:
            return _json({"error": f"bad input: {exc}"}, 400)
        job = self._create(batch)
        if route == "run":
            return _json({"id": job.id, "status": "IN_QUEUE"})
        try:
            wait_ms = int(request.query.get("wait", DEFAULT_WAIT_MS))
        except ValueError:
            return _json({"error": "wait must be an integer of milliseconds"}, 400)
        wait_ms = max(1_000, min(300_000, wait_ms))
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(job.done.wait(), wait_ms / 1000)
        return self._status(job.id)

    def _batch(self, data: Any) -> BatchRequest:
        if self.validate:
            return wire.structure(data, BatchRequest)
        # Cheap path for load tests: only what the simulation needs.
        items = data["requests"]
        return BatchRequest(
            tuple(
                SpeechRequest(
                    text=r["text"], id=r["id"], max_audio_length_ms=r["max_audio_length_ms"]
                )
                for r in items
            )
        )

    def _create(self, batch: BatchRequest) -> SimJob:
        with self.lock:
            fault = self.job_faults.popleft() if self.job_faults else None
            job = SimJob(f"{uuid.uuid4()}-u1", batch, fault, time.monotonic())
            self.jobs[job.id] = job
            self.counts["submitted"] += 1
            for r in batch.requests:
                self.submissions[r.id] += 1
        assert self.queue is not None
        self.queue.put_nowait(job)
        return job

    def _status(self, job_id: str) -> Response:
        job = self.jobs.get(job_id)
        if job is None or job.fault == "lost" or self._expired(job):
            return _json({"error": "request does not exist"}, 404)
        return _json(self.status_of(job))

    def status_of(self, job: SimJob) -> dict[str, Any]:
        data: dict[str, Any] = {"id": job.id, "status": job.state}
        if job.started is not None:
            data["delayTime"] = job.ms(job.submitted, job.started)
            data["workerId"] = job.worker
        if job.finished is not None and job.started is not None:
            data["executionTime"] = job.ms(job.started, job.finished)
        if job.state == "COMPLETED" and job.output is not None:
            data["output"] = job.output
        if job.error is not None:
            data["error"] = job.error
        return data

    def _expired(self, job: SimJob) -> bool:
        return job.finished is not None and time.monotonic() - job.finished > self.result_ttl_s

    def _cancel(self, job_id: str) -> Response:
        job = self.jobs.get(job_id)
        if job is None or job.fault == "lost" or self._expired(job):
            return _json({"error": "request does not exist"}, 404)
        if job.state == "IN_QUEUE":
            self._finish(job, "CANCELLED")
        elif job.state == "IN_PROGRESS":
            job.cancel.set()
        return _json({"id": job.id, "status": "CANCELLED" if not job.done.is_set() else job.state})

    def _health(self) -> dict[str, Any]:
        in_queue = sum(1 for j in self.jobs.values() if j.state == "IN_QUEUE")
        if self.stuck:
            workers = {"idle": 0, "ready": 0, "running": 0, "unhealthy": self.workers}
        else:
            idle = self.workers - self.busy
            workers = {"idle": idle, "ready": 0, "running": self.busy, "unhealthy": 0}
        workers.update(initializing=0, throttled=0)
        with self.lock:
            jobs = {
                "completed": self.counts["completed"],
                "failed": self.counts["failed"],
                "inProgress": self.busy,
                "inQueue": in_queue,
                "retried": 0,
            }
        return {"jobs": jobs, "workers": workers}

    def _purge(self) -> int:
        queued = [j for j in self.jobs.values() if j.state == "IN_QUEUE"]
        for job in queued:
            self._finish(job, "CANCELLED")
        return len(queued)

    def _admin(self, request: Request) -> Response:
        if not self._authorized(request):
            return _json({"error": "Unauthorized"}, 401)
        try:
            body = json.loads(request.body or b"{}")
            if request.path == "/_sim/stats":
                return _json(self.stats())
            if request.path == "/_sim/fault":
                count = int(body.pop("count", 1))
                self.inject(Fault(**body), count)
            elif request.path == "/_sim/job_fault":
                self.inject_job(body["kind"], int(body.get("count", 1)))
            elif request.path == "/_sim/stuck":
                self.set_stuck(bool(body["stuck"]))
            elif request.path == "/_sim/clear":
                self.clear_faults()
            else:
                return _json({"error": "no such admin route"}, 404)
        except (ValueError, KeyError, TypeError) as exc:
            return _json({"error": str(exc)}, 400)
        return _json({"ok": True})

    # --- workers ----------------------------------------------------------------------------

    def job_time(self, batch: BatchRequest) -> float:
        if self.job_seconds is not None:
            return self.job_seconds
        return self.overhead_s + self.seconds_per_char * sum(len(r.text) for r in batch.requests)

    async def _worker(self, index: int) -> None:
        assert self.queue is not None and self.healthy is not None
        while True:
            await self.healthy.wait()
            job = await self.queue.get()
            if job.state != "IN_QUEUE":
                continue  # cancelled or purged while queued
            if not self.healthy.is_set():
                await self.queue.put(job)  # went stuck while we waited: leave it queued
                continue
            await self._run(job, f"sim-worker-{index}")

    async def _run(self, job: SimJob, worker: str) -> None:
        self.busy += 1
        self.peak_busy = max(self.peak_busy, self.busy)
        job.state, job.started, job.worker = "IN_PROGRESS", time.monotonic(), worker
        try:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(job.cancel.wait(), self.job_time(job.batch))
        finally:
            self.busy -= 1
        if job.cancel.is_set():
            self._finish(job, "CANCELLED")
        elif job.fault == "failed":
            job.error = "injected worker failure: handler raised RuntimeError"
            self._finish(job, "FAILED")
        else:
            job.output = None if job.fault == "no_output" else self._output(job)
            self._finish(job, "COMPLETED")

    def _output(self, job: SimJob) -> dict[str, Any]:
        results = []
        gpu_ms = round(1000 * (time.monotonic() - (job.started or 0.0)) / len(job.batch.requests))
        for request in job.batch.requests:
            seconds = max(0.08, self.audio_seconds_per_char * len(request.text))
            seconds = min(seconds, request.max_audio_length_ms / 1000)
            frames = max(1, round(seconds * SAMPLE_RATE))
            data = b"this is not audio" if job.fault == "undecodable_audio" else _flac_tone(frames)
            rid = "0" * 32 if job.fault == "wrong_id" else request.id
            results.append(
                {
                    "id": rid,
                    "audio": {
                        "format": "flac",
                        "sample_rate": SAMPLE_RATE,
                        "data": wire.unstructure(data),
                    },
                    "duration_ms": round(1000 * frames / SAMPLE_RATE),
                    "gpu_ms": gpu_ms,
                    "error": None,
                }
            )
            with self.lock:
                self.generated[request.id] += 1
        worker = {"gpu": "SIM", "model": "sim-tone", "engine_version": "sim-1"}
        return {"schema": 1, "results": results, "worker": worker}

    def _finish(self, job: SimJob, state: str) -> None:
        job.state, job.finished = state, time.monotonic()
        with self.lock:
            self.counts[state.lower()] += 1
            if job.started is not None:
                self.billed_ms += job.ms(job.started, job.finished) or 0
        job.done.set()

    async def _sweeper(self) -> None:
        """Forget jobs past their TTL, so a long benchmark does not grow without bound."""
        while True:
            await asyncio.sleep(min(5.0, max(0.5, self.result_ttl_s)))
            now = time.monotonic()
            for job_id in [
                j.id
                for j in self.jobs.values()
                if j.finished is not None and now - j.finished > self.result_ttl_s + 60
            ]:
                del self.jobs[job_id]


class SimulatedRunPod:
    """The simulated cloud served from a background thread; a context manager.

    Keyword arguments are those of `SimCloud` plus `port` (0 picks a free one)."""

    def __init__(self, *, port: int = 0, **options: Any) -> None:
        self.cloud = SimCloud(**options)
        self._port = port
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: HttpServer | None = None
        self._ready = threading.Event()
        self._stopped: asyncio.Event | None = None
        self._error: BaseException | None = None

    # --- addresses ---

    @property
    def port(self) -> int:
        assert self._server is not None, "not started"
        return self._server.port

    @property
    def base_url(self) -> str:
        """What `runpod.endpoint_url_base` should be set to."""
        return f"http://127.0.0.1:{self.port}/v2"

    @property
    def url(self) -> str:
        """The endpoint URL (`endpoint_url` of a RunPod target)."""
        return f"{self.base_url}/{self.endpoint_id}"

    @property
    def api_key(self) -> str:
        return self.cloud.api_key

    @property
    def endpoint_id(self) -> str:
        return self.cloud.endpoint_id

    # --- lifecycle ---

    def start(self, timeout_s: float = 10.0) -> SimulatedRunPod:
        self._thread = threading.Thread(target=self._main, name="sim-runpod", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout_s):
            raise RuntimeError("the simulated RunPod did not start in time")
        if self._error is not None:
            raise RuntimeError(f"the simulated RunPod failed to start: {self._error}")
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        if self._loop is not None and self._stopped is not None:
            self._loop.call_soon_threadsafe(self._stopped.set)
        if self._thread is not None:
            self._thread.join(timeout_s)

    def __enter__(self) -> SimulatedRunPod:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def _main(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # reported to start(), never lost
            self._error = exc
            self._ready.set()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopped = asyncio.Event()
        await self.cloud.start()
        self._server = HttpServer(self.cloud.handle, self._port)
        await self._server.start()
        self._ready.set()
        try:
            await self._stopped.wait()
        finally:
            await self._server.stop()
            await self.cloud.stop()

    # --- control ---

    def inject(
        self,
        route: str,
        kind: str,
        *,
        count: int = 1,
        status: int = 503,
        retry_after: str | None = None,
        delay_s: float = 0.0,
    ) -> None:
        """Misbehave on the next `count` requests to `route` (`*` for any): `kind` is "http"
        (answer `status`, with `Retry-After: retry_after` if given), "reset", "slow" (stall
        `delay_s` first) or "malformed" (200 with a body that is not JSON)."""
        self.cloud.inject(Fault(route, kind, status, retry_after, delay_s), count)

    def rate_limit(self, route: str = "run", retry_after: str | None = "1", count: int = 1) -> None:
        self.inject(route, "http", status=429, retry_after=retry_after, count=count)

    def inject_job(self, kind: str, count: int = 1) -> None:
        """The next `count` jobs misbehave: "no_output" (COMPLETED without output), "lost"
        (status and cancel answer 404 from the start, though the job still runs and is billed,
        as when RunPod forgets a job), "failed" (FAILED with an error), "undecodable_audio"
        (audio bytes that are not FLAC) or "wrong_id" (results for another request id)."""
        self.cloud.inject_job(kind, count)

    def set_stuck(self, stuck: bool = True) -> None:
        """Takes effect before this returns (the change is made inside the server's loop)."""
        if self._loop is None:
            self.cloud.set_stuck(stuck)
            return

        async def change() -> None:
            self.cloud.set_stuck(stuck)

        asyncio.run_coroutine_threadsafe(change(), self._loop).result(10)

    def clear_faults(self) -> None:
        self.cloud.clear_faults()

    def stats(self) -> dict[str, Any]:
        return self.cloud.stats()

    @staticmethod
    def spawn(timeout_s: float = 20.0, **options: Any) -> SimProcess:
        """Run the simulator as a separate process (e.g. to keep its CPU apart from a client's,
        or to outlive a client killed with -9)."""
        return SimProcess.start(timeout_s=timeout_s, **options)


class SimProcess:
    """A simulator in its own process, controlled over its `/_sim/` routes."""

    def __init__(self, process: subprocess.Popen[str], info: dict[str, Any]) -> None:
        self.process = process
        self.port: int = info["port"]
        self.api_key: str = info["api_key"]
        self.endpoint_id: str = info["endpoint_id"]
        self.base_url = f"http://127.0.0.1:{self.port}/v2"
        self.url = f"{self.base_url}/{self.endpoint_id}"

    @classmethod
    def start(cls, timeout_s: float = 20.0, **options: Any) -> SimProcess:
        args = [sys.executable, "-m", "tests.sim.runpod_cloud"]
        for key, value in options.items():
            if value is not None:
                args += [f"--{key.replace('_', '-')}", str(value)]
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        process = subprocess.Popen(args, cwd=root, stdout=subprocess.PIPE, text=True)
        deadline = time.monotonic() + timeout_s
        line = ""
        assert process.stdout is not None
        while time.monotonic() < deadline and not line:
            line = process.stdout.readline()
            if process.poll() is not None:
                break
        if not line:
            process.kill()
            raise RuntimeError("the simulated RunPod process did not start")
        return cls(process, json.loads(line))

    def _post(self, path: str, body: dict[str, Any]) -> Any:
        response = httpx.post(
            f"http://127.0.0.1:{self.port}/_sim/{path}",
            json=body,
            headers={"Authorization": f"Bearer {self.api_key}"},
            timeout=10,
        )
        response.raise_for_status()
        return response.json()

    def inject(self, route: str, kind: str, *, count: int = 1, **params: Any) -> None:
        self._post("fault", {"route": route, "kind": kind, "count": count, **params})

    def rate_limit(self, route: str = "run", retry_after: str | None = "1", count: int = 1) -> None:
        self.inject(route, "http", status=429, retry_after=retry_after, count=count)

    def inject_job(self, kind: str, count: int = 1) -> None:
        self._post("job_fault", {"kind": kind, "count": count})

    def set_stuck(self, stuck: bool = True) -> None:
        self._post("stuck", {"stuck": stuck})

    def clear_faults(self) -> None:
        self._post("clear", {})

    def stats(self) -> dict[str, Any]:
        return self._post("stats", {})

    def stop(self, timeout_s: float = 10.0) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout_s)

    def __enter__(self) -> SimProcess:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()


def http_date(seconds_from_now: float) -> str:
    """A Retry-After value in HTTP-date form."""
    return email.utils.formatdate(time.time() + seconds_from_now, usegmt=True)


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Simulated RunPod serverless cloud (loopback)")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--job-seconds", type=float, default=None)
    parser.add_argument("--seconds-per-char", type=float, default=0.001)
    parser.add_argument("--overhead-s", type=float, default=0.0)
    parser.add_argument("--audio-seconds-per-char", type=float, default=0.06)
    parser.add_argument("--api-key", default="sim-key")
    parser.add_argument("--endpoint-id", default="sim-endpoint")
    parser.add_argument("--result-ttl-s", type=float, default=1800.0)
    parser.add_argument(
        "--validate", type=lambda s: s.lower() in ("1", "true", "yes"), default=True
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = _parse_args(argv)
    options = {k: v for k, v in vars(args).items() if k != "port"}
    sim = SimulatedRunPod(port=args.port, **options).start()
    info = {"port": sim.port, "url": sim.url, "api_key": sim.api_key}
    info["endpoint_id"] = sim.endpoint_id
    print(json.dumps(info), flush=True)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.wait(0.5):
        pass
    sim.stop()


if __name__ == "__main__":
    main()
