"""The Replicate client plugin: its parsers (property tests), its settings, its costs, and every
behaviour of the simulated Replicate API (tests/sim/replicate_api.py) mapped to the right
state or typed error; the conformance kit offline and live; a real Runner synthesis."""

from __future__ import annotations

import asyncio
import email.utils
import json
import time
import tomllib
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import csm_offload_replicate as rep
import httpx
import pytest
import yaml
from csm_offload_replicate import api, dataurl, names, output, prediction
from hypothesis import given, settings
from hypothesis import strategies as st

from csm_offload import (
    BatchRequest,
    BatchResponse,
    JobHandle,
    JobLost,
    JobState,
    JobStatus,
    RateLimited,
    Rejected,
    Result,
    SpeechRequest,
    Target,
    TransientError,
    Unavailable,
    wire,
)
from csm_offload.backoff import RetryPolicy
from csm_offload.breaker import Breakers
from csm_offload.config import load_config_text, structure_paths
from csm_offload.errors import TOO_LONG
from csm_offload.health import HealthCache
from csm_offload.journal import Journal
from csm_offload.plugins import load_plugins
from csm_offload.router import RouteOptions, Router
from csm_offload.runner import Runner, RunnerSettings, RunResult
from csm_offload.speed import SpeedBook
from csm_offload.targets import check_targets
from csm_offload.testing import ProviderConformance
from tests.sim.replicate_api import VERSION_ID, SimulatedReplicate

from .strategies import results, speech_requests

T = TypeVar("T")
TOKEN = "r8_replicate_test_token_5f2c9"
HEX = st.text("0123456789abcdef", min_size=64, max_size=64)
NAME = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,20}", fullmatch=True)


def run(make: Callable[[httpx.AsyncClient], Awaitable[T]], timeout_s: float = 10.0) -> T:
    """Run `make(http)` on a fresh loop with a fresh client."""

    async def main() -> T:
        async with httpx.AsyncClient(timeout=timeout_s) as http:
            return await asyncio.wait_for(make(http), 60)

    return asyncio.run(main())


def target(sim: SimulatedReplicate | None = None, gpu: str = "gpu-l40s", **options: Any) -> Target:
    where = {"base_url": sim.url, "version": sim.version} if sim is not None else {}
    where.setdefault("version", f"sim-owner/csm:{VERSION_ID}")
    settings = rep.ReplicateSettings(**{"api_token": TOKEN, **where, **options})
    return Target("replicate-test", "replicate", settings, gpu=gpu)


def batch(*texts: str) -> list[SpeechRequest]:
    return [SpeechRequest(text, max_audio_length_ms=2000) for text in texts]


def outcome(call: Callable[[], T]) -> T | Exception:
    """What `call` returned, or the exception it raised."""
    try:
        return call()
    except Exception as exc:
        return exc


async def until_finished(t: Target, handle: JobHandle, http: httpx.AsyncClient) -> JobStatus:
    status = await rep.poll(t, handle, http)
    while not status.state.finished:
        await asyncio.sleep(0.02)
        status = await rep.poll(t, handle, http)
    return status


@pytest.fixture(scope="module")
def sim() -> Iterator[SimulatedReplicate]:
    with SimulatedReplicate(token=TOKEN, seconds_per_char=0.0005) as cloud:
        yield cloud


# --- names and URLs ---------------------------------------------------------------------------


@given(HEX, NAME, NAME)
def test_versions_parse_with_and_without_their_model(version_id: str, owner: str, name: str):
    bare = names.parse_version(version_id)
    assert (bare.version_id, bare.owner) == (version_id, None)
    full = names.parse_version(f"{owner}/{name}:{version_id}")
    assert (full.version_id, full.owner, full.name) == (version_id, owner, name)
    assert full.version == f"{owner}/{name}:{version_id}"  # sent as given


@given(st.text(max_size=80))
def test_anything_else_is_not_a_version(text: str):
    if names._VERSION_ID.fullmatch(text) or names._MODEL_VERSION.fullmatch(text):
        return
    with pytest.raises(ValueError, match=r"^version: .*owner/name:<version id>"):
        names.parse_version(text)


