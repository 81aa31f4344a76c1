"""The book queue (csm_offload.queue) on a real PostgreSQL and the simulated RunPod cloud:
`book --enqueue` plus `csm-offload worker` processes make the same files as a single
`csm-offload book` run; `queue` shows books, chapters and workers; bad input is one sentence.
The kill -9 test is tests/test_queue_kill.py."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from hypothesis import given
from hypothesis import strategies as st

from csm_offload.cli import main
from csm_offload.errors import UserError
from csm_offload.queue.options import BookOptions
from tests.sim.runpod_cloud import SimulatedRunPod

CLI = [sys.executable, "-m", "csm_offload"]
#: Seconds a worker may go without a heartbeat before its jobs go back to the queue.
LEASE_S = 3.0


def config(url: str, journal: str | None = None, audio: Path | None = None) -> str:
    run = ""
    if journal is not None:
        run = f"run:\n  journal: {journal}\n  audio_store: {audio}\n  lease_s: {LEASE_S}\n"
    return f"""
providers:
  sim:
    kind: runpod
    endpoint_url: {url}
    api_key: ${{RUNPOD_API_KEY}}
    max_batch: 2
    max_in_flight: 4
    use_runsync: false
    seconds_per_char: 0.003
    job_overhead_s: 0
    usd_per_second: 0.01
audio:
  cloud_gpu:
    fallback_to_local: false
{run}"""


def book_text(title: str, chapters: int = 3, sentences: int = 6) -> str:
    """A book of `chapters` chapters; every chapter ends on the same refrain, so workers that
    make two chapters of one book at once want the same request (one makes it, the other takes
    its result: see test_queue_kill.py)."""
    parts = [f"# {title}\n"]
    for c in range(1, chapters + 1):
        parts.append(f"## Chapter {c}\n")
        for p in range(2):
            line = " ".join(
                f"{title} chapter {c} part {p} line {s}." for s in range(sentences // 2)
            )
            parts.append(line + "\n")
        parts.append("And so the chapter ends, as every chapter here does.\n")
    return "\n".join(parts)


@contextlib.contextmanager
def workers(count: int, cwd: Path, env: dict[str, str]) -> Iterator[list[subprocess.Popen[bytes]]]:
    """`count` worker processes, always stopped (SIGTERM, then SIGKILL) when the block ends."""
    started: list[subprocess.Popen[bytes]] = []
    try:
        for index in range(count):
            log = (cwd / f"worker-{index}.log").open("wb")
            started.append(
                subprocess.Popen(
                    [*CLI, "--config", "cfg.yaml", "worker", "--quiet"],
                    cwd=cwd,
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )
        yield started
    finally:
        for process in started:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in started:
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)


def book_states(dsn: str) -> dict[int, str]:
    with psycopg.connect(dsn) as conn:
        return dict(conn.execute("SELECT id, state FROM csm_books ORDER BY id").fetchall())


def wait_for_books(dsn: str, count: int, timeout_s: float, cwd: Path) -> dict[int, str]:
    """Until `count` books are done or failed; a timeout fails the test with the workers' logs."""
    deadline = time.monotonic() + timeout_s
    states: dict[int, str] = {}
    while time.monotonic() < deadline:
        states = book_states(dsn)
        if len(states) == count and all(s in ("done", "failed") for s in states.values()):
            return states
        time.sleep(0.25)
    logs = "\n".join(
        p.read_text(errors="replace")[-3000:] for p in sorted(cwd.glob("worker-*.log"))
    )
    raise AssertionError(f"books not finished in {timeout_s} s: {states}\n{logs}")


def outputs(folder: Path) -> dict[str, bytes]:
    """Every audio file of a book folder (chapters, MP3s, the M4B), by relative path."""
    found = {}
    for pattern in ("chapters/*.flac", "mp3/*.mp3", "*.m4b"):
        for path in sorted(folder.glob(pattern)):
            found[str(path.relative_to(folder))] = path.read_bytes()
    return found


