"""The audio stores: a folder (today's layout, byte for byte) and S3 against moto's real server."""

from __future__ import annotations

import errno
import hashlib
import socket
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber
from hypothesis import given
from hypothesis import strategies as st
from moto.server import ThreadedMotoServer

from csm_offload.errors import UserError
from csm_offload.journal import Journal, JournalError, JournalFull, journal_error
from csm_offload.model import SpeechRequest
from csm_offload.scrub import scrub
from csm_offload.stores import (
    AudioMissing,
    AudioStoreError,
    FolderStore,
    S3Store,
    open_store,
    parse_s3_url,
)
from tests.scripted_provider import tone_for

BUCKET = "csm-audio"
SECRET = "s3cr3t-Access-Key-for-tests-0042"
ACCESS = "AKIATESTSTORES0001"


def blob(n: int) -> tuple[str, bytes]:
    data = f"fake flac {n} ".encode() * 50
    return hashlib.sha256(data).hexdigest(), data


def leftovers(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.endswith(".tmp")]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- the folder store --------------------------------------------------------------------------


def test_folder_round_trip_has_the_journals_layout(tmp_path: Path) -> None:
    journal_path = tmp_path / "journal.sqlite3"
    store = FolderStore(tmp_path / "audio", journal_path)
    sha, data = blob(1)
    assert not store.has(sha)
    store.put(sha, data)
    store.put(sha, data)  # idempotent
    assert store.has(sha)
    assert store.local_path(sha) == store.path(sha) == tmp_path / "audio" / sha[:2] / f"{sha}.flac"
    assert store.local_path(sha).read_bytes() == data
    assert store.describe() == f"folder {tmp_path / 'audio'}"
    with Journal(journal_path) as journal:
        assert journal.audio_path(sha) == store.path(sha)
        # What the journal stored, the store finds, and the other way round.
        made = journal.put_audio(tone_for(SpeechRequest("stores")))
        assert store.has(made)
    assert not leftovers(tmp_path)


def test_a_present_sha_is_not_written_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = FolderStore(tmp_path / "audio", tmp_path / "journal.sqlite3")
    sha, data = blob(2)
    store.put(sha, data)

    def refuse(self: Path, data: bytes) -> int:
        raise AssertionError("rewritten")

    monkeypatch.setattr(Path, "write_bytes", refuse)
    store.put(sha, data)


def test_missing_audio_is_a_keyerror_and_a_sentence(tmp_path: Path) -> None:
    store = FolderStore(tmp_path / "audio", tmp_path / "journal.sqlite3")
    sha, _ = blob(3)
    with pytest.raises(KeyError) as info:
        store.local_path(sha)
    assert isinstance(info.value, AudioMissing) and isinstance(info.value, UserError)
    assert str(info.value).startswith(f"the audio {sha} is not in the audio store (folder ")


def test_a_sha_that_is_not_one_is_a_bug(tmp_path: Path) -> None:
    store = FolderStore(tmp_path / "audio", tmp_path / "journal.sqlite3")
    sha, data = blob(4)
    with pytest.raises(ValueError, match="SHA-256"):
        store.has("../../etc/passwd")
    with pytest.raises(ValueError, match="SHA-256"):
        store.put(sha.upper(), data)


