"""The cloud path under real cloud conditions, on loopback against the simulated RunPod cloud.

Each test reproduces one condition a real endpoint shows (RunPod's documented rate limits with
both `Retry-After` forms, final answers that cannot be used, a body that drips in, a gzip body
that inflates past any sane size, a job stuck in the queue, a host that dies mid-run) and
checks that the run completes with nothing lost and nothing executed twice that did not have
to be (the simulator counts every generation).
"""

from __future__ import annotations

import asyncio
import threading
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest

from csm_offload import SpeechRequest
from csm_offload.backoff import RetryPolicy
from csm_offload.breaker import Breakers
from csm_offload.config import load_config_text
from csm_offload.health import HealthCache
from csm_offload.journal import Journal
from csm_offload.liveness import Liveness
from csm_offload.manager import http_client
from csm_offload.plugins import load_plugins
from csm_offload.router import RouteOptions, Router
from csm_offload.runner import Runner, RunnerSettings, RunResult
from csm_offload.speed import SpeedBook
from csm_offload.targets import check_targets
from tests.sim.runpod_cloud import SimulatedRunPod

SETTINGS = RunnerSettings(
    retry=RetryPolicy(max_retries=4, base_s=0.02, cap_s=0.2),
    first_poll_s=0.05,
    poll_min_s=0.02,
    deadline_s=60.0,
)
TARGET = """
  {name}:
    kind: runpod
    endpoint_url: {url}
    api_key: sim-key
    use_runsync: {runsync}
    seconds_per_char: {spc}
    job_overhead_s: 0
    call_total_s: {total}
    usd_per_second: {price}
{extra}"""


@pytest.fixture
def sim() -> Iterator[SimulatedRunPod]:
    with SimulatedRunPod(workers=4, seconds_per_char=0.001) as found:
        yield found


def run_against(
    targets: list[tuple[str, SimulatedRunPod]],
    requests: list[SpeechRequest],
    tmp: Path,
    *,
    runsync: bool = False,
    settings: RunnerSettings = SETTINGS,
    total_s: float = 60.0,
    extra: str = "",
) -> tuple[RunResult, Runner]:
    blocks = "".join(
        TARGET.format(
            name=name,
            url=sim.url,
            runsync=str(runsync).lower(),
            spc=sim.cloud.seconds_per_char,
            total=total_s,
            price=0.001 * (i + 1),
            extra=extra,
        )
        for i, (name, sim) in enumerate(targets)
    )
    config = load_config_text("providers:" + blocks, "conditions.yaml", {})
    checks = check_targets(config, load_plugins(["runpod"]).providers)
    assert all(c.usable for c in checks), [c.reason for c in checks]
    router = Router(checks, config.audio.cloud_gpu, HealthCache(60), Breakers(3, 0.3), SpeedBook())

    async def go() -> tuple[RunResult, Runner]:
        with Journal(tmp / "journal.sqlite3") as journal:
            async with http_client() as http:
                runner = Runner(router, journal, http, settings, RouteOptions(cloud_gpu=True))
                result = await runner.run(requests)
            return result, runner

    return asyncio.run(go())


def requests_for(count: int, words: str = "long enough to take a while") -> list[SpeechRequest]:
    return [SpeechRequest(f"Condition test sentence {i}, {words}.") for i in range(count)]


def assert_complete(result: RunResult, requests: list[SpeechRequest]) -> None:
    assert result.ok, result.summary()
    assert {o.request_id for o in result.outcomes.values() if o.ok} == {r.id for r in requests}


def test_a_burst_of_429s_is_paced_not_failed(tmp_path: Path) -> None:
    """Under RunPod's documented limits (windows scaled down to a tenth of a second), a run
    far above the allowed rate finishes with no failure: 429s slow it down, never count
    against the target, and nothing runs twice. The 429s carry `Retry-After` in both forms,
    delta-seconds and HTTP-date, in turn."""
    with SimulatedRunPod(
        workers=50,
        seconds_per_char=0.0002,
        rate_limits=True,
        rate_scale=0.01,
        retry_after_form="alternate",
    ) as sim:
        requests = requests_for(150, "short")
        result, runner = run_against([("sim", sim)], requests, tmp_path, extra="    max_batch: 1\n")
        stats = sim.stats()
    assert_complete(result, requests)
    assert sum(stats["rate_limited"].values()) >= 2, stats
    assert runner.pacers.limited(), "the runner saw no 429 at all"
    assert stats["executed_twice"] == 0
    assert not result.failures  # a 429 is never a failure of the target
    assert runner.breakers.of("sim").opens == 0


def test_rate_limited_run_of_many_segments_completes_at_one_request_per_job(
    tmp_path: Path,
) -> None:
    """The 8,000-segment run of the issue, sized down for CI: 1,500 segments on 200 workers
    under the documented limits (scaled to 2.5 s windows: the same rate, but a window short
    enough for the run to cross several), built-in in-flight and batch defaults except one
    segment per job, so every segment is a request. (With 1 s windows the client's paced
    requests reach the server bunched by the machine's scheduling, so the 429 count swung from
    5 % to 25 % of requests with the load of the machine; real windows are 10 s.)"""
    with SimulatedRunPod(
        workers=200, seconds_per_char=0.0005, rate_limits=True, rate_scale=0.25, validate=False
    ) as sim:
        requests = requests_for(1500, "short")
        started = time.monotonic()
        result, _runner = run_against(
            [("sim", sim)], requests, tmp_path, runsync=True, extra="    max_batch: 1\n"
        )
        wall = time.monotonic() - started
        stats = sim.stats()
    assert_complete(result, requests)
    assert stats["executed_twice"] == 0
    requests_per_job = sum(stats["requests"].values()) / stats["jobs"]["submitted"]
    assert requests_per_job <= 1.2, stats["requests"]
    assert wall < 60


