"""Migrating from the original client (docs/migrating.md): its names, configs and scripts run
unchanged but for one import, against the simulated RunPod cloud.

- a config made in code is the very target its YAML block makes; a bad one is one sentence;
- the list order is the preference, then the router's price order;
- a script in the original's style, with torch absent, gets `Audio` (with torch, tensors: see
  tests/peers/test_migrating_peers.py, which adds a worker server); with `Audio` context and
  `output="audio"` the core never imports torch;
- a key given in code never appears in any output, log, journal, report or repr;
- `python -m csm_offload.pipeline` does what `csm-offload book` does with the same flags, and
  `python -m csm_offload.test_cloud_gpu` writes `cloud_gpu_test_results.json`;
- docs/migrating.md followed: its before/after code, its error line, its YAML, its commands.
"""

from __future__ import annotations

import base64
import difflib
import json
import os
import re
import socket
import subprocess
import sys
import threading
import tomllib
import urllib.parse
from collections import Counter
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import pytest

from csm_offload import Audio, BudgetExceeded, Secret, SpeechRequest, UserError
from csm_offload.cli import main as cli_main
from csm_offload.cloud_gpu_client import (
    CloudGPUConfig,
    CloudGPUManager,
    GenerationFailed,
    NoProviderUsable,
    create_modal_config,
    create_replicate_config,
    create_runpod_config,
    create_thunder_config,
    segments_from,
)
from csm_offload.config import load_config_text
from csm_offload.pipeline import book_args
from csm_offload.pipeline import main as pipeline_main
from csm_offload.plugins import load_plugins
from csm_offload.targets import check_targets
from csm_offload.test_cloud_gpu import RESULTS_FILE, doctor_args
from csm_offload.test_cloud_gpu import main as doctor_main
from tests.book.conftest import (
    Route,
    Site,
    respond,
    site,  # noqa: F401 (a fixture, for `pages`)
)
from tests.sim.runpod_cloud import SimulatedRunPod
from tests.test_runner import FAST
from tests.test_secrets_canary import Echo

ROOT = Path(__file__).resolve().parent.parent
#: A key given in code; odd characters so that its encodings differ from it.
KEY = "rp_migrating/code+key=7f3a9c21"
WORKER_TOKEN = "wt_migrating_worker_token_b41d"
AUDIO_S_PER_CHAR = 0.06  # the simulator's audio length per character of text
IMPORT_BEFORE = "from audio.cloud_gpu_client import"
IMPORT_AFTER = "from csm_offload.cloud_gpu_client import"
#: The original's environment variables; a script sees only those a test sets.
ORIGINAL_ENV = ("RUNPOD_", "THUNDER_", "MODAL_")

#: A script in the original's style (its test script's env loading, CSM-style segments, a
#: two-turn conversation in a loop, then each provider alone), written against the original.
ORIGINAL_SCRIPT = """
import json
import os
import sys
from dataclasses import dataclass
from typing import Any

from audio.cloud_gpu_client import (
    CloudGPUClient,
    CloudGPUManager,
    create_runpod_config,
    create_thunder_config,
)


@dataclass
class Segment:
    speaker: int
    text: str
    audio: Any


def load_config_from_env() -> list:
    configs = []
    if os.getenv("RUNPOD_API_KEY") and os.getenv("RUNPOD_ENDPOINT_URL"):
        key, url = os.getenv("RUNPOD_API_KEY"), os.getenv("RUNPOD_ENDPOINT_URL")
        configs.append(create_runpod_config(key, url))
        print("RunPod configuration loaded", file=sys.stderr)
    if os.getenv("THUNDER_ENDPOINT_URL"):
        key, url = os.getenv("THUNDER_API_KEY"), os.getenv("THUNDER_ENDPOINT_URL")
        configs.append(create_thunder_config(key, url))
        print("Thunder Compute configuration loaded", file=sys.stderr)
    return configs


def report(label: str, provider: str, text: str, ms: int, audio: Any) -> None:
    frames = audio.shape[-1] if hasattr(audio, "shape") else audio.frames
    shape = list(audio.shape) if hasattr(audio, "shape") else None
    torch_loaded = sys.modules.get("torch") is not None
    row = {"label": label, "provider": provider, "text": text, "ms": ms, "frames": frames}
    row.update(type=type(audio).__name__, shape=shape, torch=torch_loaded)
    print(json.dumps(row))


conversation = [(0, "Hello there, how are you today?"), (1, "Very well, and thank you for asking.")]
configs = load_config_from_env()
manager = CloudGPUManager(configs)
previous_segments = []
for speaker, text in conversation:
    audio = manager.generate_speech(
        text=text, speaker=speaker, context=previous_segments, max_length_ms=10000
    )
    report("conversation", manager.get_current_provider(), text, 10000, audio)
    previous_segments.append(Segment(speaker, text, audio))

test_ms = int(os.getenv("TEST_MAX_LENGTH_MS", "5000"))
for config in configs:
    client = CloudGPUClient(config)
    text = f"Testing the {config.provider} provider."
    audio = client.generate_speech(
        text=text, speaker=0, context=previous_segments[-1:], max_length_ms=test_ms
    )
    report(config.provider, client.provider, text, test_ms, audio)
"""
#: What runs a script with torch absent: `import torch` fails as if it were not installed.
WITHOUT_TORCH = (
    "import runpy, sys; sys.modules['torch'] = None; sys.modules['torchaudio'] = None; "
    "runpy.run_path(sys.argv[1], run_name='__main__')"
)


