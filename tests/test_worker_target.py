"""The `worker` provider (your own GPU boxes running `csm-offload serve`) without a model: its
settings (errors name the key), the URL check (property tests), its cost with and without a
price, its health, the conformance kit offline, and where each box's token goes.

The real worker server (a fleet of two, with the tiny model) is in
tests/peers/test_worker_target_serve.py.
"""

from __future__ import annotations

import asyncio
import io
import re
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import csm_offload_worker as worker
import httpx
import numpy as np
import pytest
import soundfile
from csm_offload_worker import cost
from csm_offload_worker.settings import WorkerSettings
from hypothesis import given, settings
from hypothesis import strategies as st

from csm_offload import (
    AudioUrl,
    BatchRequest,
    BatchResponse,
    JobHandle,
    JobLost,
    JobState,
    Result,
    Secret,
    SpeechRequest,
    Target,
    Unavailable,
    WorkerInfo,
    wire,
)
from csm_offload.config import load_config_text
from csm_offload.costmodel import NOT_INCLUDED, LearnedCosts, split_basis
from csm_offload.journal import FinishedJob
from csm_offload.plugins import load_plugins
from csm_offload.targets import TargetCheck, check_targets
from csm_offload.testing import ProviderConformance
from csm_offload.worker_client import WorkerHealth, WorkerJob, check_url

#: Distinctive, so the kit and these tests find them verbatim in anything that leaks them.
TOKEN = "own-gpu-worker-token-7d41ce"
OTHER_TOKEN = "own-gpu-worker-token-2b90fa"
BOX = "https://gpu1.example.com:8000"
OTHER_BOX = "https://gpu2.example.com:8443"


def make_target(name: str = "gpu1", **options: Any) -> Target:
    common = {k: options.pop(k) for k in ("usd_per_second", "gpu") if k in options}
    options.setdefault("url", BOX)
    options.setdefault("worker_token", TOKEN)
    common.setdefault("gpu", worker.DEFAULT_GPU)
    return Target(name, "worker", WorkerSettings(**options), **common)


def hourly(usd_per_hour: float, **options: Any) -> Target:
    return make_target(usd_per_second=usd_per_hour / 3600, **options)


def checks(text: str, env: dict[str, str] | None = None) -> dict[str, TargetCheck]:
    config = load_config_text(text, "fleet.yaml", env or {})
    return {c.name: c for c in check_targets(config, load_plugins(["worker"]).providers)}


def drive(
    respond: Callable[[httpx.Request], httpx.Response], go: Callable[[httpx.AsyncClient], Any]
) -> Any:
    async def main() -> Any:
        transport = httpx.MockTransport(respond)
        async with httpx.AsyncClient(transport=transport) as http:
            return await asyncio.wait_for(go(http), 30)

    return asyncio.run(main())


# --- settings -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "key", "words"),
    [
        ({"url": ""}, "url", "give the URL of `csm-offload serve`"),
        ({"url": "http://203.0.113.5:8000"}, "url", "plain http"),
        ({"url": "ftp://gpu1"}, "url", "https://"),
        ({"url": "https://user:pw@gpu1.example.com"}, "url", "credentials"),
        ({"url": BOX + "/?x=1"}, "url", "query"),
        ({"url": BOX + "#top"}, "url", "fragment"),
        ({"worker_token": None}, "worker_token", "${CSM_OFFLOAD_WORKER_TOKEN}"),
        ({"worker_token": ""}, "worker_token", "needs its token"),
        ({"poll_wait_s": 61.0}, "poll_wait_s", "0 to 60"),
        ({"poll_wait_s": float("nan")}, "poll_wait_s", "0 to 60"),
        ({"seconds_per_char": -1.0}, "seconds_per_char", ">= 0"),
        ({"job_overhead_s": float("inf")}, "job_overhead_s", ">= 0"),
    ],
)
def test_bad_settings_are_refused_naming_the_key(
    options: dict[str, Any], key: str, words: str
) -> None:
    options = {"url": BOX, "worker_token": TOKEN, **options}
    with pytest.raises(ValueError, match=r"^(\S+):") as refused:
        WorkerSettings(**options)
    message = str(refused.value)
    assert message.startswith(f"{key}:"), message
    assert words in message
    assert TOKEN not in message


def test_good_settings_forms() -> None:
    local = WorkerSettings(url="http://127.0.0.1:8000/")
    assert local.url == "http://127.0.0.1:8000" and local.worker_token is None
    remote = WorkerSettings(url=BOX + "/", worker_token=TOKEN)
    assert remote.url == BOX and isinstance(remote.worker_token, Secret)
    assert TOKEN not in repr(remote) and TOKEN not in str(remote)
    assert WorkerSettings(url="https://[::1]:9/", worker_token=TOKEN).url == "https://[::1]:9"


