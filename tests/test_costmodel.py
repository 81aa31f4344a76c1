"""Cost truth: the fit of worker seconds to characters, estimates learnt from the journal, the
router ordering by them, and `csm-offload costs` showing the estimates' error."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import csm_offload_runpod as rp
import pytest
from click.testing import CliRunner
from hypothesis import assume, given
from hypothesis import strategies as st

from csm_offload import CostEstimate, JobHandle, PriceTable, ProviderInfo, SpeechRequest, Target
from csm_offload.breaker import Breakers
from csm_offload.cli import App, cli
from csm_offload.config import load_config_text
from csm_offload.costmodel import (
    MIN_RELATIVE_SPREAD,
    NOT_INCLUDED,
    PRIOR_PREFIX,
    Fit,
    LearnedCosts,
    Sample,
    error_pct,
    fit_costs,
    recency_weights,
)
from csm_offload.health import HealthCache
from csm_offload.journal import COMPLETED, Journal, read_finished_jobs
from csm_offload.plugins import Plugins
from csm_offload.router import RouteOptions, Router
from csm_offload.speed import SpeedBook
from csm_offload.targets import check_targets
from tests.scripted_provider import ScriptedProvider, registered_all
from tests.sim.runpod_cloud import SimulatedRunPod

H100 = rp.PRICES.usd_per_second["H100"]


def runpod_target() -> Target:
    """A RunPod target at its default prior: 0.05 s/char + 1 s per job."""
    return Target("pod", "runpod", rp.RunPodSettings(api_key="k", endpoint_id="abc"), gpu="H100")


def measured_seconds(chars: int) -> float:
    """What the observed endpoint really takes: 4x less than the prior on 50-250 characters."""
    return 0.35 + 0.0105 * chars


def texts(lengths: Sequence[int]) -> list[SpeechRequest]:
    return [SpeechRequest(f"{i:04d}" + "a" * (n - 4)) for i, n in enumerate(lengths)]


def record_finished(journal: Journal, target: str, request: SpeechRequest, exec_s: float) -> None:
    """One job as the runner records it: requests, the row, the handle, its measured end."""
    journal.record_requests([request])
    key = journal.begin_job(target, "csm", [request.id], estimated_usd=0.0)
    journal.job_submitted(key, JobHandle(target, f"job-{key}", (request.id,)))
    exec_ms = round(exec_s * 1000)
    journal.job_finished(
        key, COMPLETED, actual_usd=exec_ms / 1000 * H100, exec_ms=exec_ms, queue_ms=40
    )


def sse(samples: Sequence[Sample], a: float, b: float) -> float:
    weights = recency_weights(len(samples))
    return sum(
        w * (s.seconds - a - b * s.chars) ** 2 for s, w in zip(samples, weights, strict=True)
    )


# --- the fit ----------------------------------------------------------------------------------


@given(
    a=st.floats(0.0, 10.0),
    b=st.floats(1e-4, 0.5),
    chars=st.lists(st.integers(1, 3_000), min_size=3, max_size=60),
)
def test_fit_recovers_a_noiseless_line(a: float, b: float, chars: list[int]) -> None:
    assume(max(chars) - min(chars) >= MIN_RELATIVE_SPREAD * max(chars))
    found = fit_costs([Sample(c, a + b * c) for c in chars])
    assert found is not None and found.separated
    assert found.overhead_s == pytest.approx(a, abs=1e-6)
    assert found.seconds_per_char == pytest.approx(b, rel=1e-6, abs=1e-9)


@given(st.lists(st.tuples(st.integers(0, 3_000), st.floats(0.0, 100.0)), min_size=1, max_size=50))
def test_fit_is_never_negative_and_no_nearby_line_fits_better(
    points: list[tuple[int, float]],
) -> None:
    samples = [Sample(c, s) for c, s in points]
    found = fit_costs(samples)
    usable = [s for s in samples if s.chars > 0]
    if not usable:
        assert found is None
        return
    assert found is not None
    assert found.overhead_s >= 0 and found.seconds_per_char >= 0
    assert found.seconds(1, 100) >= 0
    if not found.separated:
        return
    best = sse(usable, found.overhead_s, found.seconds_per_char)
    for da in (-0.01, 0.0, 0.01):
        for db in (-1e-4, 0.0, 1e-4):
            a = max(0.0, found.overhead_s + da)
            b = max(0.0, found.seconds_per_char + db)
            assert best <= sse(usable, a, b) * (1 + 1e-9) + 1e-9


@given(chars=st.integers(1, 3_000), seconds=st.floats(0.01, 100.0), count=st.integers(1, 10))
def test_same_length_jobs_fit_a_proportional_line_that_predicts_them(
    chars: int, seconds: float, count: int
) -> None:
    found = fit_costs([Sample(chars, seconds)] * count)
    assert found is not None and not found.separated
    assert found.overhead_s == 0
    assert found.seconds(1, chars) == pytest.approx(seconds)
    assert "too few jobs" in found.describe()


def test_recent_jobs_weigh_more_so_a_faster_endpoint_shows() -> None:
    old = [Sample(50 + i % 200, 0.5 + 0.02 * (50 + i % 200)) for i in range(400)]
    new = [Sample(50 + i % 200, 0.5 + 0.01 * (50 + i % 200)) for i in range(200)]
    found = fit_costs(new + old)  # newest first
    assert found is not None
    assert abs(found.seconds_per_char - 0.01) < abs(found.seconds_per_char - 0.02)


@given(
    usd=st.floats(0.0, 100.0),
    seconds=st.floats(0.0, 1e4),
    basis=st.text(max_size=40),
    lengths=st.lists(st.integers(1, 500), min_size=1, max_size=4),
)
def test_no_jobs_keeps_the_prior_and_says_so(
    usd: float, seconds: float, basis: str, lengths: list[int]
) -> None:
    prior = CostEstimate("pod", usd, seconds, basis)
    learnt = LearnedCosts().apply(prior, runpod_target(), rp.provider_info(), texts(lengths))
    assert (learnt.usd, learnt.gpu_seconds) == (usd, seconds)
    assert learnt.basis == PRIOR_PREFIX + basis


def test_a_target_without_a_known_price_keeps_the_providers_estimate() -> None:
    info = ProviderInfo("x", "no prices", object, PriceTable("2026-06-01", {}))
    prior = CostEstimate("free", 0.0, 3.0, "the provider's own")
    learned = LearnedCosts({"free": [Sample(100, 1.0)]})
    assert learned.apply(prior, Target("free", "x"), info, texts([100])) == prior


def test_learnt_estimate_counts_one_overhead_per_job_and_keeps_what_is_left_out() -> None:
    learned = LearnedCosts({"pod": [Sample(c, measured_seconds(c)) for c in (50, 150, 250)]})
    target = Target("pod", "runpod", None, gpu="H100", max_batch=2)
    prior = CostEstimate("pod", 1.0, 1.0, f"a guess{NOT_INCLUDED}the idle tail")
    batch = texts([100, 100, 100])  # two jobs of at most two requests
    learnt = learned.apply(prior, target, rp.provider_info(), batch)
    assert learnt.gpu_seconds == pytest.approx(2 * 0.35 + 0.0105 * 300)
    assert learnt.usd == pytest.approx(learnt.gpu_seconds * H100)
    assert learnt.basis.startswith("learnt from 3 jobs in the journal: 0.35 s/job + 0.0105 s/char")
    assert learnt.basis.endswith(NOT_INCLUDED + "the idle tail")


def test_error_pct_is_relative_to_what_was_paid() -> None:
    assert error_pct(4.3, 1.0) == pytest.approx(330.0)
    assert error_pct(0.9, 1.0) == pytest.approx(-10.0)
    assert error_pct(1.0, 0.0) is None


def test_observe_updates_the_fit() -> None:
    learned = LearnedCosts()
    assert learned.fit("pod") is None
    for chars in (50, 150, 250):
        learned.observe("pod", chars, round(measured_seconds(chars) * 1000))
    learned.observe("pod", 99, None)  # no execution time: nothing to learn
    found = learned.fit("pod")
    assert isinstance(found, Fit) and found.jobs == 3
    assert found.seconds_per_char == pytest.approx(0.0105, rel=1e-3)


# --- from the journal -------------------------------------------------------------------------


@pytest.fixture
def journal_path(tmp_path: Path) -> Path:
    """A journal holding one run of 40 jobs of 50-250 characters on "pod"."""
    path = tmp_path / "journal.sqlite3"
    with Journal(path) as journal:
        for request in texts([50 + (i * 37) % 201 for i in range(40)]):
            # +-3 % of deterministic jitter, as real execution times wobble.
            jitter = 1 + 0.03 * math.sin(len(request.text))
            record_finished(journal, "pod", request, measured_seconds(len(request.text)) * jitter)
    return path


def test_learnt_estimate_is_within_ten_percent_where_the_prior_was_far_off(
    journal_path: Path,
) -> None:
    learned = LearnedCosts.from_path(journal_path)
    target, info = runpod_target(), rp.provider_info()
    with Journal(journal_path) as journal:
        jobs = journal.finished_jobs("pod")
    assert len(jobs) == 40
    batches = texts([job.chars for job in jobs])  # the next, identical run
    paid = sum(job.actual_usd or 0.0 for job in jobs)
    priors = [rp.estimate_cost(target=target, batch=[r]) for r in batches]
    learnt = [learned.apply(p, target, info, [r]) for p, r in zip(priors, batches, strict=True)]
    prior_usd, learnt_usd = sum(p.usd for p in priors), sum(c.usd for c in learnt)
    assert prior_usd > 3 * paid  # the observed problem: about 4x
    assert learnt_usd == pytest.approx(paid, rel=0.10)
    for job, cost in zip(jobs, learnt, strict=True):
        assert cost.usd == pytest.approx(job.actual_usd, rel=0.10)
    assert learnt[0].basis.startswith("learnt from 40 jobs in the journal")
    assert "idle tail" in learnt[0].basis  # still says what it leaves out


def test_journal_query_is_newest_first_limited_and_read_only(
    journal_path: Path, tmp_path: Path
) -> None:
    found = read_finished_jobs(journal_path, "pod", limit=5)
    assert len(found) == 5
    assert [j.created_at for j in found] == sorted((j.created_at for j in found), reverse=True)
    assert all(50 <= j.chars <= 250 and j.exec_ms > 0 and j.queue_ms == 40 for j in found)
    assert read_finished_jobs(journal_path, "other") == []
    missing = tmp_path / "none" / "journal.sqlite3"
    assert LearnedCosts.from_path(missing).fit("pod") is None
    assert not missing.parent.exists()  # looking never creates a journal
    with Journal(journal_path) as journal:
        plan = journal.db.execute(
            "EXPLAIN QUERY PLAN SELECT key FROM jobs WHERE target = ? AND state = ? "
            "AND exec_ms IS NOT NULL ORDER BY key DESC LIMIT 5",
            ("pod", COMPLETED),
        ).fetchall()
    assert "jobs_target_state" in str(plan)


# --- the router -------------------------------------------------------------------------------

CONFIG = """
providers:
  a:
    kind: cloud_a
    usd_per_second: 0.001
  b:
    kind: cloud_b
    usd_per_second: 0.001
