"""Three `csm-offload worker` processes share a PostgreSQL queue and journal and make six books
against the simulated RunPod cloud; one is killed with SIGKILL at a random moment while it
holds a chapter. Every book completes, byte for byte as single runs make them; the cloud
generated no request twice; the killed worker's chapters were finished by the others."""

from __future__ import annotations

import os
import random
import signal
import time
from pathlib import Path

import psycopg
import pytest

from tests.sim.runpod_cloud import SimulatedRunPod
from tests.test_queue import (
    FLAGS,
    book_text,
    cli,
    config,
    outputs,
    reference_run,
    wait_for_books,
    workers,
)

BOOKS = {f"book{n}": book_text(f"Book {n}", chapters=3, sentences=8) for n in range(1, 7)}


def _held_by(dsn: str, worker: str) -> set[tuple[int, int]]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT book_id, number FROM csm_chapters WHERE state = 'running' AND worker = %s",
            (worker,),
        ).fetchall()
    return {(int(b), int(n)) for b, n in rows}


def _kill_while_holding(
    dsn: str, victim: int, rng: random.Random, timeout_s: float
) -> set[tuple[int, int]]:
    """SIGKILL `victim` at a random moment while it is making a chapter; returns the chapters
    it held at that moment."""
    name = f"{os.uname().nodename}:{victim}"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if _held_by(dsn, name):
            time.sleep(rng.uniform(0.0, 1.0))
            held = _held_by(dsn, name)
            if held:
                os.kill(victim, signal.SIGKILL)
                return held
        time.sleep(0.02)
    raise AssertionError("the worker to kill never held a chapter")


def _jobs_of(dsn: str, request_ids: list[str]) -> list[tuple[object, ...]]:
    """The journal's jobs carrying `request_ids` (for a failure's message)."""
    with psycopg.connect(dsn) as conn:
        return conn.execute(
            "SELECT j.key, j.run_id, u.pid, u.ended_at IS NOT NULL, j.state, q.text"
            " FROM csm_jobs j JOIN csm_job_requests r ON r.job_key = j.key"
            " JOIN csm_runs u ON u.run_id = j.run_id JOIN csm_requests q ON q.id = r.request_id"
            " WHERE r.request_id = ANY(%s) ORDER BY j.key",
            (request_ids,),
        ).fetchall()


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_a_worker_killed_mid_chapter_loses_nothing(
    tmp_path: Path, pg_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    seed = int(os.environ.get("QUEUE_KILL_SEED", time.time_ns() % 10_000))
    rng = random.Random(seed)
    with SimulatedRunPod(workers=6, seconds_per_char=0.002) as sim:
        env = {
            **os.environ,
            "RUNPOD_API_KEY": sim.api_key,
            "CSM_OFFLOAD_LOAD_PLUGINS": "runpod",
            "CSM_OFFLOAD_CONFIG": "",
        }
        work = tmp_path / "queued"
        work.mkdir()
        (work / "cfg.yaml").write_text(config(sim.url, pg_dsn, tmp_path / "audio"))
        monkeypatch.chdir(work)
        monkeypatch.setenv("RUNPOD_API_KEY", sim.api_key)
        monkeypatch.setenv("CSM_OFFLOAD_LOAD_PLUGINS", "runpod")
        monkeypatch.delenv("CSM_OFFLOAD_CONFIG", raising=False)
        for name, text in BOOKS.items():
            (work / f"{name}.md").write_text(text)
            assert (
                cli("--config", "cfg.yaml", "book", f"{name}.md", "-o", name, *FLAGS, "--enqueue")
                == 0
            )
        with workers(3, work, env) as started:
            held = _kill_while_holding(pg_dsn, started[0].pid, rng, timeout_s=60)
            states = wait_for_books(pg_dsn, len(BOOKS), 240, work)
        assert set(states.values()) == {"done"}, f"seed {seed}: {states}"
        stats = sim.stats()
        twice = sorted(rid for rid, n in stats["generated"].items() if n > 1)
        assert stats["executed_twice"] == 0, (
            f"seed {seed}: victim {started[0].pid}: {_jobs_of(pg_dsn, twice)}"
        )
        reference = reference_run(tmp_path / "reference", sim.url, env, BOOKS, *FLAGS)
    with psycopg.connect(pg_dsn) as conn:
        rows = conn.execute("SELECT book_id, number, worker, attempts FROM csm_chapters").fetchall()
    finished = {(int(b), int(n)): (w, a) for b, n, w, a in rows}
    victim = f"{os.uname().nodename}:{started[0].pid}"
    for key in held:
        worker, attempts = finished[key]
        assert worker != victim and attempts >= 2, f"seed {seed}: chapter {key} by {worker}"
    for name in BOOKS:
        made = outputs(work / name)
        assert made and made == outputs(reference / name), f"seed {seed}: {name} differs"
        assert not list((work / name).rglob("*.tmp"))
