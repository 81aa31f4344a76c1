"""kill -9 of `csm-offload synth` in the middle of a 200-segment run, then a rerun.

The simulated RunPod cloud runs as its own process, so it outlives the killed client and keeps
its counters. The rerun must produce the same audio as an uninterrupted run, must not submit
any request whose result the journal already held, and must re-attach to the jobs that were in
flight (poll them by handle) instead of submitting them again.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.sim.runpod_cloud import SimulatedRunPod

ROOT = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-m", "csm_offload"]
SEGMENTS = 200


def _config(url: str) -> str:
    return f"""
providers:
  sim:
    kind: runpod
    endpoint_url: {url}
    api_key: ${{RUNPOD_API_KEY}}
    max_batch: 2
    max_in_flight: 6
    use_runsync: false
    seconds_per_char: 0.004
    job_overhead_s: 0
audio:
  cloud_gpu:
    fallback_to_local: false
run:
  journal: .csm-offload/journal.sqlite3
"""


def _text() -> str:
    return "\n".join(f"Sentence number {i} of the crash test book." for i in range(SEGMENTS))


def _env(key: str) -> dict[str, str]:
    return {**os.environ, "RUNPOD_API_KEY": key, "CSM_OFFLOAD_LOAD_PLUGINS": "runpod"}


def _synth(workdir: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            *CLI,
            "--config",
            "cfg.yaml",
            "synth",
            "book.txt",
            "-o",
            "out.wav",
            "--quiet",
            "--max-chars",
            "50",
        ],
        cwd=workdir,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def _prepare(workdir: Path, url: str) -> None:
    workdir.mkdir()
    (workdir / "cfg.yaml").write_text(_config(url))
    (workdir / "book.txt").write_text(_text())


def _journal_rows(path: Path, sql: str) -> list[tuple]:
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5) as db:
            return db.execute(sql).fetchall()
    except sqlite3.Error:
        return []


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_kill_9_then_rerun_resumes_without_paying_twice(tmp_path: Path) -> None:
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    kill_after = rng.randrange(10, 170)
    with SimulatedRunPod.spawn(workers=6, seconds_per_char=0.004) as sim:
        env = _env(sim.api_key)
        crashed, reference = tmp_path / "crashed", tmp_path / "reference"
        _prepare(crashed, sim.url)
        _prepare(reference, sim.url)
        journal = crashed / ".csm-offload" / "journal.sqlite3"

        client = _synth(crashed, env)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and client.poll() is None:
            done = _journal_rows(journal, "SELECT COUNT(*) FROM results")
            if done and done[0][0] >= kill_after:
                break
            time.sleep(0.01)
        assert client.poll() is None, f"the client finished before the kill (seed {seed})"
        client.send_signal(signal.SIGKILL)
        client.wait(10)

        completed = {row[0] for row in _journal_rows(journal, "SELECT request_id FROM results")}
        in_flight = _journal_rows(
            journal, "SELECT key, job_id, request_ids FROM jobs WHERE state = 'submitted'"
        )
        assert in_flight, f"no job was in flight at the kill (seed {seed})"
        before = Counter(sim.stats()["submissions"])

        rerun = _synth(crashed, env)
        out, err = rerun.communicate(timeout=90)
        assert rerun.returncode == 0, err.decode()
        after = Counter(sim.stats()["submissions"])

        resubmitted = {rid for rid in after if after[rid] > before[rid]}
        assert not resubmitted & completed, f"completed requests resubmitted (seed {seed})"
        for key, _job_id, request_ids in in_flight:
            assert not resubmitted & set(json.loads(request_ids)), f"job {key} resubmitted"
            state = _journal_rows(journal, f"SELECT state FROM jobs WHERE key = {int(key)}")
            assert state == [("completed",)], f"in-flight job {key} not re-attached (seed {seed})"

        ref = _synth(reference, env)
        _out, ref_err = ref.communicate(timeout=90)
        assert ref.returncode == 0, ref_err.decode()

    assert (crashed / "out.wav").read_bytes() == (reference / "out.wav").read_bytes()
    crashed_meta = json.loads((crashed / "out.wav.json").read_text())
    reference_meta = json.loads((reference / "out.wav.json").read_text())
    assert len(crashed_meta["segments"]) == SEGMENTS
    assert [s["id"] for s in crashed_meta["segments"]] == [
        s["id"] for s in reference_meta["segments"]
    ]
    assert b"wrote" in out
    assert not list(crashed.glob(".*.tmp")) and not list(crashed.glob("*.tmp"))
