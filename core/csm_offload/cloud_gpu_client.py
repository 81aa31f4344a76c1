"""The original Whimperizer client's names on csm-offload's router, runner and journal.

Code written against the original `audio.cloud_gpu_client` runs here with one changed line:

    from csm_offload.cloud_gpu_client import CloudGPUManager, create_runpod_config, ...

    providers = [create_runpod_config(api_key, endpoint_url), create_thunder_config(token, url)]
    manager = CloudGPUManager(providers)          # list order is your preference, then price
    audio = manager.generate_speech(text="Hi.", speaker=0, context=segments, max_length_ms=10000)

Each `create_*_config` returns a `CloudGPUConfig` that is validated at once into the same
`Target` a `providers:` block of the YAML file gives (the same settings class, checks and
defaults), so the router, runner and journal treat it like one. Keys are `Secret`s from the
moment they are passed. `generate_speech` takes context segments shaped like CSM's
`Segment(speaker, text, audio)` whose audio is a torch tensor or an `Audio`, and returns a
(1, frames) float32 tensor at 24 kHz, as the original did, when torch is installed, an `Audio`
otherwise (`output=` chooses); torch is imported only to build a tensor. docs/migrating.md
walks through a migration line by line.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Literal

import attrs
import numpy as np

from . import manager as core
from . import scrub
from .audio import CSM_SAMPLE_RATE, Audio
from .config import TARGET_KEYS, Config, TargetSpec, build_config, load_config, structure_paths
from .errors import BudgetExceeded, CsmOffloadError, NoUsableTarget, ProviderError, UserError
from .model import Segment, SpeechRequest
from .plugins import Plugins, Provider, load_plugins
from .router import RouteOptions
from .runner import Progress, RunnerSettings, RunResult
from .secret import Secret
from .target import Target
from .targets import _secret_fields, check_target

__all__ = [
    "CloudGPUClient",
    "CloudGPUConfig",
    "CloudGPUManager",
    "GenerationFailed",
    "NoProviderUsable",
    "create_modal_config",
    "create_replicate_config",
    "create_runpod_config",
    "create_thunder_config",
]

Output = Literal["auto", "tensor", "audio"]
OUTPUTS: tuple[str, ...] = ("auto", "tensor", "audio")
#: The settings field each of the original's arguments fills, per provider kind.
FIELDS: Mapping[str, Mapping[str, str]] = {
    "runpod": {"api_key": "api_key", "endpoint_url": "endpoint_url"},
    "thunder": {"api_key": "worker_token", "endpoint_url": "url"},
    "modal": {"api_key": "key", "endpoint_url": "url"},
    "replicate": {"api_key": "api_token", "endpoint_url": "base_url", "model_id": "version"},
}
#: The original passed extra keyword arguments into its payload; these are the ones CSM has.
SAMPLING = ("temperature", "topk", "seed")
#: For `estimate_cost(text_length=<characters>)`: about five letters and a space per word.
CHARS_PER_WORD = 6


class GenerationFailed(ProviderError, RuntimeError):
    """Every provider failed. A `RuntimeError` too, as the original raised: scripts that catch
    that keep working."""


class NoProviderUsable(NoUsableTarget, RuntimeError):
    """No listed provider can take the work now (the message says why for each)."""


@functools.cache
def _plugins() -> Plugins:
    """The installed plugins, loaded once per process for every config made in code."""
    return load_plugins()


@functools.cache
def _code_config() -> Config:
    """The defaults a target block gets when no file sets `audio:` or `run:`."""
    return build_config({}, {}, "<code>", {})


def _secret(value: Any) -> Secret | None:
    if value is None or isinstance(value, Secret):
        return value
    if not isinstance(value, str):
        raise UserError(f"api_key must be a string, got {type(value).__name__}")
    return Secret(value)


def _kind(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise UserError("provider must name a provider kind, such as 'runpod' or 'thunder'")
    return value.strip().lower()


def _provider(kind: str) -> Provider:
    plugins = _plugins()
    provider = plugins.providers.get(kind)
    if provider is not None:
        return provider
    failed = plugins.load_errors().get(kind)
    if failed:
        raise UserError(f"the plugin for provider {kind!r} failed to load: {scrub.scrub(failed)}")
    installed = ", ".join(sorted(plugins.providers)) or "none"
    raise UserError(
        f"no plugin for provider {kind!r} is installed (installed: {installed}); "
        f"pip install csm-offload-{kind.replace('_', '-')}"
    )


@attrs.frozen
class CloudGPUConfig:
    """One provider, as the original's config named it, validated at once into a `Target`.

    `options` takes any other key of the provider's target block (`gpu`, `usd_per_hour`,
    `max_batch`, `use_runsync`, ...; see docs/providers.md). `region` and `timeout` are kept
    for `get_provider_info()`; `run.deadline_s` bounds a call."""

    provider: str = attrs.field(converter=_kind)
    api_key: Secret | None = attrs.field(default=None, converter=_secret)
    endpoint_url: str | None = None
    model_id: str | None = None
    region: str = "us-east-1"
    timeout: int = 300
    name: str | None = attrs.field(default=None, kw_only=True)
    options: Mapping[str, Any] = attrs.field(factory=dict, kw_only=True, converter=dict)
    spec: TargetSpec = attrs.field(init=False, repr=False, eq=False)
    target: Target = attrs.field(init=False, repr=False, eq=False)

    def __attrs_post_init__(self) -> None:
        provider = _provider(self.provider)
        secret_fields = _secret_fields(provider.info.settings_type)
        options = {
            k: Secret(v) if k in secret_fields and isinstance(v, str) else v
            for k, v in self.options.items()
        }
        object.__setattr__(self, "options", options)
        spec = self._spec(provider)
        check = check_target(spec, {self.provider: provider}, _code_config())
        if check.target is None:
            raise UserError(f"{self.label}: {scrub.scrub(check.reason)}")
        object.__setattr__(self, "spec", spec)
        object.__setattr__(self, "target", check.target)

    @property
    def label(self) -> str:
        return f"{self.provider} provider config"

    def _spec(self, provider: Provider) -> TargetSpec:
        common = {k: v for k, v in self.options.items() if k in TARGET_KEYS - {"kind"}}
        block = {**common, "name": self.name or self.provider, "kind": self.provider}
        spec, found = structure_paths({**block, "settings": {}, "missing_env": []}, TargetSpec)
        self._raise(found)
        settings = self._settings()
        _value, found = structure_paths(settings, provider.info.settings_type)
        self._raise(found)
        return attrs.evolve(spec, settings=settings)

    def _settings(self) -> dict[str, Any]:
        fields = FIELDS.get(self.provider, {})
        given = {
            "api_key": self.api_key,
            "endpoint_url": self.endpoint_url,
            "model_id": self.model_id,
        }
        settings: dict[str, Any] = {}
        for argument, value in given.items():
            if value is None:
                continue
            if argument not in fields:
                raise UserError(
                    f"{self.label}: {argument} has no meaning for {self.provider} targets; "
                    "give that provider's settings as keyword options (docs/providers.md)"
                )
            settings[fields[argument]] = value
        extra = {k: v for k, v in self.options.items() if k not in TARGET_KEYS}
        return {**settings, **extra}

    def _raise(self, found: Sequence[tuple[tuple[Any, ...], str]]) -> None:
        if not found:
            return
        arguments = {field: arg for arg, field in FIELDS.get(self.provider, {}).items()}
        problems = []
        for where, message in found:
            field = str(where[0]) if where else ""
            name = arguments.get(field, field)
            named = f"{name} ({field})" if field and name != field else name
            problems.append(f"{named}: {message}" if named else message)
        raise UserError(f"{self.label}: {scrub.scrub('; '.join(problems))}")


def create_runpod_config(
    api_key: str | Secret, endpoint_url: str, *, name: str | None = None, **options: Any
) -> CloudGPUConfig:
    """A RunPod serverless endpoint: the API key and `https://api.runpod.ai/v2/<id>` (the
    original's `.../v2/<id>/run` works as well)."""
    return CloudGPUConfig("runpod", api_key, endpoint_url, name=name, options=options)


def create_thunder_config(
    api_key: str | Secret | None, endpoint_url: str, *, name: str | None = None, **options: Any
) -> CloudGPUConfig:
    """`csm-offload serve` on a Thunder Compute VM: its token and its forwarded URL."""
    return CloudGPUConfig("thunder", api_key or None, endpoint_url, name=name, options=options)


def create_modal_config(
    api_key: str | Secret,
    function_url: str,
    *,
    secret: str | Secret | None = None,
    name: str | None = None,
    **options: Any,
) -> CloudGPUConfig:
    """The Modal app's web endpoint and its Proxy Auth Token: the id (`api_key`, wk-…) and
    the secret (ws-…, `secret=` or $MODAL_SECRET)."""
    secret = secret or os.environ.get("MODAL_SECRET")
    if not secret:
        raise UserError(
            "Modal's proxy auth needs the token's secret as well as its id: "
            "create_modal_config(key, url, secret=...) or set MODAL_SECRET"
        )
    options["secret"] = secret
    return CloudGPUConfig("modal", api_key, function_url, name=name, options=options)


def create_replicate_config(
    api_key: str | Secret,
    version: str | None = None,
    *,
    deployment: str | None = None,
    name: str | None = None,
    **options: Any,
) -> CloudGPUConfig:
    """A Replicate model version (`owner/name:<id>`) or deployment (`owner/name`)."""
    if deployment is not None:
        options["deployment"] = deployment
    return CloudGPUConfig("replicate", api_key, model_id=version, name=name, options=options)


# --- context in, audio out -------------------------------------------------------------------


def torch_installed() -> bool:
    """Whether torch can be imported, found without importing it."""
    try:
        return importlib.util.find_spec("torch") is not None
    except (ImportError, ValueError):
        return False


def deliver(audio: Audio, output: str) -> Any:
    """At 24 kHz: an `Audio`, or the original's (1, frames) float32 tensor."""
    if audio.sample_rate != CSM_SAMPLE_RATE:
        audio = audio.resample(CSM_SAMPLE_RATE)
    if output == "audio" or (output == "auto" and not torch_installed()):
        return audio
    try:
        return audio.to_torch().unsqueeze(0)
    except ImportError:
        raise UserError("output='tensor' needs torch: pip install torch, or use 'audio'") from None


def segments_from(context: Any) -> tuple[Segment, ...]:
    """CSM-style segments (objects or mappings with speaker, text, audio) as `Segment`s."""
    if context is None:
        return ()
    if isinstance(context, str | bytes | Mapping) or not isinstance(context, Iterable):
        raise UserError(
            f"context must be a list of segments (speaker, text, audio), "
            f"got {type(context).__name__}"
        )
    return tuple(_segment(item, index) for index, item in enumerate(context))


def _segment(item: Any, index: int) -> Segment:
    if isinstance(item, Segment):
        return item
    get = item.get if isinstance(item, Mapping) else functools.partial(getattr, item)
    speaker, text = get("speaker", None), get("text", None)
    if not isinstance(speaker, int) or isinstance(speaker, bool) or not isinstance(text, str):
        raise UserError(
            f"context[{index}]: a segment needs an int speaker and a str text, as CSM's "
            f"Segment(speaker, text, audio) has; got {type(item).__name__}"
        )
    rate = get("sample_rate", None) or CSM_SAMPLE_RATE
    return Segment(speaker, text, _context_audio(get("audio", None), rate, index))


def _context_audio(value: Any, rate: int, index: int) -> Audio | None:
    if value is None or isinstance(value, Audio):
        return value
    if hasattr(value, "detach") and hasattr(value, "numpy"):  # a tensor; torch not imported
        return Audio.from_torch(value, rate)
    if isinstance(value, np.ndarray) and np.squeeze(value).ndim <= 1:
        return Audio(np.atleast_1d(np.squeeze(value)), rate)
    raise UserError(
        f"context[{index}].audio: expected a mono torch tensor, a csm_offload.Audio, a NumPy "
        f"array or None; got {type(value).__name__}"
    )


def _sampling(options: Mapping[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(options) - set(SAMPLING))
    if unknown:
        raise UserError(
            f"generate_speech() has no option {', '.join(unknown)}; "
            f"it takes {', '.join(SAMPLING)} besides text, speaker, context and max_length_ms"
        )
    return dict(options)


def _check_call(text: Any, speaker: Any, max_length_ms: Any) -> None:
    if not isinstance(text, str):
        raise UserError(f"text must be a string, got {type(text).__name__}")
    if not isinstance(speaker, int) or isinstance(speaker, bool) or speaker < 0:
        raise UserError(f"speaker must be an integer id >= 0, got {speaker!r}")
    if not isinstance(max_length_ms, int) or isinstance(max_length_ms, bool) or max_length_ms < 1:
        raise UserError(f"max_length_ms must be a whole number of ms >= 1, got {max_length_ms!r}")


# --- the manager and the client --------------------------------------------------------------


def _listed(base: Config, items: Sequence[Any]) -> list[TargetSpec]:
    """The target blocks of the list, in its order: names from the file, configs from code."""
    known = {spec.name: spec for spec in base.providers}
    named = [item for item in items if isinstance(item, str)]
    taken = set(named)
    specs: list[TargetSpec] = []
    for index, item in enumerate(items):
        if isinstance(item, CloudGPUConfig):
            spec = _renamed(item.spec, taken)
        elif isinstance(item, str) and item in known:
            spec = known[item]
        elif isinstance(item, str):
            configured = ", ".join(sorted(known)) or "none"
            raise UserError(f"no target named {item} in the config; configured: {configured}")
        else:
            raise UserError(
                f"providers[{index}]: expected create_runpod_config(...) or another "
                f"CloudGPUConfig, or a target name; got {type(item).__name__}"
            )
        if any(s.name == spec.name for s in specs):
            raise UserError(f"target {spec.name} is listed twice; list each target once")
        taken.add(spec.name)
        specs.append(spec)
    if not specs:
        raise UserError("no providers given: list create_runpod_config(...) configs or names")
    return specs


def _renamed(spec: TargetSpec, taken: set[str]) -> TargetSpec:
    """A config made in code keeps its name unless an earlier one took it: runpod, runpod-2."""
    name, number = spec.name, 2
    while name in taken:
        name, number = f"{spec.name}-{number}", number + 1
    return spec if name == spec.name else attrs.evolve(spec, name=name)


def _check_output(output: str) -> str:
    if output not in OUTPUTS:
        raise UserError(f"output must be one of {', '.join(OUTPUTS)}, got {output!r}")
    return output


class CloudGPUManager(core.CloudGPUManager):
    """The original's manager: `CloudGPUManager([configs or target names])`. The list order
    is the preference (ranked before price, as `audio.cloud_gpu.provider` is); failing over,
    retries, the budget and the journal are the core's. Without a list: every configured
    target, as `csm_offload.manager.CloudGPUManager`."""

    def __init__(
        self,
        providers: Iterable[str | CloudGPUConfig] | str | CloudGPUConfig | None = None,
        *,
        config: Config | str | os.PathLike[str] | None = None,
        plugins: Plugins | None = None,
        journal: str | os.PathLike[str] | None = None,
        options: RouteOptions | None = None,
        max_usd: float | None = None,
        settings: RunnerSettings | None = None,
        output: Output = "auto",
    ) -> None:
        base = config if isinstance(config, Config) else load_config(config)
        self.output = _check_output(output)
        self.last_result: RunResult | None = None
        prefer: list[str] = []
        if providers is not None:
            items = [providers] if isinstance(providers, str | CloudGPUConfig) else list(providers)
            specs = _listed(base, items)
            base = attrs.evolve(base, providers=tuple(specs))
            prefer = [spec.name for spec in specs]
        super().__init__(
            None,
            config=base,
            plugins=plugins if plugins is not None else _plugins(),
            journal=journal,
            options=options,
            max_usd=max_usd,
            settings=settings,
            prefer=prefer,
        )

    async def synthesize(
        self,
        requests: Sequence[SpeechRequest],
        progress: Callable[[Progress], None] | None = None,
    ) -> RunResult:
        result = await super().synthesize(requests, progress)
        self.last_result = result
        return result

    def generate_speech(  # type: ignore[override]
        self,
        text: str,
        speaker: int = 0,
        context: Any = None,
        max_length_ms: int = 10_000,
        **kwargs: Any,
    ) -> Any:
        """One utterance through the router: a (1, frames) tensor at 24 kHz when torch is
        installed (as the original returned), else `Audio`; `output=` on the manager decides."""
        _check_call(text, speaker, max_length_ms)
        sampling = _sampling(kwargs)
        segments = segments_from(context)
        self.last_result = None
        try:
            audio = super().generate_speech(text, speaker, segments, max_length_ms, **sampling)
        except NoUsableTarget as exc:
            raise NoProviderUsable(scrub.scrub(str(exc))) from None
        except ProviderError as exc:
            raise self._failure(exc) from None
        finally:
            self.close()  # the journal's lock is held only during a call
        return deliver(audio, self.output)

    def _failure(self, exc: ProviderError) -> CsmOffloadError:
        if self.last_result is not None and self.last_result.budget_stopped:
            return BudgetExceeded(
                f"stopped by the budget (max_usd); ${self.last_result.cost_usd:.4f} spent in "
                "this call: raise max_usd (or run.max_usd) to go on"
            )
        return GenerationFailed(scrub.scrub(str(exc)), target=exc.target)

    def get_current_provider(self) -> str | None:
        """The kind of the target that made the last audio (before any: the first listed)."""
        kinds = {check.name: check.kind for check in self.checks}
        outcomes = self.last_result.outcomes.values() if self.last_result else ()
        made = [o.target for o in outcomes if o.ok and o.target in kinds]
        if made:
            return kinds[made[-1]]
        return self.checks[0].kind if self.checks else None


class CloudGPUClient:
    """The original's one-provider client: `CloudGPUClient(config).generate_speech(...)`."""

    def __init__(self, config: CloudGPUConfig | str, **manager_options: Any) -> None:
        self.config = config
        self.manager = CloudGPUManager([config], **manager_options)
        self.provider: str = self.manager.checks[0].kind

    def __repr__(self) -> str:
        return f"CloudGPUClient({self.config!r})"

    def generate_speech(
        self,
        text: str,
        speaker: int = 0,
        context: Any = None,
        max_length_ms: int = 10_000,
        **kwargs: Any,
    ) -> Any:
        return self.manager.generate_speech(text, speaker, context, max_length_ms, **kwargs)

    def get_provider_info(self) -> dict[str, Any]:
        check = self.manager.checks[0]
        made_in_code = isinstance(self.config, CloudGPUConfig)
        price = check.usd_per_second
        return {
            "provider": check.kind,
            "target": check.name,
            "endpoint_url": self.config.endpoint_url if made_in_code else None,
            "region": self.config.region if made_in_code else None,
            "model_id": self.config.model_id if made_in_code else None,
            "gpu": check.gpu,
            "usd_per_hour": None if price is None else round(price * 3600, 6),
        }

    def estimate_cost(
        self, text_length: int | str, estimated_generation_time_seconds: float
    ) -> dict[str, Any]:
        """The original's estimate: the target's dated price × the seconds given. For the
        price of a text from the journal's measurements use `csm-offload estimate`."""
        price = self.manager.checks[0].usd_per_second or 0.0
        seconds = max(float(estimated_generation_time_seconds), 0.0)
        if isinstance(text_length, str):
            words = len(text_length.split())
        else:
            words = round(text_length / CHARS_PER_WORD)
        cost = price * seconds
        return {
            "estimated_cost_usd": cost,
            "cost_per_word": cost / max(words, 1),
            "provider": self.provider,
            "estimated_time_seconds": seconds,
            "usd_per_second": price,
        }

    def close(self) -> None:
        self.manager.close()

    def __enter__(self) -> CloudGPUClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()
