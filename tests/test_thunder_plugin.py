"""The Thunder Compute client plugin without a GPU: its settings (errors name the key), its
parsers (property tests), its cost, the conformance kit offline, the instance look-up against
the simulated Thunder API on loopback, and where each of its two tokens goes.

The real worker server (`csm-offload serve` with the tiny model) is in
tests/peers/test_thunder_worker.py.
"""

from __future__ import annotations

import asyncio
import json
import urllib.parse
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import csm_offload_thunder as thunder
import httpx
import pytest
from csm_offload_thunder import cost, instances, locate, server_health
from csm_offload_thunder.settings import ThunderSettings, check_url
from hypothesis import given, settings
from hypothesis import strategies as st

from csm_offload import (
    BatchResponse,
    JobHandle,
    JobLost,
    JobState,
    RateLimited,
    Result,
    Secret,
    SpeechRequest,
    Target,
    TransientError,
    Unavailable,
    WorkerInfo,
    wire,
)
from csm_offload import worker_jobs as jobs
from csm_offload.breaker import Breakers
from csm_offload.config import load_config_text
from csm_offload.health import HealthCache
from csm_offload.journal import Journal
from csm_offload.manager import http_client
from csm_offload.plugins import load_plugins
from csm_offload.router import Plan, RouteOptions, Router
from csm_offload.runner import Runner, RunnerSettings, RunResult
from csm_offload.speed import SpeedBook
from csm_offload.targets import check_targets
from csm_offload.testing import ProviderConformance
from csm_offload.worker_client import WorkerHealth, WorkerJob
from tests.sim.http_server import HttpServer, Request, Response
from tests.sim.runpod_cloud import SimulatedRunPod
from tests.sim.thunder_api import SimulatedThunderApi, instance_json

T = TypeVar("T")
#: Distinctive, so the kit and these tests find them verbatim in anything that leaks them.
WORKER_TOKEN = "thunder-worker-token-93be1f"
API_TOKEN = "thunder-api-token-4c2d8a"
VM_URL = "https://abc123-8000.thundercompute.net"
#: Keys an instance list has, and others: answers of every shape, often almost right.
keys = st.sampled_from(["0", "1", "a b", "status", "uuid", "httpPorts", "gpuType"]) | st.text(
    max_size=8
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=4),
    max_leaves=20,
)


@pytest.fixture(autouse=True)
def _forget_instances() -> Iterator[None]:
    locate.forget()
    yield
    locate.forget()


def run(make: Callable[[httpx.AsyncClient], Awaitable[T]], timeout_s: float = 5.0) -> T:
    async def main() -> T:
        async with httpx.AsyncClient(timeout=timeout_s) as http:
            return await asyncio.wait_for(make(http), 30)

    return asyncio.run(main())


def make_target(**options: Any) -> Target:
    options.setdefault("worker_token", WORKER_TOKEN)
    return Target("vm", "thunder", ThunderSettings(**options), gpu="A100 80GB")


def by_instance(api_url: str = thunder.settings.DEFAULT_API_URL, **options: Any) -> Target:
    return make_target(
        **{"instance_id": "0", "api_token": API_TOKEN, "api_url": api_url, **options}
    )