def migrated(script: str) -> str:
    """The original's script with its one import line changed."""
    return script.replace(IMPORT_BEFORE, IMPORT_AFTER)


def sim_frames(text: str, ms: int) -> int:
    """The simulator's audio length for `text` capped at `ms`, in frames at 24 kHz."""
    seconds = min(max(0.08, AUDIO_S_PER_CHAR * len(text)), ms / 1000)
    return round(seconds * 24_000)


def run_script(
    script: str, cwd: Path, env: dict[str, str], torch: bool = True
) -> subprocess.CompletedProcess[str]:
    path = cwd / "script.py"
    path.write_text(script, "utf-8")
    command = [sys.executable, path.name] if torch else [sys.executable, "-c", WITHOUT_TORCH]
    if not torch:
        command.append(path.name)
    inherited = {k: v for k, v in os.environ.items() if not k.startswith(ORIGINAL_ENV)}
    full_env = {**inherited, **env}
    full_env.pop("CSM_OFFLOAD_CONFIG", None)
    return subprocess.run(
        command, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=240
    )


def rows(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


def cli(main: Callable[[list[str]], None], *args: str) -> int:
    with pytest.raises(SystemExit) as info:
        main(list(args))
    return int(info.value.code or 0)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CSM_OFFLOAD_CONFIG", raising=False)
    monkeypatch.delenv("MODAL_SECRET", raising=False)
    return tmp_path


@pytest.fixture
def sim(workdir: Path) -> Iterator[SimulatedRunPod]:
    with SimulatedRunPod(workers=2, seconds_per_char=0.0005, api_key=KEY) as cloud:
        yield cloud


# --- configs made in code ---------------------------------------------------------------------


def test_a_config_made_in_code_is_the_target_its_yaml_block_makes(sim: SimulatedRunPod) -> None:
    url = f"{sim.url}/run"  # the original's RUNPOD_ENDPOINT_URL form
    config = create_runpod_config(KEY, url, gpu="H100", max_batch=2, use_runsync=False)
    block = (
        f"providers:\n  runpod:\n    kind: runpod\n    endpoint_url: {url}\n"
        f"    api_key: {KEY}\n    gpu: H100\n    max_batch: 2\n    use_runsync: false\n"
    )
    (check,) = check_targets(load_config_text(block, "t.yaml", {}), load_plugins().providers)
    assert check.target is not None and config.target == check.target
    assert config.target.settings.endpoint().endpoint_id == "sim-endpoint"
    assert isinstance(config.api_key, Secret)
    shown = repr(config) + str(config) + repr(config.target) + repr(config.spec)
    assert KEY not in shown and "Secret('********')" in shown


@pytest.mark.parametrize(
    ("make", "kind", "fields"),
    [
        (
            lambda: create_thunder_config(WORKER_TOKEN, "http://127.0.0.1:8000"),
            "thunder",
            {"url": "http://127.0.0.1:8000", "worker_token": Secret(WORKER_TOKEN)},
        ),
        (
            lambda: create_modal_config(
                "wk-migrate-1", "https://me--csm-offload-web.modal.run", secret="ws-migrate-2"
            ),
            "modal",
            {"key": Secret("wk-migrate-1"), "secret": Secret("ws-migrate-2")},
        ),
        (
            lambda: create_replicate_config("r8_migrate_token", "me/csm:" + "a" * 64),
            "replicate",
            {"api_token": Secret("r8_migrate_token"), "version": "me/csm:" + "a" * 64},
        ),
        (
            lambda: CloudGPUConfig(
                "RunPod", KEY, "https://api.runpod.ai/v2/abc123/run", region="eu-ro-1"
            ),
            "runpod",
            {"api_key": Secret(KEY), "endpoint_url": "https://api.runpod.ai/v2/abc123/run"},
        ),
    ],
)
def test_every_provider_of_the_original_makes_its_target(
    make: Callable[[], CloudGPUConfig], kind: str, fields: dict[str, Any]
) -> None:
    config = make()
    assert config.provider == kind and config.target.kind == kind
    for name, value in fields.items():
        assert getattr(config.target.settings, name) == value
    assert "migrate" not in repr(config) and WORKER_TOKEN not in repr(config)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (
            lambda: create_runpod_config(KEY, "ftp://example.com"),
            "runpod provider config: endpoint_url: expected an https:// URL",
        ),
        (
            lambda: create_runpod_config("", "https://api.runpod.ai/v2/abc"),
            "api_key: empty; set RUNPOD_API_KEY",
        ),
        (
            lambda: create_runpod_config(KEY, "https://api.runpod.ai/v2/abc", gpu="Z80"),
            "no price for GPU 'Z80'",
        ),
        (
            lambda: create_runpod_config(KEY, "https://api.runpod.ai/v2/abc", max_batch="two"),
            "max_batch: expected an integer",
        ),
        (
            lambda: create_runpod_config(KEY, "https://api.runpod.ai/v2/abc", use_runsnc=False),
            "use_runsnc: unknown field",
        ),
        (
            lambda: create_thunder_config(KEY, "http://example.com:8000"),
            "endpoint_url (url): plain http is only allowed to 127.0.0.1",
        ),
        (
            lambda: create_modal_config("wk-abcdef", "https://me--web.modal.run"),
            "or set MODAL_SECRET",
        ),
        (lambda: CloudGPUConfig("acme-cloud", KEY), "pip install csm-offload-acme-cloud"),
        (
            lambda: CloudGPUConfig("runpod", KEY, "https://api.runpod.ai/v2/a", model_id="m"),
            "model_id has no meaning for runpod targets",
        ),
        (lambda: CloudGPUManager([]), "no providers given"),
        (lambda: CloudGPUManager(["nope"]), "no target named nope in the config"),
        (lambda: CloudGPUManager([42]), "providers[0]: expected create_runpod_config"),
        (lambda: CloudGPUManager(["espeak", "espeak"]), "espeak is listed twice"),
        (lambda: CloudGPUManager(["espeak"], output="wav"), "output must be one of"),
    ],
)
def test_a_bad_config_is_one_sentence_naming_the_fix(
    workdir: Path, make: Callable[[], Any], message: str
) -> None:
    with pytest.raises(UserError) as info:
        make()
    assert message in str(info.value)
    assert "\n" not in str(info.value) and KEY not in str(info.value)


