"""URL outputs: when a response would be over a host's payload limit, its audio goes to an
S3-compatible bucket and the result carries a pre-signed URL instead of the bytes.

Configured by environment, with the names RunPod's own upload helper uses, so a RunPod endpoint
set up for it needs nothing new: `BUCKET_ENDPOINT_URL`, `BUCKET_ACCESS_KEY_ID`,
`BUCKET_SECRET_ACCESS_KEY`, plus `CSM_OFFLOAD_BUCKET_NAME` (required) and optionally
`CSM_OFFLOAD_BUCKET_REGION`, `CSM_OFFLOAD_BUCKET_PREFIX` and `CSM_OFFLOAD_URL_EXPIRY_S`.
The client fetches the URL without credentials (`csm_offload.results.result_audio`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from csm_offload import AudioData, AudioUrl, BatchResponse, Result, UserError, wire
from csm_offload.secret import Secret

#: SigV4 pre-signed URLs live at most seven days.
MAX_EXPIRY_S = 7 * 24 * 3600
_CONTENT_TYPES = {"flac": "audio/flac", "wav": "audio/wav"}


@attrs.frozen
class BucketConfig:
    endpoint_url: str
    access_key_id: Secret
    secret_access_key: Secret
    bucket: str
    region: str = "us-east-1"
    prefix: str = "csm-offload/"
    url_expiry_s: int = 24 * 3600

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> BucketConfig | None:
        """The bucket the environment names, None when none is, an error when half is."""
        names = ("BUCKET_ENDPOINT_URL", "BUCKET_ACCESS_KEY_ID", "BUCKET_SECRET_ACCESS_KEY")
        given = {name: env.get(name, "") for name in (*names, "CSM_OFFLOAD_BUCKET_NAME")}
        if not any(given.values()):
            return None
        missing = [name for name, value in given.items() if not value]
        if missing:
            raise UserError(f"URL outputs need {', '.join(missing)} set as well")
        expiry = _int(env.get("CSM_OFFLOAD_URL_EXPIRY_S", "86400"), "CSM_OFFLOAD_URL_EXPIRY_S")
        if not 1 <= expiry <= MAX_EXPIRY_S:
            raise UserError(f"CSM_OFFLOAD_URL_EXPIRY_S must be 1..{MAX_EXPIRY_S} seconds")
        return cls(
            endpoint_url=given["BUCKET_ENDPOINT_URL"],
            access_key_id=Secret(given["BUCKET_ACCESS_KEY_ID"]),
            secret_access_key=Secret(given["BUCKET_SECRET_ACCESS_KEY"]),
            bucket=given["CSM_OFFLOAD_BUCKET_NAME"],
            region=env.get("CSM_OFFLOAD_BUCKET_REGION", "us-east-1"),
            prefix=env.get("CSM_OFFLOAD_BUCKET_PREFIX", "csm-offload/"),
            url_expiry_s=expiry,
        )


def _int(raw: str, name: str) -> int:
    try:
        return int(raw)
    except ValueError:
        raise UserError(f"{name} must be a whole number, got {raw!r}") from None


class UrlOutputs:
    """Puts objects in the bucket and returns pre-signed GET URLs for them."""

    def __init__(self, config: BucketConfig) -> None:
        self.config = config
        self._client: Any = None

    @property
    def client(self) -> Any:
        if self._client is None:
            import boto3
            from botocore.config import Config

            self._client = boto3.client(
                "s3",
                endpoint_url=self.config.endpoint_url,
                aws_access_key_id=self.config.access_key_id.reveal(),
                aws_secret_access_key=self.config.secret_access_key.reveal(),
                region_name=self.config.region,
                config=Config(signature_version="s3v4", retries={"max_attempts": 3}),
            )
        return self._client

    def put(self, key: str, data: bytes, content_type: str) -> str:
        full_key = self.config.prefix + key
        self.client.put_object(
            Bucket=self.config.bucket, Key=full_key, Body=data, ContentType=content_type
        )
        return self.client.generate_presigned_url(
            "get_object",
            Params={"Bucket": self.config.bucket, "Key": full_key},
            ExpiresIn=self.config.url_expiry_s,
        )


def fit_response(
    response: BatchResponse, max_inline_bytes: int, outputs: UrlOutputs | None, job_id: str
) -> BatchResponse:
    """`response` as it is when its JSON fits, else with its largest audio moved to URLs
    (or, with no bucket configured, replaced by an error naming the fix) until it fits."""
    size = len(wire.dumps(response))
    if size <= max_inline_bytes:
        return response
    results = list(response.results)
    inline = [i for i, r in enumerate(results) if isinstance(r.audio, AudioData)]
    for index in sorted(inline, key=lambda i: -len(results[i].audio.data)):
        before = len(wire.dumps(results[index]))
        results[index] = _moved(results[index], results[index].audio, outputs, job_id)
        size -= before - len(wire.dumps(results[index]))
        if size <= max_inline_bytes:
            break
    return attrs.evolve(response, results=tuple(results))


def _moved(result: Result, audio: AudioData, outputs: UrlOutputs | None, job_id: str) -> Result:
    if outputs is None:
        return attrs.evolve(
            result,
            audio=None,
            error="audio too large to return inline and no bucket is configured: set "
            "BUCKET_ENDPOINT_URL, BUCKET_ACCESS_KEY_ID, BUCKET_SECRET_ACCESS_KEY and "
            "CSM_OFFLOAD_BUCKET_NAME on the worker, or send smaller batches",
        )
    key = f"{job_id}/{result.id}.{audio.format}"
    try:
        url = outputs.put(key, audio.data, _CONTENT_TYPES[audio.format])
    except Exception as exc:  # boto's errors are many; the request alone fails
        return attrs.evolve(result, audio=None, error=f"upload failed: {type(exc).__name__}")
    return attrs.evolve(result, audio=AudioUrl(url, audio.format, audio.sample_rate))
