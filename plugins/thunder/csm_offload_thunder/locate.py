"""Where a Thunder target's worker server is, and whether its instance can serve now.

A target names its server by `url`, or by `instance_id`: then Thunder's instance list gives the
instance's state and uuid, and the server is at the uuid's forwarded port. The uuid last seen
is remembered (health refreshes it), so submits and polls need no call to Thunder's API.
"""

from __future__ import annotations

from collections.abc import Mapping

import httpx

from csm_offload import Target, Unavailable

from .instances import Instance, Phase, find, list_instances
from .settings import ThunderSettings

#: A VM costs money whatever it does: said wherever an existing instance is described.
BILLING = "the VM bills per minute while it exists, working or idle"
#: (api_url, instance_id) -> the instance's uuid when Thunder's API last showed it.
_uuids: dict[tuple[str, str], str] = {}
_LISTED = 8


def _key(settings: ThunderSettings) -> tuple[str, str]:
    return settings.api_url, settings.instance_id or ""


def forget() -> None:
    """Drop every remembered uuid (tests, and a process that changes accounts)."""
    _uuids.clear()


def _listing(instances: Mapping[str, Instance]) -> str:
    if not instances:
        return "your account has no instances"
    shown = [f"{i.id} ({i.status})" for i in list(instances.values())[:_LISTED]]
    more = f" and {len(instances) - _LISTED} more" if len(instances) > _LISTED else ""
    return "your instances are " + ", ".join(shown) + more


async def look_up(target: Target, settings: ThunderSettings, http: httpx.AsyncClient) -> Instance:
    """The configured instance as Thunder's API shows it now. Raises the API call's typed
    error, or `Unavailable` naming the instance when it is not in the account."""
    instances = await list_instances(target, settings, http)
    found = find(instances, settings.instance_id or "")
    if found is None:
        raise Unavailable(
            f"Thunder instance {settings.instance_id!r} was not found ({_listing(instances)}): "
            "deleted? create one (`tnr create`) and set instance_id to its ID",
            target=target.name,
        )
    if found.uuid:
        _uuids[_key(settings)] = found.uuid
    return found


def problem(instance: Instance, settings: ThunderSettings) -> str | None:
    """Why the worker server on `instance` cannot answer now, or None when it should."""
    phase, said = instance.phase, instance.describe()
    if phase is Phase.BOOTING:
        return f"{said}, not serving yet: the worker answers once it is RUNNING; {BILLING}"
    if phase is Phase.STOPPED:
        return f"{said}: nothing runs on it; start it or create a new instance; {BILLING}"
    if phase is Phase.DELETING:
        return f"{said} (being deleted): create another instance and set instance_id"
    if phase is Phase.UNKNOWN:
        return f"{said}, not RUNNING: the worker cannot be reached until it is; {BILLING}"
    if settings.url is None:
        return _forwarding_problem(instance, settings)
    return None


def _forwarding_problem(instance: Instance, settings: ThunderSettings) -> str | None:
    if instance.uuid is None:
        return f"Thunder's answer for instance {instance.id} has no usable uuid; set url instead"
    if settings.port not in instance.http_ports:
        return (
            f"port {settings.port} of Thunder instance {instance.id} is not forwarded: run "
            f"`tnr ports forward {instance.id} --add {settings.port}`; {BILLING}"
        )
    return None


async def instance_uuid(target: Target, settings: ThunderSettings, http: httpx.AsyncClient) -> str:
    """The configured instance's uuid: remembered, else asked of Thunder's API (which also
    says whether the instance can serve)."""
    known = _uuids.get(_key(settings))
    if known is not None:
        return known
    instance = await look_up(target, settings, http)
    why = problem(instance, settings)
    if why is not None:
        raise Unavailable(why, target=target.name)
    return instance.uuid or ""


def url_for(target: Target, settings: ThunderSettings, uuid: str | None) -> str:
    """The server's base URL: the configured `url`, else instance `uuid`'s forwarded port."""
    if settings.url:
        return settings.url
    try:
        return settings.worker_url(uuid or "")
    except ValueError as exc:
        raise Unavailable(str(exc), target=target.name) from None
