"""Commands that describe the installation: `plugins`, `providers`, `config check|show`."""

from __future__ import annotations

import json
from importlib.metadata import PackageNotFoundError, version

import click
from rich.console import Console
from rich.table import Table

from ..config import default_config_text, find_config
from ..errors import ConfigError
from ..targets import TargetCheck
from .app import App, pass_app


def _version(dist: str) -> str | None:
    try:
        return version(dist)
    except PackageNotFoundError:
        return None


@click.command(name="plugins")
@pass_app
def plugins_command(app: App) -> None:
    """List installed plugins (JSON): name, version, kind, hooks, and load errors."""
    rows = []
    for row in app.plugins.plugin_rows():
        dist, _, ver = row["source"].partition(" ")
        rows.append(
            {
                "name": row["name"],
                "version": ver or None,
                "dist": dist or None,
                "kind": row["kind"],
                "hooks": row["hooks"],
            }
        )
    for err in app.plugins.errors:
        dist, _, ver = err.source.partition(" ")
        rows.append(
            {"name": err.name, "version": ver or None, "dist": dist or None, "error": err.error}
        )
    click.echo(json.dumps(rows, indent=2))


def _price(check: TargetCheck) -> str:
    per_second = check.usd_per_second
    return "" if per_second is None else f"${per_second * 3600:.2f}/h"


@click.command(name="providers")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_app
def providers_command(app: App, as_json: bool) -> None:
    """Each configured target, and why it is or is not usable."""
    checks = app.target_checks()
    rows = [
        {
            "name": c.name,
            "kind": c.kind,
            "where": "" if c.remote is None else ("remote" if c.remote else "local"),
            "quality": c.provider.info.quality if c.provider else "",
            "gpu": c.gpu or "",
            "price": _price(c),
            "usable": c.usable,
            "reason": c.reason,
        }
        for c in checks
    ]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    table = Table(title=f"targets in {app.config.source}")
    for column in ("name", "kind", "where", "quality", "gpu", "price", "usable", "reason"):
        table.add_column(column, overflow="fold")
    for row in rows:
        usable = "[green]yes[/]" if row["usable"] else "[red]no[/]"
        values = [str(row[k] or "") for k in ("name", "kind", "where", "quality", "gpu", "price")]
        table.add_row(*values, usable, row["reason"])
    Console(width=max(100, Console().width)).print(table)
    if not checks:
        click.echo("no targets configured: add a providers: block (see docs/configuration.md)")


@click.group(name="config")
def config_group() -> None:
    """Check or show the configuration."""


@config_group.command(name="check")
@pass_app
def config_check(app: App) -> None:
    """Validate the config file; exit 2 naming the file, line and key of the first error."""
    config = app.config
    checks = app.target_checks()
    invalid = [c for c in checks if c.invalid]
    if invalid:
        raise ConfigError(invalid[0].reason)
    usable = sum(c.usable for c in checks)
    click.echo(f"config OK: {config.source} ({len(checks)} targets, {usable} usable now)")
    for check in checks:
        if not check.usable:
            click.echo(f"  {check.name}: {check.reason}")


@config_group.command(name="show")
@pass_app
def config_show(app: App) -> None:
    """Print the config file in use (the built-in one when there is none)."""
    path = find_config(app.config_path)
    click.echo(default_config_text() if path is None else path.read_text("utf-8"), nl=False)
