"""The Modal app's web endpoint under uvicorn on loopback, driven by the Modal client hooks.

The ASGI app is the one `app.py` deploys (`web.create_web_app`); only the GPU method's host
differs: `tests.sim.modal_web.InProcessCalls` runs `worker.GpuWorker.run` (the code of
`CsmWorker.generate`) on the tiny random CSM in this process, behind Modal's spawn/poll
interface, raising Modal's own exceptions (`modal` is installed; no account is used). A thin
ASGI wrapper stands in for Modal's proxy auth. The last test follows docs/modal.md step 6 with
the real command line.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shlex
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import attrs
import csm_offload_modal as plugin
import httpx
import pytest
from csm_offload_modal.settings import ModalSettings
from csm_offload_modal.web import AppInfo, QueueStats, create_web_app
from csm_offload_modal.worker import DEFAULT_LIMITS, GpuWorker
from modal.exception import (
    FunctionTimeoutError,
    NotFoundError,
    OutputExpiredError,
    ResourceExhaustedError,
    ServiceError,
)

from csm_offload import Audio, JobHandle, JobLost, JobState, SpeechRequest, Target, Unavailable
from csm_offload.backoff import RetryPolicy
from csm_offload.breaker import Breakers
from csm_offload.cli import main
from csm_offload.config import load_config_text
from csm_offload.health import HealthCache
from csm_offload.journal import Journal
from csm_offload.plugins import load_plugins
from csm_offload.router import RouteOptions, Router
from csm_offload.runner import Runner, RunnerSettings, RunResult
from csm_offload.speed import SpeedBook
from csm_offload.targets import check_targets
from csm_offload.testing import check_provider
from tests.sim.modal_web import InProcessCalls, ProxyAuth, run, serving

pytest_plugins = ["tests.tiny_csm"]

ROOT = Path(__file__).resolve().parents[2]
KEY = "wk-loopbacktoken0001"
SECRET = "ws-loopbacksecret0002"
#: Tiny-CSM audio is noise; a few frames keep every test quick on a CPU.
SHORT_MS = 240
SETTINGS = RunnerSettings(
    retry=RetryPolicy(max_retries=4, base_s=0.02, cap_s=0.2),
    first_poll_s=0.05,
    poll_min_s=0.02,
    deadline_s=60.0,
)


class ShortEngine:
    """The tiny CSM with every request capped at `SHORT_MS` of audio: the CLI asks for 30 s,
    which random weights would fill to the end on a CPU. Everything else is the real engine."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine

    def generate(self, requests: Sequence[SpeechRequest], cancel: threading.Event | None) -> Any:
        short = [
            attrs.evolve(r, max_audio_length_ms=min(r.max_audio_length_ms, SHORT_MS))
            for r in requests
        ]
        return self.engine.generate(short, cancel)

    def info(self) -> Any:
        return self.engine.info()


class BrokenEngine:
    """An engine whose GPU fails, as an out-of-memory error would."""

    def generate(self, requests: Sequence[SpeechRequest], cancel: threading.Event | None) -> Any:
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")

    def info(self) -> Any:
        raise AssertionError("never reached")


@attrs.define
class Endpoint:
    url: str
    calls: InProcessCalls
    proxy: ProxyAuth

    def target(self, secret: str = SECRET, **overrides: Any) -> Target:
        settings = ModalSettings(url=self.url, key=KEY, secret=secret, **overrides)
        return Target("modal-loopback", "modal", settings, gpu="A100 80GB")


@pytest.fixture
def endpoint_for() -> Iterator[Any]:
    """Starts the web endpoint around an engine; everything started is stopped after the test."""
    with contextlib.ExitStack() as stack:

        def start(engine: Any, gpu: str = "A100-80GB") -> Endpoint:
            calls = InProcessCalls(GpuWorker(engine, DEFAULT_LIMITS).run)
            stack.callback(calls.close)
            info = AppInfo("csm-offload", gpu, "tiny-csm", DEFAULT_LIMITS)
            proxy = ProxyAuth(create_web_app(calls, info), KEY, SECRET)
            return Endpoint(stack.enter_context(serving(proxy)), calls, proxy)

        yield start


@pytest.fixture
def endpoint(endpoint_for: Any, tiny_engine: Any) -> Endpoint:
    return endpoint_for(ShortEngine(tiny_engine))