@given(st.text(max_size=60))
def test_a_deployment_is_owner_slash_name(text: str):
    found = outcome(lambda: names.parse_deployment(text))
    if isinstance(found, ValueError):
        assert str(found).startswith("deployment: ")
        return
    assert isinstance(found, names.ModelRef)
    assert f"{found.owner}/{found.name}" == text
    assert "/" not in (found.owner or "") + (found.name or "")


@given(st.text(min_size=1, max_size=40))
def test_prediction_ids_stay_inside_their_route(prediction_id: str):
    routes = names.Routes("https://api.replicate.com", names.parse_version(VERSION_ID))
    url = httpx.URL(routes.cancel(prediction_id))
    assert url.host == "api.replicate.com"
    assert url.raw_path.count(b"/") == 4  # /v1/predictions/<id>/cancel
    assert url.raw_path.startswith(b"/v1/predictions/") and url.raw_path.endswith(b"/cancel")


def test_routes_of_a_version_and_of_a_deployment():
    base = "https://api.replicate.com"
    version = names.Routes(base, names.parse_version(f"me/csm:{VERSION_ID}"))
    assert version.create == f"{base}/v1/predictions"
    assert version.health == f"{base}/v1/models/me/csm/versions/{VERSION_ID}"
    assert names.Routes(base, names.parse_version(VERSION_ID)).health == f"{base}/v1/account"
    deployment = names.Routes(base, names.parse_deployment("me/csm-prod"))
    assert deployment.create == f"{base}/v1/deployments/me/csm-prod/predictions"
    assert deployment.health == f"{base}/v1/deployments/me/csm-prod"
    assert deployment.prediction("abc") == f"{base}/v1/predictions/abc"


@pytest.mark.parametrize(
    ("base", "fix"),
    [
        ("http://api.replicate.com", "plain http is only allowed"),
        ("ftp://api.replicate.com", "expected an https:// URL"),
        ("https://user:pw@api.replicate.com", "must not carry credentials"),
        ("https://api.replicate.com/?x=1", "query or fragment"),
        ("api.replicate.com", "expected an https:// URL"),
    ],
)
def test_base_urls_that_would_leak_the_token_are_refused(base: str, fix: str):
    with pytest.raises(ValueError, match=f"^base_url: .*{fix}"):
        names.check_base_url(base)
    assert names.check_base_url("http://127.0.0.1:9/") == "http://127.0.0.1:9"


# --- settings ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "key", "fix"),
    [
        ({"api_token": ""}, "api_token", "REPLICATE_API_TOKEN"),
        ({"version": None}, "version", "give the model version"),
        ({"deployment": "me/csm"}, "version", "either version or deployment"),
        ({"version": "latest"}, "version", "owner/name:<version id>"),
        ({"version": None, "deployment": "csm"}, "deployment", "owner/name"),
        ({"wait_s": 0}, "wait_s", "1 to 60"),
        ({"wait_s": 61}, "wait_s", "use_wait: false"),
        ({"seconds_per_char": -1.0}, "seconds_per_char", ">= 0"),
        ({"call_total_s": 0.0}, "call_total_s", "> 0"),
        ({"base_url": "http://example.com"}, "base_url", "https://"),
        ({"version": None, "deployment": "me/d", "public_model": True}, "public_model", "idle"),
    ],
)
def test_bad_settings_name_their_key_and_the_fix(data: dict[str, Any], key: str, fix: str):
    full = {"api_token": TOKEN, "version": VERSION_ID, **data}
    full = {k: v for k, v in full.items() if v is not None}
    value, errors = structure_paths(full, rep.ReplicateSettings)
    assert value is None
    assert [(path, fix in message) for path, message in errors] == [((key,), True)], errors
    assert all(TOKEN not in message for _path, message in errors)


