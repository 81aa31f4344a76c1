"""The Python API: `CloudGPUManager(targets).generate_speech(...)` and `synthesize(...)`."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from csm_offload import ProviderError, Segment, SpeechRequest, TransientError, UserError
from csm_offload.audio import CHUNK_PAUSE_S
from csm_offload.config import load_config_text
from csm_offload.manager import CloudGPUManager
from csm_offload.plugins import Plugins
from csm_offload.runner import Progress
from tests.scripted_provider import ScriptedProvider, registered_all, tone_for
from tests.test_runner import FAST

CONFIG = """
providers:
  a:
    kind: cloud_a
  b:
    kind: cloud_b
    usd_per_second: 1.0
"""


def manager(plugins: Plugins, tmp_path: Path, targets: list[str] | None = None) -> CloudGPUManager:
    config = load_config_text(CONFIG, "manager.yaml", {})
    return CloudGPUManager(
        targets, config=config, plugins=plugins, journal=tmp_path / "j.sqlite3", settings=FAST
    )


def test_generate_speech_chunks_long_text_and_joins_audio(plugins: Plugins, tmp_path: Path) -> None:
    a = ScriptedProvider("cloud_a", max_text_chars=40)
    b = ScriptedProvider("cloud_b", max_text_chars=40)
    text = "The first sentence is here. The second sentence follows it. And a third."
    context = (Segment(1, "Earlier words.", None),)
    with registered_all(plugins, a=a, b=b), manager(plugins, tmp_path) as api:
        audio = api.generate_speech(text, speaker=1, context=context, max_length_ms=9_000)
        again = api.generate_speech(text, speaker=1, context=context, max_length_ms=9_000)
    assert a.calls["submit"] >= 1 and b.calls["submit"] == 0
    pieces = [r for job in a.jobs.values() for r in job.batch]
    assert len(pieces) == 3 and all(len(r.text) <= 40 for r in pieces)
    assert all(r.speaker == 1 and r.context == context for r in pieces)
    assert all(r.max_audio_length_ms == 9_000 for r in pieces)
    expected = sum(tone_for(r).frames for r in pieces) + 2 * round(CHUNK_PAUSE_S * 24_000)
    assert audio.frames == expected and audio.sample_rate == 24_000
    assert again == audio
    assert sum(a.submitted.values()) == 3  # the second call came from the journal


def test_synthesize_reports_progress(plugins: Plugins, tmp_path: Path) -> None:
    a = ScriptedProvider("cloud_a")
    events: list[Progress] = []
    requests = [SpeechRequest(f"line {i}") for i in range(5)]
    with registered_all(plugins, a=a), manager(plugins, tmp_path) as api:
        result = asyncio.run(api.synthesize(requests, progress=events.append))
    assert result.ok
    assert events[-1].done == 5
    assert result.plan.first.target.name == "a"


def test_targets_restrict_the_choice(plugins: Plugins, tmp_path: Path) -> None:
    a = ScriptedProvider("cloud_a")
    b = ScriptedProvider("cloud_b")
    with registered_all(plugins, a=a, b=b), manager(plugins, tmp_path, ["b"]) as api:
        api.generate_speech("Only b may speak.")
    assert a.calls["submit"] == 0 and b.calls["submit"] == 1
    with registered_all(plugins, a=a), pytest.raises(UserError, match="no target named nope"):
        manager(plugins, tmp_path, ["nope"])


def test_failure_raises_with_a_summary(plugins: Plugins, tmp_path: Path) -> None:
    a = ScriptedProvider("cloud_a")
    a.script("submit", *[TransientError("HTTP 503 from the gateway") for _ in range(50)])
    with (
        registered_all(plugins, a=a),
        manager(plugins, tmp_path, ["a"]) as api,
        pytest.raises(ProviderError, match="HTTP 503"),
    ):
        api.generate_speech("This will not work.")


def test_generate_speech_inside_async_code_says_to_await(plugins: Plugins, tmp_path: Path) -> None:
    a = ScriptedProvider("cloud_a")

    async def inside() -> None:
        api.generate_speech("hello")

    with (
        registered_all(plugins, a=a),
        manager(plugins, tmp_path) as api,
        pytest.raises(UserError, match="await synthesize"),
    ):
        asyncio.run(inside())
