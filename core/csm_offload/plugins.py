"""Loading provider plugins from entry points, in isolation, and calling them per kind."""

from __future__ import annotations

import inspect
import os
from collections.abc import Iterable
from importlib.metadata import EntryPoint, entry_points
from typing import Any

import attrs
import pluggy

from . import hookspecs
from .config import TARGET_KEYS
from .errors import PluginError
from .target import ProviderInfo

GROUP = "csm_offload"
PROVIDER_HOOKS = ("estimate_cost", "health", "submit", "poll", "decode", "cancel")
_ASYNC_SPECS = frozenset(
    name for name, fn in vars(hookspecs).items() if inspect.iscoroutinefunction(fn)
)


@attrs.frozen
class LoadError:
    """A plugin that was reported and skipped."""

    name: str
    source: str
    error: str


@attrs.frozen
class Provider:
    """A loaded provider plugin and its callers, which reach only this plugin's hooks."""

    kind: str
    info: ProviderInfo
    plugin: Any
    implements: frozenset[str]
    callers: dict[str, Any] = attrs.field(repr=False)

    @property
    def missing(self) -> tuple[str, ...]:
        """Provider hooks this plugin does not implement (it cannot run jobs until it does)."""
        return tuple(h for h in PROVIDER_HOOKS if h not in self.implements)

    def estimate_cost(self, target: Any, batch: Any) -> Any:
        return self.callers["estimate_cost"](target=target, batch=batch)

    async def health(self, target: Any, http: Any) -> Any:
        return await self.callers["health"](target=target, http=http)

    async def submit(self, target: Any, batch: Any, http: Any) -> Any:
        return await self.callers["submit"](target=target, batch=batch, http=http)

    async def poll(self, target: Any, handle: Any, http: Any) -> Any:
        return await self.callers["poll"](target=target, handle=handle, http=http)

    async def decode(self, target: Any, status: Any, http: Any) -> Any:
        return await self.callers["decode"](target=target, status=status, http=http)

    async def cancel(self, target: Any, handle: Any, http: Any) -> Any:
        return await self.callers["cancel"](target=target, handle=handle, http=http)


def _check_sync_async(plugin: Any, pm: pluggy.PluginManager) -> None:
    for impl in pm.get_hookcallers(plugin) or []:
        for hookimpl in impl.get_hookimpls():
            if hookimpl.plugin is not plugin or hookimpl.wrapper or hookimpl.hookwrapper:
                continue
            is_async = inspect.iscoroutinefunction(hookimpl.function)
            if impl.name in _ASYNC_SPECS and not is_async:
                raise PluginError(f"hook {impl.name} must be `async def` (the spec is async)")
            if impl.name not in _ASYNC_SPECS and is_async:
                raise PluginError(f"hook {impl.name} must be a plain `def` (the spec is sync)")


def _check_settings_names(info: ProviderInfo) -> None:
    """A settings field named like a core target key never gets its value: the config hands
    that key to the core (`gpu: A100` sets the target's GPU). Refuse it at load, naming it."""
    settings_type = info.settings_type
    if not attrs.has(settings_type):
        return
    names = {f.name for f in attrs.fields(settings_type)}
    names |= {f.alias for f in attrs.fields(settings_type) if f.alias}
    shadowed = sorted(names & TARGET_KEYS)
    if shadowed:
        fields = ", ".join(f"`{name}`" for name in shadowed)
        raise PluginError(
            f"settings field {fields} of {settings_type.__name__} has the name of a core "
            "target key, so the config would never pass it to the plugin; rename the field "
            f"in the plugin (e.g. `{info.kind}_{shadowed[0]}`); hooks read the core's own "
            "value from the Target they are given"
        )