def test_settings_from_a_config_file_with_the_token_from_the_environment(sim):
    config = load_config_text(
        f"providers:\n  r:\n    kind: replicate\n    gpu: gpu-h100\n"
        f"    api_token: ${{REPLICATE_API_TOKEN}}\n    deployment: {sim.deployment}\n",
        "replicate.yaml",
        {"REPLICATE_API_TOKEN": TOKEN},
    )
    plugins = load_plugins(["replicate"])
    assert not plugins.errors, plugins.errors
    (check,) = check_targets(config, plugins.providers)
    assert check.usable, check.reason
    assert check.target.settings.api_token.reveal() == TOKEN
    assert TOKEN not in repr(check.target)


# --- the prediction object ---------------------------------------------------------------------

TIMES = st.floats(0, 2e9, allow_nan=False)
STATUS = st.sampled_from(sorted(prediction.STATES))


@given(
    st.from_regex(r"[a-z0-9]{26}", fullmatch=True),
    STATUS,
    st.none() | st.floats(0, 1e6, allow_nan=False),
    TIMES,
    st.floats(0, 1e5, allow_nan=False),
)
def test_predictions_parse(pid: str, status: str, predict: float | None, created: float, q: float):
    data = {
        "id": pid,
        "status": status,
        "metrics": {"predict_time": predict},
        "created_at": iso_of(created),
        "started_at": iso_of(created + q),
        "input": {"batch": "..."},
    }
    found = prediction.parse(json.loads(json.dumps(data)))
    assert (found.id, found.state) == (pid, prediction.STATES[status])
    assert found.predict_ms == (None if predict is None else round(predict * 1000))
    assert found.queue_ms is not None and abs(found.queue_ms - q * 1000) <= 2
    assert (found.error is not None) == (found.state.finished and found.state.name != "COMPLETED")
    assert "input" not in prediction.kept(data)


def iso_of(unix: float) -> str:
    return datetime.fromtimestamp(unix, UTC).isoformat().replace("+00:00", "Z")


JSON = st.recursive(
    st.none() | st.booleans() | st.floats(allow_nan=False) | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)


@given(JSON, st.dictionaries(st.sampled_from(["id", "status", "metrics", "error"]), JSON))
def test_any_answer_is_a_prediction_or_a_transient_error(anything: Any, fields: dict[str, Any]):
    for data in (anything, fields):
        found = outcome(lambda data=data: prediction.parse(data, "t"))
        if isinstance(found, TransientError):
            assert found.target == "t"
        else:
            assert isinstance(found, prediction.Prediction)
            assert names.PREDICTION_ID.fullmatch(found.id)


@given(JSON)
def test_durations_are_whole_non_negative_ms_or_none(value: Any):
    found = prediction.seconds_to_ms(value)
    assert found is None or (isinstance(found, int) and found >= 0)


def test_failed_aborted_and_canceled_predictions_say_why():
    aborted = prediction.parse({"id": "a1", "status": "aborted"})
    assert aborted.state is JobState.TIMED_OUT and "deadline" in (aborted.error or "")
    failed = prediction.parse({"id": "a1", "status": "failed", "error": f"Bearer {TOKEN} boom"})
    assert failed.state is JobState.FAILED and TOKEN not in (failed.error or "")
    assert prediction.parse({"id": "a1", "status": "canceled"}).error == "prediction canceled"
    with pytest.raises(TransientError, match="unknown status"):
        prediction.parse({"id": "a1", "status": "queued"})
    with pytest.raises(TransientError, match="no usable id"):
        prediction.parse({"id": "../account", "status": "succeeded"})


# --- data URLs, throttle hints, outputs ---------------------------------------------------------


@given(st.binary(max_size=300), st.sampled_from(["application/json", "audio/flac", ""]))
def test_data_urls_round_trip(data: bytes, media_type: str):
    found = dataurl.decode(dataurl.encode(data, media_type), max_bytes=300)
    assert found.data == data
    assert found.media_type == (media_type or "text/plain")


@given(st.binary(min_size=1, max_size=300))
def test_data_urls_over_the_bound_are_refused_before_decoding(data: bytes):
    with pytest.raises(ValueError, match="over"):
        dataurl.decode(dataurl.encode(data), max_bytes=len(data) - 1)


@given(st.text(max_size=80))
def test_anything_is_a_data_url_or_one_clear_error(text: str):
    found = outcome(lambda: dataurl.decode(text, 1000))
    assert isinstance(found, dataurl.DataUrl) or "data: URL" in str(found)


