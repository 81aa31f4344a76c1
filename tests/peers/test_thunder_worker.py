"""The Thunder plugin against the real worker server: `csm-offload serve` with the tiny model,
in a subprocess on loopback, as it runs on a Thunder VM (only the forwarded port's https URL
is replaced by the loopback one, and Thunder's API by the simulated one).

- the conformance kit, live, by URL and by instance id through the simulated Thunder API;
- a server restarted in the middle of a job: the job is lost (404), resubmitted by the runner,
  and the journal shows nothing paid twice;
- a VM that dies for good in the middle of a run: its jobs fail over to the next target;
- a full queue (429 with Retry-After) is back-pressure: the submission waits its turn;
- docs/thunder.md followed end to end: its `serve` line, its target blocks, `providers` on
  the command line and its Python example.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import os
import re
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import csm_offload_thunder as thunder
import httpx
import pytest
from csm_offload_thunder import locate
from csm_offload_thunder.settings import ThunderSettings

from csm_offload import JobHandle, Secret, SpeechRequest, Target
from csm_offload import journal as jr
from csm_offload.backoff import RetryPolicy
from csm_offload.breaker import Breakers
from csm_offload.config import load_config_text
from csm_offload.health import HealthCache
from csm_offload.journal import Journal
from csm_offload.liveness import Liveness
from csm_offload.manager import http_client
from csm_offload.plugins import load_plugins
from csm_offload.router import RouteOptions, Router
from csm_offload.runner import Runner, RunnerSettings, RunResult
from csm_offload.speed import SpeedBook
from csm_offload.targets import check_targets
from csm_offload.testing import ProviderConformance
from tests.peers import serve_process
from tests.peers.serve_process import free_port
from tests.sim.runpod_cloud import SimulatedRunPod
from tests.sim.thunder_api import SimulatedThunderApi

pytest_plugins = ["tests.tiny_csm"]
pytestmark = [pytest.mark.torch, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
WORKER_TOKEN = "thunder-peer-worker-token-61f0c2"
API_TOKEN = "thunder-peer-api-token-0b7e94"
#: Longest `serve` may take to load the tiny model and answer /healthz.
START_S = 90.0
SETTINGS = RunnerSettings(
    # Polls refused while the server restarts back off to about a second, so a restart of a
    # few seconds costs a handful of errors, far from `max_poll_errors`.
    retry=RetryPolicy(max_retries=6, base_s=0.2, cap_s=1.0),
    first_poll_s=0.2,
    poll_min_s=0.05,
    deadline_s=240.0,
)


class Serve(serve_process.Serve):
    """The worker server as a Thunder VM runs it, with this module's token."""

    def __init__(self, model: Path, log: Path, port: int | None = None, max_queue: int = 8) -> None:
        super().__init__(model, log, WORKER_TOKEN, port=port, max_queue=max_queue, start_s=START_S)


@pytest.fixture
def serve(tiny_csm_dir: Path, tmp_path: Path) -> Iterator[Serve]:
    server = Serve(tiny_csm_dir, tmp_path / "serve.log").start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(autouse=True)
def _forget_instances() -> Iterator[None]:
    locate.forget()
    yield
    locate.forget()


# --- the conformance kit, live --------------------------------------------------------------


def test_conforms_live_by_url(serve: Serve) -> None:
    settings = ThunderSettings(url=serve.url, worker_token=Secret(WORKER_TOKEN))
    target = Target("vm", "thunder", settings, gpu="A100 80GB")
    ProviderConformance(thunder, target, live=True, max_audio_length_ms=800).assert_ok()


def test_conforms_live_by_instance_id(serve: Serve) -> None:
    """Named by instance id: Thunder's API (simulated) says where the server is; the running
    instance's health is the server's own, described with the instance."""
    with SimulatedThunderApi(token=API_TOKEN) as api:
        api.put("0", status="RUNNING", uuid="abc123", http_ports=(serve.port,))
        settings = ThunderSettings(
            instance_id="0",
            api_token=API_TOKEN,
            worker_token=WORKER_TOKEN,
            api_url=api.url,
            forwarded_url="http://127.0.0.1:{port}",
            port=serve.port,
        )
        target = Target("vm", "thunder", settings, gpu="A100 80GB")
        kit = ProviderConformance(
            thunder, target, live=True, max_audio_length_ms=800, handle_factory=_handle
        )
        kit.assert_ok()
        found = asyncio.run(_health(target))
    assert found.ok, found.detail
    assert found.detail.startswith("Thunder instance 0 (A100XL) is RUNNING; worker: engine loaded")
    assert found.workers == 1 and found.queue_depth == 0
    assert f"holds {1 + serve.max_queue}" in found.detail
    sent = collections.Counter(s.authorization for s in api.seen)
    assert set(sent) == {f"Bearer {API_TOKEN}"}  # the worker token never went to the API


def _handle(target: Target, batch: Any) -> JobHandle:
    """The kit's handle for its error checks, as `submit` makes them: with the uuid of the
    instance the job went to, so polls need no call to Thunder's API."""
    extra = {thunder.EXTRA_UUID: "abc123"}
    return JobHandle(target.name, "conformance-job", tuple(r.id for r in batch), extra=extra)


