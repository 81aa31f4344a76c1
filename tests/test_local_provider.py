"""The local_csm provider: through the router and runner end to end, through its hooks, and
through the conformance kit, all with the tiny CSM on the CPU."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest

from csm_offload import JobState, SpeechRequest
from csm_offload.config import load_config_text
from csm_offload.errors import JobLost
from csm_offload.manager import CloudGPUManager
from csm_offload.plugins import load_plugins
from csm_offload.router import RouteOptions
from csm_offload.targets import check_targets
from csm_offload.testing import ProviderConformance

pytest_plugins = ["tests.tiny_csm"]
pytestmark = pytest.mark.torch


def config_text(model: Path, journal: Path, usd_per_hour: float = 0.36) -> str:
    return f"""
audio:
  cloud_gpu:
    enabled: false
    fallback_to_local: true
    batch_processing: {{enabled: true, max_batch_size: 4}}
providers:
  local:
    kind: local_csm
    model: {model}
    device: cpu
    usd_per_hour: {usd_per_hour}
run:
  journal: {journal}
"""


@pytest.fixture
def local(tiny_csm_dir: Path, tmp_path: Path) -> tuple[Any, Any]:
    """The loaded local_csm provider and a real `Target` built from a config."""
    config = load_config_text(config_text(tiny_csm_dir, tmp_path / "j.sqlite3"), "test", {})
    plugins = load_plugins(["local_csm"])
    (check,) = check_targets(config, plugins.providers)
    assert check.usable, check.reason
    return check.provider, check.target


def test_router_and_runner_produce_audio_end_to_end(tiny_csm_dir: Path, tmp_path: Path) -> None:
    config = load_config_text(config_text(tiny_csm_dir, tmp_path / "j.sqlite3"), "test", {})
    requests = [SpeechRequest(f"Line {i}.", max_audio_length_ms=240, seed=i) for i in range(3)]
    with CloudGPUManager(
        config=config, plugins=load_plugins(["local_csm"]), options=RouteOptions(local_audio=True)
    ) as manager:
        result = asyncio.run(asyncio.wait_for(manager.synthesize(requests), 120))
        assert result.ok, result.summary()
        for request in requests:
            outcome = result.outcomes[request.id]
            assert outcome.target == "local"
            assert outcome.audio.sample_rate == 24_000
            assert outcome.audio.frames > 0
        # The same work again is served from the journal: nothing runs, nothing is paid.
        again = asyncio.run(asyncio.wait_for(manager.synthesize(requests), 60))
        assert all(outcome.cached for outcome in again.outcomes.values())


def test_hooks_submit_poll_decode(local: tuple[Any, Any]) -> None:
    provider, target = local
    batch = [SpeechRequest("Hello.", max_audio_length_ms=240), SpeechRequest("x <|AUDIO|>")]

    async def scenario() -> None:
        async with httpx.AsyncClient() as http:
            health = await provider.health(target, http)
            assert health.ok, health.detail
            handle = await provider.submit(target, batch, http)
            assert handle.request_ids == tuple(r.id for r in batch)
            status = await provider.poll(target, handle, http)
            while not status.state.finished:
                await asyncio.sleep(0.05)
                status = await provider.poll(target, handle, http)
            assert status.state is JobState.COMPLETED
            good, bad = status.results
            assert "control token" in bad.error
            (audio,) = await provider.decode(target, status.__class__(status.state, (good,)), http)
            assert audio.sample_rate == 24_000
            assert 0 < audio.duration_ms <= 240
            assert status.exec_ms is not None
            after = await provider.health(target, http)
            assert "(measured)" in after.detail
            with pytest.raises(JobLost):
                await provider.poll(target, handle.__class__(target.name, "gone", ()), http)

    asyncio.run(asyncio.wait_for(scenario(), 120))


def test_cancel_a_queued_job(local: tuple[Any, Any]) -> None:
    provider, target = local

    async def scenario() -> None:
        async with httpx.AsyncClient() as http:
            long = await provider.submit(
                target, [SpeechRequest("Long.", max_audio_length_ms=1600)], http
            )
            queued = await provider.submit(target, [SpeechRequest("Queued.")], http)
            await provider.cancel(target, queued, http)
            await provider.cancel(target, long, http)
            for handle in (queued, long):
                status = await provider.poll(target, handle, http)
                while not status.state.finished:
                    await asyncio.sleep(0.05)
                    status = await provider.poll(target, handle, http)
                assert status.state is JobState.CANCELLED

    asyncio.run(asyncio.wait_for(scenario(), 120))


def test_cost_is_machine_time_at_the_hourly_price(local: tuple[Any, Any]) -> None:
    provider, target = local
    estimate = provider.estimate_cost(target, [SpeechRequest("a" * 100)])
    assert estimate.gpu_seconds > 0
    assert estimate.usd == pytest.approx(estimate.gpu_seconds * 0.36 / 3600)
    assert "s/char" in estimate.basis
    free = provider.estimate_cost(
        target.__class__(target.name, target.kind, target.settings), [SpeechRequest("a" * 100)]
    )
    assert free.usd == 0


def test_health_reports_missing_weights(tmp_path: Path) -> None:
    text = config_text(tmp_path / "no-model-here", tmp_path / "j.sqlite3")
    config = load_config_text(text, "test", {})
    plugins = load_plugins(["local_csm"])
    (check,) = check_targets(config, plugins.providers)

    async def scenario() -> Any:
        async with httpx.AsyncClient() as http:
            return await check.provider.health(check.target, http)

    health = asyncio.run(scenario())
    assert not health.ok
    assert "no-model-here" in health.detail


def test_conformance_kit_round_trip(local: tuple[Any, Any]) -> None:
    provider, target = local
    kit = ProviderConformance(
        provider.plugin,
        target,
        live=True,
        http_surface=False,
        max_audio_length_ms=240,
        max_examples=20,
        timeout_s=120,
    )
    kit.assert_ok()