def test_percent_encoded_data_urls():
    assert dataurl.decode("data:,%7B%22a%22%3A1%7D", 100).data == b'{"a":1}'
    with pytest.raises(ValueError, match="comma"):
        dataurl.decode("data:application/json;base64", 100)
    with pytest.raises(ValueError, match="not valid base64"):
        dataurl.decode("data:;base64,@@@@", 100)


@given(st.integers(0, 10**6), st.sampled_from(["second", "seconds", "s"]))
def test_throttle_messages_give_their_wait(seconds: int, unit: str):
    for body in (
        f'{{"detail":"Request was throttled. Expected available in {seconds} {unit}."}}',
        f'{{"detail":"Request was throttled. Your rate limit resets in ~{seconds}{unit}."}}',
    ):
        assert api.throttle_hint(body.encode()) == min(seconds, 3600)


@given(st.text(max_size=200))
def test_throttle_hints_never_raise(text: str):
    found = api.throttle_hint(text)
    assert found is None or 0 <= found <= 3600


def wire_response(*ids: str) -> dict[str, Any]:
    return wire.unstructure(BatchResponse(tuple(Result(i, duration_ms=1) for i in ids)))


def resolve(value: Any, http: httpx.AsyncClient | None = None) -> BatchResponse:
    async def go(client: httpx.AsyncClient) -> BatchResponse:
        return await output.response_of(value, http or client, "t", 5.0)

    return run(go)


@given(st.lists(results, max_size=3))
@settings(max_examples=30, deadline=None)  # an event loop per example: slow on a busy machine
def test_outputs_as_object_json_text_and_data_url_agree(found: list[Result]):
    response = BatchResponse(tuple(found))
    raw = wire.dumps(response)
    assert resolve(wire.unstructure(response)) == response
    assert resolve(raw.decode()) == response
    assert resolve(dataurl.encode(raw)) == response


@pytest.mark.parametrize(
    ("value", "why"),
    [
        (None, "no output"),
        (["a"], "of type list"),
        ("ftp://files.example/x.json", "neither a data: URL nor an https://"),
        ("http://files.example/x.json", "neither a data: URL nor an https://"),
        ("https://u:p@files.example/x.json", "neither"),
        ("data:application/json;base64,e30=", "not a csm-offload response"),
        ('{"schema": 2, "results": []}', "unsupported schema"),
    ],
)
def test_unusable_outputs_say_why(value: Any, why: str):
    with pytest.raises(output.Unusable, match=why):
        resolve(value)


def test_results_are_put_in_request_order_and_others_dropped():
    found = [Result("b"), Result("x"), Result("a"), Result("a", error="dup")]
    assert output.in_request_order(found, ["a", "b", "c"]) == (Result("a"), Result("b"))
    with pytest.raises(output.Unusable, match="other requests"):
        output.in_request_order([Result("x")], ["a"])


@given(st.lists(speech_requests(max_context=1), min_size=1, max_size=3))
@settings(max_examples=25, deadline=None)
def test_the_create_body_carries_the_wire_batch(requests: list[SpeechRequest]):
    t = target()
    body = json.loads(rep.create_body(t.settings, requests))
    assert body["version"] == f"sim-owner/csm:{VERSION_ID}"
    assert wire.loads(body["input"]["batch"], BatchRequest) == BatchRequest(tuple(requests))
    deployed = target(version=None, deployment="me/csm").settings
    assert "version" not in json.loads(rep.create_body(deployed, requests))


# --- costs ------------------------------------------------------------------------------------


def test_the_price_table_is_dated_and_has_the_published_h100():
    assert rep.PRICES.date == "2026-11-24"
    assert round(rep.PRICES.usd_per_second["gpu-h100"] * 3600, 2) == 5.49
    assert rep.provider_info().default_gpu in rep.PRICES.usd_per_second


