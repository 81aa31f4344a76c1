"""The journal: an SQLite file that remembers every request, job, result and cost.

Rules it exists for:
- write first, act second: a job row exists before `submit` is called, its handle is stored
  before it is polled, its results and cost are stored before anyone is told it is done;
- a result is stored once, keyed by (request id, quality tier); its audio lives on disk next to
  the journal, named by the SHA-256 of its FLAC bytes, so identical work is never paid twice,
  across runs and books;
- a job whose handle is stored but whose result is not was in flight when a process died: the
  next run polls it by that handle instead of submitting it again.

Only the standard library's sqlite3 is used. WAL mode with `synchronous=NORMAL` survives a
killed process (the commit is in the OS's page cache) at a few tens of microseconds per commit.
"""

from __future__ import annotations

import abc
import contextlib
import datetime as dt
import errno
import hashlib
import json
import os
import sqlite3
import time
import urllib.parse
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import attrs

from .audio import Audio

try:
    import fcntl
except ImportError:  # not POSIX: runs are not locked against each other there
    fcntl = None  # type: ignore[assignment]
from .errors import AudioError, UserError
from .model import JobHandle, SpeechRequest
from .scrub import scrub

#: The layout below, stored in SQLite's `user_version`. Journals written before it was stored
#: (version 0) have this same layout. Raise it with every change of layout, and teach `_open`
#: to migrate the older ones: a journal holds paid-for work and is never thrown away.
SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS requests (
    id TEXT PRIMARY KEY,
    text TEXT NOT NULL,
    speaker INTEGER NOT NULL,
    chars INTEGER NOT NULL,
    first_seen REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS jobs (
    key INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id TEXT NOT NULL,
    target TEXT NOT NULL,
    quality TEXT NOT NULL,
    request_ids TEXT NOT NULL,
    state TEXT NOT NULL,
    job_id TEXT,
    handle TEXT,
    estimated_usd REAL NOT NULL,
    actual_usd REAL,
    exec_ms INTEGER,
    queue_ms INTEGER,
    error TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state);
CREATE INDEX IF NOT EXISTS jobs_target_state ON jobs(target, state, key);
CREATE TABLE IF NOT EXISTS job_requests (
    job_key INTEGER NOT NULL REFERENCES jobs(key),
    request_id TEXT NOT NULL,
    PRIMARY KEY (job_key, request_id)
);
CREATE INDEX IF NOT EXISTS job_requests_request ON job_requests(request_id);
CREATE TABLE IF NOT EXISTS results (
    request_id TEXT NOT NULL,
    quality TEXT NOT NULL,
    target TEXT NOT NULL,
    job_key INTEGER,
    audio_sha256 TEXT NOT NULL,
    duration_ms INTEGER NOT NULL,
    created_at REAL NOT NULL,
    PRIMARY KEY (request_id, quality)
);
"""

#: Job states. `submitting`: written before `submit` is called; `submitted`: the handle is
#: stored and the job is in flight; the rest are final.
SUBMITTING = "submitting"
SUBMITTED = "submitted"
COMPLETED = "completed"
FAILED = "failed"
ABANDONED = "abandoned"


@attrs.frozen
class StoredResult:
    request_id: str
    quality: str
    target: str
    audio_sha256: str
    duration_ms: int


@attrs.frozen
class JobRow:
    key: int
    run_id: str
    target: str
    quality: str
    request_ids: tuple[str, ...]
    state: str
    handle: JobHandle | None
    estimated_usd: float
    actual_usd: float | None


@attrs.frozen
class FinishedJob:
    """What one completed job measured: the material cost truth is learnt from."""

    target: str
    #: Characters of the job's requests, together.
    chars: int
    exec_ms: int
    queue_ms: int | None
    estimated_usd: float
    actual_usd: float | None
    created_at: float


#: Completed jobs of one target with a measured execution time, newest first. The characters
#: are summed through `job_requests` (indexed by job) so no JSON is parsed per row.
_FINISHED_SQL = f"""
SELECT j.target,
       (SELECT COALESCE(SUM(r.chars), 0) FROM job_requests jr
        JOIN requests r ON r.id = jr.request_id WHERE jr.job_key = j.key),
       j.exec_ms, j.queue_ms, j.estimated_usd, j.actual_usd, j.created_at
FROM jobs j
WHERE j.target = ? AND j.state = '{COMPLETED}' AND j.exec_ms IS NOT NULL
ORDER BY j.key DESC LIMIT ?
"""

#: Jobs that ran and were priced (exec_ms and actual_usd known), summed per target and run.
#: Submissions refused before running (actual 0, no exec_ms) are left out: nothing ran, so
#: they say nothing about the estimate.
_PRICED_SQL = """
SELECT target, run_id, COUNT(*), SUM(estimated_usd), SUM(actual_usd)
FROM jobs WHERE exec_ms IS NOT NULL AND actual_usd IS NOT NULL
GROUP BY target, run_id ORDER BY MAX(key)
"""


def _finished_jobs(
    db: sqlite3.Connection | _Guarded, target: str | None, limit: int
) -> list[FinishedJob]:
    if target is None:
        names = [
            row[0]
            for row in db.execute(
                "SELECT DISTINCT target FROM jobs WHERE state = ? ORDER BY target", (COMPLETED,)
            )
        ]
    else:
        names = [target]
    found: list[FinishedJob] = []
    for name in names:
        rows = db.execute(_FINISHED_SQL, (name, max(0, limit))).fetchall()
        found += [FinishedJob(*row) for row in rows]
    return found


@attrs.frozen
class Priced:
    """Jobs that ran and were priced, with what was estimated and what was paid for them."""

    jobs: int = 0
    estimated_usd: float = 0.0
    actual_usd: float = 0.0

    def __add__(self, other: Priced) -> Priced:
        return Priced(
            self.jobs + other.jobs,
            self.estimated_usd + other.estimated_usd,
            self.actual_usd + other.actual_usd,
        )


@attrs.frozen
class TargetPricing:
    """One target's estimates against its actual costs: over all runs, and its latest run."""

    target: str
    all_runs: Priced
    last_run_id: str
    last_run: Priced


def _priced_by_target(db: sqlite3.Connection | _Guarded) -> list[TargetPricing]:
    return pricing_table(db.execute(_PRICED_SQL))


def pricing_table(rows: Iterable[Sequence[Any]]) -> list[TargetPricing]:
    """(target, run_id, jobs, estimated, actual) per target and run, oldest run first, as
    each target's pricing over all runs and in its latest run (either journal's rows)."""
    found: dict[str, TargetPricing] = {}
    # Runs come oldest first, so each target's last row is its latest run.
    for target, run_id, jobs, estimated, actual in rows:
        run = Priced(int(jobs), float(estimated), float(actual))
        before = found.get(target)
        total = run if before is None else before.all_runs + run
        found[target] = TargetPricing(target, total, run_id, run)
    return [found[name] for name in sorted(found)]


def spend_table(rows: Iterable[Sequence[Any]]) -> list[dict[str, object]]:
    """(target, created_at, estimated, actual) per job as spend per UTC day and target."""
    table: dict[tuple[str, str], dict[str, Any]] = {}
    for target, created, estimated, actual in rows:
        day = dt.datetime.fromtimestamp(created, dt.UTC).date().isoformat()
        entry = table.setdefault(
            (day, target),
            {"day": day, "target": target, "jobs": 0, "estimated_usd": 0.0, "actual_usd": 0.0},
        )
        entry["jobs"] += 1
        entry["estimated_usd"] += float(estimated)
        if actual is not None:
            entry["actual_usd"] += float(actual)
    return [table[key] for key in sorted(table)]


def share_of_jobs(rows: Iterable[Sequence[Any]]) -> float:
    """(actual_usd, requests in the job) per job that carried a request: its share."""
    return sum(float(usd) / max(1, int(count)) for usd, count in rows)


def job_row(row: Sequence[Any]) -> JobRow:
    """A `JobRow` from (key, run_id, target, quality, request_ids JSON, state, handle JSON,
    estimated, actual), as both journals select them."""
    return JobRow(
        key=int(row[0]),
        run_id=row[1],
        target=row[2],
        quality=row[3],
        request_ids=tuple(json.loads(row[4])),
        state=row[5],
        handle=_handle_from(row[6]),
        estimated_usd=float(row[7]),
        actual_usd=None if row[8] is None else float(row[8]),
    )


def read_finished_jobs(
    path: str | os.PathLike[str], target: str | None = None, limit: int = 500
) -> list[FinishedJob]:
    """`Journal.finished_jobs` of the journal at `path`, opened read-only: never creates,
    migrates or locks it, so `estimate` may look while a run writes. A missing or unreadable
    journal has no finished jobs."""
    if not Path(path).is_file():
        return []
    try:
        db = sqlite3.connect(f"{Path(path).resolve().as_uri()}?mode=ro", uri=True, timeout=5.0)
    except sqlite3.Error:
        return []
    try:
        return _finished_jobs(db, target, limit)
    except sqlite3.Error:
        return []
    finally:
        db.close()


def _handle_json(handle: JobHandle) -> str:
    return json.dumps(
        {
            "target": handle.target,
            "job_id": handle.job_id,
            "request_ids": list(handle.request_ids),
            "submitted_at": handle.submitted_at,
            "extra": dict(handle.extra),
            "answered": handle.answered,
        }
    )


def _handle_from(raw: str | None) -> JobHandle | None:
    if not raw:
        return None
    data = json.loads(raw)
    return JobHandle(
        target=data["target"],
        job_id=data["job_id"],
        request_ids=tuple(data["request_ids"]),
        submitted_at=float(data["submitted_at"]),
        extra={str(k): str(v) for k, v in data.get("extra", {}).items()},
        answered=bool(data.get("answered", False)),
    )


class JournalError(UserError):
    """The journal or its audio store cannot be used (damaged, full, newer, read-only): the
    message names the file and the fix. Exit 2: nothing a retry would change."""


class JournalFull(JournalError):
    """No space left for the journal or its audio store."""


class JournalDamaged(JournalError):
    """The journal file is not an SQLite database, or has damaged pages."""


def read_stored_audio(path: Path) -> Audio:
    """Audio from the store. Results are stored as received and decoded only here, so a file
    damaged inside (or since) is found here: deleting it makes the next run generate it again."""
    try:
        return Audio.decode(path.read_bytes())
    except (AudioError, OSError) as exc:
        raise UserError(
            f"the stored audio of a segment ({path}) cannot be read ({exc}); delete that file "
            "and rerun to generate it again"
        ) from None


def journal_error(exc: BaseException, path: Path) -> JournalError | None:
    """The `JournalError` that `exc` (raised while using the journal at `path`) means for a
    user, or None when it is not one the user can act on (a bug stays a bug)."""
    audio_dir = path.parent / "audio"
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return _full(path, audio_dir)
    if isinstance(exc, OSError) and exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return JournalError(
            f"cannot write the journal {path} or its audio store {audio_dir} ({exc.strerror}); "
            "make them writable or set run.journal to a writable path"
        )
    if isinstance(exc, OSError) and exc.errno == errno.EIO:
        return _io_error(path, exc.strerror or str(exc))
    if not isinstance(exc, sqlite3.Error):
        return None
    name = getattr(exc, "sqlite_errorname", "") or ""
    text = str(exc)
    if name == "SQLITE_FULL" or "database or disk is full" in text:
        return _full(path, audio_dir)
    if name in ("SQLITE_CORRUPT", "SQLITE_NOTADB") or "malformed" in text:
        return JournalDamaged(
            f"the journal {path} is damaged ({text}); move it away (e.g. mv {path} "
            f"{path}.damaged) and run again: the finished audio in {audio_dir} is kept"
        )
    if name.startswith("SQLITE_READONLY") or "readonly" in text:
        return JournalError(
            f"the journal {path} is read-only ({text}); make it writable or set run.journal "
            "to a writable path"
        )
    if name.startswith("SQLITE_IOERR") or "disk I/O error" in text:
        return _io_error(path, text)
    return None


def _io_error(path: Path, detail: str) -> JournalError:
    return JournalError(
        f"the disk under the journal {path} failed a read or write ({detail}); check that "
        "disk (is it full or gone?) or set run.journal to a file on another disk"
    )


def _full(path: Path, audio_dir: Path) -> JournalFull:
    return JournalFull(
        f"no space left on the disk of the journal {path} (results are kept there and in "
        f"{audio_dir}); free some space, or set run.journal to a file on another disk"
    )


@contextlib.contextmanager
def _translated(path: Path) -> Iterator[None]:
    try:
        yield
    except (OSError, sqlite3.Error) as exc:
        mapped = journal_error(exc, path)
        if mapped is None:
            raise
        raise mapped from None


class _Guarded:
    """The journal's connection, whose errors a user can act on (a full disk, damaged pages)
    surface as one `JournalError` naming the file, wherever in a run they happen."""

    def __init__(self, db: sqlite3.Connection, path: Path) -> None:
        self._db = db
        self._path = path

    def execute(self, sql: str, params: Any = ()) -> sqlite3.Cursor:
        with _translated(self._path):
            return self._db.execute(sql, params)

    def executemany(self, sql: str, rows: Iterable[Any]) -> sqlite3.Cursor:
        with _translated(self._path):
            return self._db.executemany(sql, rows)

    def executescript(self, script: str) -> sqlite3.Cursor:
        with _translated(self._path):
            return self._db.executescript(script)

    def close(self) -> None:
        self._db.close()

    @property
    def in_transaction(self) -> bool:
        return self._db.in_transaction

    def __enter__(self) -> _Guarded:
        self._db.__enter__()
        return self

    def __exit__(self, *exc: Any) -> bool | None:
        # The commit happens here, so this is where a full disk shows itself.
        with _translated(self._path):
            return self._db.__exit__(*exc)


def _open(path: Path) -> _Guarded:
    """Connect, refuse a journal from a newer csm-offload or with damaged pages, and create or
    accept the current layout. Everything is checked before any work is sent."""
    db = sqlite3.connect(path, timeout=30.0, isolation_level=None)
    guarded = _Guarded(db, path)
    try:
        # Read before anything writes: an unknown, newer layout must not be touched.
        version = int(guarded.execute("PRAGMA user_version").fetchone()[0])
        if version > SCHEMA_VERSION:
            raise JournalError(
                f"the journal {path} was written by a newer csm-offload (schema {version}); "
                "upgrade csm-offload or set run.journal to another file"
            )
        guarded.execute("PRAGMA journal_mode=WAL")
        guarded.execute("PRAGMA synchronous=NORMAL")
        # Damaged pages otherwise show up mid-run, after money was spent on the work
        # whose results they would have held.
        with _translated(path):
            verdict = db.execute("PRAGMA quick_check").fetchall()
        if verdict != [("ok",)]:
            detail = "; ".join(str(row[0]) for row in verdict[:3])
            raise JournalDamaged(
                f"the journal {path} is damaged ({detail}); move it away (e.g. mv {path} "
                f"{path}.damaged) and run again: the finished audio in {path.parent / 'audio'} "
                "is kept"
            )
        guarded.executescript(_SCHEMA)
        if version < SCHEMA_VERSION:
            guarded.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    except BaseException:
        db.close()
        raise
    return guarded


class JournalBase(abc.ABC):
    """What both journals do the same way above their SQL: the audio store and reading jobs
    back. A subclass has `store`, `_rows(where, args)`, `record_result` and its SQL's
    parameter mark (`_MARK`)."""

    store: Any
    _MARK = "?"

    @abc.abstractmethod
    def _rows(self, where: str, args: Sequence[object]) -> list[JobRow]:
        """Jobs matching `where` (in the journal's own SQL), by key."""

    @abc.abstractmethod
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

    def audio_path(self, sha: str) -> Path:
        return store_path(self.store, sha)

    def load_audio(self, stored: StoredResult) -> Audio:
        return read_stored_audio(self.audio_path(stored.audio_sha256))

    def put_audio(self, audio: Audio) -> str:
        """Store audio by content; returns its SHA-256. Touches no database, so it may run in
        a worker thread while the event loop goes on."""
        data = audio.encode("flac")
        sha = hashlib.sha256(data).hexdigest()
        self.store.put(sha, data)
        return sha

    def store_result(
        self, request_id: str, quality: str, target: str, job_key: int | None, audio: Audio
    ) -> StoredResult:
        """Write the audio, then the row that points to it."""
        sha = self.put_audio(audio)
        return self.record_result(request_id, quality, target, job_key, sha, audio.duration_ms)

    def job(self, key: int) -> JobRow:
        rows = self._rows(f"key = {self._MARK}", (key,))
        if not rows:
            raise KeyError(key)
        return rows[0]

    def jobs(self, run_id: str | None = None) -> list[JobRow]:
        if run_id is None:
            return self._rows("1 = 1", ())
        return self._rows(f"run_id = {self._MARK}", (run_id,))


class Journal(JournalBase):
    """One journal file (per project directory) and its audio store."""

    #: Runs lock the file (`lock_for_run`), so no other live run shares it: nothing to claim.
    #: `PgJournal` is shared by many runs at once.
    shared = False

    def __init__(self, path: str | os.PathLike[str], audio_store: str | None = None) -> None:
        from .stores import open_store

        self.path = Path(path)
        self.audio_dir = self.path.parent / "audio"
        self.store = open_store(audio_store, self.audio_dir, self.path)
        self.run_id = uuid.uuid4().hex[:12]
        self._lock: IO[str] | None = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if audio_store is None:
                self.audio_dir.mkdir(parents=True, exist_ok=True)
            self.db = _open(self.path)
        except (OSError, sqlite3.Error) as exc:
            mapped = journal_error(exc, self.path)
            if mapped is not None:
                raise mapped from None
            raise UserError(
                f"cannot open the journal {self.path}: {exc}; set run.journal to a writable path"
            ) from None

    def describe(self) -> str:
        return f"journal {self.path}"

    def claim(self, request_ids: Sequence[str], quality: str) -> list[str]:
        """Every request is this run's: the file lock keeps other runs out."""
        return list(request_ids)

    def release(self, request_ids: Sequence[str], quality: str) -> None:
        """Nothing to give up: no other run can be waiting."""

    def adopt(self, quality: str, request_ids: Sequence[str]) -> list[JobRow]:
        """In-flight jobs of dead runs carrying any of `request_ids`, to be re-attached."""
        wanted = set(request_ids)
        return [row for row in self.in_flight(quality) if wanted.intersection(row.request_ids)]

    def lock_for_run(self) -> None:
        """Take the journal for one run at a time. Re-attaching treats unfinished jobs of
        other runs as orphans, which is right only if those runs are dead: the lock is held by
        a live process and released by the OS when it dies, however it dies."""
        if self._lock is not None or fcntl is None:
            return
        handle = open(self.path.with_name(self.path.name + ".lock"), "a+")  # noqa: SIM115
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            raise UserError(
                f"another csm-offload run is using the journal {self.path}; wait for it to "
                "finish, or give this run its own run.journal"
            ) from None
        self._lock = handle

    def close(self) -> None:
        self.db.close()
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """One commit for the writes inside (a nested use joins the outer one): the connection
        autocommits otherwise, and a job's results and its end are one fact."""
        if self.db.in_transaction:
            yield
            return
        self.db.execute("BEGIN")
        with self.db:  # commits, or rolls back on an error
            yield

    # --- requests and results -------------------------------------------------------------

    def record_requests(self, requests: Iterable[SpeechRequest]) -> None:
        now = time.time()
        rows = [(r.id, r.text, r.speaker, len(r.text), now) for r in requests]
        with self.transaction():
            self.db.executemany("INSERT OR IGNORE INTO requests VALUES (?, ?, ?, ?, ?)", rows)

    def cached(self, request_ids: Sequence[str], quality: str) -> dict[str, StoredResult]:
        """The stored results among `request_ids` for `quality`, whose audio is on disk."""
        found: dict[str, StoredResult] = {}
        for start in range(0, len(request_ids), 500):
            chunk = list(request_ids[start : start + 500])
            marks = ",".join("?" * len(chunk))
            rows = self.db.execute(
                "SELECT request_id, quality, target, audio_sha256, duration_ms FROM results "
                f"WHERE quality = ? AND request_id IN ({marks})",
                [quality, *chunk],
            ).fetchall()
            for row in rows:
                stored = StoredResult(*row)
                if self.store.has(stored.audio_sha256):
                    found[stored.request_id] = stored
        return found

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
            # A later duplicate (a re-attached job finishing after a resubmission) must not
            # change audio that may already have been used.
            cursor = self.db.execute(
                "INSERT OR IGNORE INTO results VALUES (?, ?, ?, ?, ?, ?, ?)",
                (request_id, quality, target, job_key, sha, duration_ms, time.time()),
            )
        if cursor.rowcount == 1:
            return StoredResult(request_id, quality, target, sha, duration_ms)
        row = self.db.execute(
            "SELECT request_id, quality, target, audio_sha256, duration_ms FROM results "
            "WHERE request_id = ? AND quality = ?",
            (request_id, quality),
        ).fetchone()
        return StoredResult(*row)

    # --- jobs -----------------------------------------------------------------------------

    def begin_job(
        self, target: str, quality: str, request_ids: Sequence[str], estimated_usd: float
    ) -> int:
        """Record a job about to be submitted; returns its key."""
        now = time.time()
        with self.transaction():
            cursor = self.db.execute(
                "INSERT INTO jobs (run_id, target, quality, request_ids, state, estimated_usd, "
                "created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
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
            )
            key = int(cursor.lastrowid or 0)
            self.db.executemany(
                "INSERT OR IGNORE INTO job_requests VALUES (?, ?)",
                [(key, rid) for rid in request_ids],
            )
        return key

    def job_submitted(self, key: int, handle: JobHandle) -> None:
        with self.transaction():
            self.db.execute(
                "UPDATE jobs SET state = ?, job_id = ?, handle = ?, updated_at = ? WHERE key = ?",
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
        with self.transaction():
            self.db.execute(
                "UPDATE jobs SET state = ?, actual_usd = ?, exec_ms = ?, queue_ms = ?, "
                "error = ?, updated_at = ? WHERE key = ?",
                # A provider's error may echo its request headers: never store a key.
                (state, actual_usd, exec_ms, queue_ms, error and scrub(error), time.time(), key),
            )

    def _rows(self, where: str, args: Sequence[object]) -> list[JobRow]:
        rows = self.db.execute(
            "SELECT key, run_id, target, quality, request_ids, state, handle, estimated_usd, "
            f"actual_usd FROM jobs WHERE {where} ORDER BY key",
            list(args),
        ).fetchall()
        return [job_row(row) for row in rows]

    def in_flight(self, quality: str) -> list[JobRow]:
        """Jobs of other runs that were submitted and never finished: to be re-attached."""
        return self._rows(
            "state = ? AND quality = ? AND run_id != ?", (SUBMITTED, quality, self.run_id)
        )

    def abandon_unsent(self) -> int:
        """Jobs of dead runs that never got a handle: nothing to poll, mark them abandoned."""
        with self.transaction():
            cursor = self.db.execute(
                "UPDATE jobs SET state = ?, error = ?, updated_at = ? "
                "WHERE state = ? AND run_id != ?",
                (
                    ABANDONED,
                    "the process ended during submit",
                    time.time(),
                    SUBMITTING,
                    self.run_id,
                ),
            )
        return cursor.rowcount

    # --- money ----------------------------------------------------------------------------

    def run_spend(self, run_id: str | None = None) -> float:
        """Money committed by a run: actual cost where known, else the estimate."""
        row = self.db.execute(
            "SELECT COALESCE(SUM(COALESCE(actual_usd, estimated_usd)), 0) FROM jobs "
            "WHERE run_id = ? AND state != ?",
            (run_id or self.run_id, ABANDONED),
        ).fetchone()
        return float(row[0])

    def spend_by_target_day(self) -> list[dict[str, object]]:
        """Spend per target and UTC day: jobs, estimated and actual dollars."""
        return spend_table(
            self.db.execute("SELECT target, created_at, estimated_usd, actual_usd FROM jobs")
        )

    def finished_jobs(self, target: str | None = None, limit: int = 500) -> list[FinishedJob]:
        """The last `limit` completed jobs of `target` (of each target when None) that report
        an execution time, newest first, with the characters of their requests."""
        return _finished_jobs(self.db, target, limit)

    def priced_by_target(self) -> list[TargetPricing]:
        """Per target, over the jobs that ran and were priced (an execution time and an actual
        cost recorded): jobs, estimated and actual USD, over all runs and in its latest run."""
        return _priced_by_target(self.db)

    def request_cost(self, request_id: str) -> float:
        """What `request_id` has cost: its share of every job that carried it and was paid."""
        rows = self.db.execute(
            "SELECT j.actual_usd, (SELECT COUNT(*) FROM job_requests c WHERE c.job_key = j.key) "
            "FROM jobs j JOIN job_requests r ON r.job_key = j.key "
            "WHERE r.request_id = ? AND j.actual_usd IS NOT NULL",
            (request_id,),
        ).fetchall()
        return share_of_jobs(rows)

    def submissions_of(self, request_id: str) -> int:
        """How many jobs ever carried this request (for audits and tests)."""
        row = self.db.execute(
            "SELECT COUNT(*) FROM job_requests jr JOIN jobs j ON j.key = jr.job_key "
            "WHERE jr.request_id = ? AND j.state != ?",
            (request_id, ABANDONED),
        ).fetchone()
        return int(row[0])


def store_path(store: Any, sha: str) -> Path:
    """Where a stored result's audio is read: a folder store's file (no I/O, so results can be
    handed out by path as they arrive), else the store's local copy (downloaded once)."""
    path = getattr(store, "path", None)
    return path(sha) if path is not None else store.local_path(sha)


def is_postgres(spec: str | os.PathLike[str]) -> bool:
    return str(spec).startswith(("postgresql://", "postgres://"))


def describe_url(url: str) -> str:
    """host:port/database of a PostgreSQL URL, for messages: never a password (none is
    allowed in run.journal, and PGPASSWORD is never quoted)."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or "localhost"
    port = f":{parts.port}" if parts.port else ""
    return f"{host}{port}{parts.path or '/'}"


def open_journal(
    spec: str | os.PathLike[str],
    *,
    audio_store: str | None = None,
    lease_s: float = 30.0,
    env: Mapping[str, str] | None = None,
) -> Any:
    """The journal `run.journal` names: an SQLite file, or a `postgresql://` database
    (`csm_offload.pgjournal`, which needs the `postgres` extra)."""
    if is_postgres(spec):
        from .pgjournal import PgJournal

        return PgJournal(str(spec), audio_store=audio_store, lease_s=lease_s, env=env)
    return Journal(spec, audio_store)
