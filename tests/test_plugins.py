"""Plugin loading: throwaway plugins, isolation of broken ones, entry points, per-kind callers."""

from __future__ import annotations

import sys
import textwrap
import types
from pathlib import Path

import attrs
import httpx
import pytest

from csm_offload import SpeechRequest, Target, hookimpl
from csm_offload.config import TARGET_KEYS
from csm_offload.plugins import Plugins, load_plugins

from .conftest import registered
from .fake_provider import FakeProvider

KINDS = {"runpod", "thunder", "modal", "local_csm", "espeak", "replicate"}


def test_throwaway_plugin_is_registered_then_unregistered(plugins: Plugins) -> None:
    with registered(plugins, FakeProvider(), "throwaway") as ok:
        assert ok
        assert "fake" in plugins.providers
        assert plugins.pm.get_plugin("throwaway") is not None
    assert "fake" not in plugins.providers
    assert plugins.pm.get_plugin("throwaway") is None


def _module(name: str, source: str) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__dict__["hookimpl"] = hookimpl
    exec(textwrap.dedent(source), module.__dict__)
    return module


MISSPELT = """
@hookimpl
def submitt(target, batch, http):
    return None
"""
SYNC_WHERE_ASYNC = """
@hookimpl
def poll(target, handle, http):
    return None
"""
ASYNC_WHERE_SYNC = """
@hookimpl
async def estimate_cost(target, batch):
    return None
"""
WRONG_ARGUMENT = """
@hookimpl
async def health(target, http, region):
    return None
"""


@pytest.mark.parametrize(
    ("source", "message"),
    [
        (MISSPELT, "unknown hook 'submitt'"),
        (SYNC_WHERE_ASYNC, "hook poll must be `async def` (the spec is async)"),
        (ASYNC_WHERE_SYNC, "hook estimate_cost must be a plain `def` (the spec is sync)"),
        (WRONG_ARGUMENT, "region"),
    ],
    ids=["misspelt", "sync-for-async", "async-for-sync", "wrong-argument"],
)
def test_broken_plugin_is_reported_and_skipped(plugins: Plugins, source: str, message: str) -> None:
    good = FakeProvider()
    broken = _module("broken", source)
    with registered(plugins, good, "good"), registered(plugins, broken, "broken") as ok:
        assert not ok
        assert plugins.pm.get_plugin("broken") is None
        assert "fake" in plugins.providers  # the others still load
        [error] = plugins.errors
        assert error.name == "broken"
        assert message in error.error


def test_provider_info_must_return_provider_info(plugins: Plugins) -> None:
    bad = _module("bad_info", "@hookimpl\ndef provider_info():\n    return {'kind': 'x'}\n")
    with registered(plugins, bad, "bad_info") as ok:
        assert not ok
    assert "must return ProviderInfo" in plugins.errors[0].error


def test_two_plugins_cannot_claim_one_kind(plugins: Plugins) -> None:
    with registered(plugins, FakeProvider("same"), "first"):
        with registered(plugins, FakeProvider("same"), "second") as ok:
            assert not ok
        assert "two plugins claim provider kind 'same'" in plugins.errors[0].error
        assert plugins.providers["same"].plugin is plugins.pm.get_plugin("first")


@attrs.frozen
class ShadowingSettings:
    region: str = "eu"
    gpu: str = "A100"
    max_batch: int = 4


@pytest.mark.parametrize("key", sorted(TARGET_KEYS))
def test_a_settings_field_named_like_a_core_key_is_refused_at_load(
    plugins: Plugins, key: str
) -> None:
    settings_type = attrs.make_class("Shadow", {key: attrs.field(default=None)})
    with registered(plugins, FakeProvider("shadow", settings_type=settings_type), "shadow") as ok:
        assert not ok
    assert "shadow" not in plugins.providers
    [error] = plugins.errors
    assert f"settings field `{key}` of Shadow has the name of a core target key" in error.error
    assert f"rename the field in the plugin (e.g. `shadow_{key}`)" in error.error


def test_every_shadowing_field_is_named(plugins: Plugins) -> None:
    provider = FakeProvider("shadow", settings_type=ShadowingSettings)
    with registered(plugins, provider, "shadow") as ok:
        assert not ok
    assert "`gpu`, `max_batch` of ShadowingSettings" in plugins.load_errors()["shadow"]


