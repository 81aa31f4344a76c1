"""A loopback fake of the Acme Speech API, for testing the acme provider without Acme.

It speaks the API that README.md describes, checks the bearer key, and answers finished jobs
with real wire-format FLAC audio (a tone as long as the text would take to say), so the
provider's whole path (submit, poll, decode) runs as it would against Acme. Standard library
only, so an author can copy it into their own repository:

    with FakeAcme(api_key="acme-test-key") as acme:
        ...  # point an AcmeSettings(base_url=acme.url, ...) at it

    python fake_acme.py --port 8765 --key acme-test-key   # serve until Ctrl-C
"""

from __future__ import annotations

import argparse
import contextlib
import json
import threading
import time
import uuid
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

import numpy as np

from csm_offload import CSM_SAMPLE_RATE, Audio, AudioData, BatchRequest, BatchResponse, Result, wire

#: The largest body the fake reads: Acme refuses batches over 10 MB.
MAX_BODY_BYTES = 10_000_000
#: Seconds of speech per character of text, for the tone's length.
SECONDS_PER_CHAR = 0.05


class FakeAcme:
    """The Acme API on 127.0.0.1 in a background thread. A job is queued for the first half of
    `delay_s`, running for the second, then done; `requests` counts calls per route."""

    def __init__(
        self, api_key: str = "acme-test-key", delay_s: float = 0.05, workers: int = 2, port: int = 0
    ) -> None:
        self.api_key = api_key
        self.delay_s = delay_s
        self.workers = workers
        self.requests: Counter[str] = Counter()
        self._jobs: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", port), _handler_for(self))
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> FakeAcme:
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> FakeAcme:
        return self.start()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.stop()

    # --- the API ------------------------------------------------------------------------------

    def answer(self, method: str, path: str, auth: str, body: bytes) -> tuple[int, Any]:
        """(status, JSON body or None) for one request."""
        parts = path.strip("/").split("/")
        job_id = parts[2] if parts[:2] == ["v1", "jobs"] and len(parts) in (3, 4) else None
        self.requests[f"{method} {path.replace(job_id, '{id}') if job_id else path}"] += 1
        if auth != f"Bearer {self.api_key}":
            return 401, {"error": "invalid API key"}
        if (method, path) == ("GET", "/v1/health"):
            with self._lock:
                queued = sum(1 for job in self._jobs.values() if self._state(job) == "queued")
            return 200, {"ready": self.workers, "queued": queued}
        if (method, path) == ("POST", "/v1/jobs"):
            return self._submit(body)
        with self._lock:
            job = self._jobs.get(job_id) if job_id else None
        if job_id is None or (method, parts[3:]) not in (("GET", []), ("POST", ["cancel"])):
            return 404, {"error": f"no route {method} {path}"}
        if job is None:
            return 404, {"error": f"no job {job_id}"}
        if method == "GET":
            return 200, self._status(job)
        with self._lock:  # cancelling a finished job changes nothing
            job["cancelled"] = job["cancelled"] or self._state(job) in ("queued", "running")
        return 204, None

    def _submit(self, body: bytes) -> tuple[int, Any]:
        try:
            batch = wire.loads(body, BatchRequest)
        except ValueError as exc:  # WireError is a ValueError; its message names the field
            return 400, {"error": f"invalid batch: {exc}"}
        job_id = uuid.uuid4().hex
        with self._lock:
            self._jobs[job_id] = {"at": time.monotonic(), "batch": batch, "cancelled": False}
        return 201, {"id": job_id}

    def _state(self, job: dict[str, Any]) -> str:
        if job["cancelled"]:
            return "cancelled"
        waited = time.monotonic() - job["at"]
        if waited < self.delay_s / 2:
            return "queued"
        return "running" if waited < self.delay_s else "done"

    def _status(self, job: dict[str, Any]) -> dict[str, Any]:
        state = self._state(job)
        if state != "done":
            return {"state": state}
        if "output" not in job:  # made once: a job's audio does not change between polls
            results = tuple(_speak(request) for request in job["batch"].requests)
            job["output"] = wire.unstructure(BatchResponse(results))
        return {"state": "done", "output": job["output"], "gpu_ms": int(self.delay_s * 1000)}


def _speak(request: Any) -> Result:
    """A tone as long as the text would take to say, within the request's length cap."""
    said = max(0.2, len(request.text) * SECONDS_PER_CHAR)
    seconds = min(said, request.max_audio_length_ms / 1000)
    t = np.arange(int(seconds * CSM_SAMPLE_RATE)) / CSM_SAMPLE_RATE
    audio = Audio((0.2 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), CSM_SAMPLE_RATE)
    gpu_ms = int(len(request.text) * 20)
    return Result(request.id, AudioData.from_audio(audio, "flac"), audio.duration_ms, gpu_ms)


def _handler_for(fake: FakeAcme) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as a real API

        def _serve(self) -> None:
            size = int(self.headers.get("Content-Length") or 0)
            if size > MAX_BODY_BYTES:
                self._send(413, {"error": f"the body is over {MAX_BODY_BYTES} bytes"}, close=True)
                return
            body = self.rfile.read(size) if size else b""
            auth = self.headers.get("Authorization", "")
            status, data = fake.answer(self.command, self.path.split("?")[0], auth, body)
            self._send(status, data)

        def _send(self, status: int, data: Any, close: bool = False) -> None:
            raw = b"" if data is None else json.dumps(data).encode("utf-8")
            self.send_response(status)
            if raw:
                self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            if close:
                self.send_header("Connection", "close")
                self.close_connection = True
            self.end_headers()
            self.wfile.write(raw)

        do_GET = do_POST = _serve

        def log_message(self, format: str, *args: Any) -> None:
            pass  # tests read `requests`, not a log on stderr

    return Handler


def main() -> None:
    parser = argparse.ArgumentParser(description="Serve the fake Acme Speech API on loopback.")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--key", default="acme-test-key", help="the API key it accepts")
    parser.add_argument("--delay", type=float, default=0.5, help="seconds a job takes")
    options = parser.parse_args()
    with FakeAcme(options.key, options.delay, port=options.port) as fake:
        print(f"fake Acme API on {fake.url} (key {options.key!r}); Ctrl-C stops it")
        with contextlib.suppress(KeyboardInterrupt):
            threading.Event().wait()


if __name__ == "__main__":
    main()
