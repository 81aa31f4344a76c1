"""From configured target blocks to `Target`s, each with the reason it can or cannot be used."""

from __future__ import annotations

import typing
from collections.abc import Mapping

import attrs

from . import scrub
from .config import Config, Path_, TargetSpec, structure_paths
from .plugins import Provider
from .secret import Secret
from .target import ProviderInfo, Target


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
    #: Every error in the block (`file:line: key: message`), scrubbed; `invalid` when any.
    errors: tuple[str, ...] = ()
    #: What it needs from outside the file to be usable: a variable set, a plugin installed.
    needs: tuple[str, ...] = ()

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


def _secret_fields(settings_type: type) -> frozenset[str]:
    """Settings fields typed as `Secret` (alone or optional)."""
    if not attrs.has(settings_type):
        return frozenset()
    found = set()
    for field in attrs.fields(settings_type):
        kind = field.type
        if isinstance(kind, str):  # `from __future__ import annotations`: names, not types
            if "Secret" in kind:
                found.add(field.name)
        elif kind is Secret or Secret in typing.get_args(kind):
            found.add(field.name)
    return frozenset(found)


def _register_secrets(spec: TargetSpec, info: ProviderInfo) -> None:
    """Give the scrubber what is bound for a secret field before validation can quote it."""
    for key in _secret_fields(info.settings_type):
        scrub.register_data(spec.settings.get(key))
        for value in spec.env_values.get(key, ()):
            scrub.register(value)


def _build(spec: TargetSpec, provider: Provider, config: Config) -> tuple[Target | None, list[str]]:
    """The target, or None and every error in the block (settings and common keys alike)."""
    info = provider.info
    _register_secrets(spec, info)
    path = ("providers", spec.name)
    settings, found = structure_paths(dict(spec.settings), info.settings_type)
    errors = [str(config.error((*path, *where), m)) for where, m in _not_about_unset(found, spec)]
    cloud = config.audio.cloud_gpu
    batching = cloud.batch_processing
    default_batch = batching.max_batch_size if batching.enabled else 1
    usd_per_second = spec.usd_per_second
    if spec.usd_per_hour is not None:
        usd_per_second = spec.usd_per_hour / 3600
    max_batch = min(spec.max_batch or default_batch, info.limits.max_batch)
    in_flight = spec.max_in_flight or (cloud.parallel_workers if info.remote else 1)
    if max_batch < 1 or in_flight < 1:
        errors.append(str(config.error(path, "max_batch and max_in_flight must be >= 1")))
    if errors or settings is None or spec.missing_env:
        return None, errors
    target = Target(
        name=spec.name,
        kind=spec.kind,
        settings=settings,
        gpu=spec.gpu or info.default_gpu,
        usd_per_second=usd_per_second,
        max_in_flight=in_flight,
        max_batch=max_batch,
        adaptive_in_flight=spec.max_in_flight is None and info.remote,
    )
    return target, []


def _not_about_unset(found: list[tuple[Path_, str]], spec: TargetSpec) -> list[tuple[Path_, str]]:
    """Drop the errors that only echo an unset variable: the key is reported as unset once.
    An error about the block as a whole may be a consequence too (a URL check that found no
    URL), so while anything is unset only errors that name another key are kept."""
    if not spec.missing_env:
        return found
    return [(where, m) for where, m in found if where and where[0] not in spec.missing_keys]


def needs_env_reason(missing: tuple[str, ...]) -> str:
    names = " and ".join(missing)
    them = "them" if len(missing) > 1 else "it"
    return f"needs {names}: set {them} in the environment or in a .env file"


def check_target(
    spec: TargetSpec,
    providers: Mapping[str, Provider],
    config: Config,
    load_errors: Mapping[str, str] | None = None,
) -> TargetCheck:
    provider = providers.get(spec.kind)
    errors = list(spec.errors)
    if not spec.enabled and not errors:
        return TargetCheck(
            spec.name, spec.kind, None, "disabled in the config", provider, spec=spec
        )
    target = None
    if provider is not None and spec.kind:
        target, settings_errors = _build(spec, provider, config)
        errors += settings_errors
    problems = [scrub.scrub(e) for e in errors]
    needs: list[str] = []
    failed = (load_errors or {}).get(spec.kind)
    if provider is None and failed is not None:
        needs.append(f"the plugin for kind {spec.kind!r} failed to load: {failed}")
    elif provider is None and spec.kind:
        needs.append(
            f"no plugin for kind {spec.kind!r} is loaded; "
            f"pip install csm-offload-{spec.kind.replace('_', '-')} "
            "(or see `csm-offload plugins` for load errors)"
        )
    if spec.missing_env:
        needs.append(needs_env_reason(spec.missing_env))
    if not problems and not needs and provider is not None and provider.missing:
        needs.append(f"plugin does not implement {', '.join(provider.missing)} yet")
    if target is not None and not problems and not needs and _unpriced(target, provider):
        needs.append(_unpriced_reason(target, provider))
    reasons = problems + needs
    if target is not None and not reasons:
        return TargetCheck(spec.name, spec.kind, target, "ok", provider, spec=spec)
    return TargetCheck(
        spec.name,
        spec.kind,
        None,
        "; ".join(reasons),
        provider,
        invalid=bool(problems),
        spec=spec,
        errors=tuple(problems),
        needs=tuple(needs),
    )


def _unpriced(target: Target, provider: Provider | None) -> bool:
    """A remote target with no price would look free to the router, which would pick it
    first: it is unusable until the config prices it."""
    return (
        provider is not None
        and provider.info.remote
        and target.price_per_second(provider.info) is None
    )


def _unpriced_reason(target: Target, provider: Provider | None) -> str:
    assert provider is not None
    table = provider.info.prices
    return (
        f"no price for GPU {target.gpu!r} in the {target.kind} price table of {table.date}: "
        "set usd_per_second or usd_per_hour on the target (or a gpu the table lists)"
    )


def check_targets(
    config: Config,
    providers: Mapping[str, Provider],
    load_errors: Mapping[str, str] | None = None,
) -> list[TargetCheck]:
    """Each configured target's check. `load_errors` (plugin name -> why it was skipped) turns
    "no plugin for this kind" into the reason its plugin did not load."""
    return [check_target(spec, providers, config, load_errors) for spec in config.providers]
