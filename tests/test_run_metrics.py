"""A real run's metrics: scraped from the loopback port while the manager is open, they show
the run's counts as the journal and the simulated cloud know them."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from csm_offload import SpeechRequest
from csm_offload.manager import CloudGPUManager
from tests.sim.runpod_cloud import SimulatedRunPod


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _samples(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = httpx.get(url, timeout=5).text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_a_runs_metrics_show_its_jobs_chunks_spend_and_breakers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CSM_OFFLOAD_LOAD_PLUGINS", "runpod")
    port = _free_port()
    requests = [SpeechRequest(f"Metric line number {i}.") for i in range(12)]
    with SimulatedRunPod(workers=4, seconds_per_char=0.001) as sim:
        monkeypatch.setenv("RUNPOD_API_KEY", sim.api_key)
        sim.rate_limit("run", retry_after="1", count=1)  # one 429: a counted failure
        (tmp_path / "cfg.yaml").write_text(
            f"""
providers:
  sim:
    kind: runpod
    endpoint_url: {sim.url}
    api_key: ${{RUNPOD_API_KEY}}
    max_batch: 3
    use_runsync: false
audio:
  cloud_gpu:
    fallback_to_local: false
run:
  journal: journal.sqlite3
  metrics_port: {port}
"""
        )
        with CloudGPUManager(config="cfg.yaml") as manager:
            result = asyncio.run(manager.synthesize(requests))
            again = asyncio.run(manager.synthesize(requests[:5]))  # all from the journal
            found = _samples(f"http://127.0.0.1:{port}/metrics")
            jobs = manager.journal.jobs()
            spent = sum(job.actual_usd or 0.0 for job in jobs)
        with pytest.raises(httpx.ConnectError):  # closed with the manager
            httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2)
    assert result.ok and again.ok
    sim_label = (("target", "sim"),)
    completed = found[("csm_offload_jobs_total", (("state", "completed"), ("target", "sim")))]
    assert completed == len([j for j in jobs if j.state == "completed"]) > 0
    assert found[("csm_offload_jobs_submitted_total", sim_label)] == len(jobs)
    assert found[("csm_offload_requests_submitted_total", sim_label)] == len(requests)
    assert found[("csm_offload_chunk_seconds_count", sim_label)] == len(requests)
    assert found[("csm_offload_requests_cached_total", ())] == 5
    assert found[("csm_offload_jobs_in_flight", sim_label)] == 0
    assert found[("csm_offload_spend_actual_usd_total", sim_label)] == pytest.approx(spent)
    rate_limited = (("kind", "rate_limited"), ("target", "sim"))
    assert found[("csm_offload_failures_total", rate_limited)] == 1
    closed = (("state", "closed"), ("target", "sim"))
    assert found[("csm_offload_breaker_state", closed)] == 1
