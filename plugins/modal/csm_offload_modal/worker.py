"""The GPU side of the Modal app: one wire batch in, the endpoint's COMPLETED body out.

`app.py` loads a `GpuWorker` once per container (`@modal.enter`) and calls `run` from its
`@modal.method`; tests call the same code in-process. The engine is the local CSM plugin's, so
the Modal app answers exactly as the RunPod handler and the worker server do.

A call that cannot produce a response raises a *builtin* exception whose message says why:
Modal pickles a failed call's exception and re-raises it in the web container, which has no
torch, so an engine exception type would arrive as an unreadable deserialisation error.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Mapping

import attrs
from csm_offload_local_csm.options import DEFAULT_OPTIONS, EngineOptions
from csm_offload_local_csm.worker import Engine, handle_body

from csm_offload import UserError, wire
from csm_offload.errors import WireError
from csm_offload.wire import WireLimits

from . import protocol

_TRUE = ("1", "true", "yes", "on")
#: A batch of up to 16 requests, within the endpoint's body bound.
DEFAULT_LIMITS = WireLimits(max_requests=16, max_body_bytes=protocol.MAX_BODY_BYTES)


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise UserError(f"{name} must be a whole number, got {raw!r}") from None
    if value < 1:
        raise UserError(f"{name} must be 1 or more, got {value}")
    return value


@attrs.frozen
class WorkerConfig:
    """How the GPU container loads and bounds the engine (from the image's environment)."""

    engine: EngineOptions = DEFAULT_OPTIONS
    limits: WireLimits = DEFAULT_LIMITS

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> WorkerConfig:
        base = DEFAULT_OPTIONS
        engine = EngineOptions(
            model=env.get("CSM_OFFLOAD_MODEL") or base.model,
            device=env.get("CSM_OFFLOAD_DEVICE") or base.device,
            dtype=env.get("CSM_OFFLOAD_DTYPE") or base.dtype,
            static_cache=env.get("CSM_OFFLOAD_STATIC_CACHE", "0").lower() in _TRUE,
            compile=env.get("CSM_OFFLOAD_COMPILE", "0").lower() in _TRUE,
        )
        limits = attrs.evolve(
            DEFAULT_LIMITS,
            max_requests=_int(env, "CSM_OFFLOAD_MAX_BATCH", DEFAULT_LIMITS.max_requests),
            max_text_chars=_int(env, "CSM_OFFLOAD_MAX_TEXT_CHARS", DEFAULT_LIMITS.max_text_chars),
        )
        return cls(engine, limits)


class GpuWorker:
    """A loaded engine and the bounds its batches are read with."""

    def __init__(self, engine: Engine, limits: WireLimits = DEFAULT_LIMITS) -> None:
        self.engine = engine
        self.limits = limits

    @classmethod
    def load(cls, config: WorkerConfig) -> GpuWorker:
        from csm_offload_local_csm.engine import CsmEngine  # torch: only in the GPU image

        return cls(CsmEngine.load(config.engine), config.limits)

    def run(self, batch: bytes) -> bytes:
        """The COMPLETED body for one wire `BatchRequest`; `exec_ms` is measured here, around
        the work the GPU container is billed for while it runs this call."""
        started = time.perf_counter()
        try:
            response = handle_body(self.engine, wire.parse_json(batch, self.limits), self.limits)
        except WireError as exc:
            raise ValueError(f"the batch is malformed: {exc}") from None
        except Exception as exc:  # the engine broke (out of memory, a lost GPU): fail the call
            traceback.print_exc()  # Modal's logs keep the detail; the client gets a sentence
            raise RuntimeError(f"engine failed: {type(exc).__name__}: {exc}") from None
        exec_ms = round((time.perf_counter() - started) * 1000)
        return protocol.completed_body(response, exec_ms)
