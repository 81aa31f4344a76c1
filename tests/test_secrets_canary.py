"""Canary credentials through every path a user can take: none of them, in any encoding, may
appear in an output, a journal column, a sidecar or any other file the run leaves behind.

Every credential the project reads gets a distinct canary value. The paths: a successful
`synth` against the simulated RunPod (with a plugin that puts its token in `Health.detail`
and in its submit errors), a `synth` whose provider answers 5xx with bodies that echo the
request's Authorization header (plainly, as JSON, base64-encoded, URL-encoded), the same with
`--debug`, `estimate`, `providers` (table and JSON), and `config check` on a file whose bad
values come from the canary variables. Then every captured output and every byte of every file
in the working directory, and each text column of the journal, is searched.
"""

from __future__ import annotations

import base64
import io
import json
import sqlite3
import urllib.parse
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import attrs
import pytest

from csm_offload import CostEstimate, Health, Secret, Unavailable, hookimpl
from csm_offload.cli import app as cli_app
from csm_offload.cli import main
from csm_offload.health import HealthCache
from csm_offload.plugins import Plugins
from csm_offload.scrub import Scrubber, ScrubbingStream, scrub, scrub_data
from tests.fake_provider import FakeProvider
from tests.sim.http_server import Request, Response
from tests.sim.runpod_cloud import SimulatedRunPod

#: One canary per credential; odd characters so that every encoding differs from the value.
CANARIES = {
    "RUNPOD_API_KEY": "rpa_CANARY_runpod/key+Z9=x",
    "HF_TOKEN": 'hf_CANARY_hub"quote\\back',
    "CSM_OFFLOAD_WORKER_TOKEN": "wt_CANARY_worker token&more",
    "MODAL_KEY": "@CANARY_modal_key*[x",
    "MODAL_SECRET": "%CANARY_modal_secret #word",
    "TNR_API_TOKEN": "`CANARY_thunder_token`",
    "REPLICATE_API_TOKEN": "r8_CANARY_replicate_ü_key",
}
MARKER = "CANARY"


def _b64(raw: str) -> list[str]:
    data = raw.encode()
    return [
        base64.b64encode(data).decode().rstrip("="),
        base64.urlsafe_b64encode(data).decode().rstrip("="),
    ]


def needles() -> set[str]:
    found = {MARKER}
    for value in CANARIES.values():
        found |= {value, *_b64(value), *_b64(f"Bearer {value}")}
        found |= {urllib.parse.quote(value, safe=""), urllib.parse.quote_plus(value)}
        found |= {json.dumps(value)[1:-1], json.dumps(value, ensure_ascii=False)[1:-1]}
        found.add(repr(value)[1:-1])
    return found


# --- a plugin that leaks its own token everywhere it can ------------------------------------


@attrs.frozen
class LeakySettings:
    token: Secret
    voice: str = "plain"


class LeakyProvider(FakeProvider):
    """Healthy, but says its token in `Health.detail` and in its estimates' basis, and refuses
    work quoting the token."""

    def __init__(self) -> None:
        super().__init__("leaky", settings_type=LeakySettings, usd_per_second=0.000001)

    @hookimpl
    async def health(self, target: Any, http: Any) -> Health:
        token = target.settings.token.reveal()
        coded = base64.b64encode(f"Bearer {token}".encode()).decode()
        return Health(ok=True, detail=f"signed in as {token} (Authorization: Basic {coded})")

    @hookimpl
    def estimate_cost(self, target: Any, batch: list) -> CostEstimate:
        seconds = 0.01 * sum(len(r.text) for r in batch)
        token = target.settings.token.reveal()
        return CostEstimate(target.name, seconds * 1e-6, seconds, f"priced for key {token}")

    @hookimpl
    async def submit(self, target: Any, batch: list, http: Any) -> Any:
        token = target.settings.token.reveal()
        raise Unavailable(f"token {token} refused; sent {{'authorization': 'Bearer {token}'}}")


# --- a RunPod whose errors echo the request ---------------------------------------------------


def _echo_body(request: Request, variant: int) -> bytes:
    auth = request.headers.get("authorization", "")
    key = auth.removeprefix("Bearer ")
    forms = [
        f"upstream error; request headers: Authorization: {auth}",
        json.dumps({"error": "upstream error", "headers": dict(request.headers)}),
        f"upstream error; auth blob {base64.b64encode(auth.encode()).decode()}",
        f"upstream error; GET /v2/x?api_key={urllib.parse.quote(key, safe='')}",
        f"upstream error; key was {key}",
    ]
    return forms[variant % len(forms)].encode()