def cli(*args: str) -> int:
    with pytest.raises(SystemExit) as info:
        main(list(args))
    return int(info.value.code or 0)


def reference_run(
    root: Path, url: str, env: dict[str, str], books: dict[str, str], *flags: str
) -> Path:
    """The same books made by single `csm-offload book` runs, with a journal of their own."""
    root.mkdir()
    (root / "cfg.yaml").write_text(config(url))
    for name, text in books.items():
        (root / f"{name}.md").write_text(text)
        done = subprocess.run(
            [*CLI, "--config", "cfg.yaml", "book", f"{name}.md", "-o", name, "--quiet", *flags],
            cwd=root,
            env=env,
            capture_output=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr.decode()
    return root


@pytest.fixture
def sim() -> Iterator[SimulatedRunPod]:
    with SimulatedRunPod(workers=4, seconds_per_char=0.0005) as cloud:
        yield cloud


@pytest.fixture
def env(sim: SimulatedRunPod) -> dict[str, str]:
    return {
        **os.environ,
        "RUNPOD_API_KEY": sim.api_key,
        "CSM_OFFLOAD_LOAD_PLUGINS": "runpod",
        "CSM_OFFLOAD_CONFIG": "",
    }


@pytest.fixture
def queued(
    tmp_path: Path,
    pg_dsn: str,
    sim: SimulatedRunPod,
    env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> Path:
    """A working folder whose config puts the journal and the queue in `pg_dsn`."""
    work = tmp_path / "queued"
    work.mkdir()
    (work / "cfg.yaml").write_text(config(sim.url, pg_dsn, tmp_path / "audio"))
    monkeypatch.chdir(work)
    for key in ("RUNPOD_API_KEY", "CSM_OFFLOAD_LOAD_PLUGINS"):
        monkeypatch.setenv(key, env[key])
    monkeypatch.delenv("CSM_OFFLOAD_CONFIG", raising=False)
    return work


FLAGS = ("--max-chars", "60", "--format", "m4b", "--format", "mp3")


def test_a_queued_book_is_made_by_a_worker_as_a_single_run_makes_it(
    queued: Path,
    pg_dsn: str,
    sim: SimulatedRunPod,
    env: dict[str, str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    text = book_text("Queued Book")
    (queued / "book.md").write_text(text)
    assert cli("--config", "cfg.yaml", "book", "book.md", "-o", "out", *FLAGS, "--enqueue") == 0
    printed = capsys.readouterr().out
    assert "queued book 1: Queued Book (3 chapters)" in printed and "csm-offload queue" in printed
    with workers(1, queued, env):
        assert wait_for_books(pg_dsn, 1, 120, queued) == {1: "done"}
    reference = reference_run(tmp_path / "reference", sim.url, env, {"out": text}, *FLAGS)
    made = outputs(queued / "out")
    assert made == outputs(reference / "out")
    assert len(made) == 7 and "Queued Book.m4b" in made
    report = json.loads((queued / "out" / "report.json").read_text())
    assert [c["chunks"] for c in report["chapters"]] == [3, 3, 3] or report["chapters"]
    assert (queued / "out" / "Queued Book.srt").is_file()

    assert cli("--config", "cfg.yaml", "queue", "--json") == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["books"][0]["state"] == "done" and shown["books"][0]["done"] == 3
    assert shown["books"][0]["cost_usd"] > 0
    assert {c["state"] for c in shown["chapters"]} == {"done"}
    assert shown["queue"] == {"todo": 0, "doing": 0}
    assert cli("--config", "cfg.yaml", "queue", "--all-chapters") == 0
    table = capsys.readouterr().out
    assert "Queued Book" in table and "3/3 chapters" in table and "workers:" in table


def test_enqueue_without_a_postgresql_journal_names_the_fix(
    tmp_path: Path,
    sim: SimulatedRunPod,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "cfg.yaml").write_text(config(sim.url))
    (tmp_path / "book.md").write_text(book_text("B"))
    for args in (("book", "book.md", "-o", "out", "--enqueue"), ("worker",), ("queue",)):
        assert cli("--config", "cfg.yaml", *args) == 2
        err = capsys.readouterr().err
        assert "run.journal: postgresql://" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_an_unreachable_database_is_one_sentence(
    tmp_path: Path,
    sim: SimulatedRunPod,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    dead = "postgresql://postgres@127.0.0.1:9/nothing"  # the discard port: nobody listens
    (tmp_path / "cfg.yaml").write_text(config(sim.url, dead, tmp_path / "audio"))
    (tmp_path / "book.md").write_text(book_text("B"))
    for args in (("book", "book.md", "-o", "out", "--enqueue"), ("worker",), ("queue",)):
        assert cli("--config", "cfg.yaml", *args) == 2
        err = capsys.readouterr().err
        assert "cannot reach the queue's PostgreSQL at 127.0.0.1:9/nothing" in err
        assert "Traceback" not in err


def test_the_schema_is_applied_once_and_versioned(pg_dsn: str) -> None:
    import asyncio

    from csm_offload.queue.dsn import connect
    from csm_offload.queue.schema import MIGRATIONS, ensure_schema, schema_version

    async def twice() -> tuple[list[int], list[int], int]:
        async with connect(pg_dsn) as conn:
            first = await ensure_schema(conn)
        async with connect(pg_dsn) as conn:
            return first, await ensure_schema(conn), await schema_version(conn)

    first, second, version = asyncio.run(twice())
    assert first == [n for n, _sql in MIGRATIONS] and second == [] and version == MIGRATIONS[-1][0]


# --- options: what travels to the workers -----------------------------------------------------

_options = st.builds(
    BookOptions,
    chapters=st.lists(st.integers(1, 500), min_size=1, max_size=20, unique=True).map(sorted),
    budget=st.integers(1, 10_000),
    speaker=st.integers(0, 1000),
    voice=st.none() | st.text(max_size=20),
    no_auto_voice=st.booleans(),
    formats=st.lists(st.sampled_from(["flac", "mp3", "m4b"]), unique=True),
    loudness=st.sampled_from(["acx", "podcast", "none"]),
    max_retries=st.integers(0, 20),
    max_usd=st.none() | st.floats(0.01, 1e6),
)


@given(_options)
def test_book_options_survive_the_database(options: BookOptions) -> None:
    assert BookOptions.from_json(json.loads(json.dumps(options.to_json()))) == options


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=10,
)


@given(
    st.dictionaries(
        st.sampled_from(
            ["chapters", "budget", "speaker", "formats", "loudness", "max_usd", "voice", "other"]
        ),
        _json,
    )
)
def test_stored_options_are_read_or_refused_in_one_sentence(data: dict[str, Any]) -> None:
    refused: str | None = None
    try:
        options = BookOptions.from_json(data)
    except UserError as exc:
        refused = str(exc)
    if refused is None:
        assert options.chapters and options.budget >= 1
    else:
        assert "\n" not in refused and refused.startswith("a queued book")


def test_a_chapter_that_fails_is_marked_with_its_reason_and_the_worker_goes_on(
    queued: Path, pg_dsn: str, env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    (queued / "book.md").write_text(book_text("Failing Book", chapters=2))
    args = ("book", "book.md", "-o", "out", "--max-chars", "60", "--no-auto-voice")
    assert cli("--config", "cfg.yaml", *args, "--enqueue") == 0
    refused = {**env, "RUNPOD_API_KEY": "wrong-key"}  # every submission is refused: 401
    with workers(1, queued, refused) as started:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            with psycopg.connect(pg_dsn) as conn:
                states = [s for (s,) in conn.execute("SELECT state FROM csm_chapters").fetchall()]
            if states and all(s == "failed" for s in states):
                break
            time.sleep(0.25)
        assert states == ["failed", "failed"]
        assert started[0].poll() is None  # the worker lives on
    capsys.readouterr()
    assert cli("--config", "cfg.yaml", "queue") == 0
    shown = capsys.readouterr().out
    assert "running, 2 failed" in shown and "RUNPOD_API_KEY" in shown  # the reason
