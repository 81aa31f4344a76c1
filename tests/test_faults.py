"""Every fault the simulated RunPod cloud can inject is survived by the runner.

Each case runs a small batch against the real RunPod plugin and a simulated endpoint on
loopback, injects one kind of fault, and checks that every request completes (through retry or
fail-over), that the journal holds exactly one result per request, and that nothing was
generated or paid twice except the jobs whose output the fault itself spoiled.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from csm_offload import SpeechRequest
from csm_offload.backoff import RetryPolicy
from csm_offload.breaker import Breakers
from csm_offload.config import load_config_text
from csm_offload.health import HealthCache
from csm_offload.journal import Journal
from csm_offload.plugins import load_plugins
from csm_offload.router import RouteOptions, Router
from csm_offload.runner import Runner, RunnerSettings, RunResult
from csm_offload.speed import SpeedBook
from csm_offload.targets import check_targets
from tests.sim.runpod_cloud import SimulatedRunPod, http_date

SETTINGS = RunnerSettings(
    retry=RetryPolicy(max_retries=4, base_s=0.02, cap_s=0.2),
    first_poll_s=0.05,
    poll_min_s=0.02,
    deadline_s=30.0,
)
TARGET = """
  {name}:
    kind: runpod
    endpoint_url: {url}
    api_key: sim-key
    max_batch: 2
    max_in_flight: 4
    use_runsync: {runsync}
    seconds_per_char: 0.001
    job_overhead_s: 0
    stuck_after_s: 0.3
    usd_per_second: {price}
