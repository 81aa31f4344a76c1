"""The Replicate model (plugins/replicate/cog/predict.py) inside Cog's own HTTP server, on loopback.

The `cog` package's server (coglet, `python -m cog.server.http`) runs the predictor without
Docker, as it runs inside the image Replicate builds: `setup()` loads the tiny random CSM, and
each `POST /predictions` runs one wire-format batch. Without `--upload-url` the server returns
the response file as a `data:` URL; with one it uploads the file there (a PUT, as Replicate's
own upload endpoint takes it) and returns its URL. The last test puts the real server behind
the simulated Replicate API and runs the conformance kit's live round trip through it.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import csm_offload_replicate as rep
import httpx
import pytest
from csm_offload_replicate import output, prediction

from csm_offload import BatchRequest, BatchResponse, SpeechRequest, Target, UserError, wire
from csm_offload.results import result_audio
from csm_offload.testing import ProviderConformance
from tests.sim.replicate_api import Outcome, SimulatedReplicate

pytest.importorskip("cog", reason="the cog package (tests/requirements.txt) runs the predictor")
pytest_plugins = ["tests.tiny_csm"]
pytestmark = pytest.mark.torch

COG_DIR = Path(rep.__file__).resolve().parent.parent / "cog"
TOKEN = "r8_cog_peer_token_81c4e"
START_TIMEOUT_S = 180.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_ready(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"cog server exited early:\n{log.read_text(errors='replace')}")
        with contextlib.suppress(httpx.HTTPError, ValueError):
            state = httpx.get(f"{url}/health-check", timeout=2).json().get("status")
            if state == "READY":
                return
            if state in ("SETUP_FAILED", "DEFUNCT"):
                raise AssertionError(f"cog setup failed:\n{log.read_text(errors='replace')}")
        time.sleep(0.25)
    raise AssertionError(f"cog server not ready in {START_TIMEOUT_S} s:\n{log.read_text()}")


@contextlib.contextmanager
def cog_server(model_dir: Path, log_dir: Path, upload_url: str | None = None) -> Iterator[str]:
    """`python -m cog.server.http` serving predict.py:Runner on a free loopback port."""
    port = free_port()
    log = log_dir / f"cog-{port}.log"
    env = {
        **os.environ,
        "PORT": str(port),
        "COG_PREDICT_TYPE_STUB": "predict.py:Runner",
        "CSM_OFFLOAD_MODEL": str(model_dir),
        "CSM_OFFLOAD_DEVICE": "cpu",
        # The server starts its worker as `python`: it must be this environment's.
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    command = [sys.executable, "-m", "cog.server.http", "--host", "127.0.0.1"]
    if upload_url is not None:
        command += ["--upload-url", upload_url]
    with log.open("wb") as out:
        process = subprocess.Popen(command, cwd=COG_DIR, env=env, stdout=out, stderr=out)
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_ready(url, process, log)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=20)


@pytest.fixture(scope="module")
def server(tiny_csm_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with cog_server(tiny_csm_dir, tmp_path_factory.mktemp("cog")) as url:
        yield url


def batch_json(*texts: str) -> str:
    requests = tuple(SpeechRequest(t, max_audio_length_ms=240, seed=3) for t in texts)
    return wire.dumps(BatchRequest(requests, "flac")).decode()


def predict(url: str, batch: str) -> dict[str, Any]:
    answer = httpx.post(f"{url}/predictions", json={"input": {"batch": batch}}, timeout=180)
    assert answer.status_code == 200, answer.text
    return answer.json()


def response_of(found: Any) -> BatchResponse:
    async def go() -> BatchResponse:
        async with httpx.AsyncClient(timeout=30) as http:
            return await output.response_of(found, http, "cog", 30.0)

    return asyncio.run(go())


def audio_of(response: BatchResponse) -> list[Any]:
    async def go() -> list[Any]:
        async with httpx.AsyncClient(timeout=30) as http:
            return [await result_audio(r, http) for r in response.results if r.error is None]

    return asyncio.run(go())


def test_a_batch_becomes_a_data_url_of_the_wire_response(server: str) -> None:
    answer = predict(server, batch_json("First line.", "Second line."))
    found = prediction.parse(answer)  # the object Cog makes is the one the client reads
    assert found.state.name == "COMPLETED" and (found.predict_ms or 0) > 0
    assert isinstance(answer["output"], str) and answer["output"].startswith("data:")
    response = response_of(answer["output"])
    assert [r.error for r in response.results] == [None, None]
    assert response.worker.engine_version
    for audio in audio_of(response):
        assert audio.sample_rate == 24_000 and 0 < audio.duration_ms <= 240


def test_a_malformed_request_gets_its_own_error(server: str) -> None:
    good = batch_json("Good one.")
    broken = good.replace('"requests":[', '"requests":[{"id":"broken","text":"x","topk":"many"},')
    response = response_of(predict(server, broken)["output"])
    first, second = response.results
    assert first.id == "broken" and "requests[0].topk" in (first.error or "")
    assert second.error is None and len(audio_of(response)) == 1


def test_a_malformed_batch_fails_the_prediction_not_the_model(server: str) -> None:
    failed = prediction.parse(predict(server, '{"schema": 1, "requests": "nope"}'))
    assert failed.state.name == "FAILED" and "batch.requests" in (failed.error or "")
    assert "batch" in (prediction.parse(predict(server, "not json")).error or "")
    again = predict(server, batch_json("Still alive."))
    assert again["status"] == "succeeded"


class CogBackend:
    """Runs each simulated prediction on a real Cog server."""

    def __init__(self, url: str) -> None:
        self.url = url

    async def __call__(self, data: dict[str, Any]) -> Outcome:
        async with httpx.AsyncClient(timeout=180) as http:
            answer = (await http.post(f"{self.url}/predictions", json={"input": data})).json()
        seconds = (answer.get("metrics") or {}).get("predict_time")
        status, found = answer.get("status", "failed"), answer.get("output")
        return Outcome(status, found, answer.get("error"), seconds)


def test_the_client_runs_through_the_real_predictor(
    tiny_csm_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    with SimulatedReplicate(token=TOKEN) as sim:
        log_dir = tmp_path_factory.mktemp("cog-upload")
        with cog_server(tiny_csm_dir, log_dir, upload_url=sim.upload_url) as url:
            sim.cloud.backend = CogBackend(url)
            settings = rep.ReplicateSettings(api_token=TOKEN, version=sim.version, base_url=sim.url)
            t = Target("cog", "replicate", settings, gpu="gpu-l40s")
            kit = ProviderConformance(
                rep, t, live=True, http_surface=False, max_audio_length_ms=400, timeout_s=170
            )
            kit.assert_ok()
        seen = sim.file_requests()
        assert [r["method"] for r in seen if r["path"].startswith("/uploads/")] != []
        fetched = [r for r in seen if r["method"] == "GET"]
        assert fetched and all("authorization" not in r for r in fetched)
        assert all(TOKEN not in str(r) for r in seen)


def load_predict() -> ModuleType:
    spec = importlib.util.spec_from_file_location("replicate_cog_predict", COG_DIR / "predict.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_outbox_keeps_only_the_latest_answer(tmp_path: Path) -> None:
    outbox = load_predict().Outbox(tmp_path / "out")
    first = outbox.put(b'{"a": 1}')
    second = outbox.put(b'{"b": 2}')
    assert not Path(first).exists() and Path(second).read_bytes() == b'{"b": 2}'
    assert [p.name for p in (tmp_path / "out").iterdir()] == [Path(second).name]


def test_the_runner_config_comes_from_the_environment() -> None:
    module = load_predict()
    env = {"CSM_OFFLOAD_MODEL": "/m", "CSM_OFFLOAD_MAX_BATCH": "4", "CSM_OFFLOAD_COMPILE": "1"}
    config = module.RunnerConfig.from_env(env)
    assert (config.engine.model, config.engine.compile, config.limits.max_requests) == (
        "/m",
        True,
        4,
    )
    with pytest.raises(UserError, match="CSM_OFFLOAD_MAX_BATCH must be a whole number"):
        module.RunnerConfig.from_env({"CSM_OFFLOAD_MAX_BATCH": "many"})
