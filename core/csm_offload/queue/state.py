"""Books and chapters in the queue's tables: their rows, their transitions, and the snapshot
`csm-offload queue` prints.

A book goes queued → preparing (its voice is being set) → running (chapters queued) →
finishing (every chapter made: levelling, encoding) → done, or failed with the reason. A
chapter goes queued → running → done or failed; `attempts` counts how often a worker took it
(more than one: a worker died with it, or it was retried).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import attrs
import psycopg
from psycopg.rows import dict_row

from .options import BookOptions


@attrs.frozen
class BookRow:
    id: int
    folder: str
    title: str
    options: BookOptions
    state: str
    chapters_total: int


@attrs.frozen
class ChapterPlan:
    """A chapter as the client queued it."""

    number: int
    title: str
    chunks: int


async def insert_book(
    conn: psycopg.AsyncConnection,
    folder: str,
    title: str,
    options: BookOptions,
    chapters: Sequence[ChapterPlan],
) -> int:
    cursor = await conn.execute(
        "INSERT INTO csm_books (folder, title, options, chapters_total) VALUES (%s, %s, %s, %s)"
        " RETURNING id",
        (folder, title, json.dumps(options.to_json()), len(chapters)),
    )
    row = await cursor.fetchone()
    assert row is not None
    book_id = int(row[0])
    async with conn.cursor() as cur:
        await cur.executemany(
            "INSERT INTO csm_chapters (book_id, number, title, chunks) VALUES (%s, %s, %s, %s)",
            [(book_id, c.number, c.title, c.chunks) for c in chapters],
        )
    return book_id


async def get_book(conn: psycopg.AsyncConnection, book_id: int, lock: bool = False) -> BookRow:
    """The book's row; `lock` holds it until the transaction ends (its transitions take turns:
    two chapters finishing at once must not both miss that they were the last)."""
    cursor = await conn.execute(
        "SELECT id, folder, title, options, state, chapters_total FROM csm_books WHERE id = %s"
        + (" FOR UPDATE" if lock else ""),
        (book_id,),
    )
    row = await cursor.fetchone()
    if row is None:
        raise LookupError(f"no queued book {book_id}")
    return BookRow(row[0], row[1], row[2], BookOptions.from_json(row[3]), row[4], row[5])


async def set_book_state(
    conn: psycopg.AsyncConnection,
    book_id: int,
    state: str,
    error: str | None = None,
    outputs: list[str] | None = None,
) -> None:
    final = state in ("done", "failed")
    await conn.execute(
        "UPDATE csm_books SET state = %s, error = %s, outputs = coalesce(%s, outputs),"
        " finished_at = CASE WHEN %s THEN now() ELSE NULL END WHERE id = %s",
        (state, error, json.dumps(outputs) if outputs is not None else None, final, book_id),
    )


async def start_chapter(
    conn: psycopg.AsyncConnection, book_id: int, number: int, worker: str
) -> str:
    """A worker takes the chapter; returns its state (done: an earlier attempt made it)."""
    cursor = await conn.execute(
        "UPDATE csm_chapters SET attempts = attempts + 1, worker = %s, started_at = now(),"
        " error = NULL, state = CASE WHEN state = 'done' THEN 'done' ELSE 'running' END"
        " WHERE book_id = %s AND number = %s RETURNING state",
        (worker, book_id, number),
    )
    row = await cursor.fetchone()
    if row is None:
        raise LookupError(f"book {book_id} has no queued chapter {number}")
    return str(row[0])


async def chapter_done(
    conn: psycopg.AsyncConnection, book_id: int, number: int, made: dict[str, Any], cost: float
) -> None:
    await conn.execute(
        "UPDATE csm_chapters SET state = 'done', finished_at = now(), made = %s, cost_usd = %s"
        " WHERE book_id = %s AND number = %s",
        (json.dumps(made), cost, book_id, number),
    )


async def chapter_failed(
    conn: psycopg.AsyncConnection, book_id: int, number: int, error: str
) -> None:
    await conn.execute(
        "UPDATE csm_chapters SET state = 'failed', finished_at = now(), error = %s"
        " WHERE book_id = %s AND number = %s",
        (error, book_id, number),
    )


async def chapters_left(conn: psycopg.AsyncConnection, book_id: int) -> int:
    cursor = await conn.execute(
        "SELECT count(*) FROM csm_chapters WHERE book_id = %s AND state <> 'done'", (book_id,)
    )
    row = await cursor.fetchone()
    return int(row[0]) if row else 0


async def chapters_made(conn: psycopg.AsyncConnection, book_id: int) -> dict[int, dict[str, Any]]:
    """What each done chapter's worker recorded (see `work.make_chapter`)."""
    cursor = await conn.execute(
        "SELECT number, made FROM csm_chapters WHERE book_id = %s AND state = 'done'"
        " ORDER BY number",
        (book_id,),
    )
    return {int(n): dict(made or {}) for n, made in await cursor.fetchall()}


