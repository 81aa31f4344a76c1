"""Cost truth: what a target's jobs really take, learnt from the journal.

A provider's `estimate_cost` is a prior: its settings' guess at worker seconds per character.
The journal holds what each completed job measured (the provider's `exec_ms`) and the
characters it carried, so after one run we know better. Per target we fit

    worker seconds of a job = a + b x characters      (a: per-job overhead, b: s per char)

by weighted least squares with a, b >= 0 over the target's last `MAX_JOBS` jobs, newer jobs
weighing more (a new GPU or a faster image shows within a few hundred jobs). The fitted line's
residuals sum to zero over the jobs it saw, so an identical run is predicted, in total, at what
the last one measured.

Everything here is pure except `LearnedCosts.from_path`, which reads a journal read-only.
"""

from __future__ import annotations

import math
import os
from collections import deque
from collections.abc import Iterable, Mapping, Sequence

import attrs

from .journal import FinishedJob, Journal, read_finished_jobs
from .model import CostEstimate, SpeechRequest
from .target import ProviderInfo, Target

#: Jobs per target the fit looks at: enough to average out noise, few enough to adapt.
MAX_JOBS = 500
#: A job this many jobs older than the newest weighs half as much: about 140 jobs' worth of
#: weight in all, plenty against noise, and 200 jobs after a change carry three quarters of it.
HALF_LIFE_JOBS = 100.0
#: Fewer jobs than this cannot separate the overhead from the per-character time.
MIN_JOBS_FOR_LINE = 3
#: Job lengths spread less than this fraction of their mean cannot either.
MIN_RELATIVE_SPREAD = 0.2
PRIOR_PREFIX = "prior (no jobs of this target measured yet): "
#: A basis may end with what its figure leaves out, after this marker; learnt estimates keep
#: it (they measure the same thing as the prior), and `estimate` prints it on a line of its own.
NOT_INCLUDED = "; not included: "


@attrs.frozen
class Sample:
    """One measured job: its characters and the worker seconds it ran."""

    chars: int
    seconds: float


@attrs.frozen
class Fit:
    """Worker seconds of a job = `overhead_s` + `seconds_per_char` x its characters."""

    overhead_s: float
    seconds_per_char: float
    jobs: int
    #: False when too few jobs (or lengths) were seen to separate the overhead: the line then
    #: goes through zero and the overhead is folded into the per-character time.
    separated: bool = True

    def seconds(self, jobs: int, chars: int) -> float:
        return self.overhead_s * jobs + self.seconds_per_char * chars

    def describe(self) -> str:
        line = f"{self.overhead_s:.3g} s/job + {self.seconds_per_char:.3g} s/char"
        if not self.separated:
            line += " (too few jobs or lengths yet to separate a per-job overhead)"
        return line


def recency_weights(count: int, half_life: float = HALF_LIFE_JOBS) -> list[float]:
    """Weights of `count` samples ordered newest first."""
    return [0.5 ** (age / half_life) for age in range(count)]


def _usable(samples: Iterable[Sample]) -> list[Sample]:
    # A job with no characters (its request rows missing) says nothing about speed.
    return [s for s in samples if s.chars > 0 and math.isfinite(s.seconds) and s.seconds >= 0.0][
        :MAX_JOBS
    ]


def _wsum(ws: Sequence[float], values: Iterable[float]) -> float:
    return sum(w * v for w, v in zip(ws, values, strict=True))


def _sse(
    xs: Sequence[float], ys: Sequence[float], ws: Sequence[float], ab: tuple[float, float]
) -> float:
    a, b = ab
    return _wsum(ws, ((y - a - b * x) ** 2 for x, y in zip(xs, ys, strict=True)))


def _line(xs: Sequence[float], ys: Sequence[float], ws: Sequence[float]) -> tuple[float, float]:
    """Weighted least squares of y = a + b x with a, b >= 0. With two unknowns the constrained
    optimum is either the free one (if feasible) or the better of the two one-sided fits."""
    mx, my = _wsum(ws, xs) / sum(ws), _wsum(ws, ys) / sum(ws)
    sxx = _wsum(ws, ((x - mx) ** 2 for x in xs))
    sxy = _wsum(ws, ((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)))
    b = sxy / sxx
    a = my - b * mx
    if a >= 0.0 and b >= 0.0:
        return a, b
    through_zero = (
        0.0,
        _wsum(ws, (x * y for x, y in zip(xs, ys, strict=True))) / _wsum(ws, (x * x for x in xs)),
    )
    flat = (my, 0.0)
    return min(through_zero, flat, key=lambda ab: _sse(xs, ys, ws, ab))


