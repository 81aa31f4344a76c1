"""What each target has measured: seconds of work per character and seconds in its queue.

These drive adaptive polling (the first poll is scheduled near the predicted finish) and break
cost ties in the router (the faster of two equally priced targets wins).
"""

from __future__ import annotations

import asyncio

import attrs

#: Weight of a new observation in the moving averages.
_ALPHA = 0.3


def _ewma(old: float | None, new: float) -> float:
    return new if old is None else old + _ALPHA * (new - old)


@attrs.define
class TargetSpeed:
    seconds_per_char: float | None = None
    queue_s: float | None = None
    samples: int = 0
    #: Seconds a first poll goes after the predicted finish. It adapts: a first poll that
    #: finds the job done shrinks it a little, one that comes too early grows it, so that about
    #: one first poll in thirty is early (each costs one extra request and a short wait).
    margin_s: float | None = None
    #: A job is measuring this target for the others (see the runner's pilot polls).
    piloted: bool = False
    #: Set at the first measurement: jobs that were waiting blind re-plan their next poll.
    measured: asyncio.Event = attrs.field(factory=asyncio.Event)

    def observe(self, chars: int, exec_s: float, queue_s: float | None) -> None:
        if chars > 0 and exec_s >= 0:
            self.seconds_per_char = _ewma(self.seconds_per_char, exec_s / chars)
            self.samples += 1
            self.measured.set()
        if queue_s is not None and queue_s >= 0:
            self.queue_s = _ewma(self.queue_s, queue_s)

    def margin(self, default: float) -> float:
        return default if self.margin_s is None else self.margin_s

    def first_poll_was(self, done: bool, default: float, cap: float) -> None:
        margin = self.margin(default)
        # Small additive steps: many jobs report at once, so multiplicative steps would swing.
        # Thirty times larger up than down settles near one early poll in thirty: an early poll
        # costs a round trip, which is long exactly when many jobs finish together.
        if done:
            self.margin_s = max(0.0, margin - 0.0003)
        else:
            self.margin_s = min(cap, margin + 0.009)

    def predict(self, chars: int) -> float | None:
        """Predicted seconds from submission to completion, or None before any measurement."""
        if self.seconds_per_char is None:
            return None
        return (self.queue_s or 0.0) + self.seconds_per_char * chars


class SpeedBook:
    """Measurements of every target in this process, keyed by target name."""

    def __init__(self) -> None:
        self._speeds: dict[str, TargetSpeed] = {}

    def of(self, target: str) -> TargetSpeed:
        return self._speeds.setdefault(target, TargetSpeed())

    def latency_key(self, target: str, chars: int) -> float:
        """A sort key: predicted seconds, unmeasured targets after measured ones."""
        predicted = self.of(target).predict(chars)
        return float("inf") if predicted is None else predicted
