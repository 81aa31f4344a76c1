"""The RunPod handler in runpod's local API server, driven over HTTP with wire-format bodies."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from csm_offload import BatchRequest, BatchResponse, SpeechRequest, wire
from csm_offload.results import result_audio
from tests.peers.runpod_local import runpod_local_server

pytest_plugins = ["tests.tiny_csm"]
pytestmark = pytest.mark.torch


@pytest.fixture(scope="module")
def server(tiny_csm_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with runpod_local_server(tiny_csm_dir, tmp_path_factory.mktemp("runpod")) as url:
        yield url


def body(*texts: str) -> dict[str, Any]:
    requests = tuple(SpeechRequest(t, max_audio_length_ms=240, seed=3) for t in texts)
    return {"input": wire.unstructure(BatchRequest(requests, "flac"))}


def post(url: str, payload: Any) -> dict[str, Any]:
    response = httpx.post(url, json=payload, timeout=120)
    assert response.status_code == 200, response.text
    return response.json()


def decode(output: Any) -> list[Any]:
    response = wire.structure(output, BatchResponse)

    async def fetch() -> list[Any]:
        async with httpx.AsyncClient() as http:
            return [await result_audio(r, http) for r in response.results if r.error is None]

    return asyncio.run(fetch())


def test_runsync_returns_audio_for_every_request(server: str) -> None:
    answer = post(f"{server}/runsync", body("First line.", "Second line."))
    assert answer["status"] == "COMPLETED", answer
    response = wire.structure(answer["output"], BatchResponse)
    assert [r.error for r in response.results] == [None, None]
    assert response.worker.engine_version
    for audio in decode(answer["output"]):
        assert audio.sample_rate == 24_000
        assert 0 < audio.duration_ms <= 240


def test_malformed_request_gets_its_own_error(server: str) -> None:
    payload = body("Good one.")
    payload["input"]["requests"].insert(0, {"id": "broken", "text": "x", "topk": "many"})
    answer = post(f"{server}/runsync", payload)
    assert answer["status"] == "COMPLETED", answer
    broken, good = wire.structure(answer["output"], BatchResponse).results
    assert broken.id == "broken"
    assert "requests[0].topk" in broken.error
    assert good.error is None
    assert len(decode(answer["output"])) == 1


def test_malformed_envelope_fails_the_job_not_the_worker(server: str) -> None:
    answer = post(f"{server}/runsync", {"input": {"schema": 99, "requests": []}})
    assert answer["status"] == "FAILED"
    assert "schema" in answer["error"]
    answer = post(f"{server}/runsync", {"input": {"schema": 1, "requests": "nope"}})
    assert answer["status"] == "FAILED"
    assert "input.requests" in answer["error"]
    # The same worker still answers good work afterwards.
    again = post(f"{server}/runsync", body("Still alive."))
    assert again["status"] == "COMPLETED"


def test_run_then_status(server: str) -> None:
    queued = post(f"{server}/run", body("Queued work."))
    assert queued["status"] == "IN_PROGRESS"
    # The local server runs the job when its status is first asked for (a POST there).
    done = post(f"{server}/status/{queued['id']}", {})
    assert done["status"] == "COMPLETED", done
    (audio,) = decode(done["output"])
    assert audio.sample_rate == 24_000
