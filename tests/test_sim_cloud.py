"""The simulated RunPod cloud itself: routes, auth, timing, audio, TTL, faults, counters, load,
the `runpod` SDK against it, and its standalone-process mode."""

from __future__ import annotations

import asyncio
import base64
import email.utils
import time
from collections.abc import Iterator
from typing import Any

import aiohttp
import httpx
import pytest
import runpod

from csm_offload import Audio, BatchRequest, SpeechRequest, wire
from tests.sim.runpod_cloud import SimulatedRunPod, http_date


@pytest.fixture(scope="module")
def sim() -> Iterator[SimulatedRunPod]:
    with SimulatedRunPod(workers=3, seconds_per_char=0.005, result_ttl_s=1800) as cloud:
        yield cloud


@pytest.fixture
def client(sim: SimulatedRunPod) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {sim.api_key}"}
    with httpx.Client(base_url=sim.url, headers=headers, timeout=10) as http:
        yield http
    sim.clear_faults()
    sim.set_stuck(False)
    sim.cloud.result_ttl_s = 1800


def job_input(*texts: str) -> dict[str, Any]:
    requests = tuple(SpeechRequest(t, seed=i) for i, t in enumerate(texts))
    return {"input": wire.unstructure(BatchRequest(requests))}


def wait_done(client: httpx.Client, job_id: str, limit_s: float = 10) -> dict[str, Any]:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        data = client.get(f"/status/{job_id}").json()
        if data["status"] not in ("IN_QUEUE", "IN_PROGRESS"):
            return data
        time.sleep(0.02)
    raise AssertionError(f"job {job_id} did not finish in {limit_s} s")


def audio_of(result: dict[str, Any]) -> Audio:
    return Audio.decode(base64.b64decode(result["audio"]["data"]))


def test_run_status_output_is_wire_v1_with_audio_following_the_text(
    sim: SimulatedRunPod, client: httpx.Client
) -> None:
    short, long = "Hi there.", "A much longer sentence, with a lot more to say in it." * 2
    accepted = client.post("/run", json=job_input(short, long)).json()
    assert accepted["status"] == "IN_QUEUE"
    done = wait_done(client, accepted["id"])
    assert done["status"] == "COMPLETED" and done["delayTime"] >= 0
    # Job time follows the text: 0.005 s per character of the whole batch.
    assert done["executionTime"] == pytest.approx(5 * (len(short) + len(long)), abs=150)
    output = done["output"]
    assert output["schema"] == 1 and len(output["results"]) == 2
    durations = [audio_of(r).duration for r in output["results"]]
    assert durations[0] == pytest.approx(0.06 * len(short), abs=0.01)
    assert durations[1] == pytest.approx(0.06 * len(long), abs=0.01)
    # Status is a GET in the cloud; the SDK's local test server uses POST, accept both.
    assert client.post(f"/status/{accepted['id']}").json()["status"] == "COMPLETED"


def test_auth_routes_and_methods(sim: SimulatedRunPod, client: httpx.Client) -> None:
    assert httpx.get(f"{sim.url}/health").status_code == 401
    wrong = {"Authorization": "Bearer nope"}
    assert httpx.post(f"{sim.url}/run", json=job_input("x"), headers=wrong).status_code == 401
    assert client.get(f"{sim.base_url}/other-endpoint/health").status_code == 404
    assert client.get("/run").status_code == 405
    assert client.get("/status/no-such-job").status_code == 404
    assert client.post("/run", json={"input": {"schema": 2}}).status_code == 400
    assert client.post("/run", content=b"not json").status_code == 400


def test_runsync_waits_or_answers_with_the_job_id(
    sim: SimulatedRunPod, client: httpx.Client
) -> None:
    done = client.post("/runsync", json=job_input("Quick."), params={"wait": 5000}).json()
    assert done["status"] == "COMPLETED" and done["output"]["results"]
    long_text = "x" * 300  # 1.5 s of work; the shortest wait RunPod allows is 1 s
    pending = client.post("/runsync", json=job_input(long_text), params={"wait": 10}).json()
    assert pending["status"] in ("IN_QUEUE", "IN_PROGRESS") and "output" not in pending
    assert wait_done(client, pending["id"])["status"] == "COMPLETED"


