"""Dialogue scripts: the parser (property-tested) and each named speaker's voice and context."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from csm_offload import Audio, SpeechRequest, UserError
from csm_offload.dialogue import Scene, Turn, format_script, parse_script, render_scenes
from csm_offload.voices import Voice, voice_context

EXAMPLE = Path(__file__).parent.parent / "examples" / "dialogue.txt"
names = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.'-]{0,10}( [A-Za-z]{1,5})?", fullmatch=True)
lines = (
    st.from_regex(r"[A-Za-z0-9,.!?'][A-Za-z0-9 ,.!?':]{0,30}", fullmatch=True)
    .map(str.strip)
    .filter(bool)
)
scenes = st.lists(st.builds(Turn, names, lines).map(lambda t: (t,)), min_size=1, max_size=4).map(
    lambda ts: Scene(tuple(t for (t,) in ts))
)


@settings(max_examples=100, deadline=None)
@given(st.lists(scenes, min_size=1, max_size=4))
def test_scripts_round_trip(original: list[Scene]) -> None:
    assert parse_script(format_script(original)) == tuple(original)


def test_the_example_is_one_scene_of_two_speakers() -> None:
    (scene,) = parse_script(EXAMPLE.read_text("utf-8"))
    assert {t.name for t in scene.turns} == {"0", "1"}
    assert len(scene.turns) == 6


def test_separators_blank_lines_and_continuations() -> None:
    text = "# Scene 1\nAda: Hello.\n\nBob: Hi,\n  how are you?\n---\nAda: Later.\n"
    first, second = parse_script(text)
    assert [t.text for t in first.turns] == ["Hello.", "Hi, how are you?"]
    assert second.turns == (Turn("Ada", "Later."),)


@pytest.mark.parametrize(
    ("text", "words"), [("hello\nAda: hi", "script:1"), ("Ada:   ", "says nothing")]
)
def test_bad_scripts_name_the_line_and_fix(text: str, words: str) -> None:
    with pytest.raises(UserError, match=words):
        parse_script(text, "script")


def voice(name: str, speaker: int, level: float) -> Voice:
    return Voice(
        name, Audio(np.full(240, level, np.float32), 24_000).quantized(), f"I am {name}.", speaker
    )


def test_each_named_speaker_gets_their_voice_and_the_scene_so_far() -> None:
    voices = {"Ada": voice("Ada", 4, 0.1), "Bob": voice("Bob", 7, 0.2)}
    script = parse_script("Ada: One.\nBob: Two.\nAda: Three.\n---\nBob: Alone.\n")
    seen: list[SpeechRequest] = []

    async def generate(request: SpeechRequest) -> Audio:
        seen.append(request)
        return Audio(np.full(480, 0.01 * len(seen), np.float32), 24_000).quantized()

    audio = asyncio.run(render_scenes(script, voices, generate, seed=2))
    assert [len(scene) for scene in audio] == [3, 1]
    by_text = {r.text: r for r in seen}
    assert by_text["One."].speaker == 4 and by_text["One."].context == voice_context(voices["Ada"])
    two = by_text["Two."]
    assert two.speaker == 7 and two.context[0] == voice_context(voices["Bob"])[0]
    assert [(s.speaker, s.text) for s in two.context[1:]] == [(4, "One.")]
    three = by_text["Three."]
    assert [(s.speaker, s.text) for s in three.context] == [
        (4, "I am Ada."),
        (4, "One."),
        (7, "Two."),
    ]
    assert three.context[1].audio == audio[0][0]
    # scenes are independent: the second scene's turn sees only its own voice
    assert by_text["Alone."].context == voice_context(voices["Bob"])
    assert all(r.seed == 2 for r in seen)
