"""Dialogue scripts: `Name: line` turns in scenes, spoken in CSM's conversational mode.

Script format (see `examples/dialogue.txt`):

- a turn is a line `Name: what they say`; a name is 1-40 characters (letters, digits, spaces,
  `_ - . '`) starting with a letter or digit; the text may not be empty;
- a non-blank line that is not a turn continues the previous turn's text;
- a line `---` (three or more dashes) or a heading line starting with `#` ends a scene;
  blank lines are only spacing (scripts often put one between turns), so they never split one.

Each turn's request has the speaker's voice prompt (if the name has a voice) then the scene's
previous turns, with their generated audio, as context: turns of a scene run in order, scenes
run in parallel (`render_scenes`).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence

import attrs

from .audio import Audio
from .errors import UserError
from .model import Segment, SpeechRequest
from .voices import Voice, voice_context, voice_request

_TURN = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9 _.'-]{0,39}?)\s*:\s*(.*?)\s*$")
_SEPARATOR = re.compile(r"^\s*(-{3,}|#.*)\s*$")
#: Previous turns carried as context: CSM's 2048-token window holds only a few.
MAX_PREVIOUS_TURNS = 4


@attrs.frozen
class Turn:
    name: str
    text: str
    line: int = attrs.field(default=0, eq=False)


@attrs.frozen
class Scene:
    turns: tuple[Turn, ...] = attrs.field(converter=tuple)


def parse_script(text: str, source: str = "<script>") -> tuple[Scene, ...]:
    """The script's scenes (empty scenes dropped); a line before any turn is a `UserError`
    naming `source:line` and the fix."""
    scenes: list[list[Turn]] = [[]]
    for number, line in enumerate(text.splitlines(), start=1):
        if _SEPARATOR.match(line):
            scenes.append([])
        elif match := _TURN.match(line):
            name, said = match.groups()
            if not said:
                raise UserError(f"{source}:{number}: {name} says nothing; write `{name}: text`")
            scenes[-1].append(Turn(name, said, number))
        elif line.strip():
            if not scenes[-1]:
                raise UserError(
                    f"{source}:{number}: write each line as `Name: text` (e.g. `Ada: Hello.`)"
                )
            last = scenes[-1][-1]
            scenes[-1][-1] = attrs.evolve(last, text=f"{last.text} {line.strip()}")
    return tuple(Scene(tuple(turns)) for turns in scenes if turns)


def format_script(scenes: Sequence[Scene]) -> str:
    """The script text of `scenes` (what `parse_script` reads back)."""
    return "\n---\n".join("\n".join(f"{t.name}: {t.text}" for t in s.turns) for s in scenes)


def speaker_ids(scenes: Sequence[Scene], voices: Mapping[str, Voice]) -> dict[str, int]:
    """CSM speaker id per name: the voice's, else a numeric name's own number, else the next
    id not taken, in order of first appearance."""
    ids = {name: voice.speaker for name, voice in voices.items()}
    names = [t.name for s in scenes for t in s.turns]
    ids.update({n: int(n) for n in names if n.isdigit() and n not in ids})
    for name in names:
        if name not in ids:
            ids[name] = next(i for i in range(len(ids) + 1) if i not in ids.values())
    return ids


def turn_request(
    scene: Scene,
    index: int,
    voices: Mapping[str, Voice],
    previous: Sequence[Audio],
    ids: Mapping[str, int],
    **fields: object,
) -> SpeechRequest:
    """Turn `index` of `scene`: the speaker's voice prompt, then up to MAX_PREVIOUS_TURNS
    earlier turns of the scene with `previous` (their generated audio, in order)."""
    if len(previous) < index:
        raise ValueError(f"turn {index} needs the audio of the {index} turns before it")
    turn = scene.turns[index]
    start = max(0, index - MAX_PREVIOUS_TURNS)
    history = tuple(
        Segment(ids[t.name], t.text, previous[i])
        for i, t in enumerate(scene.turns[start:index], start=start)
    )
    voice = voices.get(turn.name)
    prompt = voice_context(voice) if voice is not None else ()
    base = voice_request(turn.text, voice, **fields)
    return attrs.evolve(base, speaker=ids[turn.name], context=prompt + history, id="")


async def render_scenes(
    scenes: Sequence[Scene],
    voices: Mapping[str, Voice],
    generate: Callable[[SpeechRequest], Awaitable[Audio]],
    **fields: object,
) -> list[list[Audio]]:
    """Every turn's audio, by scene: turns of a scene in order (each needs the ones before it),
    scenes concurrently."""
    ids = speaker_ids(scenes, voices)

    async def one(scene: Scene) -> list[Audio]:
        done: list[Audio] = []
        for index in range(len(scene.turns)):
            done.append(await generate(turn_request(scene, index, voices, done, ids, **fields)))
        return done

    return list(await asyncio.gather(*(one(scene) for scene in scenes)))


def render_in_waves(
    scenes: Sequence[Scene],
    voices: Mapping[str, Voice],
    generate_all: Callable[[list[SpeechRequest]], Sequence[Audio | None]],
    **fields: object,
) -> list[list[Audio]]:
    """Every turn's audio, by scene, through a batch generator: wave k holds the k-th turn of
    every scene (scenes in parallel, one run each wave), and its audio is the context of wave
    k+1. Stops early (fewer turns back) when a wave comes back incomplete."""
    ids = speaker_ids(scenes, voices)
    done: list[list[Audio]] = [[] for _ in scenes]
    for index in range(max((len(s.turns) for s in scenes), default=0)):
        live = [k for k, scene in enumerate(scenes) if index < len(scene.turns)]
        wave = [turn_request(scenes[k], index, voices, done[k], ids, **fields) for k in live]
        audios = list(generate_all(wave))
        if any(audio is None for audio in audios):
            break
        for k, audio in zip(live, audios, strict=True):
            done[k].append(audio)  # type: ignore[arg-type]
    return done
