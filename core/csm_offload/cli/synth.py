"""`csm-offload synth`: text (or a text file) to one audio file, through the router."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import math
import os
import re
import sys
import unicodedata
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

from ..audio import CHUNK_PAUSE_S, Audio, AudioFormat
from ..chunking import chunk_text
from ..dialogue import parse_script, render_in_waves, speaker_ids, turn_request
from ..errors import BudgetExceeded, ProviderError, UserError
from ..manager import CloudGPUManager
from ..model import SpeechRequest
from ..output import (
    WAV_MAX_BYTES,
    AudioWriter,
    check_free_space,
    check_output_path,
    describe_bytes,
    estimate_audio_bytes,
    write_bytes_atomic,
)
from ..router import RouteOptions
from ..runner import Progress, RunResult
from ..scrub import scrub, scrub_data
from ..voices import Voice, chosen_voice, voice_from_config, voice_request
from .app import App, pass_app

#: Characters per request unless --max-chars says otherwise: about 15-20 s of speech, which CSM
#: generates well within its default 30 s audio cap.
DEFAULT_CHUNK_CHARS = 300
MAX_INPUT_BYTES = 50 * 1024 * 1024
FORMATS: dict[str, AudioFormat] = {".wav": "wav", ".flac": "flac"}
TEXT_SUFFIXES = frozenset({".txt", ".text", ".md", ".markdown", ".rst"})


def read_text(source: str) -> str:
    """`source` is a file path if such a file exists, `-` for stdin, else the text itself."""
    if source == "-":
        return check_text(_read_stdin(), "the text on stdin")
    path = Path(source)
    try:
        maybe_path = 0 < len(source) < 4096 and "\n" not in source
        is_file = maybe_path and path.is_file()
        is_other = maybe_path and not is_file and path.exists()
    except (OSError, ValueError):
        is_file = is_other = False
    if is_other and path.is_dir():
        raise UserError(f"{source} is a directory: give a text file or quoted text")
    if is_other:
        raise UserError(
            f"{source} is not a regular file (a device or a pipe?): give a text file, quoted "
            "text, or - to read stdin"
        )
    if not is_file:
        if _looks_like_a_path(source):
            raise UserError(
                f"{source}: no such file; check the path (to speak these words as text, "
                "add a space or punctuation)"
            )
        return check_text(source, "the text")
    if path.stat().st_size > MAX_INPUT_BYTES:
        raise UserError(f"{path} is over {MAX_INPUT_BYTES // 2**20} MB; split it into chapters")
    try:
        return check_text(path.read_text("utf-8"), str(path))
    except UnicodeDecodeError:
        raise UserError(f"{path} is not UTF-8 text; convert it (e.g. iconv -t UTF-8)") from None
    except OSError as exc:
        raise UserError(f"cannot read {path} ({exc.strerror or exc}); check the file") from None


def _read_stdin() -> str:
    """All of stdin as UTF-8, refused (never cut) when it is over `MAX_INPUT_BYTES`."""
    stdin = sys.stdin
    stream = getattr(stdin, "buffer", None)
    if stream is None:  # a text-only stream (an embedding host's): its own encoding is done
        # A character is at least one byte: MAX + 1 characters are enough to know.
        text = stdin.read(MAX_INPUT_BYTES + 1)
        if len(text.encode("utf-8", "surrogatepass")) > MAX_INPUT_BYTES:
            raise UserError(
                f"the text on stdin is over {MAX_INPUT_BYTES // 2**20} MB; split it into "
                "chapters and give each as a file"
            )
        return text
    data = bytearray()
    while len(data) <= MAX_INPUT_BYTES:
        block = stream.read(min(2**20, MAX_INPUT_BYTES + 1 - len(data)))
        if not block:
            break
        data += block
    if len(data) > MAX_INPUT_BYTES:
        raise UserError(
            f"the text on stdin is over {MAX_INPUT_BYTES // 2**20} MB; split it into chapters "
            "and give each as a file"
        )
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(
            f"the text on stdin is not UTF-8 (byte {exc.start}); convert it (e.g. iconv -t UTF-8)"
        ) from None


def check_text(text: str, where: str) -> str:
    """Refuse what cannot be spoken or stored: NUL characters (a binary file) and lone
    surrogates (bytes that were not UTF-8, as the shell passes them)."""
    nul = text.find("\0")
    if nul >= 0:
        raise UserError(
            f"{where} contains a NUL character (at character {nul}): is it a binary file? give "
            "plain UTF-8 text"
        )
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise UserError(
                f"{where} has bytes that are not UTF-8 (at character {exc.start}); give UTF-8 "
                "text (e.g. iconv -t UTF-8)"
            ) from None
    return text


def _looks_like_a_path(source: str) -> bool:
    """One word ending in a text-file suffix, or containing a slash: surely a mistyped path."""
    if not source or any(c.isspace() for c in source):
        return False
    return Path(source).suffix.lower() in TEXT_SUFFIXES or "/" in source


def route_options(cloud_gpu: bool, local_audio: bool, draft: bool) -> RouteOptions:
    return RouteOptions(cloud_gpu=cloud_gpu, local_audio=local_audio, draft=draft)


def make_requests(
    manager: CloudGPUManager,
    text: str,
    speaker: int,
    max_chars: int | None,
    voice: Voice | None = None,
) -> list[SpeechRequest]:
    limit = manager.text_limit()
    size = min(limit, max_chars or DEFAULT_CHUNK_CHARS)
    pieces = chunk_text(text, size)
    if not pieces:
        raise UserError("the text is empty; give some words, or a file that contains some")
    if not _speakable(text):
        raise UserError(
            "the text has nothing to speak (only punctuation or invisible characters); give "
            "some words"
        )
    if voice is not None:
        return [voice_request(piece, voice) for piece in pieces]
    return [SpeechRequest(piece, speaker) for piece in pieces]


#: A letter or a digit: almost every text has one, found at C speed.
_WORD_CHAR = re.compile(r"[^\W_]")


def _speakable(text: str) -> bool:
    """Whether any character would be spoken: a letter, a digit or a symbol (emoji have
    names). Punctuation and zero-width characters alone would be paid for as silence."""
    if _WORD_CHAR.search(text):
        return True
    return any(unicodedata.category(c).startswith("S") for c in text)


def sidecar_path(output: Path) -> Path:
    return output.with_name(output.name + ".json")


def _sidecar(
    output: Path, audio: AudioWriter, result: RunResult, requests: list[SpeechRequest]
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

    def __init__(self, total: int, enabled: bool, label: str = "synth") -> None:
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
        self.task = self.bar.add_task(label, total=total, cost="$0.0000", note="")
        self.note = ""

    def __call__(self, event: Progress) -> None:
        note = f"{event.failed} failed" if event.failed else self.note
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


def _check_output(output: str) -> tuple[Path, AudioFormat]:
    path = Path(output)
    try:
        check_output_path(path)
    except OSError as exc:  # a path the OS refuses outright (a loop of links, say)
        raise UserError(f"{output}: {exc.strerror or exc}; choose another -o path") from None
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise UserError(f"{output}: the output must end in .wav or .flac")
    return path, fmt


def _check_budget(max_usd: float | None) -> None:
    # NaN compares false with everything: as a budget it would let every submission through.
    if max_usd is not None and not (math.isfinite(max_usd) and max_usd > 0):
        raise UserError(
            f"--max-usd must be a number of dollars above 0, got {max_usd}; leave it out for "
            "no cap (or set run.max_usd)"
        )


def _check_space(
    manager: CloudGPUManager,
    requests: list[SpeechRequest],
    quality: str,
    path: Path,
    fmt: AudioFormat,
) -> None:
    """Refuse before any money is spent when the audio cannot fit: on the output's disk, and
    on the journal's, which keeps every new segment as FLAC (those already there are free)."""
    unique = list({r.id: r for r in requests}.values())
    cached = manager.journal.cached([r.id for r in unique], quality)
    new_chars = sum(len(r.text) for r in unique if r.id not in cached)
    pauses = CHUNK_PAUSE_S * max(0, len(requests) - 1)
    out_bytes = estimate_audio_bytes(sum(len(r.text) for r in requests), fmt, pauses)
    if fmt == "wav" and out_bytes > WAV_MAX_BYTES:
        raise UserError(
            f"the audio would be about {describe_bytes(out_bytes)}, over WAV's 4 GB limit; "
            f"write FLAC instead (-o {path.with_suffix('.flac')}) or split the text"
        )
    check_free_space(
        {
            path.parent: (out_bytes, "choose an -o path on another disk"),
            manager.journal.audio_dir: (
                estimate_audio_bytes(new_chars, "flac"),
                "set run.journal to a file on another disk",
            ),
        }
    )


