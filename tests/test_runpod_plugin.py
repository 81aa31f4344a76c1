"""The RunPod client plugin: its parsers (property tests) and every fault of the simulated cloud
mapped to the right typed error."""

from __future__ import annotations

import asyncio
import email.utils
import json
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import attrs
import csm_offload_runpod as rp
import httpx
import pytest
from csm_offload_runpod import api, endpoint, errors, status
from hypothesis import given
from hypothesis import strategies as st

from csm_offload import (
    Audio,
    AudioUrl,
    BatchResponse,
    JobHandle,
    JobLost,
    JobState,
    JobStatus,
    ProviderError,
    Rejected,
    Result,
    ResultUnusable,
    SpeechRequest,
    Target,
    TransientError,
    Unavailable,
    wire,
)
from tests.sim.runpod_cloud import SimulatedRunPod, http_date

from .strategies import results

T = TypeVar("T")
IDS = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_-]{0,20}", fullmatch=True)
BASES = st.sampled_from(
    [
        "https://api.runpod.ai/v2",
        "http://127.0.0.1:8080/v2",
        "http://localhost:9/v2",
        "https://proxy.example.com/runpod/v2",
    ]
)


def run(make: Callable[[httpx.AsyncClient], Awaitable[T]], timeout_s: float = 5.0) -> T:
    """Run `make(http)` on a fresh loop with a fresh client (short timeouts: loopback)."""

    async def main() -> T:
        async with httpx.AsyncClient(timeout=timeout_s) as http:
            return await asyncio.wait_for(make(http), 30)

    return asyncio.run(main())


@pytest.fixture(scope="module")
def sim() -> Any:
    with SimulatedRunPod(workers=4, seconds_per_char=0.001, overhead_s=0.01) as cloud:
        yield cloud


@pytest.fixture(autouse=True)
def _clean(request: pytest.FixtureRequest) -> Any:
    yield
    if "sim" in request.fixturenames:
        cloud = request.getfixturevalue("sim")
        cloud.clear_faults()
        cloud.set_stuck(False)
        cloud.cloud.result_ttl_s = 1800.0


def target(sim: SimulatedRunPod, **options: Any) -> Target:
    settings_ = rp.RunPodSettings(api_key=sim.api_key, endpoint_url=sim.url, **options)
    return Target("sim", "runpod", settings_, gpu="A100 80GB")


def batch(*texts: str) -> list[SpeechRequest]:
    return [SpeechRequest(text or "x", seed=i) for i, text in enumerate(texts or ("Hello.",))]


async def until_finished(t: Target, handle: JobHandle, http: httpx.AsyncClient) -> JobStatus:
    while True:
        found = await rp.poll(target=t, handle=handle, http=http)
        if found.state.finished:
            return found
        await asyncio.sleep(0.02)


# --- endpoint URLs ----------------------------------------------------------------------------


@given(IDS, BASES, st.sampled_from(["", "/", "/run", "/runsync", "/status", "/health"]))
def test_endpoint_url_forms_resolve_to_one_endpoint(
    endpoint_id: str, base: str, suffix: str
) -> None:
    found = endpoint.resolve(f"{base}/{endpoint_id}{suffix}", None)
    assert found == endpoint.Endpoint(base, endpoint_id)
    assert endpoint.resolve(None, endpoint_id, base) == found
    assert found.route("status", "a/b?c") == f"{base}/{endpoint_id}/status/a%2Fb%3Fc"


