"""The hook specifications. Provider hooks are `async def` here, and must be in plugins too."""

from __future__ import annotations

from typing import Any

from pluggy import HookimplMarker, HookspecMarker

hookspec = HookspecMarker("csm_offload")
hookimpl = HookimplMarker("csm_offload")


@hookspec
def provider_info() -> Any:
    """Describe this provider: kind, settings type, dated GPU price table and limits."""


@hookspec(firstresult=True)
def estimate_cost(target: Any, batch: Any) -> Any:
    """Return the `CostEstimate` of running `batch` (a list of requests) on `target`; pure."""


@hookspec(firstresult=True)
async def health(target: Any, http: Any) -> Any:
    """Return the target's `Health`: can it take work now, and how busy is it."""


@hookspec(firstresult=True)
async def submit(target: Any, batch: Any, http: Any) -> Any:
    """Send `batch` to the target and return a `JobHandle` without waiting for the audio."""


@hookspec(firstresult=True)
async def poll(target: Any, handle: Any, http: Any) -> Any:
    """Return the `JobStatus` of the job behind `handle`."""


@hookspec(firstresult=True)
async def decode(target: Any, status: Any, http: Any) -> Any:
    """Turn a completed `JobStatus` into a list of `Audio`, in request order."""


@hookspec(firstresult=True)
async def cancel(target: Any, handle: Any, http: Any) -> Any:
    """Cancel the job behind `handle`; a job already finished is not an error."""


@hookspec
def register_commands(cli: Any) -> None:
    """Add click commands to the `csm-offload` command group."""
