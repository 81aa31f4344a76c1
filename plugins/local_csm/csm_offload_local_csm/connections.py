"""Connections: how many may be open, how long their request headers may take, how they close.

The worker server faces the internet (docs/worker-server.md, "Limits and timeouts"), and until
a request's headers have arrived nobody can tell the token holder from anyone else: a connection
is only a file descriptor. So at most `max_connections` are open, and when a new one needs room
the connection that has waited longest for its request is dropped; request headers must arrive
within `header_timeout_s` (of the connection, or of their first byte on a kept-alive one); and a
connection answered before its body was read lingers to swallow that body rather than reset.

This is uvicorn's h11 protocol with those rules added (`guarded_protocol`, for
`uvicorn.Config(http=...)`); what the headers say, once they are in, is for `guard` to judge.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any, ClassVar, cast

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

#: The request line plus headers (h11's own default, named so the docs and errors can say it).
MAX_HEADER_BYTES = 16 * 1024
#: How long a connection answered early stays open to swallow what its client is still sending.
LINGER_S = 2.0
HEADERS_TOO_LARGE = (
    f"the request headers are over {MAX_HEADER_BYTES} bytes: send fewer or shorter ones"
)


def _raw_response(status: int, message: str, headers: Mapping[str, str] | None = None) -> bytes:
    """A whole `{"error": ...}` response, for connections that never reached the app."""
    body = json.dumps({"error": message}).encode()
    lines = [
        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}",
        "content-type: application/json",
        f"content-length: {len(body)}",
        "connection: close",
        *(f"{name}: {value}" for name, value in (headers or {}).items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii") + body


class _ConnectionGuard:
    """The open connections of one server, and which of them may be dropped to make room.

    uvicorn's `limit_concurrency` counts only once a request's headers have arrived, then
    refuses everyone alike: half-sent requests would still hold every descriptor, and the
    token holder would be refused with the attackers. Here a new connection over the limit
    takes the place of one that is answered and closing, else of the one that has waited
    longest for a first request, else of the longest idle keep-alive connection; only when
    every connection is inside a request is the newcomer turned away (503).
    """

    def __init__(self, limit: int, header_timeout_s: float, keep_alive_s: float) -> None:
        self.limit = limit
        self.header_timeout_s = header_timeout_s
        self.keep_alive_s = keep_alive_s
        self.open: set[_GuardedProtocol] = set()
        # Insertion-ordered dicts used as ordered sets: the first has waited longest.
        self.closing: dict[_GuardedProtocol, None] = {}
        self.fresh: dict[_GuardedProtocol, None] = {}
        self.kept: dict[_GuardedProtocol, None] = {}

    def admit(self, conn: _GuardedProtocol) -> bool:
        self.open.add(conn)
        if len(self.open) <= self.limit:
            return True
        for tier in (self.closing, self.fresh, self.kept):
            victim = next(iter(tier), None)
            if victim is not None:
                victim.drop()
                return True
        self.forget(conn)
        return False

    def waiting(self, conn: _GuardedProtocol, *, fresh: bool) -> None:
        (self.fresh if fresh else self.kept)[conn] = None

    def busy(self, conn: _GuardedProtocol) -> None:
        self.fresh.pop(conn, None)
        self.kept.pop(conn, None)

    def lingering(self, conn: _GuardedProtocol) -> None:
        self.busy(conn)
        self.closing[conn] = None

    def forget(self, conn: _GuardedProtocol) -> None:
        self.open.discard(conn)
        self.closing.pop(conn, None)
        self.busy(conn)


class _LingeringTransport:
    """The transport as uvicorn sees it. Closing while the client is still sending a body
    (an early 401, 408 or 413) would reset the connection, and a reset can destroy the answer
    before the client reads it; this sends the answer's end instead and swallows the rest."""

    def __init__(self, inner: asyncio.Transport, owner: _GuardedProtocol) -> None:
        self._inner = inner
        self._owner = owner

    def close(self) -> None:
        self._owner.close_transport()

    def is_closing(self) -> bool:
        return self._owner.lingering or self._inner.is_closing()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class _GuardedProtocol(H11Protocol):
    """uvicorn's h11 protocol with a connection limit, a header deadline and lingering close.

    Built on uvicorn's `H11Protocol` (its `conn`, `cycle` and `on_response_complete`); the
    tests under load and attack (tests/peers, tests/hostile) are what keep this honest when
    uvicorn changes.
    """

    guard: ClassVar[_ConnectionGuard]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.raw: asyncio.Transport | None = None
        self.lingering = False
        self._lost = False
        self._waiting = False
        self._pending = 0  # bytes of a request whose headers have not all arrived
        self._idle = False  # kept alive between requests, no byte of the next one yet
        self._cycle_seen: Any = None
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.raw = cast(asyncio.Transport, transport)
        super().connection_made(cast(asyncio.Transport, _LingeringTransport(self.raw, self)))
        if not self.guard.admit(self):
            limit = self.guard.limit
            message = f"the server has {limit} connections open (max_connections): retry shortly"
            self.raw.write(_raw_response(503, message, {"retry-after": "1"}))
            self.raw.close()
            return
        self._await_request(fresh=True)

    def data_received(self, data: bytes) -> None:
        if self.lingering:
            return  # answered already: swallow what is still coming
        if self._waiting:
            if not self._pending and self._idle:  # a request begins: its headers' clock starts
                self._idle = False
                self._set_timer(self.guard.header_timeout_s)
            self._pending += len(data)
        super().data_received(data)
        if self._waiting and (self.cycle is not self._cycle_seen or self.transport.is_closing()):
            self._stop_waiting()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            return  # a pipelined request is already running
        self._await_request(fresh=False)

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self._stop_waiting()
        self.guard.forget(self)
        super().connection_lost(exc)

    def send_400_response(self, msg: str) -> None:
        # h11 refused the bytes; answer in JSON like every other error.
        if self._pending > MAX_HEADER_BYTES:
            self.answer_and_close(431, HEADERS_TOO_LARGE)
        else:
            self.answer_and_close(400, "the request is not valid HTTP/1.1")

    # --- waiting for a request --------------------------------------------------------------

    def _await_request(self, *, fresh: bool) -> None:
        self._stop_waiting()
        self._waiting, self._pending, self._cycle_seen = True, 0, self.cycle
        self._idle = not fresh
        self.guard.waiting(self, fresh=fresh)
        self._set_timer(self.guard.keep_alive_s if self._idle else self.guard.header_timeout_s)

    def _set_timer(self, seconds: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self.loop.call_later(seconds, self._headers_late)

    def _stop_waiting(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._waiting:
            self._waiting = False
            self.guard.busy(self)

    def _headers_late(self) -> None:
        self._timer = None
        if not self._waiting:
            return
        if not self._pending:
            self.drop()  # an idle connection: close it quietly, as keep-alive timeouts do
            return
        timeout = self.guard.header_timeout_s
        self.answer_and_close(
            408,
            f"the request headers did not arrive within {timeout:g} s (header_timeout_s): "
            "send the request line and headers at once",
        )

    # --- closing ----------------------------------------------------------------------------

    def drop(self) -> None:
        """Close at once, with no answer (an idle connection, or one making room)."""
        self._stop_waiting()
        self.guard.forget(self)
        if self.raw is not None:
            self.raw.close()

    def answer_and_close(self, status: int, message: str) -> None:
        if self.raw is None or self.lingering or self.raw.is_closing():
            return
        self.raw.write(_raw_response(status, message))
        self._linger()

    def close_transport(self) -> None:
        """uvicorn's `transport.close()`: linger if the client still owes body bytes."""
        if self.raw is None or (self.lingering and not self._lost):
            return
        if not self._lost and self.conn.their_state is h11.SEND_BODY:
            self._linger()
        else:
            self.raw.close()

    def _linger(self) -> None:
        assert self.raw is not None
        self.lingering = True
        self._stop_waiting()
        self.guard.lingering(self)
        if self.raw.can_write_eof():
            self.raw.write_eof()  # the client sees the answer end; its writes still succeed
        self.raw.resume_reading()
        self.loop.call_later(LINGER_S, self.raw.close)


def guarded_protocol(
    max_connections: int, header_timeout_s: float, keep_alive_s: float
) -> type[asyncio.Protocol]:
    """The protocol class for `uvicorn.Config(http=...)`, with one guard for the server's
    connections."""
    guard = _ConnectionGuard(max_connections, header_timeout_s, keep_alive_s)
    return type("GuardedH11Protocol", (_GuardedProtocol,), {"guard": guard})