@given(st.text(max_size=60))
def test_endpoint_url_parsing_never_crashes(text: str) -> None:
    try:
        found = endpoint.resolve(text, None)
    except ValueError as exc:
        message = str(exc)
    else:
        assert found.url.startswith(("https://", "http://"))
        return
    assert "endpoint_url" in message


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("http://api.runpod.ai/v2/abc", "plain http"),
        ("https://user:pw@api.runpod.ai/v2/abc", "credentials"),
        ("https://api.runpod.ai/v2/abc?x=1", "query"),
        ("https://api.runpod.ai", "no endpoint id"),
        ("ftp://api.runpod.ai/v2/abc", "https://"),
    ],
)
def test_bad_endpoint_urls_are_refused_naming_the_fix(url: str, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        rp.RunPodSettings(api_key="k", endpoint_url=url)


def test_settings_need_a_key_and_an_endpoint() -> None:
    with pytest.raises(ValueError, match="api_key"):
        rp.RunPodSettings(api_key="", endpoint_id="abc")
    with pytest.raises(ValueError, match="endpoint_url"):
        rp.RunPodSettings(api_key="k")
    with pytest.raises(ValueError, match="disagrees"):
        rp.RunPodSettings(api_key="k", endpoint_url="https://api.runpod.ai/v2/a", endpoint_id="b")
    assert "sekrit" not in repr(rp.RunPodSettings(api_key="sekrit", endpoint_id="abc"))


# --- Retry-After --------------------------------------------------------------------------------


@given(st.integers(0, 10**9))
def test_retry_after_seconds(seconds: int) -> None:
    assert errors.parse_retry_after(str(seconds)) == min(seconds, errors.MAX_RETRY_AFTER_S)


@given(st.integers(-86_400, 86_400))
def test_retry_after_http_date(offset: int) -> None:
    now = 1_800_000_000.0
    header = email.utils.formatdate(now + offset, usegmt=True)
    found = errors.parse_retry_after(header, now)
    assert found == pytest.approx(min(max(offset, 0), errors.MAX_RETRY_AFTER_S), abs=1)


@given(st.text(max_size=40))
def test_retry_after_garbage_is_none_or_bounded(text: str) -> None:
    found = errors.parse_retry_after(text)
    assert found is None or 0 <= found <= errors.MAX_RETRY_AFTER_S


# --- status and health JSON ---------------------------------------------------------------------

states = st.sampled_from(sorted(status.STATES))
millis = st.none() | st.integers(0, 10**7) | st.floats(0, 1e7) | st.just("x")


@given(states, millis, millis, st.none() | st.text(max_size=20))
def test_unfinished_and_failed_states_parse(
    state: str, delay: Any, execution: Any, error: str | None
) -> None:
    data = {"id": "j", "status": state, "delayTime": delay, "executionTime": execution}
    if error is not None:
        data["error"] = error
    found = status.parse_status(data, ["r"], "t")
    if state == "COMPLETED":
        # Final, though unusable: a failed job (resubmitted at once), not a poll to repeat.
        assert found.state is JobState.FAILED and "no output" in (found.error or "")
        return
    assert found.state is status.STATES[state]
    for value, got in ((delay, found.queue_ms), (execution, found.exec_ms)):
        expected = round(value) if isinstance(value, int | float) else None
        assert got == expected
    if found.state in (JobState.FAILED, JobState.CANCELLED, JobState.TIMED_OUT):
        assert found.error


@given(st.lists(results, min_size=1, max_size=4, unique_by=lambda r: r.id), st.randoms())
def test_completed_results_come_back_in_request_order(
    found: list[Result], rng: random.Random
) -> None:
    ids = [r.id for r in found]
    shuffled = list(found)
    rng.shuffle(shuffled)
    output = wire.unstructure(BatchResponse(tuple(shuffled)))
    data = {"id": "j", "status": "COMPLETED", "executionTime": 1200, "output": output}
    parsed = status.parse_status(data, ids, "t")
    assert parsed.state is JobState.COMPLETED
    assert [r.id for r in parsed.results] == ids
    assert parsed.exec_ms == 1200
    # A missing id is left out (the runner resubmits it); the others are kept.
    partial = status.parse_status(data, [*ids, "missing"], "t")
    assert [r.id for r in partial.results] == ids
    # Results that are all for other requests make the job a failure, never misfiled audio.
    foreign = status.parse_status(data, ["other"], "t")
    assert foreign.state is JobState.FAILED and "other requests" in (foreign.error or "")


@given(st.sampled_from(["COMPLETED", "FAILED"]), st.text(min_size=1, max_size=30))
def test_handler_error_output_is_a_failed_job(state: str, message: str) -> None:
    data = {"id": "j", "status": state, "output": {"error": message}}
    found = status.parse_status(data, ["r"], "t")
    assert found.state is JobState.FAILED and found.error


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)


@given(json_values | st.fixed_dictionaries({"status": states}, optional={"output": json_values}))
def test_any_status_json_parses_or_is_a_transient_error(data: Any) -> None:
    try:
        found = status.parse_status(data, ["r"], "t")
    except TransientError:
        return
    assert isinstance(found, JobStatus)