def half_writes(monkeypatch: pytest.MonkeyPatch, error: OSError) -> None:
    """Path.write_bytes fails half way through, as a full disk leaves it."""
    real = Path.write_bytes

    def failing(self: Path, data: bytes) -> int:
        real(self, data[: len(data) // 2])
        raise error

    monkeypatch.setattr(Path, "write_bytes", failing)


#: A write that fails half way, and what the store (and the journal above it) make of it.
WRITE_FAILURES = [
    (OSError(errno.ENOSPC, "No space left on device"), JournalFull, "no space left"),
    (OSError(errno.EDQUOT, "Disk quota exceeded"), JournalFull, "no space left"),
    (PermissionError(errno.EACCES, "Permission denied"), JournalError, "cannot write"),
    (OSError(errno.EIO, "Input/output error"), JournalError, "failed a read or write"),
    (OSError(errno.ENAMETOOLONG, "File name too long"), OSError, "File name too long"),
]


@pytest.mark.parametrize(("error", "kind", "message"), WRITE_FAILURES)
def test_a_failed_folder_write_is_the_journals_error_and_leaves_nothing(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    error: OSError,
    kind: type[Exception],
    message: str,
) -> None:
    journal_path = tmp_path / "journal.sqlite3"
    store = FolderStore(tmp_path / "audio", journal_path)
    sha, data = blob(5)
    half_writes(monkeypatch, error)
    with pytest.raises(kind, match=message) as info:
        store.put(sha, data)
    if kind is not OSError:
        # Word for word what the journal says today.
        assert str(info.value) == str(journal_error(error, journal_path))
    assert not store.has(sha)
    assert not leftovers(tmp_path)


def test_a_full_disk_under_a_folder_of_its_own_names_that_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = open_store(str(tmp_path / "shared"), tmp_path / "audio", tmp_path / "journal.sqlite3")
    assert isinstance(store, FolderStore)
    sha, data = blob(6)
    half_writes(monkeypatch, OSError(errno.ENOSPC, "No space left on device"))
    with pytest.raises(JournalFull) as info:
        store.put(sha, data)
    assert f"the audio store {tmp_path / 'shared'}" in str(info.value)
    assert "run.audio_store" in str(info.value)
    assert info.value.exit_code == 2
    assert not leftovers(tmp_path)


def test_open_store_picks_by_spec(tmp_path: Path, s3: dict[str, str]) -> None:
    default, journal_path = tmp_path / "audio", tmp_path / "journal.sqlite3"
    for spec in (None, "", "  "):
        store = open_store(spec, default, journal_path)
        assert isinstance(store, FolderStore) and store.folder == default
    home = open_store("~/somewhere", default, journal_path)
    assert isinstance(home, FolderStore) and home.folder == Path("~/somewhere").expanduser()
    bucket = open_store(f"s3://{BUCKET}/books/", default, journal_path)
    assert isinstance(bucket, S3Store)
    assert bucket.describe() == f"s3://{BUCKET}/books"
    assert bucket.cache_dir == tmp_path / "audio-cache"
    with pytest.raises(UserError, match="gs:// is not supported"):
        open_store("gs://bucket/x", default, journal_path)


# --- the s3:// URL -----------------------------------------------------------------------------

LABEL = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?", fullmatch=True)
BUCKETS = st.lists(LABEL, min_size=1, max_size=4).map(".".join).filter(lambda b: 3 <= len(b) <= 63)
SEGMENT = st.text(
    st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="/?#\\"),
    min_size=1,
    max_size=12,
).filter(lambda s: s not in (".", ".."))
PREFIXES = st.lists(SEGMENT, max_size=4).map("/".join)


@given(bucket=BUCKETS, prefix=PREFIXES, slashes=st.sampled_from(["", "/", "//"]))
def test_s3_urls_round_trip(bucket: str, prefix: str, slashes: str) -> None:
    if bucket.replace(".", "").isdigit() and bucket.count(".") == 3:
        return  # an IPv4 address: rejected, below
    url = f"s3://{bucket}/{prefix}{slashes}" if prefix else f"s3://{bucket}{slashes}"
    assert parse_s3_url(url) == (bucket, prefix)
    assert parse_s3_url(url.replace("s3://", "S3://")) == (bucket, prefix)


@given(st.text(max_size=80))
def test_any_text_parses_or_is_one_user_error(text: str) -> None:
    for url in (text, "s3://" + text):
        try:
            bucket, prefix = parse_s3_url(url)
        except UserError as exc:
            message = str(exc)
        else:
            message = "run.audio_store"
            assert 3 <= len(bucket) <= 63
            assert not prefix.startswith("/") and not prefix.endswith("/")
            assert "//" not in prefix
        assert "run.audio_store" in message


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("https://bucket/x", "does not start with s3://"),
        ("s3://", "names no bucket"),
        ("s3:///prefix", "names no bucket"),
        ("s3://ab", "is not a bucket name"),
        ("s3://Upper-Case", "is not a bucket name"),
        ("s3://under_score", "is not a bucket name"),
        ("s3://-dash", "is not a bucket name"),
        ("s3://a..b", "is not a bucket name"),
        ("s3://" + "a" * 64, "is not a bucket name"),
        ("s3://192.168.0.1/x", "IP address"),
        ("s3://bucket/a//b", "empty, . or .. part"),
        ("s3://bucket/a/../b", "empty, . or .. part"),
        ("s3://bucket/a?region=x", "?, #, backslash"),
        ("s3://bucket/" + "p" * 901, "over 900 bytes"),
    ],
)
def test_bad_s3_urls_say_why(url: str, why: str) -> None:
    with pytest.raises(UserError, match="s3://bucket/optional/prefix") as info:
        parse_s3_url(url)
    assert why in str(info.value)