async def _health(target: Target) -> Any:
    async with httpx.AsyncClient(timeout=10) as http:
        return await thunder.health(target=target, http=http)


# --- the runner against the server ----------------------------------------------------------

THUNDER_BLOCK = """
  vm:
    kind: thunder
    url: {url}
    worker_token: {token}
    seconds_per_char: 0.01
    job_overhead_s: 0.5
    poll_wait_s: 5
    max_batch: 1
"""
RUNPOD_BLOCK = """
  spare:
    kind: runpod
    endpoint_url: {url}
    api_key: {key}
    use_runsync: false
    seconds_per_char: 0.001
    job_overhead_s: 0
    usd_per_second: 0.01
    max_batch: 1
"""


def run_config(
    blocks: str, requests: list[SpeechRequest], tmp: Path, settings: RunnerSettings = SETTINGS
) -> tuple[RunResult, Runner, list[jr.JobRow]]:
    config = load_config_text("providers:" + blocks, "thunder-peer.yaml", {})
    checks = check_targets(config, load_plugins(["thunder", "runpod"]).providers)
    assert all(c.usable for c in checks), [c.reason for c in checks]
    router = Router(checks, config.audio.cloud_gpu, HealthCache(60), Breakers(3, 0.3), SpeedBook())

    async def go() -> tuple[RunResult, Runner, list[jr.JobRow]]:
        with Journal(tmp / "journal.sqlite3") as journal:
            async with http_client() as http:
                runner = Runner(router, journal, http, settings, RouteOptions(cloud_gpu=True))
                result = await runner.run(requests)
            return result, runner, journal.jobs()

    return asyncio.run(go())


def requests_for(count: int, ms: int = 3200) -> list[SpeechRequest]:
    return [
        SpeechRequest(f"Sentence {i} read on a Thunder VM.", max_audio_length_ms=ms, seed=i)
        for i in range(count)
    ]


def when_running(server: Serve, then: Any, timeout_s: float = 60.0) -> threading.Thread:
    """Call `then()` from a thread as soon as the server has a job running."""

    def watch() -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if server.healthz()["running"] == 1:
                    then()
                    return
            time.sleep(0.02)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def paid_once(requests: list[SpeechRequest], rows: list[jr.JobRow]) -> None:
    """Every request is in exactly one job with an actual cost, and a lost job cost nothing."""
    for request in requests:
        paid = [r for r in rows if request.id in r.request_ids and r.actual_usd is not None]
        assert len(paid) == 1, (request.id, paid)
        assert paid[0].state == jr.COMPLETED
    assert all(r.actual_usd is None for r in rows if r.state == jr.FAILED)


def test_a_server_restart_mid_job_loses_the_job_and_it_is_paid_once(
    serve: Serve, tmp_path: Path
) -> None:
    requests = requests_for(3)
    restarted = threading.Event()

    def restart() -> None:
        serve.kill()
        serve.start()  # the same port, a fresh process: it knows no jobs
        restarted.set()

    watcher = when_running(serve, restart)
    block = THUNDER_BLOCK.format(url=serve.url, token=WORKER_TOKEN)
    result, _runner, rows = run_config(block, requests, tmp_path)
    watcher.join(timeout=START_S)
    assert restarted.is_set(), "the server never ran a job to restart in the middle of"
    assert result.ok, result.summary()
    lost = [r for r in rows if r.state == jr.FAILED]
    assert lost, "no job was lost by the restart"
    errors = _errors(tmp_path)
    assert any("no longer knows job" in e for e in errors), errors
    paid_once(requests, rows)
    assert len(rows) >= len(requests) + 1  # the lost job(s) and their resubmissions


def _errors(tmp: Path) -> list[str]:
    with sqlite3.connect(tmp / "journal.sqlite3") as db:
        return [row[0] for row in db.execute("SELECT error FROM jobs WHERE error IS NOT NULL")]


def test_a_vm_that_dies_for_good_fails_over_to_the_next_target(
    serve: Serve, tmp_path: Path
) -> None:
    """Thunder is the cheaper target and takes the work first; its VM dies mid-run and the
    remaining jobs go to the dearer RunPod endpoint within the liveness bound."""
    settings = attrs.evolve(
        SETTINGS, liveness=Liveness(dead_min_s=1.0, dead_factor=2.0), orphan_poll_s=0.5
    )
    requests = requests_for(4, ms=1600)
    with SimulatedRunPod(workers=2, seconds_per_char=0.001) as spare:
        watcher = when_running(serve, serve.kill)
        blocks = THUNDER_BLOCK.format(url=serve.url, token=WORKER_TOKEN)
        blocks += RUNPOD_BLOCK.format(url=spare.url, key=spare.api_key)
        result, runner, rows = run_config(blocks, requests, tmp_path, settings)
        watcher.join(timeout=30)
        spare_jobs = spare.stats()["jobs"]["submitted"]
    assert result.ok, result.summary()
    assert result.plan.first.target.name == "vm"  # cheaper: it was first in the chain
    assert spare_jobs >= 1
    assert {o.target for o in result.outcomes.values()} <= {"vm", "spare"}
    assert runner.breakers.of("vm").opens >= 1
    paid_once(requests, rows)


