"""The budget (`run.max_usd`, `--max-usd`) stops submission before it would be exceeded."""

from __future__ import annotations

import asyncio
from pathlib import Path

import attrs
import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from csm_offload import SpeechRequest
from csm_offload.backoff import RetryPolicy
from csm_offload.breaker import Breakers
from csm_offload.config import load_config_text
from csm_offload.health import HealthCache
from csm_offload.journal import Journal
from csm_offload.plugins import Plugins, load_plugins
from csm_offload.router import RouteOptions, Router
from csm_offload.runner import Runner, RunResult
from csm_offload.speed import SpeedBook
from csm_offload.targets import check_targets
from tests.scripted_provider import ScriptedProvider, make_router, registered_all
from tests.sim.runpod_cloud import SimulatedRunPod
from tests.test_runner import FAST

CONFIG = """
providers:
  a:
    kind: cloud_a
    max_batch: {batch}
    max_in_flight: {in_flight}
    usd_per_second: 0.01
"""


def run(router: Router, requests: list[SpeechRequest], path: Path, max_usd: float) -> RunResult:
    async def go() -> RunResult:
        with Journal(path) as journal:
            async with httpx.AsyncClient() as http:
                runner = Runner(
                    router, journal, http, attrs.evolve(FAST, max_usd=max_usd), RouteOptions()
                )
                return await runner.run(requests)

    return asyncio.run(go())


def spent(path: Path) -> float:
    with Journal(path) as journal:
        return sum((j.actual_usd or 0.0) for j in journal.jobs())


def texts(count: int, length: int = 20) -> list[SpeechRequest]:
    return [SpeechRequest(f"{i:04d}" + "x" * (length - 4)) for i in range(count)]


def test_budget_stops_submission_and_a_rerun_finishes(plugins: Plugins, tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite3"
    a = ScriptedProvider("cloud_a", seconds_per_char=0.001)
    requests = texts(10)  # 20 chars -> 0.02 s -> $0.0002 each
    with registered_all(plugins, a=a):
        first = run(
            make_router(plugins, CONFIG.format(batch=1, in_flight=2)), requests, path, 0.00071
        )
        assert first.budget_stopped
        assert spent(path) <= 0.00071
        done = [o for o in first.outcomes.values() if o.ok]
        assert len(done) == 3
        assert all("budget" in (o.error or "") for o in first.failed())
        second = run(
            make_router(plugins, CONFIG.format(batch=1, in_flight=2)), requests, path, 0.01
        )
    assert second.ok and not second.budget_stopped
    assert sum(a.submitted.values()) == 10  # nothing paid twice
    assert second.cost_usd <= 7 * 0.0002 + 1e-9


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    budget=st.floats(min_value=0.0, max_value=0.003),
    lengths=st.lists(st.integers(min_value=1, max_value=60), min_size=1, max_size=12),
    batch=st.integers(min_value=1, max_value=4),
    in_flight=st.integers(min_value=1, max_value=6),
)
def test_budget_is_never_exceeded(
    plugins: Plugins,
    tmp_path_factory: object,
    budget: float,
    lengths: list[int],
    batch: int,
    in_flight: int,
) -> None:
    path = tmp_path_factory.mktemp("budget") / "journal.sqlite3"  # type: ignore[attr-defined]
    a = ScriptedProvider("cloud_a", seconds_per_char=0.001)
    requests = [SpeechRequest(f"{i}:" + "y" * n) for i, n in enumerate(lengths)]
    with registered_all(plugins, a=a):
        router = make_router(plugins, CONFIG.format(batch=batch, in_flight=in_flight))
        result = run(router, requests, path, budget)
    assert spent(path) <= budget + 1e-12
    assert result.cost_usd <= budget + 1e-12
    if not result.ok:
        assert result.budget_stopped


def test_budget_against_the_simulated_runpod(tmp_path: Path) -> None:
    """Billed execution time on the endpoint stays within the budget."""
    price = 0.01
    with SimulatedRunPod(workers=4, seconds_per_char=0.001) as sim:
        config = load_config_text(
            f"""
providers:
  sim:
    kind: runpod
    endpoint_url: {sim.url}
    api_key: sim-key
    max_batch: 1
    max_in_flight: 4
    use_runsync: false
    seconds_per_char: 0.0015
    job_overhead_s: 0.01
    usd_per_second: {price}
""",
            "budget.yaml",
            {},
        )
        checks = check_targets(config, load_plugins(["runpod"]).providers)
        router = Router(checks, config.audio.cloud_gpu, HealthCache(60), Breakers(), SpeedBook())
        requests = texts(20, 40)
        settings_ = attrs.evolve(
            FAST, retry=RetryPolicy(max_retries=2, base_s=0.01, cap_s=0.1), max_usd=0.004
        )

        async def go() -> RunResult:
            with Journal(tmp_path / "j.sqlite3") as journal:
                async with httpx.AsyncClient(timeout=5) as http:
                    return await Runner(router, journal, http, settings_, RouteOptions()).run(
                        requests
                    )

        result = asyncio.run(go())
        billed = sim.stats()["billed_ms"] / 1000 * price
    assert result.budget_stopped
    assert 0 < billed <= 0.004
    assert spent(tmp_path / "j.sqlite3") <= 0.004
