"""The PostgreSQL journal on a real server (tests/postgres.py): the SQLite journal's contract,
versioned migrations, and claims with leases between runs that share it."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from csm_offload import Audio, JobHandle, SpeechRequest
from csm_offload import journal as jr
from csm_offload.journal import Journal, JournalError, open_journal
from csm_offload.pgjournal import MIGRATIONS, PgJournal, migrate


def _tone(seconds: float = 0.2, level: float = 0.1) -> Audio:
    import numpy as np

    frames = int(24_000 * seconds)
    return Audio(np.full(frames, level, dtype=np.float32), 24_000)


@pytest.fixture(params=["sqlite", "postgresql"])
def any_journal(
    request: pytest.FixtureRequest, tmp_path: Path, postgres_server: Any
) -> Iterator[Callable[[], Any]]:
    """A factory of journals over one store: the SQLite file, or a fresh PostgreSQL database
    (a second call opens another client of the same one)."""
    opened: list[Any] = []
    if request.param == "sqlite":

        def make() -> Any:
            opened.append(Journal(tmp_path / "journal.sqlite3"))
            return opened[-1]
    else:
        dsn = postgres_server.create_database()

        def make() -> Any:
            opened.append(PgJournal(dsn, audio_store=str(tmp_path / "audio"), local_dir=tmp_path))
            return opened[-1]

    yield make
    for journal in opened:
        journal.close()


def _pg(dsn: str, tmp_path: Path, lease_s: float = 30.0) -> PgJournal:
    return PgJournal(dsn, audio_store=str(tmp_path / "audio"), lease_s=lease_s, local_dir=tmp_path)


def _kill_lease(dsn: str, journal: PgJournal) -> None:
    """What a dead process looks like: no heartbeat, a lease in the past."""
    assert journal._heartbeat is not None
    journal._heartbeat.stop()
    with psycopg.connect(dsn, autocommit=True) as db:
        db.execute(
            "UPDATE csm_runs SET lease_until = clock_timestamp() - interval '1 second' "
            "WHERE run_id = %s",
            (journal.run_id,),
        )


# --- the same contract as the SQLite journal ------------------------------------------------


def test_results_first_kept_wins_and_cached_finds_them(any_journal: Callable[[], Any]) -> None:
    journal = any_journal()
    a, b = SpeechRequest("One."), SpeechRequest("Two.")
    journal.record_requests([a, b, a])
    first = journal.store_result(a.id, "csm", "pod", None, _tone(level=0.1))
    second = journal.store_result(a.id, "csm", "other", None, _tone(level=0.2))
    assert second == first  # a late duplicate never replaces audio already used
    found = journal.cached([a.id, b.id], "csm")
    assert set(found) == {a.id} and found[a.id].target == "pod"
    assert journal.cached([a.id], "draft") == {}
    assert journal.load_audio(found[a.id]).frames == _tone().frames


def test_job_lifecycle_money_and_reattachment(any_journal: Callable[[], Any]) -> None:
    journal = any_journal()
    journal.lock_for_run()
    a, b = SpeechRequest("One."), SpeechRequest("Two, longer.")
    journal.record_requests([a, b])
    key = journal.begin_job("pod", "csm", [a.id, b.id], 0.02)
    handle = JobHandle("pod", "job-1", (a.id, b.id), time.time(), {"k": "v"})
    journal.job_submitted(key, handle)
    row = journal.job(key)
    assert row.state == jr.SUBMITTED and row.handle == handle and row.request_ids == (a.id, b.id)
    assert journal.run_spend() == pytest.approx(0.02)
    journal.job_finished(key, jr.COMPLETED, actual_usd=0.01, exec_ms=1000, queue_ms=5)
    assert journal.run_spend() == pytest.approx(0.01)
    assert journal.request_cost(a.id) == pytest.approx(0.005)
    assert journal.submissions_of(a.id) == 1
    [finished] = journal.finished_jobs()
    assert finished.chars == len(a.text) + len(b.text) and finished.exec_ms == 1000
    [priced] = journal.priced_by_target()
    assert priced.target == "pod" and priced.all_runs.jobs == 1
    [day] = journal.spend_by_target_day()
    assert day["jobs"] == 1 and day["actual_usd"] == pytest.approx(0.01)
    unsent = journal.begin_job("pod", "csm", [a.id], 0.01)
    assert journal.abandon_unsent() == 0  # this run's own job: it is alive
    assert journal.job(unsent).state == jr.SUBMITTING
    assert [r.key for r in journal.jobs()] == [key, unsent]


def test_open_journal_picks_the_backend(tmp_path: Path, pg_dsn: str) -> None:
    with open_journal(tmp_path / "j.sqlite3") as sqlite:
        assert isinstance(sqlite, Journal) and not sqlite.shared
    with open_journal(pg_dsn, audio_store=str(tmp_path / "a")) as pg:
        assert isinstance(pg, PgJournal) and pg.shared


# --- migrations -----------------------------------------------------------------------------


def test_migrations_are_versioned_applied_once_and_refuse_a_newer_schema(
    pg_dsn: str, tmp_path: Path
) -> None:
    _pg(pg_dsn, tmp_path).close()
    _pg(pg_dsn, tmp_path).close()  # a second client applies nothing again
    with psycopg.connect(pg_dsn, autocommit=True) as db:
        versions = [r[0] for r in db.execute("SELECT version FROM csm_schema_versions")]
        assert versions == list(range(1, len(MIGRATIONS) + 1))
        assert migrate(db) == len(MIGRATIONS)
        db.execute("INSERT INTO csm_schema_versions (version) VALUES (%s)", (len(MIGRATIONS) + 1,))
    with pytest.raises(JournalError, match="newer than this csm-offload"):
        _pg(pg_dsn, tmp_path)


def test_an_unreachable_server_is_one_clear_error(tmp_path: Path) -> None:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(JournalError) as caught:
        PgJournal(f"postgresql://team@127.0.0.1:{port}/books", local_dir=tmp_path)
    message = str(caught.value)
    assert f"127.0.0.1:{port}/books" in message and "PGPASSWORD" in message


# --- claims and leases ----------------------------------------------------------------------


def test_a_live_runs_claims_are_its_own_until_it_ends_or_dies(pg_dsn: str, tmp_path: Path) -> None:
    one, two, three = (_pg(pg_dsn, tmp_path) for _ in range(3))
    for journal in (one, two, three):
        journal.lock_for_run()
    try:
        assert one.claim(["x", "y"], "csm") == ["x", "y"]
        assert one.claim(["x"], "csm") == ["x"]  # claiming again what is ours
        assert two.claim(["y", "z"], "csm") == ["z"]
        assert two.claim(["y"], "draft") == ["y"]  # another quality is another request
        one.close()  # ended cleanly: its claims are free at once
        assert two.claim(["x", "y"], "csm") == ["x", "y"]
        _kill_lease(pg_dsn, two)
        assert three.claim(["x", "y", "z"], "csm") == ["x", "y", "z"]
    finally:
        for journal in (two, three):
            journal.close()


def test_a_dead_runs_in_flight_job_is_adopted_by_one_run_only(pg_dsn: str, tmp_path: Path) -> None:
    dead, first, second = (_pg(pg_dsn, tmp_path) for _ in range(3))
    for journal in (dead, first, second):
        journal.lock_for_run()
    try:
        request = SpeechRequest("In flight when its run died.")
        dead.record_requests([request])
        dead.claim([request.id], "csm")
        key = dead.begin_job("pod", "csm", [request.id], 0.01)
        dead.job_submitted(key, JobHandle("pod", "job-9", (request.id,), time.time()))
        unsent = dead.begin_job("pod", "csm", [request.id], 0.01)
        assert first.adopt("csm", [request.id]) == []  # its run is alive: not ours
        assert first.claim([request.id], "csm") == []
        _kill_lease(pg_dsn, dead)
        assert first.abandon_unsent() == 1 and first.job(unsent).state == jr.ABANDONED
        [adopted] = first.adopt("csm", [request.id])
        assert adopted.key == key and adopted.handle is not None
        assert adopted.handle.job_id == "job-9"
        assert first.job(key).run_id == first.run_id
        assert second.adopt("csm", [request.id]) == []  # first is alive: it follows the job
        assert second.claim([request.id], "csm") == []  # and the claim came with the job
    finally:
        for journal in (first, second):
            journal.close()
        with contextlib.suppress(Exception):
            dead.db.close()


def test_the_heartbeat_keeps_a_busy_run_alive(pg_dsn: str, tmp_path: Path) -> None:
    """The lease is renewed from a thread: a run whose loop is busy is not taken for dead."""
    busy, other = _pg(pg_dsn, tmp_path, lease_s=2.0), _pg(pg_dsn, tmp_path, lease_s=2.0)
    busy.lock_for_run()
    other.lock_for_run()
    try:
        assert busy.claim(["r"], "csm") == ["r"]
        time.sleep(3.0)  # past the lease, but the heartbeat renewed it
        assert other.claim(["r"], "csm") == []
    finally:
        busy.close()
        other.close()


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    steps=st.lists(
        st.tuples(
            st.integers(0, 2),
            st.sampled_from(["claim", "die", "end"]),
            st.lists(st.sampled_from("abcde"), max_size=4),
        ),
        max_size=12,
    )
)
def test_no_request_is_ever_held_by_two_live_runs(
    steps: list[tuple[int, str, list[str]]], postgres_server: Any, tmp_path: Path
) -> None:
    """Any interleaving of claims, deaths and clean ends: the live runs' grants never
    overlap, and a request nobody live holds can always be claimed."""
    dsn = postgres_server.create_database()
    runs = [_pg(dsn, tmp_path) for _ in range(3)]
    live = [True, True, True]
    held: dict[str, int] = {}
    try:
        for run in runs:
            run.lock_for_run()
        for who, action, ids in steps:
            if not live[who]:
                continue
            if action == "claim":
                granted = runs[who].claim(ids, "csm")
                for rid in ids:
                    holder = held.get(rid)
                    free = holder is None or not live[holder] or holder == who
                    assert (rid in granted) == free
                    if free:
                        held[rid] = who
            elif action == "die":
                _kill_lease(dsn, runs[who])
                live[who] = False
            else:
                runs[who].close()
                live[who] = False
    finally:
        for run in runs:
            with contextlib.suppress(Exception):
                run.close()


def test_a_lost_server_mid_run_is_one_clear_error(tmp_path: Path) -> None:
    from tests.postgres import running

    with running() as server:
        journal = _pg(server.create_database(), tmp_path)
        journal.record_requests([SpeechRequest("Before the server went away.")])
        server.stop()
        with pytest.raises(JournalError, match="lost the PostgreSQL journal") as caught:
            journal.record_requests([SpeechRequest("After.")])
        assert "run again once the database is back" in str(caught.value)
        journal.close()  # closing a journal whose server is gone does not raise


def test_the_cli_names_an_unreachable_journal_and_exits_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import socket

    from csm_offload.cli import main

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CSM_OFFLOAD_LOAD_PLUGINS", "espeak")
    (tmp_path / "cfg.yaml").write_text(
        f"run:\n  journal: postgresql://team@127.0.0.1:{port}/books\n"
    )
    (tmp_path / "t.txt").write_text("Hello there.")
    with pytest.raises(SystemExit) as exited:
        main(["--config", "cfg.yaml", "synth", "t.txt", "-o", "o.wav", "--draft", "--quiet"])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert f"cannot reach the PostgreSQL journal 127.0.0.1:{port}/books" in err
    assert "Traceback" not in err and not (tmp_path / "o.wav").exists()


def test_a_released_claim_is_free_for_others_while_its_run_lives(
    pg_dsn: str, tmp_path: Path
) -> None:
    one, two = _pg(pg_dsn, tmp_path), _pg(pg_dsn, tmp_path)
    one.lock_for_run()
    two.lock_for_run()
    try:
        assert one.claim(["gave-up", "kept"], "csm") == ["gave-up", "kept"]
        one.release(["gave-up", "kept"], "draft")  # another quality: nothing released
        one.release(["gave-up"], "csm")
        assert two.claim(["gave-up", "kept"], "csm") == ["gave-up"]
    finally:
        one.close()
        two.close()


def test_a_request_with_a_result_is_never_claimed_again(pg_dsn: str, tmp_path: Path) -> None:
    """Another run may have planned it before its result came; its maker's claim may be gone
    by the time that run gets to it: the result, not the claim, says it is done."""
    maker, late = _pg(pg_dsn, tmp_path), _pg(pg_dsn, tmp_path)
    maker.lock_for_run()
    late.lock_for_run()
    try:
        request = SpeechRequest("Made once, wanted twice.")
        maker.record_requests([request])
        assert maker.claim([request.id], "csm") == [request.id]
        stored = maker.store_result(request.id, "csm", "pod", None, _tone())
        maker.close()  # its claims are released
        assert late.claim([request.id, "other"], "csm") == ["other"]
        # Its audio deleted (damaged, cleaned up): the row goes, and it may be made again.
        maker.store.path(stored.audio_sha256).unlink()
        assert late.cached([request.id], "csm") == {}
        assert late.claim([request.id], "csm") == [request.id]
    finally:
        late.close()
