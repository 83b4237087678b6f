"""An app the stack did not write, served as it is: `examples/inventory` behind `make up APP=...`.

The project nests its routers with prefixes at `include_router`, keeps an API key on every
route of one router, mounts a sub-application, makes its engine in its own lifespan, migrates
with its own async Alembic, logs with the standard library, and needs `email-validator`, which
the stack does not. Everything the stack promises any app is checked on it, through nginx,
with two workers.
"""

import asyncio
import csv
import json
import os
import signal
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest
from sqlalchemy.engine import URL

from service.runtime.capacity import MIGRATION_CONNECTIONS, SPARE_CONNECTIONS
from tests.examples.inventory import (
    API_KEY,
    EXAMPLE,
    INVENTORY_ENV,
    ITEM,
    ITEMS,
    PING,
    STATS,
    ItemsLoad,
    reads_only,
)
from tests.metrics import Samples, instant_query, parse, value
from tests.postgres import ROOT, fresh_database
from tests.stack import Stack, background_load, running_stack


@pytest.fixture(scope="module")
def inventory_stack(pg_server: URL) -> Iterator[Stack]:
    """The inventory example behind the whole stack, on a database of its own."""
    with (
        fresh_database(pg_server, prefix="inventory_test") as url,
        running_stack(url, workers=2, extra_env=INVENTORY_ENV) as running,
    ):
        yield running


async def scrape(stack: Stack) -> Samples:
    async with httpx.AsyncClient() as client:
        response = await client.get(f"{stack.ops_url}/metrics")
    assert response.status_code == 200
    return parse(response.text)


def pg_dsn(stack: Stack) -> str:
    return stack.database.set(drivername="postgresql").render_as_string(hide_password=False)


async def test_its_own_migrations_ran_and_its_requirements_were_installed(
    inventory_stack: Stack,
) -> None:
    connection = await asyncpg.connect(pg_dsn(inventory_stack))
    try:
        assert await connection.fetchval("SELECT version_num FROM alembic_version") == "0001_items"
        assert await connection.fetchval("SELECT to_regclass('items')::text") == "items"
        # The stack's own tables are not its business.
        assert await connection.fetchval("SELECT to_regclass('notes')") is None
    finally:
        await connection.close()
    async with httpx.AsyncClient(base_url=inventory_stack.url) as client:
        # EmailStr validates with email-validator, which only the example's requirements name.
        bad = await client.post(ITEMS, json={"name": "x", "owner_email": "not an address"})
        assert bad.status_code == 422
        ready = await client.get("/readyz")
        assert (ready.status_code, ready.json()) == (200, {"status": "ready"})


async def test_every_route_is_counted_exactly_by_its_template(inventory_stack: Stack) -> None:
    """Nested routers with prefixes, a router-wide dependency and a mounted sub-app: each
    request counted once under the template of the route that served it."""
    before = await scrape(inventory_stack)
    sent: Counter[tuple[str, str, str]] = Counter()
    async with httpx.AsyncClient(base_url=inventory_stack.url, timeout=30) as client:

        async def one(method: str, path: str, route: str, expected: int, **kwargs: object) -> None:
            response = await client.request(method, path, **kwargs)  # type: ignore[arg-type]
            assert response.status_code == expected, (path, response.text)
            sent[method, route, str(expected)] += 1

        body = {"name": "widget", "owner_email": "owner@example.com", "quantity": 2}
        created = await asyncio.gather(*(client.post(ITEMS, json=body) for _ in range(15)))
        assert [response.status_code for response in created] == [201] * 15
        sent["POST", ITEMS, "201"] += 15
        ids = [response.json()["id"] for response in created]
        await asyncio.gather(
            *(one("GET", f"{ITEMS}{item_id}", ITEM, 200) for item_id in ids * 2),
            one("GET", f"{ITEMS}999999999", ITEM, 404),
            *(one("GET", ITEMS, ITEMS, 200) for _ in range(5)),
            *(one("GET", STATS, STATS, 200, headers={"X-API-Key": API_KEY}) for _ in range(4)),
            *(one("GET", STATS, STATS, 401) for _ in range(3)),
            *(one("GET", PING, PING, 200) for _ in range(6)),
            *(one("GET", f"/nowhere/{n}", "<unmatched>", 404) for n in range(7)),
        )
    after = await scrape(inventory_stack)
    for (method, route, status), count in sent.items():
        labels = {"method": method, "route": route, "status": status}
        counted = value(after, "http_requests_total", **labels)
        assert counted - value(before, "http_requests_total", **labels) == count, labels
    unlabelled = {
        dict(labels)["route"]
        for (name, labels) in after
        if name == "http_requests_total" and dict(labels)["route"].startswith("/api/v1/items/")
    }
    assert unlabelled == {ITEMS, ITEM}  # never a raw path


