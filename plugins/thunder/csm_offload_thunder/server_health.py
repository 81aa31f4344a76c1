"""A worker server's `/healthz` as the core's `Health`.

The server runs one job at a time (one GPU runs one CSM batch at a time) and holds at most
`max_queue` more. So it is one worker, as RunPod's `/health` counts them, whose queue depth is
its `queued`: the runner's batch sizing then fills whole `max_batch` batches (batching is what
makes one GPU fast) and its adaptive in-flight cap follows from the worker count.
"""

from __future__ import annotations

import time

from csm_offload import Health, httpapi
from csm_offload.worker_client import WorkerHealth

from .locate import BILLING

#: Jobs a worker server runs at once.
RUNNING_SLOTS = 1


def capacity(found: WorkerHealth) -> int:
    """Jobs the server holds at once, running and queued; one more is answered 429."""
    return RUNNING_SLOTS + max(0, found.max_queue)


def worker_health(found: WorkerHealth, prefix: str = "") -> Health:
    """`prefix` describes the instance the server runs on (empty when it is not known)."""
    queued, running = max(0, found.queued), max(0, found.running)
    detail = (
        f"{prefix}worker: {httpapi.snippet(found.detail)}; {running} running, {queued} queued "
        f"(holds {capacity(found)}: {RUNNING_SLOTS} running + {max(0, found.max_queue)} "
        f"queued); {BILLING}"
    )
    return Health(
        ok=found.ok,
        detail=detail,
        queue_depth=queued,
        workers=RUNNING_SLOTS,
        checked_at=time.time(),
        capacity=capacity(found),
    )
