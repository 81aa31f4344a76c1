"""How many jobs a target may have in flight: a limit that can change while jobs wait.

A target's cap follows what its endpoint reports (worker counts on RunPod's `/health`, the
queue size of a worker server) unless the user fixed `max_in_flight`. Jobs beyond the workers
wait in the provider's queue, where they cost nothing and let a worker start its next job the
moment it frees, and where a serverless endpoint's autoscaler sees them.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib

from .model import Health
from .target import Target

#: Jobs kept queued at the provider beyond its workers: half the workers, at least this many.
#: Enough that a freed worker starts its next job at once even when many finish together (the
#: client's answer to a burst of completions takes a moment); few enough that a job's queue
#: time stays short of its own run time.
MIN_HEADROOM = 2


def in_flight_for(target: Target, health: Health | None) -> int:
    """The cap for `target` given its latest health answer."""
    if not target.adaptive_in_flight or health is None:
        return target.max_in_flight
    cap = target.max_in_flight
    if health.workers:
        cap = max(cap, health.workers + max(MIN_HEADROOM, health.workers // 2))
    if health.capacity:
        cap = min(cap, health.capacity)  # more would only be answered 429
    return cap


class Capacity:
    """A semaphore whose limit can be raised or lowered; lowering never preempts a holder."""

    def __init__(self, limit: int) -> None:
        self.limit = max(1, limit)
        self.used = 0
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    async def acquire(self) -> None:
        if self.used < self.limit and not self._waiters:
            self.used += 1
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release()  # granted just as we were cancelled: give it back
            else:
                # `_wake` may already have dropped it (a cancelled waiter is skipped).
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
            raise

    def release(self) -> None:
        self.used -= 1
        self._wake()

    def resize(self, limit: int) -> None:
        self.limit = max(1, limit)
        self._wake()

    def _wake(self) -> None:
        while self._waiters and self.used < self.limit:
            waiter = self._waiters.popleft()
            if not waiter.done():
                self.used += 1
                waiter.set_result(None)

    async def __aenter__(self) -> Capacity:
        await self.acquire()
        return self

    async def __aexit__(self, *_exc: object) -> None:
        self.release()
