"""The runner: owns every job's lifecycle, submit → poll → decode, on the router's candidates.

One asyncio task per batch. A batch takes a slot of its target (the per-target in-flight cap)
for as long as its job is in flight. Failures go through one retry loop: transient errors are
retried on the same target after exponential backoff with full jitter (a provider's
`Retry-After` is a floor), a target that keeps failing or says it is `Unavailable` trips its
circuit breaker and the batch fails over to the next candidate, and a request that a worker
refused is retried a bounded number of times and then reported on its own. The journal is
written before each step is acted on, so a killed run can be resumed by the next one.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import attrs
import httpx

from . import journal as jr
from .audio import Audio, join_audio
from .backoff import RetryPolicy, retry_delay
from .breaker import Breakers, BreakerState
from .budget import NOTHING, Budget, Hold
from .capacity import Capacity, in_flight_for
from .errors import (
    PERMANENT,
    TOO_LONG,
    BudgetExceeded,
    CsmOffloadError,
    JobLost,
    ProviderError,
    RateLimited,
    Rejected,
    ResultUnusable,
    TransientError,
    Unavailable,
    WireError,
)
from .journal import JobRow, Journal
from .liveness import Liveness, Overtaking
from .metrics import KINDS, Metrics, kind_of
from .metrics import NULL as NULL_METRICS
from .model import JobHandle, JobState, JobStatus, SpeechRequest
from .pacing import Pacer, Pacers
from .polling import PollSchedule, PollTimes
from .router import Choice, Plan, RouteOptions, Router
from .scrub import scrub
from .speed import SpeedBook
from .splits import Splits


@attrs.frozen
class RunnerSettings:
    retry: RetryPolicy = attrs.field(factory=RetryPolicy)
    #: Seconds the whole run may take; in-flight jobs are cancelled when it passes.
    deadline_s: float = 3600.0
    max_usd: float | None = None
    #: Shortest and longest gap between two polls of one job.
    poll_min_s: float = 0.02
    poll_max_s: float = 10.0
    #: When the first poll of a job goes, before anything about the target has been measured.
    first_poll_s: float = 1.0
    #: When the pilot job (the one that measures an unmeasured target) first polls.
    pilot_first_s: float = 0.2
    #: A poll goes this long after the predicted finish, so that it usually finds the job done.
    poll_margin_s: float = 0.03
    #: Consecutive poll errors after which a job is given up (cancelled and resubmitted).
    max_poll_errors: int = 20
    health_timeout_s: float = 10.0
    #: The budget holds each job's estimate plus this fraction until its actual cost is known:
    #: estimates are predictions, and a job may run a little longer than predicted.
    budget_margin: float = 0.25
    breaker_threshold: int = 5
    breaker_cooldown_s: float = 5.0
    #: Times a target's breaker may open without a success in between before batches stop
    #: waiting for it.
    breaker_give_up: int = 4
    #: When a queued job is stuck and when a target that stopped answering is given up.
    liveness: Liveness = attrs.field(factory=Liveness)
    #: Seconds a job orphaned by a dead target is still watched for a late result.
    orphan_poll_s: float = 10.0
    #: Longest gap between two looks at requests another run of a shared journal holds.
    claim_poll_s: float = 2.0


@attrs.frozen
class Progress:
    """A snapshot for progress callbacks, sent after every change."""

    event: str
    total: int
    done: int
    failed: int
    cached: int
    in_flight: int
    cost_usd: float
    request_id: str | None = None
    target: str | None = None
    detail: str = ""


#: Audio up to this size is hashed and stored on the loop's thread (see `Runner._keep`).
_INLINE_STORE_BYTES = 512 * 1024


@attrs.define
class Outcome:
    """What became of one request. The audio stays in the journal's store until asked for,
    so a run of thousands of segments does not hold them all in memory."""

    request_id: str
    path: Path | None = None
    target: str | None = None
    quality: str | None = None
    cached: bool = False
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.path is not None

    @property
    def audio(self) -> Audio | None:
        """The audio, read from the journal's content-addressed store."""
        return None if self.path is None else jr.read_stored_audio(self.path)


@attrs.define
class RunResult:
    plan: Plan
    outcomes: dict[str, Outcome]
    cost_usd: float
    #: Every failure seen, by target, for the summary printed when requests fail.
    failures: dict[str, list[str]]
    budget_stopped: bool = False

    @property
    def ok(self) -> bool:
        return all(o.ok for o in self.outcomes.values())

    def failed(self) -> list[Outcome]:
        return [o for o in self.outcomes.values() if not o.ok]

    def then(self, later: RunResult) -> RunResult:
        """This run and a later one over more requests (a later outcome for the same request
        wins), as one result: costs add up, failures are kept from both."""
        failures = {k: [*self.failures.get(k, []), *v] for k, v in later.failures.items()}
        return attrs.evolve(
            self,
            outcomes={**self.outcomes, **later.outcomes},
            cost_usd=self.cost_usd + later.cost_usd,
            failures={**self.failures, **failures},
            budget_stopped=self.budget_stopped or later.budget_stopped,
        )

    def summary(self) -> str:
        """One line per target: how often and why it failed."""
        parts = []
        for target, errors in sorted(self.failures.items()):
            common = Counter(errors).most_common(2)
            reasons = "; ".join(f"{msg} (x{n})" for msg, n in common)
            parts.append(f"{target}: {len(errors)} failures: {reasons}")
        return "\n".join(parts)


ProgressCallback = Callable[[Progress], None]


class _GiveUp(Exception):
    """This batch stops trying: the message says why."""


class _Attempt(Exception):
    """One attempt on one target failed; `delay` is the backoff before the same target again.
    `blame` is False when the request, not the target, was at fault (a refusal)."""

    def __init__(
        self, message: str, delay: float = 0.0, blame: bool = True, kind: str = "other"
    ) -> None:
        super().__init__(message)
        self.delay = delay
        self.blame = blame
        #: The metrics' failure kind (`csm_offload.metrics.KINDS`) or retry reason.
        self.kind = kind


class _DecodeFailed(Exception):
    """A provider's decode raised or returned unusable audio."""


class _Orphaned(_Attempt):
    """The target stopped answering while this job was in flight: fail over at once, and keep
    watching the job in the background for a result that was paid for."""