"""


def router_with(plugins: Plugins, learned: LearnedCosts | None) -> Router:
    config = load_config_text(CONFIG, "test.yaml", {})
    return Router(
        check_targets(config, plugins.providers),
        config.audio.cloud_gpu,
        HealthCache(config.run.health_ttl_s),
        Breakers(),
        SpeedBook(),
        learned=learned,
    )


def test_router_orders_targets_by_learnt_cost(plugins: Plugins) -> None:
    batch = texts([150])
    # The priors say a is cheaper; the journal says b's jobs take a tenth of a's.
    providers = {
        "a": ScriptedProvider("cloud_a", seconds_per_char=0.01),
        "b": ScriptedProvider("cloud_b", seconds_per_char=0.02),
    }
    measured = {
        "a": [Sample(c, 0.05 * c) for c in (50, 150, 250)],
        "b": [Sample(c, 0.005 * c) for c in (50, 150, 250)],
    }
    with registered_all(plugins, **providers):
        by_prior = router_with(plugins, None).plan(batch, RouteOptions())
        by_journal = router_with(plugins, LearnedCosts(measured)).plan(batch, RouteOptions())
        fresh = router_with(plugins, LearnedCosts({"b": measured["b"]})).plan(batch, RouteOptions())
    assert [c.target.name for c in by_prior.candidates] == ["a", "b"]
    assert [c.target.name for c in by_journal.candidates] == ["b", "a"]
    assert by_journal.first.cost.usd == pytest.approx(0.005 * 150 * 0.001)
    assert by_journal.first.cost.basis.startswith("learnt from 3 jobs")
    costs = {c.target.name: c.cost for c in fresh.candidates}
    assert costs["a"].basis.startswith(PRIOR_PREFIX)
    assert costs["a"].usd == pytest.approx(0.01 * 150 * 0.001)


# --- the command line -------------------------------------------------------------------------


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CSM_OFFLOAD_CONFIG", raising=False)
    return tmp_path


def invoke(*args: str) -> str:
    result = CliRunner().invoke(cli, list(args), obj=App())
    assert result.exit_code == 0, result.output
    return result.output


def test_costs_shows_estimated_against_actual_with_the_error(workdir: Path) -> None:
    path = workdir / "journal.sqlite3"
    request = texts([150])[0]
    with Journal(path) as journal:  # an estimate of 4.3x what was paid
        journal.record_requests([request])
        key = journal.begin_job("pod", "csm", [request.id], estimated_usd=0.0086)
        journal.job_finished(key, COMPLETED, actual_usd=0.002, exec_ms=2000)
        free = journal.begin_job("cpu", "csm", [request.id], estimated_usd=0.0)
        journal.job_finished(free, COMPLETED, actual_usd=0.0, exec_ms=1500)
    text = invoke("costs", "--journal", str(path))
    assert "+330.0 %" in text and "n/a" in text and "total" in text
    (pod, cpu) = sorted(
        json.loads(invoke("costs", "--journal", str(path), "--json", "--by-target")),
        key=lambda row: str(row["target"]),
    )[::-1]
    assert pod["target"] == "pod" and pod["error_pct"] == pytest.approx(330.0)
    assert pod["last_run_error_pct"] == pytest.approx(330.0)
    assert cpu["error_pct"] is None
    days = json.loads(invoke("costs", "--journal", str(path), "--json"))
    assert isinstance(days, list) and {row["target"] for row in days} == {"pod", "cpu"}


# --- the measure, end to end ------------------------------------------------------------------

SIM_CONFIG = """
providers:
  sim:
    kind: runpod
    endpoint_url: {url}
    api_key: sim-key
    max_in_flight: 10
    max_batch: 1
    use_runsync: false
    seconds_per_char: 0.01
    job_overhead_s: 0.5
    usd_per_second: 0.01