class Plugins:
    """The plugin manager and what it loaded. Build one with `load_plugins()`."""

    def __init__(self) -> None:
        self.pm = pluggy.PluginManager(GROUP)
        self.pm.add_hookspecs(hookspecs)
        self.errors: list[LoadError] = []
        self.providers: dict[str, Provider] = {}
        self.sources: dict[str, str] = {}

    def register(self, plugin: Any, name: str, source: str = "registered") -> bool:
        """Register and validate one plugin; on failure report it, unregister it, return False."""
        try:
            self.pm.register(plugin, name=name)
        except Exception as exc:
            self.errors.append(LoadError(name, source, _describe(exc)))
            return False
        try:
            self.pm.check_pending()
            _check_sync_async(plugin, self.pm)
            self.sources[name] = source
            self._rebuild()
        except Exception as exc:
            self.pm.unregister(plugin)
            self.sources.pop(name, None)
            self._rebuild()
            self.errors.append(LoadError(name, source, _describe(exc)))
            return False
        return True

    def unregister(self, name: str) -> None:
        plugin = self.pm.get_plugin(name)
        if plugin is not None:
            self.pm.unregister(plugin)
        self.sources.pop(name, None)
        self._rebuild()

    def load_entry_points(self, allowed: Iterable[str] | None = None) -> None:
        only = set(allowed) if allowed is not None else None
        for ep in entry_points(group=GROUP):
            if only is not None and ep.name not in only:
                continue
            if self.pm.get_plugin(ep.name) is not None:
                continue
            self._load_one(ep)

    def _load_one(self, ep: EntryPoint) -> None:
        source = f"{ep.dist.name} {ep.dist.version}" if ep.dist else ep.value
        try:
            module = ep.load()
        except Exception as exc:
            self.errors.append(LoadError(ep.name, source, f"import failed: {_describe(exc)}"))
            return
        if self.register(module, ep.name, source):
            kind = next((p.kind for p in self.providers.values() if p.plugin is module), ep.name)
            if kind != ep.name:
                self.unregister(ep.name)
                message = f"entry point is named {ep.name!r} but provider_info says {kind!r}"
                self.errors.append(LoadError(ep.name, source, message))

    def _rebuild(self) -> None:
        """Build the per-kind callers once, so a call reaches only the owning plugin."""
        infos: dict[str, tuple[Any, ProviderInfo]] = {}
        for plugin in self.pm.get_plugins():
            impl = getattr(plugin, "provider_info", None)
            if impl is None or not hasattr(impl, "csm_offload_impl"):
                continue
            info = impl()
            if not isinstance(info, ProviderInfo):
                name = self.pm.get_name(plugin)
                raise PluginError(f"{name}: provider_info() must return ProviderInfo")
            if info.kind in infos:
                raise PluginError(f"two plugins claim provider kind {info.kind!r}")
            _check_settings_names(info)
            infos[info.kind] = (plugin, info)
        providers = {}
        for kind, (plugin, info) in infos.items():
            others = [p for k, (p, _) in infos.items() if k != kind]
            callers = {h: self.pm.subset_hook_caller(h, others) for h in PROVIDER_HOOKS}
            hooked = {caller.name for caller in self.pm.get_hookcallers(plugin) or []}
            implements = frozenset(hooked.intersection(PROVIDER_HOOKS))
            providers[kind] = Provider(kind, info, plugin, implements, callers)
        self.providers = providers

    def load_errors(self) -> dict[str, str]:
        """Why each skipped plugin was skipped, by name (the entry-point name is its kind)."""
        return {error.name: error.error for error in self.errors}

    def plugin_rows(self) -> list[dict[str, Any]]:
        """One row per loaded plugin, for `csm-offload plugins`."""
        rows = []
        for plugin in self.pm.get_plugins():
            name = self.pm.get_name(plugin)
            if name == "builtin":
                continue
            hooks = sorted(c.name for c in self.pm.get_hookcallers(plugin) or [])
            kind = next((p.kind for p in self.providers.values() if p.plugin is plugin), None)
            rows.append(
                {
                    "name": name,
                    "source": self.sources.get(name, ""),
                    "kind": kind,
                    "hooks": hooks,
                }
            )
        return sorted(rows, key=lambda row: row["name"])


def _describe(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text if isinstance(exc, PluginError) else f"{type(exc).__name__}: {text}"


def load_plugins(allowed: Iterable[str] | None = None) -> Plugins:
    """Load every installed plugin (or those named in `CSM_OFFLOAD_LOAD_PLUGINS`)."""
    plugins = Plugins()
    if allowed is None:
        env = os.environ.get("CSM_OFFLOAD_LOAD_PLUGINS")
        if env is not None:
            allowed = [name.strip() for name in env.split(",") if name.strip()]
    plugins.load_entry_points(allowed)
    return plugins
