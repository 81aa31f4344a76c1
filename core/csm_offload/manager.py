"""The Python API, in the seed's shape: `CloudGPUManager(targets).generate_speech(...)`.

One manager keeps what a run learns (breakers, health, measured speeds) for the next call, and
one journal, so repeated calls never pay twice for the same request.

    manager = CloudGPUManager()                      # every configured target
    audio = manager.generate_speech("Hello.", speaker=0)
    result = await manager.synthesize(requests, progress=print)
"""

from __future__ import annotations

import asyncio
import math
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import attrs
import httpx

from .audio import Audio, join_audio
from .backoff import RetryPolicy
from .breaker import Breakers
from .chunking import chunk_text
from .config import Config, load_config, load_env
from .costmodel import LearnedCosts
from .errors import ProviderError, UserError
from .health import HealthCache
from .journal import Journal, is_postgres, open_journal
from .metrics import NULL as NULL_METRICS
from .metrics import Metrics, MetricsServer, serve_metrics
from .model import Segment, SpeechRequest
from .plugins import Plugins, load_plugins
from .router import Plan, RouteOptions, Router
from .runner import Progress, Runner, RunnerSettings, RunResult
from .speed import SpeedBook
from .targets import TargetCheck, check_targets
from .transport import ShardedTransport

#: Seconds a single HTTP request may take before it counts as a transient failure. Plugins
#: that hold a request open on purpose (RunPod's /runsync) pass a longer timeout for that call.
HTTP_TIMEOUT = httpx.Timeout(connect=10.0, read=60.0, write=60.0, pool=None)


def http_client() -> httpx.AsyncClient:
    """The one shared client of a run: pooled keep-alive connections, no client-side retries."""
    return httpx.AsyncClient(timeout=HTTP_TIMEOUT, transport=ShardedTransport(1000))


class CloudGPUManager:
    def __init__(
        self,
        targets: Iterable[str] | None = None,
        *,
        config: Config | str | os.PathLike[str] | None = None,
        plugins: Plugins | None = None,
        journal: str | os.PathLike[str] | None = None,
        options: RouteOptions | None = None,
        max_usd: float | None = None,
        settings: RunnerSettings | None = None,
        prefer: Sequence[str] = (),
        metrics: Metrics | None = None,
    ) -> None:
        """`prefer`: target names in the caller's order of preference, ranked before price
        as `audio.cloud_gpu.provider` is (and in its place). `metrics`: where runs count what
        they do (a long-lived process passes its own); without it, `run.metrics_port` serves
        this manager's own until `close`."""
        self.config = config if isinstance(config, Config) else load_config(config)
        self.plugins = plugins if plugins is not None else load_plugins()
        self.options = options or RouteOptions()
        found = check_targets(self.config, self.plugins.providers, self.plugins.load_errors())
        self.checks = self._select(found, targets)
        run = self.config.run
        cloud = self.config.audio.cloud_gpu
        self.settings = settings or RunnerSettings(
            retry=RetryPolicy(max_retries=cloud.max_retries),
            deadline_s=run.deadline_s,
            max_usd=run.max_usd,
        )
        if max_usd is not None:
            self.settings = _with_budget(self.settings, max_usd)
        self.journal_spec = str(journal or run.journal)
        #: The SQLite journal's file; with PostgreSQL, the local folder's stand-in name (for
        #: messages and the default audio store beside it).
        self.journal_path = (
            Path(".csm-offload/journal.pg")
            if is_postgres(self.journal_spec)
            else Path(self.journal_spec)
        )
        self._journal: Journal | None = None
        self._metrics_server: MetricsServer | None = None
        self.metrics = metrics or NULL_METRICS
        if metrics is None and run.metrics_port is not None:
            self.metrics = Metrics()
            self._metrics_server = serve_metrics(self.metrics, run.metrics_port)
        self.router = Router(
            self.checks,
            cloud,
            HealthCache(run.health_ttl_s),
            Breakers(),
            SpeedBook(),
            learned=self._learned(),
            preference=prefer,
        )

    def _learned(self) -> LearnedCosts:
        # The shared journal is opened now (it is used by every run anyway); the SQLite one is
        # only read, so a command that never runs a job never creates a file.
        if is_postgres(self.journal_spec):
            return LearnedCosts.from_journal(self.journal)
        return LearnedCosts.from_path(self.journal_path)

    @staticmethod
    def _select(checks: list[TargetCheck], names: Iterable[str] | None) -> list[TargetCheck]:
        if names is None:
            return checks
        wanted = list(names)
        known = {c.name for c in checks}
        unknown = [n for n in wanted if n not in known]
        if unknown:
            raise UserError(
                f"no target named {', '.join(unknown)} in the config; "
                f"configured: {', '.join(sorted(known)) or 'none'}"
            )
        return [c for c in checks if c.name in wanted]

    @property
    def journal(self) -> Journal:
        if self._journal is None:
            run = self.config.run
            self._journal = open_journal(
                self.journal_spec,
                audio_store=run.audio_store,
                lease_s=run.lease_s,
                env=load_env([Path.cwd()]),
            )
        return self._journal

    def existing_journal(self) -> Journal | None:
        """The journal if there is one already (a PostgreSQL journal always is): for
        commands that only look (dry runs, estimates) and must not create a file."""
        if is_postgres(self.journal_spec) or self.journal_path.is_file():
            return self.journal
        return None

    def close(self) -> None:
        if self._metrics_server is not None:
            self._metrics_server.stop()
            self._metrics_server = None
        if self._journal is not None:
            self._journal.close()
            self._journal = None

    def __enter__(self) -> CloudGPUManager:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def plan(self, requests: Sequence[SpeechRequest]) -> Plan:
        """Where `requests` would go now, from what is already known (no network)."""
        return self.router.plan(requests, self.options)

    def text_limit(self) -> int:
        """The smallest text limit among the targets that may be used."""
        limits = [c.provider.info.limits.max_text_chars for c in self.checks if c.provider]
        return min(limits) if limits else 5_000

    async def synthesize(
        self,
        requests: Sequence[SpeechRequest],
        progress: Callable[[Progress], None] | None = None,
    ) -> RunResult:
        """Generate every request through the router; per-request errors are in the result."""
        async with http_client() as http:
            runner = Runner(
                self.router, self.journal, http, self.settings, self.options, metrics=self.metrics
            )
            return await runner.run(requests, progress)

    def generate_speech(
        self,
        text: str,
        speaker: int = 0,
        context: Sequence[Segment] = (),
        max_length_ms: int = 30_000,
        *,
        temperature: float = 0.9,
        topk: int = 50,
        seed: int = 0,
    ) -> Audio:
        """The seed's call: one utterance (split at sentences when long), as `Audio`."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            raise UserError("generate_speech blocks; inside async code use `await synthesize()`")
        pieces = chunk_text(text, self.text_limit()) or [""]
        requests = [
            SpeechRequest(piece, speaker, tuple(context), max_length_ms, temperature, topk, seed)
            for piece in pieces
        ]
        result = asyncio.run(self.synthesize(requests))
        if not result.ok:
            first = result.failed()[0]
            raise ProviderError(f"speech generation failed: {first.error}\n{result.summary()}")
        audios = [result.outcomes[r.id].audio for r in requests]
        return join_audio([a for a in audios if a is not None])


def _with_budget(settings: RunnerSettings, max_usd: float) -> RunnerSettings:
    if not math.isfinite(max_usd) or max_usd <= 0:
        raise UserError(
            f"max_usd must be a number of dollars above 0, got {max_usd}; leave it out for no cap"
        )
    return attrs.evolve(settings, max_usd=max_usd)
