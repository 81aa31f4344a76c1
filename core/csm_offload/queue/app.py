"""The procrastinate App of a queue: an async psycopg connector on the queue's DSN, with our
tasks (namespace `csm_book`: `csm_book:prepare`, `csm_book:chapter`, `csm_book:finish`)."""

from __future__ import annotations

import procrastinate

from .dsn import CONNECT_TIMEOUT_S
from .tasks import register


def make_app(dsn: str) -> procrastinate.App:
    connector = procrastinate.PsycopgConnector(
        conninfo=dsn,
        min_size=1,
        max_size=8,
        kwargs={"connect_timeout": CONNECT_TIMEOUT_S},
    )
    app = procrastinate.App(connector=connector)
    register(app)
    return app
