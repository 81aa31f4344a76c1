"""Metrics: what the calls count, as scraped from the real endpoint on 127.0.0.1."""

from __future__ import annotations

import inspect
import math
import re
import socket
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from csm_offload.errors import (
    AudioError,
    ConfigError,
    JobLost,
    ProviderError,
    RateLimited,
    Rejected,
    ResultUnusable,
    TooLong,
    TransientError,
    Unavailable,
    UserError,
    WireError,
)
from csm_offload.metrics import (
    CHUNK_BUCKETS,
    JOB_STATES,
    KINDS,
    LOOPBACK,
    MAX_TARGETS,
    NULL,
    REASONS,
    Metrics,
    MetricsServer,
    kind_of,
    serve_metrics,
)

ROOT = Path(__file__).resolve().parent.parent
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    """Every sample of an exposition, keyed by name and labels."""
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def scrape(server: MetricsServer) -> Samples:
    # No proxy from the environment: the request must go to the loopback endpoint itself.
    with httpx.Client(trust_env=False, timeout=5) as http:
        response = http.get(server.url)
    assert response.status_code == 200
    return parse(response.text)


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


@pytest.fixture
def served() -> Iterator[tuple[Metrics, MetricsServer]]:
    metrics = Metrics()
    server = serve_metrics(metrics, 0)
    assert server is not None
    try:
        yield metrics, server
    finally:
        server.stop()


def test_calls_are_counted_on_the_endpoint(served: tuple[Metrics, MetricsServer]) -> None:
    metrics, server = served
    metrics.job_submitted("runpod", 4, 0.02)
    metrics.job_submitted("runpod", 2, 0.01)
    metrics.job_submitted("modal", 1, 0.5)
    metrics.in_flight("runpod", 1)
    metrics.in_flight("runpod", 1)
    metrics.in_flight("runpod", -1)
    metrics.job_finished("runpod", "completed", actual_usd=0.015, seconds=3.0)
    metrics.job_finished("runpod", "failed", actual_usd=None, seconds=None)
    metrics.job_finished("modal", "abandoned", actual_usd=0.0, seconds=0.2)
    metrics.retry("runpod", "transient")
    metrics.failure("runpod", "transient")
    metrics.failure("runpod", "transient")
    metrics.failure("modal", "unavailable")
    metrics.chunk_done("runpod", 0.07, cached=False)
    metrics.chunk_done("runpod", 1799.0, cached=False)
    metrics.chunk_done("runpod", 0.0, cached=True)
    metrics.spend("modal", 0.25, 0.125)

    s = scrape(server)
    assert value(s, "csm_offload_jobs_submitted_total", target="runpod") == 2
    assert value(s, "csm_offload_requests_submitted_total", target="runpod") == 6
    assert value(s, "csm_offload_jobs_in_flight", target="runpod") == 1
    assert value(s, "csm_offload_jobs_total", target="runpod", state="completed") == 1
    assert value(s, "csm_offload_jobs_total", target="runpod", state="failed") == 1
    assert value(s, "csm_offload_jobs_total", target="modal", state="abandoned") == 1
    assert value(s, "csm_offload_job_seconds_count", target="runpod") == 1
    assert value(s, "csm_offload_job_seconds_sum", target="runpod") == 3.0
    assert value(s, "csm_offload_retries_total", target="runpod", reason="transient") == 1
    assert value(s, "csm_offload_failures_total", target="runpod", kind="transient") == 2
    assert value(s, "csm_offload_failures_total", target="modal", kind="unavailable") == 1
    assert value(s, "csm_offload_spend_estimated_usd_total", target="runpod") == pytest.approx(0.03)
    assert value(s, "csm_offload_spend_estimated_usd_total", target="modal") == 0.75
    assert value(s, "csm_offload_spend_actual_usd_total", target="runpod") == 0.015
    assert value(s, "csm_offload_spend_actual_usd_total", target="modal") == 0.125
    # Cached requests are counted apart: their latency would hide the providers'.
    assert value(s, "csm_offload_requests_cached_total") == 1
    assert value(s, "csm_offload_chunk_seconds_count", target="runpod") == 2
    assert value(s, "csm_offload_chunk_seconds_bucket", target="runpod", le="0.05") == 0
    assert value(s, "csm_offload_chunk_seconds_bucket", target="runpod", le="0.1") == 1
    assert value(s, "csm_offload_chunk_seconds_bucket", target="runpod", le="1200.0") == 1
    assert value(s, "csm_offload_chunk_seconds_bucket", target="runpod", le="1800.0") == 2


