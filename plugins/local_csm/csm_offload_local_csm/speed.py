"""How fast this machine generates: measured seconds of wall time per character of text.

The router prices and schedules by it (first poll near the predicted finish), so it is kept as
an exponentially weighted average that follows a machine warming up or slowing down.
"""

from __future__ import annotations

import threading

#: Weight of the newest measurement.
_ALPHA = 0.3


class SpeedMeter:
    """A thread-safe running estimate of seconds per character."""

    def __init__(self, prior: float | None = None) -> None:
        self._value = prior
        self._measured = False
        self._lock = threading.Lock()

    @property
    def seconds_per_char(self) -> float | None:
        return self._value

    @property
    def measured(self) -> bool:
        return self._measured

    def record(self, chars: int, seconds: float) -> None:
        if chars <= 0 or seconds < 0:
            return
        sample = seconds / chars
        with self._lock:
            if not self._measured or self._value is None:
                self._value = sample
            else:
                self._value = _ALPHA * sample + (1 - _ALPHA) * self._value
            self._measured = True
