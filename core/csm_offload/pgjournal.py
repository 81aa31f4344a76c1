"""The journal on PostgreSQL: the SQLite journal's tables and guarantees, shared by every
client and worker of a team, on any number of machines (docs/operations.md).

What sharing adds is claims. Before a run submits a request it claims it; a claim belongs to a
run, and a run is alive while its lease (renewed by a heartbeat thread, on the database's clock)
has not expired. Two live runs therefore never submit the same request at once: the second one
waits for the first one's result. When a run dies its lease runs out; another run then takes its
claims and re-attaches its in-flight jobs by their stored handles (the money was spent: the job
is polled, not submitted again). A run that was only slow finds on waking that its claims are
gone and submits nothing more for them; a result it brings back is kept like anyone's (the first
result of a request wins, and both pollers of one job agree on it).

psycopg 3's synchronous API is used on purpose: every journal write must be durable before the
runner acts on it (write first, act second), so each call is awaited at once anyway; a
synchronous call on the loop's thread costs less CPU than a hop through the event loop.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from .errors import UserError
from .journal import (
    ABANDONED,
    COMPLETED,
    SUBMITTED,
    SUBMITTING,
    FinishedJob,
    JobRow,
    JournalBase,
    JournalError,
    StoredResult,
    TargetPricing,
    _handle_json,
    describe_url,
    job_row,
    pricing_table,
    share_of_jobs,
    spend_table,
)
from .model import JobHandle, SpeechRequest
from .scrub import scrub
from .stores import AudioStore, FolderStore, open_store

#: Serialises migrations between clients that start at once (any constant; ours spells "csm").
_MIGRATION_LOCK = 0x63736D

#: Numbered migrations; a database records the ones applied in `csm_schema_versions`. Append,
#: never edit: a journal holds paid-for work and is migrated in place, never thrown away.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE csm_requests (
        id TEXT PRIMARY KEY,
        text TEXT NOT NULL,
        speaker INTEGER NOT NULL,
        chars INTEGER NOT NULL,
        first_seen DOUBLE PRECISION NOT NULL
    );
    CREATE TABLE csm_runs (
        run_id TEXT PRIMARY KEY,
        host TEXT NOT NULL,
        pid INTEGER NOT NULL,
        started_at TIMESTAMPTZ NOT NULL DEFAULT now(),
        lease_until TIMESTAMPTZ NOT NULL,
        ended_at TIMESTAMPTZ
    );
    CREATE TABLE csm_jobs (
        key BIGSERIAL PRIMARY KEY,
        run_id TEXT NOT NULL,
        target TEXT NOT NULL,
        quality TEXT NOT NULL,
        request_ids TEXT NOT NULL,
        state TEXT NOT NULL,
        job_id TEXT,
        handle TEXT,
        estimated_usd DOUBLE PRECISION NOT NULL,
        actual_usd DOUBLE PRECISION,
        exec_ms BIGINT,
        queue_ms BIGINT,
        error TEXT,
        created_at DOUBLE PRECISION NOT NULL,
        updated_at DOUBLE PRECISION NOT NULL
    );
    CREATE INDEX csm_jobs_state ON csm_jobs (state, quality);
    CREATE INDEX csm_jobs_target_state ON csm_jobs (target, state, key);
    CREATE INDEX csm_jobs_run ON csm_jobs (run_id);
    CREATE TABLE csm_job_requests (
        job_key BIGINT NOT NULL REFERENCES csm_jobs (key),
        request_id TEXT NOT NULL,
        PRIMARY KEY (job_key, request_id)
    );
    CREATE INDEX csm_job_requests_request ON csm_job_requests (request_id);
    CREATE TABLE csm_results (
        request_id TEXT NOT NULL,
        quality TEXT NOT NULL,
        target TEXT NOT NULL,
        job_key BIGINT,
        audio_sha256 TEXT NOT NULL,
        duration_ms INTEGER NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (request_id, quality)
    );
    CREATE TABLE csm_claims (
        request_id TEXT NOT NULL,
        quality TEXT NOT NULL,
        run_id TEXT NOT NULL,
        claimed_at TIMESTAMPTZ NOT NULL DEFAULT now(),
        PRIMARY KEY (request_id, quality)
    );
    CREATE INDEX csm_claims_run ON csm_claims (run_id);
    """,
)

