"""Orchestration benchmark: our runner (or the runpod SDK) against the simulated RunPod cloud.

    python bench/orchestration.py --segments 2000 --workers 100 --job-seconds 2
    python bench/orchestration.py --segments 2000 --workers 100 --job-seconds 2 --route runsync
    python bench/orchestration.py --segments 2000 --workers 100 --job-seconds 2 --client runpod-sdk

The simulator runs in its own process (so the figures are the client's alone) with W workers
and a fixed job time S. `ideal_s` is ceil(N / W) x S: what a client that never waits longer
than the jobs themselves would take. `requests_per_job` counts every HTTP request the endpoint
saw (submissions, polls, health checks) per job. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import math
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from csm_offload import Audio, BatchRequest, SpeechRequest, wire  # noqa: E402
from csm_offload.breaker import Breakers  # noqa: E402
from csm_offload.config import load_config_text  # noqa: E402
from csm_offload.health import HealthCache  # noqa: E402
from csm_offload.journal import Journal  # noqa: E402
from csm_offload.manager import http_client  # noqa: E402
from csm_offload.plugins import load_plugins  # noqa: E402
from csm_offload.router import RouteOptions, Router  # noqa: E402
from csm_offload.runner import Runner, RunnerSettings  # noqa: E402
from csm_offload.speed import SpeedBook  # noqa: E402
from csm_offload.targets import check_targets  # noqa: E402
from tests.sim.runpod_cloud import SimProcess, SimulatedRunPod  # noqa: E402


def _requests(count: int, chars: int) -> list[SpeechRequest]:
    filler = "The quick brown fox jumps over the lazy dog. " * (chars // 40 + 1)
    return [SpeechRequest(f"Segment {i}. {filler}"[:chars]) for i in range(count)]


async def _ours(sim: SimProcess, requests: list[SpeechRequest], args: argparse.Namespace) -> int:
    config = load_config_text(
        f"""
providers:
  sim:
    kind: runpod
    endpoint_url: {sim.url}
    api_key: {sim.api_key}
    max_batch: {args.max_batch}
    max_in_flight: {args.in_flight or args.workers}
    use_runsync: {"true" if args.route == "runsync" else "false"}
    usd_per_second: 0.00076
run:
  health_ttl_s: 60
""",
        "bench.yaml",
        {},
    )
    checks = check_targets(config, load_plugins(["runpod"]).providers)
    if not checks[0].usable:
        raise SystemExit(f"bench target unusable: {checks[0].reason}")
    router = Router(checks, config.audio.cloud_gpu, HealthCache(60), Breakers(), SpeedBook())
    with (
        tempfile.TemporaryDirectory() as tmp,
        Journal(Path(tmp) / "journal.sqlite3") as journal,
    ):
        async with http_client() as http:
            runner = Runner(router, journal, http, RunnerSettings(), RouteOptions())
            result = await runner.run(requests)
    if not result.ok:
        raise SystemExit(f"bench run failed: {result.summary()}")
    return math.ceil(len(requests) / args.max_batch)


async def _sdk(sim: SimProcess, requests: list[SpeechRequest], args: argparse.Namespace) -> int:
    """The same load through the runpod package's AsyncioEndpoint (its own polling loop)."""
    import aiohttp
    import runpod
    from runpod import AsyncioEndpoint

    runpod.endpoint_url_base = sim.base_url
    runpod.api_key = sim.api_key
    limit = asyncio.Semaphore(args.in_flight or args.workers)
    connector = aiohttp.TCPConnector(limit=0)

    async def one(session: aiohttp.ClientSession, request: SpeechRequest) -> None:
        async with limit:
            endpoint = AsyncioEndpoint(sim.endpoint_id, session)
            job = await endpoint.run(wire.unstructure(BatchRequest((request,))))
            output = await job.output(timeout=600)
            audio = output["results"][0]["audio"]
            Audio.decode(base64.b64decode(audio["data"]))

    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(*(one(session, r) for r in requests))
    return len(requests)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--segments", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=100)
    parser.add_argument("--job-seconds", type=float, default=2.0)
    parser.add_argument("--client", choices=("ours", "runpod-sdk"), default="ours")
    parser.add_argument(
        "--route",
        choices=("run", "runsync"),
        default="run",
        help="ours only: /run + adaptive polling, or /runsync (the plugin's short-job route)",
    )
    parser.add_argument("--chars", type=int, default=60, help="characters per segment")
    parser.add_argument("--max-batch", type=int, default=1)
    parser.add_argument("--in-flight", type=int, default=0, help="default: --workers")
    args = parser.parse_args(argv)
    requests = _requests(args.segments, args.chars)
    sim = SimulatedRunPod.spawn(
        workers=args.workers, job_seconds=args.job_seconds, validate="false"
    )
    try:
        cpu0 = time.process_time()
        wall0 = time.monotonic()
        client = _ours if args.client == "ours" else _sdk
        jobs = asyncio.run(client(sim, requests, args))
        wall = time.monotonic() - wall0
        cpu = time.process_time() - cpu0
        stats: dict[str, Any] = sim.stats()
    finally:
        sim.stop()
    ideal = math.ceil(jobs / args.workers) * args.job_seconds
    http_requests = sum(stats["requests"].values())
    print(
        json.dumps(
            {
                "client": args.client,
                "route": args.route if args.client == "ours" else "run",
                "segments": args.segments,
                "workers": args.workers,
                "job_seconds": args.job_seconds,
                "wall_s": round(wall, 2),
                "ideal_s": round(ideal, 2),
                "ratio": round(wall / ideal, 3),
                "requests_per_job": round(http_requests / jobs, 3),
                "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                "client_cpu_ms_per_job": round(1000 * cpu / jobs, 2),
                "requests_by_route": stats["requests"],
            }
        )
    )


if __name__ == "__main__":
    main()
