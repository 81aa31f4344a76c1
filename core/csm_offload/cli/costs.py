"""`csm-offload costs`: what the journal says was spent, by target and day."""

from __future__ import annotations

import json
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from ..journal import Journal
from .app import App, pass_app


@click.command(name="costs")
@click.option(
    "--journal", "journal_path", default=None, help="Journal file (default: run.journal)."
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_app
def costs_command(app: App, journal_path: str | None, as_json: bool) -> None:
    """Spend recorded in the journal, by target and UTC day (estimated and actual USD)."""
    path = Path(journal_path or app.config.run.journal)
    if not path.is_file():
        if as_json:
            click.echo("[]")
        else:
            click.echo(f"no journal at {path} yet: nothing has been spent through it")
        return
    with Journal(path) as journal:
        rows = journal.spend_by_target_day()
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    table = Table(title=f"spend recorded in {path}")
    for column in ("day", "target", "jobs", "estimated USD", "actual USD"):
        table.add_column(column)
    for row in rows:
        table.add_row(
            str(row["day"]),
            str(row["target"]),
            str(row["jobs"]),
            f"${row['estimated_usd']:.4f}",
            f"${row['actual_usd']:.4f}",
        )
    total = sum(float(row["actual_usd"]) for row in rows)  # type: ignore[arg-type]
    table.add_row("total", "", str(sum(int(row["jobs"]) for row in rows)), "", f"${total:.4f}")  # type: ignore[call-overload]
    Console(width=max(100, Console().width)).print(table)
