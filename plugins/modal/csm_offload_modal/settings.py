"""A `kind: modal` target's settings, checked so that every mistake names its key and the fix.

The proxy-auth token is sent only to the configured endpoint's host, never across a redirect
(`csm_offload.httpapi.send` follows none), and only over https, except to this machine (tests,
a local `modal serve` tunnel): a token in clear text could be read on the way.
"""

from __future__ import annotations

import math
import urllib.parse
from typing import Any

import attrs

from csm_offload import Secret
from csm_offload.httpapi import DEFAULT_TOTAL_S

from . import protocol

_LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})
#: Route suffixes a pasted endpoint URL may end in; they are dropped.
_ROUTES = (protocol.JOBS, protocol.HEALTH)
#: Where the two halves of a Proxy Auth Token come from, for the messages.
_KEY_HELP = {
    "key": "the Proxy Auth Token's ID (wk-…); set MODAL_KEY or the target's key",
    "secret": "the Proxy Auth Token's secret (ws-…); set MODAL_SECRET or the target's secret",
}


def _as_secret(value: Any) -> Secret:
    return value if isinstance(value, Secret) else Secret(str(value))


def _non_negative(_instance: Any, attribute: attrs.Attribute, value: float) -> None:
    if isinstance(value, bool) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{attribute.name}: must be a finite number >= 0, got {value!r}")


def _positive(_instance: Any, attribute: attrs.Attribute, value: float) -> None:
    _non_negative(_instance, attribute, value)
    if value == 0:
        raise ValueError(f"{attribute.name}: must be above 0")


def endpoint_url(url: str) -> str:
    """The web endpoint's base URL (no trailing slash or route), or ValueError naming `url`."""
    parts = urllib.parse.urlsplit(url.strip())
    shape = "https://<workspace>--csm-offload-web.modal.run, as `modal deploy` prints it"
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise ValueError(f"url: expected {shape}; got {url!r}")
    if parts.username or parts.password:
        raise ValueError("url: must not carry credentials; use key and secret")
    if parts.query or parts.fragment:
        raise ValueError(f"url: must not have a query or fragment; expected {shape}")
    if parts.scheme == "http" and parts.hostname not in _LOOPBACK:
        raise ValueError(
            "url: plain http is only allowed to 127.0.0.1 or localhost (the proxy-auth token "
            "would travel unencrypted); use the https:// URL `modal deploy` prints"
        )
    path = parts.path.rstrip("/")
    for route in _ROUTES:
        path = path.removesuffix(route)
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, path.rstrip("/"), "", ""))


@attrs.frozen
class ModalSettings:
    """The deployed app's web endpoint and a Proxy Auth Token. See docs/modal.md."""

    #: The web endpoint `modal deploy` prints (`https://<workspace>--csm-offload-web.modal.run`).
    url: str = attrs.field(converter=endpoint_url)
    #: Proxy Auth Token ID, sent as `Modal-Key` (${MODAL_KEY}).
    key: Secret = attrs.field(converter=_as_secret)
    #: Proxy Auth Token secret, sent as `Modal-Secret` (${MODAL_SECRET}).
    secret: Secret = attrs.field(converter=_as_secret)
    #: Predicted GPU seconds per character of text (estimates only; the journal learns better).
    seconds_per_char: float = attrs.field(default=0.05, validator=_non_negative)
    #: Predicted GPU seconds every job costs on top of its text.
    job_overhead_s: float = attrs.field(default=1.0, validator=_non_negative)
    #: The app's `scaledown_window` (CSM_OFFLOAD_MODAL_SCALEDOWN_S at deploy): seconds an idle
    #: GPU container stays up, and billed, after its last job. Named in every estimate's basis.
    scaledown_window_s: float = attrs.field(default=60.0, validator=_non_negative)
    #: Seconds any call to the endpoint may take, its whole answer included.
    call_total_s: float = attrs.field(default=DEFAULT_TOTAL_S, validator=_positive)

    def __attrs_post_init__(self) -> None:
        for name in ("key", "secret"):
            if not getattr(self, name):
                raise ValueError(f"{name}: empty; {_KEY_HELP[name]}")

    def headers(self) -> dict[str, str]:
        """The proxy-auth headers: built only where a request to the endpoint is made."""
        return {
            protocol.KEY_HEADER: self.key.reveal(),
            protocol.SECRET_HEADER: self.secret.reveal(),
        }
