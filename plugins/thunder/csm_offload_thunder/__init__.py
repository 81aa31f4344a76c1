"""csm-offload provider for a worker server (`csm-offload serve`) on a Thunder Compute VM."""

from __future__ import annotations

import attrs

from csm_offload import PriceTable, ProviderInfo, ProviderLimits, Secret, hookimpl

KIND = "thunder"
#: Thunder Compute on-demand VM prices (USD per hour), June 2026, converted to per second.
_HOURLY = {"A100 80GB": 0.78, "H100": 1.38}
PRICES = PriceTable(
    date="2026-06-01",
    usd_per_second={gpu: usd / 3600 for gpu, usd in _HOURLY.items()},
    source="https://www.thundercompute.com/pricing (A100 in prototyping mode)",
    billing="per minute while the VM exists (there is no stopped state)",
)


@attrs.frozen
class ThunderSettings:
    """A Thunder Compute VM running `csm-offload serve` on a forwarded port."""

    api_token: Secret
    instance_id: str | None = None
    port: int = 8000
    worker_token: Secret | None = None
    url: str | None = None


@hookimpl
def provider_info() -> ProviderInfo:
    return ProviderInfo(
        kind=KIND,
        description="csm-offload worker server on a Thunder Compute GPU VM",
        settings_type=ThunderSettings,
        prices=PRICES,
        limits=ProviderLimits(max_batch=16, max_text_chars=5_000),
        remote=True,
        quality="csm",
        default_gpu="A100 80GB",
    )
