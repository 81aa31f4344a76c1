"""What a batch costs on a Thunder VM: its hourly price amortised over the job's time.

A Thunder VM bills per minute for as long as it exists, whether it generates speech or sits
idle; there is no per-job price. A job's share is the time it keeps the VM busy times the
hourly price / 3600. The estimate predicts that time (`job_overhead_s + seconds_per_char x
characters`); the recorded actual cost is the job's measured `exec_ms` (the worker server's
own clock) x the same price, which the core computes. Left out of both, and said so in every
basis: the VM's idle minutes between jobs, its boot and the model's load, and the rounding up
to whole minutes, which are paid whatever runs.
"""

from __future__ import annotations

from collections.abc import Sequence

from csm_offload import CostEstimate, PriceTable, SpeechRequest, Target, worker_jobs
from csm_offload.costmodel import NOT_INCLUDED

from .settings import ThunderSettings


def price_of(target: Target, prices: PriceTable, default_gpu: str | None) -> tuple[float, str]:
    """USD per second and where it came from. A GPU missing from the table is priced as the
    dearest one in it, so an unknown GPU never looks cheap."""
    if target.usd_per_second is not None:
        return target.usd_per_second, "the target's own price"
    gpu = target.gpu or default_gpu
    found = prices.price(gpu)
    if found is not None:
        return found, f"Thunder prices of {prices.date} for {gpu}"
    dearest = max(prices.usd_per_second, key=prices.usd_per_second.__getitem__)
    return (
        prices.usd_per_second[dearest],
        f"GPU {gpu!r} is not in Thunder's price table of {prices.date}: priced as {dearest} "
        "(set usd_per_hour on the target)",
    )


def predicted_seconds(batch: Sequence[SpeechRequest], settings: ThunderSettings) -> float:
    return worker_jobs.predicted_seconds(batch, settings.seconds_per_char, settings.job_overhead_s)


def left_out(per_hour: float) -> str:
    return (
        f"the VM's idle time: it bills per minute while it exists, working or idle "
        f"(${per_hour:.2f}/h), and its boot and model loading"
    )


def estimate(
    target: Target,
    batch: Sequence[SpeechRequest],
    settings: ThunderSettings,
    prices: PriceTable,
    default_gpu: str | None,
) -> CostEstimate:
    seconds = predicted_seconds(batch, settings)
    price, source = price_of(target, prices, default_gpu)
    per_hour = price * 3600
    chars = sum(len(r.text) for r in batch)
    basis = (
        f"the VM's ${per_hour:.2f}/h amortised over {seconds:.2f} s of job time predicted "
        f"({chars} chars x {settings.seconds_per_char} s/char + {settings.job_overhead_s} s "
        f"per job) ({source}){NOT_INCLUDED}{left_out(per_hour)}"
    )
    return CostEstimate(target=target.name, usd=seconds * price, gpu_seconds=seconds, basis=basis)