"""


def sims(count: int) -> Iterator[list[SimulatedRunPod]]:
    started = [SimulatedRunPod(workers=4, seconds_per_char=0.001).start() for _ in range(count)]
    try:
        yield started
    finally:
        for sim in started:
            sim.stop()


@pytest.fixture
def one() -> Iterator[SimulatedRunPod]:
    for pair in sims(1):
        yield pair[0]


@pytest.fixture
def two() -> Iterator[list[SimulatedRunPod]]:
    yield from sims(2)


def run_against(
    targets: list[tuple[str, SimulatedRunPod]],
    requests: list[SpeechRequest],
    tmp: Path,
    runsync: bool,
    timeout: float = 5.0,
) -> RunResult:
    blocks = "".join(
        TARGET.format(name=name, url=sim.url, runsync=str(runsync).lower(), price=0.001 * (i + 1))
        for i, (name, sim) in enumerate(targets)
    )
    config = load_config_text("providers:" + blocks, "faults.yaml", {})
    plugins = load_plugins(["runpod"])
    checks = check_targets(config, plugins.providers)
    assert all(c.usable for c in checks), [c.reason for c in checks]
    router = Router(checks, config.audio.cloud_gpu, HealthCache(60), Breakers(3, 0.3), SpeedBook())

    async def go() -> RunResult:
        with Journal(tmp / "journal.sqlite3") as journal:
            async with httpx.AsyncClient(timeout=timeout) as http:
                runner = Runner(router, journal, http, SETTINGS, RouteOptions(cloud_gpu=True))
                result = await runner.run(requests)
            assert len(journal.cached([r.id for r in requests], "csm")) == len(requests)
            return result

    return asyncio.run(go())


def requests_for(count: int) -> list[SpeechRequest]:
    return [
        SpeechRequest(f"Fault test sentence {i}, long enough to take a while.")
        for i in range(count)
    ]


def assert_complete(result: RunResult, requests: list[SpeechRequest]) -> None:
    assert result.ok, result.summary()
    assert {o.request_id for o in result.outcomes.values() if o.ok} == {r.id for r in requests}


def generated(sim: SimulatedRunPod) -> dict[str, int]:
    return sim.stats()["generated"]


HTTP_FAULTS: list[tuple[str, str, dict[str, Any]]] = [
    ("run", "http", {"status": 429, "retry_after": "1"}),
    ("status", "http", {"status": 429, "retry_after": "0"}),
    ("run", "http", {"status": 503}),
    ("status", "http", {"status": 500}),
    ("run", "reset", {}),
    ("status", "reset", {}),
    ("runsync", "reset", {}),
    ("status", "malformed", {}),
    ("run", "malformed", {}),
    ("status", "slow", {"delay_s": 0.5}),
]


@pytest.mark.parametrize(("route", "kind", "params"), HTTP_FAULTS)
def test_route_faults_are_retried_without_paying_twice(
    one: SimulatedRunPod, tmp_path: Path, route: str, kind: str, params: dict[str, Any]
) -> None:
    runsync = route == "runsync"
    one.inject(route, kind, count=2, **params)
    requests = requests_for(6)
    started = time.monotonic()
    result = run_against([("sim", one)], requests, tmp_path, runsync)
    assert_complete(result, requests)
    assert one.stats()["faults_fired"] == {kind: 2}
    assert all(n == 1 for n in generated(one).values()), generated(one)
    if params.get("retry_after") == "1":
        assert time.monotonic() - started >= 0.9  # Retry-After honoured


def test_retry_after_as_http_date_is_honoured(one: SimulatedRunPod, tmp_path: Path) -> None:
    one.inject("run", "http", status=429, retry_after=http_date(2))
    requests = requests_for(1)
    started = time.monotonic()
    result = run_against([("sim", one)], requests, tmp_path, runsync=False)
    assert_complete(result, requests)
    assert time.monotonic() - started >= 0.9  # an HTTP date has one-second resolution


@pytest.mark.parametrize("kind", ["no_output", "lost", "failed", "undecodable_audio", "wrong_id"])
@pytest.mark.parametrize("runsync", [False, True])
def test_job_faults_are_resubmitted(
    one: SimulatedRunPod, tmp_path: Path, kind: str, runsync: bool
) -> None:
    one.inject_job(kind, count=1)
    requests = requests_for(6)
    result = run_against([("sim", one)], requests, tmp_path, runsync)
    assert_complete(result, requests)
    stats = one.stats()
    made = generated(one)
    # A lost job still ran (RunPod forgot it afterwards), as did the ones with bad audio.
    spoiled = 2 if kind in ("lost", "undecodable_audio", "wrong_id") else 0
    # Only the spoiled job's two requests were generated a second time.
    assert sum(made.values()) == len(requests) + spoiled
    assert sum(stats["submissions"].values()) == len(requests) + 2


def test_stuck_endpoint_fails_over_and_pays_nothing_there(
    two: list[SimulatedRunPod], tmp_path: Path
) -> None:
    stuck, healthy = two
    stuck.set_stuck(True)
    requests = requests_for(6)
    # The stuck endpoint is the cheaper one, so it is tried first.
    result = run_against([("cheap", stuck), ("backup", healthy)], requests, tmp_path, False)
    assert_complete(result, requests)
    assert stuck.stats()["billed_ms"] == 0
    assert generated(stuck) == {}
    assert all(n == 1 for n in generated(healthy).values())


def test_endpoint_down_fails_over_without_trying_each_request(
    two: list[SimulatedRunPod], tmp_path: Path
) -> None:
    down, healthy = two
    down.inject("*", "http", status=401, count=1000)
    requests = requests_for(12)
    result = run_against([("cheap", down), ("backup", healthy)], requests, tmp_path, False)
    assert_complete(result, requests)
    assert {o.target for o in result.outcomes.values()} == {"backup"}
    # 401 is Unavailable: the breaker opens at once; only health checks and a probe or two
    # reach the dead endpoint, not one submission per request.
    assert down.stats()["requests"].get("run", 0) <= 3


def test_read_timeout_on_status_is_retried_without_paying_twice(
    one: SimulatedRunPod, tmp_path: Path
) -> None:
    one.inject("status", "slow", count=2, delay_s=1.0)
    requests = requests_for(4)
    result = run_against([("sim", one)], requests, tmp_path, runsync=False, timeout=0.5)
    assert_complete(result, requests)
    assert all(n == 1 for n in generated(one).values()), generated(one)
    assert sum(one.stats()["submissions"].values()) == len(requests)


def test_read_timeout_on_submit_is_retried(one: SimulatedRunPod, tmp_path: Path) -> None:
    """A submission that times out may still have created a job (the endpoint answers after
    the client gave up): with no idempotency key in RunPod's API, that job is an orphan. The
    batch completes; only the orphaned job's requests are generated twice."""
    one.inject("run", "slow", count=1, delay_s=1.0)
    requests = requests_for(4)
    result = run_against([("sim", one)], requests, tmp_path, runsync=False, timeout=0.5)
    assert_complete(result, requests)
    made = generated(one)
    assert sum(made.values()) <= len(requests) + 2  # one orphaned job of max_batch 2 at most
    assert all(n >= 1 for n in made.values()) and len(made) == len(requests)
