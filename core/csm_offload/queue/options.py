"""The options of a queued book: what the client decided (its chapters, their chunk budget,
the voice) and the `csm-offload book` flags a worker needs to make them the same way. They
travel as JSON in the book's row; `BookOptions.from_json` refuses anything else in one sentence
(a row written by a newer version, or edited by hand)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from ..errors import UserError

FORMATS = ("flac", "mp3", "m4b")
LOUDNESS = ("acx", "podcast", "none")


def _chapters(_instance: object, _attribute: attrs.Attribute[Any], value: tuple[int, ...]) -> None:
    if not value or any(not isinstance(n, int) or isinstance(n, bool) or n < 1 for n in value):
        raise ValueError(f"chapters must be numbers from 1, got {value!r}")
    if list(value) != sorted(set(value)):
        raise ValueError(f"chapters must be in order, each once, got {value!r}")


_TEXT = (str, type(None))
#: The type each option must have in a stored row (JSON gives no guarantee).
_TYPES: dict[str, tuple[type, ...]] = {
    "budget": (int,),
    "speaker": (int,),
    "voice": _TEXT,
    "voice_prompt": _TEXT,
    "voice_text": _TEXT,
    "voice_folder": _TEXT,
    "voice_chapter": (int, type(None)),
    "no_auto_voice": (bool,),
    "cloud_gpu": (bool,),
    "local_audio": (bool,),
    "draft": (bool,),
    "loudness": (str,),
    "check_acx": (bool,),
    "no_quality_gate": (bool,),
    "max_retries": (int,),
    "max_usd": (int, float, type(None)),
}


@attrs.frozen
class BookOptions:
    """Everything a worker needs besides the book's folder (which holds its text)."""

    #: The chapters queued, by number (as `--dry-run` lists them).
    chapters: tuple[int, ...] = attrs.field(converter=tuple, validator=_chapters)
    #: Characters per chunk, decided once on the client (the workers' targets may differ).
    budget: int = attrs.field(validator=attrs.validators.ge(1))
    speaker: int = 0
    voice: str | None = None
    voice_prompt: str | None = None
    voice_text: str | None = None
    no_auto_voice: bool = False
    #: The folder of the book whose first chunk sets the voice (a --urls run's first group).
    voice_folder: str | None = None
    #: The chapter of that book whose first chunk it is.
    voice_chapter: int | None = None
    cloud_gpu: bool = False
    local_audio: bool = False
    draft: bool = False
    formats: tuple[str, ...] = attrs.field(
        default=(),
        converter=tuple,
        validator=attrs.validators.deep_iterable(attrs.validators.in_(FORMATS)),
    )
    loudness: str = attrs.field(default="acx", validator=attrs.validators.in_(LOUDNESS))
    check_acx: bool = False
    no_quality_gate: bool = False
    max_retries: int = attrs.field(default=2, validator=attrs.validators.ge(0))
    max_usd: float | None = None

    def __attrs_post_init__(self) -> None:
        for name, kinds in _TYPES.items():
            value = getattr(self, name)
            if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
                raise ValueError(f"{name} must be {' or '.join(k.__name__ for k in kinds)}")

    @classmethod
    def from_cli(cls, opts: Mapping[str, Any], chapters: list[int], budget: int) -> BookOptions:
        """From `csm-offload book`'s options (paths made absolute: workers run elsewhere)."""
        names = {a.name for a in attrs.fields(cls)} - {
            "chapters",
            "budget",
            "voice_folder",
            "voice_chapter",
        }
        given = {name: opts[name] for name in names if name in opts}
        if given.get("voice_prompt"):
            given["voice_prompt"] = str(Path(given["voice_prompt"]).resolve())
        return cls(chapters=chapters, budget=budget, **given)

    def to_json(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in attrs.asdict(self).items()}

    @classmethod
    def from_json(cls, data: Any) -> BookOptions:
        """A stored row's options; anything malformed is a `UserError`."""
        if not isinstance(data, Mapping):
            raise UserError(f"a queued book's options are not an object: {data!r:.80}")
        known = {a.name for a in attrs.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise UserError(
                f"a queued book has options this version does not know ({', '.join(unknown)}); "
                "run the workers on the version that queued it"
            )
        try:
            return cls(**data)
        except (TypeError, ValueError) as exc:
            detail = exc.args[0] if exc.args else exc
            raise UserError(f"a queued book's options are malformed: {detail}") from None

    def as_opts(self, chapters: list[int] | None = None) -> dict[str, Any]:
        """The shape `plan_volume` and the finishing code read (`csm-offload book`'s opts)."""
        numbers = self.chapters if chapters is None else chapters
        return {**self.to_json(), "chapter_spec": ",".join(str(n) for n in numbers), "redo": ()}
