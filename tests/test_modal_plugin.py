"""The Modal provider's client hooks, settings, answers, costs and deploy definition, offline.

The hooks are driven through `httpx.MockTransport` (and the conformance kit's fault and echo
servers); the web endpoint itself, under uvicorn with a real engine, is in
tests/peers/test_modal_app.py. No test here needs torch, a network or a Modal account.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.metadata
import json
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import csm_offload_modal as plugin
import httpx
import pytest
from csm_offload_modal import answers, protocol
from csm_offload_modal.deploy import ENGINE_PINS, TORCH, WEB_PINS, DeployConfig
from csm_offload_modal.settings import ModalSettings, endpoint_url
from hypothesis import given, settings
from hypothesis import strategies as st

from csm_offload import (
    BatchResponse,
    Health,
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
    UserError,
    httpapi,
)
from csm_offload.config import load_config_text
from csm_offload.errors import TooLong
from csm_offload.plugins import load_plugins
from csm_offload.targets import check_targets
from csm_offload.testing import check_provider
from tests.strategies import batch_responses

KEY = "wk-modaltestkey0123"
SECRET = "ws-modaltestsecret4567"
URL = "https://acme--csm-offload-web.modal.run"
CALL = "fc-01KSXH02Z4Z9X06Y9FQJFJ6ZE5"


def modal_target(gpu: str | None = "A100 80GB", **overrides: Any) -> Target:
    settings = ModalSettings(url=URL, key=KEY, secret=SECRET, **overrides)
    return Target("modal-test", "modal", settings, gpu=gpu)


def handle_for(target: Target, batch: Any) -> JobHandle:
    return JobHandle(target.name, CALL, tuple(r.id for r in batch))


Responder = Callable[[httpx.Request], httpx.Response]


def drive(respond: Responder, call: Callable[[httpx.AsyncClient], Any]) -> Any:
    """Run one hook call against `respond`; its value, or the exception it raised."""

    async def go() -> Any:
        transport = httpx.MockTransport(respond)
        async with httpx.AsyncClient(transport=transport, timeout=5.0) as http:
            try:
                return await call(http)
            except Exception as exc:
                return exc

    return asyncio.run(go())


def answer(status: int, body: Any = None, **headers: str) -> Responder:
    content = body if isinstance(body, bytes) else json.dumps(body or {}).encode()

    def respond(_request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, content=content, headers=headers)

    return respond


# --- settings ---------------------------------------------------------------------------------


def test_settings_normalise_the_url_and_hold_secrets() -> None:
    settings = ModalSettings(url=URL + "/jobs/", key=KEY, secret=SECRET)
    assert settings.url == URL
    assert ModalSettings(url=URL + "/health", key=KEY, secret=SECRET).url == URL
    assert KEY not in repr(settings) and SECRET not in repr(settings)
    assert settings.headers() == {"Modal-Key": KEY, "Modal-Secret": SECRET}


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("http://acme--csm-offload-web.modal.run", "plain http is only allowed"),
        ("https://user:pw@acme.modal.run", "must not carry credentials"),
        ("https://acme.modal.run/?x=1", "query or fragment"),
        ("acme.modal.run", "expected https://"),
        ("ftp://acme.modal.run", "expected https://"),
    ],
)
def test_bad_urls_name_the_key_and_the_fix(url: str, words: str) -> None:
    with pytest.raises(ValueError, match=f"^url: .*{words}"):
        endpoint_url(url)


def test_loopback_http_is_allowed_for_tests() -> None:
    assert endpoint_url("http://127.0.0.1:8123/") == "http://127.0.0.1:8123"
    assert endpoint_url("http://localhost:9/jobs") == "http://localhost:9"


@given(st.text(max_size=60))
def test_endpoint_url_accepts_or_names_the_key(url: str) -> None:
    try:
        found = endpoint_url(url)
    except ValueError as exc:
        found = str(exc)
        assert found.startswith("url: ")
        return
    assert found.startswith(("https://", "http://127.0.0.1", "http://localhost", "http://["))
    assert not found.endswith("/")


@pytest.mark.parametrize("name", ["key", "secret"])
def test_an_empty_token_half_names_its_variable(name: str) -> None:
    values = {"url": URL, "key": KEY, "secret": SECRET, name: ""}
    with pytest.raises(ValueError, match=f"^{name}: empty; .*MODAL_{name.upper()}"):
        ModalSettings(**values)


def config_errors(block: str, env: dict[str, str]) -> list[str]:
    config = load_config_text(f"providers:\n  modal:\n    kind: modal\n{block}", "m.yaml", env)
    (check,) = check_targets(config, load_plugins(["modal"]).providers)
    return [check.reason] if not check.usable else []


def test_the_config_validates_settings_naming_file_line_and_key() -> None:
    env = {"MODAL_KEY": KEY, "MODAL_SECRET": SECRET}
    good = f"    url: {URL}\n    key: ${{MODAL_KEY}}\n    secret: ${{MODAL_SECRET}}\n"
    assert config_errors(good, env) == []
    (bad_url,) = config_errors(good.replace("https://", "http://"), env)
    assert "m.yaml:4" in bad_url and "url" in bad_url and "plain http" in bad_url
    (typo,) = config_errors(good + "    scaledown_window: 60\n", env)
    assert "scaledown_window" in typo and "unknown field" in typo
    (negative,) = config_errors(good + "    seconds_per_char: -1\n", env)
    assert "seconds_per_char" in negative and ">= 0" in negative
    (unset,) = config_errors(good, {})
    assert "MODAL_KEY" in unset and "MODAL_SECRET" in unset
    assert all(KEY not in e and SECRET not in e for e in (bad_url, typo, negative))


# --- protocol and answers (parsers: property-tested) -----------------------------------------


@given(st.text(max_size=80))
def test_only_modal_call_ids_are_accepted(value: str) -> None:
    if protocol.is_call_id(value):
        assert value.startswith("fc-") and value[3:].isalnum() and value.isascii()
        assert protocol.job_path(value) == f"/jobs/{value}"


def completed(response: BatchResponse, exec_ms: int) -> httpapi.Answer:
    body = protocol.completed_body(response, exec_ms)
    return httpapi.Answer(200, httpx.Headers(), body)


@given(batch_responses, st.integers(0, 10**9))
def test_a_completed_body_round_trips_in_request_order(
    response: BatchResponse, exec_ms: int
) -> None:
    ids = list(dict.fromkeys(r.id for r in response.results))[::-1]  # any order the job asked
    status = answers.job_status(completed(response, exec_ms), ids, "t")
    first = {}
    for result in response.results:
        first.setdefault(result.id, result)
    if response.results:
        assert status.state is JobState.COMPLETED
        assert status.results == tuple(first[i] for i in ids)
    assert status.exec_ms == exec_ms


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=10) | st.floats(allow_nan=False),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)
json_objects = st.fixed_dictionaries(
    {},
    optional={
        "state": st.sampled_from(["pending", "completed", "failed", "timed_out"]) | json_values,
        "error": json_values,
        "exec_ms": json_values,
        "output": json_values,
        "call_id": st.just(CALL) | json_values,
        "ok": json_values,
        "gpu": json_values,
        "backlog": json_values,
        "containers": json_values,
    },
)


@settings(max_examples=200)
@given(st.sampled_from([200, 202, 500]), json_objects | json_values, st.booleans())
def test_any_answer_gives_a_typed_result_or_a_typed_error(
    status_code: int, data: Any, garble: bool
) -> None:
    body = json.dumps(data).encode()[: 7 if garble else None]
    reply = httpapi.Answer(status_code, httpx.Headers(), body)
    for read in (
        lambda: answers.job_status(reply, ["a", "b"], "t"),
        lambda: answers.call_id_of(reply, "t"),
        lambda: answers.health_of(reply, "t", "A100 80GB"),
        lambda: answers.failed_call(reply),
    ):
        try:
            value = read()
        except TransientError:
            continue
        assert value is None or isinstance(value, JobStatus | str | Health)


def test_a_failed_call_is_a_failed_job_but_a_bare_500_is_transient() -> None:
    def at_500(body: bytes) -> httpapi.Answer:
        return httpapi.Answer(500, httpx.Headers(), body)

    failed = at_500(b'{"state":"failed","error":"engine failed: OOM"}')
    assert answers.failed_call(failed) == JobStatus(JobState.FAILED, error="engine failed: OOM")
    late = answers.failed_call(at_500(b'{"state":"timed_out","error":"ran 600 s"}'))
    assert late is not None and late.state is JobState.TIMED_OUT
    assert answers.failed_call(at_500(b'{"error":"x"}')) is None
    assert answers.failed_call(at_500(b"<html>")) is None


def test_health_names_a_gpu_the_target_is_not_priced_as() -> None:
    body = b'{"ok":true,"gpu":"L40S","model":"sesame/csm-1b","backlog":2,"containers":1}'
    reply = httpapi.Answer(200, httpx.Headers(), body)
    health = answers.health_of(reply, "t", "A100 80GB")
    assert health.ok and health.queue_depth == 2 and health.workers == 1
    assert "priced as A100 80GB" in health.detail
    assert "priced as" not in answers.health_of(reply, "t", "L40S").detail
    assert answers.gpu_key("A100-80GB") == answers.gpu_key("A100 80GB")
    assert answers.gpu_key("H100!") == "H100"


# --- the hooks over HTTP ----------------------------------------------------------------------


def test_submit_sends_the_batch_with_the_token_only_in_the_proxy_headers() -> None:
    seen: list[httpx.Request] = []

    def respond(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(202, json={"call_id": CALL})

    target, batch = modal_target(), [SpeechRequest("Hello there.")]
    handle = drive(respond, lambda http: plugin.submit(target, batch, http))
    assert (handle.job_id, handle.request_ids) == (CALL, (batch[0].id,))
    (request,) = seen
    assert str(request.url) == URL + "/jobs" and request.method == "POST"
    assert request.headers["Modal-Key"] == KEY and request.headers["Modal-Secret"] == SECRET
    assert "authorization" not in request.headers
    assert json.loads(request.content)["requests"][0]["text"] == "Hello there."


@pytest.mark.parametrize(
    ("respond", "kind", "words"),
    [
        (answer(202, {"call_id": "fc-../../x"}), TransientError, "usable call id"),
        (answer(401, b"modal-http: missing credentials"), Unavailable, "MODAL_KEY"),
        (answer(400, {"error": "requests[0].topk: expected an integer"}), Rejected, "topk"),
        (answer(413, {"error": "the body is over 32 MiB"}), Rejected, "32 MiB"),
        (answer(404, b"not found"), Unavailable, "url"),
        (answer(503, {"error": "Modal did not spawn"}), TransientError, "503"),
        (answer(429, b"", **{"Retry-After": "3"}), RateLimited, "rate limited"),
        (answer(303, b"", Location="https://elsewhere.example/"), Unavailable, "redirect"),
    ],
)
def test_submit_maps_each_answer_to_a_typed_error(
    respond: Responder, kind: type[Exception], words: str
) -> None:
    target = modal_target()
    found = drive(respond, lambda http: plugin.submit(target, [SpeechRequest("Hi.")], http))
    assert isinstance(found, kind) and words in str(found), found


def test_submit_refuses_what_cannot_be_sent_before_any_request(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def never(_request: httpx.Request) -> httpx.Response:
        raise AssertionError("nothing may be sent")

    target = modal_target()
    too_long = drive(never, lambda http: plugin.submit(target, [SpeechRequest("x" * 5001)], http))
    assert isinstance(too_long, TooLong) and "too long for one request" in str(too_long)
    many = [SpeechRequest(f"line {i}") for i in range(17)]
    assert isinstance(drive(never, lambda http: plugin.submit(target, many, http)), Rejected)
    assert isinstance(drive(never, lambda http: plugin.submit(target, [], http)), Rejected)
    monkeypatch.setattr(protocol, "MAX_BODY_BYTES", 100)
    big = drive(never, lambda http: plugin.submit(target, [SpeechRequest("y" * 200)], http))
    assert isinstance(big, Rejected) and "lower max_batch" in str(big)


def test_poll_maps_the_job_queue_answers() -> None:
    target, batch = modal_target(), [SpeechRequest("One."), SpeechRequest("Two.")]
    handle = handle_for(target, batch)
    pending = drive(answer(202, {"state": "pending"}), lambda h: plugin.poll(target, handle, h))
    assert pending == JobStatus(JobState.RUNNING)
    results = tuple(Result(r.id, error="bad") for r in reversed(batch))
    body = protocol.completed_body(BatchResponse(results), 1234)
    done = drive(answer(200, body), lambda h: plugin.poll(target, handle, h))
    assert done.state is JobState.COMPLETED and done.exec_ms == 1234
    assert [r.id for r in done.results] == [r.id for r in batch]
    lost = drive(answer(404, {"state": "expired"}), lambda h: plugin.poll(target, handle, h))
    assert isinstance(lost, JobLost) and "expired" in str(lost)
    failed_body = {"state": "failed", "error": "RuntimeError: engine failed: CUDA OOM"}
    failed = drive(answer(500, failed_body), lambda h: plugin.poll(target, handle, h))
    assert failed.state is JobState.FAILED and "CUDA OOM" in failed.error
    bare = drive(answer(500, {"error": "boom"}), lambda h: plugin.poll(target, handle, h))
    assert isinstance(bare, TransientError)


def test_unusable_output_is_a_failed_job_that_keeps_its_time() -> None:
    target, batch = modal_target(), [SpeechRequest("One.")]
    body = {"state": "completed", "exec_ms": 900, "output": {"schema": 2, "results": []}}
    status = drive(answer(200, body), lambda h: plugin.poll(target, handle_for(target, batch), h))
    assert status.state is JobState.FAILED and status.exec_ms == 900 and "schema" in status.error
    other = protocol.completed_body(BatchResponse((Result("someone-else", error="x"),)), 5)
    status = drive(answer(200, other), lambda h: plugin.poll(target, handle_for(target, batch), h))
    assert status.state is JobState.FAILED and "other requests" in status.error


def test_a_handle_that_is_not_a_call_id_is_lost_without_a_request() -> None:
    def never(_request: httpx.Request) -> httpx.Response:
        raise AssertionError("a foreign id must not reach a URL")

    target = modal_target()
    handle = JobHandle(target.name, "../health", ("a",))
    assert isinstance(drive(never, lambda h: plugin.poll(target, handle, h)), JobLost)
    assert drive(never, lambda h: plugin.cancel(target, handle, h)) is None


def test_cancel_posts_and_a_gone_call_is_done() -> None:
    seen: list[str] = []

    def respond(request: httpx.Request) -> httpx.Response:
        seen.append(f"{request.method} {request.url.path}")
        return httpx.Response(404 if len(seen) > 1 else 200, json={})

    target = modal_target()
    handle = JobHandle(target.name, CALL, ("a",))
    assert drive(respond, lambda h: plugin.cancel(target, handle, h)) is None
    assert drive(respond, lambda h: plugin.cancel(target, handle, h)) is None
    assert seen == [f"POST /jobs/{CALL}/cancel"] * 2


def test_health_reports_the_endpoint_and_refusals_as_not_ok() -> None:
    target = modal_target(gpu="L40S")
    body = {"ok": True, "app": "csm-offload", "gpu": "L40S", "model": "m", "backlog": 0}
    health = drive(answer(200, body), lambda h: plugin.health(target, h))
    assert health.ok and health.queue_depth == 0 and health.workers is None
    refused = drive(answer(401, b"modal-http: invalid"), lambda h: plugin.health(target, h))
    assert not refused.ok and "MODAL_SECRET" in refused.detail
    limited = drive(answer(429, b"", **{"Retry-After": "2"}), lambda h: plugin.health(target, h))
    assert isinstance(limited, RateLimited)


def test_an_echoed_token_is_masked_before_anything_reads_the_answer() -> None:
    echo = f"you sent Modal-Key {KEY} and Modal-Secret {SECRET}".encode()
    target = modal_target()
    found = drive(answer(400, echo), lambda h: plugin.submit(target, [SpeechRequest("a")], h))
    assert isinstance(found, Rejected)
    assert KEY not in str(found) and SECRET not in str(found)


def test_the_plugin_conforms_offline() -> None:
    found = check_provider(plugin, modal_target(), handle_factory=handle_for)
    assert found == []


# --- costs ------------------------------------------------------------------------------------


@given(st.text(max_size=300), st.text(max_size=300))
def test_estimates_grow_with_text_and_say_what_they_leave_out(a: str, b: str) -> None:
    target = modal_target()
    short = plugin.estimate_cost(target, [SpeechRequest(a)])
    longer = plugin.estimate_cost(target, [SpeechRequest(a + b)])
    assert 0 < short.usd <= longer.usd
    assert "not included: cold starts" in short.basis and "scaledown_window 60 s" in short.basis


def test_prices_come_from_the_dated_table_the_override_or_the_dearest() -> None:
    batch = [SpeechRequest("x" * 100)]  # 1 s + 100 x 0.05 s = 6 GPU seconds
    assert plugin.estimate_cost(modal_target("L4"), batch).usd == pytest.approx(6 * 0.000222)
    own = attrs.evolve(modal_target("L4"), usd_per_second=0.01)
    assert plugin.estimate_cost(own, batch).usd == pytest.approx(0.06)
    unknown = plugin.estimate_cost(modal_target("B200"), batch)
    assert unknown.usd == pytest.approx(6 * max(plugin.PRICES.usd_per_second.values()))
    assert "set usd_per_second" in unknown.basis
    done = JobStatus(JobState.COMPLETED, exec_ms=2500)
    assert plugin.actual_cost(modal_target("H100"), done) == pytest.approx(2.5 * 0.001097)
    assert plugin.actual_cost(modal_target("H100"), JobStatus(JobState.FAILED)) is None


# --- deploy definition ------------------------------------------------------------------------


def pins() -> dict[str, str]:
    return dict(pin.split("==") for pin in (*WEB_PINS, *ENGINE_PINS, *TORCH))


def test_the_images_pin_the_versions_the_tests_run_with() -> None:
    found = pins()
    for name in ("fastapi", "transformers", "torch", "torchaudio", "numpy", "soundfile"):
        assert name in found
    for name, version in found.items():
        assert importlib.metadata.version(name) == version, f"{name}=={version} is not installed"


names = st.text(st.characters(categories=["L", "N"], max_codepoint=127), min_size=1, max_size=12)


@given(
    st.builds(
        DeployConfig,
        app_name=names,
        gpu=names,
        scaledown_window_s=st.integers(0, 3600),
        timeout_s=st.integers(0, 86400),
        max_containers=st.integers(0, 100),
        hf_secret=st.just("") | names,
        model=names,
        engine_env=st.sampled_from([(), (("CSM_OFFLOAD_DTYPE", "float16"),)]),
    )
)
def test_deploy_settings_survive_the_trip_into_the_containers(config: DeployConfig) -> None:
    assert DeployConfig.from_env(config.environment()) == config


def test_a_bad_deploy_setting_names_its_variable() -> None:
    with pytest.raises(UserError, match="CSM_OFFLOAD_MODAL_SCALEDOWN_S must be a whole number"):
        DeployConfig.from_env({"CSM_OFFLOAD_MODAL_SCALEDOWN_S": "a minute"})


def import_app_offline(monkeypatch: pytest.MonkeyPatch, home: Any) -> Any:
    """A fresh import of `csm_offload_modal.app` with no account and no network: any
    connection attempt fails the test."""

    def no_network(*_args: Any, **_kwargs: Any) -> None:
        raise AssertionError("importing app.py opened a connection")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setenv("HOME", str(home))  # no ~/.modal.toml
    for var in ("MODAL_TOKEN_ID", "MODAL_TOKEN_SECRET"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.delitem(sys.modules, "csm_offload_modal.app", raising=False)
    return importlib.import_module("csm_offload_modal.app")


def test_app_py_is_a_modal_app_that_imports_without_an_account(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    """`modal deploy -m csm_offload_modal.app` imports the module: it must contact nothing,
    and pass Modal the decorators and arguments the docs promise."""
    import modal

    seen: dict[str, Any] = {}

    def record(name: str, real: Callable[..., Any]) -> Callable[..., Any]:
        def recorded(*args: Any, **kwargs: Any) -> Any:
            seen.setdefault(name, []).append((args, kwargs))
            return real(*args, **kwargs)

        return recorded

    for owner, name in [
        (modal, "asgi_app"),
        (modal, "enter"),
        (modal, "method"),
        (modal, "concurrent"),
        (modal.App, "cls"),
        (modal.Volume, "from_name"),
        (modal.Secret, "from_name"),
    ]:
        key = f"{owner.__name__.removeprefix('modal')}.{name}".lstrip(".")
        monkeypatch.setattr(owner, name, record(key, getattr(owner, name)))
    monkeypatch.setenv("CSM_OFFLOAD_MODAL_GPU", "L40S")
    monkeypatch.setenv("CSM_OFFLOAD_MODAL_SCALEDOWN_S", "120")
    app = import_app_offline(monkeypatch, tmp_path)

    assert isinstance(app.app, modal.App) and app.app.name == "csm-offload"
    assert seen["asgi_app"] == [((), {"requires_proxy_auth": True})]
    ((_self,), cls) = seen["App.cls"][0]
    assert cls["gpu"] == "L40S" and cls["scaledown_window"] == 120
    assert cls["volumes"] == {"/cache": app.cache} and cls["secrets"] == app.secrets
    assert len(seen["enter"]) == 1 and len(seen["method"]) == 1
    assert seen["Volume.from_name"] == [(("csm-offload-cache",), {"create_if_missing": True})]
    assert seen["Secret.from_name"] == [(("huggingface",), {"required_keys": ["HF_TOKEN"]})]
    assert app.CONFIG.environment()["HF_HOME"] == "/cache/huggingface"
    monkeypatch.delitem(sys.modules, "csm_offload_modal.app", raising=False)


def test_the_deployed_web_function_spawns_and_polls_with_timeout_0(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    """`web` as `app.py` defines it (its function body run locally), with Modal's `spawn`,
    `FunctionCall.from_id(...).get` and stats replaced by recorders: the endpoint never waits."""
    from types import SimpleNamespace as Fake

    import modal

    app = import_app_offline(monkeypatch, tmp_path)
    log: list[tuple[Any, ...]] = []

    async def spawn(batch: bytes) -> Any:
        log.append(("spawn", json.loads(batch)["requests"][0]["text"]))
        return Fake(object_id=CALL)

    async def stats() -> Any:
        return Fake(backlog=3, num_total_runners=2)

    async def get(**options: Any) -> bytes:  # Modal's FunctionCall.get(timeout=...)
        log.append(("get", options))
        raise TimeoutError()

    async def cancel() -> None:
        log.append(("cancel",))

    generate = Fake(spawn=Fake(aio=spawn), get_current_stats=Fake(aio=stats))
    monkeypatch.setattr(app, "CsmWorker", lambda: Fake(generate=generate))
    call = Fake(get=Fake(aio=get), cancel=Fake(aio=cancel))
    monkeypatch.setattr(modal.FunctionCall, "from_id", lambda call_id: call)
    web = app.web.local()
    batch = b'{"schema":1,"requests":[{"id":"r","text":"Hi."}]}'

    async def go() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=web)
        async with httpx.AsyncClient(transport=transport, base_url="http://web") as http:
            return [
                await http.post("/jobs", content=batch),
                await http.get(f"/jobs/{CALL}"),
                await http.post(f"/jobs/{CALL}/cancel"),
                await http.get("/health"),
            ]

    submitted, pending, cancelled, health = asyncio.run(go())
    assert (submitted.status_code, submitted.json()) == (202, {"call_id": CALL})
    assert (pending.status_code, pending.json()) == (202, {"state": "pending"})
    assert cancelled.status_code == 200
    assert health.json() == {
        "ok": True,
        "app": "csm-offload",
        "gpu": "A100-80GB",
        "model": "sesame/csm-1b",
        "backlog": 3,
        "containers": 2,
    }
    assert log == [("spawn", "Hi."), ("get", {"timeout": 0}), ("cancel",)]
    monkeypatch.delitem(sys.modules, "csm_offload_modal.app", raising=False)


def test_the_install_constraints_hold_every_web_pin() -> None:
    # `make install-all` constrains the test install with these files: a web pin missing from
    # them floats to the newest release, and the image would ship what the tests never ran.
    root = Path(__file__).resolve().parent.parent
    files = ("plugins/runpod/deploy/requirements.txt", "plugins/modal/web-pins.txt")
    constrained = {
        line.split("==")[0].strip().lower(): line.split("==")[1].strip()
        for name in files
        for line in (root / name).read_text().splitlines()
        if "==" in line and not line.startswith("#")
    }
    for pin in (*WEB_PINS, *ENGINE_PINS):
        name, version = pin.split("==")
        assert constrained.get(name.lower()) == version, f"{pin} is not in the install constraints"
