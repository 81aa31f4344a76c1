"""`csm-offload synth`: text (or a text file) to one audio file, through the router."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.progress import Progress as Bar

from ..audio import Audio
from ..chunking import chunk_text
from ..errors import BudgetExceeded, ProviderError, UserError
from ..manager import CloudGPUManager, join_audio
from ..model import SpeechRequest
from ..router import RouteOptions
from ..runner import Progress, RunResult
from .app import App, pass_app

#: Characters per request unless --max-chars says otherwise: about 15-20 s of speech, which CSM
#: generates well within its default 30 s audio cap.
DEFAULT_CHUNK_CHARS = 300
MAX_INPUT_BYTES = 50 * 1024 * 1024
FORMATS = {".wav": "wav", ".flac": "flac"}
TEXT_SUFFIXES = frozenset({".txt", ".text", ".md", ".markdown", ".rst"})


def read_text(source: str) -> str:
    """`source` is a file path if such a file exists, `-` for stdin, else the text itself."""
    if source == "-":
        return click.get_text_stream("stdin").read(MAX_INPUT_BYTES)
    path = Path(source)
    try:
        is_file = len(source) < 4096 and "\n" not in source and path.is_file()
    except OSError:
        is_file = False
    if not is_file:
        if _looks_like_a_path(source):
            raise UserError(
                f"{source}: no such file; check the path (to speak these words as text, "
                "add a space or punctuation)"
            )
        return source
    if path.stat().st_size > MAX_INPUT_BYTES:
        raise UserError(f"{path} is over {MAX_INPUT_BYTES // 2**20} MB; split it into chapters")
    try:
        return path.read_text("utf-8")
    except UnicodeDecodeError:
        raise UserError(f"{path} is not UTF-8 text; convert it (e.g. iconv -t UTF-8)") from None


def _looks_like_a_path(source: str) -> bool:
    """One word ending in a text-file suffix, or containing a slash: surely a mistyped path."""
    if not source or any(c.isspace() for c in source):
        return False
    return Path(source).suffix.lower() in TEXT_SUFFIXES or "/" in source


def route_options(cloud_gpu: bool, local_audio: bool, draft: bool) -> RouteOptions:
    return RouteOptions(cloud_gpu=cloud_gpu, local_audio=local_audio, draft=draft)


def make_requests(
    manager: CloudGPUManager, text: str, speaker: int, max_chars: int | None
) -> list[SpeechRequest]:
    limit = manager.text_limit()
    size = min(limit, max_chars or DEFAULT_CHUNK_CHARS)
    pieces = chunk_text(text, size)
    if not pieces:
        raise UserError("the text is empty; give some words, or a file that contains some")
    return [SpeechRequest(piece, speaker) for piece in pieces]


def _write_atomic(path: Path, data: bytes) -> None:
    """Write to a temporary name in the same directory, then rename: never half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def sidecar_path(output: Path) -> Path:
    return output.with_name(output.name + ".json")


def _sidecar(
    output: Path, audio: Audio, result: RunResult, requests: list[SpeechRequest]
) -> dict[str, Any]:
    made_by = Counter(result.outcomes[r.id].target for r in requests)
    return {
        "audio": output.name,
        "duration_s": round(audio.duration, 3),
        "sample_rate": audio.sample_rate,
        "quality": result.plan.quality,
        "targets": dict(made_by),
        "cost_usd": round(result.cost_usd, 6),
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "plan": result.plan.as_dict(),
        "segments": [
            {
                "id": r.id,
                "text": r.text,
                "target": result.outcomes[r.id].target,
                "from_journal": result.outcomes[r.id].cached,
            }
            for r in requests
        ],
    }


