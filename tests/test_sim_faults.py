"""The simulated RunPod cloud under stress: documented rate limits and the queue rule, dripped
bodies, gzip bombs and gzip answers, a job stuck in the queue, a dead host that comes back,
work done twice, and the simulator's own cost per request.

Every client here is httpx used directly (not the project's runner), so a failure points at the
simulator and not at client code."""

from __future__ import annotations

import email.utils
import itertools
import json
import os
import threading
import time
import zlib
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from csm_offload import BatchRequest, SpeechRequest, wire
from tests.sim.runpod_cloud import BOMB_PREFIX, GIB, SimulatedRunPod, accepts_gzip, gzip_bomb


def job_input(*texts: str) -> dict[str, Any]:
    requests = tuple(SpeechRequest(t, seed=i) for i, t in enumerate(texts))
    return {"input": wire.unstructure(BatchRequest(requests))}


def headers_of(sim: SimulatedRunPod) -> dict[str, str]:
    return {"Authorization": f"Bearer {sim.api_key}"}


@pytest.fixture
def client_for() -> Iterator[Any]:
    """Makes httpx clients for a simulator and closes them all at the end."""
    clients: list[httpx.Client] = []

    def make(sim: SimulatedRunPod, **options: Any) -> httpx.Client:
        options.setdefault("timeout", 10)
        clients.append(httpx.Client(base_url=sim.url, headers=headers_of(sim), **options))
        return clients[-1]

    yield make
    for client in clients:
        client.close()


def wait_done(client: httpx.Client, job_id: str, limit_s: float = 10) -> dict[str, Any]:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        data = client.get(f"/status/{job_id}").json()
        if data["status"] not in ("IN_QUEUE", "IN_PROGRESS"):
            return data
        time.sleep(0.02)
    raise AssertionError(f"job {job_id} did not finish in {limit_s} s")


def burst(client: httpx.Client, path: str, n: int) -> list[httpx.Response]:
    """`n` GETs back to back on one kept-alive connection: a few thousand a second here, far
    faster than a pool of fresh async connections, so a burst lands inside one window."""
    return [client.get(path) for _ in range(n)]


# --- rate limits ---------------------------------------------------------------------------


def test_a_burst_over_the_status_limit_gets_429_with_both_retry_after_forms(
    client_for: Any,
) -> None:
    # rate_scale 0.3: /status allows 600 per 3 s (RunPod's 2000 per 10 s, the same rate); a
    # 3 s window leaves room for a loaded machine to send each burst well inside it.
    window, allowed = 3.0, 600
    with SimulatedRunPod(
        workers=1, job_seconds=0.01, rate_limits=True, rate_scale=0.3, retry_after_form="alternate"
    ) as sim:
        assert sim.cloud.limits == {"run": (300, 3.0), "runsync": (600, 3.0), "status": (600, 3.0)}
        client = client_for(sim)
        path = f"/status/{client.post('/run', json=job_input('Hi.')).json()['id']}"

        started = time.monotonic()
        first = burst(client, path, allowed + 60)
        first_done = time.monotonic()
        assert first_done - started < 0.4 * window, "this machine cannot burst inside a window"
        limited = [r for r in first if r.status_code == 429]
        assert len(limited) == 60 and [r.status_code for r in first[:allowed]] == [200] * allowed
        assert all(r.json()["error"].startswith("Too Many Requests") for r in limited)
        forms = [r.headers["retry-after"] for r in limited]
        seconds = [f for f in forms if f.isdigit()]
        dates = [f for f in forms if not f.isdigit()]
        assert len(seconds) == len(dates) == 30  # alternating, one form then the other
        assert set(seconds) <= {"1", "2", "3"}  # until a slot frees, rounded up
        for date in dates:
            when = email.utils.parsedate_to_datetime(date).timestamp()
            assert date.endswith(" GMT") and time.time() - 1 <= when <= time.time() + window + 1
        # Each route has a window of its own: /run is not limited by the /status burst.
        assert client.post("/run", json=job_input("Still fine.")).status_code == 200

        # 429s do not count. A second burst half a window later is all refused; once the
        # first burst has left the window, a third burst gets all its slots again, though it
        # comes well within a window of the second (had the refused requests counted, the
        # second burst would still hold slots).
        time.sleep(max(0.0, first_done + 0.5 * window - time.monotonic()))
        second = burst(client, path, 100)
        assert all(r.status_code == 429 for r in second)
        time.sleep(max(0.0, first_done + window + 0.05 - time.monotonic()))
        third = burst(client, path, allowed + 60)
        assert sum(r.status_code == 200 for r in third) == allowed
        assert sim.stats()["rate_limited"] == {"status": 60 + 100 + 60}


