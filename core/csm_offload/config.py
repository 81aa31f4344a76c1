"""Configuration: a YAML file (the seed's `audio.cloud_gpu` block plus `providers:` and `run:`),
`${ENV}` interpolation with a `.env` file, and errors that name the file, the line and the key.

YAML is composed safely into nodes and walked by hand, so that every value keeps its line, and
so that aliases are counted as they expand: an alias bomb is refused after a bounded number of
nodes instead of filling memory.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import attrs
import cattrs
import yaml
from cattrs.errors import ClassValidationError, IterableValidationError
from dotenv import dotenv_values

from . import wire
from .errors import ConfigError
from .secret import Secret

MAX_CONFIG_BYTES = 1024 * 1024
MAX_NODES = 20_000
MAX_DEPTH = 40
CONFIG_ENV = "CSM_OFFLOAD_CONFIG"
DEFAULT_FILE = "csm-offload.yaml"
#: Keys every target block may have; the rest are the provider's own settings.
TARGET_KEYS = frozenset(
    {"kind", "enabled", "gpu", "usd_per_second", "usd_per_hour", "max_in_flight", "max_batch"}
)
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")

Path_ = tuple[str | int, ...]


@attrs.frozen
class BatchProcessing:
    enabled: bool = True
    max_batch_size: int = 5


@attrs.frozen
class CloudGpu:
    """The seed's block, accepted as it is."""

    enabled: bool = True
    provider: str | None = None
    fallback_to_local: bool = True
    max_retries: int = 3
    batch_processing: BatchProcessing = BatchProcessing()
    parallel_workers: int = 3


@attrs.frozen
class AudioSection:
    cloud_gpu: CloudGpu = CloudGpu()


@attrs.frozen
class RunSection:
    """How a run behaves: where the journal lives, the spending cap, health caching."""

    journal: str = ".csm-offload/journal.sqlite3"
    max_usd: float | None = None
    health_ttl_s: float = 60.0
    deadline_s: float = 3600.0


@attrs.frozen
class TargetSpec:
    """A target block as written: common keys parsed, provider settings still raw."""

    name: str
    kind: str
    enabled: bool = True
    gpu: str | None = None
    usd_per_second: float | None = None
    usd_per_hour: float | None = None
    max_in_flight: int | None = None
    max_batch: int | None = None
    settings: Mapping[str, Any] = attrs.field(factory=dict, repr=False)
    #: Environment variables the block refers to that are not set.
    missing_env: tuple[str, ...] = ()
    line: int = 0


@attrs.frozen
class Config:
    audio: AudioSection
    run: RunSection
    providers: tuple[TargetSpec, ...]
    source: str
    #: Line of each key path, for errors found later (e.g. provider settings).
    lines: Mapping[Path_, int] = attrs.field(factory=dict, repr=False, eq=False)

    def error(self, path: Path_, message: str) -> ConfigError:
        return config_error(self.source, line_of(self.lines, path), path, message)


def line_of(lines: Mapping[Path_, int], path: Path_) -> int:
    """The line of `path`, or of its nearest parent that has one (0 when unknown)."""
    while path and path not in lines:
        path = path[:-1]
    return lines.get(path, 0)


def config_error(source: str, line: int, path: Path_, message: str) -> ConfigError:
    where = f"{source}:{line}" if line else source
    key = wire.json_path(path) if path else "(top level)"
    return ConfigError(f"{where}: {key}: {message}")


# --- YAML, with lines and bounds -------------------------------------------------------------


