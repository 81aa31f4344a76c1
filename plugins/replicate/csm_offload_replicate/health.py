"""Judging a target's health from the one route Replicate has for it.

Replicate exposes no queue depth or worker count for a model, so health says whether the
thing the target runs exists and the token may use it: a deployment (`GET
/v1/deployments/{owner}/{name}`: its current release and hardware), a model version (`GET
/v1/models/{owner}/{name}/versions/{id}`), or for a bare version id, which no route looks up,
the account the token belongs to (`GET /v1/account`).
"""

from __future__ import annotations

from typing import Any

from csm_offload import Health

from .names import ModelRef


def judge(data: dict[str, Any], model: ModelRef, gpu: str | None) -> Health:
    if model.is_deployment:
        return _deployment(data, model, gpu)
    if model.owner is not None:
        ok = data.get("id") == model.version_id
        detail = f"model {model.owner}/{model.name} {model.label}"
        return Health(ok=ok, detail=detail + (" found" if ok else ": not in the answer"))
    return Health(
        ok=True,
        detail=f"API token accepted; {model.label} not checked (give version as "
        "owner/name:<id> to have it looked up)",
    )


def _deployment(data: dict[str, Any], model: ModelRef, gpu: str | None) -> Health:
    release = data.get("current_release")
    config = release.get("configuration") if isinstance(release, dict) else None
    if not isinstance(config, dict):
        return Health(ok=False, detail=f"{model.label} has no current release; create one")
    hardware = config.get("hardware")
    low, high = config.get("min_instances"), config.get("max_instances")
    workers = high if type(high) is int and high >= 0 else None
    shown = hardware if isinstance(hardware, str) and len(hardware) <= 40 else "unknown hardware"
    detail = f"{model.label}: {shown}, {_count(low)} to {_count(high)} instances"
    if gpu and isinstance(hardware, str) and hardware != gpu:
        detail += f" (priced as {gpu}: set the target's gpu to {shown})"
    return Health(ok=workers != 0, detail=detail, workers=workers)


def _count(value: Any) -> str:
    return str(value) if type(value) is int and value >= 0 else "?"