class ProgressBar:
    """A rich progress bar fed by the runner's progress events."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.bar = Bar(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("segments"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            TextColumn("{task.fields[cost]}"),
            TextColumn("{task.fields[note]}"),
            console=Console(stderr=True),
            disable=not enabled,
        )
        self.task = self.bar.add_task("synth", total=total, cost="$0.0000", note="")

    def __call__(self, event: Progress) -> None:
        note = f"{event.failed} failed" if event.failed else ""
        if event.event == "reattached":
            note = "re-attached a job left in flight"
        self.bar.update(
            self.task,
            completed=event.done + event.failed,
            cost=f"${event.cost_usd:.4f}",
            note=note,
        )

    def __enter__(self) -> ProgressBar:
        self.bar.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.bar.stop()


def _check_output(output: str) -> tuple[Path, str]:
    path = Path(output)
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise UserError(f"{output}: the output must end in .wav or .flac")
    if path.is_dir():
        raise UserError(f"{output} is a directory; give a file name such as out.wav")
    return path, fmt


@click.command(name="synth")
@click.argument("source")
@click.option("-o", "--output", required=True, help="Audio file to write (.wav or .flac).")
@click.option("--speaker", type=click.IntRange(0, 1_000), default=0, show_default=True)
@click.option("--cloud-gpu", is_flag=True, help="Remote GPU targets only; fail if none usable.")
@click.option("--local-audio", is_flag=True, help="Local targets only.")
@click.option("--draft", is_flag=True, help="Use the free draft voice (eSpeak NG).")
@click.option("--max-usd", type=float, default=None, help="Spend at most this much on this run.")
@click.option(
    "--max-chars",
    type=click.IntRange(20, 100_000),
    default=None,
    help=f"Characters per segment (default {DEFAULT_CHUNK_CHARS}, capped by the target).",
)
@click.option("--quiet", is_flag=True, help="No progress bar.")
@pass_app
def synth_command(
    app: App,
    source: str,
    output: str,
    speaker: int,
    cloud_gpu: bool,
    local_audio: bool,
    draft: bool,
    max_usd: float | None,
    max_chars: int | None,
    quiet: bool,
) -> None:
    """Speak SOURCE (text, a UTF-8 file, or - for stdin) into OUTPUT through the router."""
    path, fmt = _check_output(output)
    text = read_text(source)
    options = route_options(cloud_gpu, local_audio, draft)
    with CloudGPUManager(
        config=app.config, plugins=app.plugins, options=options, max_usd=max_usd
    ) as manager:
        requests = make_requests(manager, text, speaker, max_chars)
        manager.plan(requests[:1])  # fail fast, before any work, when nothing is usable
        with ProgressBar(len({r.id for r in requests}), enabled=not quiet) as bar:
            result = asyncio.run(manager.synthesize(requests, progress=bar))
    _report(result, requests, path, fmt)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _report(result: RunResult, requests: list[SpeechRequest], path: Path, fmt: str) -> None:
    if result.budget_stopped:
        done = sum(o.ok for o in result.outcomes.values())
        raise BudgetExceeded(
            f"stopped by the budget after {done} of {len(result.outcomes)} segments "
            f"(${result.cost_usd:.4f} spent, kept in the journal); nothing was written to "
            f"{path}; rerun with a higher --max-usd to finish"
        )
    if not result.ok:
        first = result.failed()[0]
        raise ProviderError(
            f"{len(result.failed())} of {len(result.outcomes)} segments failed "
            f"(first: {first.error}); nothing was written to {path}\n{result.summary()}"
        )
    audios = [result.outcomes[r.id].audio for r in requests]
    audio = join_audio([a for a in audios if a is not None])
    _write_atomic(path, audio.encode(fmt))  # type: ignore[arg-type]
    sidecar = _sidecar(path, audio, result, requests)
    _write_atomic(sidecar_path(path), json.dumps(sidecar, indent=2).encode())
    cached = sum(result.outcomes[r.id].cached for r in set(requests))
    made_by = ", ".join(
        f"{name} ({_count(n, 'segment')})" for name, n in sidecar["targets"].items()
    )
    click.echo(
        f"wrote {path} ({audio.duration:.1f} s, {result.plan.quality} quality) "
        f"made by {made_by}; {_count(cached, 'segment')} from the journal; "
        f"${result.cost_usd:.4f} spent"
    )
    click.echo(f"metadata: {sidecar_path(path)}")
    for line in result.plan.explain():
        click.echo(line)
