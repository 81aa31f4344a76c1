"""The queue's database is the journal's: `run.journal` as a `postgresql://` URL. Connections
are opened here so that a server that cannot be reached is one sentence naming the fix, never a
traceback."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import psycopg

from ..config import Config
from ..errors import UserError
from ..journal import describe_url, is_postgres

#: Seconds to wait for the server before saying it cannot be reached.
CONNECT_TIMEOUT_S = 10


def queue_dsn(config: Config) -> str:
    """The PostgreSQL URL the queue lives in, or a `UserError` naming the fix."""
    journal = config.run.journal
    if not is_postgres(journal):
        raise UserError(
            f"the queue needs a PostgreSQL journal, and run.journal is {journal!r}; set "
            "run.journal: postgresql://USER@HOST/DB in the config (every worker uses the same)"
        )
    return journal


def unreachable(dsn: str, exc: BaseException) -> UserError:
    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return UserError(
        f"cannot reach the queue's PostgreSQL at {describe_url(dsn)} ({reason}); check that the "
        "server runs and run.journal names it (password in PGPASSWORD or ~/.pgpass)"
    )


@contextlib.asynccontextmanager
async def connect(dsn: str) -> AsyncIterator[psycopg.AsyncConnection]:
    """One connection, committed when the block ends without an exception."""
    try:
        conn = await psycopg.AsyncConnection.connect(dsn, connect_timeout=CONNECT_TIMEOUT_S)
    except psycopg.OperationalError as exc:
        raise unreachable(dsn, exc) from None
    async with conn:
        yield conn