class _Walker:
    def __init__(self, source: str) -> None:
        self.source = source
        self.lines: dict[Path_, int] = {}
        self.visited = 0
        self._scalar = yaml.SafeLoader("")

    def fail(self, node: yaml.Node, path: Path_, message: str) -> ConfigError:
        return config_error(self.source, node.start_mark.line + 1, path, message)

    def value(self, node: yaml.Node, path: Path_) -> Any:
        self.visited += 1
        if self.visited > MAX_NODES:
            raise self.fail(
                node,
                path,
                f"over {MAX_NODES} values; YAML aliases that expand "
                "this far are refused (an alias bomb?)",
            )
        if len(path) > MAX_DEPTH:
            raise self.fail(node, path, f"nested deeper than {MAX_DEPTH} levels")
        self.lines.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            return self.mapping(node, path)
        if isinstance(node, yaml.SequenceNode):
            return [self.value(item, (*path, i)) for i, item in enumerate(node.value)]
        return self.scalar(node, path)

    def mapping(self, node: yaml.MappingNode, path: Path_) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                raise self.fail(key_node, path, "YAML merge keys (<<) are not supported")
            if not isinstance(key_node, yaml.ScalarNode):
                raise self.fail(key_node, path, "keys must be strings, not lists or mappings")
            key = self.scalar(key_node, path)
            if not isinstance(key, str):
                raise self.fail(key_node, path, f"keys must be strings, got {key!r}")
            if key in out:
                raise self.fail(key_node, (*path, key), "duplicate key")
            self.lines[(*path, key)] = key_node.start_mark.line + 1
            out[key] = self.value(value_node, (*path, key))
        return out

    def scalar(self, node: yaml.Node, path: Path_) -> Any:
        if not isinstance(node, yaml.ScalarNode):
            raise self.fail(node, path, "expected a plain value here")
        try:
            value = self._scalar.construct_object(node, deep=True)
        except yaml.YAMLError as exc:
            raise self.fail(node, path, f"bad value ({exc})") from None
        if isinstance(value, str) and node.style is None and _VAR.fullmatch(value):
            return _WholeVar(value)
        return value


@attrs.frozen
class _WholeVar:
    """An unquoted `${VAR}` alone: once substituted it takes the YAML type of its value."""

    text: str


def parse_yaml(text: str, source: str) -> tuple[Any, dict[Path_, int]]:
    """Compose YAML safely and turn it into plain values plus a line for every key path."""
    if len(text.encode("utf-8")) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{source}: over {MAX_CONFIG_BYTES} bytes; is this a config file?")
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        line = exc.problem_mark.line + 1 if exc.problem_mark else 0
        raise ConfigError(f"{source}:{line}: not valid YAML ({exc.problem})") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML ({exc})") from None
    if node is None:
        return {}, {}
    walker = _Walker(source)
    data = walker.value(node, ())
    return data, walker.lines


# --- ${ENV} interpolation ------------------------------------------------------------------


def load_env(directories: list[Path]) -> dict[str, str]:
    """The environment, over the `.env` files of `directories` (earlier ones win)."""
    merged: dict[str, str] = {}
    for directory in reversed(directories):
        path = directory / ".env"
        if path.is_file():
            merged.update({k: v for k, v in dotenv_values(path).items() if v is not None})
    merged.update(os.environ)
    return merged


def interpolate(value: Any, env: Mapping[str, str], missing: set[str]) -> Any:
    """Replace `${NAME}` and `${NAME:-default}`; unset names are collected in `missing`."""
    if isinstance(value, dict):
        return {k: interpolate(v, env, missing) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env, missing) for v in value]
    if isinstance(value, _WholeVar):
        text = interpolate(value.text, env, missing)
        if not isinstance(text, str) or not text:
            return text or None
        loaded = yaml.safe_load(text) if "\n" not in text else text
        return loaded if isinstance(loaded, str | int | float | bool) else text
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if name in env:
            return env[name]
        if default is not None:
            return default
        missing.add(name)
        return ""

    return _VAR.sub(substitute, value)


# --- structuring ---------------------------------------------------------------------------


def _make_converter() -> cattrs.Converter:
    conv = wire.converter.copy()
    conv.register_structure_hook(Secret, lambda v, _t: Secret(wire._strict_str(v, str)))
    return conv


converter = _make_converter()