def test_bad_calls_and_context_are_user_errors(sim: SimulatedRunPod) -> None:
    manager = CloudGPUManager([create_runpod_config(KEY, sim.url)], journal="j.sqlite3")
    for call, message in [
        (lambda: manager.generate_speech(b"bytes"), "text must be a string"),
        (lambda: manager.generate_speech("Hi.", speaker=-1), "speaker must be an integer"),
        (lambda: manager.generate_speech("Hi.", max_length_ms=0), "max_length_ms must be"),
        (lambda: manager.generate_speech("Hi.", voice="x"), "has no option voice"),
        (lambda: manager.generate_speech("Hi.", context="text"), "context must be a list"),
        (lambda: manager.generate_speech("Hi.", context=[object()]), "context[0]: a segment"),
        (
            lambda: manager.generate_speech(
                "Hi.", context=[{"speaker": 0, "text": "x", "audio": 1}]
            ),
            "context[0].audio: expected a mono torch tensor",
        ),
    ]:
        with pytest.raises(UserError) as info:
            call()
        assert message in str(info.value)
    assert sum(sim.stats()["submissions"].values()) == 0


def test_context_segments_may_carry_tensors_audio_arrays_or_nothing() -> None:
    torch = pytest.importorskip("torch")
    tone = np.sin(np.arange(2400, dtype=np.float32) / 10).astype(np.float32)
    segments = segments_from(
        [
            {"speaker": 0, "text": "A tensor.", "audio": torch.from_numpy(tone).unsqueeze(0)},
            {"speaker": 1, "text": "Audio.", "audio": Audio(tone, 24_000)},
            {"speaker": 0, "text": "An array.", "audio": tone},
            {"speaker": 1, "text": "Nothing.", "audio": None},
        ]
    )
    assert [s.speaker for s in segments] == [0, 1, 0, 1]
    assert segments[0].audio == segments[1].audio == segments[2].audio == Audio(tone, 24_000)
    assert segments[3].audio is None


