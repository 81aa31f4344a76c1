"""The conformance kit: it passes for the RunPod plugin against the simulated cloud, and it
catches deliberately broken throwaway plugins (each registered here and always unregistered)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import attrs
import csm_offload_runpod as rp
import httpx
import pytest

from csm_offload import (
    CostEstimate,
    Health,
    JobHandle,
    JobState,
    JobStatus,
    PriceTable,
    ProviderInfo,
    Rejected,
    SpeechRequest,
    Target,
    TransientError,
    hookimpl,
)
from csm_offload.plugins import Plugins, load_plugins
from csm_offload.testing import (
    UNKNOWN_GPU,
    Failure,
    FaultCase,
    ProviderConformance,
    check_provider,
)
from tests.sim.runpod_cloud import SimulatedRunPod

SECRET = "rp_conformance_secret_42"
#: Why RunPod fails the secrets check today: the core's `httpapi.snippet` (in every 4xx/5xx
#: message) and RunPod's `status._error_text` (a failed job's error) quote an answer's body
#: without `csm_offload.scrub`, so a server that echoes the Authorization header puts the key
#: into errors, `Health.detail` and `JobStatus.error`.


@pytest.fixture(scope="module")
def sim() -> Iterator[SimulatedRunPod]:
    with SimulatedRunPod(workers=2, seconds_per_char=0.001, api_key=SECRET) as cloud:
        yield cloud


def runpod_target(sim: SimulatedRunPod, kind: str = "runpod") -> Target:
    settings = rp.RunPodSettings(api_key=SECRET, endpoint_url=sim.url)
    return Target("sim", kind, settings, gpu="A100 80GB")


def test_runpod_plugin_conforms_against_the_sim(sim: SimulatedRunPod) -> None:
    assert (check_provider(rp, runpod_target(sim), live=True)) == []
    # The round trip really went through the simulated cloud.
    assert sim.stats()["requests"]["runsync"] >= 1


def test_runpod_plugin_conforms_with_run_and_status(sim: SimulatedRunPod) -> None:
    settings = rp.RunPodSettings(api_key=SECRET, endpoint_url=sim.url, use_runsync=False)
    before = sim.stats()["requests"].get("status", 0)
    assert (check_provider(rp, Target("sim", "runpod", settings), live=True)) == []
    assert sim.stats()["requests"]["status"] > before


def test_runpod_plugin_keeps_its_key_out_of_echoed_answers(sim: SimulatedRunPod) -> None:
    found = check_provider(rp, runpod_target(sim), fault_cases=[], max_examples=1)
    assert [f for f in found if f.check == "secrets"] == []


class Delegating:
    """A throwaway plugin that behaves like the RunPod plugin under another kind; the broken
    variants below each override one thing."""

    @hookimpl
    def provider_info(self) -> ProviderInfo:
        return attrs.evolve(rp.provider_info(), kind="throwaway")

    @hookimpl
    def estimate_cost(self, target: Target, batch: list[SpeechRequest]) -> CostEstimate:
        return rp.estimate_cost(target=target, batch=batch)

    @hookimpl
    async def health(self, target: Target, http: httpx.AsyncClient) -> Any:
        return await rp.health(target=target, http=http)

    @hookimpl
    async def submit(self, target: Target, batch: list[SpeechRequest], http: Any) -> Any:
        return await rp.submit(target=target, batch=batch, http=http)

    @hookimpl
    async def poll(self, target: Target, handle: JobHandle, http: Any) -> Any:
        return await rp.poll(target=target, handle=handle, http=http)

    @hookimpl
    async def decode(self, target: Target, status: Any, http: Any) -> Any:
        return await rp.decode(target=target, status=status, http=http)

    @hookimpl
    async def cancel(self, target: Target, handle: JobHandle, http: Any) -> Any:
        return await rp.cancel(target=target, handle=handle, http=http)


class SyncPoll(Delegating):
    @hookimpl
    def poll(self, target: Target, handle: JobHandle, http: Any) -> Any:  # type: ignore[override]
        raise AssertionError("never called: the kit refuses the plugin first")


class NoCancel(Delegating):
    cancel = None  # type: ignore[assignment]


class UndatedPrices(Delegating):
    @hookimpl
    def provider_info(self) -> ProviderInfo:
        info = super().provider_info()
        prices = PriceTable(date="June 2026", usd_per_second={"A100 80GB": -1.0})
        return attrs.evolve(info, prices=prices, settings_type=dict)


class CheaperWhenLonger(Delegating):
    @hookimpl
    def estimate_cost(self, target: Target, batch: list[SpeechRequest]) -> CostEstimate:
        chars = sum(len(r.text) for r in batch)
        return CostEstimate(target.name, 1.0 / (1 + chars), 1.0, "made up")


class Impure(Delegating):
    calls = 0

    @hookimpl
    def estimate_cost(self, target: Target, batch: list[SpeechRequest]) -> CostEstimate:
        Impure.calls += 1
        return CostEstimate(target.name, 1.0, float(Impure.calls), "counts calls")


class LeakyRetrying(Delegating):
    """Retries by itself, lets raw httpx errors out, and puts the key in its messages."""

    @hookimpl
    async def submit(self, target: Target, batch: list[SpeechRequest], http: Any) -> Any:
        for _attempt in range(3):
            response = await http.post("https://api.runpod.ai/v2/x/run", json={})
        response.raise_for_status()
        raise RuntimeError(f"odd answer for key {target.settings.api_key.reveal()}")

    @hookimpl
    async def poll(self, target: Target, handle: JobHandle, http: Any) -> Any:
        key = target.settings.api_key.reveal()
        response = await http.get(f"https://api.runpod.ai/v2/x/status/{handle.job_id}?k={key}")
        return response.json()


class WrongDecode(Delegating):
    @hookimpl
    async def decode(self, target: Target, status: Any, http: Any) -> Any:
        return []


@pytest.fixture
def registered() -> Iterator[Any]:
    """Registers a throwaway plugin next to the installed ones, and always unregisters it."""
    plugins: Plugins = load_plugins()
    names: list[str] = []

    def register(plugin: Any) -> bool:
        name = f"throwaway-{len(names)}"
        names.append(name)
        return plugins.register(plugin, name, source="test_conformance")

    yield register
    for name in names:
        plugins.unregister(name)
        assert plugins.pm.get_plugin(name) is None
    assert "throwaway" not in plugins.providers


def failures_of(plugin: Any, sim: SimulatedRunPod, **options: Any) -> list[Failure]:
    return check_provider(plugin, runpod_target(sim, "throwaway"), **options)


def test_a_well_behaved_throwaway_plugin_conforms(sim: SimulatedRunPod, registered: Any) -> None:
    plugin = Delegating()
    assert registered(plugin)
    assert (failures_of(plugin, sim, live=True)) == []


def test_wrong_sync_async_is_caught(sim: SimulatedRunPod, registered: Any) -> None:
    plugin = SyncPoll()
    assert not registered(plugin)  # the loader refuses it too
    found = failures_of(plugin, sim)
    assert [f.check for f in found] == ["hooks"]
    assert "poll must be `async def`" in found[0].message


def test_missing_hook_is_caught(sim: SimulatedRunPod, registered: Any) -> None:
    plugin = NoCancel()
    assert registered(plugin)
    found = failures_of(plugin, sim, http_surface=False)
    assert Failure("hooks", "missing provider hook cancel") in found


def test_bad_provider_info_is_caught(sim: SimulatedRunPod, registered: Any) -> None:
    plugin = UndatedPrices()
    assert registered(plugin)
    messages = [
        f.message for f in failures_of(plugin, sim, http_surface=False) if f.check == "info"
    ]
    assert any("YYYY-MM-DD" in m for m in messages)
    assert any("attrs class" in m for m in messages)
    assert any("finite number >= 0" in m for m in messages)


@pytest.mark.parametrize(
    ("plugin", "words"), [(CheaperWhenLonger(), "costs less"), (Impure(), "not pure")]
)
def test_bad_estimates_are_caught(
    sim: SimulatedRunPod, registered: Any, plugin: Any, words: str
) -> None:
    assert registered(plugin)
    found = [f for f in failures_of(plugin, sim, http_surface=False) if f.check == "costs"]
    assert len(found) == 1 and words in found[0].message


def test_bad_error_mapping_is_caught(sim: SimulatedRunPod, registered: Any) -> None:
    plugin = LeakyRetrying()
    assert registered(plugin)
    messages = [f.message for f in failures_of(plugin, sim) if f.check == "errors"]
    assert any("submit: raised RuntimeError" in m for m in messages)
    assert any("poll: raised HTTPStatusError" in m or "poll: raised" in m for m in messages)
    assert any("must not retry" in m for m in messages)
    assert any("contains a secret" in m for m in messages)
    assert any("secret is in a request URL" in m for m in messages)
    assert all(SECRET not in m for m in messages)


def test_broken_decode_is_caught_on_the_round_trip(sim: SimulatedRunPod, registered: Any) -> None:
    plugin = WrongDecode()
    assert registered(plugin)
    found = failures_of(plugin, sim, live=True, http_surface=False)
    assert found == [Failure("round trip", "decode must return 2 Audio in a list")]


def test_custom_fault_cases_and_assertion_message(sim: SimulatedRunPod) -> None:
    teapot = FaultCase(
        "418 treated as retryable",
        lambda _request: httpx.Response(418),
        {"submit": TimeoutError},
    )
    kit = ProviderConformance(
        rp, runpod_target(sim), fault_cases=[teapot], echo_cases=[], max_examples=5
    )
    with pytest.raises(AssertionError, match="1 conformance failure") as caught:
        kit.assert_ok()
    assert "418 treated as retryable: submit: expected TimeoutError, got Rejected" in str(
        caught.value
    )


# --- secrets: a key that reaches a message, a health detail, a status or a cost basis ---------


class KeyInHealth(Delegating):
    """Says which key it used: the kit must fail it, and must not print the key itself."""

    @hookimpl
    async def health(self, target: Target, http: httpx.AsyncClient) -> Any:
        return Health(ok=True, detail=f"authenticated with {target.settings.api_key.reveal()}")


def test_a_key_in_health_detail_fails_the_kit(sim: SimulatedRunPod, registered: Any) -> None:
    plugin = KeyInHealth()
    assert registered(plugin)
    # Offline, as a third-party author runs the kit first: the echo server's answers.
    offline = failures_of(plugin, sim, fault_cases=[], max_examples=5)
    assert (
        Failure("secrets", "echo 401: health: Health.detail contains a secret from the settings")
        in offline
    )
    # Live, the round trip's health is judged too (nothing else is switched on here).
    live = failures_of(plugin, sim, live=True, http_surface=False, max_examples=5)
    assert live == [Failure("secrets", "health: Health.detail contains a secret from the settings")]
    assert all(SECRET not in str(f) for f in offline + live)


class KeyInBasis(Delegating):
    @hookimpl
    def estimate_cost(self, target: Target, batch: list[SpeechRequest]) -> CostEstimate:
        cost = rp.estimate_cost(target=target, batch=batch)
        return attrs.evolve(cost, basis=f"{cost.basis} for {target.settings.api_key.reveal()}")


class KeyInCause(Delegating):
    @hookimpl
    async def submit(self, target: Target, batch: list[SpeechRequest], http: Any) -> Any:
        try:
            raise RuntimeError(f"answer for {target.settings.api_key.reveal()}")
        except RuntimeError as exc:  # the cause is printed with the traceback under --debug
            raise TransientError("submit failed") from exc


class KeyInStatus(Delegating):
    @hookimpl
    async def poll(self, target: Target, handle: JobHandle, http: Any) -> Any:
        return JobStatus(JobState.FAILED, error=f"bad key {target.settings.api_key.reveal()}")


@pytest.mark.parametrize(
    ("plugin", "words"),
    [
        (KeyInBasis(), "estimate_cost: CostEstimate.basis contains a secret"),
        (KeyInCause(), "echo 401: submit: the error message contains a secret"),
        (KeyInStatus(), "echo 401: poll: JobStatus.error contains a secret"),
    ],
)
def test_every_route_a_key_can_take_out_is_caught(
    sim: SimulatedRunPod, registered: Any, plugin: Any, words: str
) -> None:
    assert registered(plugin)
    found = failures_of(plugin, sim, fault_cases=[], max_examples=5)
    assert any(f.check == "secrets" and f.message.startswith(words) for f in found), found
    assert all(SECRET not in str(f) for f in found)


# --- a GPU missing from the price table -------------------------------------------------------


class UnknownGpu(Delegating):
    """Prices a GPU missing from the table its own way (`how`)."""

    def __init__(self, how: str) -> None:
        self.how = how

    @hookimpl
    def estimate_cost(self, target: Target, batch: list[SpeechRequest]) -> CostEstimate:
        cost = rp.estimate_cost(target=target, batch=batch)
        if target.gpu in rp.PRICES.usd_per_second or target.usd_per_second is not None:
            return cost
        if self.how == "free":  # `price or 0.0`, as docs/hooks.md once showed
            return attrs.evolve(cost, usd=0.0)
        if self.how == "cheapest":
            price = min(rp.PRICES.usd_per_second.values())
            return attrs.evolve(cost, usd=cost.gpu_seconds * price)
        if self.how == "refused":
            raise Rejected(f"no price for {target.gpu}: set usd_per_second", target=target.name)
        raise KeyError(target.gpu)


@pytest.mark.parametrize(
    ("how", "words"),
    [
        ("free", "is priced at $0, below the dearest GPU's"),
        ("cheapest", "below the dearest GPU's"),
        ("raw", "estimate_cost raised KeyError, not a typed error"),
        ("refused", None),
    ],
)
def test_an_unknown_gpu_is_never_cheap(
    sim: SimulatedRunPod, registered: Any, how: str, words: str | None
) -> None:
    plugin = UnknownGpu(how)
    assert registered(plugin)
    found = failures_of(plugin, sim, http_surface=False, max_examples=5)
    found = [f for f in found if f.check == "costs"]
    if words is None:
        assert found == []
    else:
        assert len(found) == 1 and words in found[0].message, found
        assert UNKNOWN_GPU in found[0].message
