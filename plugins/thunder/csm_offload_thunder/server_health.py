"""A worker server's `/healthz` as the core's `Health`, with what a Thunder VM bills.

The mapping itself (one worker, its queue, its capacity) is the core's, shared with every
provider of a worker server (`csm_offload.worker_jobs`); a Thunder VM adds its billing note,
since it costs money while it exists whether or not the server is busy.
"""

from __future__ import annotations

from csm_offload import Health, worker_jobs
from csm_offload.worker_client import WorkerHealth
from csm_offload.worker_jobs import RUNNING_SLOTS, capacity

from .locate import BILLING

__all__ = ["RUNNING_SLOTS", "capacity", "worker_health"]


def worker_health(found: WorkerHealth, prefix: str = "") -> Health:
    """`prefix` describes the instance the server runs on (empty when it is not known)."""
    return worker_jobs.worker_health(found, prefix, note=BILLING)