# --- the list order -------------------------------------------------------------------------

PRICED = """
audio:
  cloud_gpu:
    provider: cheapest
providers:
  cheapest:
    kind: runpod
    endpoint_url: {url}
    api_key: {key}
    usd_per_hour: 0.5
  espeak:
    kind: espeak
"""


def test_the_list_order_is_the_preference_then_the_price(sim: SimulatedRunPod) -> None:
    config = load_config_text(PRICED.format(url=sim.url, key=KEY), "priced.yaml", {})
    dear = create_runpod_config(KEY, sim.url, usd_per_hour=9.0, name="dear")
    cheap = create_runpod_config(KEY, sim.url, usd_per_hour=1.0, name="cheap")
    request = [SpeechRequest("Hello there.")]

    def order(providers: Any) -> list[str]:
        with CloudGPUManager(providers, config=config, journal="j.sqlite3") as manager:
            return [c.target.name for c in manager.plan(request).candidates]

    assert order([dear, cheap]) == ["dear", "cheap"]  # not by price: as the user listed them
    assert order([cheap, "cheapest", dear]) == ["cheap", "cheapest", "dear"]
    assert order(None) == ["cheapest"]  # every configured target; espeak is draft quality
    with CloudGPUManager([dear, cheap], config=config, journal="j.sqlite3") as manager:
        first = manager.plan(request).first
    assert first.note.startswith("preferred: number 1 in the list given to CloudGPUManager")
    again = create_runpod_config(KEY, sim.url)
    with CloudGPUManager([again, again, "espeak"], config=config) as manager:
        assert [c.name for c in manager.checks] == ["runpod", "runpod-2", "espeak"]


def test_failures_raise_runtime_errors_as_the_original_did(sim: SimulatedRunPod) -> None:
    dead = create_runpod_config(KEY, "http://127.0.0.1:9/v2/gone", name="dead")
    with pytest.raises(RuntimeError) as info:
        CloudGPUManager([dead], journal="j.sqlite3", settings=FAST).generate_speech("Hi.")
    assert isinstance(info.value, NoProviderUsable) and "dead" in str(info.value)
    sim.cloud.inject_job("failed", 50)
    live = create_runpod_config(KEY, sim.url, use_runsync=False)
    with pytest.raises(RuntimeError) as info:
        CloudGPUManager([live], journal="j.sqlite3", settings=FAST).generate_speech("Hi.")
    assert isinstance(info.value, GenerationFailed) and KEY not in str(info.value)


def test_a_call_stopped_by_the_budget_says_so(sim: SimulatedRunPod) -> None:
    dear = create_runpod_config(KEY, sim.url, usd_per_hour=3600.0)  # a dollar a second
    manager = CloudGPUManager([dear], journal="j.sqlite3", max_usd=0.01, settings=FAST)
    with pytest.raises(BudgetExceeded, match="raise max_usd"):
        manager.generate_speech("A sentence far too dear to say.")
    assert _paid(sim) == 0


# --- the original's script, torch absent -------------------------------------------------------


