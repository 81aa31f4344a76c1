"""What a batch will cost on the Modal app (before), and what a finished job cost (after).

Modal bills a GPU container per second from the moment it starts until it stops: its cold
start (image, `@modal.enter` loading the weights) and its idle time (`scaledown_window` after
its last call) included, and CPU and memory on top of the GPU. The endpoint reports one figure
per job: `exec_ms`, the time the GPU method spent on the batch (measured inside it). So:

- the actual cost of a job is `exec_ms` x the per-second GPU price, and the estimate predicts
  the same quantity, so the core can learn one from the other;
- left out of both, and said so in every estimate's basis: cold starts, the idle tail
  (`scaledown_window_s` x the price, per container per burst) and CPU and memory.
"""

from __future__ import annotations

from collections.abc import Sequence

from csm_offload import CostEstimate, JobStatus, PriceTable, SpeechRequest, Target
from csm_offload.costmodel import NOT_INCLUDED

from .settings import ModalSettings


def price_of(target: Target, prices: PriceTable, default_gpu: str) -> tuple[float, str]:
    """The per-second price and where it came from; a GPU missing from the table is priced as
    the dearest one in it, so an unknown GPU never looks cheap."""
    if target.usd_per_second is not None:
        return target.usd_per_second, "the target's usd_per_second"
    gpu = target.gpu or default_gpu
    found = prices.price(gpu)
    if found is not None:
        return found, f"Modal prices of {prices.date} for {gpu}"
    dearest = max(prices.usd_per_second, key=prices.usd_per_second.__getitem__)
    return prices.usd_per_second[dearest], (
        f"GPU {gpu!r} is not in Modal's price table of {prices.date}: priced as {dearest} "
        "(set usd_per_second on the target)"
    )


def predicted_seconds(
    batch: Sequence[SpeechRequest], seconds_per_char: float, job_overhead_s: float
) -> float:
    return job_overhead_s + seconds_per_char * sum(len(r.text) for r in batch)


def left_out(price: float, scaledown_window_s: float) -> str:
    tail = scaledown_window_s * price
    return (
        f"cold starts (container start and weight loading, billed, not reported per job), "
        f"the idle tail after each burst (scaledown_window {scaledown_window_s:g} s x "
        f"${price:.6g}/s = ${tail:.4f} per container) and CPU and memory (billed on top)"
    )


def estimate(
    target: Target,
    batch: Sequence[SpeechRequest],
    prices: PriceTable,
    default_gpu: str,
    settings: ModalSettings,
) -> CostEstimate:
    per_char, overhead = settings.seconds_per_char, settings.job_overhead_s
    seconds = predicted_seconds(batch, per_char, overhead)
    price, source = price_of(target, prices, default_gpu)
    chars = sum(len(r.text) for r in batch)
    basis = (
        f"{seconds:.2f} GPU s predicted ({chars} chars x {per_char} s/char + {overhead} s "
        f"per job) x ${price}/s ({source}){NOT_INCLUDED}"
        f"{left_out(price, settings.scaledown_window_s)}"
    )
    return CostEstimate(target=target.name, usd=seconds * price, gpu_seconds=seconds, basis=basis)


def actual_cost(
    target: Target, status: JobStatus, prices: PriceTable, default_gpu: str
) -> float | None:
    """USD a finished job cost: its measured `exec_ms` x the target's price (None when the
    endpoint reported no time). The runner records the same figure."""
    if status.exec_ms is None:
        return None
    price, _source = price_of(target, prices, default_gpu)
    return status.exec_ms / 1000 * price
