"""Speak a two-speaker dialogue with the eSpeak NG draft voice, one voice per speaker.

    .venv/bin/python examples/dialogue.py [examples/dialogue.txt] [dialogue.wav]

Each line of the dialogue file is `speaker: text` (speaker 0, 1, ...). The lines go through the
espeak provider's hooks just as the runner drives them (submit, poll, decode), and the turns are
joined with a short pause into one 24 kHz WAV.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import csm_offload_espeak as espeak

from csm_offload import Audio, JobStatus, SpeechRequest, Target

HERE = Path(__file__).parent
PAUSE_S = 0.35


def read_dialogue(path: Path) -> list[SpeechRequest]:
    turns = []
    for number, line in enumerate(path.read_text("utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        speaker, sep, text = line.partition(":")
        if not sep or not speaker.strip().isdigit() or not text.strip():
            sys.exit(f"{path}:{number}: write each line as `speaker: text`, e.g. `0: Hello.`")
        turns.append(SpeechRequest(text=text.strip(), speaker=int(speaker)))
    return turns


async def speak(target: Target, turns: list[SpeechRequest]) -> list[Audio]:
    audio: list[Audio] = []
    for start in range(0, len(turns), espeak.MAX_BATCH):
        batch = turns[start : start + espeak.MAX_BATCH]
        handle = await espeak.submit(target, batch, None)
        status: JobStatus = await espeak.poll(target, handle, None)
        while not status.state.finished:
            await asyncio.sleep(0.02)
            status = await espeak.poll(target, handle, None)
        if errors := [r.error for r in status.results if r.error]:
            sys.exit(f"eSpeak could not speak a line: {errors[0]}")
        audio += await espeak.decode(target, status, None)
    return audio


def main(argv: list[str]) -> None:
    source = Path(argv[0]) if argv else HERE / "dialogue.txt"
    out = Path(argv[1]) if len(argv) > 1 else Path("dialogue.wav")
    target = Target(name="espeak", kind="espeak", settings=espeak.EspeakSettings())
    parts = asyncio.run(speak(target, read_dialogue(source)))
    pause = Audio.silence(PAUSE_S)
    joined = Audio.concat([piece for part in parts for piece in (part, pause)])
    partial = out.with_name(out.name + ".partial")
    partial.write_bytes(joined.encode("wav"))
    os.replace(partial, out)  # never a half-written WAV under the real name
    print(f"{out}: {joined.duration:.1f} s, {len(parts)} turns, target espeak (draft quality)")


if __name__ == "__main__":
    main(sys.argv[1:])