def test_credentials_in_the_url_are_never_quoted() -> None:
    with pytest.raises(UserError, match="AWS_SECRET_ACCESS_KEY") as info:
        parse_s3_url(f"s3://{ACCESS}:{SECRET}@bucket/x")
    assert SECRET not in str(info.value) and ACCESS not in str(info.value)


# --- the S3 store, against moto's server -------------------------------------------------------


@pytest.fixture(scope="module")
def s3_server() -> Iterator[str]:
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    try:
        admin = boto3.client(
            "s3",
            endpoint_url=endpoint,
            aws_access_key_id=ACCESS,
            aws_secret_access_key=SECRET,
            region_name="us-east-1",
        )
        admin.create_bucket(Bucket=BUCKET)
        yield endpoint
    finally:
        server.stop()


@pytest.fixture
def s3(s3_server: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, str]:
    """boto3's standard environment pointing at moto, and nothing from this machine's ~/.aws."""
    env = {
        "AWS_ACCESS_KEY_ID": ACCESS,
        "AWS_SECRET_ACCESS_KEY": SECRET,
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": s3_server,
        "AWS_CONFIG_FILE": str(tmp_path / "no-aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-aws-credentials"),
    }
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3", "AWS_MAX_ATTEMPTS"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


def downloads(store: S3Store) -> list[str]:
    """The keys `store` GETs from now on (botocore's own event hooks)."""
    seen: list[str] = []

    def record(params: dict[str, Any], **_: Any) -> None:
        seen.append(params["Key"])

    store._client.meta.events.register("before-parameter-build.s3.GetObject", record)
    return seen


def test_s3_round_trip(s3: dict[str, str], tmp_path: Path) -> None:
    store = S3Store(f"s3://{BUCKET}/round/trip", tmp_path / "cache")
    store.check()
    sha, data = blob(10)
    assert not store.has(sha)
    store.put(sha, data)
    store.put(sha, data)  # idempotent
    assert store.has(sha)
    admin = boto3.client("s3")
    stored = admin.get_object(Bucket=BUCKET, Key=f"round/trip/{sha[:2]}/{sha}.flac")
    assert stored["Body"].read() == data
    assert stored["ContentType"] == "audio/flac"
    # Another machine (an empty cache) reads it from the bucket.
    other = S3Store(f"s3://{BUCKET}/round/trip", tmp_path / "other-cache")
    assert other.has(sha)
    path = other.local_path(sha)
    assert path == tmp_path / "other-cache" / sha[:2] / f"{sha}.flac"
    assert path.read_bytes() == data
    assert not leftovers(tmp_path)


