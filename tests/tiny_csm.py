"""The tiny random CSM for every test of the engine and its hosts (real weights are never
downloaded in tests): hidden 64, 2 layers, 4 heads, 2 KV heads, 32 codebooks, vocab 2048, the
default Mimi codec. The builder lives in `csm_offload_local_csm.random_model`.

Use it as a pytest plugin (`pytest_plugins = ["tests.tiny_csm"]`): `tiny_csm_dir` builds the
model once per session and saves it, so subprocesses (servers, the RunPod handler) can load it
from disk like any local model directory; `tiny_engine` is it loaded on the CPU.
"""

from __future__ import annotations

from pathlib import Path

import pytest


def build_tiny_csm(directory: Path, seed: int = 0) -> Path:
    from csm_offload_local_csm.random_model import build_random_csm

    return build_random_csm(directory, "tiny", seed)


@pytest.fixture(scope="session")
def tiny_csm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved tiny CSM directory, built once per test session."""
    return build_tiny_csm(tmp_path_factory.mktemp("tiny-csm") / "model")


@pytest.fixture(scope="session")
def tiny_engine(tiny_csm_dir: Path):  # -> CsmEngine
    """The tiny CSM loaded once per session on the CPU."""
    from csm_offload_local_csm.engine import CsmEngine, EngineOptions

    return CsmEngine.load(EngineOptions(model=str(tiny_csm_dir), device="cpu"))
