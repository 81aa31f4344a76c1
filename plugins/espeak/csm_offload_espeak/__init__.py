"""csm-offload provider: an offline eSpeak NG draft voice, free, for previews and fallback."""

from __future__ import annotations

import attrs

from csm_offload import PriceTable, ProviderInfo, ProviderLimits, hookimpl

KIND = "espeak"
PRICES = PriceTable(
    date="2026-06-01", usd_per_second={}, source="runs offline on this machine", billing="free"
)


@attrs.frozen
class EspeakSettings:
    """eSpeak NG voice (language), speaking rate in words per minute, and base pitch 0-99."""

    voice: str = "en-us"
    rate: int = 175
    pitch: int = 50


@hookimpl
def provider_info() -> ProviderInfo:
    return ProviderInfo(
        kind=KIND,
        description="eSpeak NG draft voice (robotic, offline, free)",
        settings_type=EspeakSettings,
        prices=PRICES,
        limits=ProviderLimits(max_batch=8, max_text_chars=5_000),
        remote=False,
        quality="draft",
        default_gpu=None,
    )
