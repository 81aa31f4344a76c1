"""Pacing: how fast one kind of call (submit or poll) may go to one target.

A 429 is back-pressure, not a fault: the target is fine but wants fewer requests. Each target
and call kind gets a `Pacer` that starts just under the provider's published limit (when there
is one) and learns from 429s: additive increase, multiplicative decrease, and a pause until
the server's `Retry-After`. Sends are spaced by a GCRA schedule (a token bucket without a
timer): at most `burst + rate x W` calls in any window of W seconds, which keeps a sliding
window limit of `requests` per `window_s` when `rate` and `burst` are 90 % and 10 % of it.

The pacer only decides; the runner sleeps.
"""

from __future__ import annotations

import collections
import math
import time
from collections.abc import Callable

from .target import RateLimit

#: Share of a published limit used as steady rate; the rest is the burst allowance.
HEADROOM = 0.9
#: A 429 halves the rate, at most once per this many seconds (a burst of 429s is one signal).
DECREASE_EVERY_S = 1.0
#: After a decrease the rate grows back by this share of its reference rate per second.
INCREASE_PER_S = 0.05
MIN_RATE = 0.2
#: Pause after a 429 without `Retry-After`: doubles with each 429 in a row, up to the cap.
FALLBACK_PAUSE_S = 0.5
MAX_PAUSE_S = 60.0


class Pacer:
    def __init__(
        self, limit: RateLimit | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.clock = clock
        self.ceiling = None if limit is None else limit.per_second * HEADROOM
        self.burst = 1.0 if limit is None else max(1.0, limit.requests * (1 - HEADROOM))
        #: Calls per second now; None: unlimited until the first 429.
        self.rate: float | None = self.ceiling
        self.paused_until = -math.inf
        self.limited = 0
        self._tat = -math.inf
        self._streak = 0
        self._reference = self.ceiling
        self._last_decrease = -math.inf
        self._last_growth = clock()
        self._recent: collections.deque[float] = collections.deque()

    def reserve(self) -> float:
        """Take the next send slot; return the seconds to wait before sending (0: now).

        A caller that waited should call `reserve` again if `paused` became true meanwhile."""
        now = self.clock()
        self._grow(now)
        start = max(now, self.paused_until)
        if self.rate is None:
            self._remember(start)
            return start - now
        tolerance = self.burst / self.rate
        start = max(start, self._tat - tolerance)
        self._tat = max(self._tat, start) + 1.0 / self.rate
        return start - now

    def paused(self) -> bool:
        return self.clock() < self.paused_until

    def ok(self) -> None:
        """A call went through: the next 429 starts a new streak."""
        self._streak = 0

    def rate_limited(self, retry_after: float | None) -> float:
        """Record a 429; return how long this caller should wait before trying again."""
        now = self.clock()
        self.limited += 1
        self._streak += 1
        if retry_after is None or not math.isfinite(retry_after) or retry_after < 0:
            pause = min(MAX_PAUSE_S, FALLBACK_PAUSE_S * 2 ** min(self._streak - 1, 10))
        else:
            pause = min(MAX_PAUSE_S * 10, retry_after)
        self.paused_until = max(self.paused_until, now + pause)
        if now - self._last_decrease >= DECREASE_EVERY_S:
            current = self.rate if self.rate is not None else self._measured(now)
            self.rate = max(MIN_RATE, 0.5 * current)
            self._reference = self.ceiling or current
            self._last_decrease = now
            self._last_growth = now
        # Slots handed out before this 429 would all land inside the pause: start afresh after.
        self._tat = self.paused_until
        return self.paused_until - now

    def _grow(self, now: float) -> None:
        if self.rate is None or self._reference is None:
            return
        elapsed = now - self._last_growth
        self._last_growth = now
        if now - self._last_decrease < DECREASE_EVERY_S:
            return
        grown = self.rate + INCREASE_PER_S * self._reference * elapsed
        self.rate = grown if self.ceiling is None else min(self.ceiling, grown)

    def _remember(self, when: float) -> None:
        self._recent.append(when)
        while self._recent and self._recent[0] < when - 1.0:
            self._recent.popleft()

    def _measured(self, now: float) -> float:
        """Sends in the last second: the rate that was too fast, when no limit was known."""
        return float(max(1, sum(1 for t in self._recent if t >= now - 1.0)))


class Pacers:
    """One pacer per (target, call kind), created on first use."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._pacers: dict[tuple[str, str], Pacer] = {}

    def of(self, target: str, call: str, limit: RateLimit | None) -> Pacer:
        key = (target, call)
        pacer = self._pacers.get(key)
        if pacer is None:
            pacer = self._pacers[key] = Pacer(limit, self.clock)
        return pacer

    def limited(self) -> dict[str, int]:
        """429s seen per target and call kind, for the run's summary."""
        return {f"{t} {c}": p.limited for (t, c), p in self._pacers.items() if p.limited}
