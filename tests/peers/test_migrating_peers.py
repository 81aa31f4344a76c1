"""A script in the original client's style, changed in its import line only, against two real
peers on loopback: the simulated RunPod cloud and `csm-offload serve` with the tiny CSM (as on
a Thunder VM). With torch it gets the original's (1, frames) tensors at 24 kHz, without torch
`Audio`; each result has the length its provider makes, each job is journaled under the
provider that made it, and neither key given in code leaves the process.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from csm_offload import journal as jr
from csm_offload.journal import Journal
from tests.peers.test_thunder_worker import WORKER_TOKEN, Serve
from tests.sim.runpod_cloud import SimulatedRunPod
from tests.test_migrating import (
    KEY,
    ORIGINAL_SCRIPT,
    assert_nowhere,
    migrated,
    rows,
    run_script,
    sim_frames,
)

pytest_plugins = ["tests.tiny_csm"]
pytestmark = [pytest.mark.torch, pytest.mark.slow]

#: The tiny CSM makes 80 ms frames (1920 samples at 24 kHz); 10 of them keep the CPU quick.
FRAME = 1920
WORKER_MS = 800


@pytest.fixture(scope="module")
def serve(tiny_csm_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Serve]:
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    server = Serve(tiny_csm_dir, log).start()
    try:
        yield server
    finally:
        server.stop()


def _check_row(row: dict[str, object], with_torch: bool) -> None:
    assert row["type"] == ("Tensor" if with_torch else "Audio"), row
    assert row["torch"] is with_torch, row
    frames, ms = int(row["frames"]), int(row["ms"])  # type: ignore[call-overload]
    if with_torch:
        assert row["shape"] == [1, frames], row
    if row["provider"] == "runpod":
        assert frames == sim_frames(str(row["text"]), ms), row
    else:
        assert 0 < frames <= ms * 24 and frames % FRAME == 0, row


def _jobs(workdir: Path) -> dict[str, int]:
    with Journal(workdir / ".csm-offload" / "journal.sqlite3") as journal:
        done = [job.target for job in journal.jobs() if job.state == jr.COMPLETED]
    return {target: done.count(target) for target in sorted(set(done))}


@pytest.mark.parametrize("with_torch", [True, False], ids=["torch", "no-torch"])
def test_the_original_script_runs_on_runpod_and_a_worker_server(
    serve: Serve, tmp_path: Path, with_torch: bool
) -> None:
    with SimulatedRunPod(workers=2, seconds_per_char=0.0005, api_key=KEY) as sim:
        env = {
            "RUNPOD_API_KEY": KEY,
            "RUNPOD_ENDPOINT_URL": f"{sim.url}/run",  # as the original's .env had it
            "THUNDER_API_KEY": WORKER_TOKEN,
            "THUNDER_ENDPOINT_URL": serve.url,
            "TEST_MAX_LENGTH_MS": str(WORKER_MS),
        }
        done = run_script(migrated(ORIGINAL_SCRIPT), tmp_path, env, torch=with_torch)
    assert done.returncode == 0, done.stderr
    found = rows(done.stdout)
    labels = [(row["label"], row["provider"]) for row in found]
    assert labels == [
        ("conversation", "runpod"),  # first in the list: the preference
        ("conversation", "runpod"),
        ("runpod", "runpod"),
        ("thunder", "thunder"),
    ]
    for row in found:
        _check_row(row, with_torch)
    assert _jobs(tmp_path) == {"runpod": 3, "thunder": 1}
    (tmp_path / "script.py").unlink()
    for secret in (KEY, WORKER_TOKEN):
        assert_nowhere(secret, [done.stdout, done.stderr], tmp_path)