# --- settings -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "key", "words"),
    [
        ({}, "url", "give url"),
        ({"instance_id": "0"}, "api_token", "${TNR_API_TOKEN}"),
        ({"url": VM_URL, "worker_token": None}, "worker_token", "${CSM_OFFLOAD_WORKER_TOKEN}"),
        ({"url": "http://203.0.113.5:8000"}, "url", "plain http"),
        ({"url": "ftp://vm"}, "url", "https://"),
        ({"url": "https://user:pw@vm.example"}, "url", "credentials"),
        ({"url": VM_URL + "?x=1"}, "url", "query"),
        ({"url": VM_URL, "port": 22}, "port", "SSH"),
        ({"url": VM_URL, "port": 0}, "port", "1 to 65535"),
        ({"instance_id": "0/../1", "api_token": API_TOKEN}, "instance_id", "tnr status"),
        ({"url": VM_URL, "api_url": "http://api.example"}, "api_url", "plain http"),
        ({"url": VM_URL, "forwarded_url": "https://{uuid}.{zone}.example"}, "forwarded_url", ""),
        ({"url": VM_URL, "poll_wait_s": 61.0}, "poll_wait_s", "0 to 60"),
        ({"url": VM_URL, "seconds_per_char": -1.0}, "seconds_per_char", ">= 0"),
        (
            {"url": VM_URL, "api_token": WORKER_TOKEN, "instance_id": "0"},
            "worker_token",
            "not be your Thunder API token",
        ),
    ],
)
def test_bad_settings_are_refused_naming_the_key(
    options: dict[str, Any], key: str, words: str
) -> None:
    options.setdefault("worker_token", WORKER_TOKEN)
    with pytest.raises(ValueError, match=r"^(\S+):") as refused:
        ThunderSettings(**options)
    message = str(refused.value)
    assert message.startswith(f"{key}:"), message
    assert words in message
    assert WORKER_TOKEN not in message and API_TOKEN not in message


def test_good_settings_forms() -> None:
    assert ThunderSettings(url="http://127.0.0.1:8000/").url == "http://127.0.0.1:8000"
    found = ThunderSettings(instance_id="0", api_token=API_TOKEN, worker_token=WORKER_TOKEN)
    assert isinstance(found.api_token, Secret) and isinstance(found.worker_token, Secret)
    assert found.worker_url("AbC123") == "https://abc123-8000.thundercompute.net"
    assert WORKER_TOKEN not in repr(found) and API_TOKEN not in repr(found)


def test_config_errors_name_the_file_line_and_key() -> None:
    text = (
        "providers:\n"
        "  vm:\n"
        "    kind: thunder\n"
        "    url: http://203.0.113.5:8000\n"
        "    worker_token: some-worker-token\n"
        "  vm2:\n"
        "    kind: thunder\n"
        "    instance_id: 0\n"
        "  vm3:\n"
        "    kind: thunder\n"
        "    url: https://abc-8000.thundercompute.net\n"
        "    prot: 8000\n"
    )
    config = load_config_text(text, "thunder.yaml", {})
    reasons = {c.name: c.reason for c in check_targets(config, load_plugins(["thunder"]).providers)}
    assert reasons["vm"].startswith("thunder.yaml:4: providers.vm.url: plain http")
    assert "thunder.yaml:8: providers.vm2.instance_id: expected a string" in reasons["vm2"]
    assert "providers.vm3.prot: unknown field(s) prot" in reasons["vm3"]


def test_a_working_config_builds_a_usable_target() -> None:
    text = (
        "providers:\n"
        "  vm:\n"
        "    kind: thunder\n"
        '    instance_id: "0"\n'
        "    api_token: ${TNR_API_TOKEN}\n"
        "    worker_token: ${CSM_OFFLOAD_WORKER_TOKEN}\n"
        "    usd_per_hour: 0.78\n"
    )
    env = {"TNR_API_TOKEN": API_TOKEN, "CSM_OFFLOAD_WORKER_TOKEN": WORKER_TOKEN}
    config = load_config_text(text, "thunder.yaml", env)
    (check,) = check_targets(config, load_plugins(["thunder"]).providers)
    assert check.usable, check.reason
    assert check.target is not None and check.target.adaptive_in_flight
    assert check.target.usd_per_second == pytest.approx(0.78 / 3600)


@settings(max_examples=200)
@given(st.text(max_size=60))
def test_url_checks_never_crash_and_never_allow_clear_text_off_the_machine(text: str) -> None:
    try:
        url = check_url(text, "url")
    except ValueError as exc:
        refused = str(exc)
    else:
        parts = urllib.parse.urlsplit(url)
        assert parts.scheme == "https" or parts.hostname in ("127.0.0.1", "localhost", "::1")
        return
    assert refused.startswith("url:")


