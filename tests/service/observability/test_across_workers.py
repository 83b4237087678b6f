"""Metrics that add up across worker processes, and one JSON log stream, on the real stack."""

import asyncio
import os
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy.engine import URL

from deploy.prometheus.client import Prometheus, Series
from tests.metrics import Samples, instant_query, parse, value
from tests.postgres import fresh_database, locked_table
from tests.stack import Stack, nginx_access_lines, running_stack

NOTE_ROUTE = "/api/v1/notes/{note_id}"


async def scrape(client: httpx.AsyncClient, stack: Stack) -> tuple[Samples, str]:
    """One scrape through nginx's ops server; also returns the request id it was sent with."""
    request_id = f"scrape-{uuid.uuid4().hex}"
    response = await client.get(f"{stack.ops_url}/metrics", headers={"X-Request-ID": request_id})
    assert response.status_code == 200
    return parse(response.text), request_id


# Requests `send` has in flight at once.
SENT_AT_ONCE = 20


async def send(client: httpx.AsyncClient, stack: Stack, note_url: str, reads: int) -> None:
    """`reads` GETs of one note and `reads // 4` GETs of a missing one, SENT_AT_ONCE at a time."""
    gate = asyncio.Semaphore(SENT_AT_ONCE)

    async def one(url: str, expected: int) -> None:
        async with gate:
            assert (await client.get(f"{stack.url}{url}")).status_code == expected

    await asyncio.gather(
        *(one(note_url, 200) for _ in range(reads)),
        *(one("/api/v1/notes/999999999", 404) for _ in range(reads // 4)),
    )


async def test_request_counts_are_exact_whichever_worker_answers(stack: Stack) -> None:
    async with httpx.AsyncClient(timeout=30) as client:
        created = await client.post(f"{stack.url}/api/v1/notes", json={"text": "counted"})
        before, _ = await scrape(client, stack)
        await send(client, stack, created.headers["location"], reads=400)

        # More at once than nginx keeps upstream connections from the reads: an idle worker
        # that wakes first accepts a burst of new connections whole, so the reads' may all be
        # one worker's; past them nginx opens more, which the worker not busy accepts.
        scrapes = await asyncio.gather(*(scrape(client, stack) for _ in range(SENT_AT_ONCE + 12)))

    get = {"route": NOTE_ROUTE, "method": "GET"}  # other tests PATCH and DELETE this route
    for after, _ in scrapes:

        def delta(name: str, after: Samples = after, **labels: str) -> float:
            return value(after, name, **get, **labels) - value(before, name, **get, **labels)

        assert delta("http_requests_total", status="200") == 400
        assert delta("http_requests_total", status="404") == 100
        assert delta("http_request_duration_seconds_count") == 500
    scrape_ids = {request_id for _, request_id in scrapes}
    assert len(await stack.access_pids(scrape_ids)) >= 2, "every scrape landed on one worker"


async def test_counts_stay_exact_after_a_worker_is_killed(stack: Stack) -> None:
    async with httpx.AsyncClient(timeout=30) as client:
        created = await client.post(f"{stack.url}/api/v1/notes", json={"text": "survivor"})
        before, _ = await scrape(client, stack)
        await send(client, stack, created.headers["location"], reads=200)
        victim = stack.worker_pids()[0]
        os.kill(victim, signal.SIGKILL)
        for _ in range(100):
            pids = stack.worker_pids()
            if victim not in pids and len(pids) == 2:
                break
            await asyncio.sleep(0.1)
        await send(client, stack, created.headers["location"], reads=200)
        after, _ = await scrape(client, stack)

    ok = "http_requests_total"
    get = {"route": NOTE_ROUTE, "method": "GET"}
    assert value(after, ok, **get, status="200") - value(before, ok, **get, status="200") == 400
    assert value(after, ok, **get, status="404") - value(before, ok, **get, status="404") == 100
    # The dead worker's per-process series are gone; the replacement has its own.
    live_pids = {str(pid) for pid in stack.worker_pids()}
    cpu_pids = {dict(labels)["pid"] for (name, labels) in after if name == "worker_cpu_seconds"}
    assert str(victim) not in cpu_pids
    assert cpu_pids <= live_pids


async def in_progress(client: httpx.AsyncClient, stack: Stack) -> dict[tuple[str, str], float]:
    """The requests in flight by method and route, but the scrapes."""
    samples, _ = await scrape(client, stack)
    return {
        (labels["method"], labels["route"]): v
        for (name, labels_), v in samples.items()
        if name == "http_requests_in_progress" and v
        for labels in [dict(labels_)]
        if labels["route"] != "/metrics"
    }


async def test_in_progress_counts_requests_in_flight(stack: Stack) -> None:
    """Six requests held at the database are six in flight, then none. The worker counts
    following `scale`, and the request counts across a reload, are checked under load in
    tests/deploy/native/test_stack.py."""
    async with httpx.AsyncClient(timeout=30) as client:
        created = await client.post(f"{stack.url}/api/v1/notes", json={"text": "in progress"})
        url = f"{stack.url}{created.headers['location']}"
        # Each worker sets the gauge from its requests in flight every second.
        async with locked_table(stack.database):
            held = [asyncio.create_task(client.get(url)) for _ in range(6)]
            waiting = {("GET", NOTE_ROUTE): 6}
            for _ in range(50):
                busy = await in_progress(client, stack)
                if busy == waiting:
                    break
                await asyncio.sleep(0.1)
            assert busy == waiting
        assert [(await request).status_code for request in held] == [200] * 6
        await send(client, stack, created.headers["location"], reads=100)
        for _ in range(30):
            busy = await in_progress(client, stack)
            if not busy:
                break
            await asyncio.sleep(0.2)
        assert busy == {}


async def test_pool_and_worker_metrics_are_exposed(stack: Stack) -> None:
    async with httpx.AsyncClient(timeout=30) as client:
        await client.get(f"{stack.url}/api/v1/notes/stats")
        await asyncio.sleep(2.5)
        samples, _ = await scrape(client, stack)
    names = {name for name, _ in samples}
    for name in (
        "db_pool_connections_in_use",
        "db_pool_connections_idle",
        "db_pool_connections_max",
        "db_pool_connections_overflow",
        "db_pool_waiting_requests",
        "db_pool_wait_seconds_count",
        "db_pool_timeouts_total",
        "worker_cpu_seconds",
        "worker_resident_memory_bytes",
        "app_workers_live",
        "gunicorn_workers_configured",
        "app_build_info",
    ):
        assert name in names, name
    assert value(samples, "db_pool_connections_max") == 5 * len(stack.worker_pids())
    assert value(samples, "db_pool_wait_seconds_count") > 0
    assert all(
        v > 1_000_000 for (n, _), v in samples.items() if n == "worker_resident_memory_bytes"
    )


async def test_unmatched_paths_share_one_route_label(stack: Stack) -> None:
    async with httpx.AsyncClient(timeout=30) as client:
        for index in range(20):
            await client.get(f"{stack.url}/scan/{index}/wp-login.php")
        samples, _ = await scrape(client, stack)
    routes = {dict(labels).get("route") for (name, labels) in samples if name.startswith("http_")}
    assert "<unmatched>" in routes
    assert not any(route and "scan" in route for route in routes)
    assert value(samples, "http_requests_total", route="<unmatched>", status="404") >= 20


REQUIRED = {"timestamp", "level", "event", "logger", "pid"}
ACCESS = {"request_id", "method", "path", "route", "status", "duration_ms", "client_ip"}


async def test_every_app_log_line_is_json_with_the_required_fields(stack: Stack) -> None:
    async with httpx.AsyncClient(timeout=30) as client:
        await client.get(f"{stack.url}/api/v1/notes/1", headers={"X-Request-ID": "abc-123"})
        await client.get(f"{stack.url}/does/not/exist")
        # Line separators that JSON leaves unescaped (U+0085, U+2028) stay inside one line.
        odd = await client.get(
            f"{stack.url}/api/v1/notes/a%C2%85b%E2%80%A8c", headers={"X-Request-ID": "odd-path"}
        )
        assert odd.status_code == 422
    lines = await stack.logged({"abc-123", "odd-path"})
    for line in lines:
        missing = REQUIRED - line.keys()
        assert not missing, f"{missing} missing in {line}"
    loggers = {line["logger"] for line in lines}
    assert {"gunicorn.error", "uvicorn.error", "service.access", "service.main"} <= loggers
    access = [line for line in lines if line["event"] == "request"]
    assert access
    for line in access:
        assert line.keys() >= ACCESS, line
    ours = next(line for line in access if line["request_id"] == "abc-123")
    assert ours["route"] == NOTE_ROUTE
    assert ours["path"] == "/api/v1/notes/1"
    odd_line = next(line for line in access if line["request_id"] == "odd-path")
    assert odd_line["path"] == "/api/v1/notes/a\x85b\u2028c"
    assert await nginx_access_lines(stack.layout.nginx_access_log, {"abc-123"})


def _served_by(stack: Stack) -> set[object]:
    return {line["pid"] for line in stack.app_log() if line.get("event") == "request"}


def _metric_files(directory: Path) -> list[str]:
    return sorted(path.name for path in directory.iterdir() if path.suffix == ".db")


# Worker processes that serve during the recycling test: the first two and eight replacements.
RECYCLED = 10


@pytest.fixture(scope="module")
def recycling_stack(pg_server: URL) -> Iterator[Stack]:
    """A stack whose workers are recycled every 10 requests."""
    with fresh_database(pg_server) as url:
        extra = {"GUNICORN_MAX_REQUESTS": "10", "GUNICORN_MAX_REQUESTS_JITTER": "0"}
        with running_stack(url, workers=2, extra_env=extra) as running:
            yield running


async def test_files_and_scrape_time_stay_bounded_across_worker_recycling(
    recycling_stack: Stack,
) -> None:
    stack = recycling_stack
    metrics_dir = stack.layout.metrics_dir
    async with httpx.AsyncClient(timeout=30) as client:
        first, _ = await scrape(client, stack)
        # Each worker leaves after 10 requests; a replacement takes about a second to start.
        # Eight replacements are enough: the dead workers' counters and histograms alone, if
        # they stayed, would be 16 files past the bound below (500 simulated in
        # test_metrics_store.py).
        rounds, per_round, deadline = 0, 40, time.monotonic() + 120
        while len(_served_by(stack)) < RECYCLED and time.monotonic() < deadline:
            responses = await asyncio.gather(
                *(client.get(f"{stack.url}/healthz") for _ in range(per_round))
            )
            assert all(response.status_code == 200 for response in responses)
            rounds += 1
            await asyncio.sleep(0.2)
        await asyncio.sleep(1)
        last, _ = await scrape(client, stack)
    recycled = _served_by(stack)
    files = _metric_files(metrics_dir)

    assert len(recycled) >= RECYCLED, f"only {len(recycled)} worker processes served"
    # What a scrape reads, not how long it takes (that measures the machine's load): per live
    # worker a counter, a histogram and three live-gauge files (a worker still starting may
    # not have written all three), the master's gauge, the two archives. Never a dead worker.
    assert len(files) <= 2 * 5 + 1 + 2, files
    live = set(stack.worker_pids())
    pids = {
        int(name.rsplit("_", 1)[1].removesuffix(".db")) for name in files if "archive" not in name
    }
    assert pids <= live | {stack.master_pid()}, (pids, live)
    healthz = value(last, "http_requests_total", route="/healthz") - value(
        first, "http_requests_total", route="/healthz"
    )
    assert healthz == rounds * per_round


async def test_prometheus_scrapes_the_stack(stack: Stack) -> None:
    async with httpx.AsyncClient(timeout=30) as client:
        created = await client.post(f"{stack.url}/api/v1/notes", json={"text": "scraped"})
        deadline = time.monotonic() + 40
        rates: list[Series] = []
        up: list[Series] = []
        while time.monotonic() < deadline:
            await send(client, stack, created.headers["location"], reads=40)
            up = await instant_query(stack.prometheus_url, 'up{job="notes"}')
            rates = await instant_query(
                stack.prometheus_url, "sum by (route) (rate(http_requests_total[1m]))"
            )
            if up and rates and any(r.labels == {"route": NOTE_ROUTE} for r in rates):
                break
            await asyncio.sleep(1)
    exporter = await instant_query(stack.prometheus_url, 'up{job="nginx"}')
    prometheus = Prometheus(stack.prometheus_url)
    rules = await asyncio.to_thread(prometheus.get, "/api/v1/rules")
    # PROMETHEUS_SCRAPE_INTERVAL (1 s in the tests' stacks): scrapes and rules alike, and the
    # client reads it back from the running Prometheus.
    assert await asyncio.to_thread(prometheus.scrape_interval) == 1
    config = await asyncio.to_thread(prometheus.get, "/api/v1/status/config")
    assert "evaluation_interval: 1s" in config["yaml"]
    assert {group["interval"] for group in rules["groups"]} == {1}

    assert [sample.value for sample in up] == [1.0]
    assert {"route": NOTE_ROUTE} in [sample.labels for sample in rates]
    assert [sample.value for sample in exporter] == [1.0]
    unhealthy = [
        rule["name"]
        for group in rules["groups"]
        for rule in group["rules"]
        if rule["health"] != "ok" and rule.get("lastEvaluation")
    ]
    assert unhealthy == []