def test_buckets_span_50_ms_to_30_minutes() -> None:
    assert CHUNK_BUCKETS[0] == 0.05
    assert CHUNK_BUCKETS[-1] == 1800.0
    assert list(CHUNK_BUCKETS) == sorted(set(CHUNK_BUCKETS))


def test_only_loopback_by_construction(served: tuple[Metrics, MetricsServer]) -> None:
    _metrics, server = served
    # No way to ask for another address: neither the server nor the helper takes one.
    assert list(inspect.signature(MetricsServer).parameters) == ["metrics"]
    assert list(inspect.signature(MetricsServer.serve).parameters) == ["self", "port"]
    assert list(inspect.signature(serve_metrics).parameters) == ["metrics", "port"]
    assert server._server.socket.getsockname() == (LOOPBACK, server.port)
    assert server.url == f"http://127.0.0.1:{server.port}/metrics"


def _other_address() -> str | None:
    """This machine's address on its way out, or None when it has nothing but loopback."""
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        # Connecting a UDP socket sends nothing; it only picks the outgoing interface.
        probe.connect(("10.255.255.255", 1))
        address = str(probe.getsockname()[0])
    except OSError:
        return None
    finally:
        probe.close()
    return None if address.startswith("127.") else address


def test_not_reachable_on_another_address(served: tuple[Metrics, MetricsServer]) -> None:
    _metrics, server = served
    # The listening socket is bound to loopback, whatever else this machine has...
    assert server._server.socket.getsockname()[0] == LOOPBACK
    address = _other_address()
    if address is None:
        return  # ...and here there is no other address to knock on
    unreachable = (ConnectionRefusedError, TimeoutError)
    with pytest.raises(unreachable), socket.create_connection((address, server.port), timeout=2):
        pass


