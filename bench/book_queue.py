"""Benchmark of the book queue: a queue of assembly-bound books made by one `csm-offload
worker` process, then by two, on this machine; prints one JSON object (never asserted in
tests).

    .venv/bin/python bench/book_queue.py                  # 16 books of 6 chapters, 1 vs 2 workers
    .venv/bin/python bench/book_queue.py --books 2 --chapters 4 --hours 0.1

The books are generated Markdown (bench/book.py's text: sentences of varied length with
numbers). Every chunk is answered at once by the in-process instant provider
(bench/_instant_provider.py), so a chapter's time is the CPU it takes here: speech
normalisation, the journal, the quality gate, assembly into FLAC, and at the end each book's
levelling (and with --format, encoding: ffmpeg's encoders use more than one core). A worker
is this script with `--worker` (the instant provider is an in-process plugin, so
`csm-offload worker` cannot load it from an entry point); it runs the same loop as
`csm-offload worker`. The queue and the journal live in a throwaway PostgreSQL server
(tests/postgres.py). Workers run with BLAS on one thread (`OPENBLAS_NUM_THREADS=1` and
friends), as docs/queue.md advises. Wall time runs from the first book queued to the last
book done, with the workers already started, after a small warm-up run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import os
import platform
import random
import resource
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path += [str(ROOT)]  # tests.postgres: the throwaway server

from _instant_provider import KIND, InstantProvider  # noqa: E402
from book import chapter_markdown  # noqa: E402

ONE_THREAD = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
CONFIG = """providers:
  instant:
    kind: {kind}
run:
  journal: {dsn}
  audio_store: {audio}
  lease_s: 10
"""


def book_markdown(title: str, chapters: int, chars: int, seed: int) -> str:
    rng = random.Random(seed)
    return f"# {title}\n\n" + "\n".join(
        chapter_markdown(rng, n, chars) for n in range(1, chapters + 1)
    )


def run_worker(config_path: Path) -> None:
    """One worker process with the instant provider registered (the `--worker` mode)."""
    from csm_offload.config import load_config
    from csm_offload.plugins import Plugins
    from csm_offload.queue.dsn import queue_dsn
    from csm_offload.queue.work import WorkerContext
    from csm_offload.queue.worker import quiet_procrastinate, worker_name
    from csm_offload.queue.worker import run_worker as loop

    plugins = Plugins()
    plugins.register(InstantProvider(), KIND)
    config = load_config(config_path)
    quiet_procrastinate(False)
    ctx = WorkerContext(config, plugins, queue_dsn(config), worker_name(), quiet=True)
    asyncio.run(loop(ctx, 1, config.run.lease_s))
    used = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    cpu = sum(u.ru_utime + u.ru_stime for u in used)
    (config_path.parent / f"cpu-{os.getpid()}.txt").write_text(f"{cpu:.3f}")


def enqueue(work: Path, books: int, chapters: int, chars: int, formats: list[str]) -> None:
    from csm_offload.cli import App, cli

    app = App(config_path=str(work / "cfg.yaml"))
    app.plugins.register(InstantProvider(), KIND)
    for n in range(books):
        source = work / f"book{n}.md"
        source.write_text(book_markdown(f"Book {n}", chapters, chars, seed=n))
        args = ["book", str(source), "-o", str(work / f"book{n}")]
        args += [arg for fmt in formats for arg in ("--format", fmt)]
        config = ["--config", str(work / "cfg.yaml")]
        with contextlib.redirect_stdout(io.StringIO()):  # "queued book N" lines
            cli.main(args=[*config, *args, "--enqueue"], obj=app, standalone_mode=False)


def wait_registered(dsn: str, workers: int) -> None:
    import psycopg

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with contextlib.suppress(psycopg.Error), psycopg.connect(dsn) as conn:
            rows = conn.execute("SELECT count(*) FROM procrastinate_workers").fetchone()
            if rows and rows[0] >= workers:
                return
        time.sleep(0.1)
    raise SystemExit("the workers did not start")


def wait_done(dsn: str, books: int, timeout_s: float) -> None:
    import psycopg

    deadline = time.monotonic() + timeout_s
    # One connection, a look every quarter second: the driver must not take the CPU that the
    # workers are measured on (a connection per look cost a backend's start each time).
    with psycopg.connect(dsn, autocommit=True) as conn:
        while time.monotonic() < deadline:
            states = [s for (s,) in conn.execute("SELECT state FROM csm_books").fetchall()]
            if len(states) == books and all(s in ("done", "failed") for s in states):
                if set(states) != {"done"}:
                    raise SystemExit(f"books failed: {states}")
                return
            time.sleep(0.25)
    raise SystemExit(f"the books were not done in {timeout_s} s")


def one_run(server: object, workers: int, args: argparse.Namespace) -> tuple[float, float]:
    """Wall seconds from the first book queued to the last one done, and of those, the
    seconds the client spent queueing."""
    dsn = server.create_database()  # type: ignore[attr-defined]
    with tempfile.TemporaryDirectory(prefix="queue-bench-") as tmp:
        work = Path(tmp)
        config = work / "cfg.yaml"
        config.write_text(CONFIG.format(kind=KIND, dsn=dsn, audio=work / "audio"))
        os.environ.pop("CSM_OFFLOAD_LOAD_PLUGINS", None)
        # One core per worker process: BLAS's own threads would only fight the other worker
        # (and spin: a lone worker spends more CPU with them than without).
        env = {**os.environ, **dict.fromkeys(ONE_THREAD, "1")}
        procs = [
            subprocess.Popen([sys.executable, __file__, "--worker", str(config)], cwd=work, env=env)
            for _ in range(workers)
        ]
        try:
            wait_registered(dsn, workers)  # their start-up is not the queue's time
            started = time.monotonic()
            enqueue(work, args.books, args.chapters, args.chars, args.format)
            queued = time.monotonic() - started
            wait_done(dsn, args.books, args.timeout)
            return time.monotonic() - started, queued
        finally:
            for proc in procs:
                proc.send_signal(signal.SIGTERM)
            for proc in procs:
                proc.wait(60)
            cpu = sum(float(p.read_text()) for p in work.glob("cpu-*.txt"))
            print(f"{workers} worker(s): {cpu:.1f} CPU seconds in workers", file=sys.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--books", type=int, default=16)
    parser.add_argument("--chapters", type=int, default=6)
    parser.add_argument("--chars", type=int, default=4_000, help="characters per chapter")
    parser.add_argument(
        "--format",
        action="append",
        default=[],
        choices=["mp3", "m4b"],
        help="also encode (ffmpeg's encoders use more than one core: not assembly-bound)",
    )
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        run_worker(args.worker)
        return
    from tests.postgres import running

    with running() as server:
        # A small run first, not reported: imports, the provider's audio bank and the
        # server's caches are warm for both measured runs.
        one_run(server, 1, argparse.Namespace(**{**vars(args), "books": 1, "chapters": 1}))
        one, one_queued = one_run(server, 1, args)
        two, two_queued = one_run(server, 2, args)
    print(
        json.dumps(
            {
                "books": args.books,
                "chapters_per_book": args.chapters,
                "chars_per_chapter": args.chars,
                "formats": ["flac", *args.format],
                "cpus": os.cpu_count(),
                "python": platform.python_version(),
                "one_worker_s": round(one, 2),
                "two_workers_s": round(two, 2),
                "queueing_s": [round(one_queued, 2), round(two_queued, 2)],
                "speed_up": round(one / two, 2),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
