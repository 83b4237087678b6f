"""PgBouncer (transaction mode, Debian's 1.18) between the workers and PostgreSQL:
`make up POOLER=pgbouncer`, the app's statement settings behind it, and the connection budget
of the whole topology."""

import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy.engine import URL, make_url

from deploy.native import pgbouncer
from deploy.native.processes import free_port
from service.config import BudgetSettings, load, load_settings
from service.database.connections import create_database
from service.database.urls import asyncpg_dsn
from service.runtime.capacity import budget_for
from tests.postgres import ROOT, backends, fresh_database
from tests.stack import Load, Stack, notes_by_text, running_stack

SERVER_POOL = 4


@pytest.fixture
def bouncer(database_url: URL, monkeypatch: pytest.MonkeyPatch) -> Iterator[URL]:
    """A PgBouncer with 2 server connections in front of the test database; its URL."""
    monkeypatch.setenv("PGBOUNCER_POOL_SIZE", "2")
    url = database_url.render_as_string(hide_password=False)
    with pgbouncer.standalone(url, port=free_port()) as pooled:
        yield make_url(pooled)


async def concurrent_reads(url: URL, pooler: str) -> list[BaseException]:
    """20 requests' worth of connections, 50 parameterised statements each, through the app's
    own Database; the errors they met."""
    settings = load_settings(
        database_url=url.render_as_string(hide_password=False), db_pooler=pooler, db_pool_size=20
    )
    database = create_database(settings)
    errors: list[BaseException] = []

    async def client(seed: int) -> None:
        for i in range(50):
            try:
                async with database.connection() as connection:
                    total = await connection.fetchval("SELECT $1::int + $2::int", seed, i)
            except Exception as exc:  # counted: the test shows them
                errors.append(exc)
            else:
                assert total == seed + i

    try:
        await asyncio.gather(*(client(seed) for seed in range(20)))
    finally:
        await database.dispose()
    return errors


async def test_behind_pgbouncer_the_app_prepares_nothing_another_client_would_lack(
    bouncer: URL,
) -> None:
    """20 workers' connections share 2 server connections: with DB_POOLER=pgbouncer every
    statement succeeds; with asyncpg's statement cache on, prepared statements go astray."""
    assert await concurrent_reads(bouncer, "pgbouncer") == []
    astray = await concurrent_reads(bouncer, "none")
    assert astray, "the cached statements never met another client's server connection"
    assert all(isinstance(exc, asyncpg.PostgresError) for exc in astray), astray[:3]
    assert any("prepared statement" in str(exc) for exc in astray), astray[:3]


async def test_pgbouncer_sets_the_apps_statement_timeout_on_every_server_connection(
    bouncer: URL,
) -> None:
    """PgBouncer drops the app's startup parameters (it cannot carry them across clients); its
    connect_query sets the same values on each server connection instead."""
    connection = await asyncpg.connect(
        asyncpg_dsn(bouncer),
        statement_cache_size=0,
        server_settings={"statement_timeout": "1", "jit": "on"},
    )
    try:
        expected = f"{int(load_settings().db_statement_timeout)}s"
        assert await connection.fetchval("SHOW statement_timeout") == expected
        assert await connection.fetchval("SHOW jit") == "off"
    finally:
        await connection.close()


@pytest.fixture(scope="module")
def pooled_stack(pg_server: URL) -> Iterator[Stack]:
    """The real stack, `make up POOLER=pgbouncer`, 2 workers of 5 connections each on a
    PgBouncer that keeps SERVER_POOL connections to PostgreSQL."""
    with fresh_database(pg_server) as url:
        env = {
            "POOLER": "pgbouncer",
            "PGBOUNCER_PORT": str(free_port()),
            "PGBOUNCER_POOL_SIZE": str(SERVER_POOL),
        }
        with running_stack(url, workers=2, extra_env=env) as running:
            yield running


async def test_a_pooled_stack_serves_a_mixed_load_on_pgbouncers_connections_only(
    pooled_stack: Stack, pg_server: URL
) -> None:
    """Every request gets the status it expects, and PostgreSQL never sees more than
    PgBouncer's server pool, although the two workers' pools hold 10 connections."""
    database = pooled_stack.database
    seen: list[int] = []

    async def sampler() -> None:
        while True:
            seen.append(await backends(pg_server, database.database or ""))
            await asyncio.sleep(0.05)

    sampling = asyncio.create_task(sampler())
    try:
        result = await Load(pooled_stack.url, concurrency=40).run(total=500)
    finally:
        sampling.cancel()
    assert result.unexpected() == {}, result.counts()
    assert len(result.outcomes) == 500
    assert seen
    assert max(seen) <= SERVER_POOL, seen
    assert max(seen) >= 2, seen  # the load did run through PostgreSQL
    # Every note a POST meant to create is there, once.
    created = await notes_by_text(database, result.intended.values())
    assert set(created) == set(result.intended.values())
    assert set(created.values()) == {1}
    status = pooled_stack.run("status")
    assert "pgbouncer pid" in status.stdout