@click.command(name="synth")
@click.argument("source")
@click.option("-o", "--output", required=True, help="Audio file to write (.wav or .flac).")
@click.option("--speaker", type=click.IntRange(0, 1_000), default=0, show_default=True)
@click.option("--voice", help="A voice from the config's voices: section.")
@click.option("--voice-prompt", type=click.Path(dir_okay=False), help="A 3-30 s reference clip.")
@click.option("--voice-text", help="What the --voice-prompt clip says.")
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
@click.option(
    "--script",
    "is_script",
    is_flag=True,
    help="SOURCE is a script of `Name: line` turns: each name in its voice, scenes in parallel.",
)
@click.option("--quiet", is_flag=True, help="No progress bar.")
@pass_app
def synth_command(
    app: App,
    source: str,
    output: str,
    speaker: int,
    voice: str | None,
    voice_prompt: str | None,
    voice_text: str | None,
    cloud_gpu: bool,
    local_audio: bool,
    draft: bool,
    max_usd: float | None,
    max_chars: int | None,
    is_script: bool,
    quiet: bool,
) -> None:
    """Speak SOURCE (text, a UTF-8 file, or - for stdin) into OUTPUT through the router."""
    _check_budget(max_usd)
    path, fmt = _check_output(output)
    text = read_text(source)
    chosen = chosen_voice(app.config, voice, voice_prompt, voice_text)
    options = route_options(cloud_gpu, local_audio, draft)
    with CloudGPUManager(
        config=app.config, plugins=app.plugins, options=options, max_usd=max_usd
    ) as manager:
        if is_script:
            result, requests = _speak_script(app, manager, text, source, quiet)
            _report(result, requests, path, fmt)
            return
        requests = make_requests(manager, text, speaker, max_chars, chosen)
        plan = manager.plan(requests[:1])  # fail fast, before any work, when nothing is usable
        _check_space(manager, requests, plan.quality, path, fmt)
        with ProgressBar(len({r.id for r in requests}), enabled=not quiet) as bar:
            result = asyncio.run(manager.synthesize(requests, progress=bar))
    _report(result, requests, path, fmt)