def requests(*texts: str) -> list[SpeechRequest]:
    return [SpeechRequest(t, max_audio_length_ms=SHORT_MS, seed=7) for t in texts]


async def until_finished(target: Target, handle: JobHandle, http: httpx.AsyncClient) -> Any:
    for _poll in range(600):
        status = await plugin.poll(target, handle, http)
        if status.state.finished:
            return status
        await asyncio.sleep(0.05)
    raise AssertionError(f"job {handle.job_id} did not finish within 30 s")


@pytest.mark.torch
def test_pending_then_done_through_the_client_hooks(endpoint: Endpoint) -> None:
    target, batch = endpoint.target(), requests("First line.", "Second line.")

    async def go() -> tuple[Any, ...]:
        async with httpx.AsyncClient(timeout=30) as http:
            endpoint.calls.hold()
            try:
                handle = await plugin.submit(target, batch, http)
                pending = await plugin.poll(target, handle, http)
                health = await plugin.health(target, http)
            finally:
                endpoint.calls.release()
            status = await until_finished(target, handle, http)
            audios = await plugin.decode(target, status, http)
            return pending, health, status, audios

    pending, health, status, audios = run(go())
    assert pending.state is JobState.RUNNING
    assert health.ok and health.queue_depth == 1 and "A100-80GB" in health.detail
    assert status.state is JobState.COMPLETED and status.exec_ms and status.exec_ms > 0
    assert [r.id for r in status.results] == [r.id for r in batch]
    assert all(isinstance(a, Audio) and 0 < a.duration <= 0.5 for a in audios)
    assert plugin.actual_cost(target, status) == pytest.approx(status.exec_ms / 1000 * 0.000694)


@pytest.mark.torch
def test_an_expired_result_is_lost_and_the_runner_resubmits(
    endpoint: Endpoint, tmp_path: Path
) -> None:
    target, batch = endpoint.target(), requests("Expired once.")

    async def by_hooks() -> Exception | None:
        async with httpx.AsyncClient(timeout=30) as http:
            handle = await plugin.submit(target, batch, http)
            endpoint.calls.expire(handle.job_id)
            try:
                await plugin.poll(target, handle, http)
            except JobLost as exc:
                return exc
        return None

    lost = run(by_hooks())
    assert isinstance(lost, JobLost) and "expired" in str(lost)
    endpoint.calls.expire_next(1)
    before = endpoint.calls.spawned
    result = runner_synthesis(endpoint.url, requests("Expired, then again."), tmp_path)
    assert result.ok, result.summary()
    assert endpoint.calls.spawned - before == 2  # the lost job, then its resubmission


def modal_block(name: str, url: str, gpu: str = "A100 80GB") -> str:
    return f"""
  {name}:
    kind: modal
    url: {url}
    key: {KEY}
    secret: {SECRET}
    gpu: {gpu}
    max_batch: 2
    max_in_flight: 2
"""


def runner_synthesis(
    url: str, batch: list[SpeechRequest], tmp: Path, blocks: str | None = None
) -> RunResult:
    text = "providers:" + (blocks or modal_block("modal", url))
    config = load_config_text(text, "modal.yaml", {})
    checks = check_targets(config, load_plugins(["modal"]).providers)
    assert all(c.usable for c in checks), [c.reason for c in checks]
    router = Router(checks, config.audio.cloud_gpu, HealthCache(60), Breakers(3, 0.3), SpeedBook())

    async def go() -> RunResult:
        with Journal(tmp / "journal.sqlite3") as journal:
            async with httpx.AsyncClient(timeout=30) as http:
                runner = Runner(router, journal, http, SETTINGS, RouteOptions(cloud_gpu=True))
                return await runner.run(batch)

    return run(go())


@pytest.mark.torch
def test_a_failing_modal_target_fails_over_to_the_next(
    endpoint_for: Any, tiny_engine: Any, tmp_path: Path
) -> None:
    """The cheaper Modal target (L4) accepts jobs and fails every one; the router's chain
    moves the work to the dearer one (H100), which delivers it."""
    broken = endpoint_for(BrokenEngine(), gpu="L4")
    working = endpoint_for(ShortEngine(tiny_engine), gpu="H100")
    blocks = modal_block("cheap", broken.url, "L4") + modal_block("dear", working.url, "H100")
    batch = requests("Fail over, please.", "And this one too.")
    result = runner_synthesis(broken.url, batch, tmp_path, blocks)
    assert result.ok, result.summary()
    assert {o.target for o in result.outcomes.values()} == {"dear"}
    assert broken.calls.spawned >= 1 and working.calls.spawned >= 1


