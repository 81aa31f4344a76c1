"""The worker server under uvicorn on loopback, driven by `csm_offload.worker_client`."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from csm_offload import BatchRequest, JobState, SpeechRequest, UserError, WorkerInfo
from csm_offload.errors import JobLost, Rejected, TransientError, Unavailable
from csm_offload.results import result_audio
from csm_offload.secret import Secret
from csm_offload.wire import WireLimits, dumps, loads
from csm_offload.worker_client import WorkerClient, WorkerHealth, WorkerJob

pytest_plugins = ["tests.tiny_csm"]
pytestmark = pytest.mark.torch

TOKEN = Secret("test-token-" + "x" * 20)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def running(engine: Any, **overrides: Any) -> Iterator[str]:
    """The server's URL, for tests that need nothing else (see `serving`)."""
    with serving(engine, **overrides) as (url, _server):
        yield url


@contextlib.contextmanager
def serving(engine: Any, log_level: str = "warning", **overrides: Any) -> Iterator[tuple[str, Any]]:
    """The server as `serve` runs it (its listener, uvicorn and connection guard) on a loopback
    port, in a thread; only the engine is the test's. Yields the URL and the uvicorn server."""
    from csm_offload_local_csm.server import (
        ServerSettings,
        create_app,
        make_server,
        open_listener,
    )

    server_settings = ServerSettings(host="127.0.0.1", port=0, **overrides)
    listener = open_listener(server_settings)
    port = listener.getsockname()[1]
    app = create_app(lambda: engine, server_settings)
    server = make_server(app, server_settings, log_level=log_level)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive(), "uvicorn stopped before it started"
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}", server
    finally:
        server.should_exit = True
        thread.join(timeout=20)
        listener.close()


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 120))


def batch(*texts: str, ms: int = 240) -> BatchRequest:
    return BatchRequest(tuple(SpeechRequest(t, max_audio_length_ms=ms) for t in texts), "wav")


def test_auth_is_refused_without_the_token(tiny_engine: Any) -> None:
    async def scenario(url: str) -> None:
        async with httpx.AsyncClient(timeout=30) as http:
            for token in (None, Secret("wrong")):
                with pytest.raises(Unavailable, match="token"):
                    await WorkerClient(http, url, token).submit(batch("Hi."))
                with pytest.raises(Unavailable):
                    await WorkerClient(http, url, token).health()
            job = await WorkerClient(http, url, TOKEN).submit(batch("Hi."))
            assert job.state in (JobState.QUEUED, JobState.RUNNING)

    with running(tiny_engine, token=TOKEN) as url:
        run(scenario(url))


def test_oversize_bodies_and_texts_are_refused(tiny_engine: Any) -> None:
    limits = WireLimits(max_body_bytes=4096, max_text_chars=50)

    async def scenario(url: str) -> None:
        async with httpx.AsyncClient(timeout=30) as http:
            client = WorkerClient(http, url)
            with pytest.raises(Rejected, match="max_body_bytes"):
                await client.submit(batch("x" * 5000))
            too_long = await client.submit(batch("y" * 60, "Fine."))
            done = await client.job(too_long.id, wait=60)
            first, second = done.response.results
            assert "max_text_chars" in first.error
            assert second.error is None

    with running(tiny_engine, limits=limits) as url:
        run(scenario(url))


def test_queue_full_answers_429_with_retry_after(tiny_engine: Any) -> None:
    async def scenario(url: str) -> None:
        async with httpx.AsyncClient(timeout=30) as http:
            client = WorkerClient(http, url)
            accepted, refused = [], []
            for _ in range(4):
                try:
                    accepted.append(await client.submit(batch("Busy.", ms=2400)))
                except TransientError as exc:
                    refused.append(exc)
            # One job runs and one waits: with max_queue=1 the rest must be turned away.
            assert 1 <= len(accepted) <= 2
            assert refused
            assert all(exc.retry_after is not None and exc.retry_after >= 1 for exc in refused)
            raw = await http.post(f"{url}/v1/jobs", content=dumps(batch("Again.")))
            if raw.status_code == 429:
                assert int(raw.headers["Retry-After"]) >= 1

    with running(tiny_engine, max_queue=1) as url:
        run(scenario(url))


