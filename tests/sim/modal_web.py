"""The Modal app's web endpoint on 127.0.0.1, with no Modal account: for tests and docs checks.

- `InProcessCalls` puts a GPU method (normally `csm_offload_modal.worker.GpuWorker.run`) behind
  Modal's spawn/poll interface: `spawn` starts it on a worker thread and returns an `fc-` id,
  `result` answers like `FunctionCall.get(timeout=0)` (builtin `TimeoutError` while pending,
  `modal.exception.OutputExpiredError` once expired, the call's own exception when it failed,
  `NotFoundError` for an id it never gave). Tests can hold calls pending (`hold()`), expire them
  (`expire(id)`, `expire_next(n)`) and count spawns.
- `ProxyAuth` stands in for Modal's proxy: with `requires_proxy_auth=True` Modal refuses a
  request before it reaches the app, with HTTP 401 and a `modal-http: …` text, unless its
  `Modal-Key`/`Modal-Secret` headers name a Proxy Auth Token of the workspace. The real proxy is
  Modal's; this wrapper only reproduces what a client sees of it.
- `serving(app)` runs an ASGI app under uvicorn on a loopback port, in a thread, and stops it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import uvicorn
from csm_offload_modal.web import QueueStats
from modal.exception import NotFoundError, OutputExpiredError

ASGIApp = Callable[..., Any]
MISSING = b"modal-http: missing credentials for proxy authorization"
INVALID = b"modal-http: invalid credentials for proxy authorization"


class InProcessCalls:
    """`csm_offload_modal.web.Calls` over a function run in this process."""

    def __init__(self, method: Callable[[bytes], bytes], workers: int = 2) -> None:
        self.method = method
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="modal-call")
        self._calls: dict[str, Future[bytes]] = {}
        self._expired: set[str] = set()
        self._expire_next = 0
        self._released = threading.Event()
        self._released.set()
        self.spawned = 0
        self.cancelled: list[str] = []

    def hold(self) -> None:
        """Calls spawned from now on wait (pending) until `release()`."""
        self._released.clear()

    def release(self) -> None:
        self._released.set()

    def expire(self, call_id: str) -> None:
        """Modal has dropped this call's result (past its 7 days)."""
        self._expired.add(call_id)

    def expire_next(self, count: int = 1) -> None:
        """The next `count` calls spawned are expired by the time anyone asks for them."""
        self._expire_next = count

    def done(self, call_id: str, timeout_s: float = 60.0) -> None:
        """Wait until the call has finished (tests only)."""
        with contextlib.suppress(Exception):
            self._calls[call_id].result(timeout=timeout_s)

    def _run(self, batch: bytes) -> bytes:
        self._released.wait(timeout=120)
        return self.method(batch)

    async def spawn(self, batch: bytes) -> str:
        call_id = "fc-" + uuid.uuid4().hex
        self._calls[call_id] = self._pool.submit(self._run, batch)
        self.spawned += 1
        if self._expire_next > 0:
            self._expire_next -= 1
            self.expire(call_id)
        return call_id

    async def result(self, call_id: str) -> bytes:
        if call_id in self._expired:
            raise OutputExpiredError()
        future = self._calls.get(call_id)
        if future is None:
            raise NotFoundError(f"no function call {call_id}")
        if not future.done():
            raise TimeoutError()
        return future.result()  # raises the call's own exception

    async def cancel(self, call_id: str) -> None:
        if call_id not in self._calls:
            raise NotFoundError(f"no function call {call_id}")
        self._calls[call_id].cancel()
        self.cancelled.append(call_id)

    async def stats(self) -> QueueStats:
        waiting = sum(1 for f in self._calls.values() if not f.done())
        return QueueStats(backlog=waiting, containers=1)

    def close(self) -> None:
        self._released.set()
        self._pool.shutdown(wait=True, cancel_futures=True)


class ProxyAuth:
    """ASGI wrapper that refuses what Modal's proxy refuses (see the module docstring)."""

    def __init__(self, app: ASGIApp, key: str, secret: str) -> None:
        self.app = app
        self.key = key.encode()
        self.secret = secret.encode()
        self.refused = 0

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            headers = dict(scope["headers"])
            key, secret = headers.get(b"modal-key"), headers.get(b"modal-secret")
            if key is None or secret is None:
                return await self._refuse(send, MISSING)
            matches = hmac.compare_digest(key, self.key) & hmac.compare_digest(secret, self.secret)
            if not matches:
                return await self._refuse(send, INVALID)
        await self.app(scope, receive, send)

    async def _refuse(self, send: Any, text: bytes) -> None:
        self.refused += 1
        head = [(b"content-type", b"text/plain"), (b"content-length", str(len(text)).encode())]
        await send({"type": "http.response.start", "status": 401, "headers": head})
        await send({"type": "http.response.body", "body": text})


@contextlib.contextmanager
def serving(app: ASGIApp, start_timeout_s: float = 20.0) -> Iterator[str]:
    """`app` under uvicorn on 127.0.0.1 (a free port) in a thread; yields its base URL."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", lifespan="off", timeout_graceful_shutdown=5)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + start_timeout_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            listener.close()
            raise RuntimeError("uvicorn did not start on 127.0.0.1")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=20)
        listener.close()


def run(coro: Any, timeout_s: float = 120.0) -> Any:
    """Run a coroutine to completion, bounded in time (tests are synchronous)."""
    return asyncio.run(asyncio.wait_for(coro, timeout_s))