@pytest.mark.parametrize("form", ["seconds", "http-date", "none"])
def test_retry_after_forms_and_an_overridden_limit(client_for: Any, form: str) -> None:
    with SimulatedRunPod(
        rate_limits=True, limits={"health": (2, 5.0)}, retry_after_form=form
    ) as sim:
        client = client_for(sim)
        assert [client.get("/health").status_code for _ in range(3)] == [200, 200, 429]
        retry_after = client.get("/health").headers.get("retry-after")
        if form == "none":
            assert retry_after is None
        elif form == "seconds":
            assert retry_after is not None and 4 <= int(retry_after) <= 5
        else:
            assert retry_after is not None
            delay = email.utils.parsedate_to_datetime(retry_after).timestamp() - time.time()
            assert 3.5 <= delay <= 6
        assert sim.stats()["rate_limited"] == {"health": 2}


@pytest.mark.parametrize(("per_worker", "accepted"), [(10, 51), (60, 61)])
def test_the_queue_rule_refuses_jobs_over_50_and_over_per_worker_times_workers(
    client_for: Any, per_worker: int, accepted: int
) -> None:
    # One worker: the rule bites past max(50, per_worker x 1) queued jobs.
    with SimulatedRunPod(
        workers=1, validate=False, rate_limits=True, queue_limit_per_worker=per_worker
    ) as sim:
        client = client_for(sim)
        sim.set_stuck(True)
        ids = [
            client.post("/run", json=job_input(f"Job {i}.")).json()["id"] for i in range(accepted)
        ]
        refused = client.post("/run", json=job_input("One too many."))
        assert refused.status_code == 429 and refused.headers["retry-after"] == "1"
        assert "queue" in refused.json()["error"]
        assert client.post("/runsync", json=job_input("Nor this.")).status_code == 429
        assert client.get(f"/status/{ids[0]}").status_code == 200  # polling is not refused
        assert client.get("/health").json()["jobs"]["inQueue"] == accepted
        client.post(f"/cancel/{ids[0]}")
        assert client.post("/run", json=job_input("Room again.")).status_code == 200
        stats = sim.stats()
        assert stats["queue_limited"] == {"run": 1, "runsync": 1} == stats["rate_limited"]
        sim.set_stuck(False)


# --- slow and strange bodies ---------------------------------------------------------------


