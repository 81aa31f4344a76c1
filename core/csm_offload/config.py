"""Configuration: a YAML file (the seed's `audio.cloud_gpu` block plus `providers:` and `run:`),
`${ENV}` interpolation with a `.env` file, and errors that name the file, the line and the key.

YAML is composed safely into nodes and walked by hand, so that every value keeps its line, and
so that aliases are counted as they expand: an alias bomb is refused after a bounded number of
nodes instead of filling memory. Nesting is bounded while composing (PyYAML's composer recurses
once per level), and the file's size before it is read.

`${VAR}` is substituted into the parsed scalars, never into the YAML text, and a value is never
parsed again: whatever the variable holds (`@x`, `pass #word`, ` spaced `, `123456`, `yes`)
arrives exactly as set. An unquoted `${VAR}` standing alone is marked (`EnvText`) so that a
field typed as a number or a boolean converts it; a string or secret field keeps the text.
"""

from __future__ import annotations

import math
import os
import re
import urllib.parse
from collections.abc import Callable, Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import attrs
import cattrs
import yaml
from cattrs.errors import ClassValidationError, ForbiddenExtraKeysError, IterableValidationError
from dotenv import dotenv_values

from . import scrub, wire
from .errors import ConfigError
from .secret import Secret

MAX_CONFIG_BYTES = 1024 * 1024
MAX_NODES = 20_000
MAX_DEPTH = 40
CONFIG_ENV = "CSM_OFFLOAD_CONFIG"
DEFAULT_FILE = "csm-offload.yaml"
BUILT_IN_SOURCE = "<built-in default config>"
#: Keys every target block may have; the rest are the provider's own settings.
TARGET_KEYS = frozenset(
    {"kind", "enabled", "gpu", "usd_per_second", "usd_per_hour", "max_in_flight", "max_batch"}
)
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_INT = re.compile(r"\s*[-+]?[0-9]+\s*")
_TRUE = frozenset({"true", "yes", "on", "1"})
_FALSE = frozenset({"false", "no", "off", "0"})

Path_ = tuple[str | int, ...]
ErrorFactory = Callable[[Path_, str], ConfigError]


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


def _journal_spec(_instance: Any, attribute: attrs.Attribute, value: str) -> None:
    """A PostgreSQL URL must not carry its password: the config file is not the place for it
    (it ends up in backups, diffs and screenshots); libpq reads PGPASSWORD or ~/.pgpass."""
    if not value.startswith(("postgresql://", "postgres://")):
        return
    parts = urllib.parse.urlsplit(value)
    if parts.password is not None or "password=" in parts.query:
        raise ValueError(
            f"{attribute.name}: the URL carries a password; remove it and set PGPASSWORD in "
            "the environment or .env (or use ~/.pgpass)"
        )


def _lease(_instance: Any, attribute: attrs.Attribute, value: float) -> None:
    if not math.isfinite(value) or not 2.0 <= value <= 3600.0:
        raise ValueError(f"{attribute.name}: must be 2 to 3600 seconds, got {value}")


def _metrics_port(_instance: Any, attribute: attrs.Attribute, value: int | None) -> None:
    if value is not None and not 1 <= value <= 65535:
        raise ValueError(f"{attribute.name}: must be a port from 1 to 65535, got {value}")


@attrs.frozen
class RunSection:
    """How a run behaves: where the journal lives, the spending cap, health caching."""

    #: A path (the embedded SQLite journal) or a `postgresql://` URL (docs/operations.md).
    journal: str = attrs.field(default=".csm-offload/journal.sqlite3", validator=_journal_spec)
    max_usd: float | None = None
    health_ttl_s: float = 60.0
    deadline_s: float = 3600.0
    #: Where results' audio lives: a folder, or `s3://bucket/prefix`. Default: `audio/` beside
    #: an SQLite journal, `.csm-offload/audio` with PostgreSQL (one machine only).
    audio_store: str | None = None
    #: How long a claim on a request outlives its holder's last sign of life (PostgreSQL).
    lease_s: float = attrs.field(default=30.0, validator=_lease)
    #: Serve Prometheus metrics on 127.0.0.1 at this port (off when unset).
    metrics_port: int | None = attrs.field(default=None, validator=_metrics_port)