@settings(max_examples=200)
@given(st.text(max_size=70))
def test_an_instance_uuid_cannot_move_the_worker_token_to_another_host(uuid: str) -> None:
    """The uuid comes from Thunder's answer and becomes part of a host name."""
    found = ThunderSettings(url=VM_URL, worker_token=WORKER_TOKEN)
    try:
        url = found.worker_url(uuid)
    except ValueError:
        return
    assert urllib.parse.urlsplit(url).hostname == f"{uuid.lower()}-8000.thundercompute.net"


# --- Thunder's instance list ----------------------------------------------------------------


def test_the_documented_instance_list_parses() -> None:
    answer = {
        "0": instance_json("0", "RUNNING", "abc123", [8000, 8080], "A100XL"),
        "1": instance_json("1", "STARTING", "def456", [], "H100"),
    }
    found = instances.parse_instances(json.loads(json.dumps(answer)))
    assert found["0"] == instances.Instance("0", "RUNNING", "abc123", (8000, 8080), "A100XL")
    assert found["1"].http_ports == () and found["1"].phase is instances.Phase.BOOTING
    assert instances.find(found, "DEF456") is found["1"]
    assert instances.find(found, "7") is None


@settings(max_examples=300)
@given(json_values)
def test_any_instance_list_parses_or_is_a_transient_error(data: Any) -> None:
    try:
        found = instances.parse_instances(data)
    except TransientError:
        assert not isinstance(data, dict)
        return
    for key, instance in found.items():
        assert instance.id == key and isinstance(instance.status, str)
        assert instance.uuid is None or thunder.settings.UUID.fullmatch(instance.uuid)
        assert all(isinstance(p, int) and 0 < p < 65536 for p in instance.http_ports)


@pytest.mark.parametrize(
    ("status", "phase"),
    [
        ("RUNNING", instances.Phase.READY),
        ("STARTING", instances.Phase.BOOTING),
        ("PROVISIONING", instances.Phase.BOOTING),
        ("CREATING", instances.Phase.BOOTING),
        ("RESTORING", instances.Phase.BOOTING),
        ("SNAPPING", instances.Phase.BOOTING),
        ("STOPPED", instances.Phase.STOPPED),
        ("STOPPING", instances.Phase.STOPPED),
        ("DELETING", instances.Phase.DELETING),
        ("EXPLODED", instances.Phase.UNKNOWN),
    ],
)
def test_instance_statuses_map_to_phases(status: str, phase: instances.Phase) -> None:
    found = instances.parse_instance("0", {"status": status.lower(), "uuid": "abc"})
    assert found.phase is phase


# --- worker answers -------------------------------------------------------------------------

ids = st.text(st.characters(codec="ascii"), min_size=1, max_size=6)


@settings(max_examples=200)
@given(
    st.sampled_from(list(JobState)),
    st.lists(ids, min_size=1, max_size=4, unique=True),
    st.data(),
    st.none() | st.text(max_size=30),
)
def test_a_worker_job_becomes_a_status_in_request_order(
    state: JobState, asked: list[str], data: st.DataObject, error: str | None
) -> None:
    answered_ids = data.draw(st.lists(st.sampled_from(asked) | ids, max_size=6))
    answered = [Result(i, error=data.draw(st.none() | st.text(max_size=5))) for i in answered_ids]
    response = BatchResponse(tuple(answered)) if state is JobState.COMPLETED else None
    found = jobs.job_status(WorkerJob("j", state, response, error, 3, 4), asked)
    assert found.queue_ms == 3 and found.exec_ms == 4
    if found.state is JobState.COMPLETED:
        assert [r.id for r in found.results] == [i for i in asked if i in answered_ids]
        first = {r.id: r for r in reversed(answered)}
        assert all(r == first[r.id] for r in found.results)  # the first answer for an id
    else:
        assert found.results == ()
        assert not found.state.finished or found.error


