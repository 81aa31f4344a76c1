"""`csm-offload doctor`: is each configured target reachable, and does it really speak?

It replaces the seed's `test_cloud_gpu.py` and its `cloud_gpu_test_results.json`: for each
target, the config check, a health check (with its latency), and one sentence generated on that
target alone, with its wall time, the audio's length and what it cost. The generation uses a
journal of its own in a temporary folder, so it is a real test every time (never a result
from the project's journal) and leaves no trace there.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .. import scrub
from ..errors import CsmOffloadError
from ..manager import CloudGPUManager
from ..model import SpeechRequest
from ..output import write_bytes_atomic
from ..router import RouteOptions
from ..runner import RunnerSettings
from ..targets import TargetCheck
from .app import App, pass_app
from .info import check_health

DEFAULT_TEXT = "This is a short test of the speech generator."


def _generate(app: App, check: TargetCheck, text: str, timeout_s: float) -> dict[str, Any]:
    """One sentence on this target alone, in a journal of its own; never raises."""
    quality = check.provider.info.quality if check.provider else "csm"
    options = RouteOptions(draft=quality == "draft")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="csm-offload-doctor-") as tmp:
        try:
            with CloudGPUManager(
                [check.name],
                config=app.config,
                plugins=app.plugins,
                journal=Path(tmp) / "journal.sqlite3",
                options=options,
                settings=RunnerSettings(deadline_s=timeout_s),
            ) as manager:
                request = SpeechRequest(text)
                result = asyncio.run(manager.synthesize([request]))
                outcome = result.outcomes[request.id]
                audio = outcome.audio if outcome.ok else None
        except CsmOffloadError as exc:
            return {"ok": False, "error": str(exc), "seconds": _since(started)}
    if audio is None:
        return {
            "ok": False,
            "error": outcome.error or result.summary() or "no audio came back",
            "seconds": _since(started),
            "cost_usd": round(result.cost_usd, 6),
        }
    return {
        "ok": True,
        "seconds": _since(started),
        "audio_s": round(audio.duration, 3),
        "real_time_factor": round(audio.duration / max(_since(started), 1e-6), 3),
        "cost_usd": round(result.cost_usd, 6),
        "made_by": outcome.target,
    }


def _since(started: float) -> float:
    return round(time.monotonic() - started, 3)


def _row(check: TargetCheck, health: dict[str, Any] | None) -> dict[str, Any]:
    return {
        "name": check.name,
        "kind": check.kind,
        "gpu": check.gpu,
        "usd_per_hour": None if check.usd_per_second is None else check.usd_per_second * 3600,
        "usable": check.usable,
        "reason": check.reason,
        "health": health,
        "generation": None,
    }


async def _timed_health(checks: list[TargetCheck]) -> tuple[dict[str, Any], float]:
    started = time.monotonic()
    found = await check_health(checks)
    return found, _since(started)


@click.command(name="doctor")
@click.option("--target", "targets", multiple=True, help="Check only this target (repeatable).")
@click.option("--text", default=DEFAULT_TEXT, show_default=True, help="The test sentence.")
@click.option("--no-generate", is_flag=True, help="Config and health only: spend nothing.")
@click.option(
    "--timeout",
    "timeout_s",
    type=click.FloatRange(5, 3600),
    default=300.0,
    show_default=True,
    help="Seconds one target's test generation may take (cold starts included).",
)
@click.option(
    "--json", "json_path", type=click.Path(dir_okay=False), help="Also write the results here."
)
@pass_app
def doctor_command(
    app: App,
    targets: tuple[str, ...],
    text: str,
    no_generate: bool,
    timeout_s: float,
    json_path: str | None,
) -> None:
    """Check every configured target: config, health, and one test sentence (with its time
    and cost). Exits 1 when a usable target fails its test."""
    if not text.strip():
        raise click.UsageError("--text must have some words to speak")
    checks = _selected(app.target_checks(), targets)
    healths, health_s = asyncio.run(_timed_health(checks))
    rows = []
    for check in checks:
        health = healths.get(check.name)
        found = None if health is None else {"ok": health.ok, "detail": health.detail}
        row = _row(check, found)
        if found is not None:
            found["checked_in_s"] = health_s
        if check.usable and not no_generate and (health is None or health.ok):
            row["generation"] = _generate(app, check, text, timeout_s)
        rows.append(row)
    report = scrub.scrub_data(
        {
            "checked_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "config": str(app.config.source),
            "text": text,
            "targets": rows,
        }
    )
    if json_path:
        path = Path(json_path)
        os.replace(write_bytes_atomic(path, json.dumps(report, indent=2).encode()), path)
    _print(report["targets"])
    if json_path:
        click.echo(f"results: {json_path}")
    if any(_failed(row) for row in rows):
        raise click.exceptions.Exit(1)


def _selected(checks: list[TargetCheck], names: tuple[str, ...]) -> list[TargetCheck]:
    if not names:
        return checks
    known = {c.name for c in checks}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise click.UsageError(
            f"no target named {', '.join(unknown)} in the config; configured: "
            f"{', '.join(sorted(known)) or 'none'}"
        )
    return [c for c in checks if c.name in names]


def _failed(row: dict[str, Any]) -> bool:
    health, generation = row["health"], row["generation"]
    return bool(
        (health is not None and not health["ok"])
        or (generation is not None and not generation["ok"])
    )


def _print(rows: list[dict[str, Any]]) -> None:
    table = Table(title="csm-offload doctor")
    for column in ("target", "kind", "config", "health", "test sentence"):
        table.add_column(column, overflow="fold")
    for row in rows:
        config = _mark(True, "ok") if row["usable"] else _mark(False, row["reason"])
        health = row["health"]
        health_text = "—" if health is None else _mark(health["ok"], health["detail"] or "ok")
        name, kind = escape(row["name"]), escape(row["kind"])
        table.add_row(name, kind, config, health_text, _generation(row))
    Console(width=max(100, Console().width)).print(table)


def _generation(row: dict[str, Any]) -> str:
    found = row["generation"]
    if found is None:
        return "not run"
    if not found["ok"]:
        return _mark(False, f"{found['error']} after {found['seconds']:.1f} s")
    return _mark(
        True,
        f"{found['audio_s']:.1f} s of audio in {found['seconds']:.1f} s, ${found['cost_usd']:.5f}",
    )


def _mark(ok: bool, text: str) -> str:
    return f"[green]{escape(text)}[/]" if ok else f"[red]{escape(text)}[/]"