def test_estimates_say_what_private_models_leave_out():
    requests = batch("x" * 100)
    private = rep.estimate_cost(target(), requests)
    assert private.gpu_seconds == pytest.approx(1.0 + 0.05 * 100)
    assert private.usd == pytest.approx(private.gpu_seconds * 0.000975)
    assert "not included: the setup (cold boot) and idle time" in private.basis
    public = rep.estimate_cost(target(public_model=True), requests)
    assert public.usd == private.usd and "not included" not in public.basis
    unknown = rep.estimate_cost(target(gpu="gpu-b200"), requests)
    assert unknown.usd == pytest.approx(unknown.gpu_seconds * 0.001525)
    assert "not in Replicate's price table" in unknown.basis


def test_actual_cost_is_predict_time_times_the_price():
    status = JobStatus(JobState.COMPLETED, exec_ms=2500)
    assert rep.actual_cost(target(gpu="gpu-h100"), status) == pytest.approx(2.5 * 0.001525)
    assert rep.actual_cost(target(), JobStatus(JobState.COMPLETED)) is None


# --- the conformance kit ------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["version", "deployment", "bare version"])
def test_conforms_offline(where: str):
    options: dict[str, Any] = {
        "version": {"version": f"me/csm:{VERSION_ID}"},
        "deployment": {"version": None, "deployment": "me/csm-prod"},
        "bare version": {"version": VERSION_ID},
    }[where]
    ProviderConformance(rep, target(**options), max_examples=20).assert_ok()


@pytest.mark.parametrize("where", ["version", "deployment"])
def test_conforms_live_against_the_sim(sim: SimulatedReplicate, where: str):
    options = {"version": None, "deployment": sim.deployment} if where == "deployment" else {}
    before = sim.stats()["requests"].get("create", 0)
    ProviderConformance(rep, target(sim, **options), live=True, max_examples=10).assert_ok()
    assert sim.stats()["requests"]["create"] > before


# --- behaviour against the simulated API -------------------------------------------------------


def test_a_short_job_is_answered_on_the_create_call(sim: SimulatedReplicate):
    t = target(sim)
    gets = sim.stats()["requests"].get("get", 0)

    async def go(http: httpx.AsyncClient) -> tuple[JobHandle, JobStatus, list[Any]]:
        handle = await rep.submit(t, batch("Hello there.", "Bye."), http)
        status = await rep.poll(t, handle, http)
        return handle, status, await rep.decode(t, status, http)

    handle, status, audios = run(go)
    assert handle.answered and rep.EXTRA_PREDICTION in handle.extra
    assert "batch" not in handle.extra[rep.EXTRA_PREDICTION]  # never the echoed input
    assert status.state is JobState.COMPLETED and status.exec_ms is not None
    assert [r.id for r in status.results] == list(handle.request_ids)
    assert len(audios) == 2 and all(a.duration > 0 for a in audios)
    assert sim.stats()["requests"].get("get", 0) == gets  # no API call to poll it
    assert sim.stats()["prefer"][-1] == "wait=60"


def test_output_files_are_fetched_without_the_token(sim: SimulatedReplicate):
    t = target(sim)
    seen = len(sim.file_requests())
    run(lambda http: until_done(t, http))
    fetched = sim.file_requests()[seen:]
    assert fetched and all(r["method"] == "GET" for r in fetched)
    for request in fetched:
        assert "authorization" not in request
        assert all(TOKEN not in str(value) for value in request.values())


async def until_done(t: Target, http: httpx.AsyncClient) -> JobStatus:
    handle = await rep.submit(t, batch("A file for you."), http)
    return await until_finished(t, handle, http)


def test_a_cold_start_outlasts_the_wait_and_is_polled():
    with SimulatedReplicate(token=TOKEN, cold_start_s=1.3) as cold:
        t = target(cold, wait_s=1, job_overhead_s=0.5)

        async def go(http: httpx.AsyncClient) -> tuple[JobHandle, JobStatus, JobStatus]:
            handle = await rep.submit(t, batch("Cold."), http)
            first = await rep.poll(t, handle, http)
            return handle, first, await until_finished(t, handle, http)

        handle, first, last = run(go)
        assert not handle.answered and cold.stats()["prefer"] == ["wait=1"]
        assert first.state is JobState.QUEUED  # still starting: the instance sets up
        assert last.state is JobState.COMPLETED
        assert last.queue_ms is not None and last.queue_ms >= 1000