def test_results_expire_after_the_ttl(sim: SimulatedRunPod, client: httpx.Client) -> None:
    sim.cloud.result_ttl_s = 0.1
    job = client.post("/run", json=job_input("Soon gone.")).json()
    wait_done(client, job["id"])
    time.sleep(0.15)
    assert client.get(f"/status/{job['id']}").status_code == 404


def test_cancel_queued_and_running_jobs_bills_only_time_run(
    sim: SimulatedRunPod, client: httpx.Client
) -> None:
    billed = sim.stats()["billed_ms"]
    sim.set_stuck(True)
    queued = client.post("/run", json=job_input("Never runs.")).json()
    assert client.post(f"/cancel/{queued['id']}").json()["status"] == "CANCELLED"
    assert client.get(f"/status/{queued['id']}").json()["status"] == "CANCELLED"
    sim.set_stuck(False)
    running = client.post("/run", json=job_input("y" * 1000)).json()  # 5 s of work
    while client.get(f"/status/{running['id']}").json()["status"] != "IN_PROGRESS":
        time.sleep(0.02)
    time.sleep(0.2)
    client.post(f"/cancel/{running['id']}")
    done = wait_done(client, running["id"])
    assert done["status"] == "CANCELLED" and 150 <= done["executionTime"] < 2000
    assert sim.stats()["billed_ms"] - billed == done["executionTime"]
    assert client.post("/cancel/no-such-job").status_code == 404


def test_health_counts_queue_and_workers(sim: SimulatedRunPod, client: httpx.Client) -> None:
    sim.set_stuck(True)
    jobs = [client.post("/run", json=job_input(f"Queued {i}.")).json()["id"] for i in range(2)]
    stuck = client.get("/health").json()
    assert stuck["jobs"]["inQueue"] >= 2
    assert stuck["workers"]["unhealthy"] == 3 and stuck["workers"]["idle"] == 0
    assert client.get(f"/status/{jobs[0]}").json()["status"] == "IN_QUEUE"
    sim.set_stuck(False)
    assert all(wait_done(client, j)["status"] == "COMPLETED" for j in jobs)
    healthy = client.get("/health").json()
    assert healthy["workers"]["idle"] == 3 and healthy["workers"]["unhealthy"] == 0
    assert client.post("/purge-queue").json()["status"] == "completed"


def test_route_faults(sim: SimulatedRunPod, client: httpx.Client) -> None:
    sim.rate_limit("run", retry_after="7", count=2)
    for _ in range(2):
        limited = client.post("/run", json=job_input("x"))
        assert limited.status_code == 429 and limited.headers["retry-after"] == "7"
    assert client.post("/run", json=job_input("x")).status_code == 200
    sim.rate_limit("health", retry_after=http_date(30))
    when = email.utils.parsedate_to_datetime(client.get("/health").headers["retry-after"])
    assert 25 < when.timestamp() - time.time() <= 31
    sim.inject("*", "http", status=503)
    assert client.get("/health").status_code == 503
    sim.inject("health", "reset")
    with pytest.raises(httpx.TransportError):
        client.get("/health")
    sim.inject("health", "slow", delay_s=1.0)
    with pytest.raises(httpx.ReadTimeout):
        client.get("/health", timeout=0.3)
    sim.inject("health", "malformed")
    malformed = client.get("/health")
    assert malformed.status_code == 200
    with pytest.raises(ValueError, match="Expecting"):
        malformed.json()
    assert client.get("/health").status_code == 200
    fired = sim.stats()["faults_fired"]
    assert fired == {"http": 4, "reset": 1, "slow": 1, "malformed": 1}


@pytest.mark.parametrize("kind", ["no_output", "lost", "failed", "undecodable_audio", "wrong_id"])
def test_job_faults(sim: SimulatedRunPod, client: httpx.Client, kind: str) -> None:
    sim.inject_job(kind)
    job = client.post("/run", json=job_input("Faulty.")).json()
    request_id = job_input("Faulty.")["input"]["requests"][0]["id"]
    if kind == "lost":
        assert client.get(f"/status/{job['id']}").status_code == 404
        return
    done = wait_done(client, job["id"])
    if kind == "failed":
        assert done["status"] == "FAILED" and done["error"]
        return
    assert done["status"] == "COMPLETED"
    if kind == "no_output":
        assert "output" not in done
        return
    result = done["output"]["results"][0]
    if kind == "wrong_id":
        assert result["id"] != request_id
    else:
        with pytest.raises(ValueError, match="WAV or FLAC"):
            audio_of(result)


