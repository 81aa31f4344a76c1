"""Targets (configured destinations) and what a provider plugin says about itself."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import attrs

Quality = Literal["csm", "draft"]


@attrs.frozen
class PriceTable:
    """Dated GPU prices in USD per second. Prices change: `date` says when they were read."""

    date: str
    usd_per_second: Mapping[str, float]
    source: str = ""
    #: How the provider rounds billed time, e.g. "per second" or "per minute".
    billing: str = "per second"

    def price(self, gpu: str | None) -> float | None:
        if gpu is None:
            return None
        return self.usd_per_second.get(gpu)


@attrs.frozen
class RateLimit:
    """A published request limit: at most `requests` in any `window_s` seconds."""

    requests: int
    window_s: float

    @property
    def per_second(self) -> float:
        return self.requests / self.window_s


@attrs.frozen
class ProviderLimits:
    """Hard limits of the provider's API, checked before anything is sent."""

    max_batch: int = 1
    max_text_chars: int = 5_000
    max_request_bytes: int | None = None
    max_response_bytes: int | None = None
    result_ttl_s: float | None = None
    #: Published request limits of the `submit` and `poll` calls, per target; the runner paces
    #: itself below them from the start and learns tighter ones from 429 answers.
    submit_rate: RateLimit | None = None
    poll_rate: RateLimit | None = None


@attrs.frozen
class ProviderInfo:
    """What `provider_info()` returns. `settings_type` is an attrs class that the config's
    target block (less the common keys) is validated into."""

    kind: str
    description: str
    settings_type: type
    prices: PriceTable
    limits: ProviderLimits = ProviderLimits()
    #: True when work leaves this machine (it is then kept by `--cloud-gpu`, dropped by
    #: `--local-audio`).
    remote: bool = True
    quality: Quality = "csm"
    default_gpu: str | None = None


@attrs.frozen
class Target:
    """One configured destination. Several targets may share a kind (two regions, two GPUs)."""

    name: str
    kind: str
    settings: Any = None
    gpu: str | None = None
    #: Overrides the provider's price table for this target.
    usd_per_second: float | None = None
    max_in_flight: int = 8
    max_batch: int = 1
    #: True when nobody set `max_in_flight`: the runner then follows what the endpoint reports
    #: (its workers, its queue size), starting from `max_in_flight`.
    adaptive_in_flight: bool = False

    def price_per_second(self, info: ProviderInfo) -> float | None:
        """This target's price: its own override, else the provider's table for its GPU."""
        if self.usd_per_second is not None:
            return self.usd_per_second
        return info.prices.price(self.gpu or info.default_gpu)
