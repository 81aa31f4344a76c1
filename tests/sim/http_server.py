"""A small HTTP/1.1 server on asyncio streams, for simulated clouds.

Hand-written rather than Starlette/uvicorn because a simulator must misbehave on purpose: reset
a connection mid-request (RST, not a polite close), stall before answering, send a body that
is not JSON, or drip a body a few bytes at a time. It keeps connections alive, reads
Content-Length and chunked bodies, and costs little per request, so one thread serves hundreds
of concurrent clients.

A `Response` with `drip_bytes` > 0 is sent as its head (with the full Content-Length) and then
`drip_bytes` of body at a time with `drip_delay_s` between pieces. Dripping stops at the next
piece once the client has gone (an EOF from it or a broken connection), so an abandoned drip
costs at most one more gap; a half-closed client (`shutdown(SHUT_WR)`) counts as gone.

`HttpServer.kill()` is a dead host: it closes the listening socket and resets (RST) every open
connection, so new connects are refused and requests in flight fail; `start()` again listens on
the same port. `stop()` is `kill()` with a plain close. Both cancel the connection tasks, so
nothing keeps running (no drip, no handler waiting for a job) after they return.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import urllib.parse
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import attrs

MAX_HEADER_BYTES = 64 * 1024
MAX_BODY_BYTES = 64 * 1024 * 1024
REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    411: "Length Required",
    413: "Payload Too Large",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}


@attrs.frozen
class Request:
    method: str
    path: str
    query: Mapping[str, str]
    headers: Mapping[str, str]
    body: bytes


@attrs.frozen
class Response:
    status: int = 200
    body: bytes = b""
    headers: Mapping[str, str] = attrs.field(factory=dict)
    content_type: str = "application/json"
    #: > 0: send the body this many bytes at a time, `drip_delay_s` apart.
    drip_bytes: int = 0
    drip_delay_s: float = 0.0


#: Returned by a handler to drop the connection with a TCP reset instead of answering.
RESET = Response(status=0)

Handler = Callable[[Request], Awaitable[Response]]


class _BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    parts: list[bytes] = []
    size_total = 0
    while True:
        line = await reader.readuntil(b"\r\n")
        size = int(line.split(b";", 1)[0].strip() or b"0", 16)
        if size == 0:
            while (await reader.readuntil(b"\r\n")) != b"\r\n":
                pass  # trailers, ignored
            return b"".join(parts)
        size_total += size
        if size_total > MAX_BODY_BYTES:
            raise _BadRequest(413, "body too large")
        parts.append(await reader.readexactly(size))
        await reader.readexactly(2)


async def read_request(reader: asyncio.StreamReader) -> Request | None:
    """The next request on a connection; None when the client closed it."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None
    except asyncio.LimitOverrunError:
        raise _BadRequest(431, "headers too large") from None
    lines = head[:-4].decode("latin-1").split("\r\n")
    try:
        method, target, _version = lines[0].split(" ", 2)
    except ValueError:
        raise _BadRequest(400, "bad request line") from None
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if "chunked" in headers.get("transfer-encoding", "").lower():
        body = await _read_chunked(reader)
    else:
        try:
            length = int(headers.get("content-length", "0") or "0")
        except ValueError:
            raise _BadRequest(400, "bad Content-Length") from None
        if length > MAX_BODY_BYTES:
            raise _BadRequest(413, "body too large")
        body = await reader.readexactly(length) if length > 0 else b""
    split = urllib.parse.urlsplit(target)
    query = dict(urllib.parse.parse_qsl(split.query))
    return Request(method.upper(), urllib.parse.unquote(split.path), query, headers, body)


