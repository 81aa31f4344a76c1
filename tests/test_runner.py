"""Runner: batching, in-flight caps, retry, breaker, fail-over, polling, deadlines, progress."""

from __future__ import annotations

import asyncio
import email.utils
import random
import time
from pathlib import Path

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from csm_offload import JobLost, JobState, JobStatus, Rejected, TransientError, Unavailable
from csm_offload.backoff import (
    MAX_RETRY_AFTER_S,
    RetryPolicy,
    full_jitter,
    parse_retry_after,
    retry_delay,
)
from csm_offload.breaker import BreakerState, CircuitBreaker
from csm_offload.errors import PERMANENT, TOO_LONG
from csm_offload.health import HealthCache
from csm_offload.journal import Journal
from csm_offload.model import SpeechRequest
from csm_offload.plugins import Plugins
from csm_offload.router import RouteOptions, Router
from csm_offload.runner import Progress, Runner, RunnerSettings, RunResult
from tests.scripted_provider import (
    ScriptedProvider,
    completed,
    make_router,
    registered_all,
    requests_for,
    tone_for,
)

FAST = RunnerSettings(
    retry=RetryPolicy(max_retries=3, base_s=0.01, cap_s=0.05),
    first_poll_s=0.02,
    poll_min_s=0.01,
    poll_margin_s=0.005,
    deadline_s=20.0,
)
ONE = """
providers:
  a:
    kind: cloud_a
    max_batch: {batch}
    max_in_flight: {in_flight}
"""
TWO = """
providers:
  a:
    kind: cloud_a
    usd_per_second: 0.0001
    max_batch: 1
  b:
    kind: cloud_b
    usd_per_second: 0.001
    max_batch: 1
"""


def run(
    router: Router,
    requests: list[SpeechRequest],
    journal: Path,
    settings: RunnerSettings = FAST,
    progress: list[Progress] | None = None,
) -> RunResult:
    async def go() -> RunResult:
        with Journal(journal) as book:
            async with httpx.AsyncClient() as http:
                runner = Runner(router, book, http, settings, RouteOptions())
                return await runner.run(requests, progress.append if progress is not None else None)

    return asyncio.run(go())


def assert_all_ok(result: RunResult, requests: list[SpeechRequest]) -> None:
    assert result.ok, result.summary() + str([o.error for o in result.failed()])
    for request in requests:
        assert result.outcomes[request.id].audio == tone_for(request).quantized()


def test_batches_up_to_max_batch(plugins: Plugins, tmp_path: Path) -> None:
    a = ScriptedProvider("cloud_a")
    requests = requests_for(10)
    with registered_all(plugins, a=a):
        result = run(
            make_router(plugins, ONE.format(batch=4, in_flight=8)), requests, tmp_path / "j"
        )
    assert_all_ok(result, requests)
    # 10 requests over 8 job slots: batches of ceil(10 / 8) = 2, so no slot starves.
    assert a.calls["submit"] == 5
    assert sorted(len(job.batch) for job in a.jobs.values()) == [2] * 5


def test_batches_fill_up_when_there_is_work_for_every_slot(
    plugins: Plugins, tmp_path: Path
) -> None:
    a = ScriptedProvider("cloud_a")
    requests = requests_for(40)
    with registered_all(plugins, a=a):
        result = run(
            make_router(plugins, ONE.format(batch=4, in_flight=8)), requests, tmp_path / "j"
        )
    assert_all_ok(result, requests)
    assert sorted(len(job.batch) for job in a.jobs.values()) == [4] * 10


def test_long_runs_end_on_single_short_jobs(plugins: Plugins, tmp_path: Path) -> None:
    a = ScriptedProvider("cloud_a")
    requests = requests_for(80)
    with registered_all(plugins, a=a):
        result = run(
            make_router(plugins, ONE.format(batch=4, in_flight=8)), requests, tmp_path / "j"
        )
    assert_all_ok(result, requests)
    # Batches of 4, but the last slot's worth (8 shortest) go alone so no worker idles at the end.
    assert sorted(len(job.batch) for job in a.jobs.values()) == [1] * 8 + [4] * 18


