"""csm-offload provider for the csm-offload worker deployed as a Modal app."""

from __future__ import annotations

import attrs

from csm_offload import PriceTable, ProviderInfo, ProviderLimits, Secret, hookimpl

KIND = "modal"
#: Modal per-second GPU prices, June 2026 (CPU and memory are billed on top and ignored here).
PRICES = PriceTable(
    date="2026-06-01",
    usd_per_second={"A100 80GB": 0.000694, "H100": 0.001097, "L4": 0.000222, "T4": 0.000164},
    source="https://modal.com/pricing",
    billing="per second of function time",
)


@attrs.frozen
class ModalSettings:
    """The web endpoint of the deployed Modal app, with proxy-auth credentials."""

    url: str
    key: Secret | None = None
    secret: Secret | None = None


@hookimpl
def provider_info() -> ProviderInfo:
    return ProviderInfo(
        kind=KIND,
        description="Modal web endpoint that spawns the csm-offload GPU function",
        settings_type=ModalSettings,
        prices=PRICES,
        # Modal web requests time out at 150 s: the job-queue pattern keeps each request short.
        limits=ProviderLimits(max_batch=16, max_text_chars=5_000, result_ttl_s=7 * 24 * 3600),
        remote=True,
        quality="csm",
        default_gpu="A100 80GB",
    )