def test_a_completed_job_without_a_response_is_a_failed_one() -> None:
    found = jobs.job_status(WorkerJob("j", JobState.COMPLETED, None, exec_ms=900), ["a"])
    assert found.state is JobState.FAILED and found.exec_ms == 900


@settings(max_examples=200)
@given(
    st.booleans(),
    st.text(max_size=30),
    st.integers(-5, 1000),
    st.integers(-1, 1),
    st.integers(-1, 1000),
)
def test_worker_health_is_one_worker_and_its_queue(
    ok: bool, detail: str, queued: int, running: int, max_queue: int
) -> None:
    found = WorkerHealth(ok, detail, queued, running, max_queue, WorkerInfo("g", "m", "e"))
    mapped = server_health.worker_health(found, "Thunder instance 0 is RUNNING; ")
    assert mapped.ok is ok and mapped.workers == 1 and mapped.queue_depth == max(0, queued)
    assert f"holds {1 + max(0, max_queue)}" in mapped.detail
    assert "bills per minute while it exists, working or idle" in mapped.detail
    assert server_health.capacity(found) == 1 + max(0, max_queue)


# --- cost -----------------------------------------------------------------------------------


def test_cost_amortises_the_hourly_price_over_job_time() -> None:
    target = make_target(url=VM_URL, seconds_per_char=0.01, job_overhead_s=0.5)
    short = thunder.estimate_cost(target=target, batch=[SpeechRequest("x" * 100)])
    long = thunder.estimate_cost(target=target, batch=[SpeechRequest("x" * 1000)])
    assert short.gpu_seconds == pytest.approx(1.5)
    assert short.usd == pytest.approx(1.5 * 0.78 / 3600)
    assert long.usd > short.usd
    assert "$0.78/h amortised over 1.50 s of job time" in short.basis
    assert "bills per minute while it exists, working or idle" in short.basis


def test_cost_of_an_unknown_gpu_is_the_dearest_and_overrides_win() -> None:
    settings_ = ThunderSettings(url=VM_URL, worker_token=WORKER_TOKEN)
    batch = [SpeechRequest("Hello there.")]

    def usd_and_basis(**target: Any) -> tuple[float, str]:
        found = cost.estimate(
            Target("vm", "thunder", settings_, **target), batch, settings_, thunder.PRICES, None
        )
        return found.usd, found.basis

    unknown, basis = usd_and_basis(gpu="T4")
    h100, _basis = usd_and_basis(gpu="H100")
    assert unknown == pytest.approx(h100) and "set usd_per_hour" in basis
    assert usd_and_basis(gpu="T4", usd_per_second=0.0001)[0] < h100


def test_provider_info_says_the_vm_bills_while_it_exists() -> None:
    info = thunder.provider_info()
    assert info.kind == "thunder" and info.remote and info.quality == "csm"
    assert "bills per minute while it exists" in info.description
    assert "working or idle" in info.prices.billing


# --- the conformance kit --------------------------------------------------------------------


def test_conforms_offline_with_a_url() -> None:
    ProviderConformance(thunder, make_target(url=VM_URL)).assert_ok()


def test_conforms_offline_with_a_url_and_an_instance() -> None:
    ProviderConformance(thunder, by_instance(url=VM_URL)).assert_ok()


def test_conforms_offline_by_instance_alone() -> None:
    """A job's handle keeps the uuid of the instance it went to, so its polls need no call
    to Thunder's API; the kit's handles carry one the way `submit`'s do."""

    def handle(target: Target, batch: Any) -> JobHandle:
        extra = {thunder.EXTRA_UUID: "abc123"}
        return JobHandle(target.name, "conformance-job", tuple(r.id for r in batch), extra=extra)

    ProviderConformance(thunder, by_instance(), handle_factory=handle).assert_ok()


# --- the instance look-up against the simulated Thunder API ---------------------------------


