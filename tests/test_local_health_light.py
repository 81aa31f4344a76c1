"""The local target's health never imports torch: weights and device are checked without it, so
a cloud-only run (which checks every configured target) stays small."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from csm_offload_local_csm import device
from csm_offload_local_csm.device import GpuProbe, TorchBuild, check_device
from csm_offload_local_csm.options import EngineOptions
from csm_offload_local_csm.provider import (
    PRIOR_CPU_S_PER_CHAR,
    PRIOR_GPU_S_PER_CHAR,
    RUNTIME,
    _engine_key,
    health,
    seconds_per_char,
)

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("torch", "torchaudio", "transformers")
MAX_RSS_MB = 150

# Runs as a cloud-only `synth` starts: every plugin, the built-in config, one health refresh.
HEALTH_RUN = """
import asyncio, json, os, resource, sys, time

started = time.perf_counter()
import httpx
from csm_offload.config import default_config_text, load_config_text
from csm_offload.health import HealthCache
from csm_offload.plugins import load_plugins
from csm_offload.targets import check_targets

config = load_config_text(default_config_text(), "<built-in default config>", dict(os.environ))
checks = check_targets(config, load_plugins().providers)
pairs = [(check.target, check.provider) for check in checks if check.usable]
cache = HealthCache()


async def refresh():
    async with httpx.AsyncClient() as http:
        await cache.refresh(pairs, http, timeout_s=30)


asyncio.run(refresh())

def peak_rss_mb():
    # ru_maxrss counts the parent's memory too where it forked this process (Linux keeps the
    # high-water mark across fork and exec), so a pytest that loaded torch would be blamed;
    # VmHWM is this program's own peak.
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # ru_maxrss is in KB on Linux and in bytes on macOS.
    return rss / 2**20 if sys.platform == "darwin" else rss / 1024


