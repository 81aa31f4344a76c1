"""The RunPod worker image, linted: no Docker engine runs here, so the Dockerfile is parsed and
checked against the repository (base image, pinned requirements, copied paths, entry point)."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import re
import shlex
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "plugins" / "runpod" / "deploy"
PIN = re.compile(r"^([A-Za-z0-9_.\-]+)==([A-Za-z0-9_.+\-]+)$")


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    text = (DEPLOY / "Dockerfile").read_text()
    joined = re.sub(r"\\\n", " ", text)
    out = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            out.append((keyword.upper(), rest.strip()))
    return out


def requirements() -> dict[str, str]:
    pins = {}
    for line in (DEPLOY / "requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            match = PIN.match(line)
            assert match, f"requirements.txt line is not pinned with ==: {line!r}"
            pins[match.group(1)] = match.group(2)
    return pins


def test_base_image_is_pinned_python_311() -> None:
    (base,) = [rest for keyword, rest in instructions() if keyword == "FROM"]
    image, _, tag = base.partition(":")
    assert image == "python"
    assert tag.startswith("3.11") and tag != "latest"


def test_requirements_are_pinned_to_the_tested_versions() -> None:
    pins = requirements()
    for name in ("runpod", "transformers", "tokenizers", "boto3", "soundfile", "numpy"):
        assert name in pins, f"{name} missing from deploy/requirements.txt"
    for name, version in pins.items():
        assert importlib.metadata.version(name) == version, (
            f"deploy/requirements.txt pins {name}=={version} but the tests ran with "
            f"{importlib.metadata.version(name)}"
        )


def test_torch_is_pinned_like_the_makefile() -> None:
    runs = " ".join(rest for keyword, rest in instructions() if keyword == "RUN")
    makefile = (ROOT / "Makefile").read_text()
    for package in ("torch", "torchaudio"):
        pin = re.search(rf"\b{package}==([0-9.]+)", runs)
        assert pin, f"the Dockerfile does not pin {package}"
        assert f"{package}=={pin.group(1)}" in makefile
        assert importlib.metadata.version(package).split("+")[0] == pin.group(1)


def test_copied_paths_exist_and_are_not_ignored() -> None:
    ignored = {
        line.strip()
        for line in (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    copies = [shlex.split(rest) for keyword, rest in instructions() if keyword == "COPY"]
    assert copies
    for args in copies:
        for source in args[:-1]:
            assert (ROOT / source).exists(), f"COPY source {source} does not exist"
            assert source.split("/")[0] not in ignored, f"{source} is excluded by .dockerignore"


def test_cmd_runs_the_handler_module() -> None:
    (cmd,) = [rest for keyword, rest in instructions() if keyword == "CMD"]
    assert cmd.startswith("[")
    parts = [p.strip().strip('"') for p in cmd.strip("[]").split(",")]
    assert parts[0] == "python"
    module = parts[parts.index("-m") + 1]
    assert module == "csm_offload_runpod.handler"
    spec = importlib.util.find_spec(module)
    assert spec is not None and spec.origin is not None
    source = Path(spec.origin).read_text()
    assert "runpod.serverless.start" in source
    assert 'if __name__ == "__main__":' in source