def test_long_poll_returns_when_the_job_finishes(tiny_engine: Any) -> None:
    async def scenario(url: str) -> None:
        async with httpx.AsyncClient(timeout=30) as http:
            client = WorkerClient(http, url, TOKEN)
            job = await client.submit(batch("One.", "Two."))
            started = time.monotonic()
            done = await client.job(job.id, wait=50)
            assert done.state is JobState.COMPLETED
            assert time.monotonic() - started < 45  # it returned on completion, not at 50 s
            assert done.exec_ms is not None
            for result in done.response.results:
                audio = await result_audio(result, http)
                assert audio.sample_rate == 24_000
                assert audio.frames > 0
            health = await client.health()
            assert health.ok
            assert health.seconds_per_char is not None

    with running(tiny_engine, token=TOKEN) as url:
        run(scenario(url))


def test_malformed_request_gets_its_own_error(tiny_engine: Any) -> None:
    async def scenario(url: str) -> None:
        async with httpx.AsyncClient(timeout=30) as http:
            good = dumps(batch("Good.")).decode()
            body = good.replace('"requests":[', '"requests":[{"id":"bad","text":5},', 1)
            raw = await http.post(f"{url}/v1/jobs", content=body)
            assert raw.status_code == 202
            job = loads(raw.content, WorkerJob)
            done = await WorkerClient(http, url).job(job.id, wait=60)
            bad, fine = done.response.results
            assert bad.id == "bad"
            assert "requests[0].text" in bad.error
            assert fine.error is None
            envelope = await http.post(f"{url}/v1/jobs", content=b'{"schema":2,"requests":[]}')
            assert envelope.status_code == 400
            assert "schema" in envelope.json()["error"]

    with running(tiny_engine) as url:
        run(scenario(url))


def test_cancel_and_unknown_jobs(tiny_engine: Any) -> None:
    async def scenario(url: str) -> None:
        async with httpx.AsyncClient(timeout=30) as http:
            client = WorkerClient(http, url)
            first = await client.submit(batch("Long one.", ms=1600))
            second = await client.submit(batch("Never runs."))
            cancelled = await client.cancel(second.id)
            assert cancelled.state is JobState.CANCELLED
            await client.cancel(first.id)
            finished = await client.job(first.id, wait=60)
            assert finished.state in (JobState.CANCELLED, JobState.COMPLETED)
            with pytest.raises(JobLost):
                await client.job("no-such-job")

    with running(tiny_engine) as url:
        run(scenario(url))


def test_results_expire_after_their_ttl(tiny_engine: Any) -> None:
    async def scenario(url: str) -> None:
        async with httpx.AsyncClient(timeout=30) as http:
            client = WorkerClient(http, url)
            job = await client.submit(batch("Short lived."))
            assert (await client.job(job.id, wait=60)).state is JobState.COMPLETED
            await asyncio.sleep(0.3)
            with pytest.raises(JobLost):
                await client.job(job.id)

    with running(tiny_engine, result_ttl_s=0.1) as url:
        run(scenario(url))


def test_non_loopback_without_token_is_refused() -> None:
    from csm_offload_local_csm.server import ServerSettings, check_settings, is_loopback

    with pytest.raises(UserError, match="CSM_OFFLOAD_WORKER_TOKEN"):
        check_settings(ServerSettings(host="0.0.0.0"))
    check_settings(ServerSettings(host="0.0.0.0", token=TOKEN))
    assert is_loopback("::1")
    assert is_loopback("localhost")
    assert not is_loopback("example.com")