counts = st.integers(0, 50)


@given(counts, counts, counts, counts, counts, counts, st.none() | counts)
def test_health_judgement(
    queued: int, idle: int, running: int, initializing: int, unhealthy: int, ready: int, prev: Any
) -> None:
    data = {
        "jobs": {"inQueue": queued, "inProgress": running},
        "workers": {
            "idle": idle,
            "ready": ready,
            "running": running,
            "initializing": initializing,
            "unhealthy": unhealthy,
        },
    }
    found = status.judge_health(status.parse_health_counts(data, "t"), prev, 1.0)
    serving = idle + ready + running
    all_unhealthy = unhealthy > 0 and serving == 0
    growing = queued > 0 and serving == 0 and initializing == 0 and prev is not None
    growing = growing and queued > prev
    assert found.ok is not (all_unhealthy or growing)
    assert found.queue_depth == queued
    assert found.workers == serving + initializing + unhealthy


@given(json_values)
def test_any_health_json_parses_or_is_a_transient_error(data: Any) -> None:
    try:
        counts = status.parse_health_counts(data, "t")
    except TransientError:
        return
    assert min(attrs.astuple(counts)) >= 0


# --- costs ------------------------------------------------------------------------------------


def test_estimate_uses_the_dated_table_or_the_override() -> None:
    base = rp.RunPodSettings(api_key="k", endpoint_id="abc", seconds_per_char=0.1)
    t = Target("t", "runpod", base, gpu="H100")
    found = rp.estimate_cost(target=t, batch=[SpeechRequest("a" * 100)])
    assert found.gpu_seconds == pytest.approx(1.0 + 10.0)
    assert found.usd == pytest.approx(11.0 * rp.PRICES.usd_per_second["H100"])
    assert "2026-06-01" in found.basis and "H100" in found.basis
    override = Target("t", "runpod", base, gpu="H100", usd_per_second=0.01)
    assert rp.estimate_cost(target=override, batch=[SpeechRequest("a" * 100)]).usd == 0.11
    unknown = Target("t", "runpod", base, gpu="TPU")
    assert "not in RunPod's price table" in rp.estimate_cost(target=unknown, batch=[]).basis
    done = JobStatus(JobState.COMPLETED, exec_ms=2500)
    assert rp.actual_cost(t, done) == pytest.approx(2.5 * rp.PRICES.usd_per_second["H100"])
    assert rp.actual_cost(t, JobStatus(JobState.COMPLETED)) is None


# --- against the simulated cloud --------------------------------------------------------------


def test_short_jobs_use_runsync_and_poll_needs_no_request(sim: SimulatedRunPod) -> None:
    t = target(sim)
    before = sim.stats()["requests"].get("status", 0)

    async def go(http: httpx.AsyncClient) -> tuple[JobHandle, JobStatus, list[Audio]]:
        handle = await rp.submit(target=t, batch=batch("Hello there.", "Hi."), http=http)
        found = await rp.poll(target=t, handle=handle, http=http)
        return handle, found, await rp.decode(target=t, status=found, http=http)

    handle, found, audios = run(go)
    assert handle.extra["route"] == "runsync" and "status" in handle.extra
    assert found.state is JobState.COMPLETED and found.exec_ms is not None
    assert sim.stats()["requests"].get("status", 0) == before
    assert audios[0].duration > audios[1].duration > 0


def test_a_damaged_inline_answer_is_asked_for_again(sim: SimulatedRunPod) -> None:
    t = target(sim)

    async def go(http: httpx.AsyncClient) -> JobStatus:
        handle = await rp.submit(target=t, batch=batch("Hello again."), http=http)
        rp._parsed.take(handle.job_id)  # as in a new process: nothing parsed in memory yet
        damaged = attrs.evolve(handle, extra={**handle.extra, "status": '{"id": "j", "sta'})
        return await rp.poll(target=t, handle=damaged, http=http)

    before = sim.stats()["requests"].get("status", 0)
    assert run(go).state is JobState.COMPLETED
    assert sim.stats()["requests"]["status"] == before + 1


