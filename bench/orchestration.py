"""Orchestration benchmark: our runner (or the runpod SDK) against the simulated RunPod cloud.

    python bench/orchestration.py --segments 2000 --workers 100 --job-seconds 2
    python bench/orchestration.py --segments 2000 --workers 100 --job-seconds 2 --chars 50-250
    python bench/orchestration.py --segments 8000 --workers 200 --job-seconds 0.2 --rate-limits
    python bench/orchestration.py --segments 2000 --workers 100 --job-seconds 2 --client runpod-sdk
    python bench/orchestration.py --segments 3000 --workers 100 --job-seconds 0.05 \
        --max-batch 1 --in-flight 100 --unpaced --journal postgresql

The simulator runs in its own process (so the figures are the client's alone) with W workers.
Work is proportional to text: a segment of average length takes S worker seconds, a batch of
k segments the sum of theirs. `ideal_s` is the total work divided by W (or the longest
segment, if longer): what a client that never left a worker idle would take. With no
`--max-batch` / `--in-flight`, the client runs on its built-in defaults (batch size and
in-flight cap chosen from the endpoint's /health). `requests_per_job` counts every HTTP request
the endpoint saw (submissions, polls, health checks, 429s) per job. `--journal postgresql`
keeps the journal in a PostgreSQL server of its own (tests/postgres.py: the pgserver wheel's
binaries, on 127.0.0.1, fsync on) instead of an SQLite file; the client's CPU then includes
the lease heartbeat's thread. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import random
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
from csm_offload.journal import Journal, open_journal  # noqa: E402
from csm_offload.manager import http_client  # noqa: E402
from csm_offload.plugins import load_plugins  # noqa: E402
from csm_offload.router import RouteOptions, Router  # noqa: E402
from csm_offload.runner import Runner, RunnerSettings  # noqa: E402
from csm_offload.speed import SpeedBook  # noqa: E402
from csm_offload.targets import check_targets  # noqa: E402
from tests.sim.runpod_cloud import SimProcess, SimulatedRunPod  # noqa: E402


def _lengths(count: int, chars: str, seed: int = 7) -> list[int]:
    """Segment lengths: a fixed number, or LOW-HIGH drawn uniformly (reproducibly)."""
    if "-" not in chars:
        return [int(chars)] * count
    low, high = (int(x) for x in chars.split("-", 1))
    rng = random.Random(seed)
    return [rng.randint(low, high) for _ in range(count)]


def _requests(lengths: list[int]) -> list[SpeechRequest]:
    filler = "The quick brown fox jumps over the lazy dog. " * (max(lengths) // 40 + 2)
    return [SpeechRequest(f"Segment {i}. {filler}"[:n]) for i, n in enumerate(lengths)]


async def _ours(sim: SimProcess, requests: list[SpeechRequest], args: argparse.Namespace) -> int:
    config = load_config_text(
        f"""
providers:
  sim:
    kind: runpod
    endpoint_url: {sim.url}
    api_key: {sim.api_key}
{_overrides(args)}    use_runsync: {"true" if args.route == "runsync" else "false"}
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
        _journal(Path(tmp), args.journal_url) as journal,
    ):
        async with http_client() as http:
            runner = Runner(router, journal, http, RunnerSettings(), RouteOptions())
            result = await runner.run(requests)
        journal_jobs = [j for j in journal.jobs() if j.state == "completed"]
    failed = len(result.failed())
    if failed:
        print(f"{failed} segments failed: {result.summary()}", file=sys.stderr)
    jobs = len(journal_jobs)
    return jobs, failed, runner.pacers.limited()


def _journal(folder: Path, url: str | None) -> Journal:
    if url is None:
        return Journal(folder / "journal.sqlite3")
    return open_journal(url, audio_store=str(folder / "audio"))


def _overrides(args: argparse.Namespace) -> str:
    """Only what the command line sets: the rest is the client's built-in defaults."""
    lines = ""
    if args.max_batch:
        lines += f"    max_batch: {args.max_batch}\n"
    if args.in_flight:
        lines += f"    max_in_flight: {args.in_flight}\n"
    return lines


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
    parser.add_argument(
        "--job-seconds", type=float, default=2.0, help="worker seconds of an average segment"
    )
    parser.add_argument("--client", choices=("ours", "runpod-sdk"), default="ours")
    parser.add_argument(
        "--route",
        choices=("run", "runsync"),
        default="runsync",
        help="ours only: the plugin's default (/runsync for short jobs) or /run + polling",
    )
    parser.add_argument("--chars", default="60", help="characters per segment: N or LOW-HIGH")
    parser.add_argument("--max-batch", type=int, default=0, help="default: built-in")
    parser.add_argument("--in-flight", type=int, default=0, help="default: built-in")
    parser.add_argument(
        "--rate-limits", action="store_true", help="the simulator enforces RunPod's limits"
    )
    parser.add_argument(
        "--unpaced",
        action="store_true",
        help="the client ignores RunPod's published limits (to measure its own capacity)",
    )
    parser.add_argument("--journal", choices=("sqlite", "postgresql"), default="sqlite")
    args = parser.parse_args(argv)
    if args.unpaced:
        import attrs
        import csm_offload_runpod

        limits = csm_offload_runpod.LIMITS
        csm_offload_runpod.LIMITS = attrs.evolve(limits, submit_rate=None, poll_rate=None)
    lengths = _lengths(args.segments, args.chars)
    requests = _requests(lengths)
    mean = sum(lengths) / len(lengths)
    spc = args.job_seconds / mean
    options: dict[str, Any] = {"workers": args.workers, "seconds_per_char": spc}
    options["validate"] = "false"
    if args.rate_limits:
        options["rate_limits"] = "true"
    sim = SimulatedRunPod.spawn(**options)
    server = None
    args.journal_url = None
    if args.journal == "postgresql":
        from tests.postgres import PostgresServer

        server = PostgresServer(fsync="on").start()
        args.journal_url = server.create_database("bench")
    try:
        cpu0 = time.process_time()
        wall0 = time.monotonic()
        if args.client == "ours":
            jobs, failed, limited = asyncio.run(_ours(sim, requests, args))
        else:
            jobs, failed, limited = asyncio.run(_sdk(sim, requests, args)), 0, {}
        wall = time.monotonic() - wall0
        cpu = time.process_time() - cpu0
        stats: dict[str, Any] = sim.stats()
    finally:
        sim.stop()
        if server is not None:
            server.stop()
    work = [n * spc for n in lengths]
    ideal = max(sum(work) / args.workers, max(work))
    http_requests = sum(stats["requests"].values())
    report = {
        "client": args.client,
        "journal": args.journal,
        "route": args.route if args.client == "ours" else "run",
        "segments": args.segments,
        "chars": args.chars,
        "workers": args.workers,
        "job_seconds": args.job_seconds,
        "rate_limits": args.rate_limits,
        "unpaced": args.unpaced,
        "jobs": jobs,
        "failed": failed,
        "wall_s": round(wall, 2),
        "ideal_s": round(ideal, 2),
        "ratio": round(wall / ideal, 3),
        "segments_per_s": round(args.segments / wall, 1),
        "jobs_per_s": round(jobs / wall, 1),
        "requests_per_job": round(http_requests / jobs, 3),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "client_cpu_ms_per_job": round(1000 * cpu / jobs, 2),
        "client_cpu_ms_per_segment": round(1000 * cpu / args.segments, 2),
        "requests_by_route": stats["requests"],
        "rate_limited": stats.get("rate_limited", {}),
        "client_429s": limited,
        "executed_twice": stats.get("executed_twice"),
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