async def test_a_pooled_stack_checks_the_workers_against_pgbouncers_client_limit(
    pooled_stack: Stack,
) -> None:
    before = pooled_stack.worker_pids()
    result = await pooled_stack.arun("scale", "101", check=False)
    assert result.returncode != 0
    assert "PgBouncer's max_client_conn 500" in result.stderr, result.stderr
    assert "PGBOUNCER_MAX_CLIENT_CONN" in result.stderr
    assert pooled_stack.worker_pids() == before


@pytest.mark.stack
def test_up_refuses_a_pgbouncer_pool_larger_than_the_database_allows(database_url: URL) -> None:
    """PgBouncer's 500 server connections cannot fit the test server's max_connections."""
    run_dir = Path(tempfile.mkdtemp(prefix="notes-pooled-"))
    run_dir.chmod(0o755)
    env = {
        **os.environ,
        "RUN_DIR": str(run_dir),
        "DATABASE_URL": database_url.render_as_string(hide_password=False),
        "POOLER": "pgbouncer",
        "PGBOUNCER_POOL_SIZE": "500",
        "WEB_CONCURRENCY": "2",
        **{
            name: str(free_port())
            for name in ("HTTP_PORT", "OPS_PORT", "PROMETHEUS_PORT", "NGINX_EXPORTER_PORT")
        },
        "PGBOUNCER_PORT": str(free_port()),
    }
    native = [sys.executable, "-m", "deploy.native"]
    try:
        result = subprocess.run(
            [*native, "up"],
            check=False,
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        subprocess.run(
            [*native, "down"], check=False, cwd=ROOT, env=env, capture_output=True, timeout=60
        )
        shutil.rmtree(run_dir, ignore_errors=True)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "connection budget exceeded" in output, output
    assert "1 PgBouncer server pools x 500 connections (PGBOUNCER_POOL_SIZE)" in output, output
    assert "shrink PGBOUNCER_POOL_SIZE" in output


def test_the_budget_counts_every_host_against_pgbouncer_and_pgbouncer_against_postgres() -> None:
    settings = load(
        BudgetSettings,
        db_pooler="pgbouncer",
        db_pool_size=5,
        app_hosts=3,
        pgbouncer_max_client_conn=100,
        pgbouncer_pool_size=20,
    )
    budget = budget_for(settings, workers=6, max_connections=100, reserved=3)
    clients, servers = budget.parts
    assert clients.needed == 3 * 6 * 5 + 5  # every host's workers, a migration and the spare
    assert clients.available == 100
    assert servers.needed == 20 + 5
    assert servers.available == 97
    assert budget.exceeded() is None
    assert budget.pools is clients
    # Seven workers on each of three hosts need 105 + 5 clients: PgBouncer's limit is named.
    problem = budget_for(settings, workers=7, max_connections=100, reserved=3).exceeded()
    assert problem is not None
    assert "21 workers x 5 connections" in problem
    assert "run at most 19 workers in all" in problem
    assert "PGBOUNCER_MAX_CLIENT_CONN" in problem
    # Without a pooler the same workers count against PostgreSQL, and the fix names one.
    direct = budget_for(
        load(BudgetSettings, app_hosts=3), workers=7, max_connections=100, reserved=3
    )
    assert len(direct.parts) == 1
    assert "make up POOLER=pgbouncer" in (direct.exceeded() or "")


@pytest.mark.stack
def test_a_pgbouncer_that_exits_at_start_is_reported_with_its_own_words(
    pg_server: URL,
) -> None:
    """The database host's PgBouncer on an address this machine does not have: it exits at
    once, and `up` says so with PgBouncer's own lines, not after a wait for a port."""
    run_dir = Path(tempfile.mkdtemp(prefix="notes-pooled-"))
    run_dir.chmod(0o755)
    with fresh_database(pg_server) as url:
        env = {
            **os.environ,
            "RUN_DIR": str(run_dir),
            "STACK_ROLE": "database",
            "DATABASE_URL": url.render_as_string(hide_password=False),
            "POOLER": "pgbouncer",
            "LISTEN_ADDRESS": "192.0.2.1",  # TEST-NET-1: no host has it
            "PGBOUNCER_PORT": str(free_port()),
        }
        native = [sys.executable, "-m", "deploy.native"]
        started = time.monotonic()
        try:
            result = subprocess.run(
                [*native, "up"], check=False, cwd=ROOT, env=env, capture_output=True,
                text=True, timeout=120,
            )  # fmt: skip
            took = time.monotonic() - started
        finally:
            subprocess.run(
                [*native, "down"], check=False, cwd=ROOT, env=env, capture_output=True,
                timeout=60,
            )  # fmt: skip
            shutil.rmtree(run_dir, ignore_errors=True)
    assert result.returncode == 1, result.stdout + result.stderr
    port = env["PGBOUNCER_PORT"]
    assert f"PgBouncer exited (1) instead of listening on 192.0.2.1:{port}:" in result.stderr
    assert "192.0.2.1" in result.stderr.split("instead of listening", 1)[1].split("\n", 1)[1]
    assert took < 15, f"{took:.1f}s: it waited for the port"