def test_a_full_queue_is_back_pressure_not_a_failure(tiny_csm_dir: Path, tmp_path: Path) -> None:
    """A server that holds two jobs (one running, `--max-queue 1`) under a target that keeps
    four in flight: the extra submissions are answered 429 with Retry-After, wait their turn,
    and every request is made and paid once."""
    server = Serve(tiny_csm_dir, tmp_path / "serve.log", max_queue=1).start()
    try:
        block = THUNDER_BLOCK.format(url=server.url, token=WORKER_TOKEN)
        block += "    max_in_flight: 4\n"
        requests = requests_for(5, ms=800)
        result, _runner, rows = run_config(block, requests, tmp_path)
    finally:
        server.stop()
    assert result.ok, result.summary()
    assert "429 Too Many Requests" in server.log.read_text()
    paid_once(requests, rows)
    assert len(rows) == len(requests)  # a refused submission is no job: nothing to pay


# --- docs/thunder.md, end to end ------------------------------------------------------------


def _blocks(kind: str) -> list[str]:
    text = (ROOT / "docs" / "thunder.md").read_text("utf-8")
    return re.findall(rf"```{kind}\n(.*?)```", text, flags=re.S)


def _cli(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "csm_offload", *args]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=180)


def test_docs_followed_end_to_end_on_loopback(tiny_csm_dir: Path, tmp_path: Path) -> None:
    """The `serve` line of docs/thunder.md (its host and port made loopback ones, the model the
    tiny one), then each target block of the page as csm-offload.yaml: `providers` finds the
    target usable, and the page's Python example, run as it is, gets audio made on it."""
    serve_lines = [
        line.strip()
        for block in _blocks("sh")
        for line in block.splitlines()
        if line.strip().startswith("csm-offload serve")
    ]
    assert serve_lines, "docs/thunder.md has no `csm-offload serve` line"
    port = free_port()
    args = serve_lines[0].split()[1:]
    args = [a for a in args if a not in ("--host", "0.0.0.0", "--port", "8000")]
    command = [sys.executable, "-m", "csm_offload", *args, "--host", "127.0.0.1"]
    command += ["--port", str(port), "--model", str(tiny_csm_dir), "--device", "cpu"]
    env = {**os.environ, "CSM_OFFLOAD_WORKER_TOKEN": WORKER_TOKEN, "TNR_API_TOKEN": API_TOKEN}
    configs = [b for b in _blocks("yaml") if "kind: thunder" in b]
    assert len(configs) >= 2, "docs/thunder.md shows a target by url and one by instance id"
    server = Serve(tiny_csm_dir, tmp_path / "serve.log", port=port)
    with (tmp_path / "serve.log").open("ab") as log:
        server.process = subprocess.Popen(command, env=env, stdout=log, stderr=log)
    try:
        server.wait_healthy()
        with SimulatedThunderApi(token=API_TOKEN) as api:
            api.put("0", status="RUNNING", uuid="abc123", http_ports=(port,))
            for index, block in enumerate(configs):
                client_env = {**env, "CSM_OFFLOAD_LOAD_PLUGINS": "thunder"}
                _follow(block, port, api.url, client_env, tmp_path / f"config-{index}")
    finally:
        server.stop()


def _follow(block: str, port: int, api_url: str, env: dict[str, str], workdir: Path) -> None:
    # The forwarded URL's https address becomes the loopback one, Thunder's API the simulated.
    config = re.sub(r"https://\S+\.thundercompute\.net", f"http://127.0.0.1:{port}", block)
    config = config.replace("port: 8000", f"port: {port}")
    if "instance_id" in config:
        indent = re.search(r"\n(\s+)kind: thunder", config)
        assert indent is not None
        pad = indent.group(1)
        config += f"{pad}api_url: {api_url}\n{pad}forwarded_url: http://127.0.0.1:{{port}}\n"
    workdir.mkdir()
    (workdir / "csm-offload.yaml").write_text(config, "utf-8")
    shown = _cli(["providers", "--json"], workdir, env)
    assert shown.returncode == 0, shown.stderr
    (row,) = [r for r in json.loads(shown.stdout) if r["kind"] == "thunder"]
    assert row["state"] == "usable", row
    assert "bills per minute while it exists" in row["reason"]
    example = _blocks("python")[0] + "\nprint(f'{audio.duration:.3f} {audio.sample_rate}')\n"
    made = subprocess.run(
        [sys.executable, "-c", example],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert made.returncode == 0, made.stderr
    seconds, rate = made.stdout.split()[-2:]
    assert 0 < float(seconds) <= 2.0 and rate == "24000"
    with Journal(workdir / ".csm-offload" / "journal.sqlite3") as journal:
        jobs = journal.jobs()
    assert jobs and {j.target for j in jobs} == {row["name"]}
    assert all(j.state == jr.COMPLETED and j.actual_usd for j in jobs)
    assert WORKER_TOKEN not in made.stdout + made.stderr + shown.stdout