def test_a_failed_call_reaches_the_client_with_its_error(endpoint_for: Any) -> None:
    endpoint = endpoint_for(BrokenEngine())
    target, batch = endpoint.target(), requests("This will fail.")

    async def go() -> Any:
        async with httpx.AsyncClient(timeout=30) as http:
            handle = await plugin.submit(target, batch, http)
            endpoint.calls.done(handle.job_id)
            return await plugin.poll(target, handle, http)

    status = run(go())
    assert status.state is JobState.FAILED
    assert "engine failed: RuntimeError: CUDA out of memory" in status.error


def test_missing_or_wrong_proxy_headers_are_refused(endpoint_for: Any) -> None:
    endpoint = endpoint_for(BrokenEngine())  # nothing may reach it
    body = b'{"schema": 1, "requests": []}'
    no_headers = httpx.post(endpoint.url + "/jobs", content=body, timeout=10)
    assert no_headers.status_code == 401 and "missing credentials" in no_headers.text
    wrong = {"Modal-Key": KEY, "Modal-Secret": "ws-not-the-secret"}
    refused = httpx.get(endpoint.url + "/health", headers=wrong, timeout=10)
    assert refused.status_code == 401 and "invalid credentials" in refused.text
    target = endpoint.target(secret="ws-not-the-secret")

    async def go() -> tuple[Any, Any]:
        async with httpx.AsyncClient(timeout=10) as http:
            try:
                await plugin.submit(target, requests("Refused."), http)
            except Unavailable as exc:
                return exc, await plugin.health(target, http)
        raise AssertionError("submit was not refused")

    error, health = run(go())
    assert "MODAL_KEY" in str(error) and "ws-not-the-secret" not in str(error)
    assert not health.ok and "MODAL_SECRET" in health.detail
    assert endpoint.calls.spawned == 0 and endpoint.proxy.refused == 4


def test_a_malformed_batch_is_refused_before_any_gpu_call(endpoint_for: Any) -> None:
    endpoint = endpoint_for(BrokenEngine())
    headers = {"Modal-Key": KEY, "Modal-Secret": SECRET}
    bad = b'{"schema": 1, "requests": [{"id": "a", "text": "x"}], "audio_format": "mp3"}'
    answer = httpx.post(endpoint.url + "/jobs", content=bad, headers=headers, timeout=10)
    assert answer.status_code == 400 and "audio_format" in answer.json()["error"]
    not_json = httpx.post(endpoint.url + "/jobs", content=b"{", headers=headers, timeout=10)
    assert not_json.status_code == 400
    unknown = httpx.get(endpoint.url + "/jobs/fc-doesnotexist", headers=headers, timeout=10)
    assert unknown.status_code == 404
    assert endpoint.calls.spawned == 0


@pytest.mark.torch
def test_the_plugin_conforms_live_against_the_endpoint(endpoint: Endpoint) -> None:
    def handle(target: Target, batch: Sequence[SpeechRequest]) -> JobHandle:
        return JobHandle(target.name, "fc-conformance0", tuple(r.id for r in batch))

    found = check_provider(
        plugin, endpoint.target(), live=True, handle_factory=handle, max_audio_length_ms=SHORT_MS
    )
    assert found == []
    assert endpoint.calls.spawned >= 1


# --- the endpoint's answers to each outcome of `get(timeout=0)` -------------------------------


class ExpiredTimeout(OutputExpiredError, TimeoutError):
    """OutputExpiredError as modal versions define it where it subclasses TimeoutError."""


class Scripted:
    """`Calls` whose poll raises what Modal would: one exception per test."""

    def __init__(self, raised: BaseException | None) -> None:
        self.raised = raised

    async def spawn(self, batch: bytes) -> str:
        raise ServiceError("control plane unavailable")

    async def result(self, call_id: str) -> bytes:
        if self.raised is not None:
            raise self.raised
        return b'{"state":"completed","exec_ms":1,"output":{"schema":1,"results":[]}}'

    async def cancel(self, call_id: str) -> None:
        raise NotFoundError("no such call")

    async def stats(self) -> QueueStats:
        raise ServiceError("stats unavailable")