@pytest.mark.slow
def test_serve_command_starts_and_answers_healthz(tiny_csm_dir: Path) -> None:
    port = free_port()
    env = {**os.environ, "CSM_OFFLOAD_WORKER_TOKEN": TOKEN.reveal()}
    command = [sys.executable, "-m", "csm_offload", "serve", "--model", str(tiny_csm_dir)]
    command += ["--device", "cpu", "--port", str(port)]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        health = _wait_for_health(f"http://127.0.0.1:{port}", process)
        assert health.ok
        assert health.worker.model == str(tiny_csm_dir)
    finally:
        process.terminate()
        process.wait(timeout=20)


def _wait_for_health(url: str, process: subprocess.Popen) -> WorkerHealth:
    async def poll() -> WorkerHealth:
        async with httpx.AsyncClient(timeout=5) as http:
            client = WorkerClient(http, url, TOKEN)
            while True:
                if process.poll() is not None:
                    output = process.stdout.read().decode(errors="replace")
                    raise AssertionError(f"serve exited early:\n{output}")
                try:
                    return await client.health()
                except (Unavailable, TransientError):
                    await asyncio.sleep(0.2)

    return asyncio.run(asyncio.wait_for(poll(), 90))


def test_serve_on_a_busy_port_exits_2_before_loading_the_model(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from csm_offload_local_csm import engine

    from csm_offload.cli import main

    loads: list[Any] = []

    def spy(cls: Any, options: Any = None) -> Any:
        loads.append(options)
        raise AssertionError("the model was loaded before the port was checked")

    monkeypatch.setattr(engine.CsmEngine, "load", classmethod(spy))
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        started = time.monotonic()
        with pytest.raises(SystemExit) as exited:
            main(["serve", "--port", str(port), "--model", "/nonexistent/weights"])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert f"port {port} on 127.0.0.1 is in use: choose another with --port" in err
    assert "Traceback" not in err
    assert loads == []
    assert time.monotonic() - started < 10


def test_open_listener_names_the_fix_for_each_bind_failure() -> None:
    from csm_offload_local_csm.server import ServerSettings, open_listener

    with pytest.raises(UserError, match="is not an address of this machine: choose another"):
        open_listener(ServerSettings(host="192.0.2.1", port=0))  # TEST-NET-1: never local
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(UserError, match=f"^port {port} on 127.0.0.1 is in use"):
            open_listener(ServerSettings(port=port))


def test_serve_refuses_public_bind_without_token() -> None:
    env = {k: v for k, v in os.environ.items() if k != "CSM_OFFLOAD_WORKER_TOKEN"}
    command = [sys.executable, "-m", "csm_offload", "serve", "--host", "0.0.0.0"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "CSM_OFFLOAD_WORKER_TOKEN" in done.stderr
    assert "Traceback" not in done.stderr


states = st.sampled_from(list(JobState))
small = st.none() | st.integers(min_value=0, max_value=10**9)


@settings(max_examples=60)
@given(st.text(max_size=40), states, st.none() | st.text(max_size=40), small, small)
def test_worker_job_round_trips(
    job_id: str, state: JobState, error: str | None, queue_ms: int | None, exec_ms: int | None
) -> None:
    job = WorkerJob(job_id, state, None, error, queue_ms, exec_ms)
    assert loads(dumps(job), WorkerJob) == job


@settings(max_examples=60)
@given(
    st.booleans(),
    st.text(max_size=40),
    st.integers(0, 1000),
    st.integers(0, 1),
    st.integers(1, 1000),
    st.none() | st.floats(min_value=0, max_value=1e6, allow_nan=False),
)
def test_worker_health_round_trips(
    ok: bool, detail: str, queued: int, running: int, max_queue: int, rate: float | None
) -> None:
    health = WorkerHealth(ok, detail, queued, running, max_queue, WorkerInfo("g", "m", "e"), rate)
    assert loads(dumps(health), WorkerHealth) == health


def test_worker_job_refuses_an_unknown_state() -> None:
    with pytest.raises(UserError, match="expected one of 'queued'"):
        loads(b'{"id":"a","state":"exploded","schema":1}', WorkerJob)