def test_in_flight_cap_is_respected(plugins: Plugins, tmp_path: Path) -> None:
    a = ScriptedProvider("cloud_a", seconds_per_char=0.002)
    active = 0
    peak = 0
    submit, poll = a.submit, a.poll

    async def counting_submit(target, batch, http):  # type: ignore[no-untyped-def]
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        return await submit(target, batch, http)

    async def counting_poll(target, handle, http):  # type: ignore[no-untyped-def]
        nonlocal active
        status = await poll(target, handle, http)
        if status.state.finished:
            active -= 1
        return status

    requests = requests_for(12)
    with registered_all(plugins, a=a):
        router = make_router(plugins, ONE.format(batch=1, in_flight=3))
        provider = router.checks[0].provider
        provider.callers["submit"] = lambda **kw: counting_submit(**kw)  # type: ignore[union-attr]
        provider.callers["poll"] = lambda **kw: counting_poll(**kw)  # type: ignore[union-attr]
        result = run(router, requests, tmp_path / "j")
    assert_all_ok(result, requests)
    assert peak == 3


def test_transient_submit_error_is_retried_after_retry_after(
    plugins: Plugins, tmp_path: Path
) -> None:
    a = ScriptedProvider("cloud_a")
    a.script("submit", TransientError("429 slow down", retry_after=0.3))
    requests = requests_for(1)
    with registered_all(plugins, a=a):
        started = time.monotonic()
        result = run(
            make_router(plugins, ONE.format(batch=1, in_flight=1)), requests, tmp_path / "j"
        )
    assert time.monotonic() - started >= 0.3
    assert_all_ok(result, requests)
    assert a.calls["submit"] == 2


def test_unavailable_target_fails_over_and_is_not_retried_per_request(
    plugins: Plugins, tmp_path: Path
) -> None:
    a = ScriptedProvider("cloud_a")
    b = ScriptedProvider("cloud_b")
    a.script("submit", *[Unavailable("endpoint has no workers") for _ in range(50)])
    requests = requests_for(20)
    with registered_all(plugins, a=a, b=b):
        router = make_router(plugins, TWO)
        result = run(router, requests, tmp_path / "j")
    assert_all_ok(result, requests)
    assert {o.target for o in result.outcomes.values()} == {"b"}
    # The breaker opened on the first failure; at most a half-open probe or two followed.
    assert a.calls["submit"] <= 3
    assert b.calls["submit"] == 20


def test_failed_and_lost_jobs_are_resubmitted_poll_errors_are_not(
    plugins: Plugins, tmp_path: Path
) -> None:
    a = ScriptedProvider("cloud_a")
    a.script(
        "poll",
        TransientError("502 from the gateway"),
        lambda job: JobStatus(JobState.FAILED, error="worker crashed", exec_ms=10),
        JobLost("404 after TTL"),
    )
    requests = requests_for(1)
    with registered_all(plugins, a=a):
        result = run(
            make_router(plugins, ONE.format(batch=1, in_flight=1)), requests, tmp_path / "j"
        )
    assert_all_ok(result, requests)
    # 502 on a poll: poll again, same job. Failed, then lost: two more submissions.
    assert a.calls["submit"] == 3
    assert "worker crashed" in result.summary()


def test_per_request_error_retries_only_that_request(plugins: Plugins, tmp_path: Path) -> None:
    a = ScriptedProvider("cloud_a")
    requests = requests_for(4)
    bad = requests[2].id
    a.script("poll", lambda job: completed(job, {bad: "CUDA out of memory"}))
    with registered_all(plugins, a=a):
        result = run(
            make_router(plugins, ONE.format(batch=4, in_flight=1)), requests, tmp_path / "j"
        )
    assert_all_ok(result, requests)
    assert a.submitted[bad] == 2
    assert all(a.submitted[r.id] == 1 for r in requests if r.id != bad)


def test_an_error_that_recurs_is_not_retried_again(plugins: Plugins, tmp_path: Path) -> None:
    a = ScriptedProvider("cloud_a")
    requests = requests_for(3)
    bad = requests[1].id
    too_long = "prompt is 2100 tokens, over CSM's 2048-token context: use shorter text"
    a.script("poll", *[lambda job: completed(job, {bad: too_long}) for _ in range(10)])
    with registered_all(plugins, a=a):
        result = run(
            make_router(plugins, ONE.format(batch=3, in_flight=1)), requests, tmp_path / "j"
        )
    # Two identical answers, then the request fails alone; the others are kept.
    assert a.submitted[bad] == 2
    assert "not retried" in (result.outcomes[bad].error or "")
    assert all(result.outcomes[r.id].ok for r in requests if r.id != bad)


