"""Wire format v1: the one cattrs converter, JSON in and out, every size bounded.

Everything that leaves or enters a process (worker bodies, provider payloads, the journal) goes
through `converter`. Decoding is strict: wrong types are not coerced, unknown keys are refused,
and every failure is a `WireError` that names the field by its JSON path.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import contextvars
import enum
import json
import math
import os
import typing
from collections.abc import Iterator
from typing import Any, TypeVar

import attrs
import cattrs
from cattrs.errors import ClassValidationError, ForbiddenExtraKeysError, IterableValidationError
from cattrs.gen import make_dict_structure_fn

from .audio import Audio
from .errors import AudioError, WireError
from .model import (
    AudioData,
    AudioUrl,
    BatchRequest,
    BatchResponse,
    JobState,
    Result,
    Segment,
    SpeechRequest,
    segment_key,
)

SCHEMA = 1
T = TypeVar("T")


@attrs.frozen
class WireLimits:
    """Every size the wire format accepts. Hosts may lower them; the names appear in errors."""

    max_body_bytes: int = 64 * 1024 * 1024
    max_requests: int = 64
    max_text_chars: int = 5_000
    max_context_segments: int = 32
    max_context_seconds: float = 300.0
    max_audio_length_ms: int = 600_000
    #: Encoded (not base64) size of one audio item.
    max_audio_bytes: int = 32 * 1024 * 1024
    #: Decoded float32 size of one audio item, checked before decoding.
    max_decoded_audio_bytes: int = 128 * 1024 * 1024
    max_url_chars: int = 8_192


DEFAULT_LIMITS = WireLimits()
_limits: contextvars.ContextVar[WireLimits] = contextvars.ContextVar(
    "wire_limits", default=DEFAULT_LIMITS
)


@contextlib.contextmanager
def limits_in_force(limits: WireLimits) -> Iterator[None]:
    token = _limits.set(limits)
    try:
        yield
    finally:
        _limits.reset(token)


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _strict_int(value: Any, _type: type) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"expected an integer, got {_type_name(value)}")
    return value


def _strict_float(value: Any, _type: type) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"expected a number, got {_type_name(value)}")
    if not math.isfinite(value):
        raise ValueError("expected a finite number")
    return float(value)


def _strict_str(value: Any, _type: type) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {_type_name(value)}")
    return value


def _strict_bool(value: Any, _type: type) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"expected true or false, got {_type_name(value)}")
    return value


def _structure_bytes(value: Any, _type: type) -> bytes:
    text = _strict_str(value, str)
    limit = _limits.get().max_audio_bytes
    if len(text) > 4 * ((limit + 2) // 3):
        raise ValueError(f"over the limit of {limit} bytes (max_audio_bytes)")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("not valid base64") from None


def _structure_list_tuple(value: Any, cls: Any) -> tuple:
    # cattrs would happily iterate a string or a dict into a tuple; JSON arrays only.
    if not isinstance(value, list):
        raise TypeError(f"expected a list, got {_type_name(value)}")
    return converter._structure_tuple(value, cls)


def _structure_audio_ref(value: Any, _type: Any) -> AudioData | AudioUrl | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise TypeError(f"expected an object or null, got {_type_name(value)}")
    if "url" in value:
        return converter.structure(value, AudioUrl)
    return converter.structure(value, AudioData)


def _check_url(url: str) -> None:
    if len(url) > _limits.get().max_url_chars:
        raise ValueError(f"URL over {_limits.get().max_url_chars} characters (max_url_chars)")
    if not url.startswith(("https://", "http://")):
        raise ValueError("audio URL must start with https:// or http://")


def _structure_audio(value: Any, _type: Any) -> Audio:
    payload = converter.structure(value, AudioData)
    try:
        audio = Audio.decode(payload.data, _limits.get().max_decoded_audio_bytes)
    except AudioError as exc:
        raise ValueError(str(exc)) from None
    if audio.sample_rate != payload.sample_rate:
        raise ValueError(
            f"sample_rate says {payload.sample_rate} but the data is at {audio.sample_rate} Hz"
        )
    return audio


def _unstructure_audio(audio: Audio) -> dict[str, Any]:
    return converter.unstructure(AudioData.from_audio(audio, "flac"))


def _strict_attrs_factory(cls: type, conv: cattrs.Converter) -> Any:
    generated = make_dict_structure_fn(cls, conv, _cattrs_forbid_extra_keys=True)

    def structure(value: Any, _type: type) -> Any:
        if not isinstance(value, dict):
            raise TypeError(f"expected an object, got {_type_name(value)}")
        return generated(value, _type)

    return structure


def _literal_factory(cls: Any) -> Any:
    allowed = typing.get_args(cls)
    names = ", ".join(repr(a) for a in allowed)

    def structure(value: Any, _type: Any) -> Any:
        if value not in allowed or isinstance(value, bool):
            raise ValueError(f"expected one of {names}, got {value!r}")
        return value

    return structure


def _enum_factory(cls: type[enum.Enum]) -> Any:
    names = ", ".join(repr(member.value) for member in cls)

    def structure(value: Any, _type: Any) -> enum.Enum:
        try:
            return cls(value)
        except ValueError:
            raise ValueError(f"expected one of {names}, got {value!r}") from None

    return structure


def _make_converter() -> cattrs.Converter:
    conv = cattrs.Converter(forbid_extra_keys=True, detailed_validation=True)
    conv.register_structure_hook(int, _strict_int)
    conv.register_structure_hook(float, _strict_float)
    conv.register_structure_hook(str, _strict_str)
    conv.register_structure_hook(bool, _strict_bool)
    # A StrEnum would dispatch to the `str` hook above and let any string through.
    conv.register_structure_hook(JobState, _enum_factory(JobState))
    conv.register_structure_hook(bytes, _structure_bytes)
    conv.register_unstructure_hook(bytes, lambda b: base64.b64encode(b).decode("ascii"))
    conv.register_structure_hook_func(
        lambda cls: typing.get_origin(cls) is tuple, _structure_list_tuple
    )
    conv.register_structure_hook_factory(attrs.has, _strict_attrs_factory)
    conv.register_structure_hook_factory(
        lambda cls: typing.get_origin(cls) is typing.Literal, _literal_factory
    )
    conv.register_structure_hook(AudioData | AudioUrl | None, _structure_audio_ref)
    conv.register_structure_hook(AudioData | AudioUrl, _structure_audio_ref)
    conv.register_structure_hook(Audio, _structure_audio)
    conv.register_unstructure_hook(Audio, _unstructure_audio)
    return conv


#: The one converter. Use `dumps`/`loads` (JSON) or `unstructure`/`structure` (dicts).
converter = _make_converter()
#: BatchRequest's generated (field by field) structure function, under the shared-context hook.
_plain_batch = _strict_attrs_factory(BatchRequest, converter)


# --- the batch-level shared context ---------------------------------------------------------
#
# A voice prompt (10 s of audio) is the same for every chunk of a book. Sent inside each
# request it would travel once per request; the encoder hoists a context prefix that several
# requests of a batch share into the batch's `shared_context` (once), and each of those
# requests says `"context_ref": "shared"` and carries only the rest of its context. Decoding
# rebuilds every request's full context, so ids, limits and engines see what they always saw.

#: The value of a request's `context_ref`: its context begins with the batch's shared_context.
SHARED_REF = "shared"
#: Set to 0 to never hoist (a worker older than the shared context refuses the field loudly).
HOIST_ENV = "CSM_OFFLOAD_WIRE_SHARED_CONTEXT"


def shared_prefix(
    requests: tuple[SpeechRequest, ...],
) -> tuple[tuple[Segment, ...], tuple[int, ...]]:
    """The context prefix worth sending once, and the indexes of the requests that share it.

    The prefix starts at the most common first segment with audio (text-only segments are too
    small to be worth a reference) and is as long as all of those requests agree. Fewer than
    two requests sharing it: nothing to gain, nothing hoisted (the body is as before).
    """
    if os.environ.get(HOIST_ENV, "1").strip().lower() in ("0", "false", "no", "off"):
        return (), ()
    keys = [tuple(segment_key(s) for s in r.context) for r in requests]
    firsts = [k[0] for k, r in zip(keys, requests, strict=True) if r.context and r.context[0].audio]
    if not firsts:
        return (), ()
    first = max(set(firsts), key=firsts.count)
    users = tuple(i for i, k in enumerate(keys) if k and k[0] == first)
    if len(users) < 2:
        return (), ()
    length = min(len(keys[i]) for i in users)
    for position in range(1, length):
        if len({keys[i][position] for i in users}) > 1:
            length = position
            break
    return requests[users[0]].context[:length], users


def _unstructure_batch(batch: BatchRequest) -> dict[str, Any]:
    shared, users = shared_prefix(batch.requests)
    requests = []
    for index, request in enumerate(batch.requests):
        if index in users:
            own = attrs.evolve(request, context=request.context[len(shared) :])
            requests.append({**converter.unstructure(own), "context_ref": SHARED_REF})
        else:
            requests.append(converter.unstructure(request))
    body: dict[str, Any] = {"requests": requests, "audio_format": batch.audio_format}
    if shared:
        body["shared_context"] = [converter.unstructure(s) for s in shared]
    body["schema"] = batch.schema
    return body


def structure_shared_context(data: Any, limits: WireLimits = DEFAULT_LIMITS) -> tuple:
    """A batch body's `shared_context`, decoded once (`()` when absent); errors name it."""
    raw = data.get("shared_context") if isinstance(data, dict) else None
    if raw is None:
        return ()
    with limits_in_force(limits):
        try:
            shared = converter.structure(raw, tuple[Segment, ...])
        except (ClassValidationError, IterableValidationError) as exc:
            path, message = first_error(exc)
            raise WireError(json_path(("shared_context", *path)), message) from None
        except (TypeError, ValueError) as exc:
            raise WireError("shared_context", _message(exc)) from None
    # The same bounds as a request's own context: it becomes part of each one.
    check_request(SpeechRequest("", context=shared), limits, "shared_context")
    return shared


