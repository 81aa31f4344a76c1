"""The csm-offload model for Replicate (cog.yaml: `run: "predict.py:Runner"`).

One prediction is one wire-format batch: the input `batch` is a `BatchRequest` as JSON text,
and the output is the `BatchResponse` as a JSON file, which Replicate stores and returns as an
https:// file URL (Cog's own server, run without `--upload-url`, returns it as a data: URL).
A file rather than a string keeps the prediction object small: a string output would be
echoed, audio and all, in every read of the prediction.

The engine is the one every csm-offload host runs (`csm_offload_local_csm`), loaded once in
`setup`. A malformed batch fails the prediction with a message naming the field; a malformed
or impossible request inside a valid batch gets an error in its own result and the rest run.

Environment (all optional): CSM_OFFLOAD_MODEL (default: the weights baked into the image at
/weights/csm-1b, else sesame/csm-1b with HF_TOKEN), CSM_OFFLOAD_DEVICE, CSM_OFFLOAD_DTYPE,
CSM_OFFLOAD_STATIC_CACHE, CSM_OFFLOAD_COMPILE (1/0), CSM_OFFLOAD_MAX_BATCH,
CSM_OFFLOAD_MAX_TEXT_CHARS.
"""

from __future__ import annotations

import os
import tempfile
import traceback
import uuid
from collections.abc import Mapping
from pathlib import Path as FilePath
from typing import Any

import attrs
from cog import BaseRunner, Input, Path
from csm_offload_local_csm.options import DEFAULT_MODEL, EngineOptions
from csm_offload_local_csm.worker import parse_batch, run_batch

from csm_offload import BatchResponse, UserError, wire
from csm_offload.errors import WireError
from csm_offload.wire import WireLimits

#: Where cog.yaml's build step puts the weights (outside /src, which Cog replaces).
BAKED_WEIGHTS = FilePath("/weights/csm-1b")
#: A batch of up to 16 requests, its JSON (context audio inline) up to 20 MiB.
LIMITS = WireLimits(max_requests=16, max_body_bytes=20 * 1024 * 1024)
_TRUE = ("1", "true", "yes", "on")


@attrs.frozen
class RunnerConfig:
    engine: EngineOptions
    limits: WireLimits = LIMITS

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> RunnerConfig:
        default_model = str(BAKED_WEIGHTS) if BAKED_WEIGHTS.is_dir() else DEFAULT_MODEL
        engine = EngineOptions(
            model=env.get("CSM_OFFLOAD_MODEL", default_model),
            device=env.get("CSM_OFFLOAD_DEVICE", "auto"),
            dtype=env.get("CSM_OFFLOAD_DTYPE", "auto"),
            static_cache=env.get("CSM_OFFLOAD_STATIC_CACHE", "0").lower() in _TRUE,
            compile=env.get("CSM_OFFLOAD_COMPILE", "0").lower() in _TRUE,
        )
        limits = attrs.evolve(
            LIMITS,
            max_requests=_count(env, "CSM_OFFLOAD_MAX_BATCH", LIMITS.max_requests),
            max_text_chars=_count(env, "CSM_OFFLOAD_MAX_TEXT_CHARS", LIMITS.max_text_chars),
        )
        return cls(engine, limits)


def _count(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise UserError(f"{name} must be a whole number, got {raw!r}") from None
    if value < 1:
        raise UserError(f"{name} must be 1 or more, got {value}")
    return value


def answer(engine: Any, batch: str, limits: WireLimits) -> BatchResponse:
    """The wire response to one `batch` input; a malformed envelope raises `ValueError`
    naming the field (Replicate then fails the prediction with that message)."""
    try:
        data = wire.parse_json(batch, limits)
    except WireError as exc:
        raise ValueError(f"batch: {_message(exc)}") from None
    try:
        parsed = parse_batch(data, limits)
    except WireError as exc:
        where = f"batch.{exc.field}" if exc.field != "$" else "batch"
        raise ValueError(f"{where}: {_message(exc)}") from None
    try:
        return run_batch(engine, parsed)
    except Exception as exc:  # the engine broke (e.g. GPU out of memory): fail this prediction
        traceback.print_exc()  # the prediction's logs keep the detail; the error, a sentence
        raise RuntimeError(f"engine failed: {type(exc).__name__}: {exc}") from None


def _message(exc: WireError) -> str:
    return str(exc).partition(": ")[2] or str(exc)


class Outbox:
    """Where `run` leaves each answer for Cog to upload. An instance runs one prediction at a
    time and Cog uploads the file before the next starts, so only the latest is kept: a
    long-lived instance never fills its disk with old answers."""

    def __init__(self, directory: FilePath) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)

    def put(self, data: bytes) -> Path:
        for old in self.directory.glob("*.json"):
            old.unlink(missing_ok=True)
        name = f"csm-offload-{uuid.uuid4().hex}.json"
        partial = self.directory / f".{name}.partial"
        partial.write_bytes(data)
        partial.replace(self.directory / name)
        return Path(self.directory / name)


class Runner(BaseRunner):
    """Cog's entry point: `setup` once per instance, `run` once per prediction."""

    def setup(self) -> None:
        from csm_offload_local_csm.engine import CsmEngine

        self.config = RunnerConfig.from_env(os.environ)
        self.engine = CsmEngine.load(self.config.engine)
        self.outbox = Outbox(FilePath(tempfile.gettempdir()) / "csm-offload-responses")

    def run(
        self,
        batch: str = Input(
            description="A csm-offload wire-format batch request (JSON, schema 1); see "
            "docs/wire-format.md"
        ),
    ) -> Path:
        response = answer(self.engine, batch, self.config.limits)
        return self.outbox.put(wire.dumps(response))
