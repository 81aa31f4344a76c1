"""A small fleet of your own GPU boxes: two real worker servers (`csm-offload serve` with the tiny
model, each in a subprocess on 127.0.0.1 with its own token) listed as two `worker` targets
priced differently, driven through the router and the runner.

- the conformance kit, live, against one box;
- the cheaper box takes the work while both are up, and each job is paid at its own price;
- a box that is down before the run is named in the plan and passed over for the other;
- a box that dies in the middle of a run: its jobs fail over to the other box.

Every server listens on loopback only and is stopped inside its test; every wait is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import csm_offload_worker as worker
import httpx
import pytest
from csm_offload_worker.settings import WorkerSettings

from csm_offload import SpeechRequest, Target
from csm_offload import journal as jr
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
from csm_offload.testing import ProviderConformance
from tests.peers.serve_process import Serve

pytest_plugins = ["tests.tiny_csm"]
pytestmark = [pytest.mark.torch, pytest.mark.slow]

#: One token per box, as an owner would give each server its own.
CHEAP_TOKEN = "fleet-cheap-box-token-5e18d0"
DEAR_TOKEN = "fleet-dear-box-token-a93c47"
CHEAP_PER_HOUR, DEAR_PER_HOUR = 0.4, 2.0
#: Longest `serve` may take to load the tiny model and answer /healthz (two load at once).
START_S = 120.0
SETTINGS = RunnerSettings(
    retry=RetryPolicy(max_retries=6, base_s=0.2, cap_s=1.0),
    first_poll_s=0.2,
    poll_min_s=0.05,
    deadline_s=240.0,
)


@attrs.frozen
class Fleet:
    cheap: Serve
    dear: Serve

    def config(self) -> str:
        return "providers:" + "".join(
            BLOCK.format(name=name, url=box.url, token=box.token, per_hour=per_hour)
            for name, box, per_hour in (
                ("cheap", self.cheap, CHEAP_PER_HOUR),
                ("dear", self.dear, DEAR_PER_HOUR),
            )
        )


BLOCK = """
  {name}:
    kind: worker
    url: {url}
    worker_token: {token}
    usd_per_hour: {per_hour}
    seconds_per_char: 0.01
    job_overhead_s: 0.5
    poll_wait_s: 5
    max_batch: 1
    max_in_flight: 2
