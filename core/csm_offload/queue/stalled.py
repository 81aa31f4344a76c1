"""Jobs of dead workers back to the queue. A worker killed with SIGKILL leaves its jobs in
`doing` and its heartbeat row ageing in `procrastinate_workers`; every worker looks, every
half lease, for jobs whose worker has not beaten for a whole lease (`run.lease_s`) and retries
them. The chapter it was making is then taken by another worker: its finished chunks come from
the journal, its in-flight jobs are re-attached by the journal's claims (never paid twice)."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import procrastinate
from procrastinate import exceptions

logger = logging.getLogger(__name__)


def heartbeat_s(lease_s: float) -> float:
    """How often a worker beats: four times a lease, so one late beat never looks dead."""
    return max(0.5, lease_s / 4)


async def retry_stalled(app: procrastinate.App, lease_s: float) -> int:
    """Every job whose worker missed a lease of heartbeats back to `todo`; returns how many.
    Two workers may find the same job: the second one's retry finds it not `doing` and is
    ignored."""
    retried = 0
    manager = app.job_manager
    for job in await manager.get_stalled_jobs(seconds_since_heartbeat=lease_s):
        with contextlib.suppress(exceptions.ConnectorException):
            await manager.retry_job(job)
            retried += 1
            logger.warning("job %s of a dead worker is back in the queue", job.id)
    # The dead workers' rows go too, so `csm-offload queue` lists the live ones only.
    await manager.prune_stalled_workers(lease_s)
    return retried


async def retry_forever(app: procrastinate.App, lease_s: float) -> None:
    while True:
        await asyncio.sleep(lease_s / 2)
        try:
            await retry_stalled(app, lease_s)
        except exceptions.ConnectorException as exc:  # the database is away: try next time
            logger.warning("could not look for stalled jobs: %s", exc)