def test_port_in_use_is_a_user_error() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind((LOOPBACK, 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(UserError) as caught:
            serve_metrics(Metrics(), port)
    message = str(caught.value)
    assert f"127.0.0.1:{port}" in message
    assert "in use" in message
    assert "run.metrics_port" in message
    assert "--metrics-port" in message
    assert caught.value.exit_code == 2


def test_stop_frees_the_port() -> None:
    server = serve_metrics(Metrics(), 0)
    assert server is not None
    port = server.port
    server.stop()
    server.stop()  # a second stop does nothing
    with pytest.raises(httpx.ConnectError), httpx.Client(trust_env=False) as http:
        http.get(f"http://127.0.0.1:{port}/metrics")
    with MetricsServer(Metrics()).serve(port) as again:
        assert again.port == port
        assert scrape(again) is not None


def test_no_port_no_server() -> None:
    assert serve_metrics(Metrics(), None) is None


def test_callbacks_are_read_at_scrape_time(served: tuple[Metrics, MetricsServer]) -> None:
    metrics, server = served
    breakers = {"runpod": "closed", "modal": "open"}
    queue = {"todo": 3, "doing": 1}
    reads = Counter[str]()

    def breaker_states() -> dict[str, str]:
        reads["breakers"] += 1
        return dict(breakers)

    def queue_depth() -> dict[str, int]:
        reads["queue"] += 1
        return dict(queue)

    metrics.watch_breakers(breaker_states)
    metrics.watch_queue(queue_depth)
    assert reads == {}

    s = scrape(server)
    assert reads == {"breakers": 1, "queue": 1}
    assert value(s, "csm_offload_breaker_state", target="runpod", state="closed") == 1
    assert value(s, "csm_offload_breaker_state", target="runpod", state="open") == 0
    assert value(s, "csm_offload_breaker_state", target="modal", state="open") == 1
    assert value(s, "csm_offload_queue_jobs", state="todo") == 3

    breakers["runpod"] = "half_open"  # either spelling of half-open is accepted
    breakers["modal"] = "closed"
    queue["todo"] = 0
    queue["failed"] = 2
    s = scrape(server)
    assert reads == {"breakers": 2, "queue": 2}
    assert value(s, "csm_offload_breaker_state", target="runpod", state="half-open") == 1
    assert value(s, "csm_offload_breaker_state", target="runpod", state="closed") == 0
    assert value(s, "csm_offload_breaker_state", target="modal", state="closed") == 1
    assert value(s, "csm_offload_queue_jobs", state="todo") == 0
    assert value(s, "csm_offload_queue_jobs", state="failed") == 2
    states = {dict(labels)["state"] for name, labels in s if name == "csm_offload_breaker_state"}
    assert states == {"closed", "open", "half-open"}


def test_breaker_states_of_the_real_breakers(served: tuple[Metrics, MetricsServer]) -> None:
    from csm_offload.breaker import BreakerState, CircuitBreaker

    metrics, server = served
    breaker = CircuitBreaker(threshold=1, cooldown_s=60.0)
    breaker.failure("down")
    metrics.watch_breakers(lambda: {"runpod": breaker.state})
    assert breaker.state is BreakerState.OPEN
    assert value(scrape(server), "csm_offload_breaker_state", target="runpod", state="open") == 1


def test_a_failing_callback_loses_only_its_family(served: tuple[Metrics, MetricsServer]) -> None:
    metrics, server = served

    def broken() -> dict[str, int]:
        raise RuntimeError("dictionary changed size during iteration")

    metrics.watch_queue(broken)
    metrics.watch_breakers(lambda: {"runpod": "closed"})
    metrics.failure("runpod", "lost")
    s = scrape(server)
    assert value(s, "csm_offload_failures_total", target="runpod", kind="lost") == 1
    assert value(s, "csm_offload_breaker_state", target="runpod", state="closed") == 1
    assert not any(name == "csm_offload_queue_jobs" for name, _ in s)


def test_labels_are_bounded() -> None:
    metrics = Metrics()
    secret = "Bearer sk-live-123 request r-42 failed: boom"
    metrics.failure("runpod", secret)
    metrics.retry("runpod", secret)
    metrics.job_finished("runpod", secret, actual_usd=None, seconds=None)
    for i in range(MAX_TARGETS + 10):
        metrics.failure(f"target-{i}", "transient")
    text = generate_latest(metrics.registry).decode()
    assert "sk-live" not in text
    assert "r-42" not in text
    s = parse(text)
    assert value(s, "csm_offload_failures_total", target="runpod", kind="other") == 1
    assert value(s, "csm_offload_retries_total", target="runpod", reason="other") == 1
    assert value(s, "csm_offload_jobs_total", target="runpod", state="other") == 1
    # The first targets keep their names; the rest share one label.
    assert value(s, "csm_offload_failures_total", target="target-0", kind="transient") == 1
    assert value(s, "csm_offload_failures_total", target="other", kind="transient") == 11
    targets = {dict(labels).get("target") for name, labels in s}
    assert len(targets - {None}) == MAX_TARGETS + 1
    # Unknown values are never cached: a caller passing error text costs no memory.
    assert not any(secret in key for key in metrics._children)


def test_each_metrics_has_its_own_registry() -> None:
    one, two = Metrics(), Metrics()
    one.failure("runpod", "lost")
    s = parse(generate_latest(two.registry).decode())
    assert value(s, "csm_offload_failures_total", target="runpod", kind="lost") == 0


def test_null_does_nothing() -> None:
    NULL.job_submitted("runpod", 3, 1.0)
    NULL.job_finished("runpod", "completed", actual_usd=1.0, seconds=1.0)
    NULL.retry("runpod", "transient")
    NULL.failure("runpod", "transient")
    NULL.chunk_done("runpod", 1.0, cached=False)
    NULL.in_flight("runpod", 1)
    NULL.spend("runpod", 1.0, 1.0)
    NULL.watch_breakers(lambda: {"runpod": "open"})
    NULL.watch_queue(lambda: {"todo": 1})
    assert isinstance(NULL, Metrics)
    assert generate_latest(NULL.registry) == b""


# --- every sequence of calls -----------------------------------------------------------------

TARGETS = st.sampled_from(["runpod", "modal", "local", "thunder"])
MONEY = st.floats(min_value=0, max_value=100, allow_nan=False)
SECONDS = st.floats(min_value=0, max_value=4000, allow_nan=False)
CALLS = st.one_of(
    st.tuples(st.just("job_submitted"), TARGETS, st.integers(1, 64), MONEY),
    st.tuples(
        st.just("job_finished"),
        TARGETS,
        st.sampled_from(sorted(JOB_STATES)),
        st.none() | MONEY,
        st.none() | SECONDS,
    ),
    st.tuples(st.just("retry"), TARGETS, st.sampled_from(sorted(REASONS))),
    st.tuples(st.just("failure"), TARGETS, st.sampled_from(sorted(KINDS))),
    st.tuples(st.just("chunk_done"), TARGETS, SECONDS, st.booleans()),
    st.tuples(st.just("in_flight"), TARGETS, st.sampled_from([1, -1])),
    st.tuples(st.just("spend"), TARGETS, MONEY, st.none() | MONEY),
)


@settings(max_examples=150, deadline=None)
@given(st.lists(CALLS, max_size=60))
def test_counters_equal_the_tallies(calls: list[tuple]) -> None:
    metrics = Metrics()
    want: Counter[tuple[str, frozenset[tuple[str, str]]]] = Counter()
    money: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}

    def add(name: str, amount: float = 1, **labels: str) -> None:
        want[(name, frozenset(labels.items()))] += amount

    def pay(name: str, target: str, usd: float | None) -> None:
        if usd:
            key = (name, frozenset({("target", target)}))
            money[key] = money.get(key, 0.0) + usd

    for call in calls:
        name, target, *args = call
        if name != "job_finished":  # its amounts are keyword-only
            getattr(metrics, name)(target, *args)
        if name == "job_submitted":
            add("csm_offload_jobs_submitted_total", target=target)
            add("csm_offload_requests_submitted_total", args[0], target=target)
            pay("csm_offload_spend_estimated_usd_total", target, args[1])
        elif name == "job_finished":
            state, usd, seconds = args
            metrics.job_finished(target, state, actual_usd=usd, seconds=seconds)
            add("csm_offload_jobs_total", target=target, state=state)
            pay("csm_offload_spend_actual_usd_total", target, usd)
            if seconds is not None:
                add("csm_offload_job_seconds_count", target=target)
        elif name == "retry":
            add("csm_offload_retries_total", target=target, reason=args[0])
        elif name == "failure":
            add("csm_offload_failures_total", target=target, kind=args[0])
        elif name == "chunk_done":
            seconds, cached = args
            if cached:
                add("csm_offload_requests_cached_total")
            else:
                add("csm_offload_chunk_seconds_count", target=target)
                for le in CHUNK_BUCKETS:
                    if seconds <= le:
                        add("csm_offload_chunk_seconds_bucket", target=target, le=str(le))
        elif name == "in_flight":
            add("csm_offload_jobs_in_flight", args[0], target=target)
        elif name == "spend":
            pay("csm_offload_spend_estimated_usd_total", target, args[0])
            pay("csm_offload_spend_actual_usd_total", target, args[1])

    got = parse(generate_latest(metrics.registry).decode())
    for key, count in want.items():
        assert got.get(key, 0.0) == count, key
    for key, usd in money.items():
        assert math.isclose(got.get(key, 0.0), usd, rel_tol=1e-9, abs_tol=1e-9), key
    # Nothing counted that was not called: every nonzero counter is in the tallies.
    counters = {k: v for k, v in got.items() if k[0].endswith("_total") and v}
    assert set(counters) <= set(want) | set(money)


# --- kinds ------------------------------------------------------------------------------------


def _status_error(status: int) -> httpx.HTTPStatusError:
    request = httpx.Request("POST", "https://example.invalid/run")
    response = httpx.Response(status, request=request)
    return httpx.HTTPStatusError(f"{status}", request=request, response=response)


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (RateLimited("slow down", retry_after=2.0), "rate_limited"),
        (TransientError("502 from the gateway"), "transient"),
        (Unavailable("no workers"), "unavailable"),
        (Rejected("too large"), "rejected"),
        (TooLong("too long for one request"), "rejected"),
        (JobLost("expired"), "lost"),
        (ResultUnusable("no output"), "unusable"),
        (WireError("results[0].audio", "not base64"), "decode"),
        (AudioError("not a WAV"), "decode"),
        (TimeoutError(), "timeout"),
        (httpx.ReadTimeout("read"), "timeout"),
        (httpx.ConnectTimeout("connect"), "timeout"),
        (httpx.ConnectError("refused"), "transient"),
        (httpx.RemoteProtocolError("closed"), "transient"),
        (ConnectionResetError(), "transient"),
        (_status_error(429), "rate_limited"),
        (_status_error(503), "transient"),
        (_status_error(400), "rejected"),
        (ProviderError("something"), "other"),
        (ConfigError("bad key"), "other"),
        (ValueError("bug"), "other"),
    ],
)
def test_kind_of(exc: BaseException, kind: str) -> None:
    assert kind_of(exc) == kind
    assert kind in KINDS


