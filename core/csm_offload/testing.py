"""The conformance kit: checks a provider plugin (ours or a third party's) runs against itself.

    from csm_offload.testing import ProviderConformance

    def test_my_plugin_conforms():
        ProviderConformance(my_plugin, my_target).assert_ok()

Checks, each reported as a `Failure` (never a skipped check):
- hooks: the plugin registers with pluggy, implements every provider hook, and each hook is
  `async def` or plain `def` as its spec is;
- info: `provider_info()` is sane (kind, dated price table, limits, an attrs settings class);
- costs: `estimate_cost` is pure, finite, and never falls when text or batch grows (hypothesis);
  a remote provider never prices a GPU missing from its table below its dearest GPU (an unknown
  GPU at $0 would be the router's first choice);
- errors: with every HTTP answer replaced by a fault (429 with Retry-After in both forms, 5xx,
  401/403, 400, 404, malformed JSON, connection reset, timeouts) the hooks raise the core's
  typed errors, never a raw exception, never the secret, and never retry by themselves;
- secrets: with a server that echoes every request header (Authorization, any key header) and
  the URL into its bodies, error bodies and health answers, no secret from the settings appears
  in a raised error (its chain included), a returned `Health.detail`, `JobStatus.error`,
  `JobHandle` or `CostEstimate.basis`;
- round trip (when `live=True`, the target pointing at a real or simulated worker):
  health → submit → poll → decode gives one `Audio` per request, of plausible length.

hypothesis is imported only when the cost check runs, so importing this module is cheap.
"""

from __future__ import annotations

import asyncio
import email.utils
import inspect
import math
import re
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Any

import attrs
import httpx
import numpy as np

from . import hookspecs
from .audio import Audio
from .errors import CsmOffloadError, JobLost, ProviderError, Rejected, TransientError, Unavailable
from .model import CostEstimate, Health, JobHandle, JobState, JobStatus, SpeechRequest
from .plugins import PROVIDER_HOOKS, Plugins, Provider
from .secret import Secret
from .target import ProviderInfo, Target

_KIND = re.compile(r"[a-z][a-z0-9_]*")
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
#: A GPU no price table has: what does the provider charge for it?
UNKNOWN_GPU = "conformance-unknown-gpu"
#: Headers a client sends anyway; the echo lists the others first, where a short excerpt of the
#: body (as error messages quote) still shows them.
_ORDINARY_HEADERS = frozenset(
    {"host", "accept", "accept-encoding", "connection", "user-agent", "content-length"}
)


@attrs.frozen
class Failure:
    """One check that did not hold: which check, and what was seen."""

    check: str
    message: str

    def __str__(self) -> str:
        return f"[{self.check}] {self.message}"


@attrs.frozen
class FaultCase:
    """An HTTP misbehaviour and the typed error each hook must answer it with.

    `respond` builds the answer to every request (or raises an httpx error); `expect` maps a
    hook name to the error class it must raise. Health may instead return a not-ok `Health`;
    cancel may return None where `expect` says None."""

    name: str
    respond: Callable[[httpx.Request], httpx.Response]
    expect: dict[str, type[Exception] | None]
    retry_after: tuple[float, float] | None = None


def _answer(status: int, body: bytes = b'{"error": "injected"}', **headers: str) -> Any:
    def respond(_request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, content=body, headers=headers)

    return respond


def _raise(error: type[httpx.HTTPError], message: str) -> Any:
    def respond(request: httpx.Request) -> httpx.Response:
        raise error(message, request=request)

    return respond


def _retry_at(seconds: float) -> Any:
    def respond(_request: httpx.Request) -> httpx.Response:
        when = email.utils.formatdate(time.time() + seconds, usegmt=True)
        return httpx.Response(429, content=b"{}", headers={"Retry-After": when})

    return respond


