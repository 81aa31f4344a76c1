"""What a batch will cost on a RunPod endpoint (before), and what a finished job cost (after).

RunPod's billing: a serverless worker is billed per second, rounded up, from the moment it
starts (its cold start included) until its idle timeout (5 s by default) after its last job.
Jobs run back to back on a warm worker inside one such span. A status answer reports only two
figures per job: `executionTime` (ms the handler ran) and `delayTime` (ms in the queue, which
contains any cold start but also plain waiting for a busy worker, billed to nobody's job).

What we count per job, and why:
- the job's cost is `executionTime` x the price, **not rounded**: rounding applies once per
  worker span, not per job, so rounding every job up would overstate a burst of 2 s jobs by
  about 25 % (half a second per job) while the real rounding costs under one second per
  worker per burst;
- the estimate predicts the same quantity (handler seconds), so estimate and actual compare
  like with like and the core can learn one from the other;
- left out of both, and said so in every estimate's basis: cold starts (RunPod reports no
  boot time; `delayTime` cannot tell boot from waiting), the idle tail (idle timeout x price
  per worker per burst) and the sub-second rounding per worker span.

Prices are the target's own `usd_per_second` when the config sets one, else the dated table's
price for its GPU.
"""

from __future__ import annotations

from collections.abc import Sequence

from csm_offload import CostEstimate, JobStatus, PriceTable, SpeechRequest, Target
from csm_offload.costmodel import NOT_INCLUDED

#: RunPod's default idle timeout: seconds a worker stays up (and billed) after its last job.
IDLE_TIMEOUT_S = 5.0


def price_of(target: Target, prices: PriceTable, default_gpu: str | None) -> tuple[float, str]:
    """The per-second price and where it came from. A GPU missing from the table is priced at
    the dearest GPU in it, so an unknown GPU never looks cheap."""
    if target.usd_per_second is not None:
        return target.usd_per_second, "the target's usd_per_second"
    gpu = target.gpu or default_gpu
    found = prices.price(gpu)
    if found is not None:
        return found, f"RunPod prices of {prices.date} for {gpu}"
    dearest = max(prices.usd_per_second, key=prices.usd_per_second.__getitem__)
    return (
        prices.usd_per_second[dearest],
        f"GPU {gpu!r} is not in RunPod's price table of {prices.date}: priced as {dearest} "
        "(set usd_per_second on the target)",
    )


def predicted_seconds(
    batch: Sequence[SpeechRequest], seconds_per_char: float, job_overhead_s: float
) -> float:
    """Worker seconds for one job: a fixed overhead plus time proportional to the text."""
    return job_overhead_s + seconds_per_char * sum(len(r.text) for r in batch)


def idle_tail_usd(price: float, workers: int = 1, idle_timeout_s: float = IDLE_TIMEOUT_S) -> float:
    """What the idle timeout costs after a burst: every worker that ran stays billed for it."""
    return workers * idle_timeout_s * price


def left_out(price: float, idle_timeout_s: float = IDLE_TIMEOUT_S) -> str:
    """What an estimate (and the recorded actual cost) of handler seconds does not count."""
    return (
        f"the idle tail after each burst (~{idle_timeout_s:g} s idle timeout x ${price:.6g}/s = "
        f"${idle_tail_usd(price, 1, idle_timeout_s):.4f} per worker per burst), "
        "cold starts (RunPod reports no boot time) and rounding up to whole seconds "
        "(under 1 s per worker per burst)"
    )


def estimate(
    target: Target,
    batch: Sequence[SpeechRequest],
    prices: PriceTable,
    default_gpu: str | None,
    seconds_per_char: float,
    job_overhead_s: float,
    idle_timeout_s: float = IDLE_TIMEOUT_S,
) -> CostEstimate:
    seconds = predicted_seconds(batch, seconds_per_char, job_overhead_s)
    price, source = price_of(target, prices, default_gpu)
    chars = sum(len(r.text) for r in batch)
    basis = (
        f"{seconds:.2f} handler s predicted ({chars} chars x {seconds_per_char} s/char "
        f"+ {job_overhead_s} s per job) x ${price}/s ({source})"
        f"{NOT_INCLUDED}{left_out(price, idle_timeout_s)}"
    )
    return CostEstimate(target=target.name, usd=seconds * price, gpu_seconds=seconds, basis=basis)


def actual_cost(
    target: Target, status: JobStatus, prices: PriceTable, default_gpu: str | None
) -> float | None:
    """USD a finished job cost: its `executionTime` x the target's price, unrounded (see the
    module's docstring); None if RunPod did not report an execution time. The runner records
    the same figure (`exec_ms / 1000 x target.price_per_second(info)`)."""
    if status.exec_ms is None:
        return None
    price, _source = price_of(target, prices, default_gpu)
    return status.exec_ms / 1000 * price