def test_config_errors_name_the_file_line_and_key() -> None:
    found = checks(
        "providers:\n"
        "  gpu1:\n"
        "    kind: worker\n"
        "    url: http://192.168.1.20:8000\n"
        "    worker_token: some-token\n"
        "  gpu2:\n"
        "    kind: worker\n"
        "    worker_token: some-token\n"
        "  gpu3:\n"
        "    kind: worker\n"
        "    url: https://gpu3.example.com\n"
        "    worker_token: some-token\n"
        "    poll_wiat_s: 5\n"
    )
    assert found["gpu1"].reason.startswith("fleet.yaml:4: providers.gpu1.url: plain http")
    assert "providers.gpu2.url: give the URL of `csm-offload serve`" in found["gpu2"].reason
    assert "providers.gpu3.poll_wiat_s: unknown field(s) poll_wiat_s" in found["gpu3"].reason
    assert not any(c.usable for c in found.values())
    assert "some-token" not in " ".join(c.reason for c in found.values())


FLEET = """\
providers:
  big:
    kind: worker
    url: https://gpu1.example.com:8000
    worker_token: ${CSM_OFFLOAD_WORKER_TOKEN}
    usd_per_hour: 0.9
    max_in_flight: 4
  spare:
    kind: worker
    url: https://gpu2.example.com:8000
    worker_token: ${CSM_OFFLOAD_WORKER_TOKEN}
  labelled:
    kind: worker
    url: https://gpu3.example.com:8000
    worker_token: ${CSM_OFFLOAD_WORKER_TOKEN}
    gpu: RTX 4090
"""


def test_a_fleet_config_prices_each_box_and_says_what_an_unpriced_one_needs() -> None:
    found = checks(FLEET, {"CSM_OFFLOAD_WORKER_TOKEN": TOKEN})
    big, spare, labelled = found["big"], found["spare"], found["labelled"]
    assert big.usable and big.target is not None, big.reason
    assert big.target.usd_per_second == pytest.approx(0.9 / 3600)
    assert big.target.max_in_flight == 4 and not big.target.adaptive_in_flight
    # No price and no GPU named: the box is yours, priced at $0 (and the estimate says so).
    assert spare.usable and spare.target is not None, spare.reason
    assert spare.usd_per_second == 0.0 and spare.target.adaptive_in_flight
    # A GPU named but no price: the core cannot look it up, so it asks for usd_per_hour.
    assert not labelled.usable
    assert "RTX 4090" in labelled.reason and "usd_per_hour" in labelled.reason


# --- the URL check: property tests ----------------------------------------------------------


@settings(max_examples=300)
@given(st.text(max_size=60))
def test_url_checks_never_crash_and_never_allow_clear_text_off_the_machine(text: str) -> None:
    try:
        url = check_url(text, "url")
    except ValueError as exc:
        refused = str(exc)
    else:
        refused = ""
    if refused:
        assert refused.startswith("url:")
        return
    parts = urllib.parse.urlsplit(url)
    assert parts.scheme == "https" or parts.hostname in ("127.0.0.1", "localhost", "::1")
    assert not parts.query and not parts.fragment and not parts.username
    assert check_url(url, "url") == url  # normalised once, stable after


hosts = st.sampled_from(["gpu1.example.com", "127.0.0.1", "localhost", "10.0.0.7", "[::1]"])
urls = st.builds(
    lambda scheme, host, port, path: f"{scheme}://{host}{port}{path}",
    st.sampled_from(["https", "http", "HTTP", "ftp", ""]),
    hosts,
    st.sampled_from(["", ":8000", ":0", ":99999", ":x"]),
    st.sampled_from(["", "/", "/csm/", "/a?b", "/#c", "//"]),
)


@settings(max_examples=300)
@given(urls | st.text(max_size=40), st.none() | st.just(TOKEN))
def test_settings_take_any_url_or_refuse_it_naming_the_key(url: str, token: str | None) -> None:
    try:
        found = WorkerSettings(url=url, worker_token=token)
    except ValueError as exc:
        refused = str(exc)
    else:
        refused = ""
    if refused:
        assert refused.split(":")[0] in ("url", "worker_token"), refused
        assert TOKEN not in refused
        return
    parts = urllib.parse.urlsplit(found.url)
    loopback = parts.hostname in ("127.0.0.1", "localhost", "::1")
    assert parts.scheme == "https" or loopback
    assert token is not None or loopback  # a token is only ever optional on this machine
    assert not found.url.endswith("/")


# --- cost -----------------------------------------------------------------------------------