"""


def chapter(letter: str) -> str:
    """Ten sentences of 130-250 characters (no two fit one 250-character segment); the same
    lengths for every letter."""
    return " ".join(
        f"{letter * (110 + 37 * i % 116)} sentence {i:02d} ends here." for i in range(10)
    )


def test_after_one_run_estimate_is_within_ten_percent_of_the_next_runs_cost(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CSM_OFFLOAD_LOAD_PLUGINS", "runpod")
    # The endpoint is about 4x faster than the configured prior (0.01 s/char + 0.5 s/job).
    with SimulatedRunPod(workers=10, seconds_per_char=0.0025, overhead_s=0.1) as sim:
        (workdir / "cfg.yaml").write_text(SIM_CONFIG.format(url=sim.url))
        base = ("--config", "cfg.yaml")

        def estimate(text: str) -> dict[str, object]:
            (row,) = json.loads(invoke(*base, "estimate", text, "--json", "--max-chars", "250"))
            return dict(row)

        prior = estimate(chapter("a"))
        assert str(prior["basis"]).startswith(PRIOR_PREFIX)
        invoke(*base, "synth", chapter("a"), "-o", "a.wav", "--quiet", "--max-chars", "250")
        learnt = estimate(chapter("b"))
        assert str(learnt["basis"]).startswith("learnt from 10 jobs")
        assert "idle tail" in str(learnt["not_included"])
        invoke(*base, "synth", chapter("b"), "-o", "b.wav", "--quiet", "--max-chars", "250")
        (row,) = json.loads(invoke(*base, "costs", "--json", "--by-target"))
    paid = float(row["last_run_actual_usd"])
    assert float(prior["usd"]) > 2.5 * paid
    assert float(learnt["usd"]) == pytest.approx(paid, rel=0.10)