@attrs.frozen
class VoiceSpec:
    """A `voices:` entry as written; `csm_offload.voices.voice_from_config` loads and checks
    the audio (relative paths are relative to the config file)."""

    audio: str
    transcript: str
    speaker: int = 0
    temperature: float | None = None
    topk: int | None = None
    seed: int | None = None


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
    #: What is wrong with the block's common keys (full `file:line: key: message` sentences).
    errors: tuple[str, ...] = ()
    #: Settings keys whose value names an unset variable (their own errors would only echo it).
    missing_keys: tuple[str, ...] = ()
    #: Environment values substituted into each settings key, so that the ones landing in a
    #: secret-typed field can be given to the scrubber before anything can quote them.
    env_values: Mapping[str, tuple[str, ...]] = attrs.field(factory=dict, repr=False, eq=False)


@attrs.frozen
class Config:
    audio: AudioSection
    run: RunSection
    providers: tuple[TargetSpec, ...]
    source: str
    #: Line of each key path, for errors found later (e.g. provider settings).
    lines: Mapping[Path_, int] = attrs.field(factory=dict, repr=False, eq=False)
    #: Errors outside the target blocks; only a lenient load (`strict=False`) keeps them here,
    #: a strict one raises the first.
    errors: tuple[str, ...] = ()
    #: Named voices (`voices:`), by name.
    voices: Mapping[str, VoiceSpec] = attrs.field(factory=dict)

    def error(self, path: Path_, message: str) -> ConfigError:
        return config_error(self.source, line_of(self.lines, path), path, message)

    @property
    def built_in(self) -> bool:
        return self.source == BUILT_IN_SOURCE


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


class _TooDeep(Exception):
    def __init__(self, line: int) -> None:
        super().__init__(line)
        self.line = line


class _BoundedLoader(yaml.SafeLoader):
    """The safe loader, refusing nesting past the limit while composing: the composer recurses
    once per level, and 50,000 `[` would otherwise end in a RecursionError."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def _enter(self) -> None:
        self._depth += 1
        # One level of slack: the walker then names the exact key that is too deep.
        if self._depth > MAX_DEPTH + 1:
            raise _TooDeep(self.peek_event().start_mark.line + 1)

    def compose_sequence_node(self, anchor: Any) -> yaml.Node:
        self._enter()
        try:
            return super().compose_sequence_node(anchor)
        finally:
            self._depth -= 1

    def compose_mapping_node(self, anchor: Any) -> yaml.Node:
        self._enter()
        try:
            return super().compose_mapping_node(anchor)
        finally:
            self._depth -= 1


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
            raise self.fail(node, path, f"bad value ({_one_line(exc)})") from None
        if isinstance(value, str) and node.style is None and _VAR.fullmatch(value):
            return _WholeVar(value)
        return value


@attrs.frozen
class _WholeVar:
    """An unquoted `${VAR}` alone: once substituted, a number or boolean field converts it."""

    text: str


class EnvText(str):
    """Text that came from an unquoted `${VAR}`: exactly as set, and convertible by the field's
    type (`max_retries: ${RETRIES}` with RETRIES=5 is 5). A string field gets a plain `str`."""

    __slots__ = ()


def _one_line(exc: BaseException) -> str:
    problem = getattr(exc, "problem", None)
    text = problem if isinstance(problem, str) and problem else str(exc)
    return " ".join(text.split())


def parse_yaml(text: str, source: str) -> tuple[Any, dict[Path_, int]]:
    """Compose YAML safely and turn it into plain values plus a line for every key path."""
    if len(text) > MAX_CONFIG_BYTES or len(text.encode("utf-8")) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{source}: over {MAX_CONFIG_BYTES} bytes; is this a config file?")
    try:
        node = yaml.compose(text, Loader=_BoundedLoader)
    except _TooDeep as exc:
        raise ConfigError(
            f"{source}:{exc.line}: nested deeper than {MAX_DEPTH} levels; "
            "a config file is never this deep"
        ) from None
    except RecursionError:
        raise ConfigError(f"{source}: nested too deeply to read; is this a config file?") from None
    except yaml.MarkedYAMLError as exc:
        line = exc.problem_mark.line + 1 if exc.problem_mark else 0
        hint = "; indent with spaces, not tabs" if "'\\t'" in str(exc.problem) else ""
        raise ConfigError(f"{source}:{line}: not valid YAML ({_one_line(exc)}){hint}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML ({_one_line(exc)})") from None
    if node is None:
        return {}, {}
    walker = _Walker(source)
    data = walker.value(node, ())
    return data, walker.lines


def read_config_file(path: Path) -> str:
    """The file's text, its size checked before it is read: a huge file never enters memory."""
    try:
        with path.open("rb") as file:
            if os.fstat(file.fileno()).st_size > MAX_CONFIG_BYTES:
                raise _oversize(path)
            # At most one byte over the limit: a file that grew, or a device with no size.
            data = file.read(MAX_CONFIG_BYTES + 1)
    except IsADirectoryError:
        raise ConfigError(f"{path} is a directory; give the path of a YAML file") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise _oversize(path)
    if b"\0" in data:
        raise ConfigError(f"{path} is a binary file, not YAML; check --config")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{path} is not UTF-8 text (bad byte at offset {exc.start}); save it as UTF-8"
        ) from None