def test_an_error_marked_permanent_is_not_retried(plugins: Plugins, tmp_path: Path) -> None:
    a = ScriptedProvider("cloud_a")
    requests = requests_for(2)
    bad = requests[0].id
    error = f"requests[0].context[0].audio: has no samples ({PERMANENT})"
    a.script("poll", *[lambda job: completed(job, {bad: error}) for _ in range(5)])
    with registered_all(plugins, a=a):
        result = run(
            make_router(plugins, ONE.format(batch=2, in_flight=1)), requests, tmp_path / "j"
        )
    assert a.submitted[bad] == 1  # never paid for again
    assert PERMANENT in (result.outcomes[bad].error or "")
    assert result.outcomes[requests[1].id].ok


def test_a_text_too_long_for_one_request_is_split_and_joined(
    plugins: Plugins, tmp_path: Path
) -> None:
    """A worker that says a text is too long for one request gets its parts instead; the
    request the user asked for is their audio joined (and journaled under its own id)."""
    a = ScriptedProvider("cloud_a")

    def too_long_over_40(job):  # type: ignore[no-untyped-def]
        long = {r.id: f"{TOO_LONG}: use shorter text" for r in job.batch if len(r.text) > 40}
        return completed(job, long)

    a.script("poll", *[too_long_over_40 for _ in range(20)])
    text = "First part of a long text, with a clause. Second part follows it, then ends."
    request = SpeechRequest(text)
    with registered_all(plugins, a=a):
        router = make_router(plugins, ONE.format(batch=1, in_flight=2))
        result = run(router, [request], tmp_path / "j")
    outcome = result.outcomes[request.id]
    assert outcome.ok, outcome.error
    parts = [r for r in a.submitted if r != request.id]
    assert len(parts) >= 2
    assert outcome.audio is not None and outcome.audio.duration > tone_for(request).duration / 2
    # Journaled under the asked-for id: a rerun pays for nothing.
    with registered_all(plugins, a=a):
        again = run(router, [request], tmp_path / "j")
    assert again.outcomes[request.id].cached


def test_rejected_request_is_not_sent_again(plugins: Plugins, tmp_path: Path) -> None:
    a = ScriptedProvider("cloud_a")
    a.script("submit", Rejected("text too long"))
    requests = requests_for(2)
    with registered_all(plugins, a=a):
        result = run(
            make_router(plugins, ONE.format(batch=1, in_flight=1)), requests, tmp_path / "j"
        )
    failed = result.failed()
    assert len(failed) == 1 and "text too long" in (failed[0].error or "")
    assert a.calls["submit"] == 2


def test_wrong_audio_count_is_resubmitted(plugins: Plugins, tmp_path: Path) -> None:
    a = ScriptedProvider("cloud_a")

    def short(job):  # type: ignore[no-untyped-def]
        status = completed(job)
        return JobStatus(JobState.COMPLETED, status.results[:1], exec_ms=1)

    a.script("poll", short)
    requests = requests_for(2)
    with registered_all(plugins, a=a):
        result = run(
            make_router(plugins, ONE.format(batch=2, in_flight=1)), requests, tmp_path / "j"
        )
    assert_all_ok(result, requests)
    # The request that came back was kept; only the missing one went again.
    assert sorted(a.submitted.values()) == [1, 2]


def test_deadline_cancels_and_reports(plugins: Plugins, tmp_path: Path) -> None:
    a = ScriptedProvider("cloud_a", seconds_per_char=10.0)
    settings = RunnerSettings(first_poll_s=0.05, poll_min_s=0.02, deadline_s=0.5)
    requests = requests_for(1)
    with registered_all(plugins, a=a):
        started = time.monotonic()
        result = run(
            make_router(plugins, ONE.format(batch=1, in_flight=1)),
            requests,
            tmp_path / "j",
            settings,
        )
    assert time.monotonic() - started < 5
    assert "deadline" in (result.failed()[0].error or "")
    assert a.calls["cancel"] == 1
    assert next(iter(a.jobs.values())).cancelled


def test_first_poll_lands_near_the_predicted_finish(plugins: Plugins, tmp_path: Path) -> None:
    a = ScriptedProvider("cloud_a", seconds_per_char=0.004)
    with registered_all(plugins, a=a):
        router = make_router(plugins, ONE.format(batch=1, in_flight=20))
        run(router, requests_for(1, "warm up"), tmp_path / "j")
        polls_before = a.calls["poll"]
        requests = requests_for(20)
        result = run(router, requests, tmp_path / "j")
    assert_all_ok(result, requests)
    polls = a.calls["poll"] - polls_before
    assert polls <= 30, f"{polls} polls for 20 jobs"