"""


@pytest.fixture
def fleet(tiny_csm_dir: Path, tmp_path: Path) -> Iterator[Fleet]:
    boxes = Fleet(
        Serve(tiny_csm_dir, tmp_path / "cheap.log", CHEAP_TOKEN, start_s=START_S),
        Serve(tiny_csm_dir, tmp_path / "dear.log", DEAR_TOKEN, start_s=START_S),
    )
    try:
        # Both load the model at once: the fleet is up in the time of the slower one.
        for box in (boxes.cheap, boxes.dear):
            box.launch()
        for box in (boxes.cheap, boxes.dear):
            box.wait_healthy()
        yield boxes
    finally:
        for box in (boxes.cheap, boxes.dear):
            box.stop()


def requests_for(count: int, ms: int = 800) -> list[SpeechRequest]:
    return [
        SpeechRequest(f"Sentence {i} read on a box of my own.", max_audio_length_ms=ms, seed=i)
        for i in range(count)
    ]


@attrs.frozen
class Ran:
    result: RunResult
    runner: Runner
    rows: list[jr.JobRow]
    finished: list[jr.FinishedJob]


def run_fleet(
    fleet: Fleet, requests: list[SpeechRequest], tmp: Path, settings: RunnerSettings = SETTINGS
) -> Ran:
    config = load_config_text(fleet.config(), "fleet.yaml", {})
    checks = check_targets(config, load_plugins(["worker"]).providers)
    assert all(c.usable for c in checks), [c.reason for c in checks]
    router = Router(checks, config.audio.cloud_gpu, HealthCache(60), Breakers(3, 0.3), SpeedBook())

    async def go() -> Ran:
        with Journal(tmp / "journal.sqlite3") as journal:
            async with http_client() as http:
                runner = Runner(router, journal, http, settings, RouteOptions(cloud_gpu=True))
                result = await asyncio.wait_for(runner.run(requests), settings.deadline_s + 30)
            return Ran(result, runner, journal.jobs(), journal.finished_jobs())

    return asyncio.run(go())


def paid_once_at_its_price(requests: list[SpeechRequest], ran: Ran) -> None:
    """Every request is in exactly one completed job with an actual cost, at the price of the
    box that ran it (its measured time x its usd_per_hour); a failed job cost nothing."""
    prices = {"cheap": CHEAP_PER_HOUR / 3600, "dear": DEAR_PER_HOUR / 3600}
    for request in requests:
        paid = [r for r in ran.rows if request.id in r.request_ids and r.actual_usd is not None]
        assert len(paid) == 1, (request.id, paid)
        assert paid[0].state == jr.COMPLETED
    assert ran.finished
    for job in ran.finished:
        assert job.actual_usd == pytest.approx(job.exec_ms / 1000 * prices[job.target])
    assert all(r.actual_usd is None for r in ran.rows if r.state == jr.FAILED)


def when_running(box: Serve, then: Any, timeout_s: float = 60.0) -> threading.Thread:
    """Call `then()` from a thread as soon as `box` has a job running."""

    def watch() -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if box.healthz()["running"] == 1:
                    then()
                    return
            time.sleep(0.02)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


# --- the conformance kit, live --------------------------------------------------------------


def test_conforms_live(fleet: Fleet) -> None:
    settings = WorkerSettings(url=fleet.cheap.url, worker_token=CHEAP_TOKEN)
    target = Target("cheap", "worker", settings, usd_per_second=CHEAP_PER_HOUR / 3600)
    ProviderConformance(worker, target, live=True, max_audio_length_ms=800).assert_ok()


# --- the fleet through the router and the runner --------------------------------------------


def test_the_cheaper_box_takes_the_work(fleet: Fleet, tmp_path: Path) -> None:
    requests = requests_for(3)
    ran = run_fleet(fleet, requests, tmp_path)
    assert ran.result.ok, ran.result.summary()
    assert [c.target.name for c in ran.result.plan.candidates] == ["cheap", "dear"]
    assert {o.target for o in ran.result.outcomes.values()} == {"cheap"}
    assert {r.target for r in ran.rows} == {"cheap"}
    paid_once_at_its_price(requests, ran)
    logs = fleet.cheap.log.read_text() + fleet.dear.log.read_text()
    assert CHEAP_TOKEN not in logs and DEAR_TOKEN not in logs


def test_a_box_that_is_down_is_passed_over_for_the_other(fleet: Fleet, tmp_path: Path) -> None:
    fleet.cheap.stop()
    requests = requests_for(2)
    ran = run_fleet(fleet, requests, tmp_path)
    assert ran.result.ok, ran.result.summary()
    (why,) = [r.reason for r in ran.result.plan.rejected if r.name == "cheap"]
    assert f"is `csm-offload serve` running at {fleet.cheap.url}" in why
    assert CHEAP_TOKEN not in why
    assert {o.target for o in ran.result.outcomes.values()} == {"dear"}
    paid_once_at_its_price(requests, ran)


def test_a_box_that_dies_mid_run_fails_over_to_the_other(fleet: Fleet, tmp_path: Path) -> None:
    """The cheap box takes the work first and is killed while it runs a job: the rest of the
    work goes to the dearer box within the liveness bound, and nothing is paid twice."""
    settings = attrs.evolve(
        SETTINGS, liveness=Liveness(dead_min_s=1.0, dead_factor=2.0), orphan_poll_s=0.5
    )
    requests = requests_for(4)
    killed = threading.Event()

    def kill() -> None:
        fleet.cheap.kill()
        killed.set()

    watcher = when_running(fleet.cheap, kill)
    ran = run_fleet(fleet, requests, tmp_path, settings)
    watcher.join(timeout=30)
    assert killed.is_set(), "the cheap box never ran a job to die in the middle of"
    assert ran.result.ok, ran.result.summary()
    assert ran.result.plan.first.target.name == "cheap"
    assert "dear" in {o.target for o in ran.result.outcomes.values()}
    assert ran.runner.breakers.of("cheap").opens >= 1
    paid_once_at_its_price(requests, ran)