#: A run is alive while this holds for its row in csm_runs (the database's clock decides, so
#: machines with skewed clocks agree).
_ALIVE = "r.lease_until > clock_timestamp() AND r.ended_at IS NULL"

_DIED_SUBMITTING = "the process ended during submit"
_JOB_COLUMNS = "key, run_id, target, quality, request_ids, state, handle, estimated_usd, actual_usd"


def _psycopg() -> Any:
    try:
        import psycopg
    except ImportError:
        raise UserError(
            "run.journal is a PostgreSQL URL but psycopg is not installed; "
            "pip install 'csm-offload[postgres]'"
        ) from None
    return psycopg


def connect(url: str, password: str | None = None, **kwargs: Any) -> Any:
    """A connection, or one clear error: the server's address and what to check."""
    psycopg = _psycopg()
    extra = {"password": password} if password and "PGPASSWORD" not in os.environ else {}
    try:
        return psycopg.connect(url, autocommit=True, connect_timeout=10, **extra, **kwargs)
    except psycopg.Error as exc:
        reason = scrub(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)
        raise JournalError(
            f"cannot reach the PostgreSQL journal {describe_url(url)} ({reason}); check that the "
            "server runs and accepts this machine, the run.journal URL, and PGPASSWORD"
        ) from None


def migrate(db: Any) -> int:
    """Apply the migrations this database lacks, one client at a time; returns the version."""
    with db.transaction():
        db.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
        db.execute(
            "CREATE TABLE IF NOT EXISTS csm_schema_versions (version INTEGER PRIMARY KEY, "
            "applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
        )
        current = int(
            db.execute("SELECT COALESCE(MAX(version), 0) FROM csm_schema_versions").fetchone()[0]
        )
        if current > len(MIGRATIONS):
            raise JournalError(
                f"the PostgreSQL journal has schema version {current}, newer than this "
                f"csm-offload knows ({len(MIGRATIONS)}); upgrade csm-offload on this machine"
            )
        for number, sql in enumerate(MIGRATIONS[current:], start=current + 1):
            db.execute(sql)
            db.execute("INSERT INTO csm_schema_versions (version) VALUES (%s)", (number,))
    return len(MIGRATIONS)


class _Guarded:
    """The connection, with a lost server turned into one clear `JournalError`: everything
    written before is committed (write first, act second), so stopping is safe, and the next
    run re-attaches what was in flight."""

    def __init__(self, db: Any, url: str) -> None:
        self._db, self._url = db, url
        self._errors = (_psycopg().OperationalError, _psycopg().InterfaceError)

    def execute(self, sql: str, params: Any = None) -> Any:
        with self._translated():
            return self._db.execute(sql, params)

    def executemany(self, sql: str, rows: list[Any]) -> None:
        with self._translated(), self._db.cursor() as cursor:
            cursor.executemany(sql, rows)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        with self._translated(), self._db.transaction():
            yield

    def close(self) -> None:
        self._db.close()

    @contextlib.contextmanager
    def _translated(self) -> Iterator[None]:
        try:
            yield
        except self._errors as exc:
            reason = scrub(str(exc).strip().splitlines()[0] if str(exc).strip() else "closed")
            raise JournalError(
                f"lost the PostgreSQL journal {describe_url(self._url)} ({reason}); everything "
                "done so far is kept: run again once the database is back, and jobs in flight "
                "are re-attached"
            ) from None