class FakeWorker:
    """A loopback stand-in for the worker server's `/healthz` that records who called it."""

    def __init__(self) -> None:
        self.seen: list[Request] = []
        self.server = HttpServer(self.handle)

    async def handle(self, request: Request) -> Response:
        self.seen.append(request)
        found = WorkerHealth(True, "engine loaded", 2, 1, 8, WorkerInfo("A100", "csm", "1"))
        return Response(200, wire.dumps(found))


@pytest.fixture
def api() -> Iterator[SimulatedThunderApi]:
    with SimulatedThunderApi(token=API_TOKEN) as sim:
        yield sim


def look(
    api: SimulatedThunderApi, setup: Callable[[int], None] | None = None, **options: Any
) -> tuple[Any, FakeWorker]:
    """Run the health hook of a target naming instance "0", its forwarded port on a loopback
    stand-in of the worker; `setup(port)` runs once that port is known."""

    async def go(http: httpx.AsyncClient) -> tuple[Any, FakeWorker]:
        worker = FakeWorker()
        await worker.server.start()
        try:
            port = worker.server.port
            if setup is not None:
                setup(port)
            forwarded = {"forwarded_url": "http://127.0.0.1:{port}", "port": port}
            target = by_instance(api.url, **{**forwarded, **options})
            return await thunder.health(target=target, http=http), worker
        finally:
            await worker.server.stop()

    return run(go)


def test_a_running_instance_with_its_port_forwarded_is_healthy(api: SimulatedThunderApi) -> None:
    def running(port: int) -> None:
        api.put("0", status="RUNNING", uuid="abc123", http_ports=(port,))

    found, worker = look(api, running)
    assert found.ok, found.detail
    assert found.workers == 1 and found.queue_depth == 2
    assert found.detail.startswith("Thunder instance 0 (A100XL) is RUNNING; worker: engine loaded")
    assert [r.path for r in worker.seen] == ["/healthz"]
    assert [s.path for s in api.seen] == ["/v1/instances/list"]


@pytest.mark.parametrize(
    ("status", "words"),
    [
        ("STARTING", "Thunder instance 0 (A100XL) is STARTING, not serving yet"),
        ("PROVISIONING", "is PROVISIONING, not serving yet"),
        ("STOPPED", "is STOPPED: nothing runs on it"),
        ("DELETING", "is DELETING (being deleted)"),
        ("HIBERNATING", "is HIBERNATING, not RUNNING"),
    ],
)
def test_an_instance_that_cannot_serve_is_named_and_its_worker_never_asked(
    api: SimulatedThunderApi, status: str, words: str
) -> None:
    api.put("0", status=status, uuid="abc123")
    found, worker = look(api)
    assert not found.ok
    assert words in found.detail
    assert worker.seen == []


def test_a_missing_instance_is_named_with_the_ones_that_exist(api: SimulatedThunderApi) -> None:
    api.put("1", status="RUNNING", uuid="abc123")
    api.put("2", status="STOPPED", uuid="def456")
    found, worker = look(api)
    assert not found.ok and worker.seen == []
    assert "Thunder instance '0' was not found" in found.detail
    assert "your instances are 1 (RUNNING), 2 (STOPPED)" in found.detail
    api.remove("1")
    api.remove("2")
    found, _worker = look(api)
    assert "your account has no instances" in found.detail


def test_a_port_that_is_not_forwarded_names_the_tnr_command(api: SimulatedThunderApi) -> None:
    api.put("0", status="RUNNING", uuid="abc123", http_ports=(8080,))
    found, worker = look(api)
    assert not found.ok and worker.seen == []
    assert f"tnr ports forward 0 --add {worker.server.port}`" in found.detail


def test_an_instance_can_be_named_by_its_uuid(api: SimulatedThunderApi) -> None:
    api.put("3", status="STOPPED", uuid="abc123")
    found, _worker = look(api, instance_id="ABC123")
    assert "Thunder instance 3 (A100XL) is STOPPED" in found.detail