async def test_its_engine_has_pool_gauges_in_every_worker(inventory_stack: Stack) -> None:
    """The engine the app made in its lifespan, labelled by its database's name: its pool
    (pool_size=3, max_overflow=2) seen in each worker."""
    engine = inventory_stack.database.database
    assert engine is not None
    async with httpx.AsyncClient(base_url=inventory_stack.url) as client:
        for _ in range(10):  # each worker checks a connection out at least once, most likely
            await client.get(ITEMS)
    deadline = asyncio.get_running_loop().time() + 10
    workers = {str(pid) for pid in inventory_stack.worker_pids()}
    while True:
        samples = await scrape(inventory_stack)
        maxima = {
            dict(labels)["pid"]: sample
            for (name, labels), sample in samples.items()
            if name == "db_pool_connections_max" and dict(labels).get("engine") == engine
        }
        in_use = value(samples, "db_pool_connections_in_use", engine=engine)
        # Sampled once a second: the last burst's checkouts may still show for a moment.
        done = set(maxima) == workers and in_use == 0
        if done or asyncio.get_running_loop().time() > deadline:
            break
        await asyncio.sleep(0.5)
    assert maxima == dict.fromkeys(workers, 5.0)
    assert in_use == 0


async def test_its_own_log_lines_are_json_with_the_request_id(inventory_stack: Stack) -> None:
    request_id = f"inventory-{uuid.uuid4().hex}"
    body = {"name": "logged", "owner_email": "owner@example.com"}
    async with httpx.AsyncClient(base_url=inventory_stack.url) as client:
        response = await client.post(ITEMS, json=body, headers={"X-Request-ID": request_id})
    assert response.status_code == 201
    assert "app;dur=" in response.headers["server-timing"]
    assert response.headers["x-request-id"] == request_id
    lines = await inventory_stack.logged([request_id])
    mine = [line for line in lines if line.get("request_id") == request_id]
    by_logger = {line["logger"]: line for line in mine}
    item_id = response.json()["id"]
    assert by_logger["inventory.items"]["event"] == f"item created: {item_id}"
    assert by_logger["inventory.items"]["level"] == "info"
    access = by_logger["service.access"]
    assert (access["route"], access["status"]) == (ITEMS, 201)


async def test_reload_under_load_fails_no_request(inventory_stack: Stack) -> None:
    """`make reload` while clients write and read: every answer is the one expected."""
    old_workers = set(inventory_stack.worker_pids())
    async with background_load(inventory_stack.url, 8, make=ItemsLoad) as load:
        await inventory_stack.arun("reload")
    counts = load.result.counts()
    print(f"\nreload under load: {dict(counts)}")
    assert set(counts) == {("POST", 201), ("GET", 200)}, counts
    assert counts["POST", 201] > 20
    assert not old_workers & set(inventory_stack.worker_pids())


