"""Bytes a voice prompt adds to a job's upload: prints one JSON object (never asserted in tests).

    .venv/bin/python bench/voice_bytes.py                 # 10 s prompt, batch of 8
    .venv/bin/python bench/voice_bytes.py --seconds 20 --batch 16

Each batch is submitted through the RunPod client plugin to the simulated RunPod cloud
(`tests/sim/runpod_cloud.py`), which records the raw request bodies. Three bodies are measured:
no voice, the voice hoisted into the batch's `shared_context` (the default), and the voice
repeated in every request (`CSM_OFFLOAD_WIRE_SHARED_CONTEXT=0`, the form before the shared
context). The prompt is speech-like audio (voiced syllables plus noise; FLAC compresses it as it
would a recording). `overhead_vs_one_copy` is the hoisted body over "the plain body plus exactly
one copy of the prompt" minus 1: the target is at most 0.10.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import csm_offload_runpod as rp

from csm_offload import Audio, Segment, SpeechRequest, Target, wire
from tests.sim.runpod_cloud import SimulatedRunPod

TEXT = "It was a bright cold day in April, and the clocks were striking thirteen. {}"


def speechlike(seconds: float, rate: int = 24_000) -> Audio:
    """Voiced syllables on a wandering pitch with a little breath noise, gaps between words."""
    rng = np.random.default_rng(11)
    t = np.arange(round(rate * seconds)) / rate
    pitch = 120 + 30 * np.sin(2 * np.pi * 0.3 * t)
    voiced = np.sin(2 * np.pi * np.cumsum(pitch) / rate) * (0.5 + 0.5 * np.sin(2 * np.pi * 4 * t))
    gate = (np.sin(2 * np.pi * 1.7 * t) > -0.6).astype(np.float32)
    samples = 0.25 * voiced * gate + 0.01 * rng.standard_normal(t.size)
    return Audio(samples.astype(np.float32), rate).quantized()


def submit_and_measure(batch: list[SpeechRequest], hoist: bool) -> int:
    os.environ[wire.HOIST_ENV] = "1" if hoist else "0"
    with SimulatedRunPod(workers=2, seconds_per_char=0.0001, overhead_s=0.01) as sim:
        bodies: list[int] = []
        submit = sim.cloud._submit

        async def recording(request: Any, route: str) -> Any:
            bodies.append(len(request.body))
            return await submit(request, route)

        sim.cloud._submit = recording  # type: ignore[method-assign]
        target = Target(
            "sim", "runpod", rp.RunPodSettings(api_key=sim.api_key, endpoint_url=sim.url)
        )

        async def go() -> None:
            async with httpx.AsyncClient(timeout=30) as http:
                await rp.submit(target=target, batch=batch, http=http)

        asyncio.run(go())
    return sum(bodies)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args(argv)
    prompt = Segment(0, "The words spoken in the voice prompt.", speechlike(args.seconds))
    texts = [TEXT.format(i) for i in range(args.batch)]
    plain = submit_and_measure([SpeechRequest(t) for t in texts], hoist=True)
    voiced = [SpeechRequest(t, context=(prompt,)) for t in texts]
    hoisted = submit_and_measure(voiced, hoist=True)
    repeated = submit_and_measure(voiced, hoist=False)
    one_copy = len(wire.dumps(prompt))
    print(
        json.dumps(
            {
                "prompt_seconds": args.seconds,
                "batch": args.batch,
                "prompt_bytes_once": one_copy,
                "body_bytes": {"no_voice": plain, "hoisted": hoisted, "repeated": repeated},
                "per_chunk_bytes": {
                    "no_voice": plain / args.batch,
                    "hoisted": hoisted / args.batch,
                    "repeated": repeated / args.batch,
                },
                "overhead_vs_one_copy": round(hoisted / (plain + one_copy) - 1, 4),
                "saved_vs_repeated": round(1 - hoisted / repeated, 4),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