def test_a_dripped_body_arrives_in_short_gaps_but_slowly_in_all(client_for: Any) -> None:
    chunk, delay = 16, 0.05
    with SimulatedRunPod(workers=1) as sim:
        normal = client_for(sim).get("/health").content
        pieces = -(-len(normal) // chunk)
        assert pieces >= 8
        sim.inject("health", "drip", chunk_bytes=chunk, delay_s=delay)
        # The read timeout is well below the whole body's time: only the gaps count.
        client = client_for(sim, timeout=httpx.Timeout(10, read=delay * 4))
        arrivals: list[float] = []
        body = b""
        with client.stream("GET", "/health") as response:
            assert response.headers["content-length"] == str(len(normal))
            start = time.monotonic()
            for data in response.iter_raw():
                arrivals.append(time.monotonic())
                body += data
        total = arrivals[-1] - start
        gaps = [b - a for a, b in itertools.pairwise(arrivals)]
        assert json.loads(body) == json.loads(normal)
        assert len(arrivals) >= pieces - 1  # the client may see two pieces at once, rarely
        assert (pieces - 1) * delay * 0.9 <= total <= (pieces - 1) * delay + 1.0
        assert max(gaps) < delay + 0.1  # scheduling jitter allowed, nothing near a timeout
        assert sim.stats()["faults_fired"] == {"drip": 1}


def test_a_drip_stops_when_the_client_leaves_and_does_not_delay_stop(client_for: Any) -> None:
    sim = SimulatedRunPod(workers=1).start()
    stopped = False
    try:
        # 1-byte pieces 0.05 s apart: the health answer would take about 8 s.
        sim.inject("health", "drip", chunk_bytes=1, delay_s=0.05, count=2)
        with client_for(sim).stream("GET", "/health") as response:
            next(response.iter_raw())
            assert sim.stats()["dripping"] == 1
        deadline = time.monotonic() + 1.0
        while sim.stats()["dripping"] and time.monotonic() < deadline:
            time.sleep(0.01)
        assert sim.stats()["dripping"] == 0 and sim.stats()["connections"] == 0

        # Another drip in flight while the server stops: stop ends it at once.
        with client_for(sim).stream("GET", "/health") as leaving:
            pieces = leaving.iter_raw()
            next(pieces)
            started = time.monotonic()
            sim.stop()
            stopped = True
            assert time.monotonic() - started < 1.0 and sim.stats()["dripping"] == 0
            with pytest.raises(httpx.TransportError):
                b"".join(pieces)
    finally:
        if not stopped:
            sim.stop()


def test_a_gzip_bomb_is_small_on_the_wire_and_inflates_to_a_gigabyte(client_for: Any) -> None:
    bound = 1 << 20
    with SimulatedRunPod(workers=1) as sim:
        started = time.monotonic()
        sim.inject("status", "gzip_bomb")
        assert time.monotonic() - started < 2.0  # built by repetition, never inflated
        with client_for(sim).stream("GET", "/status/anything") as response:
            assert response.status_code == 200
            assert response.headers["content-encoding"] == "gzip"
            wire_bytes = int(response.headers["content-length"])
            assert wire_bytes < 2 * bound  # about 1 KB per MB inflated
            raw = b"".join(response.iter_raw())  # raw: httpx must not inflate it
    assert len(raw) == wire_bytes
    # Inflate only the first MiB, then stop: the client-side bound a real client needs.
    inflater = zlib.decompressobj(31)
    head = inflater.decompress(raw, bound)
    assert len(head) == bound and head.startswith(BOMB_PREFIX) and head.endswith(b" ")
    assert inflater.unconsumed_tail  # far more was waiting
    assert gzip_bomb(GIB) is gzip_bomb(GIB)  # built once per size
    small = gzip_bomb(3 * bound + 5)  # a size that is checked whole: a valid gzip member
    assert zlib.decompress(small, 31) == BOMB_PREFIX + b" " * (3 * bound + 5 - len(BOMB_PREFIX))


def test_gzip_answers_for_clients_that_accept_them(client_for: Any) -> None:
    assert accepts_gzip("gzip, deflate, br") and accepts_gzip("br;q=1, *")
    assert not accepts_gzip("identity") and not accepts_gzip("gzip;q=0")
    with SimulatedRunPod(workers=1, job_seconds=0.01, gzip=True) as sim:
        client = client_for(sim)
        job = client.post("/run", json=job_input("Compressed."))
        assert job.headers["content-encoding"] == "gzip" and job.json()["status"] == "IN_QUEUE"
        done = client.get(f"/status/{job.json()['id']}")
        assert done.headers["content-encoding"] == "gzip"
        assert wait_done(client, job.json()["id"])["output"]["schema"] == 1
        plain = client.get("/health", headers={"Accept-Encoding": "identity"})
        assert "content-encoding" not in plain.headers and plain.json()["workers"]
    with SimulatedRunPod(workers=1) as sim:  # off by default
        assert "content-encoding" not in client_for(sim).get("/health").headers


# --- jobs that go wrong --------------------------------------------------------------------


def test_a_stuck_job_stays_queued_without_holding_a_worker(client_for: Any) -> None:
    with SimulatedRunPod(workers=1, job_seconds=0.05) as sim:
        client = client_for(sim)
        sim.inject_job("stuck")
        stuck = client.post("/run", json=job_input("Never taken.")).json()["id"]
        others = [client.post("/run", json=job_input(f"Fine {i}.")).json()["id"] for i in range(3)]
        assert all(wait_done(client, j)["status"] == "COMPLETED" for j in others)
        assert client.get(f"/status/{stuck}").json() == {"id": stuck, "status": "IN_QUEUE"}
        health = client.get("/health").json()
        assert health["jobs"]["inQueue"] == 1 and health["workers"]["idle"] == 1
        assert client.post(f"/cancel/{stuck}").json()["status"] == "CANCELLED"
        assert client.get(f"/status/{stuck}").json()["status"] == "CANCELLED"
        stats = sim.stats()
        assert stats["in_queue"] == 0 == client.get("/health").json()["jobs"]["inQueue"]
        assert stats["jobs"] == {"submitted": 4, "completed": 3, "cancelled": 1}
        # The counter agrees with the jobs themselves.
        assert sum(j.state == "IN_QUEUE" for j in sim.cloud.jobs.values()) == 0


def test_a_dead_host_refuses_then_comes_back_with_its_jobs(client_for: Any) -> None:
    with SimulatedRunPod(workers=2, job_seconds=0.3) as sim:
        port, client = sim.port, client_for(sim)
        job = client.post("/run", json=job_input("Finished while dead.")).json()["id"]
        in_flight: list[BaseException] = []

        def wait_sync() -> None:
            try:
                client_for(sim).post("/runsync", json=job_input("Cut off."), params={"wait": 5000})
            except httpx.TransportError as exc:
                in_flight.append(exc)

        waiter = threading.Thread(target=wait_sync)
        waiter.start()
        time.sleep(0.1)  # the /runsync is now held open
        sim.kill()
        waiter.join(5)
        assert in_flight and not sim.stats()["listening"]
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{sim.url}/health", headers=headers_of(sim), timeout=2)
        time.sleep(0.4)  # the workers go on: the job completes while the host is dead
        assert sim.stats()["jobs"]["completed"] == 2  # the /run job and the cut-off /runsync
        sim.revive()
        assert sim.port == port and sim.stats()["listening"]
        done = client_for(sim).get(f"/status/{job}").json()
        assert done["status"] == "COMPLETED" and done["output"]["results"]
        assert sim.stats()["requests"]["status"] == 1


def test_a_spawned_simulator_dies_and_revives_by_signal() -> None:
    with SimulatedRunPod.spawn(workers=1, job_seconds=0.2, rate_limits=True) as proc:
        headers = {"Authorization": f"Bearer {proc.api_key}"}
        with httpx.Client(base_url=proc.url, headers=headers, timeout=5) as client:
            job = client.post("/run", json=job_input("Across a death.")).json()["id"]
        proc.kill()
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{proc.url}/health", headers=headers, timeout=2)
        time.sleep(0.3)
        proc.revive()
        with httpx.Client(base_url=proc.url, headers=headers, timeout=5) as client:
            assert client.get(f"/status/{job}").json()["status"] == "COMPLETED"
        assert proc.stats()["jobs"]["completed"] == 1


def test_work_done_twice_is_counted_and_a_queued_cancel_costs_nothing(client_for: Any) -> None:
    with SimulatedRunPod(workers=2, job_seconds=0.05) as sim:
        client = client_for(sim)
        body = job_input("Said once.", "Said twice?")
        first = client.post("/run", json=body).json()["id"]
        again = client.post("/run", json=body).json()["id"]  # the same request ids
        times = [wait_done(client, j)["executionTime"] for j in (first, again)]
        sim.set_stuck(True)
        queued = client.post("/run", json=job_input("Cancelled in the queue.")).json()["id"]
        assert client.post(f"/cancel/{queued}").json()["status"] == "CANCELLED"
        sim.set_stuck(False)
        stats = sim.stats()
        assert stats["executed_twice"] == 2 and stats["generated_total"] == 4
        assert set(stats["generated"].values()) == {2}
        assert stats["billed_ms"] == sum(times)  # nothing for the queued, cancelled job


# --- the simulator's own cost --------------------------------------------------------------


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="needs Linux /proc")
def test_a_thousand_requests_a_second_on_one_core_with_many_jobs() -> None:
    # Rate limits on (their windows cost something) but too wide to refuse anything; 1000
    # jobs held in the queue, so any per-request scan of the jobs would show.
    wide = {"run": (10**6, 10.0), "status": (10**6, 10.0)}
    with SimulatedRunPod.spawn(
        workers=1,
        job_seconds=0.01,
        validate="false",
        rate_limits=True,
        limits=wide,
        queue_limit_per_worker=10**6,
    ) as proc:
        headers = {"Authorization": f"Bearer {proc.api_key}"}
        with httpx.Client(base_url=proc.url, headers=headers, timeout=10) as client:
            proc.set_stuck(True)
            body = job_input("Queued.")
            ids = [client.post("/run", json=body).json()["id"] for _ in range(1000)]
            polls = 2000
            cpu_before = _cpu_seconds(proc.process.pid)
            for i in range(polls // 2):
                assert client.get(f"/status/{ids[i]}").status_code == 200
                assert client.get("/health").json()["jobs"]["inQueue"] == 1000
            cpu = _cpu_seconds(proc.process.pid) - cpu_before
        assert cpu / polls < 0.001, f"{1000 * cpu / polls:.3f} ms of server CPU per request"
