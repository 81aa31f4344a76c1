"""`csm-offload queue`: the book queue at a glance: books (state, chapters done, spend),
chapters (state, worker, attempts, why one failed), live workers and the queue's depth."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import click

from .. import scrub
from .app import App, pass_app


@click.command(name="queue")
@click.option("--json", "as_json", is_flag=True, help="Print the state as JSON.")
@click.option("--all-chapters", is_flag=True, help="List done chapters too.")
@pass_app
def queue_command(app: App, as_json: bool, all_chapters: bool) -> None:
    """Show the queued books, their chapters, the live workers and the queue's depth."""
    from ..queue.dsn import queue_dsn

    dsn = queue_dsn(app.config)
    found = asyncio.run(_snapshot(dsn, app.config.run.lease_s))
    if as_json:
        click.echo(json.dumps(scrub.scrub_data(found), indent=2))
        return
    click.echo(format_snapshot(found, all_chapters))


async def _snapshot(dsn: str, lease_s: float) -> dict[str, Any]:
    from ..queue.dsn import connect
    from ..queue.schema import ensure_schema
    from ..queue.state import snapshot

    async with connect(dsn) as conn:
        await ensure_schema(conn)
        return await snapshot(conn, lease_s)


def book_state(book: dict[str, Any]) -> str:
    """A book's state as a reader wants it: one whose chapters failed says so."""
    if book["failed"] and book["state"] in ("running", "finishing"):
        return f"{book['state']}, {book['failed']} failed"
    return str(book["state"])


def format_snapshot(found: dict[str, Any], all_chapters: bool = False) -> str:
    lines = ["books:"] if found["books"] else ["no books queued"]
    for book in found["books"]:
        lines.append(
            f"  {book['id']:>4}  {book['title'][:40]:<40} {book_state(book):<20} "
            f"{book['done']}/{book['total']} chapters  ${book['cost_usd']:.4f}"
        )
        if book["error"]:
            lines.append(f"        {book['error']}")
    chapters = [c for c in found["chapters"] if all_chapters or c["state"] != "done"]
    if chapters:
        lines.append("chapters:")
    for chapter in chapters:
        lines.append(
            f"  {chapter['book_id']:>4}.{chapter['number']:<3} {chapter['title'][:30]:<30} "
            f"{chapter['state']:<8} {chapter['worker'] or '-':<24} "
            f"attempts {chapter['attempts']}"
        )
        if chapter["error"]:
            lines.append(f"        {chapter['error']}")
    lines.append(f"workers: {len(found['workers'])} live")
    for worker in found["workers"]:
        doing = "; ".join(worker["doing"]) or "idle"
        lines.append(
            f"  {worker['id']:>4}  heartbeat {worker['heartbeat_age_s']:.0f} s ago  {doing}"
        )
    depth = found["queue"]
    lines.append(f"queue: {depth['todo']} jobs waiting, {depth['doing']} running")
    return scrub.scrub("\n".join(lines))
