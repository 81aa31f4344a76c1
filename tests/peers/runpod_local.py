"""The RunPod handler inside the `runpod` package's own local API server, as a subprocess.

That server (`handler.py --rp_serve_api`) serves /run, /runsync and POST /status/{id} on
loopback with no auth; `/run` only stores the job, which runs when its status is first asked.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import csm_offload_runpod

HANDLER = Path(csm_offload_runpod.__file__).with_name("handler.py")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for_port(port: int, process: subprocess.Popen, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"handler exited early:\n{log.read_text(errors='replace')}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.1)
    raise AssertionError(f"handler did not listen in {timeout} s:\n{log.read_text()}")


@contextlib.contextmanager
def runpod_local_server(
    model_dir: Path, log_dir: Path, env: Mapping[str, str] | None = None
) -> Iterator[str]:
    """Start the handler's local API server on a free loopback port; yield its base URL."""
    port = free_port()
    log = log_dir / f"handler-{port}.log"
    full_env = {
        **os.environ,
        "CSM_OFFLOAD_MODEL": str(model_dir),
        "CSM_OFFLOAD_DEVICE": "cpu",
        **(env or {}),
    }
    command = [sys.executable, str(HANDLER), "--rp_serve_api", "--rp_api_port", str(port)]
    command += ["--rp_api_host", "127.0.0.1"]
    with log.open("wb") as out:
        process = subprocess.Popen(
            command, cwd=HANDLER.parent, env=full_env, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        _wait_for_port(port, process, log, timeout=120)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=20)
