"""When to poll a job: near its predicted finish, then backing off. Pure decisions.

The first poll of a job goes at the target's measured queue + seconds-per-character
prediction plus a learnt margin, so it usually finds the job done (one poll per job). A poll
that comes early re-plans from the prediction; a job running late against it is polled at 1 %
of the predicted time, growing x1.5; before anything is measured, the pilot job polls every 3 %
of its age and the others back off from `first_poll_s` with jitter. The runner sleeps.
"""

from __future__ import annotations

import random

import attrs

from .speed import SpeedBook


@attrs.frozen
class PollTimes:
    """The schedule's settings (the runner's, in seconds)."""

    first_poll_s: float = 1.0
    poll_min_s: float = 0.02
    poll_max_s: float = 10.0
    poll_margin_s: float = 0.03


class PollSchedule:
    def __init__(self, speeds: SpeedBook, times: PollTimes, rng: random.Random) -> None:
        self.speeds = speeds
        self.times = times
        self.rng = rng

    def first(self, target: str, chars: int) -> float:
        """Seconds after submission for the first poll."""
        predicted = self.speeds.of(target).predict(chars)
        if predicted is None:
            return self.times.first_poll_s
        return predicted + self.speeds.of(target).margin(self.times.poll_margin_s)

    def next(
        self, target: str, chars: int, started: float, polls: int, now: float, pilot: bool
    ) -> float:
        """After an early poll: the (re)predicted finish if it is still ahead, else back off."""
        times = self.times
        predicted = self.speeds.of(target).predict(chars)
        margin = self.speeds.of(target).margin(times.poll_margin_s)
        if predicted is not None and started + predicted + margin > now:
            return started + predicted + margin
        if predicted is None and pilot:
            # Late by at most 3 % of the job's time, in O(log) polls of this one job.
            return now + max(times.poll_min_s, 0.03 * (now - started))
        if predicted is None:
            # Blind: back off from the first guess, jittered so that many jobs' polls spread
            # out and the earliest finish is seen soon (it then re-plans everyone's polls).
            base = max(times.poll_min_s, 0.1 * times.first_poll_s)
            gap = base * (1.5 ** min(polls - 1, 20)) * self.rng.uniform(0.5, 1.5)
        else:
            # Late against the prediction: come back soon, then less and less often.
            base = max(times.poll_min_s, 0.01 * predicted)
            gap = base * (1.5 ** min(polls - 1, 20))
        return now + min(times.poll_max_s, gap)