@attrs.define
class Echo:
    """Answers 5xx on `routes` with a body that echoes the request; counts what it answered."""

    real: Callable[[Request], Awaitable[Response]]
    routes: set[str]
    answered: int = 0

    async def __call__(self, request: Request) -> Response:
        parts = [p for p in request.path.split("/") if p]
        if len(parts) >= 3 and parts[2] in self.routes:
            self.answered += 1
            return Response(500, _echo_body(request, self.answered))
        return await self.real(request)


def echo_sim(routes: set[str]) -> tuple[SimulatedRunPod, Echo]:
    sim = SimulatedRunPod(api_key=CANARIES["RUNPOD_API_KEY"], workers=2, seconds_per_char=0.001)
    # The server is built from `cloud.handle` when it starts: wrap it first.
    echo = Echo(sim.cloud.handle, routes)
    sim.cloud.handle = echo  # type: ignore[method-assign]
    return sim.start(), echo


CONFIG = """
audio:
  cloud_gpu:
    max_retries: 0
providers:
  sim:
    kind: runpod
    endpoint_url: {url}
    api_key: ${{RUNPOD_API_KEY}}
    max_batch: 2
    use_runsync: false
    seconds_per_char: 0.001
    job_overhead_s: 0
    usd_per_second: 0.01
  leaky:
    kind: leaky
    token: ${{CSM_OFFLOAD_WORKER_TOKEN}}
run:
  journal: journal.sqlite3
"""

BAD_CONFIG = """
audio:
  cloud_gpu:
    provider: ${MODAL_KEY}
    max_retries: ${MODAL_SECRET}
providers:
  rp:
    kind: runpod
    endpoint_url: ${HF_TOKEN}
    api_key: ${RUNPOD_API_KEY}
    max_batch: ${TNR_API_TOKEN}
  lk:
    kind: leaky
    token: ${REPLICATE_API_TOKEN}
    voice: ["${MODAL_KEY}"]
    tokn: ${MODAL_SECRET}
run:
  max_usd: ${HF_TOKEN}
  journal: journal.sqlite3
"""

TEXT = " ".join(f"Sentence number {i} of the canary text." for i in range(6))


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CSM_OFFLOAD_CONFIG", raising=False)
    monkeypatch.setenv("CSM_OFFLOAD_LOAD_PLUGINS", "runpod,espeak")
    for name, value in CANARIES.items():
        monkeypatch.setenv(name, value)
    real = cli_app.load_plugins

    def with_leaky() -> Plugins:
        plugins = real()
        assert plugins.register(LeakyProvider(), "leaky")
        return plugins

    monkeypatch.setattr(cli_app, "load_plugins", with_leaky)
    return tmp_path


def _journal_text(path: Path) -> str:
    """Every text value of every table of a journal."""
    parts = []
    with sqlite3.connect(path) as db:
        tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        for table in tables:
            for row in db.execute(f'SELECT * FROM "{table}"'):
                parts += [v if isinstance(v, str) else repr(v) for v in row]
    return "\n".join(parts)


