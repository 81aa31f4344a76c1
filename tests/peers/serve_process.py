"""`csm-offload serve` with the tiny model on a loopback port, in a subprocess: the real worker
server that the Thunder and `worker` targets' peer tests drive."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Serve:
    """One server with its own token; `start` waits until it answers /healthz (`launch` does
    not, so several can load their models at once)."""

    def __init__(
        self,
        model: Path,
        log: Path,
        token: str,
        *,
        port: int | None = None,
        max_queue: int | None = None,
        start_s: float = 90.0,
    ) -> None:
        self.model, self.log, self.token = model, log, token
        self.port = port or free_port()
        self.max_queue, self.start_s = max_queue, start_s
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def launch(self) -> Serve:
        command = [sys.executable, "-m", "csm_offload", "serve", "--model", str(self.model)]
        command += ["--device", "cpu", "--host", "127.0.0.1", "--port", str(self.port)]
        if self.max_queue is not None:
            command += ["--max-queue", str(self.max_queue)]
        env = {**os.environ, "CSM_OFFLOAD_WORKER_TOKEN": self.token}
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(command, env=env, stdout=log, stderr=log)
        return self

    def start(self) -> Serve:
        self.launch()
        self.wait_healthy()
        return self

    def wait_healthy(self) -> dict[str, Any]:
        deadline = time.monotonic() + self.start_s
        while time.monotonic() < deadline:
            assert self.process is not None and self.process.poll() is None, self.log.read_text()
            with contextlib.suppress(httpx.HTTPError):
                return self.healthz()
            time.sleep(0.1)
        raise AssertionError(f"serve did not answer within {self.start_s:g} s")

    def healthz(self) -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {self.token}"}
        answer = httpx.get(f"{self.url}/healthz", headers=headers, timeout=2.0)
        answer.raise_for_status()
        return dict(answer.json())

    def kill(self) -> None:
        """The server's process dies at once (SIGKILL): every job it held is gone."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=20)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()