def test_the_import_is_the_only_line_that_changes() -> None:
    changed = [
        line
        for line in difflib.unified_diff(
            ORIGINAL_SCRIPT.splitlines(), migrated(ORIGINAL_SCRIPT).splitlines(), lineterm=""
        )
        if line[:1] in "+-" and not line.startswith(("+++", "---"))
    ]
    assert len(changed) == 2 and changed[0].startswith("-" + IMPORT_BEFORE)


def test_the_original_script_without_torch_gets_audio(sim: SimulatedRunPod, workdir: Path) -> None:
    env = {"RUNPOD_API_KEY": KEY, "RUNPOD_ENDPOINT_URL": f"{sim.url}/run"}
    done = run_script(migrated(ORIGINAL_SCRIPT), workdir, env, torch=False)
    assert done.returncode == 0, done.stderr
    found = rows(done.stdout)
    assert [r["label"] for r in found] == ["conversation", "conversation", "runpod"]
    for row in found:
        assert row["type"] == "Audio" and row["provider"] == "runpod" and not row["torch"]
        assert row["frames"] == sim_frames(row["text"], row["ms"])
    assert KEY not in done.stdout + done.stderr


def test_with_audio_context_the_core_never_imports_torch(
    sim: SimulatedRunPod, workdir: Path
) -> None:
    script = f"""
import sys
import numpy as np
from csm_offload import Audio
from csm_offload.cloud_gpu_client import CloudGPUManager, create_runpod_config

manager = CloudGPUManager([create_runpod_config({KEY!r}, {sim.url!r})], output="audio")
context = [{{"speaker": 0, "text": "Before.", "audio": Audio(np.zeros(4800, np.float32), 24000)}}]
audio = manager.generate_speech("And after that.", speaker=1, context=context)
print(type(audio).__name__, audio.frames, audio.sample_rate, "torch" in sys.modules)
"""
    done = run_script(script, workdir, {})
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [
        "Audio",
        str(sim_frames("And after that.", 10_000)),
        "24000",
        "False",
    ]


# --- a key given in code never leaves -----------------------------------------------------------


def needles(value: str) -> list[str]:
    raw, bearer = value.encode(), f"Bearer {value}".encode()
    return [
        value,
        urllib.parse.quote(value, safe=""),
        base64.b64encode(raw).decode().rstrip("="),
        base64.b64encode(bearer).decode().rstrip("="),
        json.dumps(value)[1:-1],
    ]


def assert_nowhere(value: str, texts: list[str], folder: Path) -> None:
    for needle in needles(value):
        for text in texts:
            assert needle not in text
        for path in folder.rglob("*"):
            if path.is_file():
                assert needle.encode() not in path.read_bytes(), path


LEAK_SCRIPT = """
import logging
import sys

logging.basicConfig(filename="client.log", level=logging.DEBUG)
from csm_offload.cloud_gpu_client import CloudGPUClient, CloudGPUManager, create_runpod_config

KEY = {key!r}
echo = create_runpod_config(KEY, {echo!r}, name="echo", use_runsync=False)
good = create_runpod_config(KEY, {good!r}, name="good", use_runsync=False, usd_per_hour=9.0)
print(repr(echo), str(good), repr(good.target), repr(good.spec))
try:
    create_runpod_config(KEY, "ftp://example.com/v2/x")
except Exception as exc:
    print("refused:", exc)
manager = CloudGPUManager([echo, good], output="audio")
print(repr(manager), vars(manager), manager.checks)
audio = manager.generate_speech("A sentence worth saying once.", speaker=0)
print(manager.get_current_provider(), audio, manager.last_result.summary())
client = CloudGPUClient(good)
print(repr(client), client.get_provider_info(), client.estimate_cost("A few words.", 1.5))
print(client.generate_speech("A sentence worth saying once."), file=sys.stderr)
"""


