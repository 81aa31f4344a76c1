"""The run's money: what is held against `max_usd` while jobs run, and what they cost.

Before a job is submitted its estimate (plus a margin) is held; when it finishes the hold is
replaced by the actual cost. The margin learns: a target whose jobs overran their estimates gets
larger holds, so the budget is never overshot by a job that overruns as much again. Pure
bookkeeping: the runner decides when to call it.
"""

from __future__ import annotations

import attrs

from .errors import BudgetExceeded


@attrs.frozen
class Hold:
    """Money held for one job: its estimate, and the amount held."""

    estimate: float
    amount: float


NOTHING = Hold(0.0, 0.0)


class Budget:
    def __init__(self, max_usd: float | None, margin: float = 0.25) -> None:
        self.max_usd = max_usd
        self.margin = margin
        #: Held for running jobs plus spent on finished ones.
        self.committed = 0.0
        self.stopped = False
        self._ratio: dict[str, float] = {}

    def reserve(self, target: str, estimate: float) -> Hold:
        """Hold an estimate before submitting, or raise `BudgetExceeded`. The hold is the
        estimate plus the margin, or the worst overrun this target has shown, if larger."""
        factor = max(1.0 + self.margin, self._ratio.get(target, 1.0))
        amount = estimate * factor
        limit = self.max_usd
        if limit is not None and self.committed + amount > limit + 1e-12:
            raise BudgetExceeded(
                f"the budget of ${limit:.4f} (run.max_usd / --max-usd) would be exceeded: "
                f"${self.committed:.4f} committed, next job ${amount:.4f}; "
                "raise the budget and rerun (finished work is kept)"
            )
        self.committed += amount
        return Hold(estimate, amount)

    def release(self, hold: Hold) -> None:
        """The job never ran (refused, failed to submit, lost): nothing was spent."""
        self.committed -= hold.amount

    def settle(self, target: str, hold: Hold, actual: float | None, completed: bool) -> None:
        """Replace a hold by the actual cost, and learn how far estimates fall short."""
        if actual is None:
            return
        self.committed += actual - hold.amount
        if hold.estimate > 0 and completed:
            # Twice the worst overrun seen: the next hold covers a job that overruns as much
            # again.
            ratio = 2 * actual / hold.estimate - 1
            self._ratio[target] = max(self._ratio.get(target, 1.0), ratio)