def test_long_jobs_and_use_wait_false_are_not_held_open(sim: SimulatedReplicate):
    long = target(sim, wait_s=5, seconds_per_char=1.0)
    never = target(sim, use_wait=False)
    for t in (long, never):
        handle = run(lambda http, t=t: rep.submit(t, batch("Some words to say."), http))
        assert sim.stats()["prefer"][-1] is None
        assert run(lambda http, t=t, h=handle: until_finished(t, h, http)).state.finished


def test_data_url_outputs_need_no_file_request():
    with SimulatedReplicate(token=TOKEN, output="data") as inline:
        status = run(lambda http: until_done(target(inline), http))
        assert status.state is JobState.COMPLETED and inline.file_requests() == []
        assert len(status.results) == 1


@pytest.mark.parametrize(
    ("fault", "state", "why"),
    [
        ("failed", JobState.FAILED, "RuntimeError: boom"),
        ("canceled", JobState.CANCELLED, "prediction canceled"),
        ("aborted", JobState.TIMED_OUT, "deadline passed before it started"),
        ("bad_output", JobState.FAILED, "not a csm-offload response"),
        ("file_gone", JobState.FAILED, "HTTP 404"),
        ("data_removed", JobState.FAILED, "removed this prediction's output"),
    ],
)
def test_every_end_of_a_prediction(sim: SimulatedReplicate, fault: str, state: JobState, why: str):
    sim.inject_prediction(fault)
    status = run(lambda http: until_done(target(sim, use_wait=False), http))
    assert status.state is state
    assert why in (status.error or "")
    if fault in ("bad_output", "file_gone", "data_removed"):
        assert status.exec_ms is not None  # over and paid for: its cost is recorded


def http_date(seconds: float) -> str:
    return email.utils.formatdate(time.time() + seconds, usegmt=True)


@pytest.mark.parametrize("route", ["create", "get"])
@pytest.mark.parametrize(
    ("retry_after", "detail", "low", "high"),
    [
        ("7", "Request was throttled.", 7, 7),
        ("http-date", "Request was throttled.", 25, 31),
        (None, "Request was throttled. Expected available in 4 seconds.", 4, 4),
    ],
)
def test_429s_give_their_wait(
    sim: SimulatedReplicate, route: str, retry_after: str | None, detail: str, low: int, high: int
):
    header = http_date(30) if retry_after == "http-date" else retry_after
    t = target(sim, use_wait=False)
    handle = JobHandle(t.name, "abc123", ("r",))
    sim.inject(route, "http", status=429, retry_after=header, detail=detail)
    calls = {
        "create": lambda http: rep.submit(t, batch("Throttled."), http),
        "get": lambda http: rep.poll(t, handle, http),
    }
    with pytest.raises(RateLimited) as caught:
        run(calls[route])
    assert caught.value.retry_after is not None and low <= caught.value.retry_after <= high


def test_the_published_rate_limit_is_honoured_through_429s():
    with SimulatedReplicate(token=TOKEN, rate_limits=True, rate_scale=0.005) as limited:
        t = target(limited, use_wait=False)  # 3 creates per 0.3 s

        async def go(http: httpx.AsyncClient) -> RateLimited:
            for _ in range(10):
                try:
                    await rep.submit(t, batch("Again."), http)
                except RateLimited as exc:
                    return exc
            raise AssertionError("never throttled")

        throttled = run(go)
        assert throttled.retry_after == 1  # Retry-After in whole seconds, at least 1
        assert rep.LIMITS.submit_rate is not None and rep.LIMITS.submit_rate.per_second == 10


def test_cancel_stops_a_running_prediction(sim: SimulatedReplicate):
    t = target(sim, use_wait=False, seconds_per_char=1.0)

    async def go(http: httpx.AsyncClient) -> JobStatus:
        handle = await rep.submit(t, batch("Some long text " * 200), http)
        await rep.cancel(t, handle, http)
        return await until_finished(t, handle, http)

    assert run(go).state is JobState.CANCELLED


