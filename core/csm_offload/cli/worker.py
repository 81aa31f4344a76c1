"""`csm-offload worker`: make the queued books' chapters (docs/queue.md). Run any number, on
any machines that reach the queue's PostgreSQL and the books' folders."""

from __future__ import annotations

import asyncio

import click

from ..metrics import NULL, Metrics, MetricsServer, serve_metrics
from .app import App, pass_app


@click.command(name="worker")
@click.option(
    "--concurrency",
    type=click.IntRange(1, 64),
    default=1,
    show_default=True,
    help="Jobs at once in this process (chapters are CPU-bound: one per core, in processes).",
)
@click.option(
    "--metrics-port",
    type=click.IntRange(1, 65535),
    default=None,
    help="Serve Prometheus metrics on 127.0.0.1 at this port (default: run.metrics_port).",
)
@click.option(
    "--blas-threads",
    type=click.IntRange(1, 256),
    default=1,
    show_default=True,
    help="Threads numpy/scipy's BLAS may use in this process (run one worker per core).",
)
@click.option("--quiet", is_flag=True, help="No progress lines.")
@pass_app
def worker_command(
    app: App, concurrency: int, metrics_port: int | None, blas_threads: int, quiet: bool
) -> None:
    """Process the book queue until stopped (SIGTERM or Ctrl-C finish the jobs in hand)."""
    from threadpoolctl import threadpool_limits

    from ..queue.dsn import queue_dsn  # psycopg and procrastinate load only here

    # A lone worker's BLAS would take every core for a while; two workers would then fight
    # for them. One worker process per core, each on one thread, scales (bench/book_queue.py).
    threadpool_limits(limits=blas_threads)
    from ..queue.work import WorkerContext
    from ..queue.worker import quiet_procrastinate, run_worker, worker_name

    dsn = queue_dsn(app.config)
    quiet_procrastinate(app.debug)
    name = worker_name()
    metrics, server = _metrics(metrics_port or app.config.run.metrics_port, dsn)
    ctx = WorkerContext(app.config, app.plugins, dsn, name, quiet, metrics)
    if not quiet:
        click.echo(f"worker {name} on the queue; stop it with Ctrl-C or SIGTERM", err=True)
    try:
        asyncio.run(run_worker(ctx, concurrency, app.config.run.lease_s))
    finally:
        if server is not None:
            server.stop()


def _metrics(port: int | None, dsn: str) -> tuple[Metrics, MetricsServer | None]:
    """One `Metrics` for every run of this process (each chapter's manager counts into it),
    served with the queue's depth when a port is given."""
    from ..queue.worker import queue_depth

    if port is None:
        return NULL, None
    metrics = Metrics()
    metrics.watch_queue(queue_depth(dsn))
    return metrics, serve_metrics(metrics, port)