def default_fault_cases() -> list[FaultCase]:
    """The faults every HTTP-speaking provider must map (see the module docstring)."""
    transient = {"submit": TransientError, "poll": TransientError}
    return [
        FaultCase("429 Retry-After: 7", _answer(429, **{"Retry-After": "7"}), transient, (7, 7)),
        FaultCase("429 Retry-After: HTTP-date", _retry_at(30), transient, (26, 31)),
        FaultCase("500", _answer(500), transient),
        FaultCase("502", _answer(502, b"<html>bad gateway</html>"), transient),
        FaultCase("503", _answer(503), transient),
        FaultCase("connection reset", _raise(httpx.ReadError, "connection reset"), transient),
        FaultCase("connection refused", _raise(httpx.ConnectError, "refused"), transient),
        FaultCase("read timeout", _raise(httpx.ReadTimeout, "timed out"), transient),
        FaultCase("malformed JSON", _answer(200, b'{"id": "x", "stat'), transient),
        FaultCase("401", _answer(401), {"submit": Unavailable, "poll": Unavailable}),
        FaultCase("403", _answer(403), {"submit": Unavailable, "poll": Unavailable}),
        FaultCase("400", _answer(400, b'{"error": "bad input"}'), {"submit": Rejected}),
        FaultCase("404", _answer(404), {"poll": JobLost, "cancel": None}),
    ]


def _echo(status: int, state: str) -> Any:
    def respond(request: httpx.Request) -> httpx.Response:
        headers = sorted(
            request.headers.items(), key=lambda item: item[0].lower() in _ORDINARY_HEADERS
        )
        said = "; ".join(f"{name}: {value}" for name, value in headers)
        text = f"you sent {said} to {request.url}"
        body = {
            "error": text,
            "message": text,
            "detail": text,
            "status": state,
            "state": state,
            "headers": dict(headers),
            "url": str(request.url),
        }
        extra = {"Retry-After": "1"} if status == 429 else {}
        return httpx.Response(status, json=body, headers=extra)

    return respond


def echo_cases() -> list[FaultCase]:
    """Answers that echo the request (its headers, the key among them, and its URL) into the
    body, as debugging proxies and some APIs' error pages do: success bodies that look like a
    failed job (`status`/`state` in the common spellings, with `error`, `message` and `detail`
    carrying the echo) and error bodies. Only leaks (and raw exceptions) are judged here: the
    status mapping is the `errors` check's."""
    failed = [
        FaultCase(f"echo 200, state {state!r}", _echo(200, state), {})
        for state in ("failed", "FAILED", "error")
    ]
    statuses = (400, 401, 403, 404, 409, 422, 429, 500, 502, 503)
    return failed + [
        FaultCase(f"echo {status}", _echo(status, "failed"), {}) for status in statuses
    ]


def _secrets(value: Any, depth: int = 0) -> Iterator[str]:
    """Every secret value reachable from a settings object (attrs fields, mappings, lists)."""
    if depth > 6:
        return
    if isinstance(value, Secret):
        if value.reveal():
            yield value.reveal()
    elif attrs.has(type(value)):
        for field in attrs.fields(type(value)):
            yield from _secrets(getattr(value, field.name), depth + 1)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _secrets(item, depth + 1)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _secrets(item, depth + 1)


