"""What a batch costs on a GPU box you own: the hourly figure you give it, over the job's time.

There is no price list for your own hardware: the target's `usd_per_hour` (or
`usd_per_second`) is what an hour of the box costs you (power, rent, depreciation), and the
router orders a fleet by it. The estimate predicts the job's time (`job_overhead_s +
seconds_per_char x characters`); the recorded actual cost is the job's measured `exec_ms` (the
server's own clock) x the same price, which the core computes.

A target without a price is priced at $0, and every basis says so in its "not included" part,
which the core keeps when it replaces the prediction by what it learnt from the journal: a $0
figure must never read as a measured one.
"""

from __future__ import annotations

from collections.abc import Sequence

from csm_offload import CostEstimate, SpeechRequest, Target
from csm_offload.costmodel import NOT_INCLUDED
from csm_offload.worker_jobs import predicted_seconds

from .settings import WorkerSettings

#: Said of every target that sets no price.
UNPRICED = (
    "what the box costs you: no usd_per_hour is set on the target, so its time is priced at $0 "
    "(set usd_per_hour to what an hour of this GPU box costs, to route a fleet by price)"
)
IDLE = "the box's idle time between jobs, its boot and its model loading"


def price_of(target: Target) -> float | None:
    """USD per second from the target's `usd_per_hour`/`usd_per_second`; None when unset."""
    return target.usd_per_second


def left_out(target: Target) -> str:
    return IDLE if price_of(target) is not None else UNPRICED


def estimate(
    target: Target, batch: Sequence[SpeechRequest], settings: WorkerSettings
) -> CostEstimate:
    seconds = predicted_seconds(batch, settings.seconds_per_char, settings.job_overhead_s)
    price = price_of(target)
    chars = sum(len(r.text) for r in batch)
    predicted = (
        f"{seconds:.2f} s of job time predicted ({chars} chars x {settings.seconds_per_char} "
        f"s/char + {settings.job_overhead_s} s per job)"
    )
    if price is None:
        head = f"$0, your own GPU box with no price set, over {predicted}"
    else:
        head = f"the box's ${price * 3600:.4g}/h (the target's usd_per_hour) over {predicted}"
    basis = f"{head}{NOT_INCLUDED}{left_out(target)}"
    usd = seconds * (price or 0.0)
    return CostEstimate(target=target.name, usd=usd, gpu_seconds=seconds, basis=basis)
