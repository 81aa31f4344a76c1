"""The client side of `csm-offload book --enqueue`: the book is read and planned here, as a
single run would (its text saved into the output folder, which every worker must reach), then
recorded in the queue with its chapters and a `prepare` job, in one transaction."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import attrs
import click

from .. import scrub
from ..book.project import remove_stale_temps, save_book
from ..book.volume import Volume, plan_volume
from ..cli.app import App
from ..cli.synth import DEFAULT_CHUNK_CHARS, route_options
from ..errors import UserError
from ..manager import CloudGPUManager
from ..metrics import NULL
from ..voices import chosen_voice
from . import state
from .app import make_app
from .dsn import connect, queue_dsn
from .options import BookOptions
from .schema import ensure_schema
from .tasks import PREPARE, PRIORITY


def enqueue_command(app: App, opts: dict[str, Any], read: Callable[[], list[Volume]]) -> None:
    """Plan the books `read` gives and queue them; prints their ids and how to follow them."""
    if opts["dry_run"]:
        raise UserError("--dry-run prints the plan and queues nothing: give one of the two")
    dsn = queue_dsn(app.config)
    asyncio.run(_ready(dsn))  # before reading anything: an unreachable server fails fast
    volumes = read()
    options = route_options(opts["cloud_gpu"], opts["local_audio"], opts["draft"])
    voice = chosen_voice(app.config, opts["voice"], opts["voice_prompt"], opts["voice_text"])
    # NULL metrics: a worker on this machine may hold run.metrics_port.
    with CloudGPUManager(
        config=app.config, plugins=app.plugins, options=options, metrics=NULL
    ) as manager:
        budget = min(manager.text_limit(), opts["max_chars"] or DEFAULT_CHUNK_CHARS)
    for volume in volumes:
        plan_volume(volume, opts, budget, voice)
        remove_stale_temps(volume.folder)
        save_book(volume.folder, volume.book, volume.takes, volume.flagged)
    lead = volumes[0]
    queued = []
    for volume in volumes:
        chapters = [c.number for c in volume.script]
        book_options = BookOptions.from_cli(opts, chapters, budget)
        if voice is None:
            folder, number = str(lead.folder.resolve()), lead.script[0].number
            book_options = attrs.evolve(book_options, voice_folder=folder, voice_chapter=number)
        queued.append(asyncio.run(_record(dsn, volume, book_options)))
    _print(queued, opts["as_json"])


async def _ready(dsn: str) -> None:
    async with connect(dsn) as conn:
        await ensure_schema(conn)


async def _record(dsn: str, volume: Volume, options: BookOptions) -> dict[str, Any]:
    plans = [state.ChapterPlan(c.number, c.title, len(c.chunks)) for c in volume.script]
    folder = str(volume.folder.resolve())
    queue = make_app(dsn)
    async with connect(dsn) as conn:
        book_id = await state.insert_book(conn, folder, volume.book.title, options, plans)
        # Deferred on this connection: the job exists exactly when the book's rows do.
        lock = f"csm-book-{book_id}-prepare"
        deferrer = queue.tasks[PREPARE].configure(
            connection=conn, queueing_lock=lock, priority=PRIORITY[PREPARE]
        )
        await deferrer.defer_async(book_id=book_id)
    return {"id": book_id, "title": volume.book.title, "folder": folder, "chapters": len(plans)}


def _print(queued: list[dict[str, Any]], as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(scrub.scrub_data({"queued": queued}), indent=2))
        return
    for book in queued:
        click.echo(
            f"queued book {book['id']}: {book['title']} ({book['chapters']} chapters) "
            f"→ {book['folder']}"
        )
    click.echo("start workers with `csm-offload worker`; watch them with `csm-offload queue`")