async def test_a_killed_worker_fails_no_read_and_is_replaced(inventory_stack: Stack) -> None:
    """SIGKILL a worker under a read load: nginx retries the reads it took, and gunicorn
    starts another in its place."""
    before = inventory_stack.worker_pids()
    async with background_load(inventory_stack.url, 20, make=reads_only) as load:
        os.kill(before[0], signal.SIGKILL)
        for _ in range(100):  # the load goes on while gunicorn replaces it
            now = inventory_stack.worker_pids()
            if len(now) == len(before) and before[0] not in now:
                break
            await asyncio.sleep(0.1)
    counts = load.result.counts()
    print(f"\nworker killed under load: {dict(counts)}")
    assert set(counts) == {("GET", 200)}, counts
    after = inventory_stack.worker_pids()
    assert len(after) == len(before)
    assert before[0] not in after
    async with httpx.AsyncClient() as client:
        assert (await client.get(f"{inventory_stack.url}/readyz")).status_code == 200


def run_module(stack: Stack, *argv: str) -> subprocess.CompletedProcess[str]:
    """`make loadtest`/`make sweep` as a user would run them for this app: LOCUSTFILE set."""
    env = {**stack.env, "LOCUSTFILE": str(EXAMPLE / "locustfile.py")}
    return subprocess.run(
        [sys.executable, "-m", *argv], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=600, check=False,
    )  # fmt: skip


