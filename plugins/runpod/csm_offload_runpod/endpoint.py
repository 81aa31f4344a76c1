"""Where a RunPod serverless endpoint lives: its base URL, its id, and the URL of each route.

Users paste endpoint URLs in several shapes (the seed's `.../v2/<id>/run`, the console's
`.../v2/<id>`), or give the bare id; all of them resolve to one `Endpoint`. The API key is only
ever sent to the host of that URL, so the URL is checked strictly here.
"""

from __future__ import annotations

import re
import urllib.parse

import attrs

DEFAULT_BASE_URL = "https://api.runpod.ai/v2"
#: Route names a pasted endpoint URL may end in; they are stripped to find the endpoint.
ROUTES = ("run", "runsync", "status", "stream", "cancel", "health", "purge-queue", "retry")
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,127}")
_LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1", "[::1]"})


@attrs.frozen
class Endpoint:
    """A resolved endpoint: `base` is everything before the id (`https://api.runpod.ai/v2`)."""

    base: str
    endpoint_id: str

    @property
    def url(self) -> str:
        return f"{self.base}/{self.endpoint_id}"

    @property
    def host(self) -> str:
        return urllib.parse.urlsplit(self.base).netloc

    def route(self, name: str, job_id: str | None = None) -> str:
        if job_id is None:
            return f"{self.url}/{name}"
        return f"{self.url}/{name}/{urllib.parse.quote(job_id, safe='')}"


def check_base_url(base: str, field: str = "base_url") -> str:
    """A base URL without a trailing slash; https, or plain http to this machine only (the API
    key would otherwise cross the network in clear text)."""
    parts = urllib.parse.urlsplit(base.strip())
    if parts.scheme not in ("https", "http") or not parts.netloc:
        raise ValueError(f"{field}: expected an https:// URL, got {base!r}")
    if parts.username or parts.password:
        raise ValueError(f"{field}: must not carry credentials; use api_key")
    if parts.query or parts.fragment:
        raise ValueError(f"{field}: must not have a query or fragment, got {base!r}")
    if parts.scheme == "http" and (parts.hostname or "") not in _LOOPBACK:
        raise ValueError(
            f"{field}: plain http is only allowed to 127.0.0.1 or localhost "
            "(the API key would travel unencrypted); use https://"
        )
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/"), "", ""))


def check_endpoint_id(endpoint_id: str, field: str = "endpoint_id") -> str:
    if not _ID.fullmatch(endpoint_id):
        raise ValueError(
            f"{field}: {endpoint_id!r} is not a RunPod endpoint id "
            "(letters, digits, '-' and '_', as shown in the RunPod console)"
        )
    return endpoint_id


def parse_endpoint_url(url: str) -> Endpoint:
    """`https://api.runpod.ai/v2/<id>`, optionally followed by a route such as `/run`."""
    base = check_base_url(url, "endpoint_url")
    parts = urllib.parse.urlsplit(base)
    segments = [s for s in parts.path.split("/") if s]
    if segments and segments[-1] in ROUTES:
        segments.pop()
    if not segments:
        raise ValueError(
            f"endpoint_url: {url!r} has no endpoint id; expected https://api.runpod.ai/v2/<id>"
        )
    endpoint_id = check_endpoint_id(urllib.parse.unquote(segments[-1]), "endpoint_url")
    prefix = "/" + "/".join(segments[:-1]) if len(segments) > 1 else ""
    base = urllib.parse.urlunsplit((parts.scheme, parts.netloc, prefix, "", ""))
    return Endpoint(base, endpoint_id)


def resolve(
    endpoint_url: str | None, endpoint_id: str | None, base_url: str = DEFAULT_BASE_URL
) -> Endpoint:
    """The endpoint from the settings: `endpoint_url` wins; else `base_url` + `endpoint_id`."""
    if endpoint_url:
        endpoint = parse_endpoint_url(endpoint_url)
        if endpoint_id and endpoint_id != endpoint.endpoint_id:
            raise ValueError(
                f"endpoint_id {endpoint_id!r} disagrees with endpoint_url's id "
                f"{endpoint.endpoint_id!r}; give one of them"
            )
        return endpoint
    if endpoint_id:
        return Endpoint(check_base_url(base_url), check_endpoint_id(endpoint_id))
    raise ValueError(
        "give endpoint_url (https://api.runpod.ai/v2/<id>, e.g. from RUNPOD_ENDPOINT_URL) "
        "or endpoint_id"
    )