def test_long_jobs_use_run_and_status(sim: SimulatedRunPod) -> None:
    t = target(sim, use_runsync=False)

    async def go(http: httpx.AsyncClient) -> tuple[JobHandle, JobStatus]:
        handle = await rp.submit(target=t, batch=batch("A longer sentence."), http=http)
        return handle, await until_finished(t, handle, http)

    handle, found = run(go)
    assert handle.extra == {"route": "run"}
    assert found.state is JobState.COMPLETED and found.results[0].id == handle.request_ids[0]


def test_runsync_that_outlasts_its_wait_is_polled() -> None:
    with SimulatedRunPod(workers=1, job_seconds=2.4) as slow:
        t = target(slow, seconds_per_char=0.0, job_overhead_s=0.0, runsync_max_wait_s=2.0)

        async def go(http: httpx.AsyncClient) -> tuple[JobHandle, JobStatus]:
            handle = await rp.submit(target=t, batch=batch("Hi."), http=http)
            return handle, await until_finished(t, handle, http)

        handle, found = run(go)
        assert "status" not in handle.extra and found.state is JobState.COMPLETED
        assert slow.stats()["requests"]["status"] >= 1


@pytest.mark.parametrize(
    ("retry_after", "low", "high"), [("3", 3, 3), ("DATE", 18, 21), (None, None, None)]
)
def test_429_is_transient_with_retry_after(
    sim: SimulatedRunPod, retry_after: str | None, low: Any, high: Any
) -> None:
    header = http_date(20) if retry_after == "DATE" else retry_after
    sim.rate_limit("runsync", retry_after=header)
    with pytest.raises(TransientError, match="429") as caught:
        run(lambda http: rp.submit(target=target(sim), batch=batch(), http=http))
    if low is None:
        assert caught.value.retry_after is None
    else:
        assert low <= caught.value.retry_after <= high


@pytest.mark.parametrize("code", [500, 502, 503, 504])
def test_5xx_is_transient(sim: SimulatedRunPod, code: int) -> None:
    sim.inject("run", "http", status=code)
    with pytest.raises(TransientError, match=str(code)):
        run(lambda http: rp.submit(target=target(sim, use_runsync=False), batch=batch(), http=http))


@pytest.mark.parametrize(
    ("kind", "route", "hook"),
    [
        ("reset", "run", "submit"),
        ("reset", "status", "poll"),
        ("malformed", "run", "submit"),
        ("malformed", "status", "poll"),
        ("slow", "status", "poll"),
    ],
)
def test_transport_faults_are_transient(
    sim: SimulatedRunPod, kind: str, route: str, hook: str
) -> None:
    t = target(sim, use_runsync=False)
    handle = JobHandle("sim", "no-such-job", ("r",))
    sim.inject(route, kind, delay_s=2.0)

    async def go(http: httpx.AsyncClient) -> Any:
        if hook == "submit":
            return await rp.submit(target=t, batch=batch(), http=http)
        return await rp.poll(target=t, handle=handle, http=http)

    with pytest.raises(TransientError):
        run(go, timeout_s=0.5)


def job_fault_outcome(sim: SimulatedRunPod, kind: str) -> Any:
    sim.inject_job(kind)
    t = target(sim, use_runsync=False)

    async def go(http: httpx.AsyncClient) -> Any:
        handle = await rp.submit(target=t, batch=batch("Hello."), http=http)
        found = await until_finished(t, handle, http)
        return found, await rp.decode(target=t, status=found, http=http)

    return run(go)


@pytest.mark.parametrize(
    ("kind", "error", "words"),
    [
        ("lost", JobLost, "no longer knows"),
        ("undecodable_audio", ResultUnusable, "unreadable audio"),
    ],
)
def test_job_faults_map_to_typed_errors(
    sim: SimulatedRunPod, kind: str, error: type[Exception], words: str
) -> None:
    with pytest.raises(error, match=words):
        job_fault_outcome(sim, kind)


@pytest.mark.parametrize(("kind", "words"), [("no_output", "no output"), ("wrong_id", "other")])
def test_final_but_unusable_answers_are_failed_jobs(
    sim: SimulatedRunPod, kind: str, words: str
) -> None:
    """Polling again cannot help: the job is over, and the runner resubmits at once."""
    sim.inject_job(kind)
    t = target(sim, use_runsync=False)

    async def go(http: httpx.AsyncClient) -> JobStatus:
        handle = await rp.submit(target=t, batch=batch("Hello."), http=http)
        return await until_finished(t, handle, http)

    found = run(go)
    assert found.state is JobState.FAILED and words in (found.error or "")
    assert found.exec_ms is not None  # what it cost is still known