def _strip_ref(item: Any, shared: tuple, path: str) -> tuple[Any, bool]:
    """The request without its `context_ref`, and whether it referred to the shared context."""
    if not isinstance(item, dict) or "context_ref" not in item:
        return item, False
    ref = item["context_ref"]
    if ref != SHARED_REF or isinstance(ref, bool):
        raise WireError(f"{path}context_ref", f"expected {SHARED_REF!r}, got {ref!r}")
    if not shared:
        raise WireError(
            f"{path}context_ref", "refers to shared_context, but the batch has none (send it)"
        )
    return {k: v for k, v in item.items() if k != "context_ref"}, True


def structure_request(
    item: Any, shared: tuple = (), limits: WireLimits = DEFAULT_LIMITS
) -> SpeechRequest:
    """One request of a batch body, its context rebuilt from `shared` if it refers to it;
    errors name the field inside the request (`context_ref`, `text`, ...)."""
    plain, refers = _strip_ref(item, shared, "")
    request = structure(plain, SpeechRequest, limits)
    if not refers:
        return request
    full = attrs.evolve(request, context=shared + request.context)
    check_request(full, limits)
    return full


def _structure_batch(value: Any, _type: Any) -> BatchRequest:
    if not isinstance(value, dict):
        raise TypeError(f"expected an object, got {_type_name(value)}")
    shared = structure_shared_context(value, _limits.get())
    data = {k: v for k, v in value.items() if k != "shared_context"}
    refs: set[int] = set()
    if isinstance(data.get("requests"), list):
        items = []
        for index, item in enumerate(data["requests"]):
            plain, refers = _strip_ref(item, shared, f"requests[{index}].")
            items.append(plain)
            if refers:
                refs.add(index)
        data["requests"] = items
    batch = _plain_batch(data, BatchRequest)
    requests = tuple(
        attrs.evolve(r, context=shared + r.context) if i in refs else r
        for i, r in enumerate(batch.requests)
    )
    return attrs.evolve(batch, requests=requests)


