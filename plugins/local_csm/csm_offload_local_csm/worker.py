"""One wire `BatchRequest` body in, one `BatchResponse` out: the code every worker host shares.

The envelope (schema, audio format, request count, one id per request) must be valid or the
whole body is refused; each request inside is then checked on its own, so one malformed or
over-long request, or one whose context audio is empty or not finite, gets an error in its own
`Result` while the rest of the batch still runs.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any, Protocol

import attrs
import numpy as np

from csm_offload import AudioData, BatchRequest, BatchResponse, Result, SpeechRequest, WorkerInfo
from csm_offload.audio import AudioFormat
from csm_offload.errors import PERMANENT, WireError
from csm_offload.wire import (
    DEFAULT_LIMITS,
    WireLimits,
    structure,
    structure_request,
    structure_shared_context,
)

#: The longest request id echoed back in a per-request error.
_MAX_ID_CHARS = 128


class Engine(Protocol):
    """What a host needs from the engine (the real one, or a test's)."""

    def generate(self, requests: Sequence[SpeechRequest], cancel: threading.Event | None) -> Any:
        """Return one `Generated` per request, in order."""

    def info(self) -> WorkerInfo:
        """Describe the GPU and model."""


@attrs.frozen
class ParsedBatch:
    """A body that passed the envelope checks: each item a request or its own error."""

    items: tuple[SpeechRequest | Result, ...]
    audio_format: AudioFormat

    @property
    def requests(self) -> list[SpeechRequest]:
        return [item for item in self.items if isinstance(item, SpeechRequest)]

    @property
    def text_chars(self) -> int:
        return sum(len(request.text) for request in self.requests)


def parse_batch(data: Any, limits: WireLimits = DEFAULT_LIMITS) -> ParsedBatch:
    """Check the envelope (raising `WireError`), then each request on its own."""
    if not isinstance(data, dict):
        raise WireError("$", "expected a JSON object")
    items = data.get("requests")
    if not isinstance(items, list):
        raise WireError("requests", "expected a list of requests")
    # The envelope alone, through the one converter: schema, audio_format, unknown keys.
    envelope = structure({**data, "requests": [], "shared_context": None}, BatchRequest, limits)
    # A voice prompt shared by the batch is decoded once; a bad one fails the whole body.
    shared = structure_shared_context(data, limits)
    if len(items) > limits.max_requests:
        raise WireError(
            "requests", f"{len(items)} is over the limit of {limits.max_requests} (max_requests)"
        )
    parsed = tuple(_parse_item(index, item, shared, limits) for index, item in enumerate(items))
    _refuse_duplicate_ids(parsed)
    return ParsedBatch(parsed, envelope.audio_format)


def _refuse_duplicate_ids(items: Sequence[SpeechRequest | Result]) -> None:
    """Results are matched to requests by id, so two requests with one id cannot both be
    answered: the client has a bug, and guessing which result is whose would hide it."""
    first: dict[str, int] = {}
    for index, item in enumerate(items):
        earlier = first.setdefault(item.id, index)
        if earlier != index:
            shown = item.id if len(item.id) <= _MAX_ID_CHARS else item.id[:_MAX_ID_CHARS] + "…"
            raise WireError(
                "requests",
                f"requests[{earlier}] and requests[{index}] have the same id {shown!r}: every "
                "request of a batch needs its own id (identical requests share one; send it once)",
            )


def _parse_item(index: int, item: Any, shared: tuple, limits: WireLimits) -> SpeechRequest | Result:
    try:
        return structure_request(item, shared, limits)
    except WireError as exc:
        where = f"requests[{index}]" if exc.field == "$" else f"requests[{index}].{exc.field}"
        message = str(exc).split(": ", 1)[-1]
        return Result(id=_item_id(index, item), error=f"{where}: {message}; {PERMANENT}")


def _item_id(index: int, item: Any) -> str:
    candidate = item.get("id") if isinstance(item, dict) else None
    if isinstance(candidate, str) and 0 < len(candidate) <= _MAX_ID_CHARS:
        return candidate
    return f"requests[{index}]"


def run_batch(
    engine: Engine, batch: ParsedBatch, cancel: threading.Event | None = None
) -> BatchResponse:
    """Generate the valid requests in one engine call and answer every item in order.

    Errors of the engine itself (out of memory, a broken GPU) propagate: the host fails the
    job so the client can retry elsewhere, rather than blaming each request.
    """
    items = [_check_context_audio(index, item) for index, item in enumerate(batch.items)]
    requests = [item for item in items if isinstance(item, SpeechRequest)]
    generated = iter(engine.generate(requests, cancel) if requests else ())
    results = []
    for item in items:
        if isinstance(item, Result):
            results.append(item)
            continue
        done = next(generated)
        if done.audio is None:
            results.append(Result(id=done.id, gpu_ms=done.gpu_ms, error=done.error))
            continue
        audio = AudioData.from_audio(done.audio, batch.audio_format)
        results.append(Result(done.id, audio, done.audio.duration_ms, done.gpu_ms))
    return BatchResponse(tuple(results), engine.info())


def _check_context_audio(index: int, item: SpeechRequest | Result) -> SpeechRequest | Result:
    """Empty or non-finite context audio makes the engine fail (or poison) the whole batched
    call, so such a request is answered with its own error before the engine sees it."""
    if isinstance(item, Result):
        return item
    for position, segment in enumerate(item.context):
        audio = segment.audio
        if audio is None:
            continue
        field = f"requests[{index}].context[{position}].audio"
        if audio.frames == 0:
            return Result(
                id=item.id,
                error=f"{field}: has no samples ({PERMANENT}); send some audio for every "
                "context segment, "
                "or leave the segment out",
            )
        if not np.isfinite(audio.samples).all():
            return Result(
                id=item.id,
                error=f"{field}: has NaN or infinite samples ({PERMANENT}); send finite "
                "samples in [-1, 1]",
            )
    return item


def handle_body(
    engine: Engine,
    data: Any,
    limits: WireLimits = DEFAULT_LIMITS,
    cancel: threading.Event | None = None,
) -> BatchResponse:
    """`parse_batch` then `run_batch`: what a synchronous host (RunPod, Modal) calls."""
    return run_batch(engine, parse_batch(data, limits), cancel)