async def test_its_locustfile_runs_and_every_request_is_counted(
    inventory_stack: Stack, tmp_path: Path
) -> None:
    """`make loadtest LOCUSTFILE=...`: the harness's thresholds and progress around the app's
    own users, and the stack counts exactly the requests Locust sent."""
    api = "/api/v1/"
    before = await scrape(inventory_stack)
    result = await asyncio.to_thread(
        run_module, inventory_stack, "loadtest.run", "--host", inventory_stack.url,
        "--users", "6", "--spawn-rate", "6", "--run-time", "6", "--processes", "1",
        "--out", str(tmp_path),
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "examples/inventory/locustfile.py" in result.stdout
    assert "loadtest: all thresholds held" in result.stdout
    stats = (tmp_path / "locust_stats.csv").read_text()
    for name in ("/api/v1/items/{item_id}", "/api/v1/items/", "/api/v1/admin/stats"):
        assert name in stats, name
    header, values = (tmp_path / "result.csv").read_text().splitlines()
    row = dict(zip(header.split(","), values.split(","), strict=True))
    assert int(row["failures"]) == 0
    after = await scrape(inventory_stack)

    def api_requests(samples: Samples) -> float:
        return sum(
            count
            for (name, labels), count in samples.items()
            if name == "http_requests_total" and dict(labels)["route"].startswith(api)
        )

    counted = api_requests(after) - api_requests(before)
    print(f"\nlocust sent {row['requests']} requests, the stack counted {counted:.0f}")
    assert counted == int(row["requests"])


def test_a_short_sweep_of_it_reports_and_recommends(inventory_stack: Stack, tmp_path: Path) -> None:
    result = run_module(
        inventory_stack, "loadtest.sweep", "--host", inventory_stack.url,
        "--prometheus", inventory_stack.prometheus_url, "--out", str(tmp_path),
        "--workers", "1 2", "--users", "6", "--run-time", "3", "--warmup", "0",
        "--processes", "1",
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    with (tmp_path / "sweep.csv").open() as file:
        rows = {int(row["workers"]): row for row in csv.DictReader(file)}
    assert list(rows) == [1, 2]
    for row in rows.values():
        assert float(row["requests_per_second"]) > 0
        assert float(row["failure_ratio"]) == 0
    report = (tmp_path / "report.md").read_text()
    assert "**Recommendation:" in report
    assert "## Capacity plan" in report
    recommendation = next(line for line in report.splitlines() if "**Recommendation:" in line)
    print(f"\nsweep: {recommendation}")
    assert len(inventory_stack.worker_pids()) == 2


async def test_the_connection_budget_counts_the_pools_the_app_really_opens(
    inventory_stack: Stack,
) -> None:
    """Each worker's ready marker says what its app's engines open at most (pool_size=3 +
    max_overflow=2), and `scale` counts that, not the DB_POOL_SIZE=1 the app never reads: a
    worker count the declared pools would fit, the measured ones do not, is refused."""
    for pid in inventory_stack.worker_pids():
        marker = json.loads(inventory_stack.layout.ready_marker(pid).read_text())
        assert marker == {"engines": 1, "pool_capacity": 5}
    connection = await asyncpg.connect(pg_dsn(inventory_stack))
    try:
        max_connections = int(await connection.fetchval("SHOW max_connections"))
        reserved = int(await connection.fetchval("SHOW superuser_reserved_connections"))
    finally:
        await connection.close()
    overhead = MIGRATION_CONNECTIONS + SPARE_CONNECTIONS
    available = max_connections - reserved
    workers = (available - overhead) // 5 + 1
    assert workers * 1 + overhead <= available  # DB_POOL_SIZE=1 would fit
    before = inventory_stack.worker_pids()
    refused = await inventory_stack.arun("scale", str(workers), check=False)
    assert refused.returncode != 0
    message = refused.stdout + refused.stderr
    assert "connection budget exceeded" in message
    assert f"{workers} workers x 5 connections (measured from the app's 1 engine)" in message
    assert inventory_stack.worker_pids() == before


async def test_stack_name_names_its_connections_and_its_prometheus_job(
    inventory_stack: Stack,
) -> None:
    """STACK_NAME=inventory: every worker's connections are `inventory:<pid>` in
    pg_stat_activity (the app's own engine, named by the stack), and Prometheus scrapes the
    app as the job `inventory`."""
    wanted = {f"inventory:{pid}" for pid in inventory_stack.worker_pids()}
    # A worker connects on its first request, and which worker takes a connection is the
    # kernel's choice: reads, 20 at once, until every worker has had some.
    connection = await asyncpg.connect(pg_dsn(inventory_stack))
    try:
        async with httpx.AsyncClient(base_url=inventory_stack.url) as client:
            deadline = asyncio.get_running_loop().time() + 30
            while True:
                answers = await asyncio.gather(*(client.get(ITEMS) for _ in range(20)))
                assert [answer.status_code for answer in answers] == [200] * 20
                rows = await connection.fetch(
                    "SELECT DISTINCT application_name FROM pg_stat_activity WHERE datname = $1",
                    inventory_stack.database.database,
                )
                named = {row["application_name"] for row in rows}
                if wanted <= named or asyncio.get_running_loop().time() > deadline:
                    break
    finally:
        await connection.close()
    assert wanted <= named, named
    deadline = asyncio.get_running_loop().time() + 30
    while not (up := await instant_query(inventory_stack.prometheus_url, 'up{job="inventory"}')):
        assert asyncio.get_running_loop().time() < deadline, "no scrape of the job inventory"
        await asyncio.sleep(1)
    assert [series.value for series in up] == [1.0]
    assert up[0].labels["service"] == "inventory"


async def test_nginx_adds_the_security_headers_and_keeps_a_routes_cache_control(
    inventory_stack: Stack,
) -> None:
    """Every answer, nginx's own included, is nosniff and sends no referrer; the API's answers
    forbid loading anything and being framed, and are not cached unless the route says so
    (the example's `/public/ping` allows a minute)."""
    async with httpx.AsyncClient(base_url=inventory_stack.url) as client:
        api = await client.get(ITEMS)
        cached = await client.get(PING)
        refused = await client.get("/metrics")  # nginx's own 404
        too_big = await client.post(ITEMS, content=b"x" * (1024 * 1024 + 1))  # nginx's 413
    strict = "default-src 'none'; frame-ancestors 'none'"
    for answer in (api, cached, refused, too_big):
        assert answer.headers["x-content-type-options"] == "nosniff"
        assert answer.headers["referrer-policy"] == "no-referrer"
        assert answer.headers["content-security-policy"] == strict
    assert (refused.status_code, too_big.status_code) == (404, 413)
    assert api.headers["cache-control"] == "no-store"
    assert refused.headers["cache-control"] == "no-store"
    assert cached.headers["cache-control"] == "public, max-age=60"
    assert api.headers.get_list("cache-control") == ["no-store"]
