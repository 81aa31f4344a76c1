"""The settings of a `replicate` target (everything under `providers: <name>:` but the common
keys). Every check raises `ValueError("<key>: ...")`, which the config reports at that key."""

from __future__ import annotations

import math
from typing import Any

import attrs

from csm_offload import Secret

from .names import DEFAULT_BASE_URL, ModelRef, Routes, check_base_url, resolve

#: Replicate holds a `Prefer: wait=N` request open for N seconds, 1 to 60.
MIN_WAIT_S = 1
MAX_WAIT_S = 60
#: Seconds a call that does not wait on purpose may take, its body included.
CALL_TOTAL_S = 60.0


def _as_secret(value: Any) -> Secret:
    return value if isinstance(value, Secret) else Secret(str(value))


def _non_negative(_instance: Any, attribute: attrs.Attribute, value: float) -> None:
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{attribute.name}: must be a finite number >= 0, got {value}")


def _positive(_instance: Any, attribute: attrs.Attribute, value: float) -> None:
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{attribute.name}: must be a finite number > 0, got {value}")


def _wait_range(_instance: Any, attribute: attrs.Attribute, value: int) -> None:
    if not MIN_WAIT_S <= value <= MAX_WAIT_S:
        raise ValueError(
            f"{attribute.name}: Replicate waits {MIN_WAIT_S} to {MAX_WAIT_S} s "
            f"(Prefer: wait=N), got {value}; set use_wait: false to never wait"
        )


@attrs.frozen
class ReplicateSettings:
    """A Replicate model version or deployment running `plugins/replicate/cog`. See
    docs/providers.md and docs/replicate.md for every key."""

    api_token: Secret = attrs.field(converter=_as_secret)
    #: `owner/name:<64-hex id>` (or the bare id): the version `cog push` made.
    version: str | None = None
    #: `owner/name` of a deployment of that model (your own instances and queue).
    deployment: str | None = None
    base_url: str = DEFAULT_BASE_URL
    #: Send short jobs with `Prefer: wait=<wait_s>`, so their answer comes on the create call.
    use_wait: bool = True
    wait_s: int = attrs.field(default=MAX_WAIT_S, validator=_wait_range)
    #: Predicted GPU seconds per character of text (estimates, and which jobs are short).
    seconds_per_char: float = attrs.field(default=0.05, validator=_non_negative)
    #: Predicted GPU seconds every job costs on top of its text.
    job_overhead_s: float = attrs.field(default=1.0, validator=_non_negative)
    #: True only for a version of a public model called without a deployment: Replicate then
    #: bills active time alone. Private models and deployments also bill setup and idle time.
    public_model: bool = False
    #: Seconds any call but a `Prefer: wait` create may take, its whole body included.
    call_total_s: float = attrs.field(default=CALL_TOTAL_S, validator=_positive)

    def __attrs_post_init__(self) -> None:
        if not self.api_token:
            raise ValueError(
                "api_token: empty; set REPLICATE_API_TOKEN (api_token: ${REPLICATE_API_TOKEN})"
            )
        model = self.model()
        check_base_url(self.base_url)
        if self.public_model and model.is_deployment:
            raise ValueError(
                "public_model: a deployment runs your own instances, billed for setup and idle "
                "time too; leave public_model false with a deployment"
            )

    def model(self) -> ModelRef:
        return resolve(self.version, self.deployment)

    def routes(self) -> Routes:
        return Routes(check_base_url(self.base_url), self.model())
