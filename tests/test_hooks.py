"""One test per hook, named `test_hook_<name>`; `test_docs.py` checks that each hook has one."""

from __future__ import annotations

import click
import httpx
from click.testing import CliRunner

from csm_offload import CostEstimate, Health, JobHandle, JobState, SpeechRequest, Target, hookimpl
from csm_offload.plugins import Plugins

from .conftest import registered
from .fake_provider import FakeProvider

BATCH = [SpeechRequest("Hello."), SpeechRequest("A second, longer sentence.")]


def _target(kind: str = "fake") -> Target:
    return Target(name=f"{kind}-1", kind=kind, gpu="T4")


def test_hook_provider_info(plugins: Plugins) -> None:
    fake = FakeProvider()
    with registered(plugins, fake, "fake"):
        provider = plugins.providers["fake"]
        assert provider.info.kind == "fake"
        assert provider.info.prices.date == "2026-06-01"
        assert provider.missing == ()


def test_hook_estimate_cost(plugins: Plugins) -> None:
    with registered(plugins, FakeProvider(usd_per_second=0.002), "fake"):
        estimate = plugins.providers["fake"].estimate_cost(_target(), BATCH)
    assert isinstance(estimate, CostEstimate)
    assert estimate.gpu_seconds == 0.01 * sum(len(r.text) for r in BATCH)
    assert estimate.usd == estimate.gpu_seconds * 0.002


async def test_hook_health(plugins: Plugins) -> None:
    with registered(plugins, FakeProvider(), "fake"):
        async with httpx.AsyncClient() as http:
            health = await plugins.providers["fake"].health(_target(), http)
    assert isinstance(health, Health) and health.ok


async def test_hook_submit(plugins: Plugins) -> None:
    fake = FakeProvider()
    with registered(plugins, fake, "fake"):
        async with httpx.AsyncClient() as http:
            handle = await plugins.providers["fake"].submit(_target(), BATCH, http)
    assert isinstance(handle, JobHandle)
    assert handle.request_ids == tuple(r.id for r in BATCH)
    assert fake.jobs[handle.job_id] == BATCH


async def test_hook_poll(plugins: Plugins) -> None:
    with registered(plugins, FakeProvider(), "fake"):
        provider = plugins.providers["fake"]
        async with httpx.AsyncClient() as http:
            handle = await provider.submit(_target(), BATCH, http)
            status = await provider.poll(_target(), handle, http)
    assert status.state is JobState.COMPLETED
    assert [r.id for r in status.results] == [r.id for r in BATCH]


async def test_hook_decode(plugins: Plugins) -> None:
    with registered(plugins, FakeProvider(), "fake"):
        provider = plugins.providers["fake"]
        async with httpx.AsyncClient() as http:
            handle = await provider.submit(_target(), BATCH, http)
            audios = await provider.decode(
                _target(), await provider.poll(_target(), handle, http), http
            )
    assert [a.frames for a in audios] == [240 * len(r.text) for r in BATCH]


async def test_hook_cancel(plugins: Plugins) -> None:
    fake = FakeProvider()
    with registered(plugins, fake, "fake"):
        provider = plugins.providers["fake"]
        async with httpx.AsyncClient() as http:
            handle = await provider.submit(_target(), BATCH, http)
            assert await provider.cancel(_target(), handle, http) is None
    assert handle.job_id not in fake.jobs


def test_hook_register_commands(plugins: Plugins) -> None:
    class Commands:
        @hookimpl
        def register_commands(self, cli: click.Group) -> None:
            @cli.command(name="hello")
            def hello() -> None:
                click.echo("hello from a plugin")

    group = click.Group()
    with registered(plugins, Commands(), "commands"):
        plugins.pm.hook.register_commands(cli=group)
    result = CliRunner().invoke(group, ["hello"])
    assert result.output == "hello from a plugin\n"
