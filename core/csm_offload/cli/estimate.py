"""`csm-offload estimate FILE`: what the text would cost on every usable target, before paying.

Prices come from the router, so a target with measured jobs in the journal is priced from them
(the basis says "learnt from N jobs") and a fresh one from its provider's prior (the basis says
"prior"). What an estimate leaves out (RunPod's idle tail, cold starts) is printed on a line of
its own under the table, never folded into the figure.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from ..costmodel import split_basis
from ..manager import CloudGPUManager, http_client
from ..model import SpeechRequest
from .app import App, pass_app
from .synth import make_requests, read_text


def _batches(requests: list[SpeechRequest], size: int) -> list[list[SpeechRequest]]:
    return [requests[i : i + size] for i in range(0, len(requests), size)]


def _already_done(
    manager: CloudGPUManager, requests: list[SpeechRequest], quality: str
) -> set[str]:
    """Segments the journal already holds (free on a rerun); never creates a journal."""
    journal = manager.existing_journal()
    if journal is None:
        return set()
    return set(journal.cached([r.id for r in requests], quality))


async def ask_health(manager: CloudGPUManager) -> None:
    """Ask every target once (health checks are free) so that only usable ones are priced."""
    async with http_client() as http:
        await manager.router.health.refresh(manager.router.pairs(), http, timeout_s=10.0)


def price_rows(manager: CloudGPUManager, unique: list[SpeechRequest]) -> list[dict[str, Any]]:
    """What `unique` would cost on each target (asked for health already); segments in the
    journal are free, unusable targets are listed with the reason."""
    rows: list[dict[str, Any]] = []
    for check in manager.checks:
        health = manager.router.health.get(check.name)
        reason = check.reason
        if health is not None and not health.ok:
            reason = f"unhealthy: {health.detail}"
        if check.target is None or check.provider is None or reason != "ok":
            rows.append(
                {"target": check.name, "kind": check.kind, "usable": False, "reason": reason}
            )
            continue
        info = check.provider.info
        done = _already_done(manager, unique, info.quality)
        todo = [r for r in unique if r.id not in done]
        usd = seconds = 0.0
        basis = ""
        for batch in _batches(todo, check.target.max_batch):
            cost = manager.router.estimate(check.target, check.provider, batch)
            usd, seconds, basis = usd + cost.usd, seconds + cost.gpu_seconds, cost.basis
        figure, left_out = split_basis(basis)
        rows.append(
            {
                "target": check.name,
                "kind": check.kind,
                "usable": True,
                "where": "remote" if info.remote else "local",
                "quality": info.quality,
                "segments": len(unique),
                "from_journal": len(done),
                "jobs": len(_batches(todo, check.target.max_batch)),
                "gpu_seconds": round(seconds, 3),
                "usd": round(usd, 6),
                "basis": figure,
                "not_included": left_out,
                "prices_dated": info.prices.date,
            }
        )
    return rows


def print_price_table(rows: list[dict[str, Any]], title: str) -> None:
    table = Table(title=title)
    # The basis shown is one job's (the last): the USD and GPU seconds are the sum of all jobs.
    columns = ("target", "where", "quality", "jobs", "from journal", "GPU s", "USD")
    for column in (*columns, "basis (last job)"):
        table.add_column(column, overflow="fold")
    for row in rows:
        if not row["usable"]:
            table.add_row(str(row["target"]), "", "", "", "", "", "unusable", str(row["reason"]))
            continue
        table.add_row(
            str(row["target"]),
            str(row["where"]),
            str(row["quality"]),
            str(row["jobs"]),
            str(row["from_journal"]),
            f"{row['gpu_seconds']:.1f}",
            f"${row['usd']:.4f}",
            f"{row['basis']} (prices of {row['prices_dated']})",
        )
    console = Console(width=max(120, Console().width))
    console.print(table)
    for row in rows:
        if row.get("not_included"):
            console.print(f"not included in {row['target']}'s estimate: {row['not_included']}")


@click.command(name="estimate")
@click.argument("source")
@click.option("--speaker", type=click.IntRange(0, 1_000), default=0)
@click.option("--max-chars", type=click.IntRange(20, 100_000), default=None)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_app
def estimate_command(
    app: App, source: str, speaker: int, max_chars: int | None, as_json: bool
) -> None:
    """Cost of speaking SOURCE (text or a file) on every usable target; no work is sent."""
    manager = CloudGPUManager(config=app.config, plugins=app.plugins)
    requests = make_requests(manager, read_text(source), speaker, max_chars)
    unique = list({r.id: r for r in requests}.values())
    asyncio.run(ask_health(manager))
    rows = price_rows(manager, unique)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    characters = sum(len(r.text) for r in unique)
    print_price_table(rows, f"{len(unique)} segments, {characters} characters")
