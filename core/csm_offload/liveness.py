"""When to stop waiting for one job: stuck in a queue, or on a target that stopped answering.

Pure decisions, tested without a loop; the runner acts on them. A queued job costs nothing,
so a job stuck in a queue is cancelled and resubmitted once the target is visibly doing other
work (jobs submitted after it have finished) and it has waited far longer than the target's
measured queue time. A target that refuses or resets every poll for max(`dead_min_s`,
`dead_factor` x the predicted job time) is treated as down: its jobs fail over, and a late
result from it is still kept.
"""

from __future__ import annotations

import attrs


@attrs.frozen
class Liveness:
    #: A job is never called stuck before this many seconds in the queue.
    stuck_min_s: float = 30.0
    #: ... nor before this many times the target's measured queue time and the job's own time.
    stuck_factor: float = 10.0
    #: ... nor before this many jobs submitted after it have finished.
    stuck_overtaken_by: int = 3
    dead_min_s: float = 30.0
    dead_factor: float = 2.0

    def stuck(
        self,
        queued_s: float,
        measured_queue_s: float | None,
        predicted_s: float | None,
        overtaken_by: int,
    ) -> bool:
        limit = max(
            self.stuck_min_s,
            self.stuck_factor * ((measured_queue_s or 0.0) + (predicted_s or 0.0)),
        )
        return overtaken_by >= self.stuck_overtaken_by and queued_s > limit

    def dead_after(self, predicted_s: float | None) -> float:
        return max(self.dead_min_s, self.dead_factor * (predicted_s or 0.0))


@attrs.define
class Overtaking:
    """Per target: how many jobs finished, and when the latest finisher was submitted, so a job
    can tell whether jobs submitted after it have finished while it still waits."""

    finished: list[float] = attrs.field(factory=list)

    def finish(self, submitted_at: float) -> None:
        self.finished.append(submitted_at)
        if len(self.finished) > 4096:
            del self.finished[:2048]  # only recent finishers matter

    def after(self, submitted_at: float) -> int:
        """Jobs submitted after `submitted_at` that have finished (of the recent ones)."""
        return sum(1 for t in self.finished if t > submitted_at)