def test_unknown_predictions_are_lost_and_cancelling_them_is_done(sim: SimulatedReplicate):
    t = target(sim)
    gone = JobHandle(t.name, "nosuchprediction", ("r",))
    with pytest.raises(JobLost):
        run(lambda http: rep.poll(t, gone, http))
    assert run(lambda http: rep.cancel(t, gone, http)) is None


def test_an_answer_about_another_prediction_is_not_trusted(sim: SimulatedReplicate):
    t = target(sim)
    handle = run(lambda http: rep.submit(t, batch("Mine."), http))
    wrong = JobHandle(t.name, "someotherid", handle.request_ids, extra=handle.extra)
    with pytest.raises(TransientError, match="not someotherid"):
        run(lambda http: rep.poll(t, wrong, http))


def test_a_refused_token_names_the_setting(sim: SimulatedReplicate):
    wrong = target(sim, api_token="r8_not_the_token_at_all")
    with pytest.raises(Unavailable, match="api_token"):
        run(lambda http: rep.submit(wrong, batch("x"), http))
    health = run(lambda http: rep.health(wrong, http))
    assert not health.ok and "r8_not_the_token_at_all" not in health.detail


def test_an_unknown_deployment_or_version_is_named(sim: SimulatedReplicate):
    nowhere = target(sim, version=None, deployment="sim-owner/nope")
    with pytest.raises(Unavailable, match="check the target's version or deployment"):
        run(lambda http: rep.submit(nowhere, batch("x"), http))
    other = target(sim, version=f"sim-owner/csm:{'0' * 64}")
    with pytest.raises(Rejected, match=r"422: .*Invalid version"):
        run(lambda http: rep.submit(other, batch("x"), http))


def test_batches_over_the_limits_are_refused_before_sending():
    t = target()
    with pytest.raises(Rejected, match="at most 16"):
        run(lambda http: rep.submit(t, batch(*["x"] * 17), http))
    with pytest.raises(Rejected, match=TOO_LONG):
        run(lambda http: rep.submit(t, batch("x" * 5001), http))


def test_health_of_a_deployment_a_version_and_a_bare_version(sim: SimulatedReplicate):
    deployed = target(sim, gpu="gpu-h100", version=None, deployment=sim.deployment)
    found = run(lambda http: rep.health(deployed, http))
    assert found.ok and "gpu-l40s, 0 to 2 instances" in found.detail
    assert "set the target's gpu to gpu-l40s" in found.detail and found.workers == 2
    assert run(lambda http: rep.health(target(sim), http)).ok
    bare = run(lambda http: rep.health(target(sim, version=VERSION_ID), http))
    assert bare.ok and "not checked" in bare.detail
    missing = target(sim, version=None, deployment="sim-owner/nope")
    assert not run(lambda http: rep.health(missing, http)).ok


# --- a real Runner synthesis ---------------------------------------------------------------------

SETTINGS = RunnerSettings(
    retry=RetryPolicy(max_retries=4, base_s=0.02, cap_s=0.2),
    first_poll_s=0.05,
    poll_min_s=0.02,
    deadline_s=60.0,
)


def synthesize(sim: SimulatedReplicate, requests: list[SpeechRequest], tmp: Path) -> RunResult:
    config = load_config_text(
        f"""
providers:
  replicate-test:
    kind: replicate
    base_url: {sim.url}
    version: {sim.version}
    api_token: ${{REPLICATE_API_TOKEN}}
    gpu: gpu-l40s
    max_batch: 2
    max_in_flight: 2
""",
        "replicate.yaml",
        {"REPLICATE_API_TOKEN": TOKEN},
    )
    plugins = load_plugins(["replicate"])
    checks = check_targets(config, plugins.providers)
    assert all(c.usable for c in checks), [c.reason for c in checks]
    router = Router(checks, config.audio.cloud_gpu, HealthCache(60), Breakers(3, 0.3), SpeedBook())

    async def go() -> RunResult:
        with Journal(tmp / "journal.sqlite3") as journal:
            async with httpx.AsyncClient(timeout=10.0) as http:
                runner = Runner(router, journal, http, SETTINGS, RouteOptions(cloud_gpu=True))
                result = await runner.run(requests)
            jobs = journal.finished_jobs("replicate-test")
            assert len(jobs) == 3
            for job in jobs:  # the recorded cost is the prediction's predict_time x price
                assert job.actual_usd == pytest.approx(job.exec_ms / 1000 * 0.000975)
            return result

    return asyncio.run(go())


