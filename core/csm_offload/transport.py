"""The shared client's transport: several small connection pools instead of one large one.

httpcore's pool looks through all its connections to place each request, so with hundreds of
long-held connections (a long-poll per job in flight) every request costs time proportional
to the number of jobs in flight. Spreading requests over `shards` pools, each a fraction of the
size, keeps that cost flat: a request goes to the pool with the fewest requests under way.
Each pool runs on `netbackend.AsyncioBackend` rather than httpcore's anyio one.
"""

from __future__ import annotations

import ssl

import httpcore
import httpx

from .netbackend import AsyncioBackend

#: Connections per shard; the number of shards follows from the client's connection limit.
SHARD_CONNECTIONS = 8


class ShardedTransport(httpx.AsyncBaseTransport):
    def __init__(
        self,
        max_connections: int = 1000,
        shard_connections: int = SHARD_CONNECTIONS,
        verify: ssl.SSLContext | None = None,
    ) -> None:
        shards = max(1, -(-max_connections // shard_connections))
        per_shard = max(1, -(-max_connections // shards))
        limits = httpx.Limits(max_connections=per_shard, max_keepalive_connections=per_shard)
        # One TLS context for all shards: loading the CA bundle costs ~20 ms each time.
        tls = verify or httpx.create_ssl_context()
        self._shards = [_shard(limits, tls) for _ in range(shards)]
        self._busy = [0] * shards

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        index = min(range(len(self._shards)), key=self._busy.__getitem__)
        self._busy[index] += 1
        try:
            response = await self._shards[index].handle_async_request(request)
        except BaseException:
            self._busy[index] -= 1
            raise
        # The connection stays in use until the body is read and closed.
        response.stream = _Release(response.stream, self._busy, index)  # type: ignore[arg-type]
        return response

    async def aclose(self) -> None:
        for shard in self._shards:
            await shard.aclose()


def _shard(limits: httpx.Limits, tls: ssl.SSLContext) -> httpx.AsyncHTTPTransport:
    """httpx's transport (its request and exception mapping) over a pool on asyncio streams.
    httpx offers no backend argument, so its pool is replaced by an identical one that has
    ours; tests/test_transport.py fails if httpx stops keeping its pool there."""
    transport = httpx.AsyncHTTPTransport(limits=limits, verify=tls)
    transport._pool = httpcore.AsyncConnectionPool(
        ssl_context=tls,
        max_connections=limits.max_connections,
        max_keepalive_connections=limits.max_keepalive_connections,
        keepalive_expiry=limits.keepalive_expiry,
        network_backend=AsyncioBackend(),
    )
    return transport


class _Release(httpx.AsyncByteStream):
    """Counts the shard's request as done when the response body is closed."""

    def __init__(self, stream: httpx.AsyncByteStream, busy: list[int], index: int) -> None:
        self._stream = stream
        self._busy = busy
        self._index = index
        self._open = True

    async def __aiter__(self):  # type: ignore[no-untyped-def]
        async for chunk in self._stream:
            yield chunk

    async def aclose(self) -> None:
        if self._open:
            self._open = False
            self._busy[self._index] -= 1
        await self._stream.aclose()