@pytest.mark.parametrize("kind", ["no_output", "wrong_id"])
def test_final_but_unusable_answers_are_resubmitted_at_once(
    sim: SimulatedRunPod, tmp_path: Path, kind: str
) -> None:
    sim.inject_job(kind, count=2)
    requests = requests_for(6)
    started = time.monotonic()
    result, _runner = run_against([("sim", sim)], requests, tmp_path)
    assert_complete(result, requests)
    # Not re-polled with backoff for minutes: resubmitted as soon as the answer came.
    assert time.monotonic() - started < 10
    assert sim.stats()["jobs"]["submitted"] <= 6 + 2


def test_undecodable_audio_keeps_the_good_results_of_its_batch(
    sim: SimulatedRunPod, tmp_path: Path
) -> None:
    sim.inject_job("undecodable_audio")
    requests = requests_for(4)
    result, _runner = run_against([("sim", sim)], requests, tmp_path, extra="    max_batch: 4\n")
    assert_complete(result, requests)


def test_a_dripping_body_is_cut_off_by_the_total_bound(
    sim: SimulatedRunPod, tmp_path: Path
) -> None:
    """A status body sent a few bytes at a time (every gap far below the read timeout) would
    hold the job for minutes; the call's total bound cuts it and the next poll succeeds."""
    sim.inject("status", "drip", count=1, delay_s=0.05, chunk_bytes=16)
    requests = requests_for(1)
    started = time.monotonic()
    result, _runner = run_against([("sim", sim)], requests, tmp_path, total_s=1.0)
    assert_complete(result, requests)
    assert time.monotonic() - started < 10
    assert sim.stats()["executed_twice"] == 0


def test_a_gzip_bomb_is_never_inflated_whole(sim: SimulatedRunPod, tmp_path: Path) -> None:
    sim.inject("status", "gzip_bomb", count=1, inflate_bytes=1024**3)
    requests = requests_for(1)
    tracemalloc.start()
    try:
        result, _runner = run_against([("sim", sim)], requests, tmp_path)
        _now, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert_complete(result, requests)
    # The bound on a decoded body is 64 MiB; the bomb inflates to 1 GiB.
    assert peak < 200 * 1024 * 1024, f"peak {peak / 1e6:.0f} MB"


def test_a_stuck_job_is_cancelled_and_resubmitted(sim: SimulatedRunPod, tmp_path: Path) -> None:
    sim.inject_job("stuck")
    requests = requests_for(12)
    liveness = Liveness(stuck_min_s=0.5, stuck_factor=3.0, stuck_overtaken_by=3)
    settings = attrs.evolve(SETTINGS, liveness=liveness)
    started = time.monotonic()
    result, _runner = run_against(
        [("sim", sim)], requests, tmp_path, settings=settings, extra="    max_batch: 1\n"
    )
    assert_complete(result, requests)
    stats = sim.stats()
    assert stats["jobs"].get("cancelled", 0) >= 1
    assert stats["executed_twice"] == 0
    assert time.monotonic() - started < 15  # not the run's deadline


def test_a_host_that_dies_mid_run_fails_over_within_the_bound(tmp_path: Path) -> None:
    """The cheaper target's host dies with jobs in flight: they move to the second target
    within max(dead_min_s, 2 x the predicted job time), and the run completes."""
    liveness = Liveness(dead_min_s=1.0, dead_factor=2.0)
    settings = attrs.evolve(SETTINGS, liveness=liveness, orphan_poll_s=0.2)
    with (
        SimulatedRunPod(workers=4, seconds_per_char=0.01) as first,
        SimulatedRunPod(workers=4, seconds_per_char=0.01) as second,
    ):
        requests = requests_for(12)

        async def kill_soon() -> None:
            await asyncio.sleep(0.4)
            first.kill()

        def killer() -> None:
            asyncio.run(kill_soon())

        thread = threading.Thread(target=killer)
        thread.start()
        started = time.monotonic()
        result, runner = run_against(
            [("first", first), ("second", second)],
            requests,
            tmp_path,
            settings=settings,
            extra="    max_batch: 1\n    max_in_flight: 4\n",
        )
        wall = time.monotonic() - started
        thread.join()
        first_stats, second_stats = first.stats(), second.stats()
    assert_complete(result, requests)
    assert second_stats["jobs"]["submitted"] >= 1
    assert first_stats["executed_twice"] == 0 and second_stats["executed_twice"] == 0
    # Jobs of ~0.6 s: fail-over after about 1.2 s of refused polls, then the rest on second.
    assert wall < 15
    assert runner.breakers.of("first").opens >= 1