def test_no_credential_leaves_the_process_on_any_path(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    outputs: list[str] = []

    def run(*args: str) -> int:
        with pytest.raises(SystemExit) as info:
            main(list(args))
        captured = capsys.readouterr()
        outputs.append(captured.out + captured.err)
        return int(info.value.code or 0)

    (workdir / "book.txt").write_text(TEXT)
    with SimulatedRunPod(
        api_key=CANARIES["RUNPOD_API_KEY"], workers=2, seconds_per_char=0.001
    ) as good:
        (workdir / "ok.yaml").write_text(CONFIG.format(url=good.url))
        # Success: the leaky plugin is cheapest, refuses quoting its token, the sim does it.
        assert run("--config", "ok.yaml", "synth", "book.txt", "-o", "ok.wav", "--quiet") == 0
        assert run("--config", "ok.yaml", "estimate", "book.txt") == 0
        assert run("--config", "ok.yaml", "estimate", "book.txt", "--json") == 0
        assert run("--config", "ok.yaml", "providers") == 0
        assert run("--config", "ok.yaml", "providers", "--json") == 0
    assert (workdir / "ok.wav.json").is_file()

    bad, echo = echo_sim({"run", "runsync", "status", "cancel"})
    try:
        (workdir / "fail.yaml").write_text(CONFIG.format(url=bad.url))
        # Text the journal has not seen, or nothing would be sent.
        args = ("synth", "Fresh words for a failing host.", "-o", "fail.wav", "--cloud-gpu")
        assert run("--config", "fail.yaml", *args) == 1
        assert run("--debug", "--config", "fail.yaml", *args) == 1
        assert not (workdir / "fail.wav").exists()
        assert echo.answered > 0, "the echoing sim was never asked"
    finally:
        bad.stop()
    sick, _ = echo_sim({"health", "run", "status"})
    try:
        (workdir / "sick.yaml").write_text(CONFIG.format(url=sick.url))
        assert run("--config", "sick.yaml", "providers") == 0
        assert run("--config", "sick.yaml", "providers", "--json") == 0
        assert run("--config", "sick.yaml", "estimate", "book.txt") == 0
        assert run("--config", "sick.yaml", "synth", "Hi there.", "-o", "s.wav", "--cloud-gpu") == 1
    finally:
        sick.stop()

    (workdir / "bad.yaml").write_text(BAD_CONFIG)
    assert run("--config", "bad.yaml", "config", "check") == 2
    assert run("--debug", "--config", "bad.yaml", "providers", "--offline") == 2
    assert run("--debug", "--config", "bad.yaml", "synth", "x y", "-o", "b.wav") == 2

    journal = _journal_text(workdir / "journal.sqlite3")
    sidecar = (workdir / "ok.wav.json").read_text()

    leaks = []
    for needle in needles():
        for index, text in enumerate(outputs):
            if needle in text:
                leaks.append(f"output of run {index}: {needle!r}")
        if needle in journal:
            leaks.append(f"journal text: {needle!r}")
        if needle in sidecar:
            leaks.append(f"sidecar: {needle!r}")
        raw = needle.encode()
        for path in workdir.rglob("*"):
            if path.is_file() and raw in path.read_bytes():
                leaks.append(f"{path.relative_to(workdir)}: {needle!r}")
    assert not leaks, "\n".join(sorted(set(leaks)))
    # The leaks were there to be caught: the masks show where.
    assert "***" in "\n".join(outputs)
    assert "***" in journal, "no provider error reached the journal"
    assert "***" in sidecar, "the plan in the sidecar quotes no estimate basis"


# --- the scrubber itself -------------------------------------------------------------------


def test_every_encoding_of_a_registered_value_is_masked() -> None:
    scrubber = Scrubber()
    key = "sk_live/abc+DEF=123&q"
    scrubber.register(key)
    for needle in {key, *_b64(key), *_b64(f"Bearer {key}")}:
        assert needle not in scrubber.scrub(f"before {needle} after"), needle
    # Inside a longer base64 blob, at each of the three alignments (HTTP Basic credentials),
    # everything that encodes the key alone is masked.
    for user in ("u:", "us:", "use:"):
        blob = base64.b64encode(f"{user}{key}".encode()).decode()
        out = scrubber.scrub(blob)
        assert "***" in out and len(out) < len(blob) - len(key), (user, out)
    for form in (
        urllib.parse.quote(key, safe=""),
        urllib.parse.quote_plus(key),
        json.dumps({"k": key}),
        repr({"k": key}),
        f"...Authorization: Bearer {key[:12]}…",
    ):
        out = scrubber.scrub(form)
        assert key not in out and key[:12] not in out and "***" in out, (form, out)


def test_short_values_are_not_registered_and_prose_survives() -> None:
    scrubber = Scrubber()
    scrubber.register("abc")
    text = "abc: authorization: the key was refused; api_key: empty"
    assert scrubber.scrub(text) == text


def test_header_echoes_are_masked_even_for_unknown_tokens() -> None:
    scrubber = Scrubber()
    out = scrubber.scrub(
        "echo: Authorization: Bearer never-registered-1; "
        '{"authorization": "Basic dXNlcjpwYXNz"}; Modal-Secret: ms-xyz; '
        "authorization=abcdefghijklmnop0123"
    )
    assert "never-registered-1" not in out and "dXNlcjpwYXNz" not in out
    assert "ms-xyz" not in out and "abcdefghijklmnop0123" not in out
    assert out.count("***") == 4


def test_a_secret_is_known_to_the_scrubber_once_it_exists() -> None:
    value = "created-secret-value-42"
    Secret(value)
    assert scrub(f"x {value} y") == "x *** y"


def test_scrub_data_masks_keys_and_values() -> None:
    Secret("data-secret-value-7")
    data = {"data-secret-value-7": ["a data-secret-value-7", 3, None]}
    assert scrub_data(data) == {"***": ["a ***", 3, None]}


def test_a_value_split_across_writes_is_still_masked() -> None:
    value = "split-secret-value-99"
    Secret(value)
    inner = io.StringIO()
    stream = ScrubbingStream(inner)
    stream.write("start " + value[:7])
    stream.write(value[7:] + " end\n")
    stream.write("tail " + value)
    stream.flush()
    assert inner.getvalue() == "start *** end\ntail ***"
    # No way around it: click re-wraps a stream's binary buffer when it finds one.
    assert not hasattr(stream, "buffer")


async def test_health_details_are_stored_scrubbed() -> None:
    token = "health-detail-token-5"
    Secret(token)
    cache = HealthCache()
    cache.set("t", Health(ok=False, detail=f"refused {token}"))
    stored = cache.get("t")
    assert stored is not None and stored.detail == "refused ***"
