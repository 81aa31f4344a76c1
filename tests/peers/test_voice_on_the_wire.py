"""A voice prompt on the wire: every chunk of a batch carries it, and its bytes travel once per
job, seen by the simulated RunPod cloud and by the worker server under uvicorn (tiny model)."""

from __future__ import annotations

import asyncio
from typing import Any

import csm_offload_runpod as rp
import httpx
import numpy as np
import pytest

from csm_offload import Audio, BatchRequest, JobState, Segment, SpeechRequest, Target, wire
from csm_offload.worker_client import WorkerClient
from tests.peers.test_worker_server import TOKEN, running
from tests.sim.runpod_cloud import SimulatedRunPod

pytest_plugins = ["tests.tiny_csm"]


def voice(seconds: float) -> Segment:
    rng = np.random.default_rng(7)
    samples = (0.2 * rng.standard_normal(round(24_000 * seconds))).astype(np.float32)
    return Segment(0, "This is how I sound.", Audio(samples, 24_000).quantized())


def chunks(count: int, prompt: Segment, **fields: Any) -> list[SpeechRequest]:
    return [SpeechRequest(f"Chunk number {i}.", context=(prompt,), **fields) for i in range(count)]


def record_bodies(sim: SimulatedRunPod) -> list[bytes]:
    """The raw body of every submission the simulated cloud receives."""
    bodies: list[bytes] = []
    submit = sim.cloud._submit

    async def recording(request: Any, route: str) -> Any:
        bodies.append(bytes(request.body))
        return await submit(request, route)

    sim.cloud._submit = recording  # type: ignore[method-assign]
    return bodies


def test_runpod_cloud_sees_the_voice_on_every_chunk_and_its_bytes_once() -> None:
    prompt = voice(10.0)
    batch = chunks(8, prompt)
    with SimulatedRunPod(workers=2, seconds_per_char=0.0005, overhead_s=0.01) as sim:
        bodies = record_bodies(sim)
        target = Target(
            "sim", "runpod", rp.RunPodSettings(api_key=sim.api_key, endpoint_url=sim.url)
        )

        async def go() -> Any:
            async with httpx.AsyncClient(timeout=10) as http:
                handle = await rp.submit(target=target, batch=batch, http=http)
                return await rp.poll(target=target, handle=handle, http=http)

        status = asyncio.run(go())
        assert status.state is JobState.COMPLETED
        (job,) = sim.cloud.jobs.values()
        assert [r.context for r in job.batch.requests] == [(prompt,)] * 8
        assert [r.id for r in job.batch.requests] == [r.id for r in batch]
    (body,) = bodies
    data = wire.unstructure(prompt)["audio"]["data"].encode()
    assert body.count(data) == 1
    assert len(body) < 1.1 * (
        len(wire.dumps(prompt))
        + len(wire.dumps(BatchRequest(tuple(SpeechRequest(r.text) for r in batch))))
    )


@pytest.mark.torch
def test_worker_server_gives_every_chunk_the_voice(
    tiny_engine: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from csm_offload_local_csm import server

    prompt = voice(1.0)  # the tiny model's context is small; the wire form is the same
    seen: list[SpeechRequest] = []
    sizes: list[int] = []
    parse = server._parse_body
    generate = tiny_engine.generate

    def parse_recording(body: bytes, limits: Any) -> Any:
        sizes.append(len(body))
        return parse(body, limits)

    def generate_recording(requests: Any, cancel: Any = None) -> Any:
        seen.extend(requests)
        return generate(requests, cancel)

    monkeypatch.setattr(server, "_parse_body", parse_recording)
    monkeypatch.setattr(tiny_engine, "generate", generate_recording)
    batch = BatchRequest(tuple(chunks(3, prompt, max_audio_length_ms=160, seed=1)))

    async def go(url: str) -> Any:
        async with httpx.AsyncClient(timeout=60) as http:
            client = WorkerClient(http, url, TOKEN)
            job = await client.submit(batch)
            return await client.job(job.id, wait=50)

    with running(tiny_engine, token=TOKEN) as url:
        done = asyncio.run(asyncio.wait_for(go(url), 120))
    assert done.state is JobState.COMPLETED
    assert [r.error for r in done.response.results] == [None] * 3
    assert [r.context for r in seen] == [(prompt,)] * 3
    assert [r.id for r in seen] == [r.id for r in batch.requests]
    (size,) = sizes
    assert (
        size < len(wire.dumps(prompt)) + 3 * len(wire.dumps(SpeechRequest("Chunk number 0."))) + 400
    )
