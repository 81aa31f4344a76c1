"""Turning wire `Result`s into `Audio`: inline data is decoded, URLs are fetched.

Shared by every provider's `decode` hook, so each one gets the same bounds and errors.
"""

from __future__ import annotations

import httpx

from .audio import Audio
from .errors import AudioError, Rejected, ResultUnusable, TransientError
from .model import AudioData, AudioUrl, Result
from .wire import DEFAULT_LIMITS, WireLimits


async def result_audio(
    result: Result, http: httpx.AsyncClient, limits: WireLimits = DEFAULT_LIMITS
) -> Audio:
    """The audio of one successful result. URL outputs are fetched without any credentials:
    they are pre-signed, and our provider keys must never travel to a storage host."""
    if result.error is not None:
        raise Rejected(f"request {result.id} failed on the worker: {result.error}")
    if isinstance(result.audio, AudioData):
        data = result.audio.data
    elif isinstance(result.audio, AudioUrl):
        data = await _fetch(result.audio.url, http, limits.max_audio_bytes)
    else:
        raise ResultUnusable(f"request {result.id} completed without audio")
    try:
        # Lazy: the runner stores the bytes and their length; samples are decoded when the
        # output is assembled.
        return Audio.decode(data, limits.max_decoded_audio_bytes, lazy=True)
    except AudioError as exc:
        raise ResultUnusable(f"request {result.id} returned unreadable audio: {exc}") from None


async def _fetch(url: str, http: httpx.AsyncClient, max_bytes: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    try:
        async with http.stream("GET", url) as response:
            if response.status_code >= 400:
                raise TransientError(f"fetching result audio gave HTTP {response.status_code}")
            async for chunk in response.aiter_bytes():
                size += len(chunk)
                if size > max_bytes:
                    raise Rejected(f"result audio is over {max_bytes} bytes (max_audio_bytes)")
                chunks.append(chunk)
    except httpx.HTTPError as exc:
        raise TransientError(f"fetching result audio failed: {type(exc).__name__}") from None
    return b"".join(chunks)
