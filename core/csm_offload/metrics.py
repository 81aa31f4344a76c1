"""Prometheus metrics of a client or worker, served on an opt-in loopback port.

`Metrics` counts what the runner, manager and workers report (jobs, retries, failures, spend,
request latency, jobs in flight) and reads the breakers and the queue when scraped.
`serve_metrics` serves them on 127.0.0.1 only (`run.metrics_port` / `--metrics-port`); see
docs/operations.md for every metric and the alert rules built on them.

Each `Metrics` has its own registry, never prometheus_client's global one: tests create many,
and a process that embeds csm-offload keeps its own metrics apart. Label values are bounded:
targets come from the configuration, every other label from a fixed vocabulary below (anything
else is counted as "other"), so no request id, error text or secret can reach a label.

The runner calls these methods for every job and request (hundreds a second), so each call is a
dictionary look-up and a counter increment: the labelled children are cached, and `NULL` does
nothing at all for a process that serves no metrics.
"""

from __future__ import annotations

import errno
import logging
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Final

import httpx
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import start_http_server

from .errors import (
    AudioError,
    JobLost,
    RateLimited,
    Rejected,
    ResultUnusable,
    TransientError,
    Unavailable,
    UserError,
    WireError,
)

log = logging.getLogger(__name__)

PREFIX: Final = "csm_offload_"

#: The only address metrics are served on. It is not a parameter anywhere: the endpoint has no
#: authentication, so reaching it from elsewhere takes a deliberate step (docs/operations.md).
LOOPBACK: Final = "127.0.0.1"

#: Failure kinds (the `kind` label), as `kind_of` names exceptions.
KINDS: Final = frozenset(
    {
        "rate_limited",
        "transient",
        "unavailable",
        "rejected",
        "lost",
        "unusable",
        "decode",
        "worker",
        "timeout",
        "other",
    }
)

#: Why a batch goes again (the `reason` label): a failure kind, or one of the runner's own
#: reasons for moving work.
REASONS: Final = KINDS | {"split", "breaker", "orphaned", "overtaken", "stuck", "reattach"}

#: How a job ended (the `state` label of csm_offload_jobs_total): the provider's job states, the
#: journal's, and re-attached jobs of an earlier run.
JOB_STATES: Final = frozenset(
    {
        "completed",
        "failed",
        "cancelled",
        "timed_out",
        "lost",
        "abandoned",
        "rejected",
        "orphaned",
        "reattached-completed",
        "reattached-failed",
        "other",
    }
)

#: A circuit breaker's states, as `BreakerState` spells them.
BREAKER_STATES: Final = ("closed", "open", "half-open")

#: Distinct target labels one `Metrics` keeps; more are counted as "other". Targets come from
#: the configuration, so this is only a guard against a caller passing something unbounded.
MAX_TARGETS: Final = 64

#: Request latency from 50 ms (a warm local worker) to 30 minutes (a cold start behind a queue).
CHUNK_BUCKETS: Final = (
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
    600.0,
    1200.0,
    1800.0,
)


