"""What a batch will cost on Replicate (before), and what a finished prediction cost (after).

Replicate bills per second of hardware time, at the price of the hardware the model runs on
(`gpu-l40s`, `gpu-h100`, ...; the target's `gpu` names it). Which seconds depends on the model:
- a public model: only the time it is active on your prediction; setup and idle are free;
- a private model, and a deployment: all the time its instances are online, setting up (cold
  boot: image pull, weight loading), idle (a few minutes after the last prediction, or for
  ever with min instances above 0) and active.

A prediction reports one figure, `metrics.predict_time` (seconds `run()` ran). The recorded
actual cost is that time the price, and the estimate predicts the same quantity, so the core
can learn one from the other; for private models and deployments the setup and idle time are
left out of both, and every estimate's basis says so.
"""

from __future__ import annotations

from collections.abc import Sequence

from csm_offload import CostEstimate, JobStatus, PriceTable, SpeechRequest, Target
from csm_offload.costmodel import NOT_INCLUDED

#: Replicate's public per-second prices of single-GPU hardware (replicate.com/pricing, read on
#: the date below; the H100 is $5.49/h). Multi-GPU SKUs buy nothing for CSM-1B.
PRICES = PriceTable(
    date="2026-11-24",
    usd_per_second={
        "gpu-t4": 0.000225,
        "gpu-a40-small": 0.000575,
        "gpu-a40-large": 0.000725,
        "gpu-l40s": 0.000975,
        "gpu-a100-large": 0.0014,
        "gpu-h100": 0.001525,
    },
    source="https://replicate.com/pricing",
    billing="per second: predict time (public models); instance time (private, deployments)",
)
DEFAULT_GPU = "gpu-l40s"
DEAREST = max(PRICES.usd_per_second, key=PRICES.usd_per_second.__getitem__)


def price_of(target: Target) -> tuple[float, str]:
    """The per-second price and where it came from; a GPU missing from the table is priced
    as the dearest one, so it never looks cheap."""
    if target.usd_per_second is not None:
        return target.usd_per_second, "the target's usd_per_second"
    gpu = target.gpu or DEFAULT_GPU
    found = PRICES.price(gpu)
    if found is not None:
        return found, f"Replicate prices of {PRICES.date} for {gpu}"
    return (
        PRICES.usd_per_second[DEAREST],
        f"hardware {gpu!r} is not in Replicate's price table of {PRICES.date}: priced as "
        f"{DEAREST} (set gpu to one of {', '.join(PRICES.usd_per_second)}, or usd_per_second)",
    )


def predicted_seconds(
    batch: Sequence[SpeechRequest], seconds_per_char: float, job_overhead_s: float
) -> float:
    """Predict seconds of one prediction: a fixed overhead plus time proportional to the text."""
    return job_overhead_s + seconds_per_char * sum(len(r.text) for r in batch)


def left_out(public_model: bool) -> str:
    """What an estimate (and the recorded actual cost) of predict time does not count."""
    if public_model:
        return ""
    return (
        f"{NOT_INCLUDED}the setup (cold boot) and idle time of your instances, which Replicate "
        "bills for private models and deployments at the same price per second (idle lasts a "
        "few minutes after the last prediction; with min instances above 0 it never ends)"
    )


def estimate(
    target: Target,
    batch: Sequence[SpeechRequest],
    seconds_per_char: float,
    job_overhead_s: float,
    public_model: bool,
) -> CostEstimate:
    seconds = predicted_seconds(batch, seconds_per_char, job_overhead_s)
    price, source = price_of(target)
    chars = sum(len(r.text) for r in batch)
    billed = "a public model: predict time is all Replicate bills" if public_model else ""
    basis = (
        f"{seconds:.2f} predict s ({chars} chars x {seconds_per_char} s/char + "
        f"{job_overhead_s} s per prediction) x ${price}/s ({source}"
        f"{'; ' + billed if billed else ''}){left_out(public_model)}"
    )
    return CostEstimate(target=target.name, usd=seconds * price, gpu_seconds=seconds, basis=basis)


def actual_cost(target: Target, status: JobStatus) -> float | None:
    """USD a finished prediction cost: its `predict_time` x the target's price (what the runner
    records too); None when Replicate reported no predict time."""
    if status.exec_ms is None:
        return None
    return status.exec_ms / 1000 * price_of(target)[0]
