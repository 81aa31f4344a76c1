"""Commands that describe the installation: `plugins`, `providers`, `config check|show`."""

from __future__ import annotations

import asyncio
import contextlib
import json
from importlib.metadata import PackageNotFoundError, version

import click
from rich.console import Console
from rich.table import Table

from .. import scrub
from ..config import Config, default_config_text, find_config, load_config, read_config_file
from ..health import HealthCache
from ..manager import http_client
from ..model import Health
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
    click.echo(json.dumps(scrub.scrub_data(rows), indent=2))


def _price(check: TargetCheck) -> str:
    per_second = check.usd_per_second
    return "" if per_second is None else f"${per_second * 3600:.2f}/h"


#: The whole of `providers`' health checks, run concurrently: one slow host cannot hold it up.
HEALTH_BUDGET_S = 10.0
_STATE_STYLE = {"usable": "green", "unhealthy": "yellow", "unusable": "red"}


async def check_health(checks: list[TargetCheck]) -> dict[str, Health]:
    """Each usable target's health, asked concurrently within `HEALTH_BUDGET_S` in all."""
    pairs = [(c.target, c.provider) for c in checks if c.target is not None and c.provider]
    cache = HealthCache()
    async with http_client() as http:
        # Each check has its own limit too; this one catches a hook that ignores cancellation
        # of its wait and would hold the command past the budget.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(
                cache.refresh(pairs, http, timeout_s=HEALTH_BUDGET_S), HEALTH_BUDGET_S + 1
            )
    found: dict[str, Health] = {}
    for target, _provider in pairs:
        health = cache.get(target.name)
        found[target.name] = health or Health(
            ok=False, detail=f"no health answer within {HEALTH_BUDGET_S:g} s"
        )
    return found


def _state(check: TargetCheck, health: Health | None, offline: bool) -> tuple[str, str]:
    """(state, reason): usable, unusable (config, keys, plugin) or unhealthy (asked, said no)."""
    if not check.usable:
        return "unusable", check.reason
    if offline:
        return "usable", "ok (health not checked: --offline)"
    if health is not None and not health.ok:
        return "unhealthy", health.detail or "health check failed"
    detail = health.detail if health is not None else ""
    return "usable", f"ok ({detail})" if detail else "ok"


@click.command(name="providers")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--offline", is_flag=True, help="Do not ask the targets' health (no network).")
@pass_app
def providers_command(app: App, as_json: bool, offline: bool) -> None:
    """Each configured target: usable, unusable or unhealthy, and why.

    Health is asked of every usable target at once (at most 10 s in all) unless --offline."""
    checks = app.target_checks()
    healths = {} if offline else asyncio.run(check_health(checks))
    rows = []
    for c in checks:
        state, reason = _state(c, healths.get(c.name), offline)
        rows.append(
            {
                "name": c.name,
                "kind": c.kind,
                "where": "" if c.remote is None else ("remote" if c.remote else "local"),
                "quality": c.provider.info.quality if c.provider else "",
                "gpu": c.gpu or "",
                "price": _price(c),
                "state": state,
                "usable": state == "usable",
                "health_checked": not offline and c.usable,
                "reason": scrub.scrub(reason),
            }
        )
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    table = Table(title=f"targets in {app.config.source}")
    for column in ("name", "kind", "where", "quality", "gpu", "price", "state", "reason"):
        table.add_column(column, overflow="fold")
    for row in rows:
        state = f"[{_STATE_STYLE[row['state']]}]{row['state']}[/]"
        values = [str(row[k] or "") for k in ("name", "kind", "where", "quality", "gpu", "price")]
        table.add_row(*values, state, row["reason"])
    Console(width=max(100, Console().width)).print(table)
    if not checks:
        click.echo("no targets configured: add a providers: block (see docs/configuration.md)")
    elif offline:
        click.echo("health not checked (--offline): usable means the config and keys are fine")
    else:
        click.echo(f"health asked of every usable target just now (limit {HEALTH_BUDGET_S:g} s)")


@click.group(name="config")
def config_group() -> None:
    """Check or show the configuration."""


def _needs_lines(config: Config, check: TargetCheck) -> list[str]:
    """What a target needs from outside the file, as errors naming the line and the key."""
    spec = check.spec
    key: tuple[str, ...] = ("providers", check.name)
    if spec is not None and spec.missing_env and spec.missing_keys:
        key = (*key, spec.missing_keys[0])
    elif spec is not None and not spec.missing_env:
        key = (*key, "kind")
    return [str(config.error(key, need)) for need in check.needs]


@config_group.command(name="check")
@pass_app
def config_check(app: App) -> None:
    """Validate the config file: list every error of every target (file, line and key of
    each) and exit 2 if there is any; "config OK" only when there is none."""
    config = load_config(app.config_path, strict=False)
    checks = app.target_checks(config)
    errors = list(config.errors)
    notes = []
    for check in checks:
        errors += check.errors
        if check.needs and not config.built_in:
            # In a file the user wrote, a target that cannot work is an error to fix. The
            # built-in config lists every provider on the off chance: there it is a note.
            errors += _needs_lines(config, check)
        elif not check.usable and not check.errors:
            notes.append(f"  {check.name}: {check.reason}")
    if errors:
        for error in errors:
            click.secho(scrub.scrub(f"error: {error}"), fg="red", err=True)
        if len(errors) > 1:
            click.echo(f"{len(errors)} errors in {config.source}", err=True)
        raise click.exceptions.Exit(2)
    usable = sum(c.usable for c in checks)
    click.echo(f"config OK: {config.source} ({len(checks)} targets, {usable} usable now)")
    for note in notes:
        click.echo(scrub.scrub(note))


@config_group.command(name="show")
@pass_app
def config_show(app: App) -> None:
    """Print the config file in use (the built-in one when there is none)."""
    path = find_config(app.config_path)
    click.echo(default_config_text() if path is None else read_config_file(path), nl=False)