class Metrics:
    """The metrics of one process. Calls are cheap and thread-safe."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self._jobs_submitted = Counter(
            PREFIX + "jobs_submitted", "Jobs submitted to a target.", ["target"], registry=r
        )
        self._requests_submitted = Counter(
            PREFIX + "requests_submitted",
            "Requests (chunks) sent in submitted jobs, retries included.",
            ["target"],
            registry=r,
        )
        self._jobs = Counter(
            PREFIX + "jobs", "Jobs finished, by final state.", ["target", "state"], registry=r
        )
        self._job_seconds = Histogram(
            PREFIX + "job_seconds",
            "Seconds from a job's submission to its end.",
            ["target"],
            buckets=CHUNK_BUCKETS,
            registry=r,
        )
        self._in_flight = Gauge(
            PREFIX + "jobs_in_flight", "Jobs submitted and not yet over.", ["target"], registry=r
        )
        self._retries = Counter(
            PREFIX + "retries", "Batches sent again, by reason.", ["target", "reason"], registry=r
        )
        self._failures = Counter(
            PREFIX + "failures",
            "Failed provider calls and jobs, by kind.",
            ["target", "kind"],
            registry=r,
        )
        self._estimated = Counter(
            PREFIX + "spend_estimated_usd",
            "Dollars estimated for submitted jobs.",
            ["target"],
            registry=r,
        )
        self._actual = Counter(
            PREFIX + "spend_actual_usd",
            "Dollars the providers' reported run time costs.",
            ["target"],
            registry=r,
        )
        self._chunks = Histogram(
            PREFIX + "chunk_seconds",
            "Seconds until a request's audio was in (cached requests excluded).",
            ["target"],
            buckets=CHUNK_BUCKETS,
            registry=r,
        )
        self._cached = Counter(
            PREFIX + "requests_cached", "Requests answered from the journal.", registry=r
        )
        self._watched = _Watched()
        r.register(self._watched)
        # (labels as given) -> child; only well-formed labels are cached, so a caller passing
        # something unbounded costs time, never memory.
        self._children: dict[tuple[object, ...], Any] = {}
        self._targets: set[str] = set()
        self._lock = threading.Lock()

    # --- jobs ---------------------------------------------------------------------------------

    def job_submitted(self, target: str, requests: int, estimated_usd: float) -> None:
        """A job went to `target` with `requests` requests; its estimate counts as spend
        estimated (so `spend` is for money no job call reports)."""
        self._child(self._jobs_submitted, target).inc()
        if requests > 0:
            self._child(self._requests_submitted, target).inc(requests)
        if estimated_usd > 0:
            self._child(self._estimated, target).inc(estimated_usd)

    def job_finished(
        self, target: str, state: str, *, actual_usd: float | None, seconds: float | None
    ) -> None:
        """A job ended in `state` (see `JOB_STATES`); `actual_usd`, when known, counts as
        spend actual; `seconds` is from submission to the end."""
        self._child(self._jobs, target, state, JOB_STATES).inc()
        if actual_usd is not None and actual_usd > 0:
            self._child(self._actual, target).inc(actual_usd)
        if seconds is not None and seconds >= 0:
            self._child(self._job_seconds, target).observe(seconds)

    def retry(self, target: str, reason: str) -> None:
        """A batch goes again (on `target` or another) because of `reason` (see `REASONS`)."""
        self._child(self._retries, target, reason, REASONS).inc()

    def failure(self, target: str, kind: str) -> None:
        """A provider call or job on `target` failed; `kind` is one of `KINDS` (`kind_of`)."""
        self._child(self._failures, target, kind, KINDS).inc()

    def chunk_done(self, target: str, seconds: float, cached: bool) -> None:
        """A request's audio is in after `seconds`. Cached requests are only counted: their
        near-zero latency would hide the providers' in the histogram."""
        if cached:
            self._cached.inc()
        else:
            self._child(self._chunks, target).observe(seconds)

    def in_flight(self, target: str, delta: int) -> None:
        """Jobs in flight on `target` changed by `delta`."""
        self._child(self._in_flight, target).inc(delta)

    def spend(self, target: str, estimated_usd: float, actual_usd: float | None) -> None:
        """Money outside `job_submitted`/`job_finished` (e.g. a job of an earlier run settled
        on re-attaching): calling both for one job would count its dollars twice."""
        if estimated_usd > 0:
            self._child(self._estimated, target).inc(estimated_usd)
        if actual_usd is not None and actual_usd > 0:
            self._child(self._actual, target).inc(actual_usd)

    # --- read when scraped --------------------------------------------------------------------

    def watch_breakers(self, states: Callable[[], Mapping[str, str]]) -> None:
        """Export `states()` (target -> breaker state) at each scrape. It runs on the metrics
        server's thread, so it should return a copy quickly (e.g. a dict comprehension)."""
        self._watched.breakers = states

    def watch_queue(self, depth: Callable[[], Mapping[str, int]]) -> None:
        """Export `depth()` (queue job state -> count) at each scrape, on the server's thread:
        a database query there needs a connection of its own."""
        self._watched.queue = depth

    # --- children -----------------------------------------------------------------------------

    def _child(
        self, family: Any, target: str, extra: str | None = None, allowed: frozenset[str] = KINDS
    ) -> Any:
        key = (family, target, extra)
        child = self._children.get(key)
        if child is not None:
            return child
        return self._new_child(key, family, target, extra, allowed)

    def _new_child(
        self,
        key: tuple[object, ...],
        family: Any,
        target: str,
        extra: str | None,
        allowed: frozenset[str],
    ) -> Any:
        with self._lock:
            label = self._target_label(target)
            labels = [label]
            fixed = True
            if extra is not None:
                value = extra if extra in allowed else "other"
                fixed = value == extra
                labels.append(value)
            child = family.labels(*labels)
            if label == target and fixed:
                self._children[key] = child
            return child

    def _target_label(self, target: object) -> str:
        if not isinstance(target, str) or not target:
            return "other"
        if target in self._targets:
            return target
        if len(self._targets) >= MAX_TARGETS:
            return "other"
        self._targets.add(target)
        return target


class _NullMetrics(Metrics):
    """Does nothing, at the cost of a method call: for processes that serve no metrics."""

    def __init__(self) -> None:
        # An empty registry, so that serving NULL by mistake shows an empty page, not an error.
        self.registry = CollectorRegistry()

    def job_submitted(self, target: str, requests: int, estimated_usd: float) -> None:
        pass

    def job_finished(
        self, target: str, state: str, *, actual_usd: float | None, seconds: float | None
    ) -> None:
        pass

    def retry(self, target: str, reason: str) -> None:
        pass

    def failure(self, target: str, kind: str) -> None:
        pass

    def chunk_done(self, target: str, seconds: float, cached: bool) -> None:
        pass

    def in_flight(self, target: str, delta: int) -> None:
        pass

    def spend(self, target: str, estimated_usd: float, actual_usd: float | None) -> None:
        pass

    def watch_breakers(self, states: Callable[[], Mapping[str, str]]) -> None:
        pass

    def watch_queue(self, depth: Callable[[], Mapping[str, int]]) -> None:
        pass