def test_s3_without_a_prefix(s3: dict[str, str], tmp_path: Path) -> None:
    store = S3Store(f"s3://{BUCKET}", tmp_path / "cache")
    sha, data = blob(11)
    store.put(sha, data)
    assert store.describe() == f"s3://{BUCKET}"
    assert boto3.client("s3").head_object(Bucket=BUCKET, Key=f"{sha[:2]}/{sha}.flac")


def test_the_cache_downloads_each_object_once(s3: dict[str, str], tmp_path: Path) -> None:
    writer = S3Store(f"s3://{BUCKET}/cache", tmp_path / "writer")
    sha, data = blob(12)
    writer.put(sha, data)
    reader = S3Store(f"s3://{BUCKET}/cache", tmp_path / "reader")
    seen = downloads(reader)
    with ThreadPoolExecutor(8) as pool:
        paths = list(pool.map(lambda _: reader.local_path(sha), range(8)))
    assert reader.local_path(sha) in paths
    assert seen == [writer.key(sha)]  # eight threads, then a ninth call: one download
    # The machine that put it reads its own copy without downloading.
    own = downloads(writer)
    assert writer.local_path(sha).read_bytes() == data
    assert own == []


def test_concurrent_puts_from_threads(s3: dict[str, str], tmp_path: Path) -> None:
    store = S3Store(f"s3://{BUCKET}/threads", tmp_path / "cache")
    blobs = [blob(100 + i % 40) for i in range(120)]  # each one three times over
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda b: store.put(*b), blobs))
    fresh = S3Store(f"s3://{BUCKET}/threads", tmp_path / "fresh")
    with ThreadPoolExecutor(16) as pool:
        paths = dict(zip(blobs, pool.map(lambda b: fresh.local_path(b[0]), blobs), strict=True))
    for (_sha, data), path in paths.items():
        assert path.read_bytes() == data
    listed = boto3.client("s3").list_objects_v2(Bucket=BUCKET, Prefix="threads/")
    assert listed["KeyCount"] == 40
    assert not leftovers(tmp_path)


def test_a_missing_object_is_a_keyerror(s3: dict[str, str], tmp_path: Path) -> None:
    store = S3Store(f"s3://{BUCKET}/absent", tmp_path / "cache")
    sha, _ = blob(13)
    with pytest.raises(AudioMissing, match=f"s3://{BUCKET}/absent/{sha[:2]}/{sha}.flac"):
        store.local_path(sha)
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").rglob("*.flac"))


def test_a_damaged_object_is_not_cached(s3: dict[str, str], tmp_path: Path) -> None:
    store = S3Store(f"s3://{BUCKET}/damaged", tmp_path / "cache")
    sha, _ = blob(14)
    boto3.client("s3").put_object(Bucket=BUCKET, Key=store.key(sha), Body=b"not it")
    with pytest.raises(AudioStoreError, match=r"damaged.*delete that object"):
        store.local_path(sha)
    assert not store._cache_path(sha).exists()


def test_a_missing_bucket_names_the_fix(s3: dict[str, str], tmp_path: Path) -> None:
    store = S3Store("s3://no-such-bucket/x", tmp_path / "cache")
    sha, data = blob(15)
    for call in (store.check, lambda: store.put(sha, data), lambda: store.local_path(sha)):
        with pytest.raises(AudioStoreError) as info:
            call()
        assert "the S3 bucket no-such-bucket does not exist" in str(info.value)
        assert "create it or fix run.audio_store" in str(info.value)
        assert SECRET not in str(info.value) and info.value.__cause__ is None