def _speak_script(
    app: App, manager: CloudGPUManager, text: str, source: str, quiet: bool
) -> tuple[RunResult, list[SpeechRequest]]:
    """A dialogue script: each named speaker in the voice of the same name in the config (if
    any), each turn with the turns before it in its scene as context, the k-th turns of all
    scenes in one run. Returns every turn's request in script order, and the runs' results."""
    scenes = parse_script(text, source)
    names = {turn.name for scene in scenes for turn in scene.turns}
    voices = {n: voice_from_config(app.config, n) for n in sorted(names) if n in app.config.voices}
    runs: list[RunResult] = []
    total = sum(len(scene.turns) for scene in scenes)
    with ProgressBar(total, enabled=not quiet, label="script") as bar:

        def generate_all(wave: list[SpeechRequest]) -> list[Audio | None]:
            done = asyncio.run(manager.synthesize(wave, progress=bar))
            runs.append(done)
            return [done.outcomes[r.id].audio if done.outcomes[r.id].ok else None for r in wave]

        audio = render_in_waves(scenes, voices, generate_all)
    result = runs[0]
    for more in runs[1:]:
        result = result.then(more)
    ids = speaker_ids(scenes, voices)
    requests = [
        turn_request(scene, i, voices, audio[k][:i], ids)
        for k, scene in enumerate(scenes)
        for i in range(len(audio[k]))
    ]
    if len(requests) < total and result.ok:
        raise ProviderError(f"only {len(requests)} of {total} turns were made\n{result.summary()}")
    return result, requests


def _write_output(
    result: RunResult, requests: list[SpeechRequest], path: Path, fmt: AudioFormat
) -> tuple[AudioWriter, dict[str, Any]]:
    """The audio, one segment at a time from the journal's store, and its sidecar, both under
    temporary names until both are complete: a failure leaves neither half-written."""
    with AudioWriter(path, fmt, CHUNK_PAUSE_S) as audio:
        for request in requests:
            segment = result.outcomes[request.id].audio  # a damaged file: a UserError
            if segment is not None:
                audio.add(segment)
        audio.close()
        sidecar = _sidecar(path, audio, result, requests)
        # Plan reasons quote health details and failures: the file never holds a key.
        text = json.dumps(scrub_data(sidecar), indent=2)
        meta = write_bytes_atomic(sidecar_path(path), text.encode())
        try:
            audio.commit()
            os.replace(meta, sidecar_path(path))
        except BaseException:
            with contextlib.suppress(OSError):
                meta.unlink(missing_ok=True)
            raise
    return audio, sidecar


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _report(result: RunResult, requests: list[SpeechRequest], path: Path, fmt: AudioFormat) -> None:
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
    audio, sidecar = _write_output(result, requests, path, fmt)
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
        click.echo(scrub(line))
