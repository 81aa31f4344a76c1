"""`csm-offload costs`: what the journal says was spent, by target and day, and per target how
far the estimates were from what was paid."""

from __future__ import annotations

import json
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from ..costmodel import LearnedCosts, error_pct
from ..journal import Journal, TargetPricing, describe_url, is_postgres, open_journal
from .app import App, pass_app


def _pct(value: object) -> str:
    """An error in percent; "n/a" where nothing was paid to compare with."""
    return f"{value:+.1f} %" if isinstance(value, float) else "n/a"


def _target_row(pricing: TargetPricing, learned: LearnedCosts) -> dict[str, object]:
    total, last = pricing.all_runs, pricing.last_run
    fit = learned.fit(pricing.target)
    return {
        "target": pricing.target,
        "jobs": total.jobs,
        "estimated_usd": total.estimated_usd,
        "actual_usd": total.actual_usd,
        "error_pct": error_pct(total.estimated_usd, total.actual_usd),
        "last_run": pricing.last_run_id,
        "last_run_jobs": last.jobs,
        "last_run_estimated_usd": last.estimated_usd,
        "last_run_actual_usd": last.actual_usd,
        "last_run_error_pct": error_pct(last.estimated_usd, last.actual_usd),
        "learnt": fit.describe() if fit is not None else None,
    }


def _by_target(journal: Journal) -> list[dict[str, object]]:
    """Estimated against actual USD per target (all runs, and its latest run), with the error
    in percent and the line learnt from its jobs."""
    learned = LearnedCosts.from_journal(journal)
    return [_target_row(pricing, learned) for pricing in journal.priced_by_target()]


def _day_table(path: Path, rows: list[dict[str, object]]) -> Table:
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
    return table


def _target_table(rows: list[dict[str, object]]) -> Table:
    table = Table(title="estimated against actual, per target (jobs that ran and were priced)")
    columns = ("target", "jobs", "estimated USD", "actual USD", "error", "last run error", "learnt")
    for column in columns:
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(
            str(row["target"]),
            str(row["jobs"]),
            f"${row['estimated_usd']:.4f}",
            f"${row['actual_usd']:.4f}",
            _pct(row["error_pct"]),
            _pct(row["last_run_error_pct"]),
            str(row["learnt"] or "nothing yet"),
        )
    return table


@click.command(name="costs")
@click.option(
    "--journal", "journal_path", default=None, help="Journal file (default: run.journal)."
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option(
    "--by-target",
    is_flag=True,
    help="Only estimated against actual USD per target, with the error in percent.",
)
@pass_app
def costs_command(app: App, journal_path: str | None, as_json: bool, by_target: bool) -> None:
    """Spend recorded in the journal, by target and UTC day (estimated and actual USD), and
    per target the estimates' error against what was paid."""
    spec = journal_path or app.config.run.journal
    if not is_postgres(spec) and not Path(spec).is_file():
        if as_json:
            click.echo("[]")
        else:
            click.echo(f"no journal at {spec} yet: nothing has been spent through it")
        return
    run = app.config.run
    with open_journal(spec, audio_store=run.audio_store, lease_s=run.lease_s) as journal:
        days = journal.spend_by_target_day()
        targets = _by_target(journal)
    path = Path(spec) if not is_postgres(spec) else Path(describe_url(spec))
    if as_json:
        # The plain --json answer stays the by-day list that scripts already read.
        click.echo(json.dumps(targets if by_target else days, indent=2))
        return
    console = Console(width=max(100, Console().width))
    if not by_target:
        console.print(_day_table(path, days))
    console.print(_target_table(targets))