class _Heartbeat:
    """Renews a run's lease from its own thread and connection, so a busy event loop (a long
    assembly) does not look like a dead run; a stopped or killed process stops renewing."""

    def __init__(self, url: str, password: str | None, run_id: str, lease_s: float) -> None:
        self.url, self.password, self.run_id, self.lease_s = url, password, run_id, lease_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="csm-lease", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        db = None
        while not self._stop.wait(self.lease_s / 3):
            try:
                db = db or connect(self.url, self.password)
                db.execute(
                    "UPDATE csm_runs SET lease_until = clock_timestamp() + make_interval("
                    "secs => %s) WHERE run_id = %s AND ended_at IS NULL",
                    (self.lease_s, self.run_id),
                )
            except Exception:  # a lost connection: the next beat reconnects
                with contextlib.suppress(Exception):
                    db and db.close()
                db = None
        with contextlib.suppress(Exception):
            db and db.close()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


class PgJournal(JournalBase):
    """The journal in a PostgreSQL database, its audio in a store every client can read."""

    shared = True
    _MARK = "%s"

    def __init__(
        self,
        url: str,
        *,
        audio_store: str | None = None,
        lease_s: float = 30.0,
        env: Mapping[str, str] | None = None,
        local_dir: Path = Path(".csm-offload"),
    ) -> None:
        self.url = url
        local_dir = Path(local_dir).absolute()  # a later chdir must not move the cache
        self.path = local_dir / "journal.pg"  # messages and locks name the database
        self.lease_s = lease_s
        self.run_id = uuid.uuid4().hex[:12]
        self._password = (env or {}).get("PGPASSWORD")
        self.store: AudioStore = open_store(audio_store, Path(local_dir) / "audio", self.path)
        self.audio_dir = Path(local_dir) / "audio"
        self.db = _Guarded(connect(url, self._password), url)
        self._depth = 0
        self._renewed = -float("inf")
        self._heartbeat: _Heartbeat | None = None
        try:
            migrate(self.db)
        except BaseException:
            self.db.close()
            raise

    def describe(self) -> str:
        return f"PostgreSQL journal {describe_url(self.url)}"

    # --- runs and leases ------------------------------------------------------------------

    def lock_for_run(self) -> None:
        """Register this run and keep its lease alive until `close`."""
        if self._heartbeat is not None:
            return
        self.db.execute(
            "INSERT INTO csm_runs (run_id, host, pid, lease_until) VALUES (%s, %s, %s, "
            "clock_timestamp() + make_interval(secs => %s)) ON CONFLICT (run_id) DO UPDATE "
            "SET lease_until = EXCLUDED.lease_until, ended_at = NULL",
            (self.run_id, socket.gethostname(), os.getpid(), self.lease_s),
        )
        self._heartbeat = _Heartbeat(self.url, self._password, self.run_id, self.lease_s)

    def close(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.stop()
            self._heartbeat = None
            # Ended cleanly: what this run still claims is free for others at once.
            with contextlib.suppress(Exception), self.transaction():
                self.db.execute("DELETE FROM csm_claims WHERE run_id = %s", (self.run_id,))
                self.db.execute(
                    "UPDATE csm_runs SET ended_at = clock_timestamp() WHERE run_id = %s",
                    (self.run_id,),
                )
        with contextlib.suppress(Exception):
            self.db.close()

    def __enter__(self) -> PgJournal:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """One commit for the writes inside; a nested use joins the outer one."""
        if self._depth:
            yield
            return
        self._depth += 1
        try:
            with self.db.transaction():
                yield
        finally:
            self._depth -= 1

    def claim(self, request_ids: Sequence[str], quality: str) -> list[str]:
        """Claim requests before submitting them: returns those now this run's (free, already
        ours, or held by a run whose lease ran out; never one that has a result). The lease is
        renewed in the same transaction, so a run that just woke from a long stall is alive
        again before it claims, and takes nothing another run took from it meanwhile."""
        if not request_ids:
            return []
        with self.transaction():
            self._renew()
            rows = self.db.execute(
                # A request with a result is never claimed again: its claim may be gone
                # (its maker ended) while this run still had it planned.
                "INSERT INTO csm_claims AS c (request_id, quality, run_id) "
                "SELECT w.id, %s, %s FROM unnest(%s::text[]) AS w(id) WHERE NOT EXISTS "
                "(SELECT 1 FROM csm_results d WHERE d.request_id = w.id AND d.quality = %s) "
                "ON CONFLICT (request_id, quality) DO UPDATE SET run_id = EXCLUDED.run_id, "
                "claimed_at = clock_timestamp() WHERE c.run_id = EXCLUDED.run_id OR NOT EXISTS "
                f"(SELECT 1 FROM csm_runs r WHERE r.run_id = c.run_id AND {_ALIVE}) "
                "RETURNING request_id",
                (quality, self.run_id, list(dict.fromkeys(request_ids)), quality),
            ).fetchall()
        granted = {row[0] for row in rows}
        return [rid for rid in request_ids if rid in granted]

    def release(self, request_ids: Sequence[str], quality: str) -> None:
        """Give up claims on requests this run failed: another run may try them now, rather
        than when this one ends."""
        if request_ids:
            self.db.execute(
                "DELETE FROM csm_claims WHERE run_id = %s AND quality = %s "
                "AND request_id = ANY(%s)",
                (self.run_id, quality, list(request_ids)),
            )

    def _renew(self) -> None:
        """Renew the lease unless this thread did within a third of it (the heartbeat renews
        it too): a run that stalled longer renews before it claims anything."""
        now = time.monotonic()
        if now - self._renewed < self.lease_s / 3:
            return
        self._renewed = now
        self.db.execute(
            "UPDATE csm_runs SET lease_until = clock_timestamp() + make_interval(secs => %s) "
            "WHERE run_id = %s",
            (self.lease_s, self.run_id),
        )

    def adopt(self, quality: str, request_ids: Sequence[str]) -> list[JobRow]:
        """In-flight jobs of dead runs that carry any of `request_ids`: made this run's (with
        their requests' claims), to be re-attached by their handles. One job is adopted by one
        run only: the update is conditional on its owner being dead."""
        if not request_ids:
            return []
        with self.transaction():
            rows = self.db.execute(
                f"UPDATE csm_jobs j SET run_id = %s, updated_at = %s WHERE j.key IN ("
                "SELECT jr.job_key FROM csm_job_requests jr WHERE jr.request_id = ANY(%s)) "
                "AND j.state = %s AND j.quality = %s AND j.run_id != %s AND NOT EXISTS "
                f"(SELECT 1 FROM csm_runs r WHERE r.run_id = j.run_id AND {_ALIVE}) "
                f"RETURNING {_JOB_COLUMNS}",
                (self.run_id, time.time(), list(request_ids), SUBMITTED, quality, self.run_id),
            ).fetchall()
            adopted = [job_row(row) for row in sorted(rows)]
            carried = sorted({rid for job in adopted for rid in job.request_ids})
            if carried:
                self.claim(carried, quality)
        return adopted

    # --- requests and results -------------------------------------------------------------

    def record_requests(self, requests: Iterable[SpeechRequest]) -> None:
        now = time.time()
        rows = [(r.id, r.text, r.speaker, len(r.text), now) for r in requests]
        if not rows:
            return
        with self.transaction():
            self.db.executemany(
                "INSERT INTO csm_requests VALUES (%s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
                rows,
            )

    def cached(self, request_ids: Sequence[str], quality: str) -> dict[str, StoredResult]:
        """The stored results among `request_ids` for `quality` (their audio was stored
        before their row was written, so the row is proof enough)."""
        if not request_ids:
            return {}
        rows = self.db.execute(
            "SELECT request_id, quality, target, audio_sha256, duration_ms FROM csm_results "
            "WHERE quality = %s AND request_id = ANY(%s)",
            (quality, list(request_ids)),
        ).fetchall()
        found = {row[0]: StoredResult(*row) for row in rows}
        if not isinstance(self.store, FolderStore):
            # An object store's HEAD per result would cost a round trip each: its rows are
            # trusted (a deleted object is reported, by name, when it is read).
            return found
        kept = {rid: s for rid, s in found.items() if self.store.has(s.audio_sha256)}
        gone = [rid for rid in found if rid not in kept]
        if gone:
            # Audio deleted from the folder (damaged, or cleaned up): the row would keep the
            # request from being claimed and made again, which is what a user deleting it asks.
            self.db.execute(
                "DELETE FROM csm_results WHERE quality = %s AND request_id = ANY(%s)",
                (quality, gone),
            )
        return kept

    def record_result(
        self,
        request_id: str,
        quality: str,
        target: str,
        job_key: int | None,
        sha: str,
        duration_ms: int,
    ) -> StoredResult:
        """The row that points to stored audio; the first result kept wins."""
        with self.transaction():
            row = self.db.execute(
                "INSERT INTO csm_results VALUES (%s, %s, %s, %s, %s, %s, %s) "
                "ON CONFLICT DO NOTHING RETURNING request_id",
                (request_id, quality, target, job_key, sha, duration_ms, time.time()),
            ).fetchone()
        if row is not None:
            return StoredResult(request_id, quality, target, sha, duration_ms)
        kept = self.db.execute(
            "SELECT request_id, quality, target, audio_sha256, duration_ms FROM csm_results "
            "WHERE request_id = %s AND quality = %s",
            (request_id, quality),
        ).fetchone()
        return StoredResult(*kept)

    # --- jobs -----------------------------------------------------------------------------

    def begin_job(
        self, target: str, quality: str, request_ids: Sequence[str], estimated_usd: float
    ) -> int:
        now = time.time()
        with self.transaction():
            key = int(
                self.db.execute(
                    "INSERT INTO csm_jobs (run_id, target, quality, request_ids, state, "
                    "estimated_usd, created_at, updated_at) VALUES (%s, %s, %s, %s, %s, %s, "
                    "%s, %s) RETURNING key",
                    (
                        self.run_id,
                        target,
                        quality,
                        json.dumps(list(request_ids)),
                        SUBMITTING,
                        estimated_usd,
                        now,
                        now,
                    ),
                ).fetchone()[0]
            )
            self.db.execute(
                "INSERT INTO csm_job_requests SELECT %s, unnest(%s::text[]) ON CONFLICT DO NOTHING",
                (key, list(dict.fromkeys(request_ids))),
            )
        return key

    def job_submitted(self, key: int, handle: JobHandle) -> None:
        self.db.execute(
            "UPDATE csm_jobs SET state = %s, job_id = %s, handle = %s, updated_at = %s "
            "WHERE key = %s",
            (SUBMITTED, handle.job_id, _handle_json(handle), time.time(), key),
        )

    def job_finished(
        self,
        key: int,
        state: str,
        *,
        actual_usd: float | None = None,
        exec_ms: int | None = None,
        queue_ms: int | None = None,
        error: str | None = None,
    ) -> None:
        self.db.execute(
            "UPDATE csm_jobs SET state = %s, actual_usd = %s, exec_ms = %s, queue_ms = %s, "
            "error = %s, updated_at = %s WHERE key = %s",
            (state, actual_usd, exec_ms, queue_ms, error and scrub(error), time.time(), key),
        )

    def _rows(self, where: str, args: Sequence[object]) -> list[JobRow]:
        rows = self.db.execute(
            f"SELECT {_JOB_COLUMNS} FROM csm_jobs WHERE {where} ORDER BY key", list(args)
        ).fetchall()
        return [job_row(row) for row in rows]

    def in_flight(self, quality: str) -> list[JobRow]:
        """Submitted, unfinished jobs of dead runs (live runs' jobs are theirs to follow)."""
        return self._rows(
            "state = %s AND quality = %s AND run_id != %s AND NOT EXISTS (SELECT 1 FROM "
            f"csm_runs r WHERE r.run_id = csm_jobs.run_id AND {_ALIVE})",
            (SUBMITTED, quality, self.run_id),
        )

    def abandon_unsent(self) -> int:
        """Jobs of dead runs that never got a handle: nothing to poll, mark them abandoned."""
        with self.transaction():
            cursor = self.db.execute(
                "UPDATE csm_jobs j SET state = %s, error = %s, updated_at = %s "
                "WHERE j.state = %s AND j.run_id != %s AND NOT EXISTS (SELECT 1 FROM csm_runs "
                f"r WHERE r.run_id = j.run_id AND {_ALIVE})",
                (ABANDONED, _DIED_SUBMITTING, time.time(), SUBMITTING, self.run_id),
            )
        return int(cursor.rowcount)

    # --- money ----------------------------------------------------------------------------

    def run_spend(self, run_id: str | None = None) -> float:
        row = self.db.execute(
            "SELECT COALESCE(SUM(COALESCE(actual_usd, estimated_usd)), 0) FROM csm_jobs "
            "WHERE run_id = %s AND state != %s",
            (run_id or self.run_id, ABANDONED),
        ).fetchone()
        return float(row[0])

    def spend_by_target_day(self) -> list[dict[str, object]]:
        return spend_table(
            self.db.execute("SELECT target, created_at, estimated_usd, actual_usd FROM csm_jobs")
        )

    def finished_jobs(self, target: str | None = None, limit: int = 500) -> list[FinishedJob]:
        names = (
            [target]
            if target is not None
            else [
                row[0]
                for row in self.db.execute(
                    "SELECT DISTINCT target FROM csm_jobs WHERE state = %s ORDER BY target",
                    (COMPLETED,),
                )
            ]
        )
        found: list[FinishedJob] = []
        for name in names:
            rows = self.db.execute(
                "SELECT j.target, (SELECT COALESCE(SUM(r.chars), 0) FROM csm_job_requests jr "
                "JOIN csm_requests r ON r.id = jr.request_id WHERE jr.job_key = j.key), "
                "j.exec_ms, j.queue_ms, j.estimated_usd, j.actual_usd, j.created_at "
                "FROM csm_jobs j WHERE j.target = %s AND j.state = %s AND j.exec_ms IS NOT NULL "
                "ORDER BY j.key DESC LIMIT %s",
                (name, COMPLETED, max(0, limit)),
            ).fetchall()
            found += [FinishedJob(r[0], int(r[1]), *r[2:]) for r in rows]
        return found

    def priced_by_target(self) -> list[TargetPricing]:
        return pricing_table(
            self.db.execute(
                "SELECT target, run_id, COUNT(*), SUM(estimated_usd), SUM(actual_usd) "
                "FROM csm_jobs WHERE exec_ms IS NOT NULL AND actual_usd IS NOT NULL "
                "GROUP BY target, run_id ORDER BY MAX(key)"
            )
        )

    def request_cost(self, request_id: str) -> float:
        rows = self.db.execute(
            "SELECT j.actual_usd, (SELECT COUNT(*) FROM csm_job_requests c "
            "WHERE c.job_key = j.key) FROM csm_jobs j JOIN csm_job_requests r "
            "ON r.job_key = j.key WHERE r.request_id = %s AND j.actual_usd IS NOT NULL",
            (request_id,),
        ).fetchall()
        return share_of_jobs(rows)

    def submissions_of(self, request_id: str) -> int:
        row = self.db.execute(
            "SELECT COUNT(*) FROM csm_job_requests jr JOIN csm_jobs j ON j.key = jr.job_key "
            "WHERE jr.request_id = %s AND j.state != %s",
            (request_id, ABANDONED),
        ).fetchone()
        return int(row[0])
