"""Several clients on one PostgreSQL journal, against the simulated RunPod cloud: two clients
started on the same text at once split the work without duplicates, and a client that is only
slow (stopped with SIGSTOP past its lease) loses its claims to another one that re-attaches its
jobs instead of paying for them again; the late client's result is kept, not thrown away."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from csm_offload import SpeechRequest
from csm_offload.manager import CloudGPUManager
from tests.sim.runpod_cloud import SimulatedRunPod

CLI = [sys.executable, "-m", "csm_offload"]


def _config(url: str, dsn: str, in_flight: int, lease_s: float = 30.0) -> str:
    return f"""
providers:
  sim:
    kind: runpod
    endpoint_url: {url}
    api_key: ${{RUNPOD_API_KEY}}
    max_batch: 2
    max_in_flight: {in_flight}
    use_runsync: false
    seconds_per_char: 0.004
    job_overhead_s: 0
audio:
  cloud_gpu:
    fallback_to_local: false
run:
  journal: {dsn}
  audio_store: shared-audio
  lease_s: {lease_s}
"""


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CSM_OFFLOAD_CONFIG", raising=False)
    monkeypatch.setenv("CSM_OFFLOAD_LOAD_PLUGINS", "runpod")
    return tmp_path


def _jobs_by_run(dsn: str) -> dict[str, int]:
    with psycopg.connect(dsn) as db:
        rows = db.execute("SELECT run_id, COUNT(*) FROM csm_jobs GROUP BY run_id").fetchall()
    return {run: int(count) for run, count in rows}


def test_two_clients_on_the_same_text_split_the_work_without_duplicates(
    workdir: Path, pg_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    requests = [SpeechRequest(f"Line {i} of a book two clients read at once.") for i in range(40)]
    with SimulatedRunPod(workers=8, seconds_per_char=0.002) as sim:
        monkeypatch.setenv("RUNPOD_API_KEY", sim.api_key)
        (workdir / "cfg.yaml").write_text(_config(sim.url, pg_dsn, in_flight=4))

        async def both() -> list:
            with (
                CloudGPUManager(config="cfg.yaml") as one,
                CloudGPUManager(config="cfg.yaml") as two,
            ):
                return list(
                    await asyncio.gather(one.synthesize(requests), two.synthesize(requests))
                )

        first, second = asyncio.run(both())
        stats = sim.stats()
    assert first.ok and second.ok
    for request in requests:
        a, b = first.outcomes[request.id], second.outcomes[request.id]
        assert a.path is not None and b.path is not None
        assert a.path.read_bytes() == b.path.read_bytes()
    assert stats["executed_twice"] == 0
    assert stats["generated_total"] == len(requests)
    by_run = _jobs_by_run(pg_dsn)
    assert len(by_run) == 2 and all(count > 0 for count in by_run.values()), by_run
    # Each client made some of the audio and took the rest from the other one's results.
    made_here = sum(not o.cached for o in first.outcomes.values())
    assert 0 < made_here < len(requests)


def _synth(workdir: Path, out: str, key: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "RUNPOD_API_KEY": key}
    command = [*CLI, "--config", "cfg.yaml", "synth", "book.txt", "-o", out]
    return subprocess.Popen(
        [*command, "--quiet", "--max-chars", "60"],
        cwd=workdir,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def _wait_submitted(dsn: str, count: int, limit_s: float = 30.0) -> None:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        with psycopg.connect(dsn) as db, contextlib.suppress(psycopg.errors.UndefinedTable):
            found = db.execute("SELECT COUNT(*) FROM csm_jobs WHERE state = 'submitted'")
            if int(found.fetchone()[0]) >= count:
                return
        time.sleep(0.05)
    raise AssertionError(f"fewer than {count} jobs were submitted in {limit_s} s")


@pytest.fixture
def stopped() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes this test stops and starts; always continued and ended at the end."""
    processes: list[subprocess.Popen[bytes]] = []
    yield processes
    for process in processes:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGCONT)
            process.kill()
            process.wait(10)