@pytest.mark.parametrize(
    ("raised", "status", "state"),
    [
        (OutputExpiredError(), 404, "expired"),
        (ExpiredTimeout(), 404, "expired"),  # caught before TimeoutError, or it looks pending
        (NotFoundError("no such call"), 404, "unknown"),
        (FunctionTimeoutError("ran 600 s"), 500, "timed_out"),
        (TimeoutError(), 202, "pending"),
        (RuntimeError("engine failed: boom"), 500, "failed"),
        (ServiceError("unavailable"), 503, None),
        (ResourceExhaustedError("slow down"), 429, None),
        (None, 200, "completed"),
    ],
)
def test_each_poll_outcome_has_its_answer(
    raised: BaseException | None, status: int, state: str | None
) -> None:
    web = create_web_app(Scripted(raised), AppInfo("a", "L4", "m", DEFAULT_LIMITS))

    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=web)
        async with httpx.AsyncClient(transport=transport, base_url="http://web") as http:
            return await http.get("/jobs/fc-abc123")

    answer = run(go())
    assert answer.status_code == status
    assert answer.json().get("state") == state


def test_spawn_cancel_and_health_when_modal_itself_fails() -> None:
    web = create_web_app(Scripted(None), AppInfo("a", "L4", "m", DEFAULT_LIMITS))
    batch = b'{"schema":1,"requests":[{"id":"r","text":"Hi."}]}'

    async def go() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=web)
        async with httpx.AsyncClient(transport=transport, base_url="http://web") as http:
            return [
                await http.post("/jobs", content=batch),
                await http.post("/jobs/fc-abc123/cancel"),
                await http.get("/health"),
                await http.get("/jobs/not-a-call"),
            ]

    spawn, cancel, health, foreign = run(go())
    assert spawn.status_code == 503 and "ServiceError" in spawn.json()["error"]
    assert cancel.status_code == 404
    assert health.status_code == 200 and health.json()["ok"] is True
    assert health.json()["backlog"] is None  # unknown, not unhealthy
    assert foreign.status_code == 404


# --- docs/modal.md, step 6, on loopback -------------------------------------------------------


def docs_step_6() -> tuple[str, list[str]]:
    """The YAML block and the `csm-offload` commands of docs/modal.md's step 6."""
    docs = (ROOT / "docs" / "modal.md").read_text("utf-8")
    step = docs.split("## 6. Tell csm-offload about it", 1)[1].split("\n## ", 1)[0]
    (yaml,) = re.findall(r"```yaml\n(.*?)```", step, re.S)
    (shell,) = re.findall(r"```sh\n(.*?)```", step, re.S)
    commands = [line.split("#", 1)[0].strip() for line in shell.splitlines()]
    return yaml, [c for c in commands if c.startswith("csm-offload ")]


def cli(*args: str) -> int:
    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    return int(exit_info.value.code or 0)


@pytest.mark.torch
def test_docs_modal_md_step_6_works_on_loopback(
    endpoint_for: Any,
    tiny_engine: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The docs' config, with the loopback URL for the one `modal deploy` prints, and their
    commands, as written, through the real command line."""
    yaml, commands = docs_step_6()
    assert [c.split()[1] for c in commands] == ["providers", "estimate", "synth"]
    (gpu,) = re.findall(r"^\s+gpu: (\S+)", yaml, re.M)
    endpoint = endpoint_for(ShortEngine(tiny_engine), gpu=gpu)  # deployed as step 3 says
    placeholder = "https://<workspace>--csm-offload-web.modal.run"
    assert placeholder in yaml
    (tmp_path / "csm-offload.yaml").write_text(yaml.replace(placeholder, endpoint.url))
    (tmp_path / "book.txt").write_text("Chapter one. It was a quiet night in the small town.")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MODAL_KEY", KEY)
    monkeypatch.setenv("MODAL_SECRET", SECRET)
    monkeypatch.setenv("CSM_OFFLOAD_LOAD_PLUGINS", "modal")
    monkeypatch.delenv("CSM_OFFLOAD_CONFIG", raising=False)
    for command in commands:
        code = cli(*shlex.split(command)[1:])
        out = capsys.readouterr()
        assert code == 0, f"{command}: {out.out}{out.err}"
        assert KEY not in out.out + out.err and SECRET not in out.out + out.err
        assert "set its gpu to match" not in out.out
    written = Audio.decode((tmp_path / "book.wav").read_bytes())
    assert written.duration > 0
    assert endpoint.calls.spawned >= 1