def fit_costs(samples: Sequence[Sample], half_life: float = HALF_LIFE_JOBS) -> Fit | None:
    """The line through `samples` (newest first); None when nothing usable was measured."""
    usable = _usable(samples)
    if not usable:
        return None
    xs = [float(s.chars) for s in usable]
    ys = [s.seconds for s in usable]
    ws = recency_weights(len(usable), half_life)
    mean = _wsum(ws, xs) / sum(ws)
    if len(usable) < MIN_JOBS_FOR_LINE or max(xs) - min(xs) < MIN_RELATIVE_SPREAD * mean:
        # A ratio of sums, not a regression through zero: it predicts the jobs seen, in total,
        # exactly, which is what "the next identical run" needs.
        return Fit(0.0, _wsum(ws, ys) / _wsum(ws, xs), len(usable), separated=False)
    a, b = _line(xs, ys, ws)
    return Fit(a, b, len(usable))


def split_basis(basis: str) -> tuple[str, str]:
    """A basis's figure and what it leaves out ("" when it says nothing is left out)."""
    head, _marker, left_out = basis.partition(NOT_INCLUDED)
    return head, left_out


def error_pct(estimated: float, actual: float) -> float | None:
    """How far an estimate was from what was paid, in percent of the actual; None when
    nothing was paid (no percentage of zero means anything)."""
    if actual == 0:
        return None
    return (estimated - actual) / actual * 100.0


def jobs_in(batch: Sequence[SpeechRequest], target: Target) -> int:
    """Jobs the runner makes of `batch` on `target` (at least one, as providers price it)."""
    return max(1, math.ceil(len(batch) / max(1, target.max_batch)))


class LearnedCosts:
    """What each target's jobs measured (per target name), and estimates corrected by it."""

    def __init__(
        self, samples: Mapping[str, Iterable[Sample]] | None = None, limit: int = MAX_JOBS
    ) -> None:
        self.limit = limit
        #: Newest first, as the fit wants them.
        self._samples: dict[str, deque[Sample]] = {
            name: deque(list(found)[:limit], maxlen=limit)
            for name, found in (samples or {}).items()
        }
        self._fits: dict[str, Fit | None] = {}
        self._pending: dict[str, int] = {}

    @classmethod
    def from_jobs(cls, jobs: Iterable[FinishedJob], limit: int = MAX_JOBS) -> LearnedCosts:
        """From journal rows, each target's newest first."""
        samples: dict[str, list[Sample]] = {}
        for job in jobs:
            samples.setdefault(job.target, []).append(Sample(job.chars, job.exec_ms / 1000))
        return cls(samples, limit)

    @classmethod
    def from_journal(cls, journal: Journal, limit: int = MAX_JOBS) -> LearnedCosts:
        return cls.from_jobs(journal.finished_jobs(limit=limit), limit)

    @classmethod
    def from_path(cls, path: str | os.PathLike[str], limit: int = MAX_JOBS) -> LearnedCosts:
        """From the journal at `path`, read-only; nothing learnt when there is none yet."""
        return cls.from_jobs(read_finished_jobs(path, limit=limit), limit)

    def observe(self, target: str, chars: int, exec_ms: int | None) -> None:
        """One more completed job, so a long-lived router learns during its own runs."""
        if exec_ms is None:
            return
        found = self._samples.setdefault(target, deque(maxlen=self.limit))
        found.appendleft(Sample(chars, exec_ms / 1000))
        # Refit after every 5 % of new samples, not after each one: a fit walks up to
        # `limit` samples, and a busy run observes hundreds of jobs a second.
        pending = self._pending.get(target, 0) + 1
        if pending >= max(1, len(found) // 20):
            self._fits.pop(target, None)
            pending = 0
        self._pending[target] = pending

    def fit(self, target: str) -> Fit | None:
        if target not in self._fits:
            self._fits[target] = fit_costs(list(self._samples.get(target, ())))
        return self._fits[target]

    def apply(
        self,
        prior: CostEstimate,
        target: Target,
        info: ProviderInfo,
        batch: Sequence[SpeechRequest],
    ) -> CostEstimate:
        """The provider's estimate for `batch`, replaced by the learnt one where this target
        has measured jobs; kept (and labelled a prior) where it has none. A target whose
        price the core cannot see keeps the provider's figure as it is."""
        price = target.price_per_second(info)
        if price is None:
            return prior
        found = self.fit(target.name)
        if found is None:
            return attrs.evolve(prior, basis=PRIOR_PREFIX + prior.basis)
        chars = sum(len(r.text) for r in batch)
        jobs = jobs_in(batch, target)
        seconds = found.seconds(jobs, chars)
        basis = (
            f"learnt from {found.jobs} jobs in the journal: {found.describe()}; "
            f"{jobs} job(s), {chars} chars -> {seconds:.2f} worker s x ${price:.6g}/s"
        )
        _head, left_out = split_basis(prior.basis)
        if left_out:
            basis += NOT_INCLUDED + left_out
        return CostEstimate(
            target=prior.target, usd=seconds * price, gpu_seconds=seconds, basis=basis
        )
