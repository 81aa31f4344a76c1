"""The queue's tasks. Each is idempotent, because a job whose worker died is run again:

- `prepare(book_id)`: sets the book's voice (its first chunk, when no voice is given), then
  queues one `chapter` job per chapter, in the transaction that marks the book running;
- `chapter(book_id, number)`: makes that chapter (a chapter already done is not made again)
  and, when it was the book's last, queues `finish` in the transaction that records it;
- `finish(book_id)`: levels and encodes the book, once (lock and queueing lock per book).

The work runs in a thread (`asyncio.to_thread`): the worker's event loop stays free for its
heartbeats, which are what tells the other workers it is alive.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import procrastinate
import psycopg
from procrastinate import JobContext
from procrastinate.exceptions import AlreadyEnqueued

from ..errors import CsmOffloadError
from . import state, work
from .dsn import connect

logger = logging.getLogger(__name__)
NAMESPACE = "csm_book"
PREPARE, CHAPTER, FINISH = (f"{NAMESPACE}:{name}" for name in ("prepare", "chapter", "finish"))
#: Jobs run by priority, then in order: a book's preparation first (its chapters join the queue
#: early), and its finishing as soon as a worker is free, overlapping other books' chapters
#: instead of all books' finishing waiting for the last chapter in the queue.
PRIORITY = {PREPARE: 20, FINISH: 10, CHAPTER: 0}


def register(app: procrastinate.App) -> None:
    """Our tasks on `app` (a fresh App each time: procrastinate's blueprints are changed by
    the app they join, so one module-level blueprint could serve only one App)."""
    for name, func in ((PREPARE, prepare), (CHAPTER, chapter), (FINISH, finish)):
        app.task(name=name, pass_context=True)(func)


def _ctx(context: JobContext) -> work.WorkerContext:
    found = (context.additional_context or {}).get("csm")
    if not isinstance(found, work.WorkerContext):
        raise RuntimeError("the queue's tasks run in `csm-offload worker` only")
    return found


def _reason(exc: BaseException) -> str:
    if isinstance(exc, CsmOffloadError):
        return str(exc)
    return f"internal error: {type(exc).__name__}: {exc}"


async def prepare(context: JobContext, book_id: int) -> None:
    ctx = _ctx(context)
    async with connect(ctx.dsn) as conn:
        book = await state.get_book(conn, book_id)
        if book.state not in ("queued", "preparing"):
            return  # a retried job whose chapters are queued already
        await state.set_book_state(conn, book_id, "preparing")
    try:
        await asyncio.to_thread(work.prepare_voice, ctx, book)
    except Exception as exc:
        async with connect(ctx.dsn) as conn:
            await state.set_book_state(conn, book_id, "failed", _reason(exc))
        return
    async with connect(ctx.dsn) as conn:
        book = await state.get_book(conn, book_id, lock=True)
        if book.state != "preparing":
            return
        for number in book.options.chapters:
            lock = _chapter_lock(book_id, number)
            await _defer(context.app, conn, CHAPTER, lock, book_id=book_id, number=number)
        await state.set_book_state(conn, book_id, "running")


async def chapter(context: JobContext, book_id: int, number: int) -> None:
    ctx = _ctx(context)
    async with connect(ctx.dsn) as conn:
        book = await state.get_book(conn, book_id)
        was = await state.start_chapter(conn, book_id, number, ctx.name)
        budget = await _budget_left(conn, book)
    if was != "done":
        try:
            if budget is not None and budget <= 0:
                raise work.ChapterFailed("the book's --max-usd is spent")
            made, cost = await asyncio.to_thread(work.make_chapter, ctx, book, number, budget)
        except Exception as exc:
            logger.warning("book %s chapter %s failed: %s", book_id, number, _reason(exc))
            async with connect(ctx.dsn) as conn:
                await state.chapter_failed(conn, book_id, number, _reason(exc))
            return
    async with connect(ctx.dsn) as conn:
        book = await state.get_book(conn, book_id, lock=True)  # chapters finish in turn
        if was != "done":
            await state.chapter_done(conn, book_id, number, made, cost)
        if book.state == "running" and await state.chapters_left(conn, book_id) == 0:
            lock = f"csm-book-{book_id}-finish"
            await _defer(context.app, conn, FINISH, lock, book_id=book_id)
            await state.set_book_state(conn, book_id, "finishing")


async def finish(context: JobContext, book_id: int) -> None:
    ctx = _ctx(context)
    async with connect(ctx.dsn) as conn:
        book = await state.get_book(conn, book_id)
        if book.state == "done":
            return
        made = await state.chapters_made(conn, book_id)
    try:
        outputs = await asyncio.to_thread(work.finish_book, ctx, book, made)
    except Exception as exc:
        async with connect(ctx.dsn) as conn:
            await state.set_book_state(conn, book_id, "failed", _reason(exc))
        return
    async with connect(ctx.dsn) as conn:
        await state.set_book_state(conn, book_id, "done", outputs=outputs)


def _chapter_lock(book_id: int, number: int) -> str:
    return f"csm-book-{book_id}-chapter-{number}"


async def _defer(
    app: procrastinate.App, conn: psycopg.AsyncConnection, task: str, lock: str, **kwargs: Any
) -> None:
    """Queue `task` in `conn`'s transaction, so the job exists exactly when the state change
    that asks for it is committed. The lock keeps two copies of one job from running at once;
    the queueing lock keeps a second copy out of the queue."""
    deferrer = app.tasks[task].configure(
        connection=conn, lock=lock, queueing_lock=lock, priority=PRIORITY[task]
    )
    # A copy waiting in the queue already will do; the savepoint keeps the refused insert from
    # aborting the transaction around it.
    with contextlib.suppress(AlreadyEnqueued):
        async with conn.transaction():
            await deferrer.defer_async(**kwargs)


async def _budget_left(conn: psycopg.AsyncConnection, book: state.BookRow) -> float | None:
    """What is left of the book's --max-usd after its chapters so far (None: no cap). Chapters
    run in parallel, so the book may overshoot by what the chapters running together spend."""
    if book.options.max_usd is None:
        return None
    cursor = await conn.execute(
        "SELECT coalesce(sum(cost_usd), 0) FROM csm_chapters WHERE book_id = %s", (book.id,)
    )
    row = await cursor.fetchone()
    return float(book.options.max_usd) - float(row[0] if row else 0.0)