# --- the documentation ------------------------------------------------------------------------


def _operations() -> str:
    return (ROOT / "docs" / "operations.md").read_text("utf-8")


def _section(title: str) -> str:
    found = re.search(rf"^## {title}\n(.*?)(?=^## |\Z)", _operations(), re.M | re.S)
    assert found, f"docs/operations.md has no '## {title}' section"
    return found.group(1)


def _families() -> set[str]:
    metrics = Metrics()
    metrics.watch_breakers(dict)
    metrics.watch_queue(dict)
    return {family.name for family in metrics.registry.collect()}


def test_every_metric_is_in_the_table() -> None:
    documented = set(re.findall(r"^\| `(csm_offload_\w+)`", _section("Metrics"), re.M))
    exposed = set()
    for family in _families():
        # A counter family `x` is exposed (and documented) as `x_total`.
        counter = family + "_total"
        exposed.add(counter if counter in documented else family)
    assert documented == exposed


def test_alert_rules_parse_and_use_real_metrics() -> None:
    block = re.search(r"```yaml\n(.*?)```", _section("Alerts"), re.S)
    assert block, "the Alerts section has no yaml block"
    rules = yaml.safe_load(block.group(1))
    alerts = [rule for group in rules["groups"] for rule in group["rules"]]
    assert len(alerts) >= 5
    names = _families()
    for alert in alerts:
        assert {"alert", "expr", "labels", "annotations"} <= set(alert)
        for used in re.findall(r"csm_offload_\w+", alert["expr"]):
            base = re.sub(r"_(total|bucket|count|sum)$", "", used)
            assert base in names or used in names, f"{alert['alert']} uses unknown {used}"