def test_cost_is_the_owners_hourly_figure_over_job_time() -> None:
    target = hourly(0.9, seconds_per_char=0.01, job_overhead_s=0.5)
    short = worker.estimate_cost(target=target, batch=[SpeechRequest("x" * 100)])
    long = worker.estimate_cost(target=target, batch=[SpeechRequest("x" * 1000)])
    assert short.gpu_seconds == pytest.approx(1.5)
    assert short.usd == pytest.approx(1.5 * 0.9 / 3600)
    assert long.usd > short.usd
    assert short.basis.startswith("the box's $0.9/h (the target's usd_per_hour) over 1.50 s")
    assert split_basis(short.basis)[1] == cost.IDLE


def test_a_box_without_a_price_costs_nothing_and_every_estimate_says_so() -> None:
    target = make_target(seconds_per_char=0.01, job_overhead_s=0.5)
    found = worker.estimate_cost(target=target, batch=[SpeechRequest("x" * 100)])
    assert found.usd == 0.0 and found.gpu_seconds == pytest.approx(1.5)
    assert found.basis.startswith("$0, your own GPU box with no price set")
    assert "no usd_per_hour is set on the target, so its time is priced at $0" in found.basis
    # Once the core has measured the box it replaces the figure, but keeps what is left out:
    # a learnt $0 still says why it is $0.
    jobs = [FinishedJob("gpu1", 100 * (i + 1), 1000 * (i + 1), 0, 0.0, 0.0, i) for i in range(5)]
    learnt = LearnedCosts.from_jobs(jobs).apply(
        found, target, worker.provider_info(), [SpeechRequest("x" * 300)]
    )
    assert learnt.basis.startswith("learnt from 5 jobs") and learnt.usd == 0.0
    assert learnt.basis.endswith(NOT_INCLUDED + cost.UNPRICED)


def test_a_fleet_is_ordered_by_the_owners_prices() -> None:
    batch = [SpeechRequest("A sentence for the fleet.")]
    fleet = [hourly(2.0, name="dear"), make_target(name="free"), hourly(0.4, name="cheap")]
    ordered = sorted(fleet, key=lambda t: worker.estimate_cost(target=t, batch=batch).usd)
    assert [t.name for t in ordered] == ["free", "cheap", "dear"]


def test_provider_info_describes_a_box_you_own() -> None:
    info = worker.provider_info()
    assert info.kind == "worker" and info.remote and info.quality == "csm"
    assert info.settings_type is WorkerSettings and info.limits.max_batch == 16
    assert info.prices.price(worker.DEFAULT_GPU) == 0.0
    assert "usd_per_hour" in info.description


# --- health ---------------------------------------------------------------------------------


def healthz(ok: bool = True, detail: str = "engine loaded") -> httpx.Response:
    found = WorkerHealth(ok, detail, 2, 1, 8, WorkerInfo("RTX 4090", "csm", "1"))
    return httpx.Response(200, content=wire.dumps(found))


def test_health_is_the_servers_capacity_and_the_boxs_price() -> None:
    found = drive(lambda _r: healthz(), lambda http: worker.health(hourly(0.9), http))
    assert found.ok, found.detail
    assert found.workers == 1 and found.queue_depth == 2 and found.capacity == 9
    assert found.detail == (
        "worker: engine loaded; 1 running, 2 queued (holds 9: 1 running + 8 queued); "
        "priced at $0.9/h"
    )
    loading = healthz(ok=False, detail="loading")
    unpriced = drive(lambda _r: loading, lambda http: worker.health(make_target(), http))
    assert not unpriced.ok and unpriced.detail.endswith("no usd_per_hour set: priced at $0")


def test_an_unreachable_or_foreign_server_is_unhealthy_with_the_question_to_ask() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    found = drive(refuse, lambda http: worker.health(make_target(), http))
    assert not found.ok
    assert f"is `csm-offload serve` running at {BOX}, and reachable" in found.detail
    found = drive(lambda _r: httpx.Response(404), lambda http: worker.health(make_target(), http))
    assert not found.ok and f"{BOX} answers 404 where a worker server" in found.detail
    found = drive(lambda _r: httpx.Response(401), lambda http: worker.health(make_target(), http))
    assert not found.ok and "check the worker token" in found.detail


# --- the conformance kit --------------------------------------------------------------------


def test_conforms_offline_with_a_price() -> None:
    ProviderConformance(worker, hourly(0.9)).assert_ok()


def test_conforms_offline_without_a_price() -> None:
    ProviderConformance(worker, make_target()).assert_ok()


# --- where each token goes ------------------------------------------------------------------


def _flac() -> bytes:
    buffer = io.BytesIO()
    soundfile.write(buffer, np.zeros(2400, dtype="float32"), 24_000, format="FLAC")
    return buffer.getvalue()


