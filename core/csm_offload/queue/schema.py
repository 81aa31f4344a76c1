"""The queue's schema: procrastinate's own (applied once, when its tables are missing) and our
tables, created by numbered migrations recorded in `csm_queue_schema`. Every process that opens
the queue calls `ensure_schema`; an advisory lock makes concurrent callers take turns, so two
workers starting together never apply a migration twice."""

from __future__ import annotations

import psycopg
from procrastinate.schema import SchemaManager

#: Any fixed number: the key of the advisory lock that serialises schema changes.
_LOCK_KEY = 0x63736D71  # "csmq"

#: Our migrations, in order; a new one is appended, an applied one is never edited.
MIGRATIONS: tuple[tuple[int, str], ...] = (
    (
        1,
        """
        CREATE TABLE csm_books (
            id bigserial PRIMARY KEY,
            folder text NOT NULL,
            title text NOT NULL,
            options jsonb NOT NULL,
            state text NOT NULL DEFAULT 'queued',
            error text,
            chapters_total integer NOT NULL,
            outputs jsonb NOT NULL DEFAULT '[]',
            created_at timestamptz NOT NULL DEFAULT now(),
            finished_at timestamptz
        );
        CREATE TABLE csm_chapters (
            book_id bigint NOT NULL REFERENCES csm_books(id) ON DELETE CASCADE,
            number integer NOT NULL,
            title text NOT NULL,
            state text NOT NULL DEFAULT 'queued',
            worker text,
            attempts integer NOT NULL DEFAULT 0,
            started_at timestamptz,
            finished_at timestamptz,
            error text,
            chunks integer NOT NULL DEFAULT 0,
            cost_usd double precision NOT NULL DEFAULT 0,
            made jsonb,
            PRIMARY KEY (book_id, number)
        );
        CREATE INDEX csm_chapters_state ON csm_chapters (state);
        """,
    ),
)


async def ensure_schema(conn: psycopg.AsyncConnection) -> list[int]:
    """Bring the database up to date; returns the migrations applied now (none when it was)."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
        if await _missing(conn, "procrastinate_jobs"):
            await conn.execute(SchemaManager.get_schema().encode())
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS csm_queue_schema ("
            " version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        cursor = await conn.execute("SELECT version FROM csm_queue_schema")
        done = {row[0] for row in await cursor.fetchall()}
        applied = []
        for version, sql in MIGRATIONS:
            if version in done:
                continue
            await conn.execute(sql.encode())
            await conn.execute("INSERT INTO csm_queue_schema (version) VALUES (%s)", (version,))
            applied.append(version)
    return applied


async def _missing(conn: psycopg.AsyncConnection, table: str) -> bool:
    cursor = await conn.execute("SELECT to_regclass(%s) IS NULL", (table,))
    row = await cursor.fetchone()
    return bool(row and row[0])


async def schema_version(conn: psycopg.AsyncConnection) -> int:
    """The highest migration applied (0 when none)."""
    if await _missing(conn, "csm_queue_schema"):
        return 0
    cursor = await conn.execute("SELECT coalesce(max(version), 0) FROM csm_queue_schema")
    row = await cursor.fetchone()
    return int(row[0]) if row else 0
