"""A circuit breaker per target: a target known to be down is not tried for every request.

closed: work flows; consecutive failures are counted. open: the target is skipped until its
cool-down ends (the cool-down doubles each time a probe fails). half-open: one probe job may go;
its success closes the breaker, its failure opens it again.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable

from .scrub import scrub


class BreakerState(enum.StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half-open"


class CircuitBreaker:
    def __init__(
        self,
        threshold: int = 5,
        cooldown_s: float = 5.0,
        max_cooldown_s: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.threshold = threshold
        self.base_cooldown_s = cooldown_s
        self.max_cooldown_s = max_cooldown_s
        self.clock = clock
        self.failures = 0
        self.cooldown_s = cooldown_s
        self.opened_at: float | None = None
        self.probing = False
        self.reason = ""
        #: Times it opened since the last success: the runner stops waiting for a target
        #: that keeps failing its probes.
        self.opens = 0

    @property
    def state(self) -> BreakerState:
        if self.opened_at is None:
            return BreakerState.CLOSED
        if self.clock() >= self.opened_at + self.cooldown_s:
            return BreakerState.HALF_OPEN
        return BreakerState.OPEN

    def available(self) -> bool:
        """Could work be sent now (without taking the half-open probe)?"""
        state = self.state
        return state is BreakerState.CLOSED or (
            state is BreakerState.HALF_OPEN and not self.probing
        )

    def reopens_in(self) -> float:
        """Seconds until an open breaker lets a probe through (0 when it already would)."""
        if self.opened_at is None:
            return 0.0
        return max(0.0, self.opened_at + self.cooldown_s - self.clock())

    def acquire(self) -> bool:
        """Ask to send one job. In half-open state only the first asker gets through."""
        state = self.state
        if state is BreakerState.CLOSED:
            return True
        if state is BreakerState.HALF_OPEN and not self.probing:
            self.probing = True
            return True
        return False

    def release(self) -> None:
        """Give back a probe that ended without a verdict (e.g. the run was cancelled)."""
        self.probing = False

    def success(self) -> None:
        self.failures = 0
        self.opened_at = None
        self.probing = False
        self.cooldown_s = self.base_cooldown_s
        self.reason = ""
        self.opens = 0

    def failure(self, reason: str) -> None:
        self.failures += 1
        self.reason = scrub(reason)
        if self.opened_at is not None and self.probing:
            # The probe failed: stay open, and wait longer before the next one.
            self.cooldown_s = min(self.max_cooldown_s, self.cooldown_s * 2)
            self._open()
        elif self.failures >= self.threshold:
            self._open()

    def trip(self, reason: str) -> None:
        """Open now: the provider said the target cannot take work (`Unavailable`)."""
        self.reason = scrub(reason)
        if self.opened_at is not None and self.probing:
            self.cooldown_s = min(self.max_cooldown_s, self.cooldown_s * 2)
        self._open()

    def _open(self) -> None:
        self.opened_at = self.clock()
        self.probing = False
        self.opens += 1

    def describe(self) -> str:
        state = self.state
        if state is BreakerState.CLOSED:
            return "closed"
        if state is BreakerState.OPEN:
            return f"circuit open for {self.reopens_in():.0f} s more after: {self.reason}"
        return f"circuit half-open (probing) after: {self.reason}"


class Breakers:
    """One breaker per target name, created on first use with shared settings."""

    def __init__(
        self,
        threshold: int = 5,
        cooldown_s: float = 5.0,
        max_cooldown_s: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._settings = (threshold, cooldown_s, max_cooldown_s, clock)
        self._breakers: dict[str, CircuitBreaker] = {}

    def of(self, name: str) -> CircuitBreaker:
        breaker = self._breakers.get(name)
        if breaker is None:
            threshold, cooldown, max_cooldown, clock = self._settings
            breaker = CircuitBreaker(threshold, cooldown, max_cooldown, clock)
            self._breakers[name] = breaker
        return breaker
