"""Hostile HTTP input to the worker server (`csm-offload serve`): each gets one clear error.

Every case asserts a 4xx answer whose body is `{"error": "<one sentence>"}` with no traceback,
and that the server still answers the token holder afterwards. Bytes are sent on raw sockets,
so nothing between the test and the server tidies them up. The same parser serves the RunPod
handler, whose answers to the batch-level cases are checked at the end.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import select
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any
from urllib.parse import urlsplit

import attrs
import httpx
import numpy as np
import pytest
import soundfile as sf

from csm_offload import (
    Audio,
    AudioData,
    BatchRequest,
    JobState,
    Segment,
    SpeechRequest,
    WorkerInfo,
    wire,
)
from csm_offload.secret import Secret
from csm_offload.wire import WireLimits
from csm_offload.worker_client import WorkerClient, WorkerJob
from tests.peers.test_worker_server import running

pytest_plugins = ["tests.tiny_csm"]
pytestmark = pytest.mark.torch

TOKEN = Secret("hostile-test-token-" + "y" * 20)
LIMITS = WireLimits(max_body_bytes=256 * 1024, max_requests=4, max_text_chars=200)
HEADER_TIMEOUT_S = 1.0
BODY_TIMEOUT_S = 1.0
#: How long past a timeout an answer may come: scheduling, not a second timeout.
SLACK_S = 2.5


@attrs.frozen
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes
    elapsed: float
    closed: bool

    def error(self) -> str:
        assert self.headers.get("content-type", "").startswith("application/json"), self.headers
        data = json.loads(self.body)
        assert list(data) == ["error"], data
        return data["error"]


@pytest.fixture(scope="module")
def server(tiny_engine: Any) -> Iterator[str]:
    settings = {
        "token": TOKEN,
        "limits": LIMITS,
        "header_timeout_s": HEADER_TIMEOUT_S,
        "body_timeout_s": BODY_TIMEOUT_S,
    }
    with running(tiny_engine, **settings) as url:
        yield url


def address(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None
    return parts.hostname, parts.port


def head(
    method: str = "POST",
    path: str = "/v1/jobs",
    *,
    token: str | None = TOKEN.reveal(),
    length: int | None = None,
    extra: Sequence[str] = (),
) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1"]
    if token is not None:
        lines.append(f"Authorization: Bearer {token}")
    if length is not None:
        lines.append(f"Content-Length: {length}")
    lines.extend(extra)
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def post(body: bytes, *, token: str | None = TOKEN.reveal(), extra: Sequence[str] = ()) -> bytes:
    return head(token=token, length=len(body), extra=extra) + body


def exchange(url: str, *pieces: bytes, drip_s: float = 0.0, timeout: float = 15.0) -> Answer:
    """Send `pieces` (`drip_s` apart, stopping once the server answers) and read one answer."""
    started = time.monotonic()
    with socket.create_connection(address(url), timeout=timeout) as sock:
        for piece in pieces:
            if select.select([sock], [], [], 0)[0]:
                break  # answered already: a real client would stop sending too
            try:
                sock.sendall(piece)
            except (BrokenPipeError, ConnectionResetError):
                break
            if drip_s:
                time.sleep(drip_s)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            assert chunk, f"the connection closed without an answer after {data!r}"
            data += chunk
        raw_head, body = data.split(b"\r\n\r\n", 1)
        status_line, *header_lines = raw_head.decode("latin-1").split("\r\n")
        headers = {}
        for line in header_lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        while len(body) < length:
            chunk = sock.recv(65536)
            assert chunk, "the connection closed in the middle of the answer"
            body += chunk
        elapsed = time.monotonic() - started
        # Only an answer that says it closes is waited for; a kept-alive one stays open.
        closed = headers.get("connection") == "close" and _closes(sock)
    return Answer(int(status_line.split()[1]), headers, body, elapsed, closed)


def _closes(sock: socket.socket, within: float = 3.0) -> bool:
    sock.settimeout(within)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def assert_clear_error(answer: Answer, status: int, *words: str) -> str:
    assert answer.status == status, (answer.status, answer.body)
    message = answer.error()
    assert isinstance(message, str) and message
    assert "\n" not in message, message
    assert "Traceback" not in message and 'File "' not in message, message
    for word in words:
        assert word in message, message
    return message


def assert_still_serving(url: str) -> None:
    answer = httpx.get(f"{url}/healthz", headers=auth(), timeout=5)
    assert answer.status_code == 200, answer.text
    assert answer.json()["ok"] is True


def auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKEN.reveal()}"}


def batch_json(*requests: dict[str, Any]) -> bytes:
    return json.dumps({"schema": 1, "audio_format": "wav", "requests": list(requests)}).encode()


def request_json(text: str, **fields: Any) -> dict[str, Any]:
    return {"text": text, "max_audio_length_ms": 160, **fields}


# --- slow and oversize clients ------------------------------------------------------------


def test_body_shorter_than_its_content_length_is_dropped_within_the_body_timeout(
    server: str,
) -> None:
    answer = exchange(server, head(length=1000) + b'{"schema": 1,')
    assert_clear_error(answer, 408, "body_timeout_s")
    assert answer.elapsed < BODY_TIMEOUT_S + SLACK_S  # not uvicorn's 30 s, nor forever
    assert answer.closed
    assert_still_serving(server)


def test_slowloris_header_drip_is_dropped_within_the_header_timeout(server: str) -> None:
    drip = [bytes([byte]) for byte in head(method="GET", path="/healthz")]
    answer = exchange(server, *drip, drip_s=0.1)
    assert_clear_error(answer, 408, "header_timeout_s")
    assert answer.elapsed < HEADER_TIMEOUT_S + SLACK_S
    assert answer.closed
    assert_still_serving(server)


def test_oversize_content_length_is_refused_before_any_body(server: str) -> None:
    answer = exchange(server, head(length=10**12))
    assert_clear_error(answer, 413, "max_body_bytes")
    assert answer.elapsed < SLACK_S
    assert answer.closed
    assert_still_serving(server)


def test_chunked_body_over_the_limit_is_refused_while_reading(server: str) -> None:
    chunk = b"x" * 16384
    framed = f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"
    pieces = [head(extra=["Transfer-Encoding: chunked"])] + [framed] * 20  # 320 KiB > 256 KiB
    answer = exchange(server, *pieces)
    assert_clear_error(answer, 413, "max_body_bytes")
    assert answer.closed
    assert_still_serving(server)


@pytest.mark.parametrize("pieces", [1, 8], ids=["at-once", "in-pieces"])
def test_headers_over_the_limit_are_refused(server: str, pieces: int) -> None:
    raw = head(method="GET", path="/healthz", extra=["X-Pad: " + "p" * 20000])
    size = -(-len(raw) // pieces)
    answer = exchange(server, *(raw[i : i + size] for i in range(0, len(raw), size)), drip_s=0.05)
    assert_clear_error(answer, 431, "headers are over 16384 bytes")
    assert answer.closed
    assert_still_serving(server)


def test_garbage_instead_of_http_is_refused(server: str) -> None:
    answer = exchange(server, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 not http\r\n\r\n")
    assert_clear_error(answer, 400, "not valid HTTP/1.1")
    assert_still_serving(server)


# --- the token ----------------------------------------------------------------------------


def test_no_token_is_refused_without_reading_the_body(server: str) -> None:
    # The headers promise 50 KB that never comes: only an answer from the headers can be quick.
    answer = exchange(server, head(token=None, length=50_000))
    assert_clear_error(answer, 401, "bearer token")
    assert answer.headers.get("www-authenticate") == "Bearer"
    assert answer.elapsed < SLACK_S
    assert answer.closed
    assert_still_serving(server)


def test_wrong_token_is_refused(server: str) -> None:
    answer = exchange(server, post(batch_json(request_json("Hi.")), token="not-the-token"))
    assert_clear_error(answer, 401, "bearer token")
    assert_still_serving(server)


def test_wrong_token_on_unknown_route_learns_nothing(server: str) -> None:
    answer = exchange(server, head(method="GET", path="/admin", token="guess"))
    assert_clear_error(answer, 401, "bearer token")
    assert_still_serving(server)


def test_unknown_route_and_method_are_named(server: str) -> None:
    missing = exchange(server, head(method="GET", path="/v2/jobs"))
    assert_clear_error(missing, 404, "/v2/jobs", "POST /v1/jobs")
    wrong = exchange(server, head(method="PUT", path="/healthz", length=0))
    assert_clear_error(wrong, 405, "PUT")
    assert_still_serving(server)


# --- bodies -------------------------------------------------------------------------------


def test_wrong_content_type_is_refused(server: str) -> None:
    body = batch_json(request_json("Hi."))
    answer = exchange(server, post(body, extra=["Content-Type: application/x-www-form-urlencoded"]))
    assert_clear_error(answer, 415, "application/json")
    assert_still_serving(server)


def test_invalid_json_is_refused(server: str) -> None:
    answer = exchange(server, post(b'{"schema": 1, "requests": [}'))
    assert_clear_error(answer, 400, "not valid JSON")
    assert_still_serving(server)


def test_json_nested_100000_deep_is_refused(server: str) -> None:
    bare = b"[" * 100_000 + b"]" * 100_000
    assert_clear_error(exchange(server, post(bare)), 400, "nested too deeply")
    inside = b'{"schema": 1, "requests": [{"text": ' + b"[" * 100_000 + b"]" * 100_000
    assert_clear_error(exchange(server, post(inside + b"}]}")), 400, "nested too deeply")
    assert_still_serving(server)


def test_nan_in_json_is_refused(server: str) -> None:
    body = b'{"schema": 1, "requests": [{"text": "Hi.", "temperature": NaN}]}'
    answer = exchange(server, post(body))
    assert_clear_error(answer, 400, "NaN")
    assert_still_serving(server)


def test_unknown_schema_is_refused(server: str) -> None:
    answer = exchange(server, post(b'{"schema": 99, "requests": []}'))
    assert_clear_error(answer, 400, "schema", "99")
    assert_still_serving(server)


def test_duplicate_ids_refuse_the_whole_batch(server: str) -> None:
    body = batch_json(
        request_json("One.", id="same"),
        request_json("Two.", id="other"),
        request_json("Three.", id="same"),
    )
    answer = exchange(server, post(body))
    message = assert_clear_error(answer, 400, "'same'", "requests[0]", "requests[2]")
    assert "other" not in message
    assert_still_serving(server)


# --- context audio: an error for that request, audio for the rest --------------------------


def float_wav(samples: np.ndarray, rate: int = 24_000) -> dict[str, Any]:
    """WAV with float samples: the one wire format that can carry NaN and infinity."""
    buffer = io.BytesIO()
    sf.write(buffer, samples.astype(np.float32), rate, format="WAV", subtype="FLOAT")
    data = base64.b64encode(buffer.getvalue()).decode()
    return {"format": "wav", "sample_rate": rate, "data": data}


def empty_flac() -> dict[str, Any]:
    audio = AudioData.from_audio(Audio(np.zeros(0, dtype=np.float32), 24_000), "flac")
    return wire.unstructure(audio)


def generate_with_bad_context(url: str, audio: dict[str, Any]) -> tuple[str, str | None]:
    bad = request_json(
        "Bad one.", id="bad", context=[{"speaker": 0, "text": "Before.", "audio": audio}]
    )
    good = request_json("Good one.", id="good")
    answer = exchange(url, post(batch_json(bad, good)))
    assert answer.status == 202, answer.body
    job = wire.loads(answer.body, WorkerJob)

    async def finish() -> WorkerJob:
        async with httpx.AsyncClient(timeout=60) as http:
            return await WorkerClient(http, url, TOKEN).job(job.id, wait=55)

    done = asyncio.run(finish())
    assert done.state is JobState.COMPLETED, done.error
    first, second = done.response.results
    assert (first.id, second.id) == ("bad", "good")
    assert first.audio is None
    assert second.error is None and second.audio is not None and second.duration_ms > 0
    return first.error, second.error


def test_context_audio_with_no_samples_fails_only_its_request(server: str) -> None:
    error, _ = generate_with_bad_context(server, empty_flac())
    assert error is not None
    assert "requests[0].context[0].audio" in error and "no samples" in error
    assert_still_serving(server)


def test_context_audio_with_nan_samples_fails_only_its_request(server: str) -> None:
    samples = np.full(2400, 0.1, dtype=np.float32)
    samples[100] = np.nan
    error, _ = generate_with_bad_context(server, float_wav(samples))
    assert error is not None
    assert "requests[0].context[0].audio" in error and "NaN or infinite" in error
    assert_still_serving(server)


def test_context_audio_with_infinite_samples_fails_only_its_request(server: str) -> None:
    samples = np.full(2400, 0.1, dtype=np.float32)
    samples[-1] = -np.inf
    error, _ = generate_with_bad_context(server, float_wav(samples))
    assert error is not None and "NaN or infinite" in error


# --- the server stays itself --------------------------------------------------------------


def test_many_hostile_connections_at_once_leave_it_serving(server: str) -> None:
    cases = [
        head(length=1000) + b"{",
        head(token=None, length=10),
        post(b"not json"),
        post(b'{"schema": 2}'),
        b"BREW /pot HTTP/1.1\r\n\r\n",
    ] * 6
    answers: list[int] = []

    def one(raw: bytes) -> None:
        answers.append(exchange(server, raw).status)

    threads = [threading.Thread(target=one, args=(raw,)) for raw in cases]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert len(answers) == len(cases)
    assert all(400 <= status < 500 for status in answers), answers
    assert_still_serving(server)


# --- the RunPod handler shares the parser ---------------------------------------------------


class EchoEngine:
    def generate(self, requests: Sequence[SpeechRequest], cancel: threading.Event | None) -> Any:
        from csm_offload_local_csm.engine import Generated

        audio = Audio(np.full(240, 0.25, dtype=np.float32), 24_000)
        return [Generated(r.id, audio, 5) for r in requests]

    def info(self) -> WorkerInfo:
        return WorkerInfo("test", "echo", "1")


def test_runpod_handler_refuses_duplicate_ids_naming_the_id() -> None:
    from csm_offload_runpod.handler import Worker, WorkerConfig

    twice = SpeechRequest("Same.", id="twice")
    body = wire.unstructure(BatchRequest((twice, SpeechRequest("Other."), twice)))
    answer = Worker(WorkerConfig(), EchoEngine()).handle({"id": "job", "input": body})
    assert set(answer) == {"error"}
    assert answer["error"].startswith("input.requests: requests[0] and requests[2]")
    assert "'twice'" in answer["error"]


def test_runpod_handler_answers_bad_context_audio_per_request() -> None:
    from csm_offload_runpod.handler import Worker, WorkerConfig

    nan = np.full(100, np.nan, dtype=np.float32)
    empty = np.zeros(0, dtype=np.float32)
    requests = [
        SpeechRequest(
            "NaN.", context=(Segment(0, "x", Audio(np.full(100, 0.5), 24_000)),), id="nan"
        ),
        SpeechRequest("Empty.", context=(Segment(0, "x", Audio(empty, 24_000)),), id="empty"),
        SpeechRequest("Fine.", id="fine"),
    ]
    body = wire.unstructure(BatchRequest(tuple(requests)))
    body["requests"][0]["context"][0]["audio"] = float_wav(nan)  # FLAC cannot carry NaN
    answer = Worker(WorkerConfig(), EchoEngine()).handle({"id": "job", "input": body})
    errors = {result["id"]: result["error"] for result in answer["results"]}
    assert "NaN or infinite" in errors["nan"]
    assert "no samples" in errors["empty"]
    assert errors["fine"] is None
