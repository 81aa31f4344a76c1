"""Router: which targets are candidates, in which order, and the plan's reasons."""

from __future__ import annotations

import pytest

from csm_offload import Health, NoUsableTarget, SpeechRequest, UserError
from csm_offload.plugins import Plugins
from csm_offload.router import RouteOptions
from tests.scripted_provider import ScriptedProvider, make_router, registered_all

CONFIG = """
providers:
  cheap:
    kind: cloud_a
    usd_per_second: 0.0001
  dear:
    kind: cloud_b
    usd_per_second: 0.001
  local:
    kind: local_x
  draft:
    kind: drafty
"""
BATCH = [SpeechRequest("Hello there, this is a sentence.")]


def providers() -> dict[str, ScriptedProvider]:
    return {
        "a": ScriptedProvider("cloud_a", seconds_per_char=0.01),
        "b": ScriptedProvider("cloud_b", seconds_per_char=0.01),
        "l": ScriptedProvider("local_x", remote=False, usd_per_second=0.0),
        "d": ScriptedProvider("drafty", remote=False, quality="draft", usd_per_second=0.0),
    }


def names(plan) -> list[str]:  # type: ignore[no-untyped-def]
    return [c.target.name for c in plan.candidates]


def test_cheapest_remote_first_local_last_draft_rejected(plugins: Plugins) -> None:
    with registered_all(plugins, **providers()):
        plan = make_router(plugins, CONFIG).plan(BATCH, RouteOptions())
    assert names(plan) == ["cheap", "dear", "local"]
    assert plan.quality == "csm"
    rejected = {r.name: r.reason for r in plan.rejected}
    assert "draft quality" in rejected["draft"]
    text = "\n".join(plan.explain())
    assert "cheap" in text and "not draft" in text


def test_ties_broken_by_measured_latency(plugins: Plugins) -> None:
    config = CONFIG.replace("0.0001", "0.001")
    with registered_all(plugins, **providers()):
        router = make_router(plugins, config)
        router.speeds.of("dear").observe(100, 1.0, 0.0)
        router.speeds.of("cheap").observe(100, 5.0, 0.0)
        assert names(router.plan(BATCH, RouteOptions()))[:2] == ["dear", "cheap"]


def test_cloud_gpu_keeps_remote_only(plugins: Plugins) -> None:
    with registered_all(plugins, **providers()):
        plan = make_router(plugins, CONFIG).plan(BATCH, RouteOptions(cloud_gpu=True))
    assert names(plan) == ["cheap", "dear"]
    assert any("--cloud-gpu keeps remote" in r.reason for r in plan.rejected)


def test_local_audio_keeps_local_only(plugins: Plugins) -> None:
    with registered_all(plugins, **providers()):
        plan = make_router(plugins, CONFIG).plan(BATCH, RouteOptions(local_audio=True))
    assert names(plan) == ["local"]


def test_cloud_gpu_with_no_remote_names_every_reason(plugins: Plugins) -> None:
    config = CONFIG + "    \n"
    with registered_all(plugins, l=ScriptedProvider("local_x", remote=False)):
        router = make_router(plugins, config)
        with pytest.raises(NoUsableTarget) as info:
            router.plan(BATCH, RouteOptions(cloud_gpu=True))
    message = str(info.value)
    assert "no usable remote target" in message
    assert "cheap: no plugin for kind 'cloud_a'" in message
    assert "local: local target; --cloud-gpu keeps remote targets only" in message


def test_draft_only_when_no_csm_or_asked(plugins: Plugins) -> None:
    with registered_all(plugins, d=providers()["d"]):
        router = make_router(plugins, CONFIG)
        plan = router.plan(BATCH, RouteOptions())
        assert names(plan) == ["draft"]
        assert plan.quality == "draft"
        assert "no CSM-quality target is usable" in plan.reason
    with registered_all(plugins, **providers()):
        plan = make_router(plugins, CONFIG).plan(BATCH, RouteOptions(draft=True))
        assert names(plan) == ["draft"]
        assert {r.name for r in plan.rejected} >= {"cheap", "dear", "local"}


def test_open_breaker_and_bad_health_reject(plugins: Plugins) -> None:
    with registered_all(plugins, **providers()):
        router = make_router(plugins, CONFIG)
        router.breakers.of("cheap").trip("endpoint down")
        router.health.set("dear", Health(ok=False, detail="no workers"))
        plan = router.plan(BATCH, RouteOptions())
    assert names(plan) == ["local"]
    reasons = {r.name: r.reason for r in plan.rejected}
    assert "circuit open" in reasons["cheap"] and "endpoint down" in reasons["cheap"]
    assert reasons["dear"] == "unhealthy: no workers"


def test_fallback_to_local_false_drops_local(plugins: Plugins) -> None:
    config = "audio:\n  cloud_gpu:\n    fallback_to_local: false\n" + CONFIG
    with registered_all(plugins, **providers()):
        plan = make_router(plugins, config).plan(BATCH, RouteOptions())
    assert names(plan) == ["cheap", "dear"]
    assert any("fallback_to_local is false" in r.reason for r in plan.rejected)


def test_conflicting_flags_are_user_errors() -> None:
    with pytest.raises(UserError, match="exclude each other"):
        RouteOptions(cloud_gpu=True, local_audio=True)
    with pytest.raises(UserError, match="--draft"):
        RouteOptions(cloud_gpu=True, draft=True)


def test_broken_estimate_rejects_only_that_target(plugins: Plugins) -> None:
    with registered_all(plugins, **providers()):
        router = make_router(plugins, CONFIG)
        router.checks[0].provider.callers["estimate_cost"] = _boom  # type: ignore[union-attr]
        plan = router.plan(BATCH, RouteOptions())
    assert "cheap" not in names(plan)
    assert any("estimate_cost failed" in r.reason for r in plan.rejected)


def _boom(**_kwargs: object) -> None:
    raise RuntimeError("bug in plugin")


def test_the_seed_provider_setting_puts_the_preferred_target_first(plugins: Plugins) -> None:
    config = "audio:\n  cloud_gpu:\n    provider: cloud_b\n" + CONFIG
    with registered_all(plugins, **providers()):
        plan = make_router(plugins, config).plan(BATCH, RouteOptions())
    assert names(plan) == ["dear", "cheap", "local"]
    assert plan.candidates[0].note.startswith("preferred by audio.cloud_gpu.provider")
    assert "preferred by audio.cloud_gpu.provider" in "\n".join(plan.explain())
    by_name = "audio:\n  cloud_gpu:\n    provider: local\n" + CONFIG
    with registered_all(plugins, **providers()):
        plan = make_router(plugins, by_name).plan(BATCH, RouteOptions())
    assert names(plan) == ["cheap", "dear", "local"]  # local still goes after every remote


def test_a_remote_target_without_a_price_is_unusable_never_free() -> None:
    """A GPU missing from the provider's table must not look free to the router."""
    from csm_offload.config import load_config_text
    from csm_offload.plugins import load_plugins
    from csm_offload.targets import check_targets

    text = """
providers:
  odd:
    kind: runpod
    endpoint_id: abc
    api_key: some-key-value
    gpu: RTX 9999
  priced:
    kind: runpod
    endpoint_id: abc
    api_key: some-key-value
    gpu: RTX 9999
    usd_per_hour: 1.5
"""
    config = load_config_text(text, "prices.yaml", {})
    odd, priced = check_targets(config, load_plugins(["runpod"]).providers)
    assert not odd.usable and "no price for GPU 'RTX 9999'" in odd.reason
    assert "usd_per_second" in odd.reason
    assert priced.usable
