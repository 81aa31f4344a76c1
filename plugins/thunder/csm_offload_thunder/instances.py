"""Thunder Compute's instance list: `GET <api_url>/instances/list`, read into `Instance`s.

The documented shape (Thunder's OpenAPI, `thundertypes.InstanceListResponse`, and the `tnr`
CLI's `pkg/types`): a JSON object keyed by instance id ("0", "1", ...), each value an object
with `uuid`, `status` (upper case), `ip`, `httpPorts` (the forwarded ports, left out when there
are none), `gpuType`, `name` and more, numbers such as `numGpus` as strings. Only the fields we
use are read, each checked for its type; anything else in the answer is ignored.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Any

import attrs
import httpx

from csm_offload import Target, TransientError, Unavailable, httpapi

from .settings import INSTANCE_ID, UUID, ThunderSettings

#: An instance list is a few hundred bytes per instance.
MAX_ANSWER_BYTES = 1024 * 1024
#: A status or name quoted to the user is cut to this.
_TEXT_CHARS = 40


class Phase(enum.Enum):
    """What an instance's status means for a worker server on it."""

    READY = "ready"
    #: Being created, started, restored, resized or snapshotted: not serving yet.
    BOOTING = "booting"
    STOPPED = "stopped"
    DELETING = "deleting"
    UNKNOWN = "unknown"


#: The statuses of the `tnr` CLI's `InstanceStatus` and of Thunder's docs ("Instance States").
PHASES: Mapping[str, Phase] = {
    "RUNNING": Phase.READY,
    **dict.fromkeys(
        ("PROVISIONING", "QUEUED", "PENDING", "CREATING", "STARTING", "RESTORING"),
        Phase.BOOTING,
    ),
    # A resize or a snapshot in progress: the VM is not serving until it is RUNNING again.
    **dict.fromkeys(("MODIFYING", "SNAPPING"), Phase.BOOTING),
    **dict.fromkeys(("STOPPING", "STOPPED"), Phase.STOPPED),
    "DELETING": Phase.DELETING,
}


@attrs.frozen
class Instance:
    id: str
    status: str
    #: None when the answer carries no uuid usable in a host name.
    uuid: str | None = None
    http_ports: tuple[int, ...] = ()
    gpu_type: str = ""

    @property
    def phase(self) -> Phase:
        return PHASES.get(self.status, Phase.UNKNOWN)

    def describe(self) -> str:
        gpu = f" ({self.gpu_type})" if self.gpu_type else ""
        return f"Thunder instance {self.id}{gpu} is {self.status or 'without a status'}"


def _text(value: Any) -> str:
    if not isinstance(value, str):
        return ""
    return httpapi.snippet(value)[:_TEXT_CHARS]


def _ports(value: Any) -> tuple[int, ...]:
    if not isinstance(value, list):
        return ()
    return tuple(p for p in value if type(p) is int and 0 < p < 65536)


def parse_instance(key: str, item: Mapping[str, Any]) -> Instance:
    uuid = item.get("uuid")
    return Instance(
        id=key,
        status=_text(item.get("status")).upper(),
        uuid=uuid if isinstance(uuid, str) and UUID.fullmatch(uuid) else None,
        http_ports=_ports(item.get("httpPorts")),
        gpu_type=_text(item.get("gpuType")),
    )


def _is_instance(key: Any, item: Any) -> bool:
    return (
        isinstance(key, str)
        and INSTANCE_ID.fullmatch(key) is not None
        and isinstance(item, dict)
        and isinstance(item.get("status"), str)
    )


def parse_instances(data: Any, target: str | None = None) -> dict[str, Instance]:
    """The instances of an `instances/list` answer, by id. Entries that are not instances
    (not an object, no status, an id we could not name) are skipped, never guessed at."""
    if not isinstance(data, dict):
        raise TransientError(
            "Thunder instances/list: expected a JSON object keyed by instance id", target=target
        )
    found: dict[str, Instance] = {}
    for key, item in data.items():
        if _is_instance(key, item):
            found[key] = parse_instance(key, item)
    return found


def find(instances: Mapping[str, Instance], wanted: str) -> Instance | None:
    """The instance `tnr` would pick for `wanted`: by id, else by uuid."""
    if wanted in instances:
        return instances[wanted]
    wanted = wanted.lower()
    return next((i for i in instances.values() if (i.uuid or "").lower() == wanted), None)


async def list_instances(
    target: Target, settings: ThunderSettings, http: httpx.AsyncClient
) -> dict[str, Instance]:
    """One call to Thunder's API with the API token, which goes to `api_url` and nowhere else
    (redirects are not followed)."""
    what = "Thunder API instances/list"
    if not settings.api_token:  # the settings refuse an instance_id without it
        raise Unavailable(f"{what}: no api_token configured", target=target.name)
    token = settings.api_token.reveal()
    headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
    answer = await httpapi.send(
        http,
        "GET",
        f"{settings.api_url}/instances/list",
        what=what,
        target=target.name,
        headers=headers,
        max_bytes=MAX_ANSWER_BYTES,
    )
    # An API may echo the request's headers into its answers: the token never reaches a message.
    answer = attrs.evolve(answer, body=answer.body.replace(token.encode(), b"***"))
    _raise_for_status(answer, what, target.name, settings.api_url)
    return parse_instances(answer.json(what, target.name, MAX_ANSWER_BYTES), target.name)


def _raise_for_status(answer: httpapi.Answer, what: str, target: str, api_url: str) -> None:
    """The core's mapping, with the fix named for the two answers a user can fix."""
    if answer.status in (401, 403):
        raise Unavailable(
            f"{what} refused the API token (HTTP {answer.status}): check api_token "
            "(TNR_API_TOKEN; tokens are made at console.thundercompute.com/settings/tokens)",
            target=target,
        )
    wrong_url = Unavailable(f"{what} answered 404: check api_url ({api_url})", target=target)
    httpapi.raise_for_status(answer, what, target, not_found=wrong_url)
