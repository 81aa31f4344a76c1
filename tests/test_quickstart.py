"""README command one on a fresh machine: a clean copy of the repo, a new virtual environment
with the core and the light plugins (no torch), and `make demo`: the example book into an M4B.

The copy leaves out everything a clone would not have (virtual environments, build outputs,
caches, journals), so the test sees what a newcomer sees. Installing needs the package index
(pip's cache makes it quicker); it takes about 30 s here with a warm cache.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from csm_offload import CSM_SAMPLE_RATE, Audio
from csm_offload.book.encode import read_tags

ROOT = Path(__file__).resolve().parents[1]
NOT_IN_A_CLONE = shutil.ignore_patterns(
    ".git",
    ".venv",
    "venv",
    "__pycache__",
    "*.egg-info",
    "build",
    "dist",
    ".pytest_cache",
    ".ruff_cache",
    ".hypothesis",
    ".csm-offload",
    ".env",
    "*.wav",
    "*.flac",
    "*.wav.json",
    "*.partial",
    "audiobook",
    "audiobooks",
)
INSTALL_TIMEOUT_S = 540
SYNTH_TIMEOUT_S = 120


def _clean_env() -> dict[str, str]:
    """The environment of a fresh shell: no active venv, no project settings, no keys."""
    drop = ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "RUNPOD_", "MODAL_", "TNR_", "HF_TOKEN")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    env = {k: v for k, v in env.items() if not k.startswith("CSM_OFFLOAD_")}
    env["PATH"] = os.pathsep.join(
        p for p in env.get("PATH", "").split(os.pathsep) if ".venv" not in p
    )
    return env


def _run(args: list[str], cwd: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        args,
        cwd=cwd,
        env=_clean_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, (
        f"{' '.join(args)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    )
    return done


def _base_python() -> str:
    """The interpreter this venv was made from, as a newcomer's `python3` would be."""
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    base = Path(sys.base_prefix) / "bin" / version
    return str(base) if base.is_file() else sys.executable


@pytest.mark.slow
@pytest.mark.timeout(INSTALL_TIMEOUT_S + SYNTH_TIMEOUT_S + 60)
def test_readme_command_one_makes_the_example_book_with_the_draft_voice(tmp_path: Path) -> None:
    repo = tmp_path / "csm-offload"
    shutil.copytree(ROOT, repo, ignore=NOT_IN_A_CLONE)
    python = _base_python()
    _run(["make", "install-light", f"PYTHON={python}"], repo, INSTALL_TIMEOUT_S)
    venv = repo / ".venv" / "bin"
    no_torch = subprocess.run(
        [str(venv / "python"), "-c", "import torch"], capture_output=True, timeout=60, check=False
    )
    assert no_torch.returncode != 0, "the light install must not pull in torch"

    done = _run(["make", "demo", f"PYTHON={python}"], repo, SYNTH_TIMEOUT_S + INSTALL_TIMEOUT_S)
    m4b = repo / "audiobook" / "The Keeper of Gull Point.m4b"
    assert str(m4b.relative_to(repo)) in done.stdout  # where the files are
    assert "made by espeak" in done.stdout  # which target made it
    assert "draft" in done.stdout  # and why: no CSM-quality target is usable

    tags = read_tags(m4b)
    assert [c.title for c in tags.chapters] == [
        "Chapter 1: The Storm",
        "Chapter 2: The Boat",
        "Chapter 3: The Morning",
    ]
    assert tags.tags["title"] == "The Keeper of Gull Point"
    chapters = sorted((repo / "audiobook" / "chapters").glob("*.flac"))
    assert len(chapters) == 3
    audio = Audio.decode(chapters[0].read_bytes())
    assert audio.sample_rate == CSM_SAMPLE_RATE
    assert 20 < audio.duration < 120
    assert audio.rms() > 0.02
    report = json.loads((repo / "audiobook" / "report.json").read_text("utf-8"))
    assert [c["number"] for c in report["chapters"]] == [1, 2, 3]