def _oversize(path: Path) -> ConfigError:
    return ConfigError(f"{path}: over {MAX_CONFIG_BYTES} bytes; is this a config file?")


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


@attrs.define
class _Substitution:
    """What one interpolation pass saw: unset names (each with the first path that used it)
    and the environment values used, by path."""

    missing: dict[str, Path_] = attrs.field(factory=dict)
    used: dict[Path_, list[str]] = attrs.field(factory=dict)


def _substitute(text: str, env: Mapping[str, str], seen: _Substitution, path: Path_) -> str:
    def one(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if name in env:
            value = env[name]
            seen.used.setdefault(path, []).append(value)
            if scrub.SECRET_NAME.search(name):
                scrub.register(value)
            return value
        if default is not None:
            return default
        seen.missing.setdefault(name, path)
        return ""

    # One pass over the original text: a value that itself contains `${...}` is not expanded.
    return _VAR.sub(one, text)


def _interpolate(value: Any, env: Mapping[str, str], seen: _Substitution, path: Path_) -> Any:
    if isinstance(value, dict):
        return {k: _interpolate(v, env, seen, (*path, k)) for k, v in value.items()}
    if isinstance(value, list):
        return [_interpolate(v, env, seen, (*path, i)) for i, v in enumerate(value)]
    if isinstance(value, _WholeVar):
        return EnvText(_substitute(value.text, env, seen, path))
    if isinstance(value, str):
        return _substitute(value, env, seen, path)
    return value


def interpolate(value: Any, env: Mapping[str, str], missing: set[str]) -> Any:
    """Replace `${NAME}` and `${NAME:-default}`; unset names are collected in `missing`.
    Values are inserted as they are: never parsed as YAML, never expanded again."""
    seen = _Substitution()
    out = _interpolate(value, env, seen, ())
    missing.update(seen.missing)
    return out


# --- structuring ---------------------------------------------------------------------------


def _env_int(value: Any, _type: type) -> int:
    if isinstance(value, EnvText):
        if not _INT.fullmatch(value):
            raise TypeError("expected an integer, got text from the environment")
        return int(value)
    return wire._strict_int(value, _type)


def _env_float(value: Any, _type: type) -> float:
    if isinstance(value, EnvText):
        try:
            number = float(value) if value.strip() else None
        except ValueError:
            number = None
        if number is None:
            raise TypeError("expected a number, got text from the environment")
        return wire._strict_float(number, _type)
    return wire._strict_float(value, _type)


def _env_bool(value: Any, _type: type) -> bool:
    if isinstance(value, EnvText):
        word = value.strip().lower()
        if word in _TRUE or word in _FALSE:
            return word in _TRUE
        raise TypeError("expected true or false, got text from the environment")
    return wire._strict_bool(value, _type)


def _env_str(value: Any, _type: type) -> str:
    return str(wire._strict_str(value, _type))


def _env_secret(value: Any, _type: type) -> Secret:
    # A key given in code (csm_offload.cloud_gpu_client) arrives as a `Secret` already.
    return value if isinstance(value, Secret) else Secret(_env_str(value, str))


def _make_converter() -> cattrs.Converter:
    conv = wire.converter.copy()
    conv.register_structure_hook(int, _env_int)
    conv.register_structure_hook(float, _env_float)
    conv.register_structure_hook(bool, _env_bool)
    conv.register_structure_hook(str, _env_str)
    conv.register_structure_hook(Secret, _env_secret)
    return conv


converter = _make_converter()


def all_errors(exc: BaseException, path: Path_ = ()) -> list[tuple[Path_, str]]:
    """Every leaf of cattrs' exception group: its path (keys and indexes) and message."""
    if isinstance(exc, ClassValidationError | IterableValidationError):
        with_notes, without_notes = exc.group_exceptions()
        found: list[tuple[Path_, str]] = []
        for inner, note in with_notes:
            key = note.index if isinstance(exc, IterableValidationError) else note.name
            found += all_errors(inner, (*path, key))
        for inner in without_notes:
            found += all_errors(inner, path)
        return found
    if isinstance(exc, ForbiddenExtraKeysError):
        return [((*path, key), f"unknown field(s) {key}") for key in sorted(exc.extra_fields)]
    return [(path, wire._message(exc))]


def _field_of(cls: type, message: str) -> tuple[str, str] | None:
    """`("api_key", "empty")` for a settings class's own "api_key: empty" error."""
    name, sep, rest = message.partition(": ")
    if sep and attrs.has(cls) and name in {f.name for f in attrs.fields(cls)}:
        return name, rest
    return None


def structure_paths(data: Any, cls: type) -> tuple[Any, list[tuple[Path_, str]]]:
    """Structure `data` into `cls`: the object, or None and every (path, message) found."""
    try:
        return converter.structure(data, cls), []
    except (ClassValidationError, IterableValidationError) as exc:
        found = all_errors(exc)
    except (TypeError, ValueError) as exc:
        found = [((), str(exc) or type(exc).__name__)]
    # A settings class's own check ("api_key: empty; ...") names its field: point there.
    return None, [_pointed(cls, where, message) for where, message in found]


def _pointed(cls: type, where: Path_, message: str) -> tuple[Path_, str]:
    field = None if where else _field_of(cls, message)
    return ((field[0],), field[1]) if field is not None else (where, message)


def structure_all(
    data: Any, cls: type, path: Path_, error: ErrorFactory
) -> tuple[Any, list[ConfigError]]:
    """Structure `data` into `cls`: the object, or None and every error found."""
    value, found = structure_paths(data, cls)
    return value, [error((*path, *where), message) for where, message in found]


def structure_at(data: Any, cls: type, path: Path_, error: ErrorFactory) -> Any:
    """Structure `data` into `cls`; `error(path, message)` builds the error to raise."""
    value, errors = structure_all(data, cls, path, error)
    if errors:
        raise errors[0]
    return value


def _target_spec(
    name: str, block: Any, path: Path_, error: ErrorFactory, env: Mapping[str, str]
) -> TargetSpec:
    if not isinstance(block, dict):
        problem = error(path, "expected a mapping of target settings (kind: ..., ...)")
        return TargetSpec(name=name, kind="", errors=(str(problem),))
    errors: list[str] = []
    if "kind" not in block:
        message = "missing `kind` (runpod, thunder, modal, local_csm, espeak, ...)"
        errors.append(str(error(path, message)))
    seen = _Substitution()
    block = _interpolate(block, env, seen, path)
    common = {k: v for k, v in block.items() if k in TARGET_KEYS}
    common.setdefault("kind", "")
    settings = {k: v for k, v in block.items() if k not in TARGET_KEYS}
    spec, problems = structure_all(
        {**common, "name": name, "settings": {}, "missing_env": []}, TargetSpec, path, error
    )
    errors += [str(p) for p in problems]
    if spec is None:
        kind = common["kind"] if isinstance(common["kind"], str) else ""
        spec = TargetSpec(name=name, kind=kind)
    if spec.usd_per_second is not None and spec.usd_per_hour is not None:
        errors.append(str(error(path, "give usd_per_second or usd_per_hour, not both")))
    missing_keys = {p[len(path)] for p in seen.missing.values() if len(p) > len(path)}
    env_values: dict[str, list[str]] = {}
    for used_at, values in seen.used.items():
        key = used_at[len(path)] if len(used_at) > len(path) else None
        if key in settings:
            env_values.setdefault(str(key), []).extend(values)
    return attrs.evolve(
        spec,
        settings=settings,
        missing_env=tuple(sorted(seen.missing)),
        errors=tuple(errors),
        missing_keys=tuple(sorted(str(k) for k in missing_keys)),
        env_values={k: tuple(v) for k, v in env_values.items()},
    )


def build_config(
    data: Any,
    lines: Mapping[Path_, int],
    source: str,
    env: Mapping[str, str],
    *,
    strict: bool = True,
) -> Config:
    """Validate parsed YAML into a `Config`. Strict: raise the first error anywhere. Lenient:
    keep going and collect everything (`Config.errors`, each `TargetSpec.errors`), for
    `config check`; only an unreadable file or a top level that is not a mapping stops it."""

    def error(path: Path_, message: str) -> ConfigError:
        return config_error(source, line_of(lines, path), path, message)

    problems: list[ConfigError] = []
    if data is None or data == {}:
        data = {}
    if not isinstance(data, dict):
        raise error((), "the file must be a mapping (audio:, providers:, run:)")
    for key in sorted(set(data) - {"audio", "providers", "run", "voices"}):
        problems.append(error((key,), "unknown key; expected audio, providers, run or voices"))
    seen = _Substitution()
    sections: dict[str, Any] = {}
    for key, cls in (("audio", AudioSection), ("run", RunSection)):
        raw = _interpolate(data.get(key, {}) or {}, env, seen, (key,))
        # A value naming an unset variable is reported as unset, not as a wrong value.
        for path in seen.missing.values():
            if path[:1] == (key,):
                _drop(raw, path[1:])
        value, found = structure_all(raw, cls, (key,), error)
        problems += found
        sections[key] = value if value is not None else cls()
    for name, path in sorted(seen.missing.items(), key=lambda item: line_of(lines, item[1])):
        problems.append(error(path, f"${{{name}}} is not set; set it in the environment or .env"))
    blocks = data.get("providers") or {}
    specs: tuple[TargetSpec, ...] = ()
    if not isinstance(blocks, dict):
        problems.append(error(("providers",), "expected a mapping of target name to settings"))
    else:
        specs = tuple(
            attrs.evolve(
                _target_spec(str(name), block, ("providers", name), error, env),
                line=lines.get(("providers", name), 0),
            )
            for name, block in blocks.items()
        )
    voices = _voice_specs(data.get("voices"), env, error, problems)
    if strict:
        problems.sort(key=lambda p: _line_in(str(p)))
        if problems:
            raise problems[0]
        for spec in specs:
            if spec.errors:
                raise ConfigError(spec.errors[0])
    return Config(
        audio=sections["audio"],
        run=sections["run"],
        providers=specs,
        source=source,
        lines=dict(lines),
        errors=tuple(str(p) for p in problems),
        voices=voices,
    )


def _voice_specs(
    blocks: Any, env: Mapping[str, str], error: ErrorFactory, problems: list[ConfigError]
) -> dict[str, VoiceSpec]:
    """The `voices:` section (name: {audio, transcript, speaker, ...}); problems are added."""
    if blocks is None:
        return {}
    if not isinstance(blocks, dict):
        problems.append(error(("voices",), "expected a mapping of voice name to audio/transcript"))
        return {}
    voices: dict[str, VoiceSpec] = {}
    for name, block in blocks.items():
        path = ("voices", name)
        if not isinstance(block, dict):
            problems.append(error(path, "expected a mapping (audio: FILE, transcript: TEXT)"))
            continue
        raw = _interpolate(block, env, _Substitution(), path)
        value, found = structure_all(raw, VoiceSpec, path, error)
        problems += found
        if value is not None:
            voices[str(name)] = value
    return voices


def _drop(data: Any, path: Path_) -> None:
    for key in path[:-1]:
        if not isinstance(data, dict | list):
            return
        try:
            data = data[key]  # type: ignore[index]
        except (KeyError, IndexError, TypeError):
            return
    if path and isinstance(data, dict):
        data.pop(path[-1], None)


def _line_in(message: str) -> int:
    """The line an error names (`file:12: ...`), to report the first one in the file first."""
    match = re.match(r"[^\n]*?:(\d+): ", message)
    return int(match.group(1)) if match else 0


def default_config_text() -> str:
    return resources.files("csm_offload").joinpath("default_config.yaml").read_text("utf-8")


def find_config(explicit: str | os.PathLike[str] | None = None) -> Path | None:
    """`--config`, else `$CSM_OFFLOAD_CONFIG`, else ./csm-offload.yaml; None means built in."""
    chosen = explicit or os.environ.get(CONFIG_ENV)
    if chosen:
        path = Path(chosen)
        if path.is_dir():
            raise ConfigError(f"{path} is a directory; give the path of a YAML file to --config")
        if not path.exists():
            raise ConfigError(f"config file {path} does not exist; check --config or ${CONFIG_ENV}")
        return path
    local = Path(DEFAULT_FILE)
    return local if local.is_file() else None


def load_config(explicit: str | os.PathLike[str] | None = None, *, strict: bool = True) -> Config:
    """Find, read, interpolate and validate the configuration."""
    path = find_config(explicit)
    if path is None:
        text, source, dirs = default_config_text(), BUILT_IN_SOURCE, [Path.cwd()]
    else:
        text = read_config_file(path)
        source, dirs = str(path), [path.parent, Path.cwd()]
    return load_config_text(text, source, load_env(dirs), strict=strict)


def load_config_text(
    text: str, source: str, env: Mapping[str, str], *, strict: bool = True
) -> Config:
    # The conventional credential variables are masked even where the config never uses them.
    scrub.register_env(env)
    data, lines = parse_yaml(text, source)
    return build_config(data, lines, source, env, strict=strict)