print(json.dumps({
    "health": {t.name: [cache.get(t.name).ok, cache.get(t.name).detail] for t, _ in pairs},
    "imported": {name: name in sys.modules for name in ("torch", "torchaudio", "transformers")},
    "max_rss_mb": peak_rss_mb(),
    "ru_maxrss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
    "seconds": time.perf_counter() - started,
}))
"""


@pytest.fixture(autouse=True)
def fresh_probe() -> Iterator[None]:
    """Each test probes from scratch, and leaves no faked answer cached for the next."""
    device.forget_probe()
    yield
    device.forget_probe()


def test_health_of_every_default_target_imports_no_torch() -> None:
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("CSM_OFFLOAD_CONFIG", "CUDA_VISIBLE_DEVICES")
    }
    # Usable, so its health is checked, but nothing listens on port 9: it fails at once.
    env["RUNPOD_API_KEY"] = "test-key"
    env["RUNPOD_ENDPOINT_URL"] = "http://127.0.0.1:9/v2/x"
    done = subprocess.run(
        [sys.executable, "-c", HEALTH_RUN],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert "local" in report["health"], report
    assert not any(report["imported"].values()), report
    assert report["max_rss_mb"] < MAX_RSS_MB, report


def _gpus(monkeypatch: pytest.MonkeyPatch, count: int, cuda: str | None = "12.4") -> None:
    monkeypatch.setattr(device, "nvidia_gpus", lambda: GpuProbe(count, "faked"))
    monkeypatch.setattr(device, "torch_build", lambda: TorchBuild("2.8.0", cuda, None))
    monkeypatch.setattr(device, "_mps", lambda: (False, "not a Mac"))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)


def _fake_smi(directory: Path, script: str) -> str:
    smi = directory / "nvidia-smi"
    smi.write_text(f"#!/bin/sh\n{script}\n")
    smi.chmod(smi.stat().st_mode | stat.S_IXUSR)
    return str(smi)


def test_probe_counts_the_driver_proc_entries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for bus in ("0000:01:00.0", "0000:41:00.0"):
        (tmp_path / bus).mkdir()
    monkeypatch.setattr(device, "NVIDIA_PROC_DIR", tmp_path)
    monkeypatch.setattr(device.shutil, "which", lambda name: pytest.fail("ran nvidia-smi"))
    assert device.probe_nvidia() == GpuProbe(2, str(tmp_path))


def test_probe_without_driver_or_nvidia_smi_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(device, "NVIDIA_PROC_DIR", tmp_path / "absent")
    monkeypatch.setattr(device.shutil, "which", lambda name: None)
    probe = device.probe_nvidia()
    assert probe.count == 0
    assert "no nvidia-smi" in probe.source


@pytest.mark.skipif(sys.platform == "win32", reason="a shell script stands in for nvidia-smi")
@pytest.mark.parametrize(
    ("script", "count", "says"),
    [
        ('echo "GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-1)"', 1, "nvidia-smi -L"),
        ('echo "NVIDIA-SMI has failed because it couldn\'t communicate"; exit 9', 0, "failed"),
        ("exec sleep 5", 0, "did not answer"),
    ],
)
def test_probe_asks_nvidia_smi_when_proc_has_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, script: str, count: int, says: str
) -> None:
    smi = _fake_smi(tmp_path, script)
    monkeypatch.setattr(device, "NVIDIA_PROC_DIR", tmp_path / "absent")
    monkeypatch.setattr(device, "NVIDIA_SMI_TIMEOUT_S", 0.3)
    monkeypatch.setattr(device.shutil, "which", lambda name: smi if name == "nvidia-smi" else None)
    probe = device.probe_nvidia()
    assert probe.count == count
    assert says in probe.source


def test_probe_runs_once_per_process(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []

    def probe() -> GpuProbe:
        calls.append(1)
        return GpuProbe(1, "faked")

    monkeypatch.setattr(device, "probe_nvidia", probe)
    assert device.nvidia_gpus() == device.nvidia_gpus() == GpuProbe(1, "faked")
    assert len(calls) == 1


def test_cuda_without_a_gpu_is_unhealthy_and_names_the_fix(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _gpus(monkeypatch, 0)
    for requested in ("cuda", "cuda:0"):
        check = check_device(requested)
        assert not check.ok
        assert "no NVIDIA GPU was found" in check.detail
        assert "set device: cpu or auto" in check.detail
    auto = check_device("auto")
    assert auto.ok
    assert auto.device == "cpu"
    assert check_device("cpu").ok


def test_auto_follows_the_engines_order(monkeypatch: pytest.MonkeyPatch) -> None:
    _gpus(monkeypatch, 2)
    assert check_device("auto").device == "cuda"
    assert check_device("cuda:1").ok
    too_high = check_device("cuda:2")
    assert not too_high.ok
    assert "only 2" in too_high.detail
    monkeypatch.setattr(device, "_mps", lambda: (True, "Apple silicon"))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert not check_device("cuda").ok
    assert check_device("auto").device == "mps"


def test_a_cpu_only_torch_build_cannot_use_the_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    _gpus(monkeypatch, 1, cuda=None)
    check = check_device("cuda")
    assert not check.ok
    assert "CPU-only build" in check.detail
    assert check_device("auto").device == "cpu"


def test_unknown_device_and_mps_off_a_mac(monkeypatch: pytest.MonkeyPatch) -> None:
    _gpus(monkeypatch, 0)
    check = check_device("tpu")
    assert not check.ok
    assert "auto, cuda, cuda:N, mps or cpu" in check.detail
    mps = check_device("mps")
    assert not mps.ok
    assert "not a Mac" in mps.detail


def test_torch_build_is_read_without_importing_torch() -> None:
    build = device.torch_build()
    if build is None:
        pytest.skip("torch is not installed")
    assert build.version


def test_the_prior_follows_the_device_auto_would_pick(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = EngineOptions(model="prior-test-model", device="auto")
    _gpus(monkeypatch, 0)
    assert seconds_per_char(settings) == (PRIOR_CPU_S_PER_CHAR, "prior")
    _gpus(monkeypatch, 1)
    assert seconds_per_char(settings) == (PRIOR_GPU_S_PER_CHAR, "prior")


def test_health_of_a_missing_model_directory_names_the_fix(tmp_path: Path) -> None:
    settings = EngineOptions(model=str(tmp_path / "no-model-here"), device="cpu")
    result = asyncio.run(health(settings))
    assert not result.ok
    assert "no-model-here does not exist" in result.detail
    assert "set model to a directory that holds a saved CSM model" in result.detail


def test_health_of_a_loaded_engine_says_where_it_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = EngineOptions(model="loaded-test-model", device="auto")

    class Loaded:
        device = "cuda"

    monkeypatch.setitem(RUNTIME.engines, _engine_key(settings), Loaded())
    result = asyncio.run(health(settings))
    assert result.ok
    assert "engine loaded on cuda" in result.detail


def test_a_bad_dtype_is_unhealthy(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    result = asyncio.run(health(EngineOptions(model=str(tmp_path), device="cpu", dtype="bf16")))
    assert not result.ok
    assert "dtype must be" in result.detail
