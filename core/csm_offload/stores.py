"""The audio store: where a journal keeps the FLAC bytes of every result, by SHA-256.

One journal file on one machine keeps its audio in a folder next to it (`FolderStore`, the
layout every existing journal has). A journal shared by many machines (PostgreSQL) needs audio
every one of them can read: a folder they all mount (`FolderStore` again), or an S3-compatible
bucket (`S3Store`). `open_store` picks one from `run.audio_store`; docs/audio-store.md says
which to use when.

Every store is content-addressed and written so that no reader ever sees half a file: a name
appears only once its bytes are complete, and the same name always holds the same bytes.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import ipaddress
import os
import re
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from .errors import UserError
from .scrub import register, scrub

if TYPE_CHECKING:
    from .journal import JournalError

_SHA = re.compile(r"[0-9a-f]{64}")
#: Today's bucket rules (AWS, and what R2, MinIO and GCS's S3 API accept): 3 to 63 lowercase
#: letters, digits, dots and hyphens, starting and ending with a letter or digit.
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_URL_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
#: S3 keys are at most 1024 bytes; this leaves room for "/ab/<sha>.flac" after the prefix.
_MAX_PREFIX_BYTES = 900
#: Environment variables whose values must never reach a message, even when S3 echoes them.
_AWS_SECRET_ENV = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ACCESS_KEY_ID")
_ENDPOINT_ENV = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3")
_DENIED = {
    "AccessDenied",
    "AllAccessDisabled",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "InvalidToken",
    "TokenRefreshRequired",
    "403",
}


class AudioStore(Protocol):
    def put(self, sha: str, data: bytes) -> None: ...
    def has(self, sha: str) -> bool: ...
    def local_path(self, sha: str) -> Path: ...
    def describe(self) -> str: ...


class AudioStoreError(UserError):
    """The audio store cannot be used as configured; the message names the fix."""


class AudioMissing(AudioStoreError, KeyError):
    """No audio under that SHA-256 in the store. A `KeyError` too, as a lookup that missed."""

    def __str__(self) -> str:
        # KeyError's own __str__ quotes its argument as a repr: this one is a sentence.
        return str(self.args[0]) if self.args else ""


def _checked(sha: str) -> str:
    """`sha` if it names content; a bug otherwise, never a path outside the store. (The bytes
    are not hashed again: the journal names them by the hash it just took, and hashing twice
    would double the store's CPU per result.)"""
    if not isinstance(sha, str) or not _SHA.fullmatch(sha):
        raise ValueError(f"not a lowercase hex SHA-256: {sha!r}")
    return sha


def _write_atomically(path: Path, sha: str, data: bytes) -> None:
    """`data` at `path`, or nothing there: temp name in the same folder, then rename."""
    tmp = path.with_name(f".{sha}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        # A failed write (a full disk) must not leave half a file in the store.
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)


# --- a folder ----------------------------------------------------------------------------------


class FolderStore:
    """Audio as files, `folder/ab/<sha>.flac`: the layout of every journal so far."""

    def __init__(self, folder: Path, journal_path: Path) -> None:
        self.folder = Path(folder)
        self.journal_path = Path(journal_path)

    def path(self, sha: str) -> Path:
        """Where the audio of `sha` is or would be (no I/O)."""
        return self.folder / sha[:2] / f"{sha}.flac"

    def has(self, sha: str) -> bool:
        return self.path(_checked(sha)).is_file()

    def put(self, sha: str, data: bytes) -> None:
        path = self.path(_checked(sha))
        if path.is_file():  # same name, same bytes: nothing to do
            return
        try:
            _write_atomically(path, sha, data)
        except OSError as exc:
            mapped = self._error(exc)
            if mapped is None:
                raise
            raise mapped from None

    def local_path(self, sha: str) -> Path:
        path = self.path(_checked(sha))
        if not path.is_file():
            raise AudioMissing(
                f"the audio {sha} is not in the audio store ({self.describe()}); every machine "
                "that shares a journal must see the same run.audio_store"
            )
        return path

    def describe(self) -> str:
        return f"folder {self.folder}"

    def _error(self, exc: OSError) -> JournalError | None:
        # Imported here: the journal imports this module.
        from .journal import journal_error

        if self.folder == self.journal_path.parent / "audio":
            return journal_error(exc, self.journal_path)  # word for word what it always said
        return _folder_error(exc, self.folder)


def _folder_error(exc: OSError, folder: Path) -> JournalError | None:
    """The error for a store folder of its own (run.audio_store), which the journal's
    messages would misname as the folder next to the journal."""
    from .journal import JournalError, JournalFull

    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return JournalFull(
            f"no space left on the disk of the audio store {folder}; free some space, or set "
            "run.audio_store to a folder on another disk"
        )
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return JournalError(
            f"cannot write the audio store {folder} ({exc.strerror}); make it writable or set "
            "run.audio_store to a writable folder"
        )
    if exc.errno in (errno.EIO, errno.ESTALE):
        return JournalError(
            f"the disk under the audio store {folder} failed a read or write ({exc.strerror}); "
            "check that disk (is the shared folder still mounted?) or set run.audio_store to "
            "another folder"
        )
    return None


# --- S3 ----------------------------------------------------------------------------------------


def parse_s3_url(url: str) -> tuple[str, str]:
    """(bucket, prefix) of `s3://bucket/optional/prefix`; the prefix has no leading or
    trailing slash and may be empty."""
    if not url[:5].lower() == "s3://":
        raise _bad_url(url, "it does not start with s3://")
    bucket, _, prefix = url[5:].partition("/")
    if "@" in bucket or ":" in bucket:
        # Never quote it: what looks like user:password@ may be a real key.
        raise UserError(
            "run.audio_store must not hold credentials or a port; give s3://bucket/prefix and "
            "set AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and AWS_ENDPOINT_URL in the environment"
        )
    _check_bucket(url, bucket)
    prefix = prefix.strip("/")
    _check_prefix(url, prefix)
    return bucket, prefix


def _check_bucket(url: str, bucket: str) -> None:
    if not bucket:
        raise _bad_url(url, "it names no bucket")
    if not _BUCKET.fullmatch(bucket) or ".." in bucket:
        raise _bad_url(
            url,
            f"{bucket!r} is not a bucket name (3 to 63 lowercase letters, digits, dots and "
            "hyphens, starting and ending with a letter or digit)",
        )
    if _is_ip(bucket):
        raise _bad_url(url, "a bucket name cannot be an IP address (put it in AWS_ENDPOINT_URL)")


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _check_prefix(url: str, prefix: str) -> None:
    if any(c in prefix for c in "?#\\") or any(ord(c) < 32 or ord(c) == 127 for c in prefix):
        raise _bad_url(url, "the prefix has a ?, #, backslash or control character")
    if prefix and any(part in ("", ".", "..") for part in prefix.split("/")):
        raise _bad_url(url, "the prefix has an empty, . or .. part")
    if len(prefix.encode("utf-8", "surrogatepass")) > _MAX_PREFIX_BYTES:
        raise _bad_url(url, f"the prefix is over {_MAX_PREFIX_BYTES} bytes")


def _bad_url(url: str, why: str) -> UserError:
    return UserError(
        f"run.audio_store {scrub(url)!r} is not an S3 URL of the form s3://bucket/optional/"
        f"prefix: {why}"
    )


def _s3_client() -> Any:
    """One S3 client for the store's life, made from a session of its own: clients are
    thread-safe, sessions (boto3's default one included) are not."""
    try:
        import boto3
        from botocore.config import Config
        from botocore.exceptions import BotoCoreError
    except ImportError:
        raise UserError("an s3:// audio store needs boto3: pip install 'csm-offload[s3]'") from None
    for name in _AWS_SECRET_ENV:
        register(os.environ.get(name))
    # Standard mode retries throttling and 5xx with jittered backoff, as AWS advises; more
    # attempts than its 3 because a failed put loses paid-for audio. AWS_MAX_ATTEMPTS wins.
    retries: dict[str, Any] = {"mode": "standard"}
    if "AWS_MAX_ATTEMPTS" not in os.environ:
        retries["total_max_attempts"] = 6
    options: dict[str, Any] = {
        "retries": retries,
        "connect_timeout": 10,
        "read_timeout": 60,
        # Worker threads put and fetch at once; botocore's pool of 10 would drop connections.
        "max_pool_connections": 32,
    }
    if any(os.environ.get(name) for name in _ENDPOINT_ENV):
        # MinIO, Ceph and most self-hosted services answer only path-style requests; R2, B2
        # and the rest accept them too. AWS itself keeps its virtual-hosted default.
        options["s3"] = {"addressing_style": "path"}
    try:
        session = boto3.session.Session()
        client = session.client("s3", config=Config(**options))
    except (BotoCoreError, ValueError) as exc:
        raise UserError(
            f"cannot set up S3 for the audio store ({scrub(str(exc))}); check AWS_ENDPOINT_URL "
            "and AWS_DEFAULT_REGION (docs/audio-store.md)"
        ) from None
    _register_credentials(session)
    return client


def _register_credentials(session: Any) -> None:
    """Mask credentials that came from a file or a profile rather than the environment."""
    with contextlib.suppress(Exception):  # none found yet is the next request's error to say
        credentials = session.get_credentials()
        if credentials is not None:
            register(credentials.secret_key)
            register(credentials.token)


class S3Store:
    """Audio as objects `prefix/ab/<sha>.flac` in an S3-compatible bucket, read through a
    local cache (`cache_dir/ab/<sha>.flac`) so each object is downloaded once per machine.

    Credentials, region and endpoint come from boto3's standard environment
    (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION, AWS_ENDPOINT_URL, or a
    profile); none of them ever appears in a message."""

    def __init__(self, url: str, cache_dir: Path) -> None:
        self.bucket, self.prefix = parse_s3_url(url)
        self.cache_dir = Path(cache_dir)
        self._client = _s3_client()
        # One download of an object at a time: threads asking for it together wait for it.
        self._locks = [threading.Lock() for _ in range(64)]

    def key(self, sha: str) -> str:
        name = f"{sha[:2]}/{sha}.flac"
        return f"{self.prefix}/{name}" if self.prefix else name

    def describe(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"

    def check(self) -> None:
        """Raise the error a run would meet at its first put if the bucket is missing or
        refused: one request, worth making before any paid work starts."""
        from botocore.exceptions import ClientError

        try:
            self._client.head_bucket(Bucket=self.bucket)
        except ClientError as exc:
            if _status(exc) == 404:
                raise self._no_bucket() from None
            raise self._error(exc, "reach") from None
        except Exception as exc:
            raise self._error(exc, "reach") from None

    def has(self, sha: str) -> bool:
        """In the cache (it got there from the bucket), or in the bucket."""
        from botocore.exceptions import ClientError

        if self._cache_path(_checked(sha)).is_file():
            return True
        try:
            self._client.head_object(Bucket=self.bucket, Key=self.key(sha))
        except ClientError as exc:
            if _status(exc) == 404:
                return False
            raise self._error(exc, "look up", sha) from None
        except Exception as exc:
            raise self._error(exc, "look up", sha) from None
        return True

    def put(self, sha: str, data: bytes) -> None:
        # No HEAD first: a result is new in nearly every put (the journal does not store one
        # twice), so a HEAD would add a round trip to almost every put to save an upload
        # almost never. Uploading again is harmless: a PUT replaces the object atomically,
        # with the same bytes.
        _checked(sha)
        try:
            self._client.put_object(
                Bucket=self.bucket, Key=self.key(sha), Body=data, ContentType="audio/flac"
            )
        except Exception as exc:
            raise self._error(exc, "upload", sha) from None
        # The machine that made the audio is the likeliest to read it back (to assemble the
        # output); a cache that cannot be written only costs a download later.
        with contextlib.suppress(OSError):
            path = self._cache_path(sha)
            if not path.is_file():
                _write_atomically(path, sha, data)

    def local_path(self, sha: str) -> Path:
        path = self._cache_path(_checked(sha))
        if path.is_file():
            return path
        with self._locks[int(sha[:2], 16) % len(self._locks)]:
            if not path.is_file():  # another thread may have fetched it while this one waited
                data = self._download(sha)
                self._cache(path, sha, data)
        return path

    def _cache_path(self, sha: str) -> Path:
        # Not per bucket: a name is the hash of its bytes, whichever bucket they came from.
        return self.cache_dir / sha[:2] / f"{sha}.flac"

    def _download(self, sha: str) -> bytes:
        from botocore.exceptions import ClientError, IncompleteReadError, ResponseStreamingError

        # botocore retries the request, not the reading of its body: a connection dropped
        # mid-body is retried here.
        for attempt in range(3):
            try:
                response = self._client.get_object(Bucket=self.bucket, Key=self.key(sha))
                data: bytes = response["Body"].read()
                break
            except (ResponseStreamingError, IncompleteReadError) as exc:
                if attempt == 2:
                    raise self._error(exc, "download", sha) from None
            except ClientError as exc:
                if _code(exc) in ("NoSuchKey", "404"):
                    raise self._missing(sha) from None
                raise self._error(exc, "download", sha) from None
            except Exception as exc:
                raise self._error(exc, "download", sha) from None
        if hashlib.sha256(data).hexdigest() != sha:
            raise AudioStoreError(
                f"the stored audio {self._where(sha)} is damaged (its bytes do not hash to its "
                "name); delete that object and rerun to generate it again"
            )
        return data

    def _cache(self, path: Path, sha: str, data: bytes) -> None:
        try:
            _write_atomically(path, sha, data)
        except OSError as exc:
            raise _cache_error(exc, self.cache_dir) from None

    def _where(self, sha: str) -> str:
        return f"s3://{self.bucket}/{self.key(sha)}"

    def _endpoint(self) -> str:
        return scrub(str(self._client.meta.endpoint_url))

    def _missing(self, sha: str) -> AudioMissing:
        return AudioMissing(
            f"the audio {sha} is not in the audio store ({self._where(sha)}); every machine "
            "that shares a journal must see the same run.audio_store"
        )

    def _no_bucket(self) -> AudioStoreError:
        return AudioStoreError(
            f"the S3 bucket {self.bucket} does not exist at {self._endpoint()}; create it or "
            "fix run.audio_store (and AWS_ENDPOINT_URL for a service other than AWS)"
        )

    def _error(self, exc: BaseException, action: str, sha: str | None = None) -> UserError:
        """The sentence for a failed S3 call, after botocore's own retries. Provider text
        is scrubbed; the cause is not chained, so no traceback can quote the request."""
        from botocore.exceptions import ClientError, HTTPClientError, NoCredentialsError
        from botocore.exceptions import ConnectionError as Unreachable

        where = self._where(sha) if sha else f"s3://{self.bucket}"
        if isinstance(exc, ClientError):
            return self._client_error(exc, action, where)
        if isinstance(exc, NoCredentialsError):
            return AudioStoreError(
                f"no S3 credentials to {action} {where}: set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY (docs/audio-store.md)"
            )
        if isinstance(exc, HTTPClientError | Unreachable):
            return AudioStoreError(
                f"cannot reach the S3 endpoint {self._endpoint()} to {action} {where} "
                f"({type(exc).__name__}); check AWS_ENDPOINT_URL and the network"
            )
        return AudioStoreError(
            f"S3 failed to {action} {where} ({type(exc).__name__}: {scrub(str(exc))})"
        )

    def _client_error(self, exc: Any, action: str, where: str) -> UserError:
        code = _code(exc)
        if code == "NoSuchBucket":
            return self._no_bucket()
        if code in _DENIED or _status(exc) == 403:
            return AudioStoreError(
                f"S3 refused to {action} {where} ({code}); check AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY, and that they may read, write and list that bucket"
            )
        message = scrub(str(exc.response.get("Error", {}).get("Message", "")))
        return AudioStoreError(
            f"S3 failed to {action} {where} after retries ({code}: {message}); check the "
            "service's status and run again: finished results are kept"
        )


def _code(exc: Any) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _status(exc: Any) -> int | None:
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return int(status) if status is not None else None


def _cache_error(exc: OSError, cache_dir: Path) -> UserError:
    from .journal import JournalFull

    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return JournalFull(
            f"no space left for the local audio cache {cache_dir}; free some space (deleting "
            "the cache is safe: it is downloaded again as needed)"
        )
    return AudioStoreError(
        f"cannot write the local audio cache {cache_dir} ({exc.strerror or exc}); make it "
        "writable (deleting it is safe: it is downloaded again as needed)"
    )


# --- choosing one ------------------------------------------------------------------------------


def open_store(spec: str | None, default_folder: Path, journal_path: Path) -> AudioStore:
    """The store `run.audio_store` names: unset, the folder next to the journal; `s3://...`,
    that bucket (cached under `audio-cache` beside the default folder); else a folder."""
    if spec is None or not spec.strip():
        return FolderStore(default_folder, journal_path)
    spec = spec.strip()
    if spec[:5].lower() == "s3://":
        return S3Store(spec, Path(default_folder).parent / "audio-cache")
    if _URL_SCHEME.match(spec):
        # gs://, https://... would otherwise become a folder named "gs:" in the working dir.
        raise UserError(
            f"run.audio_store {scrub(spec.split('://')[0])}:// is not supported; give a folder "
            "every machine can see, or an s3:// URL (docs/audio-store.md)"
        )
    return FolderStore(Path(spec).expanduser(), journal_path)
