"""Journal: write before acting, content-addressed results, no work twice, re-attach, costs."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from csm_offload import UserError
from csm_offload.journal import (
    ABANDONED,
    COMPLETED,
    SCHEMA_VERSION,
    SUBMITTED,
    SUBMITTING,
    Journal,
    JournalDamaged,
    JournalError,
    JournalFull,
    _handle_from,
    _handle_json,
)
from csm_offload.model import JobHandle, SpeechRequest
from csm_offload.plugins import Plugins
from csm_offload.router import RouteOptions, Router
from csm_offload.runner import Runner, RunResult
from tests.scripted_provider import (
    ScriptedProvider,
    make_router,
    registered_all,
    requests_for,
    tone_for,
)
from tests.test_runner import FAST
from tests.test_stores import WRITE_FAILURES, half_writes

CONFIG = """
providers:
  a:
    kind: cloud_a
    max_batch: 2
    usd_per_second: 0.5
"""


def run(router: Router, requests: list[SpeechRequest], path: Path) -> RunResult:
    async def go() -> RunResult:
        with Journal(path) as journal:
            async with httpx.AsyncClient() as http:
                return await Runner(router, journal, http, FAST, RouteOptions()).run(requests)

    return asyncio.run(go())


def test_identical_work_is_never_generated_twice(plugins: Plugins, tmp_path: Path) -> None:
    a = ScriptedProvider("cloud_a", seconds_per_char=0.001)
    requests = requests_for(5)
    path = tmp_path / "journal.sqlite3"
    with registered_all(plugins, a=a):
        first = run(make_router(plugins, CONFIG), requests, path)
        # A second "book" shares two sentences with the first, plus one new one.
        second_requests = [*requests[:2], SpeechRequest("a new sentence.")]
        second = run(make_router(plugins, CONFIG), second_requests, path)
    assert first.ok and second.ok
    assert sum(a.submitted.values()) == 6
    assert [second.outcomes[r.id].cached for r in second_requests] == [True, True, False]
    for request in requests[:2]:
        assert second.outcomes[request.id].audio == first.outcomes[request.id].audio
    assert second.cost_usd < first.cost_usd


def test_audio_is_stored_once_by_content(tmp_path: Path) -> None:
    audio = tone_for(SpeechRequest("same"))
    with Journal(tmp_path / "j.sqlite3") as journal:
        one = journal.store_result("id-1", "csm", "a", None, audio)
        two = journal.store_result("id-2", "csm", "a", None, audio)
        assert one.audio_sha256 == two.audio_sha256
        files = list((tmp_path / "audio").rglob("*.flac"))
        assert len(files) == 1 and files[0].name == f"{one.audio_sha256}.flac"
        assert journal.load_audio(one) == audio.quantized()
        assert not list((tmp_path / "audio").rglob("*.tmp"))


def test_quality_tiers_are_kept_apart(tmp_path: Path) -> None:
    audio = tone_for(SpeechRequest("x"))
    with Journal(tmp_path / "j.sqlite3") as journal:
        journal.store_result("rid", "draft", "espeak", None, audio)
        assert journal.cached(["rid"], "csm") == {}
        assert set(journal.cached(["rid"], "draft")) == {"rid"}


def test_each_step_is_journaled_before_it_is_acted_on(plugins: Plugins, tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite3"
    seen: list[str] = []
    a = ScriptedProvider("cloud_a")
    submit, poll = a.submit, a.poll

    def states(ids: tuple[str, ...]) -> list[str]:
        with sqlite3.connect(path) as db:
            rows = db.execute("SELECT state, request_ids FROM jobs").fetchall()
        return [state for state, rids in rows if all(i in rids for i in ids)]

    async def watching_submit(target, batch, http):  # type: ignore[no-untyped-def]
        seen.append("submit:" + ",".join(states(tuple(r.id for r in batch))))
        return await submit(target, batch, http)

    async def watching_poll(target, handle, http):  # type: ignore[no-untyped-def]
        seen.append("poll:" + ",".join(states(handle.request_ids)))
        return await poll(target, handle, http)

    requests = requests_for(1)
    with registered_all(plugins, a=a):
        router = make_router(plugins, CONFIG)
        provider = router.checks[0].provider
        provider.callers["submit"] = lambda **kw: watching_submit(**kw)  # type: ignore[union-attr]
        provider.callers["poll"] = lambda **kw: watching_poll(**kw)  # type: ignore[union-attr]
        result = run(router, requests, path)
    assert result.ok
    assert seen[0] == f"submit:{SUBMITTING}"
    assert seen[1] == f"poll:{SUBMITTED}"
    with Journal(path) as journal:
        (job,) = journal.jobs()
        assert job.state == COMPLETED
        assert set(journal.cached([requests[0].id], "csm")) == {requests[0].id}


def test_in_flight_job_of_a_dead_run_is_reattached(plugins: Plugins, tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite3"
    a = ScriptedProvider("cloud_a", seconds_per_char=0.001)
    requests = requests_for(3)
    with registered_all(plugins, a=a):
        router = make_router(plugins, CONFIG)
        target = router.checks[0].target
        # A run that submitted one job and died before polling it.
        handle = asyncio.run(a.submit(target, requests[:2], None))
        with Journal(path) as dead:
            key = dead.begin_job("a", "csm", [r.id for r in requests[:2]], 0.01)
            dead.job_submitted(key, handle)
            dead.begin_job("a", "csm", [requests[2].id], 0.01)  # died inside submit
        result = run(make_router(plugins, CONFIG), requests, path)
    assert result.ok
    # The job with a handle was polled, not resubmitted; the unsent one was sent again.
    assert a.submitted[requests[0].id] == 1 and a.submitted[requests[1].id] == 1
    assert a.submitted[requests[2].id] == 1
    assert a.calls["submit"] == 2
    with Journal(path) as journal:
        states = {job.key: job.state for job in journal.jobs()}
    assert states[key] == COMPLETED
    assert ABANDONED in states.values()


def test_reattached_job_keeps_results_the_rerun_did_not_ask_for(
    plugins: Plugins, tmp_path: Path
) -> None:
    path = tmp_path / "journal.sqlite3"
    a = ScriptedProvider("cloud_a")
    requests = requests_for(2)
    with registered_all(plugins, a=a):
        router = make_router(plugins, CONFIG)
        handle = asyncio.run(a.submit(router.checks[0].target, requests, None))
        with Journal(path) as dead:
            key = dead.begin_job("a", "csm", [r.id for r in requests], 0.01)
            dead.job_submitted(key, handle)
        first = run(make_router(plugins, CONFIG), requests[:1], path)
        second = run(make_router(plugins, CONFIG), requests[1:], path)
    assert first.ok and second.ok
    assert second.outcomes[requests[1].id].cached  # paid once, kept, not generated again
    assert a.calls["submit"] == 1


def test_actual_cost_is_exec_time_times_price(plugins: Plugins, tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite3"
    a = ScriptedProvider("cloud_a", seconds_per_char=0.001)
    requests = requests_for(4)
    with registered_all(plugins, a=a):
        result = run(make_router(plugins, CONFIG), requests, path)
    with Journal(path) as journal:
        jobs = journal.jobs()
        assert len(jobs) == 2
        for job in jobs:
            chars = sum(len(r.text) for r in requests if r.id in job.request_ids)
            assert job.actual_usd == pytest.approx(chars * 0.001 * 0.5, abs=1e-3)
            assert job.estimated_usd == pytest.approx(chars * 0.001 * 0.5)
        (row,) = journal.spend_by_target_day()
        assert row["target"] == "a" and row["jobs"] == 2
        assert row["actual_usd"] == pytest.approx(sum(j.actual_usd or 0 for j in jobs))
        assert result.cost_usd == pytest.approx(row["actual_usd"])


def test_unwritable_journal_is_a_user_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(UserError, match=r"run\.journal"):
        Journal(blocker / "journal.sqlite3")


def test_one_run_at_a_time_per_journal(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite3"
    with Journal(path) as first, Journal(path) as second:
        first.lock_for_run()
        with pytest.raises(UserError, match="another csm-offload run"):
            second.lock_for_run()
    with Journal(path) as third:
        third.lock_for_run()  # released when its holder closed


ids = st.text(alphabet="0123456789abcdef", min_size=1, max_size=32)


@given(
    job_id=st.text(max_size=60),
    request_ids=st.lists(ids, max_size=8),
    submitted_at=st.floats(min_value=0, max_value=4e9),
    extra=st.dictionaries(st.text(max_size=10), st.text(max_size=200), max_size=4),
)
def test_handles_survive_the_journal(
    job_id: str, request_ids: list[str], submitted_at: float, extra: dict[str, str]
) -> None:
    handle = JobHandle("target", job_id, tuple(request_ids), submitted_at, extra)
    back = _handle_from(_handle_json(handle))
    assert back == handle and dict(back.extra) == extra  # type: ignore[union-attr]


# --- robustness: versions, damage, full disks ---------------------------------------------------


def _user_version(path: Path) -> int:
    db = sqlite3.connect(path)
    try:
        return int(db.execute("PRAGMA user_version").fetchone()[0])
    finally:
        db.close()


def test_a_new_journal_is_stamped_with_the_schema_version(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite3"
    Journal(path).close()
    assert _user_version(path) == SCHEMA_VERSION


def test_an_unversioned_journal_is_accepted_and_keeps_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite3"
    with Journal(path) as journal:
        journal.store_result("id-1", "csm", "a", None, tone_for(SpeechRequest("kept")))
    db = sqlite3.connect(path)
    db.execute("PRAGMA user_version = 0")  # as journals were written before versions
    db.close()
    with Journal(path) as journal:
        assert set(journal.cached(["id-1"], "csm")) == {"id-1"}
    assert _user_version(path) == SCHEMA_VERSION


def test_a_journal_from_a_newer_version_is_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite3"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE future (x)")
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.close()
    before = path.read_bytes()
    with pytest.raises(JournalError) as info:
        Journal(path)
    assert str(info.value) == (
        f"the journal {path} was written by a newer csm-offload (schema {SCHEMA_VERSION + 1}); "
        "upgrade csm-offload or set run.journal to another file"
    )
    assert info.value.exit_code == 2
    assert path.read_bytes() == before


def test_a_file_that_is_not_a_database_is_named_with_the_fix(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite3"
    path.write_bytes(b"definitely not SQLite " * 300)
    with pytest.raises(JournalDamaged, match="is damaged") as info:
        Journal(path)
    message = str(info.value)
    assert str(path) in message and "move it away" in message
    assert f"finished audio in {tmp_path / 'audio'} is kept" in message


def test_damaged_pages_are_found_before_any_work(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite3"
    with Journal(path) as journal:
        journal.record_requests(SpeechRequest(f"sentence {i} " * 30) for i in range(300))
    data = bytearray(path.read_bytes())
    data[4096 * 3 : 4096 * 5] = b"\xa5" * 8192
    path.write_bytes(bytes(data))
    with pytest.raises(JournalDamaged, match="move it away"):
        Journal(path)


def _fill(journal: Journal) -> None:
    """Let the database grow no further: SQLite then answers "database or disk is full", as
    it does on a full disk."""
    pages = journal.db.execute("PRAGMA page_count").fetchone()[0]
    journal.db.execute(f"PRAGMA max_page_count = {pages}")


def test_a_full_disk_under_the_journal_is_one_sentence(tmp_path: Path) -> None:
    with Journal(tmp_path / "journal.sqlite3") as journal:
        _fill(journal)
        with pytest.raises(JournalFull) as info:
            journal.record_requests(SpeechRequest(f"more text {i} " * 40) for i in range(400))
        with pytest.raises(JournalFull):
            journal.begin_job("a", "csm", [f"request-{i:05}" * 8 for i in range(5_000)], 0.01)
    assert "no space left on the disk of the journal" in str(info.value)
    assert "set run.journal to a file on another disk" in str(info.value)
    assert info.value.exit_code == 2


@pytest.mark.parametrize(("error", "kind", "message"), WRITE_FAILURES)
def test_a_failed_audio_write_leaves_no_tmp_file(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    error: OSError,
    kind: type[Exception],
    message: str,
) -> None:
    with Journal(tmp_path / "journal.sqlite3") as journal:
        half_writes(monkeypatch, error)
        with pytest.raises(kind, match=message):
            journal.put_audio(tone_for(SpeechRequest("lost")))
        monkeypatch.undo()
        assert not [p for p in (tmp_path / "audio").rglob("*") if p.is_file()]
        # Space freed: the same audio is stored whole.
        sha = journal.put_audio(tone_for(SpeechRequest("lost")))
        assert journal.audio_path(sha).is_file()


def test_a_jobs_results_and_its_end_are_one_commit(tmp_path: Path) -> None:
    with Journal(tmp_path / "j.sqlite3") as journal:
        sha = journal.put_audio(tone_for(SpeechRequest("x")))
        key = journal.begin_job("a", "csm", ["r1", "r2"], 0.01)

        def interrupted() -> None:
            with journal.transaction():
                journal.record_result("r1", "csm", "a", key, sha, 1000)
                with journal.transaction():  # a nested use joins the outer one
                    journal.job_finished(key, COMPLETED, actual_usd=0.01)
                raise RuntimeError("the process stopped between the two")

        with pytest.raises(RuntimeError):
            interrupted()
        assert journal.cached(["r1"], "csm") == {}
        assert journal.job(key).state == SUBMITTING
        with journal.transaction():
            first = journal.record_result("r1", "csm", "a", key, sha, 1000)
            journal.job_finished(key, COMPLETED, actual_usd=0.01)
        assert not journal.db.in_transaction
    with Journal(tmp_path / "j.sqlite3") as journal:
        assert journal.cached(["r1"], "csm")["r1"] == first
        assert journal.job(key).state == COMPLETED


def test_a_later_duplicate_result_keeps_the_first(tmp_path: Path) -> None:
    with Journal(tmp_path / "j.sqlite3") as journal:
        first = journal.record_result("r1", "csm", "a", None, "ab" * 32, 1000)
        again = journal.record_result("r1", "csm", "b", None, "cd" * 32, 2000)
        assert again == first


def test_stored_audio_damaged_inside_names_the_file_and_the_fix(tmp_path: Path) -> None:
    with Journal(tmp_path / "j.sqlite3") as journal:
        stored = journal.store_result("r1", "csm", "a", None, tone_for(SpeechRequest("x" * 80)))
        path = journal.audio_path(stored.audio_sha256)
        data = bytearray(path.read_bytes())
        data[len(data) // 2 : len(data) // 2 + 1500] = bytes(1500)
        path.write_bytes(bytes(data))
        with pytest.raises(UserError, match="delete that file") as caught:
            journal.load_audio(stored)
        assert str(path) in str(caught.value)
