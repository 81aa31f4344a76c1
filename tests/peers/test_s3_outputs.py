"""URL outputs against a real S3-protocol server on loopback (moto's server mode)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import httpx
import numpy as np
import pytest
from csm_offload_local_csm.url_outputs import BucketConfig, UrlOutputs, fit_response
from hypothesis import given, settings
from hypothesis import strategies as st
from moto.server import ThreadedMotoServer

from csm_offload import (
    Audio,
    AudioData,
    AudioUrl,
    BatchRequest,
    BatchResponse,
    Result,
    SpeechRequest,
    UserError,
    wire,
)
from csm_offload.results import result_audio
from tests.peers.runpod_local import free_port, runpod_local_server

pytest_plugins = ["tests.tiny_csm"]

BUCKET = "csm-results"
KEYS = {"BUCKET_ACCESS_KEY_ID": "testing-key", "BUCKET_SECRET_ACCESS_KEY": "testing-secret"}


@pytest.fixture(scope="module")
def s3_env() -> Iterator[dict[str, str]]:
    """moto's S3 server on a loopback port, a bucket in it, and the worker's bucket settings."""
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    try:
        client = boto3.client(
            "s3",
            endpoint_url=endpoint,
            aws_access_key_id=KEYS["BUCKET_ACCESS_KEY_ID"],
            aws_secret_access_key=KEYS["BUCKET_SECRET_ACCESS_KEY"],
            region_name="us-east-1",
        )
        client.create_bucket(Bucket=BUCKET)
        yield {"BUCKET_ENDPOINT_URL": endpoint, "CSM_OFFLOAD_BUCKET_NAME": BUCKET, **KEYS}
    finally:
        server.stop()


def tone(seconds: float) -> Audio:
    t = np.arange(round(seconds * 24_000)) / 24_000
    return Audio((0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), 24_000)


def response_of(*audios: Audio) -> BatchResponse:
    return BatchResponse(
        tuple(
            Result(f"r{i}", AudioData.from_audio(a, "wav"), a.duration_ms)
            for i, a in enumerate(audios)
        )
    )


def fetch(result: Result) -> Audio:
    async def get() -> Audio:
        async with httpx.AsyncClient(timeout=30) as http:
            return await result_audio(result, http)

    return asyncio.run(get())


def test_large_results_move_to_presigned_urls(s3_env: dict[str, str]) -> None:
    outputs = UrlOutputs(BucketConfig.from_env(s3_env))
    small, large = tone(0.1), tone(2.0)
    response = response_of(small, large)
    fitted = fit_response(response, 20_000, outputs, "job-1")
    first, second = fitted.results
    assert isinstance(first.audio, AudioData)  # the small one stays inline
    assert isinstance(second.audio, AudioUrl)
    assert second.audio.url.startswith(s3_env["BUCKET_ENDPOINT_URL"])
    assert "testing-secret" not in second.audio.url
    assert len(wire.dumps(fitted)) <= 20_000
    assert fetch(second) == large.quantized()
    # The client side decodes it like any wire response.
    assert wire.loads(wire.dumps(fitted), BatchResponse) == fitted


def test_responses_that_fit_are_untouched(s3_env: dict[str, str]) -> None:
    outputs = UrlOutputs(BucketConfig.from_env(s3_env))
    response = response_of(tone(0.1))
    assert fit_response(response, 10**7, outputs, "job-2") is response


def test_without_a_bucket_the_request_gets_an_error_naming_the_fix() -> None:
    fitted = fit_response(response_of(tone(0.1), tone(2.0)), 20_000, None, "job-3")
    first, second = fitted.results
    assert first.error is None
    assert second.audio is None
    assert "BUCKET_ENDPOINT_URL" in second.error


def test_upload_failure_fails_only_that_request(s3_env: dict[str, str]) -> None:
    broken = UrlOutputs(BucketConfig.from_env({**s3_env, "CSM_OFFLOAD_BUCKET_NAME": "missing"}))
    (result,) = fit_response(response_of(tone(2.0)), 1_000, broken, "job-4").results
    assert result.audio is None
    assert "upload failed" in result.error
    assert "testing-secret" not in result.error


def test_half_configured_bucket_is_an_error() -> None:
    assert BucketConfig.from_env({}) is None
    with pytest.raises(UserError, match="CSM_OFFLOAD_BUCKET_NAME"):
        BucketConfig.from_env({"BUCKET_ENDPOINT_URL": "http://127.0.0.1:1", **KEYS})
    config = BucketConfig.from_env(
        {"BUCKET_ENDPOINT_URL": "http://x", "CSM_OFFLOAD_BUCKET_NAME": "b", **KEYS}
    )
    assert "testing-secret" not in repr(config)
    with pytest.raises(UserError, match="EXPIRY"):
        BucketConfig.from_env(
            {
                "BUCKET_ENDPOINT_URL": "http://x",
                "CSM_OFFLOAD_BUCKET_NAME": "b",
                "CSM_OFFLOAD_URL_EXPIRY_S": "99999999",
                **KEYS,
            }
        )


@settings(max_examples=30, deadline=None)
@given(
    sizes=st.lists(st.integers(min_value=0, max_value=4000), min_size=1, max_size=5),
    limit=st.integers(min_value=200, max_value=40_000),
)
def test_fit_without_bucket_always_fits_or_moves_everything(sizes: list[int], limit: int) -> None:
    audios = [Audio(np.zeros(n, dtype=np.float32), 24_000) for n in sizes]
    response = response_of(*audios)
    fitted = fit_response(response, limit, None, "job")
    assert [r.id for r in fitted.results] == [r.id for r in response.results]
    still_inline = [r for r in fitted.results if isinstance(r.audio, AudioData)]
    assert len(wire.dumps(fitted)) <= limit or not still_inline


@pytest.mark.torch
@pytest.mark.slow
def test_handler_answers_with_urls_when_over_the_inline_limit(
    s3_env: dict[str, str], tiny_csm_dir: Path, tmp_path: Path
) -> None:
    env = {**s3_env, "CSM_OFFLOAD_MAX_INLINE_BYTES": "2000"}
    requests = tuple(SpeechRequest(t, max_audio_length_ms=240) for t in ("One.", "Two."))
    payload: dict[str, Any] = {"input": wire.unstructure(BatchRequest(requests, "wav"))}
    with runpod_local_server(tiny_csm_dir, tmp_path, env) as url:
        answer = httpx.post(f"{url}/runsync", json=payload, timeout=120).json()
    assert answer["status"] == "COMPLETED", answer
    results = wire.structure(answer["output"], BatchResponse).results
    assert all(isinstance(r.audio, AudioUrl) for r in results)
    for result in results:
        audio = fetch(result)
        assert audio.sample_rate == 24_000
        assert audio.frames > 0