def encode_head(response: Response, keep_alive: bool) -> bytes:
    reason = REASONS.get(response.status, "Status")
    lines = [
        f"HTTP/1.1 {response.status} {reason}",
        f"Content-Type: {response.content_type}",
        f"Content-Length: {len(response.body)}",
        f"Connection: {'keep-alive' if keep_alive else 'close'}",
    ]
    lines += [f"{name}: {value}" for name, value in response.headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def encode_response(response: Response, keep_alive: bool) -> bytes:
    return encode_head(response, keep_alive) + response.body


def reset_connection(writer: asyncio.StreamWriter) -> None:
    """Close with SO_LINGER 0, so the peer sees ECONNRESET rather than an orderly close."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class HttpServer:
    """Serves `handler` on 127.0.0.1:`port` (0 picks a free port) in the running loop."""

    def __init__(self, handler: Handler, port: int = 0) -> None:
        self.handler = handler
        self.requested_port = port
        self.server: asyncio.Server | None = None
        self._port: int | None = None
        # Each open connection and the task serving it, so kill/stop can end both.
        self._connections: dict[asyncio.StreamWriter, asyncio.Task[Any]] = {}
        #: Responses being dripped right now (a test's way to see a drip end).
        self.dripping = 0

    @property
    def port(self) -> int:
        """The bound port; kept while killed, so a revived server has the same address."""
        assert self._port is not None, "server not started"
        return self._port

    @property
    def listening(self) -> bool:
        return self.server is not None and self.server.is_serving()

    @property
    def connections(self) -> int:
        return len(self._connections)

    async def start(self) -> None:
        """Listen; after `kill()` or `stop()`, on the port first bound (no-op when listening)."""
        if self.listening:
            return
        port = self._port if self._port is not None else self.requested_port
        # reuse_address (the asyncio default on POSIX) lets a revived server bind the port
        # again at once; the reset connections leave no TIME_WAIT behind anyway.
        self.server = await asyncio.start_server(
            self._serve, "127.0.0.1", port, backlog=2048, limit=MAX_HEADER_BYTES
        )
        self._port = self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        await self._close(reset=False)

    async def kill(self) -> None:
        """A dead host: refuse new connects and reset every open connection."""
        await self._close(reset=True)

    async def _close(self, reset: bool) -> None:
        if self.server is not None:
            self.server.close()  # closes the listening socket now: new connects are refused
        current = asyncio.current_task()
        tasks: list[asyncio.Task[Any]] = []
        for writer, task in list(self._connections.items()):
            if reset:
                reset_connection(writer)
            else:
                writer.transport.abort()
            if task is not current:
                task.cancel()
                tasks.append(task)
        if tasks:
            await asyncio.wait(tasks, timeout=2.0)
        if self.server is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.server.wait_closed(), 2.0)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections[writer] = task
        try:
            await self._serve_requests(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass
        finally:
            self._connections.pop(writer, None)
            if not writer.transport.is_closing():
                writer.transport.close()

    async def _serve_requests(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        while True:
            try:
                request = await read_request(reader)
            except _BadRequest as exc:
                writer.write(encode_response(Response(exc.status, str(exc).encode()), False))
                await writer.drain()
                return
            if request is None:
                return
            response = await self.handler(request)
            if response is RESET:
                reset_connection(writer)
                return
            keep_alive = request.headers.get("connection", "").lower() != "close"
            if response.drip_bytes > 0:
                if not await self._drip(reader, writer, response, keep_alive):
                    return
            else:
                writer.write(encode_response(response, keep_alive))
                await writer.drain()
            if not keep_alive:
                return

    async def _drip(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        response: Response,
        keep_alive: bool,
    ) -> bool:
        """Send `response` slowly; False when the client left before the end."""
        body, step = response.body, response.drip_bytes
        self.dripping += 1
        try:
            writer.write(encode_head(response, keep_alive))
            await writer.drain()
            for offset in range(0, len(body), step):
                if offset:
                    await asyncio.sleep(response.drip_delay_s)
                # A client that closed sends FIN (reader EOF) or RST (transport closing); the
                # rest of the body would only feed a dead socket, so stop here.
                if reader.at_eof() or writer.transport.is_closing():
                    writer.transport.abort()
                    return False
                writer.write(body[offset : offset + step])
                await writer.drain()
            return True
        finally:
            self.dripping -= 1