class ProviderConformance:
    """Runs the conformance checks for one provider plugin and one target of its kind.

    - `plugin`: the plugin module or object (what its entry point loads);
    - `target`: a `Target` whose settings are the plugin's settings type;
    - `live`: also run the round trip against the target (a real or simulated worker);
    - `http_surface`: run the error-mapping checks (False for providers that make no HTTP
      calls, such as an in-process engine);
    - `fault_cases`: replaces `default_fault_cases()`;
    - `echo_cases`: replaces `echo_cases()`, the answers of the secrets check ([] skips it);
    - `handle_factory`: builds the `JobHandle` polled in the error checks (default: a handle
      with job id "conformance-job" and no extras);
    - `max_requests_per_call`: more requests than this in one hook call under a fault means
      the plugin retries by itself, which is the runner's job."""

    def __init__(
        self,
        plugin: Any,
        target: Target,
        *,
        live: bool = False,
        http_surface: bool = True,
        fault_cases: Sequence[FaultCase] | None = None,
        echo_cases: Sequence[FaultCase] | None = None,
        handle_factory: Callable[[Target, Sequence[SpeechRequest]], JobHandle] | None = None,
        sample_text: str = "Hello from the csm-offload conformance kit.",
        max_audio_length_ms: int = 10_000,
        timeout_s: float = 60.0,
        poll_interval_s: float = 0.05,
        max_examples: int = 60,
        max_requests_per_call: int = 2,
    ) -> None:
        self.plugin = plugin
        self.target = target
        self.live = live
        self.http_surface = http_surface
        self.fault_cases = list(fault_cases) if fault_cases is not None else None
        self.echo_cases = list(echo_cases) if echo_cases is not None else None
        self.handle_factory = handle_factory or _default_handle
        self.sample_text = sample_text
        self.max_audio_length_ms = max_audio_length_ms
        self.timeout_s = timeout_s
        self.poll_interval_s = poll_interval_s
        self.max_examples = max_examples
        self.max_requests_per_call = max_requests_per_call
        self.secrets = tuple(_secrets(target.settings))

    # --- entry points -----------------------------------------------------------------------

    def run(self) -> list[Failure]:
        """Every check; an empty list means the plugin conforms. Not from inside a running
        event loop: there, `await run_async()`."""
        return asyncio.run(self.run_async())

    async def run_async(self) -> list[Failure]:
        """Every check, from inside a running event loop."""
        plugins = Plugins()
        name = f"conformance-{id(self.plugin)}"
        try:
            registered = plugins.register(self.plugin, name, source="conformance kit")
            failures = self.check_hooks(plugins, registered)
            provider = next(iter(plugins.providers.values()), None) if registered else None
            info = self._info(failures)
            if info is not None:
                failures += self.check_info(info)
            if provider is None:
                return failures
            failures += self.check_costs(provider)
            failures += await self._async_checks(provider)
            return failures
        finally:
            plugins.unregister(name)

    def assert_ok(self) -> None:
        """For pytest: fail with every finding listed, one a line."""
        failures = self.run()
        if failures:
            lines = "\n".join(f"  {failure}" for failure in failures)
            raise AssertionError(f"{len(failures)} conformance failure(s):\n{lines}")

    async def _async_checks(self, provider: Provider) -> list[Failure]:
        failures: list[Failure] = []
        if self.http_surface:
            failures += await self.check_error_mapping(provider)
            failures += await self.check_secrets(provider)
        if self.live:
            failures += await self.check_round_trip(provider)
        return failures

    # --- hooks and info ---------------------------------------------------------------------

    def check_hooks(self, plugins: Plugins, registered: bool) -> list[Failure]:
        if not registered:
            errors = "; ".join(e.error for e in plugins.errors) or "unknown reason"
            return [Failure("hooks", f"the plugin does not register: {errors}")]
        providers = list(plugins.providers.values())
        if len(providers) != 1:
            return [Failure("hooks", "the plugin must implement provider_info() once")]
        failures = [
            Failure("hooks", f"missing provider hook {hook}") for hook in providers[0].missing
        ]
        for hook in PROVIDER_HOOKS:
            function = getattr(self.plugin, hook, None)
            if function is None:
                continue
            wants_async = inspect.iscoroutinefunction(getattr(hookspecs, hook))
            if inspect.iscoroutinefunction(function) != wants_async:
                kind = "async def" if wants_async else "a plain def"
                failures.append(Failure("hooks", f"{hook} must be {kind}"))
        return failures

    def _info(self, failures: list[Failure]) -> ProviderInfo | None:
        function = getattr(self.plugin, "provider_info", None)
        if function is None:
            failures.append(Failure("info", "no provider_info() hook"))
            return None
        try:
            info = function()
        except Exception as exc:
            failures.append(Failure("info", f"provider_info() raised {type(exc).__name__}"))
            return None
        if not isinstance(info, ProviderInfo):
            failures.append(Failure("info", "provider_info() must return a ProviderInfo"))
            return None
        return info

    def check_info(self, info: ProviderInfo) -> list[Failure]:
        found: list[Failure] = []

        def fail(message: str) -> None:
            found.append(Failure("info", message))

        if not _KIND.fullmatch(info.kind):
            fail(f"kind {info.kind!r} must be lower_snake_case")
        if self.target.kind != info.kind:
            fail(f"the target's kind {self.target.kind!r} is not {info.kind!r}")
        if not attrs.has(info.settings_type):
            fail("settings_type must be an attrs class")
        elif not isinstance(self.target.settings, info.settings_type):
            fail(f"the target's settings are not a {info.settings_type.__name__}")
        if not _DATE.fullmatch(info.prices.date):
            fail(f"price table date {info.prices.date!r} must be YYYY-MM-DD")
        elif info.prices.date > time.strftime("%Y-%m-%d", time.gmtime(time.time() + 86_400)):
            fail(f"price table date {info.prices.date} is in the future")
        for gpu, price in info.prices.usd_per_second.items():
            if not (isinstance(price, int | float) and math.isfinite(price) and price >= 0):
                fail(f"price of {gpu!r} must be a finite number >= 0, got {price!r}")
        table = info.prices.usd_per_second
        if info.remote and table and info.default_gpu is not None and info.default_gpu not in table:
            fail(f"default_gpu {info.default_gpu!r} is not in the price table")
        limits = info.limits
        if limits.max_batch < 1 or limits.max_text_chars < 1:
            fail("limits.max_batch and limits.max_text_chars must be >= 1")
        for name in ("max_request_bytes", "max_response_bytes", "result_ttl_s"):
            value = getattr(limits, name)
            if value is not None and not value > 0:
                fail(f"limits.{name} must be None or > 0, got {value!r}")
        return found

    # --- costs ------------------------------------------------------------------------------

    def check_costs(self, provider: Provider) -> list[Failure]:
        from hypothesis import HealthCheck, given, settings
        from hypothesis import strategies as st

        found: list[Failure] = []
        limit = max(1, min(provider.info.limits.max_text_chars, 2_000))
        texts = st.text(min_size=0, max_size=limit // 2)

        def estimate(batch: list[SpeechRequest]) -> CostEstimate:
            result = provider.estimate_cost(self.target, batch)
            problem = _estimate_problem(result, self.target.name)
            if problem:
                raise AssertionError(problem)
            again = provider.estimate_cost(self.target, batch)
            if again != result:
                raise AssertionError("estimate_cost is not pure: two calls disagree")
            return result

        @settings(
            max_examples=self.max_examples,
            deadline=None,
            database=None,
            report_multiple_bugs=False,
            suppress_health_check=list(HealthCheck),
        )
        @given(texts, texts, st.lists(texts, min_size=0, max_size=3))
        def monotonic(head: str, tail: str, others: list[str]) -> None:
            short = estimate([SpeechRequest(head)])
            long = estimate([SpeechRequest(head + tail)])
            if long.usd < short.usd or long.gpu_seconds < short.gpu_seconds:
                raise AssertionError(
                    f"longer text costs less: {len(head)} chars ${short.usd}, "
                    f"{len(head + tail)} chars ${long.usd}"
                )
            batch = [SpeechRequest(text, seed=i) for i, text in enumerate(others)]
            batch = batch[: max(0, provider.info.limits.max_batch - 1)]
            if batch:
                smaller = estimate(batch)
                larger = estimate([*batch, SpeechRequest(head, seed=len(batch))])
                if larger.usd < smaller.usd:
                    raise AssertionError("adding a request to a batch lowered its cost")

        try:
            monotonic()
        except AssertionError as exc:
            notes = " ".join(getattr(exc, "__notes__", []))
            found.append(Failure("costs", f"{exc} {notes}".strip()))
        except Exception as exc:
            found.append(Failure("costs", f"estimate_cost raised {type(exc).__name__}: {exc}"))
        return found + self.check_unknown_gpu(provider) + self._check_basis(provider)

    def check_unknown_gpu(self, provider: Provider) -> list[Failure]:
        """A remote provider's GPU missing from its table, with no `usd_per_second` on the
        target, costs at least what its dearest GPU does, or is refused with a typed error (the
        router then says why). Priced at $0 it would be the router's first choice."""
        table = dict(provider.info.prices.usd_per_second)
        if not provider.info.remote or not table:
            return []
        batch = [SpeechRequest(self.sample_text)]
        unknown = attrs.evolve(self.target, gpu=UNKNOWN_GPU, usd_per_second=None)
        where = f"a GPU missing from the price table ({UNKNOWN_GPU!r}, no usd_per_second)"
        try:
            cost = provider.estimate_cost(unknown, batch)
        except CsmOffloadError:
            return []  # refused, with a message naming the fix: never chosen, never free
        except Exception as exc:
            message = f"{where}: estimate_cost raised {type(exc).__name__}, not a typed error"
            return [Failure("costs", message)]
        problem = _estimate_problem(cost, self.target.name)
        if problem is not None:
            return [Failure("costs", f"{where}: {problem}")]
        known = []
        for gpu in table:
            try:
                known.append(provider.estimate_cost(attrs.evolve(unknown, gpu=gpu), batch).usd)
            except Exception:
                continue  # a table GPU that fails is the other checks' finding
        dearest = max(known, default=0.0)
        if cost.usd < dearest or (cost.usd <= 0 < max(table.values())):
            message = (
                f"{where} is priced at ${cost.usd:.6g}, below the dearest GPU's ${dearest:.6g}: "
                "the router would choose it for being cheap; price it as the dearest GPU or "
                "raise a typed error that says to set usd_per_second"
            )
            return [Failure("costs", message)]
        return []

    def _check_basis(self, provider: Provider) -> list[Failure]:
        targets = [self.target, attrs.evolve(self.target, gpu=UNKNOWN_GPU, usd_per_second=None)]
        found = []
        for target in targets:
            try:
                cost = provider.estimate_cost(target, [SpeechRequest(self.sample_text)])
            except Exception as exc:
                cost = exc
            found += [Failure("secrets", f"estimate_cost: {p}") for p in self._leaks(cost)]
        return found

    # --- error mapping ----------------------------------------------------------------------

    async def check_error_mapping(self, provider: Provider) -> list[Failure]:
        found: list[Failure] = []
        batch = [SpeechRequest(self.sample_text, max_audio_length_ms=self.max_audio_length_ms)]
        handle = self.handle_factory(self.target, batch)
        for case in self.fault_cases if self.fault_cases is not None else default_fault_cases():
            found += await self._check_case(provider, case, batch, handle)
        return found

    async def _check_case(
        self,
        provider: Provider,
        case: FaultCase,
        batch: list[SpeechRequest],
        handle: JobHandle,
    ) -> list[Failure]:
        found: list[Failure] = []
        seen: list[httpx.Request] = []

        def respond(request: httpx.Request) -> httpx.Response:
            seen.append(request)
            return case.respond(request)

        transport = httpx.MockTransport(respond)
        async with httpx.AsyncClient(transport=transport, timeout=5.0) as http:
            for hook, call in self._calls(provider, batch, handle).items():
                seen.clear()
                outcome = await _outcome(call(http))
                where = f"{case.name}: {hook}"
                found += self._judge(where, hook, case, outcome)
                found += self._judge_requests(where, seen)
        return found

    def _calls(
        self, provider: Provider, batch: list[SpeechRequest], handle: JobHandle
    ) -> dict[str, Callable[[httpx.AsyncClient], Awaitable[Any]]]:
        return {
            "submit": lambda http: provider.submit(self.target, batch, http),
            "poll": lambda http: provider.poll(self.target, handle, http),
            "health": lambda http: provider.health(self.target, http),
            "cancel": lambda http: provider.cancel(self.target, handle, http),
        }

    # --- secrets ----------------------------------------------------------------------------

    async def check_secrets(self, provider: Provider) -> list[Failure]:
        """Every hook against a server that echoes the request back: the key must not come
        out of the plugin in anything it raises or returns."""
        # One line per answer and finding, naming every hook it holds for: an unscrubbed
        # excerpt of the body usually leaks from all four at once.
        found: dict[tuple[str, str, str], list[str]] = {}
        batch = [SpeechRequest(self.sample_text, max_audio_length_ms=self.max_audio_length_ms)]
        handle = self.handle_factory(self.target, batch)
        for case in self.echo_cases if self.echo_cases is not None else echo_cases():
            transport = httpx.MockTransport(case.respond)
            async with httpx.AsyncClient(transport=transport, timeout=5.0) as http:
                for hook, call in self._calls(provider, batch, handle).items():
                    outcome = await _outcome(call(http))
                    for problem in self._leaks(outcome):
                        found.setdefault(("secrets", case.name, problem), []).append(hook)
                    if isinstance(outcome, BaseException) and not isinstance(
                        outcome, ProviderError
                    ):
                        problem = f"raised {type(outcome).__name__}, not a typed ProviderError"
                        found.setdefault(("errors", case.name, problem), []).append(hook)
        return [
            Failure(check, f"{case}: {', '.join(hooks)}: {problem}")
            for (check, case, problem), hooks in found.items()
        ]

    def _judge(self, where: str, hook: str, case: FaultCase, outcome: Any) -> list[Failure]:
        found = [Failure("errors", f"{where}: {p}") for p in self._leaks(outcome)]
        if isinstance(outcome, BaseException) and not isinstance(outcome, ProviderError):
            message = f"{where}: raised {type(outcome).__name__}, not a typed ProviderError"
            return [*found, Failure("errors", message)]
        if hook == "health":
            if isinstance(outcome, Health) and outcome.ok:
                found.append(Failure("errors", f"{where}: reported ok under a fault"))
            elif not isinstance(outcome, Health | ProviderError):
                found.append(Failure("errors", f"{where}: returned {type(outcome).__name__}"))
            return found
        if hook not in case.expect:
            if not isinstance(outcome, ProviderError) and hook != "cancel":
                found.append(Failure("errors", f"{where}: returned instead of raising"))
            return found
        expected = case.expect[hook]
        if expected is None:
            if outcome is not None:
                found.append(Failure("errors", f"{where}: expected None, got {outcome!r}"))
            return found
        if not isinstance(outcome, expected):
            got = type(outcome).__name__ if isinstance(outcome, BaseException) else "no error"
            found.append(Failure("errors", f"{where}: expected {expected.__name__}, got {got}"))
        elif case.retry_after is not None and isinstance(outcome, TransientError):
            low, high = case.retry_after
            if outcome.retry_after is None or not low <= outcome.retry_after <= high:
                message = f"retry_after {outcome.retry_after!r}, expected {low}..{high}"
                found.append(Failure("errors", f"{where}: {message}"))
        return found

    def _leaks(self, outcome: Any) -> list[str]:
        """What of `outcome` (an error, with its chain, or a returned value) holds a secret."""
        if not self.secrets or outcome is None:
            return []
        if isinstance(outcome, BaseException):
            if any(secret in _error_text(outcome) for secret in self.secrets):
                return ["the error message contains a secret from the settings"]
            return []
        for name in ("detail", "error", "basis"):
            value = getattr(outcome, name, None)
            if isinstance(value, str) and any(secret in value for secret in self.secrets):
                return [f"{type(outcome).__name__}.{name} contains a secret from the settings"]
        if any(secret in repr(outcome) for secret in self.secrets):
            return [f"the returned {type(outcome).__name__} contains a secret from the settings"]
        return []

    def _judge_requests(self, where: str, seen: list[httpx.Request]) -> list[Failure]:
        found = []
        if len(seen) > self.max_requests_per_call:
            found.append(
                Failure(
                    "errors",
                    f"{where}: {len(seen)} requests in one call; plugins must not retry "
                    "(the runner does)",
                )
            )
        for request in seen:
            if any(secret in str(request.url) for secret in self.secrets):
                found.append(Failure("errors", f"{where}: a secret is in a request URL"))
        return found

    # --- round trip -------------------------------------------------------------------------

    async def check_round_trip(self, provider: Provider) -> list[Failure]:
        texts = (self.sample_text, self.sample_text[: max(1, len(self.sample_text) // 3)])
        count = 2 if provider.info.limits.max_batch >= 2 else 1
        batch = [
            SpeechRequest(text, max_audio_length_ms=self.max_audio_length_ms)
            for text in texts[:count]
        ]
        try:
            async with httpx.AsyncClient(timeout=self.timeout_s) as http:
                return await asyncio.wait_for(
                    self._round_trip(provider, batch, http), self.timeout_s
                )
        except TimeoutError:
            return [Failure("round trip", f"did not finish within {self.timeout_s} s")]
        except Exception as exc:
            return [Failure("round trip", f"raised {type(exc).__name__}: {exc}")]

    async def _round_trip(
        self, provider: Provider, batch: list[SpeechRequest], http: httpx.AsyncClient
    ) -> list[Failure]:
        found: list[Failure] = []
        health = await provider.health(self.target, http)
        if not isinstance(health, Health) or not health.ok:
            found.append(Failure("round trip", f"health is not ok: {health!r}"))
        found += [Failure("secrets", f"health: {p}") for p in self._leaks(health)]
        handle = await provider.submit(self.target, batch, http)
        found += [Failure("secrets", f"submit: {p}") for p in self._leaks(handle)]
        if not isinstance(handle, JobHandle):
            return [*found, Failure("round trip", f"submit returned {type(handle).__name__}")]
        ids = tuple(r.id for r in batch)
        if handle.target != self.target.name or handle.request_ids != ids:
            found.append(Failure("round trip", "the handle names another target or requests"))
        status = await provider.poll(self.target, handle, http)
        while isinstance(status, JobStatus) and not status.state.finished:
            await asyncio.sleep(self.poll_interval_s)
            status = await provider.poll(self.target, handle, http)
        found += [Failure("secrets", f"poll: {p}") for p in self._leaks(status)]
        if not isinstance(status, JobStatus) or status.state is not JobState.COMPLETED:
            return [*found, Failure("round trip", f"the job did not complete: {status!r}")]
        if tuple(r.id for r in status.results) != ids:
            found.append(Failure("round trip", "results are not one per request, in order"))
        audios = await provider.decode(self.target, status, http)
        found += self._judge_audio(audios, batch)
        await provider.cancel(self.target, handle, http)  # finished: must not be an error
        return found

    def _judge_audio(self, audios: Any, batch: list[SpeechRequest]) -> list[Failure]:
        if not isinstance(audios, list) or len(audios) != len(batch):
            return [Failure("round trip", f"decode must return {len(batch)} Audio in a list")]
        found = []
        for request, audio in zip(batch, audios, strict=True):
            if not isinstance(audio, Audio):
                found.append(Failure("round trip", f"decode gave {type(audio).__name__}"))
                continue
            longest = request.max_audio_length_ms / 1000 + 0.5
            if not 0 < audio.duration <= longest:
                found.append(Failure("round trip", f"implausible duration {audio.duration:.3f} s"))
            if audio.frames and not _finite(audio):
                found.append(Failure("round trip", "audio has NaN or infinite samples"))
        return found


def _error_text(error: BaseException) -> str:
    """An error's message and repr, and those of the errors it was raised from or during (a
    traceback prints them too)."""
    parts: list[str] = []
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen and len(seen) < 8:
        seen.add(id(current))
        parts += [str(current), repr(current), *getattr(current, "__notes__", [])]
        if current.__cause__ is not None:
            current = current.__cause__
        elif current.__suppress_context__:
            current = None
        else:
            current = current.__context__
    return " ".join(parts)


def _finite(audio: Audio) -> bool:
    return bool(np.isfinite(audio.samples).all())


def _estimate_problem(result: Any, target: str) -> str | None:
    if not isinstance(result, CostEstimate):
        return f"estimate_cost returned {type(result).__name__}, not CostEstimate"
    if result.target != target:
        return f"estimate names target {result.target!r}, not {target!r}"
    for name in ("usd", "gpu_seconds"):
        value = getattr(result, name)
        if not (math.isfinite(value) and value >= 0):
            return f"estimate {name} must be finite and >= 0, got {value!r}"
    if not result.basis.strip():
        return "estimate basis is empty: say how the figure was reached"
    return None


def _default_handle(target: Target, batch: Sequence[SpeechRequest]) -> JobHandle:
    return JobHandle(target.name, "conformance-job", tuple(r.id for r in batch))


async def _outcome(awaitable: Awaitable[Any]) -> Any:
    """The awaited value, or the exception it raised (as a value)."""
    try:
        return await asyncio.wait_for(awaitable, 30.0)
    except Exception as exc:
        return exc


def check_provider(plugin: Any, target: Target, **options: Any) -> list[Failure]:
    """Run every check; see `ProviderConformance` for the options."""
    return ProviderConformance(plugin, target, **options).run()


def assert_conforms(plugin: Any, target: Target, **options: Any) -> None:
    """Run every check and fail with the list of findings (for pytest)."""
    ProviderConformance(plugin, target, **options).assert_ok()