def test_a_runner_synthesis_through_replicate_completes(sim: SimulatedReplicate, tmp_path: Path):
    requests = [SpeechRequest(f"Sentence {i} for Replicate.") for i in range(5)]
    before = sim.stats()["requests"].get("create", 0)
    result = synthesize(sim, requests, tmp_path)
    assert result.ok, result.summary()
    assert {o.request_id for o in result.outcomes.values() if o.ok} == {r.id for r in requests}
    assert sim.stats()["requests"]["create"] - before == 3  # batches of two; none sent twice
    assert all(sim.stats()["submissions"][r.id] == 1 for r in requests)


def test_kept_predictions_survive_the_journal_round_trip():
    data = {"id": "abc", "status": "succeeded", "output": "https://x/y.json", "input": {"b": 1}}
    extra = {rep.EXTRA_PREDICTION: json.dumps(prediction.kept(data))}
    handle = JobHandle("t", "abc", ("r",), extra=extra, answered=True)
    assert rep._kept(handle) == {k: v for k, v in data.items() if k != "input"}
    broken = JobHandle("t", "abc", ("r",), extra={rep.EXTRA_PREDICTION: "{not json"})
    assert rep._kept(broken) is None


# --- the Cog definition -------------------------------------------------------------------------

ROOT = Path(__file__).resolve().parent.parent
COG = ROOT / "plugins" / "replicate" / "cog"


def pins(path: Path) -> dict[str, str]:
    found = {}
    for line in path.read_text("utf-8").splitlines():
        name, sep, version = line.strip().partition("==")
        if sep and not name.startswith("#"):
            found[name.lower()] = version
    return found


def test_the_cog_definition_points_at_the_runner_and_the_baked_weights():
    config = yaml.safe_load((COG / "cog.yaml").read_text("utf-8"))
    assert config["run"] == "predict.py:Runner"
    source = (COG / "predict.py").read_text("utf-8")
    assert "class Runner(BaseRunner):" in source
    build = config["build"]
    assert build["gpu"] is True and build["python_version"] == "3.11"
    assert (COG / build["python_requirements"]).is_file()
    (bake,) = build["run"]
    assert bake["mounts"] == [
        {"type": "secret", "id": "hf_token", "target": "/run/secrets/hf_token"}
    ]
    assert "local_dir='/weights/csm-1b'" in bake["command"]
    assert 'BAKED_WEIGHTS = FilePath("/weights/csm-1b")' in source


def test_the_cog_requirements_pin_what_the_other_worker_images_pin():
    ours = pins(COG / "requirements.txt")
    theirs = pins(ROOT / "plugins" / "runpod" / "deploy" / "requirements.txt")
    shared = set(ours) & set(theirs)
    assert {"transformers", "numpy", "soundfile", "attrs", "cattrs", "httpx"} <= shared
    assert {name: ours[name] for name in shared} == {name: theirs[name] for name in shared}
    makefile = (ROOT / "Makefile").read_text("utf-8")
    assert f"torch=={ours['torch']} torchaudio=={ours['torchaudio']}" in makefile


def test_the_cog_requirements_name_the_wheels_pip_builds():
    wheels = [
        line.strip()
        for line in (COG / "requirements.txt").read_text("utf-8").splitlines()
        if line.startswith("./wheels/")
    ]
    expected = []
    for project in (ROOT / "pyproject.toml", ROOT / "plugins" / "local_csm" / "pyproject.toml"):
        meta = tomllib.loads(project.read_text("utf-8"))["project"]
        name = meta["name"].replace("-", "_")
        expected.append(f"./wheels/{name}-{meta['version']}-py3-none-any.whl")
    assert wheels == expected
    assert (COG / ".gitignore").read_text("utf-8").splitlines()[-1] == "wheels/"