# --- the snapshot of `csm-offload queue` -------------------------------------------------------


async def snapshot(conn: psycopg.AsyncConnection, stalled_after_s: float) -> dict[str, Any]:
    """Books, chapters, live workers and queue depth, as plain data (`queue --json`)."""
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(_BOOKS)
        books = await cur.fetchall()
        await cur.execute(_CHAPTERS)
        chapters = await cur.fetchall()
        await cur.execute(_WORKERS, (stalled_after_s,))
        workers = await cur.fetchall()
        await cur.execute(_DEPTH)
        depth = await cur.fetchone() or {}
    return {
        "books": [_plain(b) for b in books],
        "chapters": [_plain(c) for c in chapters],
        "workers": [_plain(w) for w in workers],
        "queue": {"todo": int(depth.get("todo") or 0), "doing": int(depth.get("doing") or 0)},
    }


def _plain(row: dict[str, Any]) -> dict[str, Any]:
    return {
        k: v.isoformat(timespec="seconds") if hasattr(v, "isoformat") else v for k, v in row.items()
    }


_BOOKS = """
SELECT b.id, b.title, b.folder, b.state, b.error, b.chapters_total AS total,
       count(*) FILTER (WHERE c.state = 'done') AS done,
       count(*) FILTER (WHERE c.state = 'failed') AS failed,
       round(coalesce(sum(c.cost_usd), 0)::numeric, 6)::float AS cost_usd,
       b.created_at, b.finished_at
  FROM csm_books b LEFT JOIN csm_chapters c ON c.book_id = b.id
 GROUP BY b.id ORDER BY b.id
"""
_CHAPTERS = """
SELECT book_id, number, title, state, worker, attempts, chunks,
       round(cost_usd::numeric, 6)::float AS cost_usd, error, started_at, finished_at
  FROM csm_chapters ORDER BY book_id, number
"""
# Workers whose heartbeat is recent, with what each is doing now.
_WORKERS = """
SELECT w.id, w.last_heartbeat,
       round(extract(epoch FROM now() - w.last_heartbeat)::numeric, 1)::float AS heartbeat_age_s,
       coalesce(array_agg(j.task_name || ' ' || j.args::text) FILTER (WHERE j.id IS NOT NULL),
                '{}') AS doing
  FROM procrastinate_workers w
  LEFT JOIN procrastinate_jobs j ON j.worker_id = w.id AND j.status = 'doing'
 WHERE w.last_heartbeat >= now() - make_interval(secs => %s)
 GROUP BY w.id ORDER BY w.id
"""
_DEPTH = """
SELECT count(*) FILTER (WHERE status = 'todo') AS todo,
       count(*) FILTER (WHERE status = 'doing') AS doing
  FROM procrastinate_jobs WHERE task_name LIKE 'csm_book:%'
"""