@attrs.define
class _Batch:
    requests: list[SpeechRequest]
    failures: Counter[str] = attrs.field(factory=Counter)
    request_failures: Counter[str] = attrs.field(factory=Counter)
    last_errors: dict[str, str] = attrs.field(factory=dict)
    max_batch: int | None = None
    last_target: str | None = None
    delay: float = 0.0


class Runner:
    def __init__(
        self,
        router: Router,
        journal: Journal,
        http: httpx.AsyncClient,
        settings: RunnerSettings | None = None,
        options: RouteOptions | None = None,
        rng: random.Random | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.router = router
        self.metrics = metrics or NULL_METRICS
        self.journal = journal
        self.http = http
        self.settings = settings or RunnerSettings()
        self.options = options or RouteOptions()
        self.rng = rng or random.Random()
        self.breakers: Breakers = router.breakers
        self.speeds: SpeedBook = router.speeds
        self._slots: dict[str, Capacity] = {}
        self.pacers = Pacers()
        self._overtaking: dict[str, Overtaking] = {}
        self._orphans: set[asyncio.Task[None]] = set()
        self._done = 0
        self._cached = 0
        self._outcomes: dict[str, Outcome] = {}
        self._failures: dict[str, list[str]] = {}
        self._progress: ProgressCallback | None = None
        self._total = 0
        self._in_flight = 0
        self.budget = Budget(self.settings.max_usd, self.settings.budget_margin)
        self.splits = Splits()
        times = PollTimes(
            self.settings.first_poll_s,
            self.settings.poll_min_s,
            self.settings.poll_max_s,
            self.settings.poll_margin_s,
        )
        self.schedule = PollSchedule(self.speeds, times, self.rng)
        self._deadline = math.inf
        self._started = time.monotonic()
        self._plan: Plan | None = None
        self._group: asyncio.TaskGroup | None = None
        #: Requests claimed by another live run of a shared journal, by id.
        self._waiting: dict[str, SpeechRequest] = {}
        self._waiter: asyncio.Task[None] | None = None

    # --- the run --------------------------------------------------------------------------

    async def run(
        self, requests: Sequence[SpeechRequest], progress: ProgressCallback | None = None
    ) -> RunResult:
        """Generate every request (each id once); per-request errors are in the outcomes."""
        unique = list({r.id: r for r in requests}.values())
        self._progress = progress
        self._total = len(unique)
        self._deadline = time.monotonic() + self.settings.deadline_s
        self._started = time.monotonic()
        self.metrics.watch_breakers(self._breaker_states)
        self.journal.lock_for_run()
        health = self.router.health
        await health.refresh(
            self.router.pairs(), self.http, self.settings.health_timeout_s, only_stale=True
        )
        plan = self._plan = self.router.plan(unique or [SpeechRequest(text="")], self.options)
        self.journal.record_requests(unique)
        pending = self._take_cached(unique, plan.quality)
        health.start(self.router.pairs(), self.http)
        try:
            await self._run_pending(pending, plan)
        finally:
            await health.stop()
            await self._stop_orphans()
        return RunResult(
            plan=plan,
            outcomes={r.id: self._outcomes[r.id] for r in unique},
            cost_usd=self.budget.committed,
            failures=self._failures,
            budget_stopped=self.budget.stopped,
        )

    def _breaker_states(self) -> dict[str, str]:
        """Read by the metrics server's thread at each scrape: plain reads, no awaits."""
        names = [target.name for target, _provider in self.router.pairs()]
        return {name: self.breakers.of(name).state.value for name in names}

    def _take_cached(self, unique: list[SpeechRequest], quality: str) -> list[SpeechRequest]:
        cached = self.journal.cached([r.id for r in unique], quality)
        pending = []
        for request in unique:
            stored = cached.get(request.id)
            if stored is None:
                pending.append(request)
                continue
            path = self.journal.audio_path(stored.audio_sha256)
            self._succeed(Outcome(request.id, path, stored.target, stored.quality, cached=True))
            self._emit("cached", request.id, stored.target)
        return pending

    async def _run_pending(self, pending: list[SpeechRequest], plan: Plan) -> None:
        self.journal.abandon_unsent()
        by_id = {r.id: r for r in pending}
        tasks = []
        for row in self.journal.adopt(plan.quality, list(by_id)):
            mine = [by_id.pop(rid) for rid in row.request_ids if rid in by_id]
            if mine:
                tasks.append(self._reattach(row, mine, plan))
        # Longest first: the run's tail is then made of short jobs (and batches hold texts of
        # similar length, which pad less on the GPU).
        rest = sorted(by_id.values(), key=lambda r: len(r.text), reverse=True)
        tasks += [self._batch(_Batch(part), plan) for part in self._batches(plan, rest)]
        # A task group: an error no batch can handle (the journal's disk is full) cancels the
        # other batches and surfaces once, instead of leaving them to die at shutdown.
        try:
            async with asyncio.TaskGroup() as group:
                self._group = group
                for task in tasks:
                    group.create_task(task)
        except BaseExceptionGroup as failed:
            raise failed.exceptions[0] from None
        finally:
            self._group = None

    # --- requests another run holds (a shared journal) ----------------------------------------

    def _leave_to_others(self, requests: Sequence[SpeechRequest], plan: Plan) -> None:
        """Requests another live run claimed: wait for its results (or for its lease to run
        out, and then take them over)."""
        for request in requests:
            self._waiting[request.id] = request
        if self._waiter is None or self._waiter.done():
            assert self._group is not None
            self._waiter = self._group.create_task(self._wait_for_others(plan))

    async def _wait_for_others(self, plan: Plan) -> None:
        """Poll the journal for what other runs hold: their results are this run's too (free
        here); requests whose holder died are re-attached (their jobs) or claimed and
        submitted (the rest)."""
        # The first look comes soon (what another run holds is often a job about to finish,
        # or done already), later ones back off to claim_poll_s.
        pause = min(0.05, self.settings.claim_poll_s)
        while self._waiting:
            await self._sleep(pause)
            if time.monotonic() >= self._deadline:
                waiting, self._waiting = list(self._waiting.values()), {}
                self._fail_all(waiting, "the run's deadline passed waiting for another run")
                return
            self._take_others_results(plan.quality)
            self._take_over(plan)
            pause = min(pause * 1.5, self.settings.claim_poll_s)

    def _take_others_results(self, quality: str) -> None:
        for rid, stored in self.journal.cached(list(self._waiting), quality).items():
            self._waiting.pop(rid, None)
            path = self.journal.audio_path(stored.audio_sha256)
            self._succeed(Outcome(rid, path, stored.target, stored.quality, cached=True))
            self._emit("cached", rid, stored.target, "made by another run")

    def _take_over(self, plan: Plan) -> None:
        assert self._group is not None
        for row in self.journal.adopt(plan.quality, list(self._waiting)):
            mine = [self._waiting.pop(rid) for rid in row.request_ids if rid in self._waiting]
            if mine:
                self._group.create_task(self._reattach(row, mine, plan))
        granted = self.journal.claim(list(self._waiting), plan.quality)
        free = [self._waiting.pop(rid) for rid in granted]
        for part in self._batches(plan, free) if free else []:
            self._group.create_task(self._batch(_Batch(part), plan))

    def _batches(self, plan: Plan, rest: list[SpeechRequest]) -> list[list[SpeechRequest]]:
        """Batches of `_batch_size`, except the last job slot's worth of (shortest) requests,
        which go alone: the run then ends on short jobs spread over every worker instead of
        a few batches that keep the last workers busy while the others idle."""
        size = self._batch_size(plan, len(rest))
        target = plan.first.target
        health = self.router.health.get(target.name)
        slots = in_flight_for(target, health)
        # One single per worker that can run it at once (one GPU runs one job at a time: more
        # singles there would only run one after another), and only in runs long enough that
        # every slot gets several batches before the tail.
        workers = min(slots, health.workers) if health is not None and health.workers else slots
        singles = workers if size > 1 and len(rest) > 2 * slots * size else 0
        cut = max(0, len(rest) - singles)
        head, tail = rest[:cut], rest[cut:]
        return [head[i : i + size] for i in range(0, len(head), size)] + [[r] for r in tail]

    def _batch_size(self, plan: Plan, pending: int) -> int:
        """Up to the target's `max_batch`, but small enough that every worker gets a job
        (larger batches would leave workers idle while a few do all the work), and whole
        rounds of jobs: 500 requests on 100 workers go as 100 jobs of 5, not 125 of 4."""
        target = plan.first.target
        health = self.router.health.get(target.name)
        workers = (health.workers if health is not None else None) or in_flight_for(target, health)
        return max(1, min(target.max_batch, math.ceil(pending / workers)))

    # --- one batch ------------------------------------------------------------------------

    async def _batch(self, batch: _Batch, plan: Plan) -> None:
        while batch.requests:
            try:
                choice = await self._choose(batch, plan)
                if batch.last_target == choice.target.name and batch.delay > 0:
                    await self._sleep(batch.delay)
                size = min(choice.target.max_batch, batch.max_batch or math.inf)
                part = batch.requests[: int(size)]
                await self._attempt(choice, part, batch)
            except _Attempt as exc:
                batch.delay = exc.delay
            except _GiveUp as exc:
                self._fail_all(batch.requests, str(exc))
                return
            except BudgetExceeded as exc:
                self.budget.stopped = True
                self._fail_all(batch.requests, str(exc))
                return

    async def _choose(self, batch: _Batch, plan: Plan) -> Choice:
        """The first candidate this batch may use now; waits while all are cooling down."""
        retries = self.settings.retry.max_retries
        while True:
            if time.monotonic() >= self._deadline:
                raise _GiveUp(f"the run's deadline ({self.settings.deadline_s:g} s) passed")
            eligible = [
                c
                for c in plan.candidates
                if batch.failures[c.target.name] <= retries
                and self.breakers.of(c.target.name).opens < self.settings.breaker_give_up
            ]
            if not eligible:
                raise _GiveUp(self._give_up_reason(batch, plan))
            for choice in eligible:
                if self._healthy(choice) and self.breakers.of(choice.target.name).available():
                    return choice
            cooling = [
                self.breakers.of(c.target.name)
                for c in eligible
                if not self.breakers.of(c.target.name).available()
            ]
            if not cooling:
                raise _GiveUp(self._give_up_reason(batch, plan))
            await self._sleep(max(0.05, min(b.reopens_in() for b in cooling)))

    def _healthy(self, choice: Choice) -> bool:
        health = self.router.health.get(choice.target.name)
        return health is None or health.ok

    def _give_up_reason(self, batch: _Batch, plan: Plan) -> str:
        tried = ", ".join(
            f"{c.target.name} ({batch.failures[c.target.name]} failures, "
            f"{self.breakers.of(c.target.name).describe()})"
            for c in plan.candidates
        )
        return f"every candidate failed: {tried}"

    def _slot(self, choice: Choice) -> Capacity:
        """The target's in-flight limiter, its limit following the latest health answer."""
        target = choice.target
        limit = in_flight_for(target, self.router.health.get(target.name))
        slot = self._slots.get(target.name)
        if slot is None:
            slot = self._slots[target.name] = Capacity(limit)
        elif slot.limit != limit:
            slot.resize(limit)
        return slot

    def _pacer(self, choice: Choice, call: str) -> Pacer:
        """The pacer of one call kind ("submit" or "poll") on the choice's target."""
        limits = choice.provider.info.limits
        limit = limits.submit_rate if call == "submit" else limits.poll_rate
        return self.pacers.of(choice.target.name, call, limit)

    async def _pace(self, pacer: Pacer) -> None:
        """Wait for this call's turn under the target's pace (published limits, 429s)."""
        while True:
            wait = pacer.reserve()
            if wait <= 0:
                return
            await self._sleep(wait)
            if not pacer.paused():
                return

    def _rate_limited(self, choice: Choice, call: str, exc: RateLimited) -> float:
        self.metrics.failure(choice.target.name, "rate_limited")
        wait = self._pacer(choice, call).rate_limited(exc.retry_after)
        self._emit("rate-limited", None, choice.target.name, f"{call}: waiting {wait:.1f} s")
        return wait

    async def _attempt(self, choice: Choice, part: list[SpeechRequest], batch: _Batch) -> None:
        target = choice.target
        breaker = self.breakers.of(target.name)
        slot = self._slot(choice)
        batch.last_target = target.name
        probe = False
        try:
            async with slot:
                # Checked again once the slot is ours: while this batch waited, other jobs may
                # have found the target down.
                probe = breaker.state is BreakerState.HALF_OPEN
                if not breaker.acquire():
                    raise _Attempt("circuit opened while waiting", blame=False)
                sent = time.monotonic()
                key, handle, reserved = await self._submit(choice, part, batch)
                self._in_flight += 1
                self.metrics.in_flight(target.name, 1)
                try:
                    status = await self._follow(choice, handle, key, part, (sent, time.monotonic()))
                except _Orphaned:
                    self._watch_later(choice, handle, key, part, reserved)
                    raise
                finally:
                    self._in_flight -= 1
                    self.metrics.in_flight(target.name, -1)
            # The provider's work is over: the slot goes to the next batch while this one
            # decodes and journals its audio. Yielding once lets that batch send its
            # submission first, so a burst of completions does not delay the next jobs.
            await asyncio.sleep(0)
            await self._finish(choice, key, handle, status, part, batch, reserved)
        except _Attempt as exc:
            self.metrics.retry(target.name, exc.kind)
            if exc.blame:
                self.metrics.failure(target.name, exc.kind if exc.kind in KINDS else "other")
                self._record_failure(target.name, str(exc))
                breaker.failure(str(exc))
                batch.failures[target.name] += 1
            raise
        finally:
            if probe:
                breaker.release()
        breaker.success()

    async def _submit(
        self, choice: Choice, part: list[SpeechRequest], batch: _Batch
    ) -> tuple[int, JobHandle, Hold]:
        target, provider = choice.target, choice.provider
        # One commit for the claim and the job's row (a shared journal pays a round trip per
        # commit; with SQLite there is no claim and this is the job's own commit).
        with self.journal.transaction():
            if self.journal.shared:
                self._claim(choice, part, batch)
            estimate = self.router.estimate(target, provider, part).usd
            reserved = self.budget.reserve(target.name, estimate)
            key = self.journal.begin_job(
                target.name, choice.quality, [r.id for r in part], estimate
            )
        try:
            handle = await self._submit_paced(choice, part)
        except Rejected as exc:
            self.journal.job_finished(key, jr.FAILED, actual_usd=0.0, error=str(exc))
            self.budget.release(reserved)
            self._rejected(part, batch, str(exc))
            self.metrics.failure(target.name, "rejected")
            raise _Attempt(f"rejected: {exc}", blame=False, kind="rejected") from None
        except asyncio.CancelledError:
            # Interrupted mid-submit: the provider may have the job. The row stays
            # `submitting`, so the next run knows this submission's fate is unknown.
            raise
        except Exception as exc:
            self.journal.job_finished(key, jr.FAILED, actual_usd=0.0, error=_describe(exc))
            self.budget.release(reserved)
            raise self._attempt_error(target.name, exc, batch) from None
        self.journal.job_submitted(key, _journaled(handle))
        self.metrics.job_submitted(target.name, len(part), estimate)
        self._emit("submitted", part[0].id, target.name, f"{len(part)} requests")
        return key, handle, reserved

    def _claim(self, choice: Choice, part: list[SpeechRequest], batch: _Batch) -> None:
        """Claim `part` in a shared journal right before submitting it; what another live run
        holds leaves this batch (`part` is trimmed in place) and is waited for instead."""
        granted = set(self.journal.claim([r.id for r in part], choice.quality))
        if len(granted) == len(part):
            return
        taken = [r for r in part if r.id not in granted]
        part[:] = [r for r in part if r.id in granted]
        batch.requests = [r for r in batch.requests if r.id not in {t.id for t in taken}]
        assert self._plan is not None
        # Most often another run made them meanwhile: take those now, wait for the rest.
        self._waiting.update((r.id, r) for r in taken)
        self._take_others_results(choice.quality)
        waiting = [r for r in taken if r.id in self._waiting]
        if waiting:
            self._leave_to_others(waiting, self._plan)
        if not part:
            raise _Attempt("claimed by another run", blame=False, kind="reattach")

    async def _submit_paced(self, choice: Choice, part: list[SpeechRequest]) -> JobHandle:
        """Submit at the target's pace; a 429 means "later", never "failed": the same
        submission waits its turn and goes again."""
        pacer = self._pacer(choice, "submit")
        while True:
            await self._pace(pacer)
            try:
                handle = await self._call(choice.provider.submit(choice.target, part, self.http))
            except RateLimited as exc:
                self._rate_limited(choice, "submit", exc)
                continue
            pacer.ok()
            return handle  # type: ignore[return-value]

    def _rejected(self, part: list[SpeechRequest], batch: _Batch, message: str) -> None:
        """A refusal is for good: split a batch to find the culprit, fail a single request."""
        if len(part) > 1:
            batch.max_batch = 1
            return
        if TOO_LONG in message and self._split(batch, part[0], message):
            return
        self._fail_all(part, f"refused by the provider: {message}")
        batch.requests = [r for r in batch.requests if r.id != part[0].id]

    def _split(self, batch: _Batch, request: SpeechRequest, why: str) -> bool:
        """Replace a request that is too long for one request by its parts (see `splits`)."""
        parts = self.splits.split(request)
        if parts is None:
            return False
        self.journal.record_requests(parts)
        batch.requests = [r for r in batch.requests if r.id != request.id] + parts
        self._emit("split", request.id, None, f"{len(parts)} parts: {why}")
        return True

    def _attempt_error(self, target: str, exc: BaseException, batch: _Batch) -> _Attempt:
        attempt = batch.failures[target]
        if isinstance(exc, Unavailable):
            self.breakers.of(target).trip(str(exc))
            return _Attempt(f"unavailable: {exc}", kind="unavailable")
        retry_after = exc.retry_after if isinstance(exc, TransientError) else None
        delay = retry_delay(attempt, retry_after, self.settings.retry, self.rng)
        return _Attempt(_describe(exc), delay, kind=kind_of(exc))

    async def _call(self, awaitable: object) -> object:
        """Await a provider call, but never past the run's deadline."""
        remaining = self._deadline - time.monotonic()
        if remaining <= 0:
            raise _GiveUp("the run's deadline passed")
        return await asyncio.wait_for(awaitable, remaining)  # type: ignore[arg-type]

    # --- following a job ------------------------------------------------------------------

    async def _follow(
        self,
        choice: Choice,
        handle: JobHandle,
        key: int,
        part: Sequence[SpeechRequest],
        submitted: tuple[float, float] | None = None,
    ) -> JobStatus:
        """Poll until the job finishes. The first poll goes near the predicted finish.

        `submitted` is when the submission was sent and when it returned. Predictions count
        from its return (the job surely exists by then, so a slow submission does not make the
        first poll early), unless the submission itself took half as long as the job should or
        more: a long-poll route (RunPod's /runsync) has then most likely brought the answer."""
        target = choice.target
        chars = sum(len(r.text) for r in part)
        first = self.schedule.first(target.name, chars)
        if submitted is None:  # a re-attached job: it was submitted at `submitted_at`
            started = time.monotonic() - max(0.0, time.time() - handle.submitted_at)
            next_at = started + first
        else:
            sent, started = submitted
            next_at = started if started - sent >= 0.5 * first else started + first
        speed = self.speeds.of(target.name)
        if handle.answered:
            # The answer came with the submission: nothing to wait for, and nothing to pilot.
            return await self._poll_loop(choice, handle, key, chars, started, started, False)
        blind = speed.predict(chars) is None
        # Before the target's first measurement, one job (the pilot) polls often, every 3 % of
        # its age; the others sleep until the pilot's measurement wakes them, with a slow
        # schedule of their own in case the pilot fails.
        pilot = blind and not speed.piloted
        if pilot:
            speed.piloted = True
            next_at = min(next_at, started + self.settings.pilot_first_s)
        elif blind:
            next_at = max(next_at, started + 3 * self.settings.first_poll_s)
        try:
            return await self._poll_loop(choice, handle, key, chars, started, next_at, pilot)
        finally:
            if pilot:
                speed.piloted = False

    async def _poll_loop(
        self,
        choice: Choice,
        handle: JobHandle,
        key: int,
        chars: int,
        started: float,
        next_at: float,
        pilot: bool,
    ) -> JobStatus:
        target, provider = choice.target, choice.provider
        first = self.schedule.first(target.name, chars)
        blind = self.speeds.of(target.name).predict(chars) is None
        pacer = self._pacer(choice, "poll")
        # An answered handle's poll makes no request: it must not spend the target's pace.
        paced = not handle.answered
        polls = errors = 0
        failing_since: float | None = None
        while True:
            if next_at >= self._deadline:
                await self._cancel(choice, handle, key, "the run's deadline passed")
                raise _GiveUp(f"the run's deadline ({self.settings.deadline_s:g} s) passed")
            woke_early = await self._wait_for_poll(target.name, next_at)
            if blind and woke_early:
                # A measurement arrived while this job waited blind: poll at its prediction.
                blind = False
                planned = started + self.schedule.first(target.name, chars)
                if planned > time.monotonic() + 0.001:
                    next_at = planned
                    continue
            if paced:
                await self._pace(pacer)
            try:
                status = await self._call(provider.poll(target, handle, self.http))
            except RateLimited as exc:
                next_at = time.monotonic() + self._rate_limited(choice, "poll", exc)
                continue
            except (JobLost, Rejected) as exc:
                self._job_over(target.name, key, handle, "lost", _describe(exc))
                raise _Attempt(_describe(exc), kind=kind_of(exc)) from None
            except ResultUnusable as exc:
                # Over, and nothing usable came of it: resubmit now, not after a backoff.
                self._job_over(target.name, key, handle, "failed", _describe(exc))
                raise _Attempt(_describe(exc), kind="unusable") from None
            except Unavailable as exc:
                # E.g. queued for minutes behind crash-looping workers: stop waiting, cancel
                # (a queued job costs nothing) and let the batch fail over.
                self.breakers.of(target.name).trip(str(exc))
                await self._cancel(choice, handle, key, str(exc))
                raise _Attempt(f"unavailable: {exc}", kind="unavailable") from None
            except (ProviderError, WireError, httpx.HTTPError, TimeoutError) as exc:
                errors += 1
                now = time.monotonic()
                failing_since = now if failing_since is None else failing_since
                predicted = self.speeds.of(target.name).predict(chars)
                if now - failing_since >= self.settings.liveness.dead_after(predicted):
                    raise self._orphan(choice, f"stopped answering: {_describe(exc)}") from None
                if errors > self.settings.max_poll_errors:
                    await self._cancel(choice, handle, key, f"polling kept failing: {exc}")
                    kind = kind_of(exc)
                    raise _Attempt(f"polling kept failing: {_describe(exc)}", kind=kind) from None
                retry_after = exc.retry_after if isinstance(exc, TransientError) else None
                next_at = now + max(
                    self.settings.poll_min_s,
                    retry_delay(errors, retry_after, self.settings.retry, self.rng),
                )
                continue
            assert isinstance(status, JobStatus)
            pacer.ok()
            errors, failing_since = 0, None
            if polls == 0 and not blind and paced:
                self.speeds.of(target.name).first_poll_was(
                    status.state.finished, self.settings.poll_margin_s, 0.25 * first
                )
            if status.state.finished:
                self._observe(target.name, chars, started, status)
                self._overtaken(target.name).finish(handle.submitted_at)
                return status
            if status.state is JobState.QUEUED:
                unstuck = await self._unstick(choice, handle, key, chars, started)
                if unstuck is not None:
                    return unstuck
            polls += 1
            next_at = self.schedule.next(
                target.name, chars, started, polls, time.monotonic(), pilot
            )

    def _overtaken(self, target: str) -> Overtaking:
        return self._overtaking.setdefault(target, Overtaking())

    async def _unstick(
        self, choice: Choice, handle: JobHandle, key: int, chars: int, started: float
    ) -> JobStatus | None:
        """A job queued far longer than its target needs while later jobs finish is stuck:
        cancel it (queued, it costs nothing) and resubmit. If the cancel loses the race and
        the job has finished after all, its status is returned and its result kept."""
        speed = self.speeds.of(choice.target.name)
        queued_s = time.monotonic() - started
        overtaken = self._overtaken(choice.target.name).after(handle.submitted_at)
        if not self.settings.liveness.stuck(
            queued_s, speed.queue_s, speed.predict(chars), overtaken
        ):
            return None
        with contextlib.suppress(Exception):
            await asyncio.wait_for(choice.provider.cancel(choice.target, handle, self.http), 10.0)
        with contextlib.suppress(Exception):
            status = await asyncio.wait_for(
                choice.provider.poll(choice.target, handle, self.http), 10.0
            )
            if isinstance(status, JobStatus) and status.state is JobState.COMPLETED:
                return status
        why = f"stuck: queued {queued_s:.0f} s while {overtaken} later jobs finished"
        self._job_over(choice.target.name, key, handle, "cancelled", f"cancelled: {why}")
        raise _Attempt(why, blame=False, kind="stuck")

    def _orphan(self, choice: Choice, why: str) -> _Orphaned:
        """The target stopped answering: its job fails over now and is watched for a late
        result in the background (see `_watch`)."""
        self.breakers.of(choice.target.name).trip(why)
        return _Orphaned(why, kind="orphaned")

    async def _wait_for_poll(self, target: str, when: float) -> bool:
        """Sleep until `when`; before the target's first measurement, wake early when it comes
        (and say so)."""
        speed = self.speeds.of(target)
        delay = when - time.monotonic()
        if delay <= 0:
            return False
        if speed.measured.is_set():
            await self._sleep(delay)
            return False
        try:
            await asyncio.wait_for(speed.measured.wait(), delay)
        except TimeoutError:
            return False
        return time.monotonic() < when

    def _observe(self, target: str, chars: int, started: float, status: JobStatus) -> None:
        if status.state is not JobState.COMPLETED:
            return
        wall = time.monotonic() - started
        queue_s = status.queue_ms / 1000 if status.queue_ms is not None else None
        exec_s = status.exec_ms / 1000 if status.exec_ms is not None else None
        if exec_s is None:
            exec_s = max(0.0, wall - (queue_s or 0.0))
        self.speeds.of(target).observe(chars, exec_s, queue_s)
        self.router.observe_cost(target, chars, status.exec_ms)

    async def _cancel(self, choice: Choice, handle: JobHandle, key: int, why: str) -> None:
        """Best effort: a job we give up on should stop costing money."""
        with contextlib.suppress(Exception):
            await asyncio.wait_for(choice.provider.cancel(choice.target, handle, self.http), 10.0)
        self._job_over(choice.target.name, key, handle, "cancelled", f"cancelled: {why}")

    def _job_over(self, target: str, key: int, handle: JobHandle, how: str, error: str) -> None:
        """A job ended without results (`how`, a metrics job state): journal and count it."""
        self.journal.job_finished(key, jr.FAILED, error=error)
        seconds = max(0.0, time.time() - handle.submitted_at)
        self.metrics.job_finished(target, how, actual_usd=None, seconds=seconds)

    # --- finishing a job ------------------------------------------------------------------

    async def _finish(
        self,
        choice: Choice,
        key: int,
        handle: JobHandle,
        status: JobStatus,
        part: list[SpeechRequest],
        batch: _Batch,
        reserved: Hold,
        also: frozenset[str] = frozenset(),
    ) -> None:
        actual = self._actual_cost(choice, status)
        self.budget.settle(choice.target.name, reserved, actual, status.state is JobState.COMPLETED)
        if status.state is not JobState.COMPLETED:
            self.journal.job_finished(
                key,
                jr.FAILED,
                actual_usd=actual,
                exec_ms=status.exec_ms,
                queue_ms=status.queue_ms,
                error=status.error or status.state.value,
            )
            seconds = max(0.0, time.time() - handle.submitted_at)
            self.metrics.job_finished(
                choice.target.name, "failed", actual_usd=actual, seconds=seconds
            )
            # The job is over: waiting would not change its answer, so resubmit at once (the
            # batch's retry count and the breaker still bound how often).
            message = f"job {status.state.value}: {status.error or 'no detail'}"
            raise _Attempt(message)
        kept, failed = await self._keep(choice, status, part, also)
        error = "; ".join(failed.values()) or None
        done = self._commit(choice, key, status, actual, kept, jr.COMPLETED, error, part)
        seconds = max(0.0, time.time() - handle.submitted_at)
        self.metrics.job_finished(
            choice.target.name, "completed", actual_usd=actual, seconds=seconds
        )
        batch.requests = [r for r in batch.requests if r.id not in done]
        split: set[str] = set()
        for request_id, error in failed.items():
            request = next((r for r in part if r.id == request_id), None)
            if TOO_LONG in error and request is not None and self._split(batch, request, error):
                split.add(request_id)
                continue
            batch.request_failures[request_id] += 1
            self._record_failure(choice.target.name, error)
            # A worker that gives the same error for the same request twice will give it
            # again (text too long for the voice, bad context audio): stop paying for it.
            recurs = error.startswith("worker error") and batch.last_errors.get(request_id) == error
            batch.last_errors[request_id] = error
            permanent = PERMANENT in error
            exhausted = batch.request_failures[request_id] > self.settings.retry.max_retries
            if permanent or recurs or exhausted:
                why = f"{error} (the same error twice: not retried)" if recurs else error
                self._fail_all([r for r in part if r.id == request_id], why)
                batch.requests = [r for r in batch.requests if r.id != request_id]
        failed = {rid: e for rid, e in failed.items() if rid not in split}
        if failed and not done and batch.requests:
            # Worker errors may be the worker's state: back off. Missing or unreadable
            # results are final answers: resubmit at once.
            worker = any(e.startswith("worker error") for e in failed.values())
            delay = self._backoff(choice, batch) if worker else 0.0
            raise _Attempt(
                next(iter(failed.values())), delay, kind="worker" if worker else "unusable"
            )

    def _backoff(self, choice: Choice, batch: _Batch) -> float:
        attempt = batch.failures[choice.target.name]
        return retry_delay(attempt, None, self.settings.retry, self.rng)

    async def _keep(
        self,
        choice: Choice,
        status: JobStatus,
        part: list[SpeechRequest],
        also: frozenset[str] = frozenset(),
    ) -> tuple[list[tuple[Any, str, int]], dict[str, str]]:
        """Decode the good results and put their audio in the store; return (result, sha,
        duration in ms) for each, and why each wanted id failed. Results for the ids in `also`
        (paid for, but not asked for by this run) are kept too, for the run that asks for them.
        """
        wanted = {r.id for r in part}
        by_id = {r.id: r for r in status.results if r.id in wanted}
        failed = {rid: "the job returned no result for it" for rid in wanted - set(by_id)}
        for rid, result in by_id.items():
            if result.error is not None:
                failed[rid] = f"worker error: {result.error}"
        good = [r for r in status.results if r.id in by_id and r.error is None]
        extra = [r for r in status.results if r.id in also - wanted and r.error is None]
        if not good:
            return [], failed
        audios, broken = await self._decode(choice, status, good + extra)
        failed.update({rid: why for rid, why in broken.items() if rid in wanted})
        keep = [(r, a) for r, a in zip(good + extra, audios, strict=True) if a is not None]

        # The rows are written by the caller, on the loop's thread, which owns the database
        # connection. Hashing and writing a few hundred KB takes less than handing them to a
        # worker thread; more would hold up the loop, so it goes to a thread.
        def put_all() -> list[str]:
            return [self.journal.put_audio(a) for _r, a in keep]

        size = sum(len(a.source_flac or b"") or 2 * a.frames for _r, a in keep)
        shas = put_all() if size <= _INLINE_STORE_BYTES else await asyncio.to_thread(put_all)
        return [(r, sha, a.duration_ms) for (r, a), sha in zip(keep, shas, strict=True)], failed

    def _commit(
        self,
        choice: Choice,
        key: int,
        status: JobStatus,
        actual: float | None,
        kept: list[tuple[Any, str, int]],
        state: str,
        error: str | None,
        part: list[SpeechRequest],
    ) -> set[str]:
        """Journal a job's results and its end in one commit, then tell the run about the
        results (only once they are durable); returns the ids of `part` that are done."""
        with self.journal.transaction():
            rows = [
                self.journal.record_result(
                    result.id, choice.quality, choice.target.name, key, sha, duration_ms
                )
                for result, sha, duration_ms in kept
            ]
            self.journal.job_finished(
                key,
                state,
                actual_usd=actual,
                exec_ms=status.exec_ms,
                queue_ms=status.queue_ms,
                error=error,
            )
        wanted = {r.id for r in part}
        done = set()
        for row in rows:
            if row.request_id not in wanted:
                continue
            path = self.journal.audio_path(row.audio_sha256)
            self._succeed(Outcome(row.request_id, path, choice.target.name, choice.quality))
            done.add(row.request_id)
            self._emit("completed", row.request_id, choice.target.name)
        return done

    async def _decode(
        self, choice: Choice, status: JobStatus, results: list[Any]
    ) -> tuple[list[Audio | None], dict[str, str]]:
        """Decode all results at once; if that fails, one by one, so that one bad result does
        not cost the good ones of its batch. Returns the audio (None where it failed) and why
        each failed result failed."""
        try:
            return await self._decode_all(choice, status, results), {}
        except _DecodeFailed as exc:
            if len(results) == 1:
                return [None], {results[0].id: str(exc)}
        audios: list[Audio | None] = []
        broken: dict[str, str] = {}
        for result in results:
            try:
                audios.extend(await self._decode_all(choice, status, [result]))
            except _DecodeFailed as exc:
                audios.append(None)
                broken[result.id] = str(exc)
        return audios, broken

    async def _decode_all(
        self, choice: Choice, status: JobStatus, results: list[Any]
    ) -> list[Audio]:
        try:
            decoded = await self._call(
                choice.provider.decode(
                    choice.target, attrs.evolve(status, results=results), self.http
                )
            )
        except (CsmOffloadError, httpx.HTTPError, TimeoutError) as exc:
            raise _DecodeFailed(f"decode failed: {_describe(exc)}") from None
        audios = list(decoded) if isinstance(decoded, list | tuple) else []
        if len(audios) != len(results) or not all(_sane(a) for a in audios):
            raise _DecodeFailed("decode returned wrong or unreadable audio")
        return audios

    # --- jobs whose target stopped answering --------------------------------------------------

    def _watch_later(
        self, choice: Choice, handle: JobHandle, key: int, part: list[SpeechRequest], hold: Hold
    ) -> None:
        task = asyncio.create_task(self._watch(choice, handle, key, part, hold))
        self._orphans.add(task)
        task.add_done_callback(self._orphans.discard)

    async def _watch(
        self, choice: Choice, handle: JobHandle, key: int, part: list[SpeechRequest], hold: Hold
    ) -> None:
        """Poll a job whose target stopped answering, slowly, while the run lasts: a result
        that arrives was paid for, so it is stored (and used if the copy has not finished).
        A job still unfinished when the run ends stays in the journal for the next run."""
        delay = self.settings.orphan_poll_s
        while True:
            await asyncio.sleep(delay)
            try:
                status = await asyncio.wait_for(
                    choice.provider.poll(choice.target, handle, self.http), 30.0
                )
            except (JobLost, Rejected, ResultUnusable) as exc:
                self.journal.job_finished(key, jr.FAILED, error=_describe(exc))
                self.budget.release(hold)
                return
            except Exception:
                delay = min(60.0, delay * 1.5)
                continue
            if not isinstance(status, JobStatus) or not status.state.finished:
                continue
            await self._keep_late(choice, handle, key, status, part, hold)
            return

    async def _keep_late(
        self,
        choice: Choice,
        handle: JobHandle,
        key: int,
        status: JobStatus,
        part: list[SpeechRequest],
        hold: Hold,
    ) -> None:
        actual = self._actual_cost(choice, status)
        self.budget.settle(choice.target.name, hold, actual, status.state is JobState.COMPLETED)
        kept: list[tuple[Any, str, int]] = []
        if status.state is JobState.COMPLETED:
            kept, _failed = await self._keep(choice, status, part, frozenset(handle.request_ids))
        wanted = {r.id for r in part}
        state = jr.COMPLETED if any(r.id in wanted for r, _sha, _ms in kept) else jr.FAILED
        error = None if state == jr.COMPLETED else (status.error or status.state.value)
        done = self._commit(choice, key, status, actual, kept, state, error, part)
        self._emit("late-result", part[0].id, choice.target.name, f"{len(done)} kept")

    async def _stop_orphans(self) -> None:
        for task in list(self._orphans):
            task.cancel()
        await asyncio.gather(*self._orphans, return_exceptions=True)

    # --- re-attaching jobs of a run that died -------------------------------------------------

    async def _reattach(self, row: JobRow, mine: list[SpeechRequest], plan: Plan) -> None:
        """Poll a job a dead run left in flight; resubmit only what it does not deliver."""
        choice = self._choice_for(row.target, plan)
        batch = _Batch(mine)
        if choice is None or row.handle is None:
            self.journal.job_finished(row.key, jr.ABANDONED, error="target no longer usable")
            await self._batch(batch, plan)
            return
        slot = self._slot(choice)
        self._emit("reattached", mine[0].id, row.target, f"job {row.handle.job_id}")
        part = [r for r in mine]
        try:
            async with slot:
                self._in_flight += 1
                self.metrics.in_flight(choice.target.name, 1)
                try:
                    status = await self._follow(choice, row.handle, row.key, part)
                except _Orphaned:
                    self._watch_later(choice, row.handle, row.key, part, NOTHING)
                    raise
                finally:
                    self._in_flight -= 1
                    self.metrics.in_flight(choice.target.name, -1)
            also = frozenset(row.request_ids)
            await self._finish(choice, row.key, row.handle, status, part, batch, NOTHING, also)
        except _Attempt as exc:
            self._record_failure(choice.target.name, str(exc))
            batch.failures[choice.target.name] += 1
        except _GiveUp as exc:
            self._fail_all(batch.requests, str(exc))
            return
        await self._batch(batch, plan)

    @staticmethod
    def _choice_for(name: str, plan: Plan) -> Choice | None:
        return next((c for c in plan.candidates if c.target.name == name), None)

    # --- money ----------------------------------------------------------------------------

    @staticmethod
    def _actual_cost(choice: Choice, status: JobStatus) -> float | None:
        if status.exec_ms is None:
            return None
        price = choice.target.price_per_second(choice.provider.info)
        if price is None:
            return None
        return status.exec_ms / 1000 * price

    # --- bookkeeping ----------------------------------------------------------------------

    def _fail_all(self, requests: Sequence[SpeechRequest], error: str) -> None:
        error = scrub(error)
        if self.journal.shared and self._plan is not None and requests:
            self.journal.release([r.id for r in requests], self._plan.quality)
        for request in requests:
            # A part of a split request fails the request the user asked for.
            request_id = self.splits.root_of(request.id)
            if request_id not in self._outcomes:
                self._outcomes[request_id] = Outcome(request_id, error=error)
                self._emit("failed", request_id, None, error)

    def _succeed(self, outcome: Outcome) -> None:
        if self.splits.parent_of(outcome.request_id) is not None:
            self._part_done(outcome)
            return
        known = self._outcomes.get(outcome.request_id)
        if known is not None and known.ok:
            return  # a late copy of work already done (see `_watch`)
        self._outcomes[outcome.request_id] = outcome
        self._done += 1
        self._cached += outcome.cached
        seconds = time.monotonic() - self._started
        self.metrics.chunk_done(outcome.target or "", seconds, outcome.cached)

    def _part_done(self, outcome: Outcome) -> None:
        """A part of a split request is in; when all are, their audio joined is the parent's
        result, journaled like any other (so a rerun finds it)."""
        parent = self.splits.parent_of(outcome.request_id)
        assert parent is not None
        outcomes = self.splits.finished(outcome.request_id, outcome)
        if outcomes is None or parent in self._outcomes:
            return
        parts = [o for o in outcomes if isinstance(o, Outcome)]
        audios = [o.audio for o in parts]
        if any(a is None for a in audios):
            return
        audio = join_audio([a for a in audios if a is not None])
        sha = self.journal.put_audio(audio)
        quality, target = parts[0].quality or "csm", parts[0].target or ""
        stored = self.journal.record_result(parent, quality, target, None, sha, audio.duration_ms)
        path = self.journal.audio_path(stored.audio_sha256)
        self._succeed(Outcome(parent, path, target, quality))
        self._emit("completed", parent, target, f"joined from {len(parts)} parts")

    def _record_failure(self, target: str, message: str) -> None:
        self._failures.setdefault(target, []).append(scrub(message))

    def _emit(
        self, event: str, request_id: str | None, target: str | None, detail: str = ""
    ) -> None:
        if self._progress is None:
            return
        self._progress(
            Progress(
                event=event,
                total=self._total,
                done=self._done,
                failed=len(self._outcomes) - self._done,
                cached=self._cached,
                in_flight=self._in_flight,
                cost_usd=self.budget.committed,
                request_id=request_id,
                target=target,
                detail=scrub(detail),
            )
        )

    async def _sleep(self, seconds: float) -> None:
        if seconds > 0:
            await asyncio.sleep(min(seconds, max(0.0, self._deadline - time.monotonic())))


#: Bytes of one `JobHandle.extra` value kept in the journal for an answered handle.
_ANSWERED_EXTRA_BYTES = 4096


def _journaled(handle: JobHandle) -> JobHandle:
    """The handle as the journal keeps it. An answered handle carries the job's whole answer
    (audio included), which its results are stored from a moment later: journaling it too
    doubled the journal's work per job. A run that dies in between re-attaches by job id."""
    if not handle.answered:
        return handle
    slim = {k: v for k, v in handle.extra.items() if len(v) <= _ANSWERED_EXTRA_BYTES}
    return attrs.evolve(handle, extra=slim, answered=False)


def _sane(audio: object) -> bool:
    return isinstance(audio, Audio) and audio.frames > 0 and audio.is_finite()


def _describe(exc: BaseException) -> str:
    text = scrub(str(exc).strip())
    name = type(exc).__name__
    return f"{name}: {text}" if text else name
