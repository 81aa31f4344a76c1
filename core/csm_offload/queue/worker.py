"""The loop of `csm-offload worker`: procrastinate's worker on the queue, heartbeats every
quarter lease, and a side task that puts dead workers' jobs back in the queue
(csm_offload.queue.stalled). SIGTERM or SIGINT stops it gracefully: the jobs in hand are
finished first (a chapter is minutes at most); SIGKILL loses nothing either (docs/queue.md)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Callable, Mapping

import psycopg

from .app import make_app
from .dsn import connect, unreachable
from .schema import ensure_schema
from .stalled import heartbeat_s, retry_forever
from .work import WorkerContext


def worker_name() -> str:
    """Host and process: what `csm-offload queue` shows as a chapter's worker."""
    return f"{socket.gethostname()}:{os.getpid()}"


async def run_worker(ctx: WorkerContext, concurrency: int, lease_s: float) -> None:
    async with connect(ctx.dsn) as conn:  # a clear error when the server is away
        await ensure_schema(conn)
    app = make_app(ctx.dsn)
    try:
        await app.open_async()
    except Exception as exc:  # the pool's own timeout, after the check above passed
        raise unreachable(ctx.dsn, exc) from None
    retrier = asyncio.create_task(retry_forever(app, lease_s))
    try:
        await app.run_worker_async(
            name=ctx.name,
            concurrency=concurrency,
            additional_context={"csm": ctx},
            update_heartbeat_interval=heartbeat_s(lease_s),
            stalled_worker_timeout=lease_s,
            fetch_job_polling_interval=min(5.0, lease_s / 2),
            abort_job_polling_interval=min(5.0, lease_s / 2),
            install_signal_handlers=True,
            wait=True,
        )
    finally:
        retrier.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await retrier
        await app.close_async()


def queue_depth(dsn: str) -> Callable[[], Mapping[str, int]]:
    """Jobs by state, read at each metrics scrape (on the server's thread: its own
    connection)."""

    def depth() -> Mapping[str, int]:
        try:
            with psycopg.connect(dsn, connect_timeout=5) as conn:
                rows = conn.execute(
                    "SELECT status::text, count(*) FROM procrastinate_jobs"
                    " WHERE task_name LIKE 'csm_book:%' AND status IN ('todo', 'doing')"
                    " GROUP BY status"
                ).fetchall()
        except psycopg.Error:
            return {}
        return {"todo": 0, "doing": 0, **{str(s): int(n) for s, n in rows}}

    return depth


def quiet_procrastinate(debug: bool) -> None:
    """procrastinate logs every job at INFO: keep its warnings, and our own lines."""
    logging.basicConfig(format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("procrastinate").setLevel(logging.DEBUG if debug else logging.WARNING)
    logging.getLogger("csm_offload.queue").setLevel(logging.INFO)
