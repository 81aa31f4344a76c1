"""From configured target blocks to `Target`s, each with the reason it can or cannot be used."""

from __future__ import annotations

from collections.abc import Mapping

import attrs

from .config import Config, TargetSpec, structure_at
from .errors import ConfigError
from .plugins import Provider
from .target import Target


@attrs.frozen
class TargetCheck:
    """One configured target: the `Target` if its settings validate, else why not."""

    name: str
    kind: str
    target: Target | None
    reason: str
    provider: Provider | None = None
    #: True when the block itself is wrong (a config error), not just unusable right now.
    invalid: bool = False
    spec: TargetSpec | None = None

    @property
    def gpu(self) -> str | None:
        if self.target is not None:
            return self.target.gpu
        default = self.provider.info.default_gpu if self.provider else None
        return (self.spec.gpu if self.spec else None) or default

    @property
    def usd_per_second(self) -> float | None:
        """The price this target would be charged at, usable or not (None when unknown)."""
        if self.provider is None:
            return None
        if self.target is not None:
            price = self.target.price_per_second(self.provider.info)
            return 0.0 if price is None and not self.provider.info.remote else price
        if self.spec is not None and self.spec.usd_per_second is not None:
            return self.spec.usd_per_second
        if self.spec is not None and self.spec.usd_per_hour is not None:
            return self.spec.usd_per_hour / 3600
        price = self.provider.info.prices.price(self.gpu)
        return 0.0 if price is None and not self.provider.info.remote else price

    @property
    def usable(self) -> bool:
        return self.target is not None

    @property
    def remote(self) -> bool | None:
        return None if self.provider is None else self.provider.info.remote


def _build(spec: TargetSpec, provider: Provider, config: Config) -> Target:
    info = provider.info
    settings = structure_at(
        dict(spec.settings), info.settings_type, ("providers", spec.name), config.error
    )
    cloud = config.audio.cloud_gpu
    batching = cloud.batch_processing
    default_batch = batching.max_batch_size if batching.enabled else 1
    usd_per_second = spec.usd_per_second
    if spec.usd_per_hour is not None:
        usd_per_second = spec.usd_per_hour / 3600
    max_batch = min(spec.max_batch or default_batch, info.limits.max_batch)
    in_flight = spec.max_in_flight or (cloud.parallel_workers if info.remote else 1)
    if max_batch < 1 or in_flight < 1:
        raise config.error(("providers", spec.name), "max_batch and max_in_flight must be >= 1")
    return Target(
        name=spec.name,
        kind=spec.kind,
        settings=settings,
        gpu=spec.gpu or info.default_gpu,
        usd_per_second=usd_per_second,
        max_in_flight=in_flight,
        max_batch=max_batch,
        adaptive_in_flight=spec.max_in_flight is None and info.remote,
    )


def check_target(
    spec: TargetSpec, providers: Mapping[str, Provider], config: Config
) -> TargetCheck:
    provider = providers.get(spec.kind)
    if not spec.enabled:
        return TargetCheck(spec.name, spec.kind, None, "disabled in the config", provider)
    if provider is None:
        reason = (
            f"no plugin for kind {spec.kind!r} is loaded; "
            f"pip install csm-offload-{spec.kind.replace('_', '-')} "
            "(or see `csm-offload plugins` for load errors)"
        )
        return TargetCheck(spec.name, spec.kind, None, reason)
    if spec.missing_env:
        names = " and ".join(spec.missing_env)
        them = "them" if len(spec.missing_env) > 1 else "it"
        reason = f"needs {names}: set {them} in the environment or in a .env file"
        return TargetCheck(spec.name, spec.kind, None, reason, provider)
    try:
        target = _build(spec, provider, config)
    except ConfigError as exc:
        return TargetCheck(spec.name, spec.kind, None, str(exc), provider, invalid=True)
    if provider.missing:
        reason = f"plugin does not implement {', '.join(provider.missing)} yet"
        return TargetCheck(spec.name, spec.kind, None, reason, provider)
    return TargetCheck(spec.name, spec.kind, target, "ok", provider)


def check_targets(config: Config, providers: Mapping[str, Provider]) -> list[TargetCheck]:
    return [check_target(spec, providers, config) for spec in config.providers]