#: Metrics that are not kept: call it unconditionally when no metrics port is configured.
NULL: Final[Metrics] = _NullMetrics()


class _Watched:
    """The gauges read at scrape time from callbacks: the breakers and the queue."""

    def __init__(self) -> None:
        self.breakers: Callable[[], Mapping[str, str]] | None = None
        self.queue: Callable[[], Mapping[str, int]] | None = None

    def describe(self) -> Iterable[Metric]:
        return [self._breaker_family(), self._queue_family()]

    def collect(self) -> Iterator[Metric]:
        # A failing callback (a dict changed while copied, a database away) loses its family
        # for this scrape, never the whole page: the counters still get through.
        if self.breakers is not None:
            family = self._breaker_family()
            try:
                for target, state in sorted(self.breakers().items()):
                    now = str(state).replace("_", "-")
                    for each in BREAKER_STATES:
                        family.add_metric([str(target), each], 1.0 if each == now else 0.0)
            except Exception:
                log.warning("reading the breakers for metrics failed", exc_info=True)
            else:
                yield family
        if self.queue is not None:
            family = self._queue_family()
            try:
                for state, count in sorted(self.queue().items()):
                    family.add_metric([str(state)], float(count))
            except Exception:
                log.warning("reading the queue for metrics failed", exc_info=True)
            else:
                yield family

    @staticmethod
    def _breaker_family() -> GaugeMetricFamily:
        return GaugeMetricFamily(
            PREFIX + "breaker_state",
            "1 for a target's circuit breaker's current state, 0 for the others.",
            labels=["target", "state"],
        )

    @staticmethod
    def _queue_family() -> GaugeMetricFamily:
        return GaugeMetricFamily(
            PREFIX + "queue_jobs", "Jobs in the queue of books, by state.", labels=["state"]
        )


def kind_of(exc: BaseException) -> str:
    """The failure kind (a `KINDS` label) of an exception a provider call raised."""
    # Subclasses before their bases: RateLimited is a TransientError, TooLong a Rejected,
    # TimeoutError an OSError, WireError and AudioError UserErrors.
    if isinstance(exc, RateLimited):
        return "rate_limited"
    if isinstance(exc, TransientError):
        return "transient"
    if isinstance(exc, Unavailable):
        return "unavailable"
    if isinstance(exc, Rejected):
        return "rejected"
    if isinstance(exc, JobLost):
        return "lost"
    if isinstance(exc, ResultUnusable):
        return "unusable"
    if isinstance(exc, WireError | AudioError):
        return "decode"
    if isinstance(exc, TimeoutError | httpx.TimeoutException):
        return "timeout"
    if isinstance(exc, httpx.HTTPStatusError):
        status = exc.response.status_code
        if status == 429:
            return "rate_limited"
        if status >= 500:
            return "transient"
        return "rejected"
    if isinstance(exc, httpx.HTTPError | ConnectionError):
        return "transient"
    return "other"


class MetricsServer:
    """Serves one `Metrics` on 127.0.0.1 in a daemon thread. No address can be given."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self._server: Any = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The port served (the one chosen when `serve(0)` asked for any free one)."""
        if self._server is None:
            raise RuntimeError("the metrics server is not serving")
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}/metrics"

    def serve(self, port: int) -> MetricsServer:
        if self._server is not None:
            raise RuntimeError("the metrics server is already serving")
        try:
            server, thread = start_http_server(port, addr=LOOPBACK, registry=self.metrics.registry)
        except OSError as exc:
            raise _port_error(port, exc) from None
        self._server, self._thread = server, thread
        log.info("serving metrics on %s", self.url)
        return self

    def stop(self) -> None:
        """Stop serving and free the port; stopping a stopped server does nothing."""
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if thread is not None:
            thread.join(timeout=5)

    def __enter__(self) -> MetricsServer:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()


def _port_error(port: int, exc: OSError) -> UserError:
    fix = (
        "set run.metrics_port (or --metrics-port) to a free port, or unset it to serve no "
        "metrics; each client and worker on one machine needs a port of its own"
    )
    if exc.errno == errno.EADDRINUSE:
        why = "the port is in use (another csm-offload process, or another program)"
    elif exc.errno == errno.EACCES:
        why = "permission denied (ports below 1024 need privileges)"
    else:
        why = exc.strerror or type(exc).__name__
    return UserError(f"cannot serve metrics on {LOOPBACK}:{port}: {why}: {fix}")


def serve_metrics(metrics: Metrics, port: int | None) -> MetricsServer | None:
    """Serve `metrics` on 127.0.0.1:`port`, or nothing when `port` is None (the default)."""
    if port is None:
        return None
    return MetricsServer(metrics).serve(port)