def test_each_boxs_token_goes_only_to_its_own_host() -> None:
    """Two boxes, two tokens, every hook: each token only to its box's URL over https; a
    redirect is never followed and audio left at a URL is fetched without any token."""
    seen: list[httpx.Request] = []
    flac = _flac()

    def respond(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.host == "storage.example":
            return httpx.Response(200, content=flac)
        if request.url.path == "/healthz":
            return httpx.Response(302, headers={"Location": "https://evil.example/"})
        audio = AudioUrl("https://storage.example/a.flac")
        results = tuple(Result(i, audio=audio) for i in _asked(request))
        return httpx.Response(202, content=wire.dumps(_done(results)))

    fleet = [make_target("gpu1"), make_target("gpu2", url=OTHER_BOX, worker_token=OTHER_TOKEN)]

    async def go(http: httpx.AsyncClient) -> None:
        for target in fleet:
            assert not (await worker.health(target=target, http=http)).ok
            handle = await worker.submit(target=target, batch=[SpeechRequest("Hi.")], http=http)
            status = await worker.poll(target=target, handle=handle, http=http)
            assert status.state is JobState.COMPLETED, status.error
            (audio,) = await worker.decode(target=target, status=status, http=http)
            assert audio.sample_rate == 24_000
            await worker.cancel(target=target, handle=handle, http=http)

    drive(respond, go)
    tokens = {"gpu1.example.com": TOKEN, "gpu2.example.com": OTHER_TOKEN}
    assert {r.url.host for r in seen} == {*tokens, "storage.example"}
    for request in seen:
        sent = request.headers.get("authorization")
        own = tokens.get(request.url.host)
        assert sent == (f"Bearer {own}" if own else None), request.url
        assert request.url.scheme == "https"
    assert [r.url.host for r in seen].count("storage.example") == 2


def _asked(request: httpx.Request) -> list[str]:
    if request.method != "POST":
        return [SpeechRequest("Hi.").id]
    return [r.id for r in wire.loads(request.content, BatchRequest).requests]


def _done(results: tuple[Result, ...]) -> WorkerJob:
    response = BatchResponse(results, WorkerInfo("RTX 4090", "csm", "1"))
    return WorkerJob("j1", JobState.COMPLETED, response, exec_ms=5)


def test_a_job_the_server_forgot_is_lost_and_a_404_on_submit_is_no_worker() -> None:
    target = make_target()

    async def go(http: httpx.AsyncClient) -> None:
        with pytest.raises(JobLost, match="no longer knows job j1"):
            await worker.poll(target=target, handle=JobHandle("gpu1", "j1", ("r",)), http=http)
        with pytest.raises(Unavailable, match="is it `csm-offload serve`"):
            await worker.submit(target=target, batch=[SpeechRequest("Hi.")], http=http)
        # Cancelling a job the server no longer knows is done, not an error.
        assert (
            await worker.cancel(target=target, handle=JobHandle("gpu1", "j1", ()), http=http)
            is None
        )

    drive(lambda _r: httpx.Response(404, json={"error": "no such job"}), go)


def test_an_unusable_job_id_is_never_put_in_a_path() -> None:
    seen: list[httpx.Request] = []

    def respond(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={})

    target = make_target()

    async def go(http: httpx.AsyncClient) -> None:
        handle = JobHandle("gpu1", "../healthz", ("r",))
        with pytest.raises(JobLost):
            await worker.poll(target=target, handle=handle, http=http)
        assert await worker.cancel(target=target, handle=handle, http=http) is None

    drive(respond, go)
    assert seen == []


def test_hooks_refuse_a_target_that_is_not_a_worker_one() -> None:
    stray = Target("stray", "worker", settings={"url": BOX})
    with pytest.raises(Unavailable, match="has no worker settings"):
        worker.estimate_cost(target=stray, batch=[SpeechRequest("Hi.")])


# --- docs/worker-target.md ------------------------------------------------------------------


def test_the_documented_fleet_is_usable_and_ordered_by_price() -> None:
    """The page's YAML as it is: both boxes usable, each with its hourly price, cheaper first."""
    page = (Path(__file__).resolve().parent.parent / "docs" / "worker-target.md").read_text()
    (block,) = [b for b in re.findall(r"```yaml\n(.*?)```", page, re.S) if "kind: worker" in b]
    found = checks(block, {"CSM_OFFLOAD_WORKER_TOKEN": TOKEN})
    assert all(c.usable for c in found.values()), [c.reason for c in found.values()]
    batch = [SpeechRequest("A sentence for the fleet.")]
    usd = {
        name: worker.estimate_cost(target=c.target, batch=batch).usd for name, c in found.items()
    }
    assert sorted(usd, key=usd.__getitem__) == ["gpu1", "gpu2"]
    assert {n: c.target.max_in_flight for n, c in found.items() if c.target} == {
        "gpu1": 9,
        "gpu2": 9,
    }
