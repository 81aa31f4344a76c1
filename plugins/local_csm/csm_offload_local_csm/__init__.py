"""csm-offload provider that runs CSM in this process (transformers), and the worker server.

torch is imported lazily, so `csm-offload plugins` works where torch is not installed.
"""

from __future__ import annotations

import attrs

from csm_offload import PriceTable, ProviderInfo, ProviderLimits, hookimpl

KIND = "local_csm"
PRICES = PriceTable(
    date="2026-06-01",
    usd_per_second={},
    source="this machine: set usd_per_hour on the target to price its time",
    billing="your own hardware",
)


@attrs.frozen
class LocalCsmSettings:
    """Which weights to load and where to run them."""

    model: str = "sesame/csm-1b"
    device: str = "auto"
    dtype: str = "auto"


@hookimpl
def provider_info() -> ProviderInfo:
    return ProviderInfo(
        kind=KIND,
        description="CSM on this machine through transformers (CUDA, MPS or CPU)",
        settings_type=LocalCsmSettings,
        prices=PRICES,
        limits=ProviderLimits(max_batch=8, max_text_chars=5_000),
        remote=False,
        quality="csm",
        default_gpu=None,
    )
