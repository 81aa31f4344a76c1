"""Benchmark of the eSpeak NG draft voice: prints one JSON object (never asserted in tests).

    .venv/bin/python bench/espeak.py

Measures, on this machine: one-sentence latency through the hooks, audio seconds per wall
second for a long text (synthesis, resampling to 24 kHz and WAV encoding included), 20
concurrent one-sentence jobs through submit/poll/decode, and the level of the speech.
"""

from __future__ import annotations

import asyncio
import json
import time

import csm_offload_espeak as espeak

from csm_offload import Audio, JobHandle, SpeechRequest, Target

SENTENCE = "The quick brown fox jumps over the lazy dog, and then it rests in the sun."
TARGET = Target(name="espeak", kind="espeak", settings=espeak.EspeakSettings())


async def finish(handle: JobHandle) -> list[Audio]:
    status = await espeak.poll(TARGET, handle, None)
    while not status.state.finished:
        await asyncio.sleep(0.002)
        status = await espeak.poll(TARGET, handle, None)
    return await espeak.decode(TARGET, status, None)


async def timed(batch: list[SpeechRequest]) -> tuple[float, list[Audio]]:
    started = time.perf_counter()
    audio = await finish(await espeak.submit(TARGET, batch, None))
    return time.perf_counter() - started, audio


async def concurrent(count: int) -> tuple[float, list[Audio]]:
    requests = [SpeechRequest(text=f"{SENTENCE} Number {i}.") for i in range(count)]
    started = time.perf_counter()
    handles = await asyncio.gather(*(espeak.submit(TARGET, [r], None) for r in requests))
    parts = await asyncio.gather(*(finish(h) for h in handles))
    return time.perf_counter() - started, [a for part in parts for a in part]


async def main() -> dict[str, object]:
    await timed([SpeechRequest(text="Warm up.")])  # loads the library and data once
    sentence_s, [sentence] = await timed([SpeechRequest(text=SENTENCE)])
    long_text = " ".join([SENTENCE] * 100)
    long_s, [long] = await timed([SpeechRequest(text=long_text, max_audio_length_ms=600_000)])
    jobs_s, jobs = await concurrent(20)
    return {
        "sentence_chars": len(SENTENCE),
        "sentence_audio_s": round(sentence.duration, 3),
        "sentence_wall_ms": round(1000 * sentence_s, 1),
        "sentence_rms": round(sentence.rms(), 4),
        "sentence_peak": round(sentence.peak(), 4),
        "long_chars": len(long_text),
        "long_audio_s": round(long.duration, 1),
        "long_wall_s": round(long_s, 3),
        "long_realtime_factor": round(long.duration / long_s, 1),
        "seconds_per_char": round(long.duration / len(long_text), 4),
        "concurrent_jobs": len(jobs),
        "concurrent_wall_s": round(jobs_s, 3),
        "concurrent_distinct": len({a.samples.tobytes() for a in jobs}),
    }


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main())))
