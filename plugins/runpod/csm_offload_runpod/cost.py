"""What a batch will cost on a RunPod endpoint (before), and what a finished job cost (after).

RunPod bills worker seconds. Before a job runs we predict them from the text length; after, the
status's `executionTime` is the measured figure. Both are priced at the target's own
`usd_per_second` when the config sets one, else at the dated table's price for its GPU.
"""

from __future__ import annotations

from collections.abc import Sequence

from csm_offload import CostEstimate, JobStatus, PriceTable, SpeechRequest, Target


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


def estimate(
    target: Target,
    batch: Sequence[SpeechRequest],
    prices: PriceTable,
    default_gpu: str | None,
    seconds_per_char: float,
    job_overhead_s: float,
) -> CostEstimate:
    seconds = predicted_seconds(batch, seconds_per_char, job_overhead_s)
    price, source = price_of(target, prices, default_gpu)
    chars = sum(len(r.text) for r in batch)
    basis = (
        f"{seconds:.2f} worker s predicted ({chars} chars x {seconds_per_char} s/char "
        f"+ {job_overhead_s} s per job) x ${price}/s ({source})"
    )
    return CostEstimate(target=target.name, usd=seconds * price, gpu_seconds=seconds, basis=basis)


def actual_cost(
    target: Target, status: JobStatus, prices: PriceTable, default_gpu: str | None
) -> float | None:
    """USD a finished job cost: its `executionTime` x the target's price; None if RunPod did
    not report an execution time."""
    if status.exec_ms is None:
        return None
    price, _source = price_of(target, prices, default_gpu)
    return status.exec_ms / 1000 * price
