"""A `worker` target's settings: where its `csm-offload serve` is, and that server's token.

One secret with one home: `worker_token` (the token the server was started with) goes only to
`url`, which is checked here, once, with the core's check for every worker server's URL
(https, or plain http to this machine only), so a typo cannot send the token in clear text.
Every refusal is a `ValueError` whose message starts with the key it is about, which the
config loader turns into `file:line: key: ...`.
"""

from __future__ import annotations

import attrs

from csm_offload import Secret
from csm_offload.worker_client import check_url, is_loopback
from csm_offload.worker_jobs import check_poll_wait, check_seconds, optional_secret

__all__ = ["WorkerSettings", "check_url"]


@attrs.frozen
class WorkerSettings:
    """A worker server (`csm-offload serve`) on a GPU box you own. See docs/worker-target.md."""

    #: The server's base URL, `https://gpu1.example.com:8000` (no `/v1`).
    url: str = ""
    #: The server's bearer token (`${CSM_OFFLOAD_WORKER_TOKEN}`); sent only to `url`.
    worker_token: Secret | None = attrs.field(default=None, converter=optional_secret)
    #: Predicted server seconds per character of text, and per job, for estimates before the
    #: core has measured this target.
    seconds_per_char: float = attrs.field(default=0.05, validator=check_seconds)
    job_overhead_s: float = attrs.field(default=1.0, validator=check_seconds)
    #: A poll waits up to this long for the job to finish (the server's long-poll): the job's
    #: end is seen at once instead of at the next poll. 0 turns it off.
    poll_wait_s: float = attrs.field(default=10.0, validator=check_poll_wait)

    def __attrs_post_init__(self) -> None:
        if not self.url.strip():
            raise ValueError(
                "url: give the URL of `csm-offload serve` on your GPU box, e.g. "
                "https://gpu1.example.com:8000 (plain http only to 127.0.0.1)"
            )
        object.__setattr__(self, "url", check_url(self.url, "url"))
        if not self.worker_token and not is_loopback(self.url):
            raise ValueError(
                "worker_token: a worker server off this machine needs its token: set "
                "worker_token: ${CSM_OFFLOAD_WORKER_TOKEN}, the token `csm-offload serve` "
                "was started with"
            )
