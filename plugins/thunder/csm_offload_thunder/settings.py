"""A Thunder target's settings: where its worker server is, and the two credentials.

Two secrets, each with one home: `worker_token` (the token `csm-offload serve` was started
with) goes only to the VM's URL, and `api_token` (`TNR_API_TOKEN`) only to Thunder's API. Both
URLs are checked here, once, so a typo cannot send a token in clear text or to another host.
Every refusal is a `ValueError` whose message starts with the key it is about, which the
config loader turns into `file:line: key: ...`.
"""

from __future__ import annotations

import re
from typing import Any

import attrs

from csm_offload import Secret
from csm_offload.worker_client import check_url, is_loopback
from csm_offload.worker_jobs import check_poll_wait, check_seconds, optional_secret

__all__ = ["ThunderSettings", "check_url", "is_loopback"]

DEFAULT_API_URL = "https://api.thundercompute.com:8443/v1"
#: Where Thunder serves a forwarded port (docs: "Port Forwarding", `tnr ports list`).
DEFAULT_FORWARDED_URL = "https://{uuid}-{port}.thundercompute.net"
#: An instance uuid becomes part of a host name: one DNS label, nothing that could end it.
UUID = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
#: `tnr status` names instances by a short id ("0"); its uuid is accepted too.
INSTANCE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")


def _port(_instance: Any, attribute: attrs.Attribute, value: int) -> None:
    if not 1 <= value <= 65535 or value == 22:
        raise ValueError(
            f"{attribute.name}: must be a port from 1 to 65535 other than 22 "
            f"(Thunder keeps 22 for SSH), got {value}"
        )


@attrs.frozen
class ThunderSettings:
    """A worker server (`csm-offload serve`) on a Thunder Compute VM. See docs/thunder.md."""

    #: The server's URL: its forwarded port, `https://<instance-uuid>-8000.thundercompute.net`.
    url: str | None = None
    #: The server's bearer token (`${CSM_OFFLOAD_WORKER_TOKEN}`); sent only to `url`.
    worker_token: Secret | None = attrs.field(default=None, converter=optional_secret)
    #: The instance (`tnr status` id such as "0", or its uuid): its state and URL are found
    #: through Thunder's API with `api_token`.
    instance_id: str | None = None
    #: The VM port `serve` listens on and Thunder forwards.
    port: int = attrs.field(default=8000, validator=_port)
    #: Thunder's API token (`${TNR_API_TOKEN}`); sent only to `api_url`.
    api_token: Secret | None = attrs.field(default=None, converter=optional_secret)
    api_url: str = DEFAULT_API_URL
    #: Where a forwarded port is reached; `{uuid}` and `{port}` are filled in.
    forwarded_url: str = DEFAULT_FORWARDED_URL
    #: Predicted VM seconds per character of text, and per job, for estimates.
    seconds_per_char: float = attrs.field(default=0.05, validator=check_seconds)
    job_overhead_s: float = attrs.field(default=1.0, validator=check_seconds)
    #: A poll waits up to this long for the job to finish (the server's long-poll): the job's
    #: end is seen at once instead of at the next poll. 0 turns it off.
    poll_wait_s: float = attrs.field(default=10.0, validator=check_poll_wait)

    def __attrs_post_init__(self) -> None:
        if not self.url and not self.instance_id:
            raise ValueError(
                "url: give url (the forwarded URL of `csm-offload serve`, "
                "https://<instance-uuid>-8000.thundercompute.net) or instance_id "
                "(with api_token, to find it through Thunder's API)"
            )
        if self.url:
            object.__setattr__(self, "url", check_url(self.url, "url"))
        if self.instance_id is not None:
            self._check_instance()
        object.__setattr__(self, "api_url", check_url(self.api_url, "api_url"))
        self.worker_url("uuid0")  # a template that cannot make a URL fails here, not later
        self._check_tokens()

    def _check_instance(self) -> None:
        if not INSTANCE_ID.fullmatch(self.instance_id or ""):
            raise ValueError(
                f"instance_id: {self.instance_id!r} is not a Thunder instance id; give the ID "
                'that `tnr status` shows (e.g. "0", quoted) or the instance uuid'
            )
        if not self.api_token:
            raise ValueError(
                "api_token: instance_id is looked up through Thunder's API, which needs your "
                "token: set api_token: ${TNR_API_TOKEN} (or give url instead)"
            )

    def _check_tokens(self) -> None:
        remote = self.url is None or not is_loopback(self.url)
        if remote and not self.worker_token:
            raise ValueError(
                "worker_token: a worker server off this machine needs its token: set "
                "worker_token: ${CSM_OFFLOAD_WORKER_TOKEN}, the token `csm-offload serve` "
                "was started with"
            )
        worker = self.worker_token.reveal() if self.worker_token else ""
        if worker and self.api_token and worker == self.api_token.reveal():
            raise ValueError(
                "worker_token: must not be your Thunder API token (the VM would receive it); "
                "start `csm-offload serve` with a token of its own"
            )

    def worker_url(self, uuid: str) -> str:
        """The forwarded URL of instance `uuid`'s port. The uuid comes from Thunder's answer,
        so it is checked to be one DNS label: it cannot move the token to another host."""
        if not UUID.fullmatch(uuid):
            raise ValueError(f"instance uuid {uuid[:80]!r} cannot be part of a host name")
        url = self.forwarded_url.replace("{uuid}", uuid.lower()).replace("{port}", str(self.port))
        if "{" in url or "}" in url:
            raise ValueError("forwarded_url: only {uuid} and {port} can be filled in")
        return check_url(url, "forwarded_url")
