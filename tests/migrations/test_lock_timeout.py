"""The migrations wait for traffic, never traffic for the migrations: each statement gives up
on its lock after MIGRATION_LOCK_TIMEOUT, its revision rolls back, and the upgrade is tried
again until MIGRATION_ATTEMPTS; a reader queued behind the waiting ALTER is answered."""

import asyncio
import os
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy.engine import URL

from service.database.urls import asyncpg_dsn
from service.stack.alembic_run import LOCK_NOT_AVAILABLE
from service.stack.migrate import LONGEST_RETRY_DELAY, STACK_MIGRATION_LOCK_ID, retry_delay
from tests.next_release import REVISION, Checkout, schema
from tests.postgres import ROOT, fresh_database

PREVIOUS = "0003_count_notes_as_written"


@pytest.fixture
def current(pg_server: URL, tmp_path: Path) -> Iterator[tuple[URL, Checkout]]:
    """A database at today's head, and a checkout of the next release's migrations."""
    checkout = Checkout.current(tmp_path / "app")
    with fresh_database(pg_server) as url:
        assert asyncio.run(run_migrate(url, checkout))[0] == 0
        checkout.next_release()
        yield url, checkout


async def run_migrate(
    url: URL, checkout: Checkout, *, lock_timeout: float = 0.3, attempts: int = 3
) -> tuple[int, str, float]:
    """`python -m service.stack.migrate` on `url`: exit status, output, seconds taken."""
    env = {
        **os.environ,
        **checkout.env(),
        "DATABASE_URL": url.render_as_string(hide_password=False),
        "MIGRATION_LOCK_TIMEOUT": str(lock_timeout),
        "MIGRATION_ATTEMPTS": str(attempts),
    }
    started = time.monotonic()
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "service.stack.migrate",
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await process.communicate()
    assert process.returncode is not None
    return process.returncode, output.decode(), time.monotonic() - started


@asynccontextmanager
async def long_transaction(url: URL) -> AsyncIterator[asyncpg.Connection]:
    """A session that read notes and stays in its transaction: it holds ACCESS SHARE on the
    table, which an ALTER TABLE must wait for."""
    connection = await asyncpg.connect(asyncpg_dsn(url))
    transaction = connection.transaction()
    await transaction.start()
    await connection.fetchval("SELECT count(*) FROM notes WHERE id = 1")
    try:
        yield connection
    finally:
        await transaction.rollback()
        await connection.close()


async def waiting_for_access_exclusive(url: URL, seconds: float = 30) -> None:
    """Until a session waits for ACCESS EXCLUSIVE on notes (the migration's ALTER)."""
    connection = await asyncpg.connect(asyncpg_dsn(url))
    try:
        deadline = time.monotonic() + seconds
        while not await connection.fetchval(
            "SELECT count(*) FROM pg_locks WHERE relation = 'notes'::regclass "
            "AND mode = 'AccessExclusiveLock' AND NOT granted"
        ):
            assert time.monotonic() < deadline, "the migration never waited for its lock"
            await asyncio.sleep(0.02)
    finally:
        await connection.close()


async def test_a_migration_that_cannot_get_its_lock_gives_up_and_applies_nothing(
    current: tuple[URL, Checkout],
) -> None:
    url, checkout = current
    async with long_transaction(url):
        migration = asyncio.create_task(run_migrate(url, checkout, lock_timeout=0.3, attempts=3))
        await waiting_for_access_exclusive(url)
        # A request that needs the table queues behind the waiting ALTER: it is answered
        # once the ALTER gives up, while the long transaction still holds its lock.
        reader = await asyncpg.connect(asyncpg_dsn(url))
        try:
            started = time.monotonic()
            await asyncio.wait_for(reader.fetchval("SELECT count(*) FROM notes"), 30)
            queued = time.monotonic() - started
        finally:
            await reader.close()
        status, output, took = await migration
    assert status == LOCK_NOT_AVAILABLE, output
    assert output.count("gave up waiting 0.3s for a lock") == 3, output
    assert "ALTER TABLE notes ADD COLUMN IF NOT EXISTS priority" in output
    assert "attempt 1 of 3 gave up on a lock; again in" in output
    assert f"gave up after 3 attempts in {took:.0f}" in output or "gave up after 3" in output
    assert f"the schema stays at {PREVIOUS}" in output
    assert await schema(url) == (PREVIOUS, False, None)
    print(f"\ngave up after {took:.1f}s; a reader queued behind the ALTER waited {queued:.2f}s")


async def test_a_migration_retries_until_the_long_transaction_ends(
    current: tuple[URL, Checkout],
) -> None:
    url, checkout = current
    async with long_transaction(url):
        migration = asyncio.create_task(run_migrate(url, checkout, lock_timeout=0.3, attempts=8))
        await waiting_for_access_exclusive(url)
        await asyncio.sleep(1)  # past the first attempt's lock_timeout
    status, output, _took = await migration
    assert status == 0, output
    assert "attempt 1 of 8 gave up on a lock" in output
    assert f"at {REVISION} (was {PREVIOUS}) after" in output
    assert await schema(url) == (REVISION, True, True)


def test_the_backoff_doubles_with_jitter_up_to_its_ceiling() -> None:
    for attempt, ceiling in [(1, 1.0), (2, 2.0), (3, 4.0), (10, LONGEST_RETRY_DELAY)]:
        delays = [retry_delay(attempt) for _ in range(50)]
        assert all(ceiling / 2 <= delay <= ceiling for delay in delays)
        assert len(set(delays)) > 1


async def test_a_runner_behind_anothers_stack_lock_says_it_waits_then_migrates(
    pg_server: URL, tmp_path: Path
) -> None:
    """Two runners at once (two hosts' `make release`, a Job and a person): the second says
    that it waits for the first, and migrates once the lock is free."""
    checkout = Checkout.current(tmp_path / "app")
    with fresh_database(pg_server) as url:
        holder = await asyncpg.connect(asyncpg_dsn(url))
        try:
            await holder.execute("SELECT pg_advisory_lock($1)", STACK_MIGRATION_LOCK_ID)
            runner = asyncio.create_task(run_migrate(url, checkout))
            deadline = time.monotonic() + 30
            while not await holder.fetchval(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
                " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
            ):
                assert not runner.done(), await runner
                assert time.monotonic() < deadline, "the runner never waited for the lock"
                await asyncio.sleep(0.05)
            await holder.execute("SELECT pg_advisory_unlock($1)", STACK_MIGRATION_LOCK_ID)
            status, output, _ = await asyncio.wait_for(runner, 60)
        finally:
            await holder.close()
    assert status == 0, output
    lines = [line for line in output.splitlines() if line.startswith("migrations: ")]
    assert lines[0].endswith(
        ": waiting for the stack's migration lock (another runner is migrating)"
    )
    assert "to head from an empty schema (stack lock after" in lines[1], output
    assert lines[-1].startswith(f"migrations: at {PREVIOUS} (was None)"), output
