"""csm-offload provider for RunPod serverless endpoints running the csm-offload handler."""

from __future__ import annotations

import attrs

from csm_offload import PriceTable, ProviderInfo, ProviderLimits, Secret, hookimpl

KIND = "runpod"
#: RunPod serverless per-second prices for flex workers, as published in June 2026.
PRICES = PriceTable(
    date="2026-06-01",
    usd_per_second={
        "L4": 0.00019,
        "A40": 0.00034,
        "L40S": 0.00053,
        "A100 80GB": 0.00076,
        "H100": 0.00116,
        "H200": 0.00155,
    },
    source="https://www.runpod.io/pricing (serverless, flex)",
    billing="per second of worker time",
)
LIMITS = ProviderLimits(
    max_batch=16,
    max_text_chars=5_000,
    max_request_bytes=10 * 1024 * 1024,  # /run; /runsync takes 20 MB
    max_response_bytes=20 * 1024 * 1024,
    result_ttl_s=30 * 60,
)


@attrs.frozen
class RunPodSettings:
    """A RunPod serverless endpoint. `endpoint_url` may be the seed's `.../v2/<id>/run` form."""

    api_key: Secret
    endpoint_url: str | None = None
    endpoint_id: str | None = None


@hookimpl
def provider_info() -> ProviderInfo:
    return ProviderInfo(
        kind=KIND,
        description="RunPod serverless endpoint running the csm-offload worker handler",
        settings_type=RunPodSettings,
        prices=PRICES,
        limits=LIMITS,
        remote=True,
        quality="csm",
        default_gpu="A100 80GB",
    )