async def test_provider_hooks_reach_only_the_owning_plugin(plugins: Plugins) -> None:
    one, two = FakeProvider("one"), FakeProvider("two")
    with registered(plugins, one, "one"), registered(plugins, two, "two"):
        async with httpx.AsyncClient() as http:
            target = Target(name="t", kind="two")
            await plugins.providers["two"].submit(target, [SpeechRequest("x")], http)
    assert "submit" in two.calls
    assert "submit" not in one.calls


async def test_an_observer_wraps_calls_without_owning_a_kind(plugins: Plugins) -> None:
    seen: list[str] = []

    class Observer:
        @hookimpl(wrapper=True)
        def submit(self, target, batch, http):
            seen.append(target.name)
            return (yield)

    fake = FakeProvider()
    with registered(plugins, fake, "fake"), registered(plugins, Observer(), "observer") as ok:
        assert ok
        async with httpx.AsyncClient() as http:
            handle = await plugins.providers["fake"].submit(Target("t", "fake"), [], http)
    assert seen == ["t"]
    assert handle.job_id == "job-0"


def test_a_provider_with_only_provider_info_says_what_it_lacks(plugins: Plugins) -> None:
    source = """
import attrs
from csm_offload import PriceTable, ProviderInfo

@attrs.frozen
class S:
    pass

@hookimpl
def provider_info():
    return ProviderInfo("partial", "only info", S, PriceTable("2026-06-01", {}))
"""
    with registered(plugins, _module("partial", source), "partial"):
        assert plugins.providers["partial"].missing == (
            "estimate_cost",
            "health",
            "submit",
            "poll",
            "decode",
            "cancel",
        )


def _write_dist(root: Path, dist: str, module: str, entry_points: str, source: str) -> None:
    (root / f"{module}.py").write_text(textwrap.dedent(source))
    info = root / f"{dist}-0.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.3\n")
    (info / "entry_points.txt").write_text(f"[csm_offload]\n{entry_points}\n")


GOOD_PLUGIN = """
import attrs
from csm_offload import PriceTable, ProviderInfo, hookimpl

@attrs.frozen
class Settings:
    pass

@hookimpl
def provider_info():
    return ProviderInfo("tmpkind", "from a dist-info", Settings, PriceTable("2026-06-01", {}))
"""


@pytest.fixture
def dist_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for name in ("tmp_good_plugin", "tmp_broken_plugin"):
        sys.modules.pop(name, None)


def test_plugin_found_through_a_real_entry_point(dist_dir: Path) -> None:
    _write_dist(dist_dir, "tmp_good", "tmp_good_plugin", "tmpkind = tmp_good_plugin", GOOD_PLUGIN)
    _write_dist(
        dist_dir,
        "tmp_broken",
        "tmp_broken_plugin",
        "broken = tmp_broken_plugin",
        "raise ImportError('this plugin needs a package that is not installed')\n",
    )
    loaded = load_plugins(allowed=["tmpkind", "broken", "runpod"])
    assert set(loaded.providers) == {"tmpkind", "runpod"}
    rows = {row["name"]: row for row in loaded.plugin_rows()}
    assert rows["tmpkind"]["source"] == "tmp_good 0.3"
    [error] = loaded.errors
    assert error.name == "broken"
    assert "import failed" in error.error and "not installed" in error.error


def test_entry_point_name_must_match_the_kind(dist_dir: Path) -> None:
    _write_dist(dist_dir, "tmp_good", "tmp_good_plugin", "other = tmp_good_plugin", GOOD_PLUGIN)
    loaded = load_plugins(allowed=["other"])
    assert loaded.providers == {}
    assert "provider_info says 'tmpkind'" in loaded.errors[0].error


def test_installed_plugins_load_through_their_entry_points() -> None:
    loaded = load_plugins(allowed=None)
    assert set(loaded.providers) >= KINDS
    for kind in KINDS:
        info = loaded.providers[kind].info
        assert info.kind == kind
        assert info.prices.date
        assert info.limits.max_batch >= 1


def test_load_plugins_env_restricts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CSM_OFFLOAD_LOAD_PLUGINS", "espeak, modal")
    assert set(load_plugins().providers) == {"espeak", "modal"}
    monkeypatch.setenv("CSM_OFFLOAD_LOAD_PLUGINS", "")
    assert load_plugins().providers == {}
