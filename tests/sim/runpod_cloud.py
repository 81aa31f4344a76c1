"""A simulated RunPod serverless cloud: a real HTTP server on 127.0.0.1.

It speaks RunPod's documented routes under `/v2/{endpoint}/`: `POST run`, `POST runsync`
(`?wait=` ms), `GET status/{id}`, `POST cancel/{id}`, `GET health`, `POST purge-queue`, with
Bearer-key checking, a queue served by N simulated workers, job time proportional to the text
(or a fixed time), results kept for a TTL and then 404. Outputs are wire-format v1
`BatchResponse`s with real FLAC audio (a quiet tone) whose length follows the text.

Faults can be injected per route (429 with Retry-After, 5xx, connection reset, a slow answer,
malformed JSON, the real answer dripped a few bytes at a time, a gzip bomb) or per job
(completed without output, lost, failed, undecodable audio, audio for the wrong request, stuck
IN_QUEUE for ever), and the whole endpoint can be made "stuck" (workers unhealthy, jobs stay
queued). Counters record requests per route, jobs and outputs per request id, request ids
generated more than once and the billed execution time, so tests can assert that nothing was
generated or paid twice.

Opt-in behaviour of the real service under stress (all off by default):

- `rate_limits=True`: RunPod's documented limits, each route its own sliding window (`/run`
  1000 requests per 10 s, `/runsync` and `/status` 2000 per 10 s; `limits={route: (count,
  window_s)}` overrides or adds routes, and is only in force with `rate_limits`). `rate_scale`
  multiplies every count and window alike (0.1: `/run` 100 per 1 s), so a test reaches a limit
  quickly at the same rate. A request over its limit gets 429, a JSON error and a Retry-After
  (`retry_after_form`: "seconds", integer delta-seconds rounded up, at least 1; "http-date", an
  IMF-fixdate rounded up to the next whole second because the form has 1 s resolution;
  "alternate", one then the other; "none", no header). A request answered 429 does not count
  toward its window: RunPod does not document it either way, and counting them would let a
  client that retries too fast lock itself out for ever, which would test the simulator rather
  than the client. With rate limits on, `/run` and `/runsync` also answer 429 while the queue
  (jobs IN_QUEUE) is over 50 jobs and over `queue_limit_per_worker` (500) times the workers.
- `gzip=True`: normal JSON answers are gzip-compressed when the request's Accept-Encoding
  allows gzip, as RunPod's gateway does.

A dead host is `SimulatedRunPod.kill()` (the listening socket closes and every open connection
is reset; the workers keep running their jobs, as if only the API gateway died) and `revive()`
(the same port again, every job still there). A `SimProcess` does the same on SIGUSR1/SIGUSR2,
as its control routes go through the port that is dead.

Use it from a test or a benchmark (the repository root on `sys.path`):

    with SimulatedRunPod(workers=4, seconds_per_char=0.001) as sim:
        sim.url, sim.api_key        # http://127.0.0.1:PORT/v2/sim-endpoint, "sim-key"
        sim.inject("status", "http", status=429, retry_after="2")
        sim.inject("status", "drip", chunk_bytes=16, delay_s=0.5)
        sim.stats()["requests"]["status"]

    SimulatedRunPod(rate_limits=True, rate_scale=0.1, retry_after_form="alternate")

or as a process of its own (`python -m tests.sim.runpod_cloud --port 0 --workers 100
--job-seconds 2 [--rate-limits true --rate-scale 0.1 --retry-after-form seconds --limits JSON
--queue-limit-per-worker 500 --gzip true]`), which prints one JSON line with its URL and is
controlled over `/_sim/...`; `SimulatedRunPod.spawn(...)` starts one and returns a handle with
the same control methods.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import email.utils
import functools
import json
import math
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import uuid
import zlib
from collections.abc import Callable, Coroutine, Mapping
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
HTTP_FAULTS = ("http", "reset", "slow", "malformed", "drip", "gzip_bomb")
JOB_FAULTS = ("no_output", "lost", "failed", "undecodable_audio", "wrong_id", "stuck")
RETRY_AFTER_FORMS = ("seconds", "http-date", "alternate", "none")
SAMPLE_RATE = 24_000
#: RunPod holds a /runsync connection this long when no `?wait=` is given.
DEFAULT_WAIT_MS = 90_000
#: RunPod's documented per-route limits: (requests, window in seconds).
RATE_LIMITS: Mapping[str, tuple[int, float]] = {
    "run": (1000, 10.0),
    "runsync": (2000, 10.0),
    "status": (2000, 10.0),
}
#: The queue rule's floor: 429 only while more than this many jobs wait (and more than
#: `queue_limit_per_worker` x workers).
QUEUE_FLOOR = 50
GIB = 1 << 30
#: What a gzip bomb inflates to: the start of a status answer, then spaces for ever.
BOMB_PREFIX = b'{"id":"x","status":"COMPLETED","output":"'


@attrs.frozen
class Fault:
    """An injected misbehaviour of one route (`*` for any) for the next `count` requests."""

    route: str
    kind: str
    status: int = 503
    retry_after: str | None = None
    delay_s: float = 0.0
    chunk_bytes: int = 64
    inflate_bytes: int = GIB


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


@functools.lru_cache(maxsize=8)
def gzip_bomb(inflate_bytes: int = GIB, block_bytes: int = 1 << 20) -> bytes:
    """A valid gzip member that inflates to `inflate_bytes` of JSON-looking text.

    Built without ever holding the inflated data: after a full flush deflate restarts at a byte
    boundary with an empty history, so every block of spaces compresses to the same bytes and
    one compressed block is repeated. Only the CRC needs every inflated byte, and that is
    computed block by block (about 0.15 s and 1 MB of output for 1 GiB)."""
    prefix = BOMB_PREFIX[: max(0, inflate_bytes)]
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    head = compressor.compress(prefix) + compressor.flush(zlib.Z_FULL_FLUSH)
    blocks, tail = divmod(max(0, inflate_bytes - len(prefix)), block_bytes)
    block = b" " * block_bytes
    piece = compressor.compress(block) + compressor.flush(zlib.Z_FULL_FLUSH) if blocks else b""
    last = compressor.compress(b" " * tail) + compressor.flush(zlib.Z_FULL_FLUSH) if tail else b""
    crc = zlib.crc32(prefix)
    for _ in range(blocks):
        crc = zlib.crc32(block, crc)
    crc = zlib.crc32(b" " * tail, crc)
    # b"\x03\x00" is an empty final fixed-Huffman block; then the gzip trailer (CRC, size).
    trailer = struct.pack("<II", crc, inflate_bytes & 0xFFFFFFFF)
    return head + piece * blocks + last + b"\x03\x00" + trailer


def accepts_gzip(accept_encoding: str) -> bool:
    """Whether an Accept-Encoding value allows gzip (`gzip;q=0` refuses it)."""
    for item in accept_encoding.lower().split(","):
        name, _, params = item.partition(";")
        if name.strip() not in ("gzip", "x-gzip", "*"):
            continue
        q = params.strip()
        if q.startswith("q="):
            try:
                return float(q[2:]) > 0
            except ValueError:
                return False
        return True
    return False


def _gzipped(response: Response) -> Response:
    headers = {**response.headers, "Content-Encoding": "gzip", "Vary": "Accept-Encoding"}
    return attrs.evolve(response, body=zlib.compress(response.body, 6, wbits=31), headers=headers)


class SimCloud:
    """The simulated endpoint's state and behaviour; runs inside one asyncio loop.

    `rate_limits`, `rate_scale`, `limits`, `retry_after_form` and `queue_limit_per_worker`
    shape the 429s (see the module docstring); `gzip` compresses answers for clients that
    accept it. Everything per request is O(1) in the number of jobs: the windows are deques
    popped from the left and the queue length is a counter kept on state changes."""

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
        rate_limits: bool = False,
        rate_scale: float = 1.0,
        limits: Mapping[str, tuple[int, float]] | None = None,
        retry_after_form: str = "seconds",
        queue_limit_per_worker: int = 500,
        gzip: bool = False,
    ) -> None:
        if retry_after_form not in RETRY_AFTER_FORMS:
            raise ValueError(f"retry_after_form must be one of {RETRY_AFTER_FORMS}")
        if rate_scale <= 0:
            raise ValueError("rate_scale must be positive")
        table = {**RATE_LIMITS, **(limits or {})}
        if unknown := set(table) - set(ROUTES):
            raise ValueError(f"no such routes to limit: {sorted(unknown)}; one of {ROUTES}")
        self.workers = workers
        self.job_seconds = job_seconds
        self.seconds_per_char = seconds_per_char
        self.overhead_s = overhead_s
        self.audio_seconds_per_char = audio_seconds_per_char
        self.api_key = api_key
        self.endpoint_id = endpoint_id
        self.result_ttl_s = result_ttl_s
        self.validate = validate
        self.rate_limits = rate_limits
        self.rate_scale = rate_scale
        #: The limits in force, scaled: route -> (requests, window in seconds).
        self.limits: dict[str, tuple[int, float]] = {
            route: (max(1, round(int(count) * rate_scale)), float(window) * rate_scale)
            for route, (count, window) in table.items()
        }
        self.retry_after_form = retry_after_form
        self.queue_limit_per_worker = queue_limit_per_worker
        self.gzip = gzip
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
        self.generated_total = 0
        self.executed_twice = 0
        self.rate_limited: collections.Counter[str] = collections.Counter()
        self.queue_limited: collections.Counter[str] = collections.Counter()
        #: Jobs IN_QUEUE, kept on every state change so /health and the queue rule never scan.
        self.in_queue = 0
        # Accepted requests' times per limited route; 429s are not added (module docstring).
        self._windows: dict[str, collections.deque[float]] = {
            route: collections.deque() for route in self.limits
        }
        self._forms = 0  # 429s answered so far with retry_after_form "alternate"
        #: The HTTP server in front, when there is one: stats report its connections.
        self.server: HttpServer | None = None
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
        if fault.chunk_bytes < 1 or fault.inflate_bytes < 0 or fault.delay_s < 0:
            raise ValueError("chunk_bytes must be >= 1, inflate_bytes and delay_s >= 0")
        if fault.kind == "gzip_bomb":
            gzip_bomb(fault.inflate_bytes)  # build it now, not while a client waits
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
        """Counters: "requests" and "responses" ("route status") per route, "submissions" and
        "generated" per request id, "generated_total", "executed_twice" (request ids generated
        more than once), "faults_fired" per kind, "jobs" per final state, "billed_ms" (execution
        time of every job that started, cancelled ones included), "rate_limited" per route (all
        429s of the rate limits, "queue_limited" the queue rule's share of them), "in_queue",
        "in_progress", "peak_in_progress", and from the server "listening", "connections" and
        "dripping" (responses being dripped now)."""
        server = self.server
        with self.lock:
            return {
                "requests": dict(self.requests),
                "responses": dict(self.statuses),
                "submissions": dict(self.submissions),
                "generated": dict(self.generated),
                "generated_total": self.generated_total,
                "executed_twice": self.executed_twice,
                "faults_fired": dict(self.fired),
                "jobs": dict(self.counts),
                "billed_ms": self.billed_ms,
                "rate_limited": dict(self.rate_limited),
                "queue_limited": dict(self.queue_limited),
                "in_queue": self.in_queue,
                "in_progress": self.busy,
                "peak_in_progress": self.peak_busy,
                "listening": server.listening if server is not None else False,
                "connections": server.connections if server is not None else 0,
                "dripping": server.dripping if server is not None else 0,
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
        fault = self._take_fault(route)
        response = await self._faulted(fault) if fault is not None else None
        if response is None:
            response = await self._route(request, parts, route)
            if self.gzip and accepts_gzip(request.headers.get("accept-encoding", "")):
                response = _gzipped(response)
            if fault is not None and fault.kind == "drip":
                response = attrs.evolve(
                    response, drip_bytes=fault.chunk_bytes, drip_delay_s=fault.delay_s
                )
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

    async def _faulted(self, fault: Fault) -> Response | None:
        """The fault's answer, or None for the real one (after a stall, or to be dripped)."""
        if fault.kind == "drip":
            return None
        if fault.kind == "gzip_bomb":
            return Response(200, gzip_bomb(fault.inflate_bytes), {"Content-Encoding": "gzip"})
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
        if self.rate_limits and (limited := self._over_limit(route)) is not None:
            return limited
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

    def _over_limit(self, route: str) -> Response | None:
        """A 429 when `route` is over its window or (to submit) the queue is too long; else
        None, and the request is counted in its window."""
        now = time.monotonic()
        limit = self.limits.get(route)
        stamps = self._windows.get(route)
        if limit is not None and stamps is not None:
            count, window = limit
            while stamps and stamps[0] <= now - window:
                stamps.popleft()
            if len(stamps) >= count:
                # A slot frees when the oldest accepted request leaves the window.
                wait_s = stamps[0] + window - now
                message = f"rate limit: /{route} allows {count} requests per {window:g} s"
                return self._too_many(route, wait_s, message)
        if route in ("run", "runsync"):
            queued = self.in_queue
            if queued > QUEUE_FLOOR and queued > self.queue_limit_per_worker * self.workers:
                with self.lock:
                    self.queue_limited[route] += 1
                return self._too_many(route, 1.0, f"queue full: {queued} jobs waiting")
        if stamps is not None:
            stamps.append(now)
        return None

    def _too_many(self, route: str, wait_s: float, message: str) -> Response:
        with self.lock:
            self.rate_limited[route] += 1
        form = self.retry_after_form
        if form == "alternate":
            form = "seconds" if self._forms % 2 == 0 else "http-date"
            self._forms += 1
        headers: dict[str, str] = {}
        if form == "seconds":
            headers["Retry-After"] = str(max(1, math.ceil(wait_s)))
        elif form == "http-date":
            # Rounded up to the next whole second, so the date is never before the moment a
            # slot frees (the form cannot say fractions).
            headers["Retry-After"] = email.utils.formatdate(
                math.ceil(time.time() + wait_s), usegmt=True
            )
        return _json({"error": f"Too Many Requests: {message}", "status": 429}, 429, headers)

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
            self.in_queue += 1
            self.counts["submitted"] += 1
            for r in batch.requests:
                self.submissions[r.id] += 1
        assert self.queue is not None
        if fault != "stuck":  # a stuck job is never handed to a worker, so it holds none
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
                "inQueue": self.in_queue,
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
        with self.lock:
            self.in_queue -= 1
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
                self.generated_total += 1
                if self.generated[request.id] == 2:
                    self.executed_twice += 1
        worker = {"gpu": "SIM", "model": "sim-tone", "engine_version": "sim-1"}
        return {"schema": 1, "results": results, "worker": worker}

    def _finish(self, job: SimJob, state: str) -> None:
        with self.lock:
            if job.state == "IN_QUEUE":
                self.in_queue -= 1
            job.state, job.finished = state, time.monotonic()
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

    Keyword arguments are those of `SimCloud` (`workers`, `job_seconds`, ..., `rate_limits`,
    `rate_scale`, `limits`, `retry_after_form`, `queue_limit_per_worker`, `gzip`) plus `port`
    (0 picks a free one)."""

    def __init__(self, *, port: int = 0, **options: Any) -> None:
        self.cloud = SimCloud(**options)
        self._port = port
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: HttpServer | None = None
        self._ready = threading.Event()
        self._stopped: asyncio.Event | None = None
        self._error: BaseException | None = None
        self._pending: set[asyncio.Future[None]] = set()

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
        self.cloud.server = self._server
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
        chunk_bytes: int = 64,
        inflate_bytes: int = GIB,
    ) -> None:
        """Misbehave on the next `count` requests to `route` (`*` for any): `kind` is "http"
        (answer `status`, with `Retry-After: retry_after` if given), "reset", "slow" (stall
        `delay_s` first), "malformed" (200 with a body that is not JSON), "drip" (the real
        answer, Content-Length and all, sent `chunk_bytes` at a time `delay_s` apart: each gap
        short, the whole body slow) or "gzip_bomb" (200, `Content-Encoding: gzip`, about 1 KB
        per MB that inflates to `inflate_bytes` of JSON-looking text, whatever the client's
        Accept-Encoding)."""
        fault = Fault(route, kind, status, retry_after, delay_s, chunk_bytes, inflate_bytes)
        self.cloud.inject(fault, count)

    def rate_limit(self, route: str = "run", retry_after: str | None = "1", count: int = 1) -> None:
        self.inject(route, "http", status=429, retry_after=retry_after, count=count)

    def inject_job(self, kind: str, count: int = 1) -> None:
        """The next `count` jobs misbehave: "no_output" (COMPLETED without output), "lost"
        (status and cancel answer 404 from the start, though the job still runs and is billed,
        as when RunPod forgets a job), "failed" (FAILED with an error), "undecodable_audio"
        (audio bytes that are not FLAC), "wrong_id" (results for another request id) or "stuck"
        (IN_QUEUE for ever and never taken by a worker, while other jobs run; cancel works)."""
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
        """See `SimCloud.stats`; works while the host is killed, and keeps counting."""
        return self.cloud.stats()

    def kill(self) -> None:
        """The host dies: the listening socket closes (new connects are refused) and every open
        connection is reset, so requests in flight fail. The workers go on running and
        finishing jobs, as when only RunPod's API gateway is down. Done when this returns."""
        assert self._server is not None, "not started"
        self._in_loop(self._server.kill())

    def revive(self) -> None:
        """Listen again on the same port, every job (finished while dead or not) still there."""
        assert self._server is not None, "not started"
        self._in_loop(self._server.start())

    def kill_soon(self) -> None:
        """`kill()` without waiting; safe in a signal handler (takes no lock)."""
        if self._loop is not None and self._server is not None:
            self._loop.call_soon_threadsafe(self._spawn_task, self._server.kill)

    def revive_soon(self) -> None:
        """`revive()` without waiting; safe in a signal handler (takes no lock)."""
        if self._loop is not None and self._server is not None:
            self._loop.call_soon_threadsafe(self._spawn_task, self._server.start)

    def _spawn_task(self, make: Callable[[], Coroutine[Any, Any, None]]) -> None:
        task = asyncio.ensure_future(make())
        self._pending.add(task)  # a loop keeps only weak references to its tasks
        task.add_done_callback(self._pending.discard)

    def _in_loop(self, coro: Coroutine[Any, Any, None], timeout_s: float = 10.0) -> None:
        assert self._loop is not None, "not started"
        asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout_s)

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
                text = json.dumps(value) if isinstance(value, Mapping) else str(value)
                args += [f"--{key.replace('_', '-')}", text]
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
        """Over HTTP, so not while the host is killed."""
        return self._post("stats", {})

    def kill(self, timeout_s: float = 10.0) -> None:
        """As `SimulatedRunPod.kill`, by SIGUSR1 (the control routes share the dead port);
        returns once a connect is refused."""
        self.process.send_signal(signal.SIGUSR1)
        self._wait_listening(False, timeout_s)

    def revive(self, timeout_s: float = 10.0) -> None:
        """As `SimulatedRunPod.revive`, by SIGUSR2; returns once a connect succeeds."""
        self.process.send_signal(signal.SIGUSR2)
        self._wait_listening(True, timeout_s)

    def _wait_listening(self, listening: bool, timeout_s: float) -> None:
        # A probe accepted in the very loop step that closes the server trips an asyncio race
        # (the half-made connection is dropped, with a warning in debug mode); the signal is
        # handled within a millisecond, so probing a little later nearly always avoids it.
        time.sleep(0.02)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1.0):
                    up = True
            except OSError:
                up = False
            if up == listening:
                return
            time.sleep(0.01)
        raise RuntimeError(f"the simulated RunPod did not {'revive' if listening else 'die'}")

    def stop(self, timeout_s: float = 10.0) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout_s)
        if self.process.stdout is not None:
            self.process.stdout.close()

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
    parser.add_argument("--validate", type=_flag, default=True)
    parser.add_argument("--rate-limits", type=_flag, default=False)
    parser.add_argument("--rate-scale", type=float, default=1.0)
    parser.add_argument(
        "--limits",
        type=_limits,
        default=None,
        help='JSON route -> [count, window_s], e.g. {"run": [1000, 10]}',
    )
    parser.add_argument("--retry-after-form", choices=RETRY_AFTER_FORMS, default="seconds")
    parser.add_argument("--queue-limit-per-worker", type=int, default=500)
    parser.add_argument("--gzip", type=_flag, default=False)
    return parser.parse_args(argv)


def _flag(text: str) -> bool:
    return text.lower() in ("1", "true", "yes")


def _limits(text: str) -> dict[str, tuple[int, float]]:
    return {
        route: (int(count), float(window)) for route, (count, window) in json.loads(text).items()
    }


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
    signal.signal(signal.SIGUSR1, lambda *_: sim.kill_soon())
    signal.signal(signal.SIGUSR2, lambda *_: sim.revive_soon())
    while not stop.wait(0.5):
        pass
    sim.stop()


if __name__ == "__main__":
    main()