def test_a_key_given_in_code_appears_in_no_output(sim: SimulatedRunPod, workdir: Path) -> None:
    """The first endpoint answers every submission 500 with a body echoing the key (plainly,
    as JSON, base64, URL-encoded); the call fails over to the second. Nothing the process
    writes or prints holds the key in any form."""
    echo_sim = SimulatedRunPod(api_key=KEY, workers=1, seconds_per_char=0.0005)
    echo = Echo(echo_sim.cloud.handle, {"run"})
    echo_sim.cloud.handle = echo  # type: ignore[method-assign]
    with echo_sim:
        script = LEAK_SCRIPT.format(key=KEY, echo=echo_sim.url, good=sim.url)
        done = run_script(script, workdir, {"CSM_OFFLOAD_LOAD_PLUGINS": "runpod"})
    assert done.returncode == 0, done.stderr
    assert echo.answered >= 1, "the echoing endpoint was never asked"
    assert "refused: runpod provider config: endpoint_url" in done.stdout
    assert "good" in done.stdout and "Secret('********')" in done.stdout
    (workdir / "script.py").unlink()  # the script itself holds the key, as the user's would
    assert_nowhere(KEY, [done.stdout, done.stderr], workdir)
    assert (workdir / "client.log").is_file() and (workdir / ".csm-offload").is_dir()


# --- the original's scripts: pipeline and test_cloud_gpu --------------------------------------

PAGES = {
    "/lighthouse": ("The Lighthouse", "The keeper climbed the stairs at dusk. The lamp was lit."),
    "/harbour": ("The Harbour", "Boats came in with the tide. The nets were full of fish."),
    "/storm": ("The Storm", "Wind rose over the cliffs. Nobody slept that night at all."),
}
BOOK_CONFIG = """
audio:
  cloud_gpu:
    fallback_to_local: false
providers:
  sim:
    kind: runpod
    endpoint_url: {url}
    api_key: {key}
    max_batch: 2
    use_runsync: false
    seconds_per_char: 0.003
    job_overhead_s: 0
    usd_per_second: 0.01
"""


@attrs.define
class Pages:
    """The book's web pages, served on loopback by the book tests' `site`; counts fetches."""

    site: Site
    fetched: Counter[str]

    def url(self, path: str) -> str:
        return self.site.url(path)


def _page(path: str, fetched: Counter[str]) -> Route:
    title, text = PAGES[path]
    body = (
        f"<html lang='en'><head><title>{title}</title></head><body><article><h1>{title}</h1>"
        f"<p>{text}</p><p>{text}</p></article></body></html>"
    ).encode()

    def route(handler: BaseHTTPRequestHandler, _stop: threading.Event) -> None:
        fetched[path] += 1
        respond(handler, 200, body, {"Content-Type": "text/html; charset=utf-8"})

    return route


@pytest.fixture
def pages(request: pytest.FixtureRequest) -> Pages:
    start: Callable[[dict[str, Route]], Site] = request.getfixturevalue("site")
    fetched: Counter[str] = Counter()
    return Pages(start({path: _page(path, fetched) for path in PAGES}), fetched)