converter.register_structure_hook(BatchRequest, _structure_batch)
converter.register_unstructure_hook(BatchRequest, _unstructure_batch)


def unstructure(obj: Any) -> Any:
    return converter.unstructure(obj)


def dumps(obj: Any) -> bytes:
    """JSON bytes of any wire type (NaN and infinity are refused, never written)."""
    try:
        return json.dumps(
            unstructure(obj), ensure_ascii=False, allow_nan=False, separators=(",", ":")
        ).encode("utf-8")
    except ValueError as exc:
        raise WireError("$", f"cannot encode: {exc}") from None


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed in wire JSON")


def parse_json(raw: bytes | str, limits: WireLimits = DEFAULT_LIMITS) -> Any:
    """Parse a body: bounded size, strict JSON (no NaN), errors as `WireError`."""
    size = len(raw.encode("utf-8") if isinstance(raw, str) else raw)
    if size > limits.max_body_bytes:
        raise WireError(
            "body", f"{size} bytes is over the limit of {limits.max_body_bytes} (max_body_bytes)"
        )
    try:
        # JSON on the wire is UTF-8 (RFC 8259); json.loads would guess UTF-16/32 from bytes.
        text = raw.decode("utf-8") if isinstance(raw, bytes | bytearray) else raw
        return json.loads(text, parse_constant=_refuse_constant)
    except UnicodeDecodeError:
        raise WireError("body", "not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise WireError("body", f"not valid JSON ({exc.msg} at character {exc.pos})") from None
    except ValueError as exc:
        raise WireError("body", str(exc)) from None
    except RecursionError:
        raise WireError("body", "JSON nested too deeply") from None


def structure(data: Any, cls: type[T], limits: WireLimits = DEFAULT_LIMITS) -> T:
    """Build a wire type from parsed JSON, checking schema, types and every limit."""
    if hasattr(cls, "__attrs_attrs__") and attrs.has(cls) and "schema" in attrs.fields_dict(cls):
        _check_schema(data)
    with limits_in_force(limits):
        try:
            obj = converter.structure(data, cls)
        except WireError:
            raise  # already names its field (the shared context's own checks)
        except (ClassValidationError, IterableValidationError) as exc:
            raise _first_error(exc) from None
        except (TypeError, ValueError) as exc:
            raise WireError("$", _message(exc)) from None
    check_limits(obj, limits)
    return obj


def loads(raw: bytes | str, cls: type[T], limits: WireLimits = DEFAULT_LIMITS) -> T:
    """Parse and structure a JSON body in one step."""
    return structure(parse_json(raw, limits), cls, limits)


def _check_schema(data: Any) -> None:
    if not isinstance(data, dict):
        raise WireError("$", f"expected a JSON object, got {_type_name(data)}")
    if "schema" not in data:
        raise WireError("schema", f"missing; this build speaks schema {SCHEMA}")
    if data["schema"] != SCHEMA or isinstance(data["schema"], bool):
        raise WireError(
            "schema",
            f"unsupported schema {data['schema']!r}; this build speaks schema {SCHEMA} "
            "(upgrade the older side)",
        )


def _message(exc: BaseException) -> str:
    if isinstance(exc, ForbiddenExtraKeysError):
        return f"unknown field(s) {', '.join(sorted(exc.extra_fields))}"
    if isinstance(exc, KeyError):
        return "required field missing"
    return str(exc) or type(exc).__name__


def first_error(exc: BaseException, path: tuple[str | int, ...] = ()) -> tuple[tuple, str]:
    """Walk cattrs' exception group to the first leaf: its path (keys and indexes) and message."""
    if isinstance(exc, ClassValidationError | IterableValidationError):
        with_notes, without_notes = exc.group_exceptions()
        for inner, note in with_notes:
            key = note.index if isinstance(exc, IterableValidationError) else note.name
            return first_error(inner, (*path, key))
        if without_notes:
            return first_error(without_notes[0], path)
    if isinstance(exc, ForbiddenExtraKeysError):
        path = (*path, sorted(exc.extra_fields)[0])
    return path, _message(exc)


def json_path(path: tuple[str | int, ...]) -> str:
    """("requests", 0, "text") -> "requests[0].text"."""
    text = ""
    for key in path:
        text += f"[{key}]" if isinstance(key, int) else f".{key}"
    return text.removeprefix(".") or "$"


def _first_error(exc: BaseException) -> WireError:
    path, message = first_error(exc)
    return WireError(json_path(path), message)


def check_limits(obj: Any, limits: WireLimits = DEFAULT_LIMITS) -> None:
    """Raise `WireError` if a structured object is over any size limit."""
    if isinstance(obj, BatchRequest):
        _check_count("requests", len(obj.requests), limits.max_requests, "max_requests")
        for index, request in enumerate(obj.requests):
            check_request(request, limits, f"requests[{index}]")
    elif isinstance(obj, BatchResponse):
        _check_count("results", len(obj.results), limits.max_requests, "max_requests")
        for index, result in enumerate(obj.results):
            _check_result(result, limits, f"results[{index}]")
    elif isinstance(obj, SpeechRequest):
        check_request(obj, limits, "$")
    elif isinstance(obj, Result):
        _check_result(obj, limits, "$")


def _check_count(field: str, count: int | float, limit: int | float, name: str) -> None:
    if count > limit:
        raise WireError(field, f"{count} is over the limit of {limit} ({name})")


def check_request(request: SpeechRequest, limits: WireLimits, path: str = "$") -> None:
    """The per-request bounds; raised errors name the field under `path`."""
    prefix = "" if path == "$" else f"{path}."
    _check_count(f"{prefix}text", len(request.text), limits.max_text_chars, "max_text_chars")
    _check_count(
        f"{prefix}max_audio_length_ms",
        request.max_audio_length_ms,
        limits.max_audio_length_ms,
        "max_audio_length_ms",
    )
    if request.max_audio_length_ms <= 0:
        raise WireError(f"{prefix}max_audio_length_ms", "must be positive")
    if request.topk <= 0:
        raise WireError(f"{prefix}topk", "must be positive")
    if request.temperature < 0:
        raise WireError(f"{prefix}temperature", "must be 0 or more")
    _check_count(
        f"{prefix}context",
        len(request.context),
        limits.max_context_segments,
        "max_context_segments",
    )
    seconds = sum(s.audio.duration for s in request.context if s.audio is not None)
    _check_count(
        f"{prefix}context",
        round(seconds, 3),
        limits.max_context_seconds,
        "max_context_seconds, in seconds of audio",
    )
    for index, segment in enumerate(request.context):
        _check_count(
            f"{prefix}context[{index}].text",
            len(segment.text),
            limits.max_text_chars,
            "max_text_chars",
        )


def _check_result(result: Result, limits: WireLimits, path: str) -> None:
    if isinstance(result.audio, AudioUrl):
        try:
            _check_url(result.audio.url)
        except ValueError as exc:
            raise WireError(f"{path}.audio.url", str(exc)) from None
