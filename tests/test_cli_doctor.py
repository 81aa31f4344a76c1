"""`csm-offload doctor`: config, health and one test sentence per target, with time and cost."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from csm_offload.cli import main
from tests.sim.runpod_cloud import SimulatedRunPod

CONFIG = """
providers:
  sim:
    kind: runpod
    endpoint_url: {url}
    api_key: {key}
    use_runsync: false
    seconds_per_char: 0.001
    job_overhead_s: 0
    usd_per_second: 0.01
  down:
    kind: runpod
    endpoint_url: http://127.0.0.1:9/v2/gone
    api_key: doctor-dead-key-456
  nokey:
    kind: runpod
    endpoint_url: http://127.0.0.1:9/v2/gone
    api_key: ${{NO_SUCH_KEY_FOR_DOCTOR}}
  espeak:
    kind: espeak
"""


def cli(*args: str) -> int:
    with pytest.raises(SystemExit) as info:
        main(list(args))
    return int(info.value.code or 0)


@pytest.fixture
def sim(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[SimulatedRunPod]:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CSM_OFFLOAD_LOAD_PLUGINS", "runpod,espeak")
    monkeypatch.delenv("CSM_OFFLOAD_CONFIG", raising=False)
    with SimulatedRunPod(workers=2, seconds_per_char=0.001) as cloud:
        (tmp_path / "cfg.yaml").write_text(CONFIG.format(url=cloud.url, key=cloud.api_key))
        yield cloud


def test_doctor_tests_every_target_and_writes_the_results(
    sim: SimulatedRunPod, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = cli("--config", "cfg.yaml", "doctor", "--json", "results.json")
    out, err = capsys.readouterr()
    assert code == 1, out + err  # the dead host fails its health check
    report = json.loads((tmp_path / "results.json").read_text())
    rows = {row["name"]: row for row in report["targets"]}
    assert rows["sim"]["health"]["ok"] and rows["sim"]["generation"]["ok"]
    assert rows["sim"]["generation"]["audio_s"] > 0
    assert rows["sim"]["generation"]["cost_usd"] > 0
    assert rows["espeak"]["generation"]["ok"] and rows["espeak"]["generation"]["cost_usd"] == 0
    assert not rows["down"]["health"]["ok"] and rows["down"]["generation"] is None
    assert not rows["nokey"]["usable"] and "NO_SUCH_KEY_FOR_DOCTOR" in rows["nokey"]["reason"]
    assert sum(sim.stats()["submissions"].values()) == 1
    # Each run is a real test: the project's journal is neither used nor created.
    assert not (tmp_path / ".csm-offload").exists()
    assert cli("--config", "cfg.yaml", "doctor", "--target", "sim") == 0
    assert sum(sim.stats()["submissions"].values()) == 2
    everything = out + err + capsys.readouterr().out + (tmp_path / "results.json").read_text()
    assert sim.api_key not in everything and "doctor-dead-key-456" not in everything


def test_doctor_without_generation_spends_nothing(
    sim: SimulatedRunPod, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli("--config", "cfg.yaml", "doctor", "--target", "sim", "--no-generate") == 0
    assert "not run" in capsys.readouterr().out
    assert sum(sim.stats()["submissions"].values()) == 0


def test_doctor_unknown_target_is_a_usage_error(
    sim: SimulatedRunPod, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli("--config", "cfg.yaml", "doctor", "--target", "nope") == 2
    assert "no target named nope" in capsys.readouterr().err
