"""What a target runs on Replicate: a model version or a deployment, and the URL of each route.

A version is a 64-character hex id, alone or as `owner/name:<id>` (the form Replicate's docs
show; it also lets `health` look the version up). A deployment is `owner/name`. Exactly one of
the two is configured. Everything here ends up in a URL path or a request body, so it is
checked strictly and names the setting to fix.
"""

from __future__ import annotations

import re
import urllib.parse

import attrs

DEFAULT_BASE_URL = "https://api.replicate.com"
_VERSION_ID = re.compile(r"[0-9a-f]{64}")
_NAME = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}"
_MODEL_VERSION = re.compile(rf"(?P<owner>{_NAME})/(?P<name>{_NAME}):(?P<id>[0-9a-f]{{64}})")
_DEPLOYMENT = re.compile(rf"(?P<owner>{_NAME})/(?P<name>{_NAME})")
#: Prediction ids go into URL paths: nothing that could address another route.
PREDICTION_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,127}")
_LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})


@attrs.frozen
class ModelRef:
    """The `version` or `deployment` of a target, parsed."""

    #: The version exactly as configured (sent as the body's `version`), or None for a deployment.
    version: str | None
    #: `owner/name` of the model (a version given with it) or of the deployment.
    owner: str | None
    name: str | None

    @property
    def is_deployment(self) -> bool:
        return self.version is None

    @property
    def version_id(self) -> str | None:
        return None if self.version is None else self.version.rsplit(":", 1)[-1]

    @property
    def label(self) -> str:
        if self.version_id is None:
            return f"deployment {self.owner}/{self.name}"
        return f"version {self.version_id[:12]}…"


def parse_version(version: str) -> ModelRef:
    if _VERSION_ID.fullmatch(version):
        return ModelRef(version, None, None)
    found = _MODEL_VERSION.fullmatch(version)
    if found is None:
        raise ValueError(
            f"version: {version!r} is not a Replicate model version; give the 64-character "
            "version id, or owner/name:<version id>, as `cog push` prints it"
        )
    return ModelRef(version, found["owner"], found["name"])


def parse_deployment(deployment: str) -> ModelRef:
    found = _DEPLOYMENT.fullmatch(deployment)
    if found is None:
        raise ValueError(
            f"deployment: {deployment!r} is not a Replicate deployment; give owner/name "
            "(from the deployment's page, replicate.com/deployments/owner/name)"
        )
    return ModelRef(None, found["owner"], found["name"])


def resolve(version: str | None, deployment: str | None) -> ModelRef:
    """Exactly one of `version` and `deployment`."""
    if version and deployment:
        raise ValueError(
            "version: give either version or deployment, not both (a deployment already "
            "names the version it runs)"
        )
    if deployment:
        return parse_deployment(deployment)
    if version:
        return parse_version(version)
    raise ValueError(
        "version: give the model version to run (version: owner/name:<id>) or a deployment "
        "(deployment: owner/name)"
    )


def check_base_url(base: str) -> str:
    """The API's base URL without a trailing slash; https, or plain http to this machine only
    (the token would otherwise cross the network in clear text)."""
    parts = urllib.parse.urlsplit(base.strip())
    if parts.scheme not in ("https", "http") or not parts.netloc:
        raise ValueError(f"base_url: expected an https:// URL, got {base!r}")
    if parts.username or parts.password:
        raise ValueError("base_url: must not carry credentials; use api_token")
    if parts.query or parts.fragment:
        raise ValueError(f"base_url: must not have a query or fragment, got {base!r}")
    if parts.scheme == "http" and not is_loopback(parts.hostname):
        raise ValueError(
            "base_url: plain http is only allowed to 127.0.0.1 or localhost "
            "(the API token would travel unencrypted); use https://"
        )
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/"), "", ""))


def is_loopback(host: str | None) -> bool:
    return (host or "") in _LOOPBACK


@attrs.frozen
class Routes:
    """The URL of every route a target uses."""

    base: str
    model: ModelRef

    @property
    def create(self) -> str:
        if self.model.is_deployment:
            return f"{self.base}/v1/deployments/{self.model.owner}/{self.model.name}/predictions"
        return f"{self.base}/v1/predictions"

    def prediction(self, prediction_id: str) -> str:
        quoted = urllib.parse.quote(prediction_id, safe="")
        if quoted in (".", ".."):  # a dot segment would be resolved away by the URL
            quoted = quoted.replace(".", "%2E")
        return f"{self.base}/v1/predictions/{quoted}"

    def cancel(self, prediction_id: str) -> str:
        return self.prediction(prediction_id) + "/cancel"

    @property
    def health(self) -> str:
        """The deployment, the model version, or (a bare version id has no route of its own)
        the account the token belongs to."""
        model = self.model
        if model.is_deployment:
            return f"{self.base}/v1/deployments/{model.owner}/{model.name}"
        if model.owner is not None:
            return f"{self.base}/v1/models/{model.owner}/{model.name}/versions/{model.version_id}"
        return f"{self.base}/v1/account"