def test_thunder_api_refusals_and_faults_are_unhealthy_or_back_pressure(
    api: SimulatedThunderApi,
) -> None:
    api.put("0", status="RUNNING", uuid="abc123")
    found, _worker = look(api, api_token="not-the-right-token")
    assert not found.ok and "check api_token (TNR_API_TOKEN" in found.detail
    api.fail(500)
    found, _worker = look(api)
    assert not found.ok and "HTTP 500" in found.detail
    api.fail(429, retry_after="3")
    with pytest.raises(RateLimited) as limited:
        look(api)
    assert limited.value.retry_after == 3


def test_a_hostile_uuid_is_never_a_host(api: SimulatedThunderApi) -> None:
    api.put("0", status="RUNNING", uuid="evil.example/x")
    found, worker = look(api)
    assert not found.ok and "no usable uuid" in found.detail
    assert worker.seen == []


# --- where each token goes ------------------------------------------------------------------


def test_each_token_goes_only_to_its_own_host() -> None:
    """The API token only to Thunder's API, the worker token only to the VM's forwarded URL,
    over every hook; redirects are never followed."""
    seen: list[httpx.Request] = []
    listing = {"0": instance_json("0", "RUNNING", "abc123", [8000], "A100XL")}
    done = WorkerJob("j1", JobState.COMPLETED, BatchResponse(()), exec_ms=5)

    def respond(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.host == "api.thundercompute.com":
            return httpx.Response(200, json=listing)
        if request.url.path == "/healthz":
            return httpx.Response(302, headers={"Location": "https://evil.example/"})
        return httpx.Response(202, content=wire.dumps(done))

    target = by_instance()

    async def go() -> None:
        async with httpx.AsyncClient(transport=httpx.MockTransport(respond)) as http:
            assert not (await thunder.health(target=target, http=http)).ok
            handle = await thunder.submit(target=target, batch=[SpeechRequest("Hi.")], http=http)
            assert handle.extra == {thunder.EXTRA_UUID: "abc123"}
            await thunder.poll(target=target, handle=handle, http=http)
            await thunder.cancel(target=target, handle=handle, http=http)

    asyncio.run(go())
    hosts = {r.url.host for r in seen}
    assert hosts == {"api.thundercompute.com", "abc123-8000.thundercompute.net"}
    for request in seen:
        sent = request.headers.get("authorization")
        own = API_TOKEN if request.url.host == "api.thundercompute.com" else WORKER_TOKEN
        assert sent == f"Bearer {own}", request.url
        assert request.url.scheme == "https"
    assert [r.url.path for r in seen if r.url.host.startswith("api.")] == ["/v1/instances/list"]


def test_a_job_the_server_forgot_is_lost_and_a_404_on_submit_is_no_worker() -> None:
    def respond(request: httpx.Request) -> httpx.Response:
        return httpx.Response(404, json={"error": "no such job"})

    target = make_target(url=VM_URL)

    async def go() -> None:
        async with httpx.AsyncClient(transport=httpx.MockTransport(respond)) as http:
            with pytest.raises(JobLost, match="no longer knows job j1"):
                await thunder.poll(target=target, handle=JobHandle("vm", "j1", ("r",)), http=http)
            with pytest.raises(Unavailable, match="is it `csm-offload serve`"):
                await thunder.submit(target=target, batch=[SpeechRequest("Hi.")], http=http)
            found = await thunder.health(target=target, http=http)
            assert not found.ok and f"{VM_URL} answers 404 where a worker server" in found.detail

    asyncio.run(go())


def test_an_unusable_job_id_is_never_put_in_a_path() -> None:
    seen: list[httpx.Request] = []

    def respond(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={})

    target = make_target(url=VM_URL)

    async def go() -> None:
        async with httpx.AsyncClient(transport=httpx.MockTransport(respond)) as http:
            handle = JobHandle("vm", "../healthz", ("r",))
            with pytest.raises(JobLost):
                await thunder.poll(target=target, handle=handle, http=http)
            assert await thunder.cancel(target=target, handle=handle, http=http) is None

    asyncio.run(go())
    assert seen == []


# --- the router's fallback chain ------------------------------------------------------------


def test_a_stopped_vm_is_passed_over_for_the_next_target(
    api: SimulatedThunderApi, tmp_path: Path
) -> None:
    """The Thunder target is the cheapest, but its instance is STOPPED: the plan says so and
    the work goes to the dearer RunPod endpoint; once the instance runs, it is first again."""
    requests = [SpeechRequest(f"Fallback sentence {i}.") for i in range(3)]
    api.put("0", status="STOPPED", uuid="abc123")

    async def go(spare: SimulatedRunPod) -> tuple[RunResult, Plan]:
        worker = FakeWorker()
        await worker.server.start()
        checks = _fallback_targets(api, spare, worker.server.port)
        config_cloud = load_config_text("providers: {}", "x.yaml", {}).audio.cloud_gpu
        router = Router(checks, config_cloud, HealthCache(60), Breakers(), SpeedBook())
        pairs = [(c.target, c.provider) for c in checks]
        try:
            async with http_client() as http:
                await router.health.refresh(pairs, http)
                with Journal(tmp_path / "journal.sqlite3") as journal:
                    runner = Runner(router, journal, http, RunnerSettings(), RouteOptions())
                    result = await runner.run(requests)
                api.put("0", status="RUNNING", uuid="abc123", http_ports=(worker.server.port,))
                await router.health.refresh(pairs, http)
                return result, router.plan(requests, RouteOptions())
        finally:
            await worker.server.stop()

    with SimulatedRunPod(workers=2, seconds_per_char=0.001) as spare:
        result, later = asyncio.run(go(spare))
    assert result.ok, result.summary()
    assert {o.target for o in result.outcomes.values()} == {"spare"}
    (why,) = [r.reason for r in result.plan.rejected if r.name == "vm"]
    assert "Thunder instance 0 (A100XL) is STOPPED" in why
    assert [c.target.name for c in later.candidates] == ["vm", "spare"]


def _fallback_targets(api: SimulatedThunderApi, spare: SimulatedRunPod, port: int) -> list[Any]:
    text = (
        "providers:\n"
        "  vm:\n"
        "    kind: thunder\n"
        '    instance_id: "0"\n'
        f"    api_token: {API_TOKEN}\n"
        f"    worker_token: {WORKER_TOKEN}\n"
        f"    api_url: {api.url}\n"
        "    forwarded_url: http://127.0.0.1:{port}\n"
        f"    port: {port}\n"
        "  spare:\n"
        "    kind: runpod\n"
        f"    endpoint_url: {spare.url}\n"
        f"    api_key: {spare.api_key}\n"
        "    usd_per_second: 0.01\n"
    )
    config = load_config_text(text, "fallback.yaml", {})
    checks = check_targets(config, load_plugins(["thunder", "runpod"]).providers)
    assert all(c.usable for c in checks), [c.reason for c in checks]
    return checks


@pytest.mark.parametrize(("max_queue", "cap"), [(1, 2), (2, 3), (7, 8), (32, 8)])
def test_the_in_flight_cap_follows_the_servers_queue_size(max_queue: int, cap: int) -> None:
    from csm_offload_thunder.server_health import worker_health

    from csm_offload.capacity import in_flight_for
    from csm_offload.target import Target
    from csm_offload.worker_client import WorkerHealth

    found = WorkerHealth(ok=True, detail="ready", queued=0, running=0, max_queue=max_queue)
    target = Target(name="vm", kind="thunder", max_in_flight=8, adaptive_in_flight=True)
    assert in_flight_for(target, worker_health(found)) == cap
    fixed = Target(name="vm", kind="thunder", max_in_flight=8, adaptive_in_flight=False)
    assert in_flight_for(fixed, worker_health(found)) == 8