@pytest.fixture
def book_dir(
    sim: SimulatedRunPod, pages: Pages, workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> Path:
    monkeypatch.setenv("CSM_OFFLOAD_LOAD_PLUGINS", "runpod")
    (workdir / "cfg.yaml").write_text(BOOK_CONFIG.format(url=sim.url, key=KEY), "utf-8")
    table = "url,group,title\n"
    table += f"{pages.url('/lighthouse')},group1,The Keeper\n{pages.url('/harbour')},group1,\n"
    table += f"{pages.url('/storm')},group2,The Storm\n"
    (workdir / "urls.csv").write_text(table, "utf-8")
    return workdir


def test_pipeline_arguments_become_book_arguments(workdir: Path) -> None:
    flags = ["--urls", "u.csv", "--groups", "group1", "group2", "--cloud-gpu"]
    assert book_args(flags) == [
        "book",
        "--urls",
        "u.csv",
        "--cloud-gpu",
        "--groups",
        "group1,group2",
    ]
    assert book_args(["--debug", "--groups=a,b", "--config", "c.yaml", "--urls=u.csv"]) == [
        "--debug", "--config", "c.yaml", "book", "--urls=u.csv", "--groups", "a,b",
    ]  # fmt: skip
    assert book_args(["-o", "out", "--format", "m4b"]) == ["book", "-o", "out", "--format", "m4b"]
    (workdir / "urls.csv").write_text("url,group\n", "utf-8")
    assert book_args(["--local-audio"]) == ["book", "--urls", "urls.csv", "--local-audio"]
    assert book_args(["-o", "x", "book.md"]) == ["book", "-o", "x", "book.md"]
    assert doctor_args([]) == ["doctor", "--json", RESULTS_FILE]
    assert doctor_args(["--config", "c.yaml", "--json", "r.json"]) == [
        "--config", "c.yaml", "doctor", "--json", "r.json",
    ]  # fmt: skip


def _chapters(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*/chapters/*.flac"))}


def _paid(sim: SimulatedRunPod) -> int:
    return sum(sim.stats()["submissions"].values())


def test_the_pipeline_flags_do_what_book_does(
    book_dir: Path, sim: SimulatedRunPod, pages: Pages, capsys: pytest.CaptureFixture[str]
) -> None:
    common = ("--config", "cfg.yaml")
    dry = ("--cloud-gpu", "--dry-run", "--json", "-o", "books")
    assert cli(pipeline_main, *common, "--groups", "group1", "group2", *dry) == 0
    from_pipeline = json.loads(capsys.readouterr().out)
    assert (
        cli(cli_main, *common, "book", "--urls", "urls.csv", "--groups", "group1,group2", *dry) == 0
    )
    assert json.loads(capsys.readouterr().out) == from_pipeline
    assert [b["title"] for b in from_pipeline["books"]] == ["group1", "group2"]

    run = ("--urls", "urls.csv", "--groups", "group1", "--cloud-gpu", "--quiet", "-o", "books")
    assert cli(pipeline_main, *common, *run) == 0
    made, paid = _chapters(book_dir / "books"), _paid(sim)
    assert len(made) == 2 and paid > 0
    assert cli(cli_main, *common, "book", *run) == 0  # the same flags in book: nothing to pay
    assert _chapters(book_dir / "books") == made and _paid(sim) == paid
    fetched = sum(pages.fetched.values())
    assert (
        cli(pipeline_main, *common, "--groups", "group1", "--audio-only", "--quiet", "-o", "books")
        == 0
    )
    assert sum(pages.fetched.values()) == fetched and _paid(sim) == paid  # fetched nothing
    capsys.readouterr()

    for flags in (["--local-audio"], ["--cloud-gpu", "--local-audio"]):
        assert cli(pipeline_main, *common, "--groups", "group1", *flags, "-o", "books") == 2
        from_pipeline_err = capsys.readouterr().err
        book = ("book", "--urls", "urls.csv", "--groups", "group1", *flags, "-o", "books")
        assert cli(cli_main, *common, *book) == 2
        assert capsys.readouterr().err == from_pipeline_err and from_pipeline_err.startswith(
            "error:"
        )
    report = (book_dir / "books" / "group1" / "report.json").read_text("utf-8")
    assert json.loads(report)["failed_chunks"] == []
    assert_nowhere(KEY, [report], book_dir / "books")


def test_test_cloud_gpu_writes_the_original_results_file(
    book_dir: Path, sim: SimulatedRunPod, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli(doctor_main, "--config", "cfg.yaml") == 0
    out = capsys.readouterr().out
    report = json.loads((book_dir / RESULTS_FILE).read_text("utf-8"))
    (row,) = report["targets"]
    assert row["name"] == "sim" and row["health"]["ok"] and row["generation"]["ok"]
    assert f"results: {RESULTS_FILE}" in out and _paid(sim) == 1
    assert_nowhere(KEY, [out, (book_dir / RESULTS_FILE).read_text("utf-8")], book_dir / "none")


def test_the_entry_points_run_with_python_m(book_dir: Path, sim: SimulatedRunPod) -> None:
    env = {**os.environ, "CSM_OFFLOAD_LOAD_PLUGINS": "runpod"}
    for module, args in [
        ("csm_offload.test_cloud_gpu", ["--config", "cfg.yaml", "--no-generate"]),
        ("csm_offload.pipeline", ["--config", "cfg.yaml", "--groups", "group2", "--dry-run"]),
    ]:
        done = subprocess.run(
            [sys.executable, "-m", module, *args],
            cwd=book_dir,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        assert KEY not in done.stdout + done.stderr
    assert json.loads((book_dir / RESULTS_FILE).read_text("utf-8"))["targets"][0]["usable"]
    assert _paid(sim) == 0


def test_pytest_does_not_collect_the_test_cloud_gpu_command() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text("utf-8"))
    assert pyproject["tool"]["pytest"]["ini_options"]["testpaths"] == ["tests"]
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
         "core/csm_offload/test_cloud_gpu.py"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )  # fmt: skip
    assert done.returncode == 5, done.stdout + done.stderr  # 5: no tests collected


# --- docs/migrating.md, followed --------------------------------------------------------------


def doc() -> str:
    return (ROOT / "docs" / "migrating.md").read_text("utf-8")


def blocks(kind: str) -> list[str]:
    """The fenced blocks of the page whose info string is `kind` ("" for a bare fence)."""
    found: list[str] = []
    current: list[str] | None = None
    info = ""
    for line in doc().splitlines():
        if line.startswith("```") and current is None:
            current, info = [], line[3:].strip()
        elif line.startswith("```") and current is not None:
            if info == kind:
                found.append("\n".join(current) + "\n")
            current = None
        elif current is not None:
            current.append(line)
    return found


def test_the_docs_before_and_after_differ_in_the_import_only() -> None:
    before, after = [b for b in blocks("python") if "cloud_gpu_client import" in b][:2]
    assert IMPORT_BEFORE in before and IMPORT_AFTER in after
    assert migrated(before) == after


def test_the_docs_error_line_is_what_a_bad_config_says(workdir: Path) -> None:
    (line,) = [b.strip() for b in blocks("") if "provider config:" in b]
    url = re.search(r"got '([^']+)'", line)
    assert url is not None
    with pytest.raises(UserError) as info:
        create_runpod_config(KEY, url.group(1))
    assert str(info.value) == line


def test_the_docs_are_followed_end_to_end(
    book_dir: Path,
    sim: SimulatedRunPod,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The page's code, its YAML as csm-offload.yaml and its commands, with its environment
    variables set: RunPod is the simulated cloud (its URL ending in /run), Thunder a VM that
    is down (the page's code lists it second; the YAML's provider prefers RunPod)."""
    env = {
        "RUNPOD_API_KEY": KEY,
        "RUNPOD_ENDPOINT_URL": f"{sim.url}/run",
        "THUNDER_API_KEY": WORKER_TOKEN,
        "THUNDER_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}",
        "CSM_OFFLOAD_LOAD_PLUGINS": "runpod,thunder",
    }
    after = next(b for b in blocks("python") if IMPORT_AFTER in b)
    done = run_script(after, book_dir, env)
    assert done.returncode == 0, done.stderr
    texts = re.findall(r'\(\d, "([^"]+)"\)', after)
    expected = [f"runpod (1, {sim_frames(text, 10_000)})" for text in texts]
    assert done.stdout.splitlines() == expected

    (yaml,) = blocks("yaml")
    (book_dir / "csm-offload.yaml").write_text(yaml, "utf-8")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert cli(cli_main, "config", "check") == 0
    assert capsys.readouterr().out.startswith("config OK: csm-offload.yaml (2 targets")
    assert cli(cli_main, "providers", "--offline", "--json") == 0
    states = {r["name"]: r["state"] for r in json.loads(capsys.readouterr().out)}
    assert states == {"runpod": "usable", "thunder": "usable"}

    (commands,) = [b for b in blocks("sh") if "csm_offload.pipeline" in b]
    results = {}
    for line in commands.strip().splitlines():
        args = line.split()[1:]  # `python` is this interpreter
        results[args[1]] = subprocess.run(
            [sys.executable, *args],
            cwd=book_dir,
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            timeout=180,
        )
    pipeline, doctor = results["csm_offload.pipeline"], results["csm_offload.test_cloud_gpu"]
    assert pipeline.returncode == 0, pipeline.stderr
    assert len(_chapters(book_dir / "audiobooks")) == 2
    assert doctor.returncode == 1, doctor.stderr  # the Thunder VM is down
    report = {r["name"]: r for r in json.loads((book_dir / RESULTS_FILE).read_text())["targets"]}
    assert report["runpod"]["generation"]["ok"] and not report["thunder"]["health"]["ok"]
    outputs = [p.stdout + p.stderr for p in results.values()] + [done.stdout + done.stderr]
    assert_nowhere(KEY, outputs, book_dir / "audiobooks")