def test_counters_record_jobs_outputs_and_billing(
    sim: SimulatedRunPod, client: httpx.Client
) -> None:
    before = sim.stats()
    body = job_input("Counted once.", "Counted twice.")
    ids = [r["id"] for r in body["input"]["requests"]]
    first = wait_done(client, client.post("/run", json=body).json()["id"])
    second = wait_done(client, client.post("/run", json=job_input("Counted twice.")).json()["id"])
    after = sim.stats()
    assert after["submissions"][ids[0]] - before["submissions"].get(ids[0], 0) == 1
    assert after["generated"][ids[1]] - before["generated"].get(ids[1], 0) == 1
    assert after["billed_ms"] - before["billed_ms"] == (
        first["executionTime"] + second["executionTime"]
    )
    assert after["requests"]["run"] - before["requests"]["run"] == 2
    assert after["responses"]["run 200"] - before["responses"]["run 200"] == 2


def test_hundreds_of_concurrent_clients_and_workers() -> None:
    async def load(sim: SimulatedRunPod) -> list[dict[str, Any]]:
        headers = {"Authorization": f"Bearer {sim.api_key}"}
        connector = aiohttp.TCPConnector(limit=300)
        async with aiohttp.ClientSession(headers=headers, connector=connector) as http:

            async def one(i: int) -> dict[str, Any]:
                body = job_input(f"Sentence number {i}.")
                url = f"{sim.url}/runsync?wait=20000"
                async with http.post(url, json=body) as answer:
                    return await answer.json()

            return await asyncio.gather(*(one(i) for i in range(300)))

    with SimulatedRunPod(workers=100, job_seconds=1.0) as sim:
        started = time.monotonic()
        answers = asyncio.run(asyncio.wait_for(load(sim), 60))
        wall = time.monotonic() - started
        stats = sim.stats()
    assert all(a["status"] == "COMPLETED" for a in answers)
    assert stats["peak_in_progress"] == 100 and stats["jobs"]["completed"] == 300
    # Three waves of 1 s; a simulator that ran jobs one at a time would need 300 s.
    assert wall < 30


def test_the_runpod_sdk_works_against_it(sim: SimulatedRunPod) -> None:
    old = runpod.api_key, runpod.endpoint_url_base
    runpod.api_key, runpod.endpoint_url_base = sim.api_key, sim.base_url
    try:
        body = job_input("Through the SDK.")["input"]
        endpoint = runpod.Endpoint(sim.endpoint_id)
        assert endpoint.run_sync(body, timeout=10)["results"][0]["duration_ms"] > 0
        job = endpoint.run(body)
        assert job.output(timeout=10)["schema"] == 1 and job.status() == "COMPLETED"
        assert endpoint.health()["workers"]["unhealthy"] == 0

        async def via_asyncio() -> tuple[Any, Any]:
            async with aiohttp.ClientSession() as session:
                async_endpoint = runpod.AsyncioEndpoint(sim.endpoint_id, session)
                async_job = await async_endpoint.run(body)
                output = await async_job.output(timeout=10)
                other = await async_endpoint.run(body)
                return output, await other.cancel()

        output, cancelled = asyncio.run(via_asyncio())
        assert output["results"][0]["audio"]["format"] == "flac"
        assert cancelled["status"] in ("CANCELLED", "COMPLETED")
    finally:
        runpod.api_key, runpod.endpoint_url_base = old


def test_standalone_process_is_controlled_over_http() -> None:
    with SimulatedRunPod.spawn(workers=2, job_seconds=0.05, api_key="proc-key") as proc:
        headers = {"Authorization": "Bearer proc-key"}
        with httpx.Client(base_url=proc.url, headers=headers, timeout=10) as client:
            proc.inject("run", "http", status=502)
            assert client.post("/run", json=job_input("x")).status_code == 502
            proc.inject_job("no_output")
            job = client.post("/run", json=job_input("y")).json()
            assert "output" not in wait_done(client, job["id"])
            proc.set_stuck(True)
            assert client.get("/health").json()["workers"]["unhealthy"] == 2
            proc.set_stuck(False)
            stats = proc.stats()
        assert stats["requests"]["run"] == 2 and stats["faults_fired"] == {"http": 1}
        assert httpx.post(f"http://127.0.0.1:{proc.port}/_sim/stats").status_code == 401
    assert proc.process.returncode == 0