def structure_at(data: Any, cls: type, path: Path_, error: Any) -> Any:
    """Structure `data` into `cls`; `error(path, message)` builds the error to raise."""
    try:
        return converter.structure(data, cls)
    except (ClassValidationError, IterableValidationError) as exc:
        where, message = wire.first_error(exc)
        raise error((*path, *where), message) from None
    except (TypeError, ValueError) as exc:
        raise error(path, str(exc)) from None


def _target_spec(name: str, block: Any, path: Path_, error: Any, env: Mapping[str, str]) -> Any:
    if not isinstance(block, dict):
        raise error(path, "expected a mapping of target settings (kind: ..., ...)")
    if "kind" not in block:
        raise error(path, "missing `kind` (runpod, thunder, modal, local_csm, espeak, ...)")
    missing: set[str] = set()
    block = interpolate(block, env, missing)
    common = {k: v for k, v in block.items() if k in TARGET_KEYS}
    settings = {k: v for k, v in block.items() if k not in TARGET_KEYS}
    for key in ("usd_per_second", "usd_per_hour"):
        if isinstance(common.get(key), int) and not isinstance(common.get(key), bool):
            common[key] = float(common[key])
    spec = structure_at(
        {**common, "name": name, "settings": {}, "missing_env": []}, TargetSpec, path, error
    )
    if spec.usd_per_second is not None and spec.usd_per_hour is not None:
        raise error(path, "give usd_per_second or usd_per_hour, not both")
    return attrs.evolve(spec, settings=settings, missing_env=tuple(sorted(missing)))


def build_config(
    data: Any, lines: Mapping[Path_, int], source: str, env: Mapping[str, str]
) -> Config:
    def error(path: Path_, message: str) -> ConfigError:
        return config_error(source, line_of(lines, path), path, message)

    if data is None or data == {}:
        data = {}
    if not isinstance(data, dict):
        raise error((), "the file must be a mapping (audio:, providers:, run:)")
    unknown = sorted(set(data) - {"audio", "providers", "run"})
    if unknown:
        raise error((unknown[0],), "unknown key; expected audio, providers or run")
    outside = {k: data.get(k, {}) or {} for k in ("audio", "run")}
    missing: set[str] = set()
    outside = interpolate(outside, env, missing)
    if missing:
        name = sorted(missing)[0]
        raise error(("run",) if "run" in data else ("audio",), f"${{{name}}} is not set")
    audio = structure_at(outside["audio"], AudioSection, ("audio",), error)
    run = structure_at(outside["run"], RunSection, ("run",), error)
    blocks = data.get("providers") or {}
    if not isinstance(blocks, dict):
        raise error(("providers",), "expected a mapping of target name to settings")
    specs = tuple(
        attrs.evolve(
            _target_spec(name, block, ("providers", name), error, env),
            line=lines.get(("providers", name), 0),
        )
        for name, block in blocks.items()
    )
    return Config(audio=audio, run=run, providers=specs, source=source, lines=dict(lines))


def default_config_text() -> str:
    return resources.files("csm_offload").joinpath("default_config.yaml").read_text("utf-8")


def find_config(explicit: str | os.PathLike[str] | None = None) -> Path | None:
    """`--config`, else `$CSM_OFFLOAD_CONFIG`, else ./csm-offload.yaml; None means built in."""
    chosen = explicit or os.environ.get(CONFIG_ENV)
    if chosen:
        path = Path(chosen)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist; check --config or ${CONFIG_ENV}")
        return path
    local = Path(DEFAULT_FILE)
    return local if local.is_file() else None


def load_config(explicit: str | os.PathLike[str] | None = None) -> Config:
    """Find, read, interpolate and validate the configuration."""
    path = find_config(explicit)
    if path is None:
        text, source, dirs = default_config_text(), "<built-in default config>", [Path.cwd()]
    else:
        try:
            text = path.read_text("utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read config file {path}: {exc}") from None
        source, dirs = str(path), [path.parent, Path.cwd()]
    return load_config_text(text, source, load_env(dirs))


def load_config_text(text: str, source: str, env: Mapping[str, str]) -> Config:
    data, lines = parse_yaml(text, source)
    return build_config(data, lines, source, env)
