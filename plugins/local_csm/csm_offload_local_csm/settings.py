"""The worker server's settings, their defaults, and the checks `serve` makes before binding.

The defaults are sized for a server that faces the internet (docs/worker-server.md, "Limits and
timeouts"); `check_settings` refuses, before the port is bound or the model loads, the settings
that would leave the GPU open to all or make a limit meaningless.
"""

from __future__ import annotations

import ipaddress
import math

import attrs

from csm_offload import UserError
from csm_offload.secret import Secret
from csm_offload.wire import WireLimits

#: Server defaults: a text limit a little above what a long paragraph needs.
DEFAULT_SERVER_LIMITS = WireLimits(
    max_body_bytes=32 * 1024 * 1024, max_requests=16, max_text_chars=2_000
)
#: Open connections, each a file descriptor: far above what the job queue can use, far below
#: the usual descriptor limits.
DEFAULT_MAX_CONNECTIONS = 256
#: A request line and headers are a few hundred bytes: any client sends them in well under this.
DEFAULT_HEADER_TIMEOUT_S = 5.0
#: Longer than clients keep idle connections (httpx: 5 s), so that a client never sends a
#: request on a connection the server is closing at that moment.
DEFAULT_KEEP_ALIVE_S = 15.0
#: The body's base allowance; `guard.BODY_SECONDS_PER_BYTE` adds time for large bodies.
DEFAULT_BODY_TIMEOUT_S = 10.0


@attrs.frozen
class ServerSettings:
    host: str = "127.0.0.1"
    port: int = 8000
    token: Secret | None = None
    max_queue: int = 8
    result_ttl_s: float = 600.0
    max_wait_s: float = 60.0
    limits: WireLimits = DEFAULT_SERVER_LIMITS
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    header_timeout_s: float = DEFAULT_HEADER_TIMEOUT_S
    keep_alive_s: float = DEFAULT_KEEP_ALIVE_S
    body_timeout_s: float = DEFAULT_BODY_TIMEOUT_S


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_settings(settings: ServerSettings) -> None:
    """Refuse to serve without a token anywhere but loopback: the GPU would be open to all."""
    if not settings.token and not is_loopback(settings.host):
        raise UserError(
            f"binding {settings.host} needs a token: set CSM_OFFLOAD_WORKER_TOKEN "
            "(or --token) to a long random string, or bind 127.0.0.1"
        )
    if settings.max_queue < 1:
        raise UserError("max_queue must be 1 or more")
    if settings.max_connections < 1:
        raise UserError("max_connections must be 1 or more")
    for name in ("header_timeout_s", "keep_alive_s", "body_timeout_s"):
        value = getattr(settings, name)
        if not (math.isfinite(value) and value > 0):
            raise UserError(f"{name} must be a positive number of seconds, got {value}")