def test_failed_job_is_a_failed_status(sim: SimulatedRunPod) -> None:
    sim.inject_job("failed")
    t = target(sim, use_runsync=False)

    async def go(http: httpx.AsyncClient) -> JobStatus:
        handle = await rp.submit(target=t, batch=batch(), http=http)
        return await until_finished(t, handle, http)

    found = run(go)
    assert found.state is JobState.FAILED and "RuntimeError" in (found.error or "")


def test_result_past_its_ttl_is_lost(sim: SimulatedRunPod) -> None:
    sim.cloud.result_ttl_s = 0.05
    t = target(sim, use_runsync=False)

    async def go(http: httpx.AsyncClient) -> Any:
        handle = await rp.submit(target=t, batch=batch(), http=http)
        await until_finished(t, handle, http)
        await asyncio.sleep(0.1)
        return await rp.poll(target=t, handle=handle, http=http)

    with pytest.raises(JobLost):
        run(go)


def test_stuck_queue_with_unhealthy_workers_is_unavailable(sim: SimulatedRunPod) -> None:
    sim.set_stuck(True)
    t = target(sim, use_runsync=False, stuck_after_s=0.0)

    async def go(http: httpx.AsyncClient) -> Any:
        health = await rp.health(target=t, http=http)
        assert not health.ok and "unhealthy" in health.detail
        handle = await rp.submit(target=t, batch=batch(), http=http)
        try:
            return await rp.poll(target=t, handle=handle, http=http)
        finally:
            await rp.cancel(target=t, handle=handle, http=http)

    with pytest.raises(Unavailable, match="queued"):
        run(go)


def test_a_failed_health_call_is_no_evidence_of_a_stuck_queue(sim: SimulatedRunPod) -> None:
    sim.set_stuck(True)
    t = target(sim, use_runsync=False, stuck_after_s=0.0)
    base = endpoint.parse_endpoint_url(sim.url).url
    rp._recent_health.pop(base, None)  # nothing judged recently: the poll must ask

    async def go(http: httpx.AsyncClient) -> JobStatus:
        handle = await rp.submit(target=t, batch=batch(), http=http)
        sim.inject("health", "http", status=503)
        try:
            return await rp.poll(target=t, handle=handle, http=http)
        finally:
            await rp.cancel(target=t, handle=handle, http=http)

    assert run(go).state is JobState.QUEUED
    assert sim.stats()["faults_fired"].get("http", 0) >= 1


def test_queued_job_is_not_stuck_before_its_time(sim: SimulatedRunPod) -> None:
    sim.set_stuck(True)
    t = target(sim, use_runsync=False)

    async def go(http: httpx.AsyncClient) -> JobStatus:
        handle = await rp.submit(target=t, batch=batch(), http=http)
        found = await rp.poll(target=t, handle=handle, http=http)
        await rp.cancel(target=t, handle=handle, http=http)
        return found

    assert run(go).state is JobState.QUEUED


def test_bad_key_is_unavailable_and_never_shown(sim: SimulatedRunPod) -> None:
    secret = "rp_wrong_key_123456"
    t = Target("sim", "runpod", rp.RunPodSettings(api_key=secret, endpoint_url=sim.url))
    with pytest.raises(Unavailable, match="api_key") as caught:
        run(lambda http: rp.submit(target=t, batch=batch(), http=http))
    assert secret not in f"{caught.value} {caught.value!r}"
    health = run(lambda http: rp.health(target=t, http=http))
    assert not health.ok and secret not in health.detail


def test_400_is_rejected_and_unknown_endpoint_unavailable(sim: SimulatedRunPod) -> None:
    sim.inject("runsync", "http", status=400)
    with pytest.raises(Rejected):
        run(lambda http: rp.submit(target=target(sim), batch=batch(), http=http))
    other = Target(
        "sim", "runpod", rp.RunPodSettings(api_key=sim.api_key, endpoint_url=sim.url + "-x")
    )
    with pytest.raises(Unavailable, match="no such endpoint"):
        run(lambda http: rp.submit(target=other, batch=batch(), http=http))