def test_a_lease_that_expires_while_its_holder_is_only_slow_costs_nothing_twice(
    workdir: Path, pg_dsn: str, stopped: list[subprocess.Popen[bytes]]
) -> None:
    lines = [f"Sentence {i} read slowly by a client that will be paused." for i in range(6)]
    (workdir / "book.txt").write_text("\n".join(lines))
    # Each job takes about 2.5 s: long enough to still be running when the holder is paused.
    with SimulatedRunPod(workers=8, seconds_per_char=0.04) as sim:
        (workdir / "cfg.yaml").write_text(_config(sim.url, pg_dsn, in_flight=8, lease_s=2.0))
        slow = _synth(workdir, "slow.wav", sim.api_key)
        stopped.append(slow)
        _wait_submitted(pg_dsn, 3)
        os.kill(slow.pid, signal.SIGSTOP)
        time.sleep(3.5)  # past the lease: to everyone else the slow client looks dead
        other = _synth(workdir, "other.wav", sim.api_key)
        _out, err = other.communicate(timeout=90)
        assert other.returncode == 0, err.decode()
        os.kill(slow.pid, signal.SIGCONT)
        _out, err = slow.communicate(timeout=90)
        assert slow.returncode == 0, err.decode()
        stats = sim.stats()
    assert stats["executed_twice"] == 0
    assert max(stats["submissions"].values()) == 1  # nothing was submitted twice
    assert (workdir / "slow.wav").read_bytes() == (workdir / "other.wav").read_bytes()
    with psycopg.connect(pg_dsn) as db:
        runs = [r[0] for r in db.execute("SELECT run_id FROM csm_runs ORDER BY started_at")]
        owners = {r[0] for r in db.execute("SELECT run_id FROM csm_jobs")}
        results = db.execute("SELECT COUNT(*) FROM csm_results").fetchone()[0]
    assert len(runs) == 2 and runs[1] in owners  # the second client re-attached jobs
    assert results == len(lines)


def test_two_machines_share_results_through_the_journal_and_an_s3_store(
    tmp_path: Path, pg_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Machine B (its own folder, nothing on disk) finds machine A's results in the journal
    and reads their audio from the bucket (moto's S3 server on loopback): nothing is made
    twice and the audio is the same bytes."""
    import socket

    import boto3
    from moto.server import ThreadedMotoServer

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    s3 = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    s3.start()
    try:
        endpoint = f"http://127.0.0.1:{port}"
        for name, value in {
            "AWS_ACCESS_KEY_ID": "AKIATESTTESTTEST",
            "AWS_SECRET_ACCESS_KEY": "shared-journal-secret",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": endpoint,
            "AWS_CONFIG_FILE": str(tmp_path / "none"),
            "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
            "CSM_OFFLOAD_LOAD_PLUGINS": "runpod",
        }.items():
            monkeypatch.setenv(name, value)
        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="team-books")
        requests = [SpeechRequest(f"Shared through a bucket, line {i}.") for i in range(6)]
        outputs = {}
        with SimulatedRunPod(workers=4, seconds_per_char=0.001) as sim:
            monkeypatch.setenv("RUNPOD_API_KEY", sim.api_key)
            config = _config(sim.url, pg_dsn, in_flight=4).replace(
                "audio_store: shared-audio", "audio_store: s3://team-books/csm"
            )
            for machine in ("a", "b"):
                (tmp_path / machine).mkdir()
                monkeypatch.chdir(tmp_path / machine)
                (tmp_path / machine / "cfg.yaml").write_text(config)
                with CloudGPUManager(config="cfg.yaml") as manager:
                    result = asyncio.run(manager.synthesize(requests))
                assert result.ok
                outputs[machine] = {
                    rid: (o.cached, o.path.read_bytes())
                    for rid, o in result.outcomes.items()
                    if o.path is not None
                }
            stats = sim.stats()
    finally:
        s3.stop()
    assert stats["generated_total"] == len(requests)
    assert all(cached for cached, _audio in outputs["b"].values())
    assert {rid: a for rid, (_c, a) in outputs["a"].items()} == {
        rid: b for rid, (_c, b) in outputs["b"].items()
    }
    assert not (tmp_path / "b" / ".csm-offload" / "audio").exists()  # all from the bucket
