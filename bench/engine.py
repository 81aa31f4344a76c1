"""How fast the CSM engine turns text into audio, per batch size, on whatever device is here.

    python bench/engine.py --batch 1,4 --chars 120
    python bench/engine.py --arch full --batch 1,4,16 --frames 50 --static-cache --compile
    python bench/engine.py --model sesame/csm-1b --batch 1,8   # real weights, if downloaded

Prints one JSON object: for each batch size, wall seconds, audio seconds and the real-time
factor (audio seconds per wall second, higher is faster). Without `--model` it builds a random
CSM offline ("tiny" for a quick check of the plumbing, "full" for CSM-1B's 1.6 B parameters in
the shapes that matter for speed). Random weights practically never emit the all-zero EOS frame,
so every request generates `--frames` frames (80 ms each); `audio_s` reports what came out.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from csm_offload_local_csm.engine import FRAME_MS, CsmEngine, EngineOptions
from csm_offload_local_csm.random_model import build_random_csm

from csm_offload import SpeechRequest

WORDS = "the quick brown fox jumps over a lazy dog while narrators read long chapters aloud "


def text_of(chars: int) -> str:
    return (WORDS * (chars // len(WORDS) + 1))[:chars].strip() or "a"


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", default="1,4", help="batch sizes, comma separated")
    parser.add_argument("--chars", type=int, default=120, help="characters of text per request")
    parser.add_argument("--frames", type=int, default=12, help="frames generated per request")
    parser.add_argument("--arch", choices=("tiny", "full"), default="tiny")
    parser.add_argument("--model", help="a model id or directory instead of random weights")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--static-cache", action="store_true")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs per batch size")
    args = parser.parse_args(argv)
    try:
        args.batches = [int(b) for b in args.batch.split(",") if b.strip()]
    except ValueError:
        parser.error("--batch takes whole numbers separated by commas, e.g. 1,4,16")
    if not args.batches or min(args.batches) < 1 or args.frames < 1 or args.chars < 1:
        parser.error("--batch, --chars and --frames must be 1 or more")
    return args


def load(args: argparse.Namespace, workdir: Path) -> tuple[CsmEngine, float]:
    started = time.perf_counter()
    model = args.model or str(build_random_csm(workdir / "model", args.arch))
    options = EngineOptions(model, args.device, args.dtype, args.static_cache, args.compile)
    return CsmEngine.load(options), time.perf_counter() - started


def run_batch(engine: CsmEngine, batch: int, chars: int, frames: int) -> tuple[float, float]:
    """One timed call: (wall seconds, seconds of audio made)."""
    requests = [
        SpeechRequest(text_of(chars), speaker=i % 2, max_audio_length_ms=frames * FRAME_MS, seed=i)
        for i in range(batch)
    ]
    started = time.perf_counter()
    results = engine.generate(requests)
    wall = time.perf_counter() - started
    errors = [r.error for r in results if r.error]
    if errors:
        raise SystemExit(f"generation failed: {errors[0]}")
    return wall, sum(r.audio.duration for r in results)


def measure(engine: CsmEngine, args: argparse.Namespace) -> list[dict[str, Any]]:
    rows = []
    for batch in args.batches:
        run_batch(engine, batch, args.chars, args.frames)  # warm-up (and compile, if asked)
        best_wall, audio = min(
            run_batch(engine, batch, args.chars, args.frames) for _ in range(args.repeats)
        )
        rows.append(
            {
                "batch": batch,
                "wall_s": round(best_wall, 4),
                "audio_s": round(audio, 3),
                "audio_s_per_wall_s": round(audio / best_wall, 4),
                "ms_per_frame_step": round(1000 * best_wall / args.frames, 2),
            }
        )
    return rows


def main(argv: list[str] | None = None) -> None:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    import torch

    with tempfile.TemporaryDirectory(prefix="csm-bench-") as tmp:
        engine, load_s = load(args, Path(tmp))
        rows = measure(engine, args)
    params = sum(p.numel() for p in engine.model.parameters())
    device = engine.device
    print(
        json.dumps(
            {
                "bench": "engine",
                "model": args.model or f"random-{args.arch}",
                "parameters": params,
                "device": torch.cuda.get_device_name(0) if device.startswith("cuda") else device,
                "dtype": str(engine.model.dtype).removeprefix("torch."),
                "static_cache": args.static_cache,
                "compile": args.compile,
                "chars": args.chars,
                "frames": args.frames,
                "torch_threads": torch.get_num_threads(),
                "torch": torch.__version__,
                "python": platform.python_version(),
                "load_s": round(load_s, 2),
                "results": rows,
            }
        )
    )


if __name__ == "__main__":
    main()