def test_cancel_queued_job_and_forgotten_job(sim: SimulatedRunPod) -> None:
    sim.set_stuck(True)
    t = target(sim, use_runsync=False)

    async def go(http: httpx.AsyncClient) -> JobStatus:
        handle = await rp.submit(target=t, batch=batch(), http=http)
        await rp.cancel(target=t, handle=handle, http=http)
        await rp.cancel(target=t, handle=JobHandle("sim", "gone", ("r",)), http=http)
        return await rp.poll(target=t, handle=handle, http=http)

    assert run(go).state is JobState.CANCELLED


def test_oversized_jobs_are_refused_before_sending(
    sim: SimulatedRunPod, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(api, "RUN_MAX_BYTES", 1_000)
    monkeypatch.setattr(api, "RUNSYNC_MAX_BYTES", 2_000)
    sent = sim.stats()["requests"]
    with pytest.raises(Rejected, match="URL outputs"):
        run(lambda http: rp.submit(target=target(sim), batch=batch("x" * 3_000), http=http))
    assert sim.stats()["requests"] == sent
    # Between the two limits a long job still goes, through /runsync (it takes 20 MB).
    t = target(sim, use_runsync=False)
    handle = run(lambda http: rp.submit(target=t, batch=batch("y" * 1_500), http=http))
    assert handle.extra["route"] == "runsync"


def test_batch_limits_are_refused_before_sending(sim: SimulatedRunPod) -> None:
    t = target(sim)
    for bad in ([], batch(*["x"] * 17), [SpeechRequest("x" * 5_001)]):
        with pytest.raises(Rejected):
            run(lambda http, b=bad: rp.submit(target=t, batch=b, http=http))


def test_key_goes_only_to_the_endpoint_host() -> None:
    """Every request carries the key to the endpoint's host; a URL result is fetched without it,
    and a redirect is never followed."""
    seen: list[httpx.Request] = []
    audio = Audio.silence(0.2).encode("flac")

    def respond(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.host == "bucket.example":
            return httpx.Response(200, content=audio)
        if request.url.path.endswith("/health"):
            return httpx.Response(302, headers={"Location": "https://evil.example/"})
        url_result = {"id": "r", "audio": {"url": "https://bucket.example/a.flac"}}
        output = {"schema": 1, "results": [url_result]}
        return httpx.Response(200, json={"id": "j", "status": "COMPLETED", "output": output})

    t = Target("t", "runpod", rp.RunPodSettings(api_key="sekrit", endpoint_id="abc"))
    handle = JobHandle("t", "j", ("r",))

    async def go() -> Any:
        async with httpx.AsyncClient(transport=httpx.MockTransport(respond)) as http:
            found = await rp.poll(target=t, handle=handle, http=http)
            assert isinstance(found.results[0].audio, AudioUrl)
            health = await rp.health(target=t, http=http)
            return await rp.decode(target=t, status=found, http=http), health

    audios, health = asyncio.run(go())
    assert audios[0].duration == pytest.approx(0.2) and not health.ok
    for request in seen:
        has_key = request.headers.get("authorization") == "Bearer sekrit"
        assert has_key == (request.url.host == "api.runpod.ai"), request.url
    assert all(r.url.host != "evil.example" for r in seen)


def test_runsync_wait_is_bounded() -> None:
    assert api.wait_ms(0) == 30_000
    assert api.wait_ms(10_000) == api.MAX_WAIT_MS
    assert api.wait_ms(0.0001) >= api.MIN_WAIT_MS


def test_errors_are_provider_errors_naming_the_route() -> None:
    response = httpx.Response(418, content=json.dumps({"error": "teapot"}).encode())
    found = errors.error_for_response(response, "run", "t")
    assert isinstance(found, ProviderError) and "run" in str(found) and "teapot" in str(found)
    assert errors.error_for_response(httpx.Response(200), "run", "t") is None


def test_health_reports_queue_and_workers(sim: SimulatedRunPod) -> None:
    found = run(lambda http: rp.health(target=target(sim), http=http))
    assert found.ok and found.workers == 4 and found.queue_depth == 0
    assert time.time() - found.checked_at < 5
