"""Target health, cached with a TTL and refreshed in the background.

The router reads only this cache: a health check is never made on the hot path of a request.
The first check of a run is made once, up front, with a short timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence
from typing import Any

import attrs
import httpx

from .errors import CsmOffloadError, RateLimited
from .model import Health
from .plugins import Provider
from .scrub import scrub
from .target import Target


def _scrubbed(health: Health) -> Health:
    detail = scrub(health.detail if isinstance(health.detail, str) else str(health.detail))
    return health if detail == health.detail else attrs.evolve(health, detail=detail)


class HealthCache:
    def __init__(self, ttl_s: float = 60.0, clock: Callable[[], float] = time.time) -> None:
        self.ttl_s = ttl_s
        self.clock = clock
        self._health: dict[str, Health] = {}
        self._task: asyncio.Task[None] | None = None

    def get(self, name: str) -> Health | None:
        return self._health.get(name)

    def set(self, name: str, health: Health) -> None:
        self._health[name] = _scrubbed(health)

    def is_stale(self, name: str) -> bool:
        health = self._health.get(name)
        return health is None or self.clock() - health.checked_at > self.ttl_s

    async def check(
        self, target: Target, provider: Provider, http: httpx.AsyncClient, timeout_s: float
    ) -> Health:
        """Ask the provider, store and return the answer; a failure is an unhealthy answer."""
        try:
            health = await asyncio.wait_for(provider.health(target, http), timeout_s)
            if not isinstance(health, Health):
                health = Health(ok=False, detail="health hook returned no Health")
        except RateLimited:
            # Back-pressure says nothing about the workers: the last answer stands.
            known = self._health.get(target.name)
            return known if known is not None else Health(ok=True, detail="rate limited")
        except TimeoutError:
            health = Health(ok=False, detail=f"health check took over {timeout_s:g} s")
        except (CsmOffloadError, httpx.HTTPError) as exc:
            health = Health(ok=False, detail=f"health check failed: {exc}")
        except Exception as exc:  # a plugin bug must not take the run down
            health = Health(ok=False, detail=f"health hook raised {type(exc).__name__}: {exc}")
        # A plugin may quote its own key in `detail`; what is stored (and so shown by the
        # router, `providers`, `estimate` and the plan) never does.
        health = _scrubbed(health)
        self._health[target.name] = health
        return health

    async def refresh(
        self,
        pairs: Sequence[tuple[Target, Provider]],
        http: httpx.AsyncClient,
        timeout_s: float = 10.0,
        only_stale: bool = False,
    ) -> None:
        todo = [(t, p) for t, p in pairs if not only_stale or self.is_stale(t.name)]
        await asyncio.gather(*(self.check(t, p, http, timeout_s) for t, p in todo))

    def start(self, pairs: Sequence[tuple[Target, Provider]], http: httpx.AsyncClient) -> None:
        """Refresh every target in the background, each time its entry is half a TTL old."""
        if self._task is None:
            self._task = asyncio.create_task(self._loop(list(pairs), http))

    async def _loop(self, pairs: list[tuple[Target, Provider]], http: Any) -> None:
        period = max(0.05, self.ttl_s / 2)
        while True:
            await asyncio.sleep(period)
            await self.refresh(pairs, http, timeout_s=min(10.0, period))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