def test_progress_reports_every_request(plugins: Plugins, tmp_path: Path) -> None:
    a = ScriptedProvider("cloud_a", seconds_per_char=0.0001)
    events: list[Progress] = []
    requests = requests_for(6)
    with registered_all(plugins, a=a):
        run(
            make_router(plugins, ONE.format(batch=2, in_flight=2)),
            requests,
            tmp_path / "j",
            progress=events,
        )
    completed_events = [e for e in events if e.event == "completed"]
    assert len(completed_events) == 6
    assert events[-1].done == 6 and events[-1].total == 6
    assert events[-1].cost_usd > 0
    assert [e.done for e in completed_events] == sorted(e.done for e in completed_events)


def test_all_candidates_failing_gives_a_per_target_summary(
    plugins: Plugins, tmp_path: Path
) -> None:
    a = ScriptedProvider("cloud_a")
    b = ScriptedProvider("cloud_b")
    a.script("submit", *[TransientError("HTTP 503") for _ in range(20)])
    b.script("submit", *[TransientError("connection reset") for _ in range(20)])
    requests = requests_for(1)
    with registered_all(plugins, a=a, b=b):
        result = run(make_router(plugins, TWO), requests, tmp_path / "j")
    assert not result.ok
    summary = result.summary()
    assert "a: " in summary and "HTTP 503" in summary
    assert "b: " in summary and "connection reset" in summary


# --- the parts of the retry loop, on their own ----------------------------------------------


@given(attempt=st.integers(min_value=0, max_value=100), seed=st.integers(0, 2**32))
def test_full_jitter_stays_within_its_cap(attempt: int, seed: int) -> None:
    policy = RetryPolicy(max_retries=3, base_s=0.25, cap_s=30.0)
    delay = full_jitter(attempt, policy, random.Random(seed))
    assert 0.0 <= delay <= min(30.0, 0.25 * 2**attempt)


@given(retry_after=st.floats(min_value=0, max_value=100), seed=st.integers(0, 2**32))
def test_retry_after_is_a_floor(retry_after: float, seed: int) -> None:
    policy = RetryPolicy(base_s=0.25, cap_s=30.0)
    delay = retry_delay(0, retry_after, policy, random.Random(seed))
    assert retry_after <= delay <= retry_after + 0.25


@given(seconds=st.integers(min_value=0, max_value=10**6))
def test_retry_after_parses_both_forms(seconds: int) -> None:
    now = 1_800_000_000.0
    expected = min(seconds, MAX_RETRY_AFTER_S)
    assert parse_retry_after(str(seconds)) == expected
    date = email.utils.formatdate(now + seconds, usegmt=True)
    assert parse_retry_after(date, now=now) == pytest.approx(expected, abs=1)


@given(text=st.text(max_size=40))
def test_retry_after_garbage_is_none_or_a_delay(text: str) -> None:
    value = parse_retry_after(text, now=0.0)
    assert value is None or value >= 0


def test_breaker_opens_half_opens_and_closes() -> None:
    now = [0.0]
    breaker = CircuitBreaker(threshold=2, cooldown_s=10, max_cooldown_s=40, clock=lambda: now[0])
    breaker.failure("503")
    assert breaker.state is BreakerState.CLOSED
    breaker.failure("503")
    assert breaker.state is BreakerState.OPEN and not breaker.available()
    now[0] = 10.0
    assert breaker.state is BreakerState.HALF_OPEN
    assert breaker.acquire() and not breaker.acquire()  # one probe only
    breaker.failure("still 503")
    assert breaker.state is BreakerState.OPEN and breaker.reopens_in() == 20.0  # doubled
    now[0] = 30.0
    assert breaker.acquire()
    breaker.success()
    assert breaker.state is BreakerState.CLOSED and breaker.opens == 0
    breaker.trip("401 unauthorized")
    assert breaker.state is BreakerState.OPEN and "401" in breaker.describe()


def test_health_cache_refreshes_in_the_background(plugins: Plugins) -> None:
    a = ScriptedProvider("cloud_a")
    a.script("health", RuntimeError("plugin bug"))

    async def go() -> None:
        with registered_all(plugins, a=a):
            router = make_router(plugins, ONE.format(batch=1, in_flight=1))
            cache = HealthCache(ttl_s=0.1)
            async with httpx.AsyncClient() as http:
                await cache.refresh(router.pairs(), http)
                first = cache.get("a")
                assert first is not None and not first.ok and "plugin bug" in first.detail
                cache.start(router.pairs(), http)
                await asyncio.sleep(0.3)
                await cache.stop()
            second = cache.get("a")
            assert second is not None and second.ok
            assert a.calls["health"] >= 2

    asyncio.run(go())