@pytest.mark.parametrize("code", ["AccessDenied", "SignatureDoesNotMatch", "InvalidAccessKeyId"])
def test_access_denied_names_the_credentials_never_their_values(
    s3: dict[str, str], tmp_path: Path, code: str
) -> None:
    store = S3Store(f"s3://{BUCKET}/denied", tmp_path / "cache")
    sha, data = blob(16)
    with Stubber(store._client) as stub:
        # S3's own message may echo what it was sent.
        stub.add_client_error("put_object", code, f"echo {SECRET} {ACCESS}", 403)
        with pytest.raises(AudioStoreError) as info:
            store.put(sha, data)
    text = str(info.value)
    assert f"S3 refused to upload s3://{BUCKET}/denied/" in text
    assert "check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY" in text
    assert SECRET not in text and ACCESS not in text


def test_other_s3_errors_scrub_what_s3_said(s3: dict[str, str], tmp_path: Path) -> None:
    store = S3Store(f"s3://{BUCKET}/other", tmp_path / "cache")
    sha, _ = blob(17)
    with Stubber(store._client) as stub:
        stub.add_client_error("get_object", "InternalError", f"it broke near {SECRET}", 500)
        with pytest.raises(AudioStoreError, match="InternalError: it broke near") as info:
            store.local_path(sha)
    assert SECRET not in str(info.value)
    assert scrub(SECRET) == "***"  # the store taught the scrubber the key from the environment


def test_an_unreachable_endpoint_says_so(
    s3: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    store = S3Store(f"s3://{BUCKET}/x", tmp_path / "cache")
    sha, data = blob(18)
    for call in (store.check, lambda: store.put(sha, data), lambda: store.has(sha)):
        with pytest.raises(AudioStoreError, match="cannot reach the S3 endpoint http://127") as i:
            call()
        assert "check AWS_ENDPOINT_URL" in str(i.value)
        assert SECRET not in str(i.value) and i.value.__cause__ is None


def test_no_credentials_says_which_variables(
    s3: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no instance metadata to ask
    store = S3Store(f"s3://{BUCKET}/x", tmp_path / "cache")
    sha, data = blob(19)
    with pytest.raises(AudioStoreError, match=r"no S3 credentials.*AWS_ACCESS_KEY_ID"):
        store.put(sha, data)


def test_a_full_cache_disk_is_journal_full(
    s3: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    writer = S3Store(f"s3://{BUCKET}/full", tmp_path / "writer")
    sha, data = blob(20)
    writer.put(sha, data)
    reader = S3Store(f"s3://{BUCKET}/full", tmp_path / "reader")
    half_writes(monkeypatch, OSError(errno.ENOSPC, "No space left on device"))
    with pytest.raises(JournalFull, match=r"local audio cache .*deleting the cache is safe"):
        reader.local_path(sha)
    assert not leftovers(tmp_path)
    monkeypatch.undo()
    assert reader.local_path(sha).read_bytes() == data


def test_a_put_whose_cache_write_fails_still_stores(
    s3: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = S3Store(f"s3://{BUCKET}/cachefail", tmp_path / "cache")
    sha, data = blob(21)
    half_writes(monkeypatch, OSError(errno.ENOSPC, "No space left on device"))
    store.put(sha, data)
    monkeypatch.undo()
    assert store.has(sha) and not leftovers(tmp_path)


def test_without_boto3_the_error_names_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "boto3", None)
    with pytest.raises(UserError, match=r"pip install 'csm-offload\[s3\]'"):
        S3Store(f"s3://{BUCKET}", tmp_path / "cache")


def test_one_client_with_standard_retries_serves_every_thread(
    s3: dict[str, str], tmp_path: Path
) -> None:
    store = S3Store(f"s3://{BUCKET}/shared", tmp_path / "cache")
    client = store._client
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda n: store.put(*blob(200 + n)), range(8)))
    assert store._client is client
    assert client.meta.config.retries["mode"] == "standard"
    assert client.meta.config.retries["total_max_attempts"] == 6
    assert client.meta.config.s3 == {"addressing_style": "path"}  # a custom endpoint
    assert client.meta.endpoint_url == s3["AWS_ENDPOINT_URL"]
