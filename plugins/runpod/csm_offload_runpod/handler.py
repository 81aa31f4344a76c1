"""The RunPod serverless worker: `python handler.py` inside the image (see deploy/Dockerfile).

Each job's `input` is a wire-format `BatchRequest`; its `output` is a `BatchResponse`. The
engine is loaded once per worker, before the first job is taken. A malformed envelope fails
that job with a message naming the field; a malformed or impossible request inside a valid
batch gets an error in its own result and the rest of the batch runs. Responses over
`CSM_OFFLOAD_MAX_INLINE_BYTES` move their audio to a bucket (`url_outputs`).

Environment: CSM_OFFLOAD_MODEL (default sesame/csm-1b; HF_TOKEN for the gated download),
CSM_OFFLOAD_DEVICE, CSM_OFFLOAD_DTYPE, CSM_OFFLOAD_STATIC_CACHE, CSM_OFFLOAD_COMPILE (1/0),
CSM_OFFLOAD_MAX_BATCH, CSM_OFFLOAD_MAX_TEXT_CHARS, CSM_OFFLOAD_MAX_INLINE_BYTES and the bucket
variables of `csm_offload_local_csm.url_outputs`.

Local test server: `python handler.py --rp_serve_api --rp_api_port 8000 --rp_api_host 127.0.0.1`.
"""

from __future__ import annotations

import asyncio
import os
import traceback
from collections.abc import Mapping
from typing import Any

import attrs
from csm_offload_local_csm.options import DEFAULT_OPTIONS, EngineOptions
from csm_offload_local_csm.url_outputs import BucketConfig, UrlOutputs, fit_response
from csm_offload_local_csm.worker import parse_batch, run_batch

from csm_offload import UserError, wire
from csm_offload.errors import WireError
from csm_offload.wire import WireLimits

#: Under RunPod's smallest payload limit (10 MB for /run), with room for the job envelope.
DEFAULT_MAX_INLINE_BYTES = 9 * 1024 * 1024
_TRUE = ("1", "true", "yes", "on")
#: RunPod's /runsync takes 20 MB; a batch of up to 16 requests.
HANDLER_LIMITS = WireLimits(max_requests=16, max_body_bytes=20 * 1024 * 1024)


@attrs.frozen
class WorkerConfig:
    engine: EngineOptions = DEFAULT_OPTIONS
    limits: WireLimits = HANDLER_LIMITS
    max_inline_bytes: int = DEFAULT_MAX_INLINE_BYTES
    bucket: BucketConfig | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> WorkerConfig:
        base = cls()
        engine = EngineOptions(
            model=env.get("CSM_OFFLOAD_MODEL", base.engine.model),
            device=env.get("CSM_OFFLOAD_DEVICE", base.engine.device),
            dtype=env.get("CSM_OFFLOAD_DTYPE", base.engine.dtype),
            static_cache=env.get("CSM_OFFLOAD_STATIC_CACHE", "0").lower() in _TRUE,
            compile=env.get("CSM_OFFLOAD_COMPILE", "0").lower() in _TRUE,
        )
        limits = attrs.evolve(
            base.limits,
            max_requests=_int(env, "CSM_OFFLOAD_MAX_BATCH", base.limits.max_requests),
            max_text_chars=_int(env, "CSM_OFFLOAD_MAX_TEXT_CHARS", base.limits.max_text_chars),
        )
        return cls(
            engine=engine,
            limits=limits,
            max_inline_bytes=_int(env, "CSM_OFFLOAD_MAX_INLINE_BYTES", base.max_inline_bytes),
            bucket=BucketConfig.from_env(env),
        )


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise UserError(f"{name} must be a whole number, got {raw!r}") from None
    if value < 1:
        raise UserError(f"{name} must be 1 or more")
    return value


class Worker:
    """The engine and settings of this worker process, loaded once."""

    def __init__(self, config: WorkerConfig, engine: Any) -> None:
        self.config = config
        self.engine = engine
        self.outputs = UrlOutputs(config.bucket) if config.bucket else None

    @classmethod
    def load(cls, config: WorkerConfig) -> Worker:
        from csm_offload_local_csm.engine import CsmEngine

        return cls(config, CsmEngine.load(config.engine))

    def handle(self, job: Mapping[str, Any]) -> dict[str, Any]:
        """One RunPod job: its `output` dict, or `{"error": ...}` for a malformed envelope."""
        try:
            batch = parse_batch(job.get("input"), self.config.limits)
        except WireError as exc:
            return {"error": f"input.{exc}" if exc.field != "$" else f"input: {exc}"}
        try:
            response = run_batch(self.engine, batch)
        except Exception as exc:  # the engine broke (e.g. GPU out of memory): fail this job
            traceback.print_exc()  # the worker log keeps the detail; the client gets a sentence
            return {"error": f"engine failed: {type(exc).__name__}: {exc}"}
        job_id = str(job.get("id") or "job")
        response = fit_response(response, self.config.max_inline_bytes, self.outputs, job_id)
        return wire.unstructure(response)


_WORKER: Worker | None = None


def worker() -> Worker:
    global _WORKER
    if _WORKER is None:
        _WORKER = Worker.load(WorkerConfig.from_env(os.environ))
    return _WORKER


async def handler(job: dict[str, Any]) -> dict[str, Any]:
    """RunPod's entry: generation runs on a thread so the worker's loop keeps heartbeating."""
    return await asyncio.to_thread(worker().handle, job)


def main() -> None:
    import runpod

    worker()  # load the weights before taking the first job
    runpod.serverless.start({"handler": handler})


if __name__ == "__main__":
    main()
